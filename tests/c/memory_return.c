/* Memory going back to the OS, in a real process (driven by
   tests/options.rs, which sets the options):
     memory_return trim            malloc_trim releases every empty pool,
                                   free arena and cached mapping, returns 1,
                                   and 0 when nothing is left to release;
     memory_return decay released  freed large blocks keep their pages until
     memory_return decay kept      PYMALLOC_DECAY_MS has passed ("released":
                                   the driver set a short delay) or not
                                   (a long one);
     memory_return cache N         after freeing six 8 MiB blocks (mappings
                                   of their own), N are cached: twice the
                                   largest freed, at most
                                   PYMALLOC_LARGE_CACHE;
     memory_return depot trim|released|kept|fork
                                   with a thread started (so that the
                                   thread caches are on), a burst of frees
                                   longer than a cache parks whole bins in
                                   the depot; malloc_trim gives them back,
                                   and so does the decay ("released": a
                                   short delay) or not ("kept"); a child
                                   forked with bins parked takes them,
                                   and its heap and the parent's check
                                   ("fork");
     memory_return shared          pools that fault in fresh pages first
                                   take as many back from the free spans
                                   that freed large blocks left resident:
                                   the two kinds share one footprint;
     memory_return shared pools    and as many from empty pools of other
                                   sizes that are still resident;
     memory_return shared kept     and from the pools each class keeps
                                   when it empties, once they have been
                                   idle for a tick of the heap's clock;
     memory_return trim blocks     malloc_trim gives back the pages inside
                                   free blocks of a pool still in use (a
                                   second trim finds none), and the blocks
                                   serve again, calloc's zeroed;
     memory_return decay blocks released|kept
                                   and so does the decay, once the pool
                                   has stayed as it was for a decay period
                                   ("released": a short one) or not
                                   ("kept"). */
#include "check.h"

#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pymalloc.h"

/* LARGE_SIZE blocks come from a region; MAPPING_SIZE ones are mappings. */
enum { SMALL = 20000, LARGE = 6, LARGE_SIZE = 2 << 20, MAPPING_SIZE = 40 << 20 };

static pymalloc_stats get(void) {
    pymalloc_stats s;
    s.size = sizeof s;
    CHECK(pymalloc_get_stats(&s) == 0, "pymalloc_get_stats failed");
    return s;
}

/* Many small blocks allocated, written and freed: more than a cache in
   front of the heap could keep, so frees reach the heap (and its clock). */
static void churn_small(void) {
    static void *p[SMALL];
    for (int i = 0; i < SMALL; i++) {
        p[i] = malloc(opaque(64));
        CHECK(p[i] != NULL, "malloc(64) failed");
        memset(p[i], i, 64);
    }
    for (int i = 0; i < SMALL; i++) free(p[i]);
}

static void *nothing(void *arg) { return arg; }

/* The process's resident bytes. */
static size_t resident(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL, "/proc/self/statm");
    size_t pages, rss;
    CHECK(fscanf(f, "%zu %zu", &pages, &rss) == 2, "statm");
    fclose(f);
    return rss * (size_t)sysconf(_SC_PAGESIZE);
}

/* Frees through the calling thread's cache, of another class than
   churn_small's, enough for its clock to tick. */
static void tick_cache(void) {
    for (int i = 0; i < 20000; i++) {
        void *p = malloc(opaque(200));
        CHECK(p != NULL, "malloc(200) failed");
        free(p);
    }
}

/* 4 MiB of small blocks written and live at once (`live`), or freed. */
static void small_pools(int live) {
    enum { N = 65536, SIZE = 64 };
    static void *p[N];
    for (int i = 0; i < N; i++) {
        if (!live) {
            free(p[i]);
            continue;
        }
        p[i] = malloc(opaque(SIZE));
        CHECK(p[i] != NULL, "malloc(%d) failed", SIZE);
        memset(p[i], i, SIZE);
    }
}

/* One pool of 64 KiB blocks, written, all but the first freed; then
   `release` (which gives back their pages, or not), and, if `measure`,
   a check of the resident bytes and the statistics against
   `expect_released`. The blocks then serve again, calloc's zeroed. */
static void free_blocks_pages(int (*release)(void), int measure, int expect_released) {
    enum { N = 16, SIZE = 64 << 10 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(opaque(SIZE));
        CHECK(p[i] != NULL, "malloc(%d) failed", SIZE);
        memset(p[i], 0x5a, SIZE);
    }
    for (int i = 1; i < N; i++) free(p[i]);
    size_t rss_before = resident();
    pymalloc_stats before = get();
    CHECK(release(), "the release reported nothing released with %d free blocks of %d bytes", N - 1, SIZE);
    pymalloc_stats after = get();
    size_t rss_after = resident();
    size_t want = (N - 1) * (size_t)(SIZE - 4096);
    if (measure && expect_released) {
        CHECK(after.bytes_returned >= before.bytes_returned + want, "bytes returned to the OS %zu -> %zu, want %zu more",
              before.bytes_returned, after.bytes_returned, want);
        CHECK(rss_after + want <= rss_before + (64 << 10), "resident %zu KiB -> %zu KiB, want %zu KiB less",
              rss_before >> 10, rss_after >> 10, want >> 10);
    } else if (measure) {
        CHECK(rss_after + (64 << 10) >= rss_before, "resident %zu KiB -> %zu KiB, want no less", rss_before >> 10,
              rss_after >> 10);
    }
    for (int i = 1; i < N; i++) {
        unsigned char *c = calloc(1, opaque(SIZE));
        CHECK(c != NULL, "calloc(%d) failed", SIZE);
        for (size_t j = 0; j < SIZE; j++) CHECK(c[j] == 0, "calloc's block %d holds %#x at offset %zu", i, c[j], j);
        memset(c, i, SIZE);
        p[i] = c;
    }
    for (int i = 0; i < N; i++) free(p[i]);
}

/* malloc_trim twice: the first releases, the second finds nothing. */
static int trim_twice(void) {
    int first = malloc_trim(0);
    CHECK(malloc_trim(0) == 0, "a second malloc_trim found something to release");
    return first == 1;
}

/* Pauses longer than the decay (50 ms), each followed by frees enough
   to tick the clock (of one small block again and again, so that no
   pool empties or decays): the first look that finds the pool as it was
   a decay period earlier gives its free blocks' pages back (or not). */
static int decay_pauses(void) {
    for (int i = 0; i < 3; i++) {
        struct timespec pause = {0, 60 * 1000 * 1000};
        nanosleep(&pause, NULL);
        for (int j = 0; j < 5000; j++) {
            void *p = malloc(opaque(64));
            CHECK(p != NULL, "malloc(64) failed");
            free(p);
        }
    }
    return 1;
}

static void churn_large(size_t size) {
    void *p[LARGE];
    for (int i = 0; i < LARGE; i++) {
        p[i] = malloc(opaque(size));
        CHECK(p[i] != NULL, "malloc(%zu) failed", size);
        memset(p[i], i, size);
    }
    for (int i = 0; i < LARGE; i++) free(p[i]);
}

int main(int argc, char **argv) {
    CHECK(argc >= 2,
          "usage: memory_return trim [blocks]|decay released|decay kept|decay blocks released|kept|cache N|depot trim|released|kept|fork|shared [pools|kept]");
    if (argc > 2 && strcmp(argv[2], "blocks") == 0) {
        int trim = strcmp(argv[1], "trim") == 0;
        CHECK(trim || (strcmp(argv[1], "decay") == 0 && argc == 4), "usage: memory_return trim|decay blocks [released|kept]");
        int expect_released = trim || strcmp(argv[3], "released") == 0;
        /* The code measured runs once first, so that the library pages
           it faults in (a fault maps up to 16 of them) are not counted. */
        free_blocks_pages(trim ? trim_twice : decay_pauses, 0, expect_released);
        free_blocks_pages(trim ? trim_twice : decay_pauses, 1, expect_released);
    } else if (strcmp(argv[1], "trim") == 0) {
        churn_small();
        churn_large(LARGE_SIZE);
        churn_large(MAPPING_SIZE);
        pymalloc_stats before = get();
        CHECK(before.cached_mappings > 0, "no freed mapping cached before the trim");
        int released = malloc_trim(0);
        pymalloc_stats after = get();
        CHECK(released == 1, "malloc_trim returned %d with memory to release", released);
        CHECK(after.cached_mappings == 0 && after.cached_bytes == 0, "%zu mappings (%zu bytes) still cached after malloc_trim",
              after.cached_mappings, after.cached_bytes);
        CHECK(after.free_arena_bytes == 0, "%zu bytes of free arenas kept after malloc_trim", after.free_arena_bytes);
        CHECK(after.bytes_returned >= before.bytes_returned + before.cached_bytes,
              "bytes returned to the OS %zu -> %zu", before.bytes_returned, after.bytes_returned);
        CHECK(after.bytes_mapped + before.cached_bytes <= before.bytes_mapped, "bytes mapped %zu -> %zu",
              before.bytes_mapped, after.bytes_mapped);
        CHECK(malloc_trim(0) == 0, "a second malloc_trim found something to release");
    } else if (strcmp(argv[1], "decay") == 0 && argc == 3) {
        int expect_released = strcmp(argv[2], "released") == 0;
        /* The heap starts its clock with its first arena: what is
           freed before the first tick is stamped with that time, not 0
           (which would read as long ago). Twice: the second burst
           finds its pools resident, so the bursts after churn_large
           fault in no fresh pool (which would take pages of the free
           spans back, see "shared"). */
        churn_small();
        churn_small();
        churn_large(LARGE_SIZE);
        /* The six spans merged with each other and the rest of their
           regions: a free span per region (8 MiB regions, then more as
           the regions grow), 12 MiB resident in all. */
        pymalloc_stats before = get();
        CHECK(before.cached_mappings >= 1 && before.cached_mappings <= 2 &&
                  before.cached_bytes == LARGE * (size_t)LARGE_SIZE,
              "%zu mappings cached (%zu bytes), want 1 or 2 (%zu)", before.cached_mappings, before.cached_bytes,
              LARGE * (size_t)LARGE_SIZE);
        struct timespec pause = {0, 300 * 1000 * 1000};
        nanosleep(&pause, NULL);
        churn_small();
        churn_small();
        pymalloc_stats after = get();
        if (expect_released)
            CHECK(after.cached_mappings == 0 && after.bytes_returned >= before.bytes_returned + LARGE * (size_t)LARGE_SIZE,
                  "after the decay delay: %zu mappings cached, bytes returned %zu -> %zu", after.cached_mappings,
                  before.bytes_returned, after.bytes_returned);
        else
            CHECK(after.cached_mappings == before.cached_mappings && after.cached_bytes == before.cached_bytes,
                  "before the decay delay: %zu mappings cached (%zu bytes)", after.cached_mappings, after.cached_bytes);
    } else if (strcmp(argv[1], "cache") == 0 && argc == 3) {
        size_t want = strtoul(argv[2], NULL, 10);
        churn_large(MAPPING_SIZE);
        pymalloc_stats s = get();
        CHECK(s.cached_mappings == want, "%zu mappings cached, want %zu", s.cached_mappings, want);
        CHECK(s.cached_bytes == want * MAPPING_SIZE, "%zu bytes cached, want %zu", s.cached_bytes, want * MAPPING_SIZE);
    } else if (strcmp(argv[1], "depot") == 0 && argc == 3) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, nothing, NULL) == 0 && pthread_join(t, NULL) == 0, "thread");
        churn_small();
        pymalloc_stats before = get();
        /* 1.28 MB of 64-byte blocks: more than a cache holds (512 KiB). */
        CHECK(before.thread_cache_bytes > (512 << 10), "%zu bytes in thread caches and the depot after the burst",
              before.thread_cache_bytes);
        if (strcmp(argv[2], "fork") == 0) {
            /* Both sides allocate the parked blocks again (and more),
               write them, check the heap, free them and trim: the parked
               lists are the child's as they were the parent's. */
            pid_t child = fork();
            CHECK(child >= 0, "fork: %s", strerror(errno));
            churn_small();
            CHECK(pymalloc_check_heap() == 0, "heap check failed in the %s", child == 0 ? "child" : "parent");
            CHECK(malloc_trim(0) == 1, "malloc_trim found nothing to release");
            CHECK(get().thread_cache_bytes == 0, "bytes left in thread caches and the depot after malloc_trim");
            if (child == 0) _exit(pymalloc_check_heap() == 0 ? 0 : 1);
            int status;
            CHECK(waitpid(child, &status, 0) == child, "waitpid: %s", strerror(errno));
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %d)", status);
        } else if (strcmp(argv[2], "trim") == 0) {
            CHECK(malloc_trim(0) == 1, "malloc_trim found nothing to release");
            pymalloc_stats after = get();
            CHECK(after.thread_cache_bytes == 0, "%zu bytes in thread caches and the depot after malloc_trim",
                  after.thread_cache_bytes);
        } else {
            int expect_released = strcmp(argv[2], "released") == 0;
            struct timespec pause = {0, 300 * 1000 * 1000};
            nanosleep(&pause, NULL);
            tick_cache();
            pymalloc_stats after = get();
            if (expect_released)
                CHECK(after.thread_cache_bytes < (64 << 10), "after the decay delay: %zu bytes in thread caches and the depot",
                      after.thread_cache_bytes);
            else
                CHECK(after.thread_cache_bytes >= before.thread_cache_bytes,
                      "before the decay delay: %zu bytes in thread caches and the depot, %zu after the burst",
                      after.thread_cache_bytes, before.thread_cache_bytes);
        }
    } else if (strcmp(argv[1], "shared") == 0 && argc > 2 && strcmp(argv[2], "kept") == 0) {
        /* A pool's worth of blocks of each of eight medium sizes, written
           and freed: each class keeps its emptied pool, resident. */
        static const size_t sizes[] = {2048, 2560, 3072, 3584, 4096, 8192, 12288, 16384};
        enum { PER_POOL = 16, CLASSES = sizeof sizes / sizeof sizes[0] };
        size_t kept = 0;
        for (int c = 0; c < CLASSES; c++) {
            void *m[PER_POOL];
            for (int i = 0; i < PER_POOL; i++) {
                m[i] = malloc(opaque(sizes[c]));
                CHECK(m[i] != NULL, "malloc(%zu) failed", sizes[c]);
                memset(m[i], i, sizes[c]);
            }
            for (int i = 0; i < PER_POOL; i++) free(m[i]);
            kept += PER_POOL * sizes[c];
        }
        /* Idle for a tick of the clock: a pause, then frees enough to
           read the clock (blocks of the smallest pools, which stay). */
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
        churn_small();
        pymalloc_stats before = get();
        small_pools(1); /* new pools, fresh pages */
        pymalloc_stats after = get();
        CHECK(after.bytes_returned >= before.bytes_returned + kept,
              "%zu bytes returned to the OS after 4 MiB of new small pools beside %zu bytes of idle kept pools, %zu before",
              after.bytes_returned, kept, before.bytes_returned);
        small_pools(0);
    } else if (strcmp(argv[1], "shared") == 0 && argc > 2 && strcmp(argv[2], "pools") == 0) {
        /* 4 MiB of 4 KiB blocks, written and freed but for one in 256
           (so that no arena becomes free, to be cut anew for small
           pools): their pools are empty and resident (the driver set a
           long decay). */
        enum { MEDIUM_N = 1024, MEDIUM_SIZE = 4096, KEPT_EVERY = 256 };
        static void *m[MEDIUM_N];
        for (int i = 0; i < MEDIUM_N; i++) {
            m[i] = malloc(opaque(MEDIUM_SIZE));
            CHECK(m[i] != NULL, "malloc(%d) failed", MEDIUM_SIZE);
            memset(m[i], i, MEDIUM_SIZE);
        }
        for (int i = 0; i < MEDIUM_N; i++)
            if (i % KEPT_EVERY != 0) free(m[i]);
        pymalloc_stats before = get();
        small_pools(1); /* pools of another size, fresh pages */
        pymalloc_stats after = get();
        CHECK(after.bytes_returned >= before.bytes_returned + (3 << 20),
              "%zu bytes returned to the OS after 4 MiB of new small pools beside 4 MiB of empty medium ones, %zu before",
              after.bytes_returned, before.bytes_returned);
        small_pools(0);
        for (int i = 0; i < MEDIUM_N; i += KEPT_EVERY) free(m[i]);
    } else if (strcmp(argv[1], "shared") == 0) {
        churn_large(LARGE_SIZE);
        pymalloc_stats before = get();
        CHECK(before.cached_bytes == LARGE * (size_t)LARGE_SIZE, "%zu bytes kept resident in free spans, want %zu",
              before.cached_bytes, LARGE * (size_t)LARGE_SIZE);
        small_pools(1); /* new pools, fresh pages */
        pymalloc_stats after = get();
        CHECK(after.cached_bytes + (3 << 20) <= before.cached_bytes,
              "%zu bytes kept resident in free spans after 4 MiB of new pools, %zu before", after.cached_bytes,
              before.cached_bytes);
        small_pools(0);
    } else {
        CHECK(0, "unknown mode %s", argv[1]);
    }
    CHECK(pymalloc_check_heap() == 0, "heap check failed");
    return 0;
}
