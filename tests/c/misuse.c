/* Heap misuse that the allocator must stop: `misuse CASE` commits one
 * misuse and must not return. Before the faulty call it prints, on stdout,
 * "expect <message>" with the line the allocator must write on stderr
 * (addresses filled in), so the driver (tests/misuse.rs) can compare.
 * Exit status 0 means the misuse went unnoticed. */
#include "check.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <unistd.h>

/* C23, exported by libpymalloc (weak: the program also links without it). */
extern void free_sized(void *, size_t) __attribute__((weak));
extern void free_aligned_sized(void *, size_t, size_t) __attribute__((weak));
extern int pymalloc_check_heap(void) __attribute__((weak));

static char data_segment[64];

/* PYMALLOC_DEBUG=1: blocks carry guards (48 bytes more of the heap), some
   faults read differently, and misuse the default mode cannot see is
   caught. The driver also sets PYMALLOC_DEBUG_QUARANTINE. */
static int debug;

/* The heap's class size for a request of n bytes (0: a large block). */
static size_t class_size(size_t n) {
    if (debug) n = (n ? n : 1) + 48;
    if (n <= 512) return n <= 16 ? 16 : (n + 15) / 16 * 16;
    for (size_t base = 512; base < 128 * 1024; base *= 2)
        for (size_t k = 1; k <= 4; k++)
            if (base + k * base / 4 >= n) return base + k * base / 4;
    return 0;
}

/* "dd dd 41 ...": the 8 bytes at p, as the allocator prints them. */
static const char *hex8(const void *p) {
    static char out[3 * 8];
    for (int i = 0; i < 8; i++)
        sprintf(out + 3 * i, i < 7 ? "%02x " : "%02x", ((const unsigned char *)p)[i]);
    return out;
}

static void expect(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("expect pymalloc: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
}

/* A block of n bytes whose pool also holds a live neighbour, so that
   freeing it leaves the pool in use. */
static void *block_with_neighbour(size_t n) {
    void *keep = malloc(opaque(n));
    CHECK(keep != NULL, "malloc(%zu)", n);
    void *p = malloc(opaque(n));
    CHECK(p != NULL, "malloc(%zu)", n);
    return p;
}

/* ", size class N" or ", large block", as the allocator names a block. */
static const char *class_of(size_t n) {
    static char out[64];
    size_t c = class_size(n);
    if (c) snprintf(out, sizeof out, "size class %zu", c);
    else snprintf(out, sizeof out, "large block");
    return out;
}

static void double_free(size_t n) {
    void *p = block_with_neighbour(n);
    free(p);
    expect("free(): double free of %p, %s", p, class_of(n));
    free(p);
}

/* A block freed by another thread, which keeps running (so the block
   stays in that thread's cache), then freed again here. */
static sem_t freed_there;
static void *free_and_stay(void *p) {
    free(p);
    sem_post(&freed_there);
    for (;;) pause();
}
static void double_free_other_thread(size_t n) {
    void *p = block_with_neighbour(n);
    pthread_t t;
    sem_init(&freed_there, 0, 0);
    CHECK(pthread_create(&t, NULL, free_and_stay, p) == 0, "pthread_create");
    while (sem_wait(&freed_there) != 0) {}
    expect("free(): double free of %p, %s", p, class_of(n));
    free(p);
}

/* A block freed in a burst longer than a thread cache's bin, so that
   its bin went to the depot whole, then freed again. */
static void *nothing(void *arg) { return arg; }
static void double_free_parked(size_t n) {
    enum { BURST = 4096 };
    static void *blocks[BURST];
    pthread_t t; /* the thread caches are on once a thread has run */
    CHECK(pthread_create(&t, NULL, nothing, NULL) == 0 && pthread_join(t, NULL) == 0, "thread");
    for (int i = 0; i < BURST; i++)
        CHECK((blocks[i] = malloc(opaque(n))) != NULL, "malloc");
    for (int i = 0; i < BURST; i++)
        free(blocks[i]);
    expect("free(): double free of %p, %s", blocks[0], class_of(n));
    free(blocks[0]);
}

/* Debug mode: a write after free shows when the quarantine lets go. */
static void expect_write_after_free(void *block, size_t n, const void *bytes) {
    expect("malloc_trim(): write after free in block %p of %zu bytes: at offset 0: %s", block, n,
           hex8(bytes));
    malloc_trim(0);
}

/* "random-SEED": a few hundred random allocations and frees, then one
   misuse of a random kind on a random block. */
static uint64_t rng;
static size_t below(size_t n) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng % n;
}
static size_t random_size(void) {
    size_t r = below(100);
    return r < 70 ? below(513) : r < 95 ? 513 + below(128 * 1024) : 128 * 1024 + below(2 << 20);
}

static void random_misuse(uint64_t seed) {
    enum { N = 64 };
    static char *p[N];
    static size_t n[N];
    rng = seed * 0x9e3779b97f4a7c15ull + 12345;
    for (int op = 0; op < 400; op++) {
        int k = (int)below(N);
        if (p[k]) free(p[k]);
        n[k] = random_size();
        p[k] = malloc(opaque(n[k]));
        CHECK(p[k], "malloc(%zu)", n[k]);
        memset(p[k], (int)k, n[k]);
    }
    int k = (int)below(N);
    while (!p[k] || n[k] < 64) { /* a block that was allocated, with an interior */
        n[k] = 64 + random_size();
        p[k] = malloc(opaque(n[k]));
        CHECK(p[k], "malloc(%zu)", n[k]);
    }
    char *b = p[k];
    size_t size = n[k];
    switch (below(6)) {
    case 0:
        free(b);
        expect("free(): double free of %p, %s", (void *)b, class_of(size));
        free(b);
        break;
    case 1:
        free_sized(b, size);
        expect("free_sized(): double free of %p, %s", (void *)b, class_of(size));
        free_sized(b, size);
        break;
    case 2:
        free(b);
        expect("realloc(): pointer to a freed block %p, %s", (void *)b, class_of(size));
        b = realloc(b, opaque(size + 1));
        break;
    case 3:
        free(b);
        expect("malloc_usable_size(): pointer to a freed block %p, %s", (void *)b, class_of(size));
        malloc_usable_size(b);
        break;
    case 4: {
        char *inner = b + 16 * (1 + below(3)); /* inside the block */
        expect("free(): invalid pointer %p", (void *)inner);
        free(inner);
        break;
    }
    default: {
        size_t wrong = malloc_usable_size(b) + 1 + below(100);
        if (debug) expect("free_sized(): wrong size %zu for block %p of %zu bytes", wrong, (void *)b, size);
        else expect("free_sized(): wrong size %zu for block %p, %s", wrong, (void *)b, class_of(size));
        free_sized(b, wrong);
    }
    }
}

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: misuse CASE");
    const char *c = argv[1];
    /* Unbuffered: printing allocates no stdio buffer between the setup and
       the misuse (it could take the very block freed a moment before). */
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *d = getenv("PYMALLOC_DEBUG");
    debug = d && !strcmp(d, "1");
    void *volatile v;
    if (!strcmp(c, "double-free-small")) {
        double_free(48);
    } else if (!strcmp(c, "double-free-other-thread-small")) {
        double_free_other_thread(48);
    } else if (!strcmp(c, "double-free-other-thread-medium")) {
        double_free_other_thread(3000);
    } else if (!strcmp(c, "double-free-parked-small")) {
        double_free_parked(48);
    } else if (!strcmp(c, "double-free-parked-medium")) {
        double_free_parked(3000);
    } else if (!strcmp(c, "double-free-medium")) {
        double_free(3000);
    } else if (!strcmp(c, "double-free-large")) {
        double_free(1 << 20);
    } else if (!strcmp(c, "double-free-large-unmapped")) {
        double_free((size_t)200 << 20); /* too big to be cached: unmapped at once */
    } else if (!strcmp(c, "double-free-last-in-pool")) {
        void *p = malloc(opaque(4000)); /* alone in its pool, which empties */
        free(p);
        expect("free(): double free of %p, %s", p, class_of(4000));
        free(p);
    } else if (!strcmp(c, "double-free-after-realloc")) {
        char *p = malloc(opaque(100));
        char *q = realloc(p, opaque(5000)); /* moves to another class */
        CHECK(q != p, "realloc did not move");
        expect("free(): double free of %p, %s", (void *)p, class_of(100));
        free(p);
    } else if (!strcmp(c, "free-stack")) {
        int local;
        v = &local;
        expect("free(): invalid pointer %p", v);
        free(v);
    } else if (!strcmp(c, "free-data-segment")) {
        v = data_segment;
        expect("free(): invalid pointer %p", v);
        free(v);
    } else if (!strcmp(c, "free-interior")) {
        char *p = malloc(opaque(64));
        v = p + 16;
        expect("free(): invalid pointer %p", v);
        free(v);
    } else if (!strcmp(c, "free-interior-large")) {
        char *p = malloc(opaque(1 << 20));
        v = p + 4096;
        expect("free(): invalid pointer %p", v);
        free(v);
    } else if (!strcmp(c, "free-never-handed-out")) {
        /* The last block carved from a fresh pool (of a class too big for
         * the thread cache, which carves blocks in batches). */
        char *p = malloc(opaque(20480));
        v = p + 20480 * 5; /* a block boundary beyond the carved part */
        expect("free(): invalid pointer %p", v);
        free(v);
    } else if (!strcmp(c, "free-into-freed-large")) {
        char *p = malloc(opaque(1 << 20));
        free(p);
        v = p + 8192;
        expect("free(): invalid pointer %p", v);
        free(v);
    } else if (!strcmp(c, "realloc-stack")) {
        int local;
        v = &local;
        expect("realloc(): invalid pointer %p", v);
        v = realloc(v, opaque(100));
    } else if (!strcmp(c, "realloc-interior")) {
        char *p = malloc(opaque(5000));
        v = p + 32;
        expect("realloc(): invalid pointer %p", v);
        v = realloc(v, opaque(100));
    } else if (!strcmp(c, "realloc-freed")) {
        void *p = block_with_neighbour(200);
        free(p);
        expect("realloc(): pointer to a freed block %p, %s", p, class_of(200));
        v = realloc(p, opaque(300));
    } else if (!strcmp(c, "realloc-freed-large")) {
        void *p = malloc(opaque(1 << 20));
        free(p);
        expect("realloc(): pointer to a freed block %p, large block", p);
        v = realloc(p, opaque(300));
    } else if (!strcmp(c, "usable-size-stack")) {
        int local;
        v = &local;
        expect("malloc_usable_size(): invalid pointer %p", v);
        malloc_usable_size(v);
    } else if (!strcmp(c, "usable-size-freed")) {
        void *p = block_with_neighbour(32);
        free(p);
        expect("malloc_usable_size(): pointer to a freed block %p, %s", p, class_of(32));
        malloc_usable_size(p);
    } else if (!strcmp(c, "corrupt-free-list")) {
        /* A write after free overwrites the link of the free list's head. */
        void **a = block_with_neighbour(48), **b = malloc(opaque(48));
        free(a);
        free(b);
        b[0] = a + 64;
        if (debug) expect_write_after_free(b, 48, b);
        expect("malloc(): corrupted free list: link in free block %p overwritten, size class 48",
               (void *)b);
        v = malloc(opaque(48));
    } else if (!strcmp(c, "corrupt-free-list-zeroed")) {
        /* memset(0) of a freed block: a zero link is not the end of a list. */
        char *a = block_with_neighbour(400);
        free(a);
        memset(a, 0, 16);
        if (debug) expect_write_after_free(a, 400, a);
        expect("calloc(): corrupted free list: link in free block %p overwritten, size class 400",
               (void *)a);
        v = calloc(1, opaque(400));
    } else if (!strcmp(c, "free-sized-too-big")) {
        void *p = malloc(opaque(48));
        if (debug) expect("free_sized(): wrong size 64 for block %p of 48 bytes", p);
        else expect("free_sized(): wrong size 64 for block %p, size class 48", p);
        free_sized(p, opaque(64));
    } else if (!strcmp(c, "free-sized-smaller-class")) {
        void *p = malloc(opaque(100));
        if (debug) expect("free_sized(): wrong size 48 for block %p of 100 bytes", p);
        else expect("free_sized(): wrong size 48 for block %p, size class 112", p);
        free_sized(p, opaque(48));
    } else if (!strcmp(c, "free-sized-large")) {
        void *p = malloc(opaque(1 << 20));
        if (debug) expect("free_sized(): wrong size 1000 for block %p of 1048576 bytes", p);
        else expect("free_sized(): wrong size 1000 for block %p, large block", p);
        free_sized(p, opaque(1000));
    } else if (!strcmp(c, "free-sized-double")) {
        void *p = block_with_neighbour(48);
        free(p);
        expect("free_sized(): double free of %p, %s", p, class_of(48));
        free_sized(p, opaque(48));
    } else if (!strcmp(c, "free-sized-stack")) {
        int local;
        v = &local;
        expect("free_sized(): invalid pointer %p", v);
        free_sized(v, sizeof local);
    } else if (!strcmp(c, "free-aligned-sized-not-power-of-two")) {
        void *p = aligned_alloc(opaque(64), opaque(100));
        expect("free_aligned_sized(): wrong alignment 48 for block %p", p);
        free_aligned_sized(p, opaque(48), opaque(100));
    } else if (!strcmp(c, "free-aligned-sized-misaligned")) {
        /* A size whose blocks are not all 32-aligned (16 bytes apart). */
        size_t n = debug ? 64 : 48, tries = 0;
        uintptr_t p;
        do p = (uintptr_t)malloc(opaque(n));
        while (p % 32 == 0 && ++tries < 1000);
        expect("free_aligned_sized(): wrong alignment 32 for block %p", (void *)p);
        free_aligned_sized((void *)p, opaque(32), opaque(n));
    } else if (!strcmp(c, "free-aligned-sized-wrong-size")) {
        void *p = aligned_alloc(opaque(64), opaque(100)); /* class 128 */
        if (debug) expect("free_aligned_sized(): wrong size 20 for block %p of 100 bytes", p);
        else expect("free_aligned_sized(): wrong size 20 for block %p, size class 128", p);
        free_aligned_sized(p, opaque(64), opaque(20));
    } else if (debug && !strcmp(c, "overflow")) {
        char *p = malloc(opaque(48));
        p[48] = 'A';
        expect("free(): buffer overflow after block %p of 48 bytes: at offset 48: %s", p, hex8(p + 48));
        free(p);
    } else if (debug && !strcmp(c, "overflow-far")) {
        char *p = malloc(opaque(100));
        p[109] = 'A'; /* beyond the first 8 guard bytes */
        expect("realloc(): buffer overflow after block %p of 100 bytes: at offset 108: %s", p,
               hex8(p + 108));
        v = realloc(p, opaque(1000));
    } else if (debug && !strcmp(c, "underflow")) {
        char *p = malloc(opaque(48));
        p[-1] = 'A';
        expect("free(): buffer underflow before block %p of 48 bytes: the 8 bytes before it: %s", p,
               hex8(p - 8));
        free(p);
    } else if (debug && !strcmp(c, "write-after-free")) {
        char *p = malloc(opaque(48));
        free(p);
        p[5] = 'A';
        expect_write_after_free(p, 48, p);
    } else if (debug && !strcmp(c, "write-after-free-reused")) {
        /* No quarantine: the freed block comes back at once, and is
           checked before it is handed out again. */
        char *p = malloc(opaque(128));
        free(p);
        p[65] = 'a';
        expect("malloc(): write after free in block %p of 128 bytes: at offset 64: %s", p, hex8(p + 64));
        free(malloc(opaque(128)));
    } else if (debug && !strcmp(c, "write-after-free-small")) {
        /* hardened_malloc's write_after_free_small, with the default
           quarantine: the block is checked as newer frees push it out. */
        char *p = malloc(opaque(128));
        free(p);
        p[65] = 'a';
        expect("free(): write after free in block %p of 128 bytes: at offset 64: %s", p, hex8(p + 64));
        for (int i = 0; i < 100000; i++) free(malloc(opaque(128)));
    } else if (debug && !strcmp(c, "write-after-free-small-reuse")) {
        /* hardened_malloc's write_after_free_small_reuse: a block taken
           after the free is not the freed one, which is still poisoned. */
        char *p = malloc(opaque(128));
        free(p);
        char *volatile q = malloc(opaque(128));
        (void)q;
        p[65] = 'a';
        expect("free(): write after free in block %p of 128 bytes: at offset 64: %s", p, hex8(p + 64));
        for (int i = 0; i < 100000; i++) free(malloc(opaque(128)));
    } else if (debug && !strcmp(c, "check-heap-overflow")) {
        char *p = malloc(opaque(3000));
        p[3002] = 'A';
        expect("pymalloc_check_heap(): buffer overflow after block %p of 3000 bytes: at offset 3000: %s",
               p, hex8(p + 3000));
        if (pymalloc_check_heap() != 0) abort();
    } else if (debug && !strcmp(c, "check-heap-write-after-free")) {
        char *p = malloc(opaque(100000)); /* stays in the 1M quarantine */
        free(p);
        p[4096] = 'A';
        expect("pymalloc_check_heap(): write after free in block %p of 100000 bytes: at offset 4096: %s",
               p, hex8(p + 4096));
        if (pymalloc_check_heap() != 0) abort();
    } else if (!strncmp(c, "random-", 7)) {
        random_misuse(strtoull(c + 7, NULL, 0));
    } else {
        CHECK(0, "unknown case %s", c);
    }
    fprintf(stderr, "misuse %s went unnoticed\n", c);
    return 0;
}
