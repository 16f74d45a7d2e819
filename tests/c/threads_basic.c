/* 4 threads doing random malloc/realloc/free with content checks, and blocks
   handed between threads through a mutex-protected queue, freed by the
   consumer. Runs for about 1.5 seconds. */
#include "check.h"

#include <pthread.h>
#include <time.h>
#define QUEUE_CAP 4096
#include "queue.h"

enum { NTHREADS = 4, SLOTS = 2000 };
#define RUN_SECONDS 1.5

struct hdr { /* at the start of every block of >= 16 bytes */
    uint32_t size, owner;
    uint64_t tag;
};

static double deadline;
static unsigned long handed[NTHREADS], received[NTHREADS], foreign[NTHREADS];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static uint64_t next(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}
static unsigned char pat(uint64_t tag, size_t j) { return (unsigned char)(tag >> ((j & 7) * 8)) ^ (unsigned char)(j >> 3); }

static void fill(unsigned char *p, size_t from, size_t to, uint64_t tag) {
    for (size_t j = from; j < to; j++) p[j] = pat(tag, j);
}
static void verify(const unsigned char *p, size_t n, uint64_t tag, int t, const char *when) {
    for (size_t j = sizeof(struct hdr); j < n; j++)
        CHECK(p[j] == pat(tag, j), "thread %d, %s: block %p (size %zu) byte %zu corrupted", t, when, (void *)p, n, j);
}

static size_t random_size(uint64_t *s) {
    uint64_t r = next(s) % 1000;
    if (r < 900) return sizeof(struct hdr) + next(s) % 600;
    if (r < 990) return sizeof(struct hdr) + next(s) % 20000;
    return sizeof(struct hdr) + next(s) % (1 << 20);
}

static unsigned char *new_block(size_t n, int t, uint64_t tag) {
    unsigned char *p = malloc(opaque(n));
    CHECK(p != NULL, "thread %d: malloc(%zu) failed", t, n);
    CHECK(((uintptr_t)p & 15) == 0, "thread %d: malloc(%zu) = %p not 16-aligned", t, n, (void *)p);
    CHECK(malloc_usable_size(p) >= n, "thread %d: usable size of a %zu-byte block too small", t, n);
    struct hdr h = {(uint32_t)n, (uint32_t)t, tag};
    memcpy(p, &h, sizeof h);
    fill(p, sizeof h, n, tag);
    return p;
}

static void check_and_free(unsigned char *p, int t, const char *when) {
    struct hdr h;
    memcpy(&h, p, sizeof h);
    CHECK(h.size >= sizeof h && h.size <= (1 << 20) + sizeof h && h.owner < NTHREADS,
          "thread %d, %s: block %p has a corrupted header", t, when, (void *)p);
    verify(p, h.size, h.tag, t, when);
    free(p);
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    uint64_t seed = 0x1234567 + (uint64_t)t * 0x9E3779B97F4A7C15ull, tagctr = (uint64_t)t << 48;
    static __thread unsigned char *slot[SLOTS];
    unsigned long ops = 0;
    while ((ops & 255) || now() < deadline) {
        ops++;
        size_t i = next(&seed) % SLOTS;
        uint64_t op = next(&seed) % 100;
        if (!slot[i]) {
            slot[i] = new_block(random_size(&seed), t, ++tagctr * 0x9E3779B97F4A7C15ull);
        } else if (op < 40) {
            check_and_free(slot[i], t, "free");
            slot[i] = NULL;
        } else if (op < 75) { /* realloc, contents kept */
            struct hdr h;
            memcpy(&h, slot[i], sizeof h);
            size_t n = random_size(&seed);
            unsigned char *q = realloc(slot[i], opaque(n));
            CHECK(q != NULL, "thread %d: realloc(%zu) failed", t, n);
            verify(q, h.size < n ? h.size : n, h.tag, t, "realloc");
            if (n > h.size) fill(q, h.size, n, h.tag);
            h.size = (uint32_t)n;
            memcpy(q, &h, sizeof h);
            slot[i] = q;
        } else if (op < 90) { /* hand the block to whichever thread pops it */
            if (queue_push(slot[i])) {
                slot[i] = NULL;
                handed[t]++;
            }
        } else { /* take a block from the queue (usually another thread's) and free it */
            unsigned char *p = queue_pop();
            if (p) {
                struct hdr h;
                memcpy(&h, p, sizeof h);
                foreign[t] += h.owner != (uint32_t)t;
                check_and_free(p, t, "consumer free");
                received[t]++;
            }
        }
    }
    for (size_t i = 0; i < SLOTS; i++)
        if (slot[i]) check_and_free(slot[i], t, "final free");
    return NULL;
}

int main(void) {
    pthread_t th[NTHREADS];
    deadline = now() + RUN_SECONDS;
    for (int t = 0; t < NTHREADS; t++)
        CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) == 0, "pthread_create failed");
    for (int t = 0; t < NTHREADS; t++) CHECK(pthread_join(th[t], NULL) == 0, "pthread_join failed");
    unsigned long h = 0, r = 0, f = 0;
    for (int t = 0; t < NTHREADS; t++) h += handed[t], r += received[t], f += foreign[t];
    for (unsigned char *p; (p = queue_pop()); r++) /* the main thread frees what is left */
        check_and_free(p, -1, "drain");
    CHECK(h == r, "handed %lu blocks but received %lu", h, r);
    CHECK(h > 100, "only %lu blocks were handed between threads", h);
    CHECK(f > 50, "only %lu blocks were freed by a thread other than their allocator", f);
    return 0;
}
