/* stress_threads NTHREADS [OPS]: each thread runs OPS random
   malloc/calloc/realloc/posix_memalign/free calls on sizes from 1 byte to
   4 MiB, checking every block's contents, and hands blocks to other threads
   through a shared queue; whoever pops a block checks and frees it. */
#include "stress.h"
#define QUEUE_CAP 1024
#include "queue.h"

enum { SLOTS = 1024 };

static atomic_ulong handed, received;
static long ops_per_thread;

/* Mostly small, some medium, a few up to 4 MiB. */
static size_t random_size(uint64_t *s) {
    uint64_t r = rng(s) % 1000;
    if (r < 850) return 1 + rng(s) % 512;
    if (r < 990) return 1 + rng(s) % (128 << 10);
    return 1 + rng(s) % (4 << 20);
}

static unsigned char *new_block(uint64_t *s, uint64_t tag) {
    size_t n = random_size(s);
    if (n < sizeof(struct blk)) n = sizeof(struct blk);
    unsigned char *p;
    switch (rng(s) % 4) {
    case 0: { /* calloc: zeroed */
        p = calloc(1, opaque(n));
        CHECK(p != NULL, "calloc(%zu) failed", n);
        size_t step = n > 4096 ? 97 : 1;
        for (size_t j = 0; j < n; j += step) CHECK(p[j] == 0, "calloc(%zu) byte %zu not zero", n, j);
        break;
    }
    case 1: { /* posix_memalign, 16 B .. 64 KiB */
        size_t align = (size_t)16 << (rng(s) % 13);
        void *q = NULL;
        CHECK(posix_memalign(&q, align, n) == 0, "posix_memalign(%zu, %zu) failed", align, n);
        CHECK(((uintptr_t)q & (align - 1)) == 0, "posix_memalign(%zu) = %p misaligned", align, q);
        p = q;
        break;
    }
    default:
        p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu) failed", n);
    }
    CHECK(((uintptr_t)p & 15) == 0, "block %p not 16-aligned", (void *)p);
    CHECK(malloc_usable_size(p) >= n, "usable size of a %zu-byte block too small", n);
    struct blk h = {n, tag};
    memcpy(p, &h, sizeof h);
    blk_fill(p, sizeof h, n, tag);
    return p;
}

static void *worker(void *arg) {
    uint64_t seed = 0x1234567 + (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull;
    uint64_t tag = (uint64_t)(uintptr_t)arg << 48;
    unsigned char **slot = calloc(SLOTS, sizeof *slot);
    CHECK(slot != NULL, "calloc of the slot table failed");
    for (long k = 0; k < ops_per_thread; k++) {
        size_t i = rng(&seed) % SLOTS;
        uint64_t op = rng(&seed) % 100;
        if (!slot[i]) {
            slot[i] = new_block(&seed, ++tag * 0x9E3779B97F4A7C15ull);
        } else if (op < 35) {
            blk_free(slot[i], "free");
            slot[i] = NULL;
        } else if (op < 70) { /* realloc keeps the common prefix */
            struct blk h;
            memcpy(&h, slot[i], sizeof h);
            size_t n = random_size(&seed);
            if (n < sizeof h) n = sizeof h;
            unsigned char *q = realloc(slot[i], opaque(n));
            CHECK(q != NULL, "realloc(%zu) failed", n);
            size_t keep = h.size < n ? h.size : n;
            h.size = keep;
            memcpy(q, &h, sizeof h);
            blk_verify(q, "realloc");
            blk_fill(q, keep, n, h.tag);
            h.size = n;
            memcpy(q, &h, sizeof h);
            slot[i] = q;
        } else if (op < 85) { /* hand over */
            if (queue_push(slot[i])) {
                slot[i] = NULL;
                atomic_fetch_add(&handed, 1);
            }
        } else { /* free someone's handed block */
            unsigned char *p = queue_pop();
            if (p) {
                blk_free(p, "consumer free");
                atomic_fetch_add(&received, 1);
            }
        }
    }
    for (size_t i = 0; i < SLOTS; i++)
        if (slot[i]) blk_free(slot[i], "final free");
    free(slot);
    return NULL;
}

int main(int argc, char **argv) {
    int n = (int)arg_or(argc, argv, 1, 4);
    ops_per_thread = arg_or(argc, argv, 2, 200000 / n);
    pthread_t th[64];
    CHECK(n <= 64, "at most 64 threads");
    for (int t = 0; t < n; t++)
        CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) == 0, "pthread_create failed");
    for (int t = 0; t < n; t++) CHECK(pthread_join(th[t], NULL) == 0, "pthread_join failed");
    for (unsigned char *p; (p = queue_pop());) {
        blk_free(p, "drain");
        atomic_fetch_add(&received, 1);
    }
    CHECK(handed == received, "handed %lu blocks, freed %lu", (unsigned long)handed, (unsigned long)received);
    CHECK(handed > 100, "only %lu blocks changed threads", (unsigned long)handed);
    heap_check("end");
    printf("%d threads x %ld ops, %lu blocks changed threads\n", n, ops_per_thread, (unsigned long)handed);
    return 0;
}
