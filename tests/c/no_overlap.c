/* Many live blocks never overlap: per-block patterns over the whole usable
   size survive, and the sorted address ranges are disjoint. */
#include "check.h"

enum { NSMALL = 200000, NBIG = 300, NMAX = NSMALL + NBIG + 200000 };

struct blk {
    unsigned char *p;
    size_t size, usable;
    uint64_t tag;
};
static struct blk b[NMAX];
static size_t nb;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static uint64_t mix(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
static unsigned char pat(uint64_t tag, size_t j) { return (unsigned char)(tag >> ((j & 7) * 8)) ^ (unsigned char)(j >> 3); }

static void new_block(size_t i, size_t size, uint64_t tag) {
    unsigned char *p = malloc(opaque(size));
    CHECK(p != NULL, "malloc(%zu) failed (block %zu)", size, i);
    CHECK(((uintptr_t)p & 15) == 0, "malloc(%zu) = %p not 16-aligned", size, (void *)p);
    size_t u = malloc_usable_size(p);
    CHECK(u >= size, "malloc(%zu): usable size %zu", size, u);
    for (size_t j = 0; j < u; j++) p[j] = pat(tag, j); /* the whole usable size */
    b[i] = (struct blk){p, size, u, tag};
}

static size_t random_size(void) {
    if (next() % 1000 == 0) return 4096 + next() % (1 << 20); /* some medium/big */
    return next() % 2049;
}

static void verify_all(const char *when) {
    for (size_t i = 0; i < nb; i++) {
        if (!b[i].p) continue;
        for (size_t j = 0; j < b[i].usable; j++)
            CHECK(b[i].p[j] == pat(b[i].tag, j), "%s: block %zu (%p, size %zu, usable %zu) byte %zu was overwritten",
                  when, i, (void *)b[i].p, b[i].size, b[i].usable, j);
        CHECK(malloc_usable_size(b[i].p) == b[i].usable, "%s: usable size of block %zu changed", when, i);
    }
}

static int by_addr(const void *x, const void *y) {
    const struct blk *a = x, *c = y;
    return a->p < c->p ? -1 : a->p > c->p;
}

/* Sorts a copy of the live blocks by address and checks the ranges are disjoint. */
static void check_disjoint(const char *when) {
    static struct blk s[NMAX];
    size_t n = 0;
    for (size_t i = 0; i < nb; i++)
        if (b[i].p) s[n++] = b[i];
    qsort(s, n, sizeof *s, by_addr);
    for (size_t i = 0; i + 1 < n; i++) {
        CHECK(s[i].p != s[i + 1].p, "%s: two live blocks at the same address %p", when, (void *)s[i].p);
        CHECK(s[i].p + s[i].usable <= s[i + 1].p, "%s: block %p+%zu overlaps block %p", when, (void *)s[i].p,
              s[i].usable, (void *)s[i + 1].p);
    }
}

int main(void) {
    for (nb = 0; nb < NSMALL; nb++) new_block(nb, next() % 2049, mix(nb));
    for (size_t k = 0; k < NBIG; k++, nb++) new_block(nb, 4096 + next() % ((1 << 20) - 4095), mix(nb));
    verify_all("after first allocation");
    check_disjoint("after first allocation");

    /* free half at random */
    for (size_t i = 0; i < nb; i++)
        if (next() & 1) {
            free(b[i].p);
            b[i].p = NULL;
        }
    verify_all("after freeing half");

    /* refill the holes and allocate more */
    for (size_t i = 0; i < nb; i++)
        if (!b[i].p) new_block(i, random_size(), mix(i + NMAX));
    size_t end = nb + 150000;
    for (; nb < end; nb++) new_block(nb, random_size(), mix(nb + 2 * NMAX));
    verify_all("after reallocation");
    check_disjoint("after reallocation");

    /* realloc a third of them (shrinking and growing), patterns rewritten */
    for (size_t i = 0; i < nb; i += 3) {
        size_t n = random_size();
        size_t keep = n < b[i].usable ? n : b[i].usable;
        unsigned char *q = realloc(b[i].p, opaque(n ? n : 1));
        CHECK(q != NULL, "realloc to %zu failed", n);
        for (size_t j = 0; j < keep && j < (n ? n : 1); j++)
            CHECK(q[j] == pat(b[i].tag, j), "realloc of block %zu lost byte %zu", i, j);
        size_t u = malloc_usable_size(q);
        for (size_t j = 0; j < u; j++) q[j] = pat(b[i].tag, j);
        b[i].p = q, b[i].size = n, b[i].usable = u;
    }
    verify_all("after realloc");
    check_disjoint("after realloc");

    for (size_t i = 0; i < nb; i++) free(b[i].p);
    return 0;
}
