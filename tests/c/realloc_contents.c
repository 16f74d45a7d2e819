/* realloc keeps the contents across every size-class boundary, both ways. */
#include "check.h"

#define MAXS ((size_t)8 << 20)

static size_t sizes[4096];
static size_t nsizes;

static void add(size_t s) {
    if (s <= MAXS) sizes[nsizes++] = s;
}
static int cmp(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}
static void build_sizes(void) {
    for (size_t s = 0; s <= 1024; s++) add(s);
    for (size_t s = 1024; s <= 2048; s += 16) add(s);
    for (size_t k = 1; k <= 32; k++) /* boundaries around multiples of 512 */
        for (int d = -16; d <= 16; d += 8) add(k * 512 + d), add(k * 512 + d + 1);
    for (size_t p = 1; p <= MAXS; p <<= 1) { /* powers of two and neighbours */
        add(p - 1), add(p), add(p + 1);
        if (p >= 64) add(p - 16), add(p + 16), add(p + p / 2);
    }
    add(MAXS);
    qsort(sizes, nsizes, sizeof *sizes, cmp);
    size_t j = 0; /* dedupe */
    for (size_t i = 0; i < nsizes; i++)
        if (j == 0 || sizes[i] != sizes[j - 1]) sizes[j++] = sizes[i];
    nsizes = j;
}

static unsigned char pat(size_t i, unsigned seed) {
    uint32_t x = (uint32_t)i * 2654435761u + seed * 40503u;
    return (unsigned char)(x ^ (x >> 11) ^ (x >> 23));
}
static void fill(unsigned char *p, size_t from, size_t to, unsigned seed) {
    for (size_t i = from; i < to; i++) p[i] = pat(i, seed);
}
static void verify(const unsigned char *p, size_t n, unsigned seed, size_t a, size_t b) {
    for (size_t i = 0; i < n; i++)
        CHECK(p[i] == pat(i, seed), "realloc %zu -> %zu: byte %zu is %#x, expected %#x", a, b, i, p[i], pat(i, seed));
}

static unsigned char *xrealloc(unsigned char *p, size_t n) {
    unsigned char *q = realloc(p, opaque(n));
    if (n == 0 && q == NULL) return NULL; /* realloc(p, 0) frees (glibc) */
    CHECK(q != NULL, "realloc(p, %zu) failed (errno %d)", n, errno);
    CHECK(((uintptr_t)q & 15) == 0, "realloc(p, %zu) = %p is not 16-byte aligned", n, (void *)q);
    CHECK(malloc_usable_size(q) >= n, "realloc(p, %zu): usable size %zu", n, malloc_usable_size(q));
    return q;
}

/* malloc(a), fill, realloc to b, check min(a, b) bytes. */
static void pair(size_t a, size_t b, unsigned seed) {
    unsigned char *p = malloc(opaque(a));
    CHECK(p != NULL, "malloc(%zu) failed", a);
    fill(p, 0, a, seed);
    p = xrealloc(p, b);
    if (b == 0) return;
    verify(p, a < b ? a : b, seed, a, b);
    free(p);
}

int main(void) {
    build_sizes();
    CHECK(nsizes > 1200, "size list too short: %zu", nsizes);

    /* every consecutive pair, both ways */
    for (size_t i = 0; i + 1 < nsizes; i++) {
        pair(sizes[i], sizes[i + 1], (unsigned)i);
        pair(sizes[i + 1], sizes[i], (unsigned)i + 7);
    }

    /* one block walked up through every size, then down again */
    unsigned char *p = malloc(opaque(1));
    CHECK(p != NULL, "malloc(1) failed");
    size_t have = 1;
    fill(p, 0, 1, 99);
    for (size_t i = 0; i < nsizes; i++) {
        size_t n = sizes[i] ? sizes[i] : 1;
        p = xrealloc(p, n);
        verify(p, have < n ? have : n, 99, have, n);
        if (n > have) fill(p, have, n, 99);
        have = n;
    }
    for (size_t i = nsizes; i-- > 0;) {
        size_t n = sizes[i] ? sizes[i] : 1;
        p = xrealloc(p, n);
        verify(p, n < have ? n : have, 99, have, n);
        have = n;
    }
    free(p);

    /* big jumps */
    static const size_t jumps[][3] = {
        {1, 4 << 20, 1}, {1, 8 << 20, 1}, {0, 100, 0}, {512, 1 << 20, 100}, {100, 3 << 20, 513},
        {16, 65536, 16}, {4096, 131073, 4095}, {2048, 16, 2048}, {1 << 20, 1, 1 << 20}, {8 << 20, 17, 4 << 20},
    };
    for (size_t j = 0; j < sizeof jumps / sizeof *jumps; j++) {
        size_t a = jumps[j][0], b = jumps[j][1], c = jumps[j][2];
        p = malloc(opaque(a));
        CHECK(p != NULL, "malloc(%zu) failed", a);
        fill(p, 0, a, (unsigned)j);
        p = xrealloc(p, b ? b : 1);
        verify(p, a < b ? a : b, (unsigned)j, a, b);
        if (b > a) fill(p, a, b, (unsigned)j);
        p = xrealloc(p, c ? c : 1);
        verify(p, b < c ? b : c, (unsigned)j, b, c);
        free(p);
    }

    /* growing within the usable size returns the same pointer, contents intact */
    for (size_t i = 0; i < nsizes; i += 7) {
        size_t n = sizes[i];
        p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(%zu) failed", n);
        size_t u = malloc_usable_size(p);
        fill(p, 0, n, 5);
        uintptr_t where = (uintptr_t)p;
        for (size_t m = n; m <= u; m += (u - n) / 3 + 1) {
            p = realloc(p, opaque(m ? m : 1));
            CHECK((uintptr_t)p == where, "realloc %zu -> %zu within usable size %zu moved the block", n, m, u);
        }
        p = realloc(p, opaque(u ? u : 1));
        CHECK((uintptr_t)p == where, "realloc %zu -> usable size %zu moved the block", n, u);
        verify(p, n, 5, n, u);
        free(p);
    }
    return 0;
}
