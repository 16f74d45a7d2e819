/* Small-block alloc/free throughput with several threads: the cost of the
 * global lock under contention.
 *   lock_threads THREADS [OPS]
 * THREADS 0 runs one worker in the main thread with no thread ever created
 * (the process stays single-threaded, so the lock is elided).
 * Each of THREADS threads does OPS operations (default 4,000,000): a
 * sliding window of 64 live blocks of 16..256 B, each operation freeing
 * the oldest block and allocating a new one (so the window stays hot in
 * the cache and the allocator, not memory, is measured). Prints the total
 * operations per second and a checksum so the work cannot be optimised
 * away. Standalone: build with `cc -O2 -pthread lock_threads.c -o lock_threads`.
 * Run by scripts/bench.d/lock_threads.sh under glibc and pymalloc. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { WINDOW = 64 };
static long ops;

static void *worker(void *arg) {
    uint64_t rng = 88172645463325252ull + (uintptr_t)arg * 0x9E3779B97F4A7C15ull, sum = 0;
    unsigned char *live[WINDOW] = {0};
    for (long i = 0; i < ops; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        size_t slot = (size_t)i % WINDOW, n = 16 + rng % 241;
        free(live[slot]);
        unsigned char *p = malloc(n);
        if (!p) {
            fprintf(stderr, "malloc(%zu) failed\n", n);
            exit(1);
        }
        p[0] = (unsigned char)i, p[n - 1] = (unsigned char)n;
        sum += p[0] + p[n - 1];
        live[slot] = p;
    }
    for (int s = 0; s < WINDOW; s++) free(live[s]);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    ops = argc > 2 ? atol(argv[2]) : 4000000;
    if (threads < 0 || threads > 256 || ops < 1) {
        fprintf(stderr, "usage: lock_threads THREADS [OPS]\n");
        return 2;
    }
    pthread_t th[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int t = 0; t < threads; t++)
        if (pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t)) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    uint64_t sum = threads ? 0 : (uintptr_t)worker(0);
    for (int t = 0; t < threads; t++) {
        void *r;
        pthread_join(th[t], &r);
        sum += (uintptr_t)r;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("%d threads x %ld ops: %.1f M ops/s (checksum %llu)\n", threads, ops,
           (double)(threads ? threads : 1) * (double)ops / secs / 1e6, (unsigned long long)sum);
    return 0;
}
