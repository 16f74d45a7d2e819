/* Every aligned-allocation family x every power-of-two alignment x many sizes. */
#include "check.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc, pvalloc */

#define MAX_ALIGN ((size_t)16 << 20) /* at least 4 MiB is required; go to 16 MiB */

static const size_t sizes[] = {0, 1, 15, 16, 17, 100, 511, 512, 513, 4095, 4096,
                               65536, 131072, 131073, 1 << 20, 3 << 20};
#define NSIZES (sizeof sizes / sizeof *sizes)

enum family { MEMALIGN, ALIGNED_ALLOC, POSIX_MEMALIGN, NFAMILIES };
static const char *const family_name[] = {"memalign", "aligned_alloc", "posix_memalign"};

static unsigned char pattern(size_t i, size_t seed) { return (unsigned char)((i * 2654435761u) >> 7) ^ (unsigned char)seed; }

static void *alloc(enum family f, size_t al, size_t n) {
    void *p = NULL;
    switch (f) {
    case MEMALIGN: p = memalign(opaque(al), opaque(n)); break;
    case ALIGNED_ALLOC: p = aligned_alloc(opaque(al), opaque(n)); break;
    case POSIX_MEMALIGN: {
        int r = posix_memalign(&p, opaque(al), opaque(n));
        CHECK(r == 0, "posix_memalign(%zu, %zu) returned %d", al, n, r);
        break;
    }
    default: break;
    }
    return p;
}

/* Checks one block and fills its whole usable size with a pattern. */
static void check_new(void *p, const char *what, size_t al, size_t n, size_t seed) {
    CHECK(p != NULL, "%s(%zu, %zu) returned NULL (errno %d)", what, al, n, errno);
    size_t need = al < 16 ? 16 : al;
    CHECK(((uintptr_t)p & (need - 1)) == 0, "%s(%zu, %zu) = %p is not %zu-aligned", what, al, n, p, need);
    size_t u = malloc_usable_size(p);
    CHECK(u >= n, "%s(%zu, %zu): malloc_usable_size %zu < size", what, al, n, u);
    unsigned char *c = p;
    for (size_t i = 0; i < u; i++) c[i] = pattern(i, seed);
}

static void verify(const void *p, size_t len, const char *what, size_t al, size_t n, size_t seed) {
    const unsigned char *c = p;
    for (size_t i = 0; i < len; i++)
        CHECK(c[i] == pattern(i, seed), "%s(%zu, %zu): byte %zu of the block changed (overlap?)", what, al, n, i);
}

int main(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *blocks[NSIZES];
    size_t usable[NSIZES];
    size_t seed = 1;

    for (int f = 0; f < NFAMILIES; f++) {
        const char *what = family_name[f];
        size_t first = f == POSIX_MEMALIGN ? sizeof(void *) : 1;
        for (size_t al = first; al <= MAX_ALIGN; al <<= 1) {
            /* all sizes live at once, so overlapping blocks would be caught */
            for (size_t s = 0; s < NSIZES; s++) {
                blocks[s] = alloc(f, al, sizes[s]);
                check_new(blocks[s], what, al, sizes[s], seed + s);
                usable[s] = malloc_usable_size(blocks[s]);
            }
            for (size_t s = 0; s < NSIZES; s++) verify(blocks[s], usable[s], what, al, sizes[s], seed + s);
            /* realloc of an aligned block keeps its contents (and is 16-aligned) */
            for (size_t s = 0; s < NSIZES; s += 3) {
                size_t keep = sizes[s], grow = sizes[s] * 2 + 100;
                void *q = realloc(blocks[s], opaque(grow));
                CHECK(q != NULL, "realloc of a %s(%zu, %zu) block to %zu failed", what, al, keep, grow);
                CHECK(((uintptr_t)q & 15) == 0, "realloc of an aligned block returned %p", q);
                CHECK(malloc_usable_size(q) >= grow, "realloc'd aligned block too small");
                verify(q, keep, what, al, keep, seed + s);
                blocks[s] = q;
            }
            for (size_t s = 0; s < NSIZES; s++) free(blocks[s]);
            seed += NSIZES;
        }
    }

    /* valloc and pvalloc: page aligned; pvalloc rounds the size up to a page */
    for (int round = 0; round < 2; round++) {
        const char *what = round ? "pvalloc" : "valloc";
        for (size_t s = 0; s < NSIZES; s++) {
            size_t n = sizes[s];
            blocks[s] = round ? pvalloc(opaque(n)) : valloc(opaque(n));
            check_new(blocks[s], what, page, n, seed + s);
            usable[s] = malloc_usable_size(blocks[s]);
            if (round) {
                size_t want = (n + page - 1) & ~(page - 1);
                CHECK(usable[s] >= want, "pvalloc(%zu): usable size %zu < %zu (size rounded to a page)", n,
                      usable[s], want);
            }
        }
        for (size_t s = 0; s < NSIZES; s++) verify(blocks[s], usable[s], what, page, sizes[s], seed + s);
        for (size_t s = 0; s < NSIZES; s++) free(blocks[s]);
        seed += NSIZES;
    }

    /* interleave big alignments with small allocations (fragmentation paths) */
    void *small[64];
    for (size_t al = 32; al <= ((size_t)4 << 20); al <<= 1) {
        for (int i = 0; i < 64; i++) {
            small[i] = malloc(opaque((size_t)i * 24));
            CHECK(small[i] != NULL, "malloc(%d) failed", i * 24);
            memset(small[i], 0x5A, malloc_usable_size(small[i]));
            void *p = memalign(opaque(al), opaque((size_t)i * 40 + 1));
            check_new(p, "memalign", al, (size_t)i * 40 + 1, i);
            free(p);
        }
        for (int i = 0; i < 64; i++) {
            unsigned char *c = small[i];
            for (size_t j = 0; j < malloc_usable_size(c); j++)
                CHECK(c[j] == 0x5A, "small block %d corrupted at byte %zu after memalign(%zu)", i, j, al);
            free(small[i]);
        }
    }
    return 0;
}
