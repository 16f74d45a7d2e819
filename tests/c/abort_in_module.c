/* A deliberately broken allocator configuration, preloaded with
 * libpymalloc by tests/cpython_harness.rs: any process whose command line
 * has the argument $PYMALLOC_BROKEN_ARG aborts when loaded, as a broken
 * allocator would abort one CPython test module. scripts/cpython-tests
 * must report that module and fail. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void abort_in_module(void) {
    const char *arg = getenv("PYMALLOC_BROKEN_ARG");
    char cmdline[4096];
    int fd = open("/proc/self/cmdline", O_RDONLY);
    if (arg == NULL || fd < 0)
        return;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    for (ssize_t i = 0; i < n; i += strlen(cmdline + i) + 1) {
        cmdline[n] = 0;
        if (strcmp(cmdline + i, arg) == 0)
            abort();
    }
}
