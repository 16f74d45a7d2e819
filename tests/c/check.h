/* Shared by the C test programs (driven by tests/c_programs.rs). */
#ifndef PYMALLOC_TEST_CHECK_H
#define PYMALLOC_TEST_CHECK_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* On failure: "file:line: message" on stderr, exit status 1. */
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

/* expr must fail: NULL with errno ENOMEM. */
#define EXPECT_ENOMEM(expr, what)                                             \
    do {                                                                      \
        errno = 0;                                                            \
        void *r_ = (expr);                                                    \
        CHECK(r_ == NULL, "%s: expected NULL, got %p", what, r_);             \
        CHECK(errno == ENOMEM, "%s: expected errno ENOMEM, got %d (%s)", what, \
              errno, strerror(errno));                                        \
    } while (0)

/* errno as it is now: gcc assumes that its builtin posix_memalign leaves
   errno alone, and would fold a plain read after it. */
static inline int errno_now(void) { return *(volatile int *)&errno; }

/* Hides a size from the optimiser (no folding, no elided calls, no warnings). */
static inline size_t opaque(size_t x) { __asm__ volatile("" : "+r"(x)); return x; }

/* PYMALLOC_EXPECTED=1 (set by the driver) enables checks where pymalloc
   follows newer glibc than this machine's 2.36 (aligned_alloc EINVAL...). */
static inline int pymalloc_expected(void) {
    const char *e = getenv("PYMALLOC_EXPECTED");
    return e && strcmp(e, "1") == 0;
}

/* PYMALLOC_BINDING_PROBE: one malloc and exit, for the LD_DEBUG binding check. */
__attribute__((constructor)) static void check_binding_probe(void) {
    if (getenv("PYMALLOC_BINDING_PROBE")) {
        void *volatile p = malloc(opaque(24));
        free(p);
        _exit(0);
    }
}
#endif
