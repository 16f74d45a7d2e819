/* Reports are not cut short by thread cancellation. A thread with a
   cancellation pending (deferred) calls malloc_stats, malloc_info (into an
   unbuffered stream), pymalloc_print_stats or pymalloc_write_stats (text,
   JSON), or exits with PYMALLOC_SHOW_STATS set: the whole report arrives,
   the thread's cancellation state is as it was, and the thread is
   cancelled at its next cancellation point. */
#include "check.h"
#include "../../include/pymalloc.h"

#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/wait.h>

/* Weak: preloaded, the program is linked without the library. */
#pragma weak pymalloc_print_stats
#pragma weak pymalloc_write_stats

enum { MALLOC_STATS, MALLOC_INFO, PRINT_STATS, WRITE_TEXT, WRITE_JSON, EXIT, KINDS };
static const char *const names[] = {"malloc_stats", "malloc_info", "pymalloc_print_stats",
                                    "pymalloc_write_stats text", "pymalloc_write_stats json", "exit"};

static sem_t ready, cancelled;
static int out_fd;        /* where the report goes */
static FILE *out_stream;  /* the same file, for malloc_info */
static volatile int after_report, after_testcancel, state_after = -1;

static void report(int kind) {
    switch (kind) {
    case MALLOC_STATS: malloc_stats(); break; /* stderr is out_fd */
    case MALLOC_INFO: malloc_info(0, out_stream); break;
    case PRINT_STATS: pymalloc_print_stats(); break;
    case WRITE_TEXT: pymalloc_write_stats(out_fd, "text"); break;
    case WRITE_JSON: pymalloc_write_stats(out_fd, "json"); break;
    case EXIT: exit(0); /* the report at exit */
    }
}

static void *reporter(void *arg) {
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    sem_post(&ready);
    while (sem_wait(&cancelled) != 0) continue; /* the main thread cancels us meanwhile */
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL); /* deferred: pending, not acted on */
    report((int)(intptr_t)arg);
    after_report = 1;
    int state;
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &state);
    state_after = state;
    pthread_testcancel();
    after_testcancel = 1;
    return NULL;
}

/* Runs `kind` in a thread with a cancellation pending. */
static void *cancelled_report(int kind) {
    pthread_t t;
    sem_init(&ready, 0, 0), sem_init(&cancelled, 0, 0);
    after_report = after_testcancel = 0, state_after = -1;
    CHECK(pthread_create(&t, NULL, reporter, (void *)(intptr_t)kind) == 0, "pthread_create failed");
    while (sem_wait(&ready) != 0) continue;
    CHECK(pthread_cancel(t) == 0, "pthread_cancel failed");
    sem_post(&cancelled);
    void *result;
    CHECK(pthread_join(t, &result) == 0, "pthread_join failed");
    return result;
}

/* The whole file `fd` from its start, NUL-terminated, in `buf`. */
static char *read_all(int fd, char *buf, size_t size) {
    size_t n = 0;
    ssize_t r;
    while (n < size - 1 && (r = pread(fd, buf + n, size - 1 - n, (off_t)n)) > 0) n += (size_t)r;
    buf[n] = 0;
    return buf;
}

static int count_lines(const char *s, const char *prefix) {
    int n = 0;
    for (const char *line = s; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : line + strlen(line))
        n += strncmp(line, prefix, strlen(prefix)) == 0;
    return n;
}

static int ends_with(const char *s, const char *end) {
    size_t n = strlen(s), m = strlen(end);
    return n >= m && strcmp(s + n - m, end) == 0;
}

static char got[1 << 20], reference[1 << 20];

/* The report in `s` is whole: `rows` lines start with "# " (text). */
static void check_whole(int kind, const char *s, int rows) {
    const char *what = names[kind];
    switch (kind) {
    case MALLOC_STATS: {
        /* The debug mode's quarantine adds a last line. */
        int quarantine = getenv("PYMALLOC_DEBUG") && getenv("PYMALLOC_DEBUG_QUARANTINE");
        CHECK(strncmp(s, "Arena 0:\n", 9) == 0 && count_lines(s, "") == 8 + quarantine &&
                  strstr(s, "\nmax mmap bytes   = ") && ends_with(s, "\n") &&
                  (!quarantine || strstr(s, "\nquarantined bytes= ")),
              "%s: report cut short:\n%s", what, s);
        break;
    }
    case MALLOC_INFO:
        CHECK(strncmp(s, "<malloc version=\"1\">\n", 21) == 0 && ends_with(s, "\n</malloc>\n"),
              "%s: report cut short:\n%s", what, s);
        break;
    case WRITE_JSON:
        CHECK(strncmp(s, "{\"pymalloc\": ", 13) == 0 && ends_with(s, "\"arenas_truncated\": false}\n"),
              "%s: report cut short:\n%s", what, s);
        break;
    default:
        CHECK(strncmp(s, "pymalloc ", 9) == 0 && count_lines(s, "# ") == rows && ends_with(s, "\n"),
              "%s: report cut short (%d of %d total rows):\n%s", what, count_lines(s, "# "), rows, s);
    }
}

int main(int argc, char **argv) {
    CHECK(pymalloc_write_stats != NULL, "not running under libpymalloc");
    if (argc > 1 && strcmp(argv[1], "exit") == 0) {
        cancelled_report(EXIT);
        return 1; /* not reached: the thread exits the process */
    }
    char path[] = "/tmp/pymalloc-cancel-XXXXXX";
    out_fd = mkstemp(path);
    CHECK(out_fd >= 0, "mkstemp failed: %s", strerror(errno));
    out_stream = fdopen(dup(out_fd), "w");
    CHECK(out_stream != NULL, "fdopen failed");
    setvbuf(out_stream, NULL, _IONBF, 0); /* every fwrite a write(2): a cancellation point */
    /* The number of total rows of the text report. */
    char ref_path[] = "/tmp/pymalloc-cancel-ref-XXXXXX";
    int ref = mkstemp(ref_path);
    CHECK(ref >= 0, "mkstemp failed");
    unlink(ref_path);
    CHECK(pymalloc_write_stats(ref, "text") == 0, "pymalloc_write_stats failed");
    int rows = count_lines(read_all(ref, reference, sizeof reference), "# ");
    CHECK(rows > 10, "only %d total rows in the reference report", rows);
    close(ref);

    int saved_stderr = dup(2);
    for (int kind = 0; kind < EXIT; kind++) {
        CHECK(ftruncate(out_fd, 0) == 0 && lseek(out_fd, 0, SEEK_SET) == 0, "truncating failed");
        if (kind == MALLOC_STATS || kind == PRINT_STATS) dup2(out_fd, 2);
        void *result = cancelled_report(kind);
        dup2(saved_stderr, 2);
        CHECK(after_report, "%s: the thread was cancelled inside the report", names[kind]);
        CHECK(state_after == PTHREAD_CANCEL_ENABLE, "%s: the cancellation state was not restored", names[kind]);
        CHECK(result == PTHREAD_CANCELED && !after_testcancel, "%s: the pending cancellation was lost",
              names[kind]);
        check_whole(kind, read_all(out_fd, got, sizeof got), rows);
    }

    /* The report at exit, from a thread that exits with a cancellation
       pending: a child process, with the options set. */
    CHECK(ftruncate(out_fd, 0) == 0, "ftruncate failed");
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
        setenv("PYMALLOC_SHOW_STATS", "1", 1);
        setenv("PYMALLOC_STATS_FILE", path, 1);
        execl("/proc/self/exe", argv[0], "exit", (char *)NULL);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child exiting from a thread: status %#x", status);
    check_whole(EXIT, read_all(out_fd, got, sizeof got), rows);
    unlink(path);
    return 0;
}
