/* A thread that stops calling keeps nothing it does not use:
 *   idle_thread trim|decay
 * A worker allocates about 200 MB of small and medium blocks, frees them
 * all in random order, then waits on a condition variable. Its cache
 * holds what it freed last, scattered over many pools. Then the main
 * thread either calls malloc_trim(0) (trim), or keeps allocating and
 * freeing a little for a few decay periods (decay): either way, the idle
 * worker's cache is given back and the process's resident memory must
 * fall to a few MiB (it is about 210 MB at the peak). */
#include "check.h"

#include <pthread.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int stage; /* 1: the worker freed everything; 2: the worker may exit */

static size_t resident(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL, "/proc/self/statm");
    size_t pages = 0, rss = 0;
    CHECK(fscanf(f, "%zu %zu", &pages, &rss) == 2, "statm");
    fclose(f);
    return rss * (size_t)sysconf(_SC_PAGESIZE);
}

static uint64_t s = 88172645463325252ull;
static uint64_t rnd(void) { s ^= s << 13, s ^= s >> 7, s ^= s << 17; return s; }

static void *worker(void *arg) {
    (void)arg;
    enum { N = 250000 };
    char **blocks = malloc(N * sizeof *blocks);
    CHECK(blocks != NULL, "malloc");
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        size_t n = rnd() % 4 ? 16 + rnd() % 496 : 513 + rnd() % 4000;
        blocks[i] = malloc(opaque(n));
        CHECK(blocks[i] != NULL, "malloc(%zu)", n);
        memset(blocks[i], 1, n);
        total += n;
    }
    for (int i = N - 1; i > 0; i--) { /* free in random order */
        int j = rnd() % (i + 1);
        char *t = blocks[i]; blocks[i] = blocks[j]; blocks[j] = t;
    }
    for (int i = 0; i < N; i++) free(blocks[i]);
    free(blocks);
    fprintf(stderr, "worker: %zu MB allocated and freed\n", total >> 20);
    pthread_mutex_lock(&lock);
    stage = 1;
    pthread_cond_broadcast(&cond);
    while (stage < 2) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc == 2 && (!strcmp(argv[1], "trim") || !strcmp(argv[1], "decay")), "usage: idle_thread trim|decay");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    pthread_mutex_lock(&lock);
    while (stage < 1) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    size_t before = resident();
    if (!strcmp(argv[1], "trim")) {
        malloc_trim(0);
    } else {
        /* A light load for about 2 s (8 decay periods of 250 ms): frees
           that tick the clock, blocks that stay in one pool. */
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        do {
            for (int i = 0; i < 10000; i++) free(malloc(opaque(64)));
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
            clock_gettime(CLOCK_MONOTONIC, &now);
        } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < 2000);
    }
    size_t after = resident();
    fprintf(stderr, "resident: %zu KiB with the worker idle, %zu KiB after (%s)\n", before >> 10, after >> 10, argv[1]);
    CHECK(after <= 8 << 20, "%zu KiB still resident with the worker idle (%s)", after >> 10, argv[1]);
    pthread_mutex_lock(&lock);
    stage = 2;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    pthread_join(t, NULL);
    return 0;
}
