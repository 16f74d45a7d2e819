/* The life of the per-thread caches (driven by tests/stress.rs):
 *   thread_cache exit THREADS   threads (joined, detached, leaving through
 *       pthread_exit, with key destructors that allocate and free after
 *       ours ran) each fill their cache and exit; afterwards the bytes and
 *       blocks in use are back where they were and only the main thread
 *       still has a cache, which malloc_trim empties.
 *   thread_cache fork ROUNDS    threads hold full caches while the main
 *       thread forks; each child allocates, checks the heap, and finds
 *       only its own cache (the others' blocks went back to the heap).
 * With PYMALLOC_THREAD_CACHE=0, or in the debug mode, both run with no
 * cache at all. Every step
 * ends with pymalloc_check_heap(). */
#include "stress.h"
#include "../../include/pymalloc.h"

/* Weak: preloaded, the program is linked without the library. */
#pragma weak pymalloc_get_stats
#pragma weak pymalloc_check_heap

static pymalloc_stats stats_now(void) {
    pymalloc_stats s = {.size = sizeof s};
    CHECK(pymalloc_get_stats(&s) == 0, "pymalloc_get_stats");
    return s;
}

/* Off with PYMALLOC_THREAD_CACHE=0, and in the debug mode (as the driver
   sets them: "0" and "1"). */
static int caches_on(void) {
    const char *size = getenv("PYMALLOC_THREAD_CACHE"), *debug = getenv("PYMALLOC_DEBUG");
    return !(size && !strcmp(size, "0")) && !(debug && !strcmp(debug, "1"));
}

/* Blocks of every cached size, freed in another order: fills the bins. */
static void fill_cache(uint64_t seed) {
    enum { N = 600 };
    unsigned char *b[N];
    for (int i = 0; i < N; i++) b[i] = blk_new(16 + rng(&seed) % (i % 8 ? 512 : 16384), seed);
    for (int i = 0; i < N; i++) blk_free(b[(i * 7) % N], "fill_cache");
}

static pthread_key_t late_key;
/* Runs among the key destructors, possibly after ours: allocates and frees. */
static void late_destructor(void *p) {
    free(p);
    void *q = malloc(opaque(100));
    CHECK(q != NULL, "malloc in a late destructor");
    free(q);
}

static atomic_int finished;
static void *exiting_thread(void *arg) {
    uintptr_t i = (uintptr_t)arg;
    CHECK(pthread_setspecific(late_key, malloc(opaque(64))) == 0, "pthread_setspecific");
    fill_cache(0x9E3779B97F4A7C15ull * (i + 1));
    atomic_fetch_add(&finished, 1);
    if (i % 3 == 0) pthread_exit(NULL);
    return NULL;
}

static void run_threads(int threads);
static void check_back(pymalloc_stats before, int threads);

static void exit_mode(int threads) {
    CHECK(pthread_key_create(&late_key, late_destructor) == 0, "pthread_key_create");
    /* The first pthread_exit loads libgcc_s (glibc keeps what that
       allocates): a first round of threads before counting. */
    run_threads(8);
    /* Multi-threaded now: the main thread gets a cache, kept throughout. */
    fill_cache(2);
    pymalloc_stats before = stats_now();
    run_threads(threads);
    check_back(before, threads);
    /* malloc_trim gives the calling thread's cache back. */
    malloc_trim(0);
    pymalloc_stats trimmed = stats_now();
    CHECK(trimmed.thread_cache_blocks == 0 && trimmed.bytes_in_use == before.bytes_in_use,
          "after malloc_trim: %zu cached blocks, %zu bytes in use (%zu before)", trimmed.thread_cache_blocks,
          trimmed.bytes_in_use, before.bytes_in_use);
    CHECK(pymalloc_check_heap() == 0, "heap check");
}

static void run_threads(int threads) {
    atomic_store(&finished, 0);
    for (int i = 0; i < threads; i += 8) {
        pthread_t t[8];
        int n = threads - i < 8 ? threads - i : 8;
        for (int k = 0; k < n; k++) {
            CHECK(pthread_create(&t[k], NULL, exiting_thread, (void *)(uintptr_t)(i + k)) == 0, "pthread_create");
            if ((i + k) % 2) pthread_detach(t[k]);
        }
        for (int k = 0; k < n; k++)
            if ((i + k) % 2 == 0) pthread_join(t[k], NULL);
    }
    /* Detached threads: wait until every one has left its function and,
       since the cache count drops only in its destructor, its cache. */
    for (int tries = 0;; tries++) {
        pymalloc_stats s = stats_now();
        if (atomic_load(&finished) == threads && s.thread_caches <= (size_t)caches_on()) break;
        CHECK(tries < 10000, "caches of exited threads remain: %zu", s.thread_caches);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    struct timespec ms = {0, 20000000}; /* the last detached threads finish exiting */
    nanosleep(&ms, NULL);
}

static void check_back(pymalloc_stats before, int threads) {
    pymalloc_stats after = stats_now();
    CHECK(after.bytes_in_use == before.bytes_in_use,
          "bytes in use %zu after %d threads, %zu before", after.bytes_in_use, threads, before.bytes_in_use);
    CHECK(after.blocks_in_use == before.blocks_in_use, "blocks in use %zu, %zu before",
          after.blocks_in_use, before.blocks_in_use);
    CHECK(after.thread_caches == (size_t)caches_on(), "%zu caches", after.thread_caches);
    CHECK(caches_on() == (after.thread_cache_blocks > 0), "main thread's cache: %zu blocks",
          after.thread_cache_blocks);
}

static pthread_barrier_t hold, release;
static void *holding_thread(void *arg) {
    uint64_t seed = 0x2545F4914F6CDD1Dull * ((uintptr_t)arg + 1);
    for (;;) {
        fill_cache(seed++);
        pthread_barrier_wait(&hold);    /* caches full: the main thread forks */
        pthread_barrier_wait(&release); /* forked */
        if (atomic_load(&load_stop)) return NULL;
    }
}

static void fork_mode(int rounds) {
    enum { HOLDERS = 3 };
    pthread_t t[HOLDERS];
    pthread_barrier_init(&hold, NULL, HOLDERS + 1);
    pthread_barrier_init(&release, NULL, HOLDERS + 1);
    for (int i = 0; i < HOLDERS; i++) pthread_create(&t[i], NULL, holding_thread, (void *)(uintptr_t)i);
    for (int r = 0; r < rounds; r++) {
        pthread_barrier_wait(&hold);
        pymalloc_stats parent = stats_now();
        if (caches_on()) CHECK(parent.thread_caches >= HOLDERS, "%zu caches", parent.thread_caches);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            pymalloc_stats child = stats_now();
            /* Only this thread's cache is left; the others' blocks are
               free again, so fewer blocks are in use than the parent had
               handed to its caches. */
            CHECK(child.thread_caches <= 1, "child sees %zu caches", child.thread_caches);
            CHECK(child.blocks_in_use == parent.blocks_in_use, "child: %zu blocks in use, parent %zu",
                  child.blocks_in_use, parent.blocks_in_use);
            fill_cache(r);
            CHECK(pymalloc_check_heap() == 0, "heap check in the child");
            _exit(0);
        }
        wait_child(pid, 10);
        if (r == rounds - 1) atomic_store(&load_stop, 1);
        pthread_barrier_wait(&release);
    }
    for (int i = 0; i < HOLDERS; i++) pthread_join(t[i], NULL);
    CHECK(pymalloc_check_heap() == 0, "heap check");
}

int main(int argc, char **argv) {
    CHECK(pymalloc_get_stats && pymalloc_check_heap, "not running under libpymalloc");
    CHECK(argc == 3, "usage: thread_cache exit|fork N");
    int n = atoi(argv[2]);
    if (!strcmp(argv[1], "exit")) exit_mode(n);
    else if (!strcmp(argv[1], "fork")) fork_mode(n);
    else CHECK(0, "unknown mode %s", argv[1]);
    puts("ok");
    return 0;
}
