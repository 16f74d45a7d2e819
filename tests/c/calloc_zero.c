/* calloc returns zeroed memory, also when it recycles dirty blocks. */
#include "check.h"

static void check_zero(const unsigned char *p, size_t n, const char *what, size_t a, size_t b, int round) {
    CHECK(p != NULL, "%s(%zu, %zu) returned NULL (errno %d)", what, a, b, errno);
    CHECK(((uintptr_t)p & 15) == 0, "%s(%zu, %zu) = %p is not 16-byte aligned", what, a, b, (void *)p);
    CHECK(malloc_usable_size((void *)p) >= n, "%s(%zu, %zu): usable size too small", what, a, b);
    const uint64_t *w = (const uint64_t *)p;
    size_t nw = n / 8;
    for (size_t i = 0; i < nw; i++)
        if (w[i] != 0)
            for (size_t j = i * 8; j < i * 8 + 8; j++)
                CHECK(p[j] == 0, "%s(%zu, %zu) round %d: byte %zu of %zu is %#x, not 0", what, a, b, round, j, n, p[j]);
    for (size_t j = nw * 8; j < n; j++)
        CHECK(p[j] == 0, "%s(%zu, %zu) round %d: byte %zu of %zu is %#x, not 0", what, a, b, round, j, n, p[j]);
}

static void *dirty(size_t n) {
    void *p = malloc(opaque(n));
    CHECK(p != NULL, "malloc(%zu) failed", n);
    memset(p, 0xAB, malloc_usable_size(p));
    return p;
}

/* malloc + dirty + free, then calloc the same size (three ways to split it). */
static void cycle(size_t n, int rounds) {
    for (int r = 0; r < rounds; r++) {
        free(dirty(n));
        size_t a = 1, b = n;
        if (r % 3 == 1) a = n, b = 1;
        if (r % 3 == 2 && n % 8 == 0) a = n / 8, b = 8;
        unsigned char *c = calloc(opaque(a), opaque(b));
        check_zero(c, n, "calloc", a, b, r);
        memset(c, 0xCD, malloc_usable_size(c)); /* dirty it again for the next round */
        free(c);
    }
}

int main(void) {
    /* small: every size to 1 KiB */
    for (size_t n = 0; n <= 1024; n++) cycle(n, 12);
    /* medium up to 256 KiB */
    for (size_t n = 1024; n <= (256 << 10); n = n * 5 / 4 + 8) cycle(n, 8);
    static const size_t medium[] = {2048, 4096, 4095, 8192, 16384, 32768, 65536, 131072, 131073, 262144};
    for (size_t i = 0; i < sizeof medium / sizeof *medium; i++) cycle(medium[i], 10);
    /* large up to 16 MiB */
    static const size_t large[] = {(256 << 10) + 1, 512 << 10, 1 << 20, (1 << 20) + 4096, 3 << 20, 4 << 20,
                                   8 << 20, 16 << 20};
    for (size_t i = 0; i < sizeof large / sizeof *large; i++) cycle(large[i], 4);

    /* many dirty blocks at once, freed, then calloc'ed back from the free lists */
    enum { N = 20000 };
    static void *blocks[N];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) blocks[i] = dirty((size_t)(i * 37 + round) % 1500);
        for (int i = 0; i < N; i += 2) free(blocks[i]);
        for (int i = 1; i < N; i += 2) free(blocks[i]);
        for (int i = 0; i < N; i++) {
            size_t n = (size_t)(i * 37 + round) % 1500;
            blocks[i] = calloc(opaque(n), opaque(1));
            check_zero(blocks[i], n, "calloc", n, 1, round);
        }
        for (int i = 0; i < N; i++) free(blocks[i]);
    }

    /* a big dirty block freed and partly reused, then calloc'ed in pieces */
    for (int round = 0; round < 3; round++) {
        void *big = dirty((size_t)(8 << 20) + (size_t)round * 4096);
        void *small = dirty(100);
        free(big);
        void *pieces[16];
        for (int i = 0; i < 16; i++) {
            size_t n = (size_t)(256 << 10) + (size_t)i * 1000;
            pieces[i] = calloc(opaque(1), opaque(n));
            check_zero(pieces[i], n, "calloc", 1, n, round);
        }
        for (int i = 0; i < 16; i++) free(pieces[i]);
        free(small);
    }

    /* spans of regions whose pages the footprint bound gave back in part
       (the oldest free ones first, when a request needs fresh pages):
       whatever a calloc'ed span is cut from, it reads as zero */
    {
        enum { SPANS = 12 };
        void *spans[SPANS];
        for (int i = 0; i < SPANS; i++) spans[i] = dirty((size_t)(i + 1) << 20);
        for (int i = 0; i < SPANS; i += 2) free(spans[i]), spans[i] = NULL; /* holes of 1, 3, 5 ... MiB */
        void *fresh = dirty((size_t)24 << 20);             /* fits no hole: fresh pages */
        uint64_t rng = 42;
        for (int round = 0; round < 200; round++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            int k = (int)(rng % SPANS);
            size_t n = ((size_t)(rng >> 20) % (12 << 20)) + (256 << 10);
            if (k % 2 == 0) { /* a hole: fill it with a calloc'ed span, dirtied */
                if (spans[k]) free(spans[k]);
                unsigned char *c = calloc(opaque(1), opaque(n));
                check_zero(c, n, "calloc of a span", 1, n, round);
                memset(c, 0xEE, malloc_usable_size(c));
                spans[k] = c;
            } else if (round % 16 == 0) { /* now and then, more fresh pages */
                free(fresh);
                fresh = dirty(((size_t)(rng >> 8) % (24 << 20)) + (8 << 20));
            }
        }
        for (int i = 0; i < SPANS; i++) free(spans[i]);
        free(fresh);
    }

    /* realloc-shrunk dirty blocks: the freed tail must also come back zeroed */
    for (int round = 0; round < 50; round++) {
        size_t n = 4096 + (size_t)round * 512;
        unsigned char *p = dirty(n);
        p = realloc(p, opaque(32));
        CHECK(p != NULL, "realloc shrink failed");
        unsigned char *c = calloc(opaque(1), opaque(n / 2));
        check_zero(c, n / 2, "calloc after shrink", 1, n / 2, round);
        free(c);
        free(p);
    }
    return 0;
}
