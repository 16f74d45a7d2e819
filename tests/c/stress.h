/* Shared by the stress programs (driven by tests/stress.rs): a random
   generator, self-checking blocks, a background allocation load, and a
   bounded wait for child processes. */
#ifndef PYMALLOC_TEST_STRESS_H
#define PYMALLOC_TEST_STRESS_H
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

static inline uint64_t rng(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* A block starts with its size and a tag; every later byte is a function
   of the tag and its offset, so any corruption or overlap is caught. */
struct blk { size_t size; uint64_t tag; };

static inline unsigned char pat(uint64_t tag, size_t j) {
    return (unsigned char)(tag >> ((j & 7) * 8)) ^ (unsigned char)(j >> 3);
}
static inline void blk_fill(unsigned char *p, size_t from, size_t to, uint64_t tag) {
    for (size_t j = from; j < to; j++) p[j] = pat(tag, j);
}
/* Checks the whole block, or a sample of a big one (every 61st byte and the
   last 4 KiB) to keep multi-megabyte blocks affordable. */
static inline void blk_verify(const unsigned char *p, const char *what) {
    struct blk h;
    memcpy(&h, p, sizeof h);
    size_t step = h.size > (64 << 10) ? 61 : 1;
    for (size_t j = sizeof h; j < h.size; j += (j + 4096 < h.size) ? step : 1)
        CHECK(p[j] == pat(h.tag, j), "%s: block %p (size %zu) byte %zu corrupted", what, (void *)p, h.size, j);
}
static inline unsigned char *blk_new(size_t n, uint64_t tag) {
    if (n < sizeof(struct blk)) n = sizeof(struct blk);
    unsigned char *p = malloc(opaque(n));
    CHECK(p != NULL, "malloc(%zu) failed", n);
    struct blk h = {n, tag};
    memcpy(p, &h, sizeof h);
    blk_fill(p, sizeof h, n, tag);
    return p;
}
static inline void blk_free(unsigned char *p, const char *what) {
    blk_verify(p, what);
    free(p);
}

/* Background load: threads allocating and freeing small and medium
   self-checked blocks until `load_stop` is set. */
static atomic_int load_stop;
static void *load_worker(void *arg) {
    uint64_t seed = 0x9E3779B97F4A7C15ull * ((uint64_t)(uintptr_t)arg + 1), tag = seed;
    enum { N = 256 };
    unsigned char *slot[N] = {0};
    while (!atomic_load_explicit(&load_stop, memory_order_relaxed)) {
        size_t i = rng(&seed) % N;
        if (slot[i]) blk_free(slot[i], "load worker");
        size_t r = rng(&seed) % 100;
        slot[i] = blk_new(r < 90 ? rng(&seed) % 512 : rng(&seed) % 70000, ++tag);
    }
    for (size_t i = 0; i < N; i++)
        if (slot[i]) blk_free(slot[i], "load worker (end)");
    return NULL;
}
static inline void load_start(pthread_t *th, int n) {
    for (int i = 0; i < n; i++)
        CHECK(pthread_create(&th[i], NULL, load_worker, (void *)(intptr_t)i) == 0, "pthread_create failed");
}
static inline void load_end(pthread_t *th, int n) {
    atomic_store(&load_stop, 1);
    for (int i = 0; i < n; i++) CHECK(pthread_join(th[i], NULL) == 0, "pthread_join failed");
}

/* Waits for child `pid` (which must exit 0) at most `seconds`; a child
   still running then is deadlocked: print its stacks (if gdb is there),
   kill it and fail. */
static inline void wait_child(pid_t pid, int seconds) {
    struct timespec pause = {0, 1000000};
    for (long waited = 0;; waited++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d ended badly (status 0x%x)", (int)pid, st);
            return;
        }
        CHECK(r == 0 || errno == EINTR, "waitpid(%d): %s", (int)pid, strerror(errno));
        if (waited >= seconds * 1000L) {
            fprintf(stderr, "child %d did not finish within %d s: deadlocked\n", (int)pid, seconds);
            char cmd[128];
            snprintf(cmd, sizeof cmd, "gdb -p %d -batch -nx -ex 'thread apply all bt' 1>&2 2>/dev/null", (int)pid);
            if (system(cmd) != 0) fprintf(stderr, "(no stacks: gdb failed or is missing)\n");
            kill(pid, SIGKILL);
            exit(1);
        }
        nanosleep(&pause, NULL);
    }
}

/* pymalloc_check_heap(), bound by the dynamic linker if libpymalloc is
   loaded (a preloaded program is built without the library, hence the
   weak reference). Every stress program checks its heap at its end, and
   in its forked children. */
extern int pymalloc_check_heap(void) __attribute__((weak));
static inline void heap_check(const char *where) {
    CHECK(pymalloc_check_heap != NULL, "%s: no pymalloc_check_heap: libpymalloc is not loaded", where);
    CHECK(pymalloc_check_heap() == 0, "%s: pymalloc_check_heap() found the heap inconsistent", where);
}

/* argv[i] as a positive integer, or `dflt` when absent. */
static inline long arg_or(int argc, char **argv, int i, long dflt) {
    if (argc <= i) return dflt;
    long v = strtol(argv[i], NULL, 10);
    CHECK(v > 0, "bad argument %s", argv[i]);
    return v;
}
#endif
