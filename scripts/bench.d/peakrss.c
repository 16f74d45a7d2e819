/* Runs a command and prints its peak RSS on stderr's last line:
 *   peakrss COMMAND [ARG...]   ->   peak_rss_kb=N
 * Linux carries a process's peak RSS across exec, so a workload forked
 * straight from the Python harness would report at least the harness's
 * own (about 15 MiB). Forked from this small process instead, it reports
 * its own. Exits with the command's status. */
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: peakrss COMMAND [ARG...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("peakrss: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[1], argv + 1);
        perror("peakrss: exec");
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) != pid) {
        perror("peakrss: wait4");
        return 2;
    }
    fprintf(stderr, "peak_rss_kb=%ld\n", usage.ru_maxrss);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
