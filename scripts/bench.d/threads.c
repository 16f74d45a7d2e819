/* Multi-threaded allocation workloads; the total work is fixed, split
 * between the threads.
 *   threads churn|prodcons|larson THREADS [scale]
 * churn:    each thread churns its own 16..512 B blocks (random lifetimes)
 * prodcons: thread i allocates blocks that thread i+1 (mod THREADS) frees,
 *           passed through a ring buffer
 * larson:   a server simulation after Larson & Krishnan: threads replace
 *           random blocks of a shared table, each round in another
 *           thread's part of it, so blocks die in threads other than
 *           the one that allocated them
 * Prints a checksum so the work cannot be optimised away. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_THREADS = 64 };

static int nthreads;
static double scale = 1.0;
static _Atomic uint64_t checksum;

static inline uint64_t next(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

static void *churn(void *arg) {
    uint64_t rng = 88172645463325252ull + (uintptr_t)arg * 7919;
    enum { SLOTS = 1 << 13 };
    char **slot = calloc(SLOTS, sizeof *slot);
    long ops = (long)(24e6 * scale) / nthreads;
    uint64_t sum = 0;
    for (long i = 0; i < ops; i++) {
        size_t k = next(&rng) % SLOTS;
        if (slot[k]) {
            sum += (unsigned char)slot[k][0];
            free(slot[k]);
            slot[k] = NULL;
        } else {
            size_t n = 16 + next(&rng) % 497;
            slot[k] = malloc(n);
            slot[k][0] = (char)n;
            slot[k][n - 1] = 1;
        }
    }
    for (size_t k = 0; k < SLOTS; k++) free(slot[k]);
    free(slot);
    checksum += sum;
    return NULL;
}

/* One single-producer single-consumer ring per thread: thread i writes
 * ring[(i+1) % n], reads ring[i]. */
enum { RING = 1024 };
struct ring {
    _Atomic size_t head; /* next slot the consumer reads */
    char pad1[64];
    _Atomic size_t tail; /* next slot the producer writes */
    char pad2[64];
    char *item[RING];
};
static struct ring rings[MAX_THREADS];

static void *prodcons(void *arg) {
    int me = (int)(uintptr_t)arg;
    uint64_t rng = 88172645463325252ull + (uintptr_t)arg * 7919;
    struct ring *out = &rings[(me + 1) % nthreads], *in = &rings[me];
    long total = (long)(30e6 * scale) / nthreads, made = 0, eaten = 0;
    uint64_t sum = 0;
    while (made < total || eaten < total) {
        long before = made + eaten;
        /* produce a burst while there is room */
        for (int b = 0; b < 64 && made < total; b++) {
            size_t t = atomic_load_explicit(&out->tail, memory_order_relaxed);
            if (t - atomic_load_explicit(&out->head, memory_order_acquire) == RING) break;
            size_t n = 16 + next(&rng) % 497;
            char *p = malloc(n);
            p[0] = (char)n;
            p[n - 1] = 1;
            out->item[t % RING] = p;
            atomic_store_explicit(&out->tail, t + 1, memory_order_release);
            made++;
        }
        /* consume what has arrived */
        for (int b = 0; b < 64 && eaten < total; b++) {
            size_t h = atomic_load_explicit(&in->head, memory_order_relaxed);
            if (h == atomic_load_explicit(&in->tail, memory_order_acquire)) break;
            char *p = in->item[h % RING];
            sum += (unsigned char)p[0];
            free(p);
            atomic_store_explicit(&in->head, h + 1, memory_order_release);
            eaten++;
        }
        if (made + eaten == before) sched_yield(); /* the other side is behind */
    }
    checksum += sum;
    return NULL;
}

enum { LARSON_SLOTS = 4096 };
static char **table;
static pthread_barrier_t barrier;

static void *larson(void *arg) {
    int me = (int)(uintptr_t)arg;
    uint64_t rng = 88172645463325252ull + (uintptr_t)arg * 7919;
    int rounds = 40;
    long ops = (long)(16e6 * scale) / nthreads / rounds;
    uint64_t sum = 0;
    for (int r = 0; r < rounds; r++) {
        /* this round's part of the table, last touched by another thread */
        char **part = table + (size_t)((me + r) % nthreads) * LARSON_SLOTS;
        for (long i = 0; i < ops; i++) {
            size_t k = next(&rng) % LARSON_SLOTS;
            if (part[k]) {
                sum += (unsigned char)part[k][0];
                free(part[k]);
            }
            size_t n = 16 + next(&rng) % 1009;
            part[k] = malloc(n);
            memset(part[k], (int)n, n < 32 ? n : 32);
        }
        pthread_barrier_wait(&barrier);
    }
    checksum += sum;
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "churn";
    nthreads = argc > 2 ? atoi(argv[2]) : 2;
    scale = argc > 3 ? atof(argv[3]) : 1.0;
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "threads: 1..%d threads\n", MAX_THREADS);
        return 2;
    }
    void *(*body)(void *);
    if (!strcmp(mode, "churn")) body = churn;
    else if (!strcmp(mode, "prodcons")) body = prodcons;
    else if (!strcmp(mode, "larson")) {
        body = larson;
        table = calloc((size_t)nthreads * LARSON_SLOTS, sizeof *table);
        pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    } else {
        fprintf(stderr, "threads: unknown workload %s\n", mode);
        return 2;
    }
    pthread_t tid[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) pthread_create(&tid[i], NULL, body, (void *)(uintptr_t)i);
    for (int i = 0; i < nthreads; i++) pthread_join(tid[i], NULL);
    if (table) {
        for (size_t k = 0; k < (size_t)nthreads * LARSON_SLOTS; k++) free(table[k]);
        free(table);
    }
    printf("%llu\n", (unsigned long long)checksum);
    return 0;
}
