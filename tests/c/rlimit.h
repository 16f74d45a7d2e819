/* Running under an address-space limit (RLIMIT_AS): for the programs
   that test allocation failure. Include after check.h. */
#ifndef RLIMIT_H
#define RLIMIT_H

#include <fcntl.h>
#include <sys/resource.h>

/* Grow the stack now: once the address space is full it cannot grow. */
__attribute__((noinline)) static void grow_stack(void) {
    volatile char buf[1 << 20];
    memset((char *)buf, 1, sizeof buf);
}

static size_t vm_size(void) { /* VmSize from /proc/self/status, without malloc */
    char buf[8192];
    int fd = open("/proc/self/status", O_RDONLY);
    CHECK(fd >= 0, "open /proc/self/status failed");
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    CHECK(n > 0, "read /proc/self/status failed");
    buf[n] = 0;
    char *v = strstr(buf, "VmSize:");
    CHECK(v != NULL, "no VmSize in /proc/self/status");
    return (size_t)strtoull(v + 7, NULL, 10) * 1024;
}

static void set_limit(rlim_t cur) {
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_AS, &rl) == 0, "getrlimit failed");
    rl.rlim_cur = cur;
    CHECK(setrlimit(RLIMIT_AS, &rl) == 0, "setrlimit(RLIMIT_AS, %llu) failed: %s", (unsigned long long)cur,
          strerror(errno));
}

#endif
