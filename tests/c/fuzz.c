/* Random sequences of every allocation call against a shadow of the live
 * blocks: `fuzz [OPS [SEED]]` (defaults: 50000 ops, seed 1; OPS also from
 * PYMALLOC_FUZZ_OPS, SEED from PYMALLOC_FUZZ_SEED). Every block's contents are checked when it is freed,
 * reallocated and every 4096 operations, with alignment, usable sizes,
 * zeroed calloc memory, errno on failures, and pymalloc_check_heap().
 * Misuse sequences are in misuse.c ("random"). */
#include "check.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc, pvalloc */

extern void free_sized(void *, size_t) __attribute__((weak));
extern void free_aligned_sized(void *, size_t, size_t) __attribute__((weak));
extern int pymalloc_check_heap(void) __attribute__((weak));

static uint64_t rng;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}
static size_t below(size_t n) { return n ? next() % n : 0; }

/* Mostly small, some medium, a few large, now and then 0. */
static size_t pick_size(void) {
    switch (below(100)) {
    case 0: return 0;
    case 1 ... 69: return 1 + below(512);
    case 70 ... 95: return 513 + below(128 * 1024);
    default: return 128 * 1024 + below(4 << 20);
    }
}

enum { SLOTS = 2048 };
static struct slot {
    unsigned char *p;
    size_t size;  /* requested */
    size_t align; /* from aligned_alloc & co: what free_aligned_sized is given */
    int plain;    /* from malloc, calloc or realloc: free_sized may free it */
    unsigned char seed;
} slot[SLOTS];
static size_t page;

/* Bytes checked: all of a small block, both ends and a byte per page of a big one. */
#define FOR_PROBES(n, i)                                                          \
    for (size_t i = 0, end_ = (n); i < end_;                                      \
         i = (end_ <= 8192 || i < 64 || i >= end_ - 64) ? i + 1                   \
             : (i + page < end_ - 64 ? i + page : end_ - 64))

static void fill(struct slot *s) {
    FOR_PROBES(s->size, i) s->p[i] = (unsigned char)(s->seed + i * 7);
}
/* Checks the first n bytes of what fill() wrote. */
static void verify(const struct slot *s, size_t n, const char *what) {
    FOR_PROBES(s->size, i)
        CHECK(i >= n || s->p[i] == (unsigned char)(s->seed + i * 7), "%s: block %p of %zu bytes lost byte %zu",
              what, (void *)s->p, s->size, i);
}

static void take(struct slot *s, void *p, size_t n, size_t align, const char *what) {
    CHECK(p != NULL, "%s(%zu, align %zu) failed: errno %d", what, n, align, errno);
    size_t want = align > 16 ? align : 16;
    CHECK((uintptr_t)p % want == 0, "%s(%zu) = %p not aligned to %zu", what, n, p, want);
    CHECK(malloc_usable_size(p) >= n, "%s(%zu): usable %zu", what, n, malloc_usable_size(p));
    s->p = p;
    s->size = n;
    s->align = align;
    s->plain = align == 0;
    s->seed = (unsigned char)next();
}

static void release(struct slot *s) {
    verify(s, s->size, "free");
    size_t usable = malloc_usable_size(s->p);
    /* C23: free_sized for malloc/calloc/realloc blocks, with any size from
       the request to the usable size; free_aligned_sized for aligned ones. */
    switch (below(4)) {
    case 0:
        if (s->plain) free_sized(s->p, s->size + below(usable - s->size + 1));
        else free(s->p);
        break;
    case 1:
        if (s->align) free_aligned_sized(s->p, s->align, s->size);
        else if (s->plain) free_sized(s->p, s->size);
        else free(s->p);
        break;
    default:
        free(s->p);
    }
    s->p = NULL;
}

static size_t pick_align(void) { return (size_t)1 << below(below(4) ? 8 : 23); }

int main(int argc, char **argv) {
    long ops = 50000;
    const char *e = getenv("PYMALLOC_FUZZ_OPS"), *seed = getenv("PYMALLOC_FUZZ_SEED");
    if (e) ops = atol(e);
    if (argc > 1) ops = atol(argv[1]);
    if (argc > 2) seed = argv[2];
    rng = seed ? strtoull(seed, NULL, 0) : 1;
    rng = rng * 0x9e3779b97f4a7c15ull + 1;
    page = (size_t)sysconf(_SC_PAGESIZE);
    errno = 0;
    for (long op = 0; op < ops; op++) {
        struct slot *s = &slot[below(SLOTS)];
        if (s->p && below(2)) { /* free it, resize it or ask about it */
            switch (below(6)) {
            case 0: case 1: release(s); break;
            case 2: case 3: {
                size_t n = pick_size(), keep = n < s->size ? n : s->size;
                size_t got = n ? n : 1;
                void *q = below(2) ? realloc(s->p, opaque(got)) : reallocarray(s->p, opaque(got), 1);
                CHECK(q != NULL, "realloc(%zu) failed", got);
                s->p = q;
                verify(s, keep, "realloc");
                s->size = got;
                s->align = 0;
                s->plain = 1;
                fill(s);
                break;
            }
            case 4:
                CHECK(malloc_usable_size(s->p) >= s->size, "malloc_usable_size shrank");
                verify(s, s->size, "malloc_usable_size");
                break;
            default:
                if (below(64) == 0) malloc_trim(below(2) ? 0 : 1 << 20);
                verify(s, s->size, "malloc_trim");
            }
            continue;
        }
        if (s->p) release(s);
        size_t n = pick_size(), align;
        switch (below(10)) {
        case 0: case 1: case 2: take(s, malloc(opaque(n)), n, 0, "malloc"); break;
        case 3: {
            size_t count = 1 + below(8), each = n / count;
            void *p = calloc(opaque(count), opaque(each));
            take(s, p, count * each, 0, "calloc");
            FOR_PROBES(s->size, i) CHECK(s->p[i] == 0, "calloc(%zu, %zu) byte %zu not zero", count, each, i);
            break;
        }
        case 4: {
            void *p = NULL;
            align = pick_align();
            if (align < sizeof(void *)) align = sizeof(void *);
            CHECK(posix_memalign(&p, opaque(align), opaque(n)) == 0, "posix_memalign(%zu, %zu)", align, n);
            take(s, p, n, align, "posix_memalign");
            break;
        }
        case 5: align = pick_align(); take(s, aligned_alloc(opaque(align), opaque(n)), n, align, "aligned_alloc"); break;
        case 6: {
            size_t asked = pick_align() + below(2) * below(64); /* not always a power of two */
            size_t got = 1;
            while (got < asked) got <<= 1;
            take(s, memalign(opaque(asked), opaque(n)), n, got, "memalign");
            if (got != asked) s->align = 0; /* freed by free only */
            break;
        }
        case 7: take(s, valloc(opaque(n)), n, page, "valloc"); s->align = 0; break;
        case 8: {
            size_t rounded = (n + page - 1) / page * page;
            take(s, pvalloc(opaque(n)), n, page, "pvalloc");
            CHECK(malloc_usable_size(s->p) >= rounded, "pvalloc(%zu) not rounded to a page", n);
            s->align = 0;
            break;
        }
        default: { /* calls that must fail, leaving the heap alone */
            void *p = NULL;
            EXPECT_ENOMEM(malloc(opaque(SIZE_MAX - below(4096))), "malloc(huge)");
            EXPECT_ENOMEM(calloc(opaque(SIZE_MAX / 2 + below(99)), opaque(2 + below(9))), "calloc(overflow)");
            CHECK(posix_memalign(&p, opaque(24), opaque(n)) == EINVAL, "posix_memalign(24) not EINVAL");
            take(s, malloc(opaque(n)), n, 0, "malloc");
        }
        }
        fill(s);
        if (op % 4096 == 0) {
            for (size_t k = 0; k < SLOTS; k++)
                if (slot[k].p) verify(&slot[k], slot[k].size, "periodic check");
            if (pymalloc_check_heap) CHECK(pymalloc_check_heap() == 0, "pymalloc_check_heap failed at op %ld", op);
        }
    }
    for (size_t k = 0; k < SLOTS; k++)
        if (slot[k].p) release(&slot[k]);
    if (pymalloc_check_heap) CHECK(pymalloc_check_heap() == 0, "pymalloc_check_heap failed at the end");
    printf("fuzz: %ld operations, seed %s: ok\n", ops, seed ? seed : "1");
    return 0;
}
