/* Stale bytes that look like a freed block are no double free. A freed
   pool block carries the heap's free-block key in its second word; the
   memory of a live block that the program never wrote keeps whatever it
   held before, keys included, and realloc copies those bytes along. The
   first part makes only valid calls, each block written at its first
   byte only: keys of freed 4 KiB blocks stay inside 8 KiB blocks carved
   from the same pools, travel into large spans when those grow, and
   reach the second word of a small block when a large block laid over
   them shrinks (realloc copies its first bytes). Before keys were bound
   to their block's address and confirmed on a free list or in a cache,
   its frees aborted with "double free". The second part is glibc's
   tst-tcfree3: a freed block's first 16 bytes copied into a live block
   of its size, which is then freed. */
#include "check.h"

enum { POOL_BYTES = 4 << 20, LARGE = 300000 };
static void *small[POOL_BYTES / 4096];
static unsigned char *large[POOL_BYTES / 8192];

int main(void) {
    /* Freed 4 KiB blocks: a key in the second word of each. The first
       stays live, so that its arena keeps their pools for other classes. */
    size_t n = POOL_BYTES / 4096;
    for (size_t i = 0; i < n; i++) {
        small[i] = malloc(opaque(4096));
        CHECK(small[i], "malloc(4096)");
        *(char *)small[i] = 1;
    }
    for (size_t i = 1; i < n; i++)
        free(small[i]);

    /* 8 KiB blocks over them, grown into large blocks: the keys at their
       offset 4096 + 8 are copied to a page boundary + 8 of each span. */
    size_t m = POOL_BYTES / 8192;
    for (size_t i = 0; i < m; i++) {
        unsigned char *p = malloc(opaque(8192));
        CHECK(p, "malloc(8192)");
        p[0] = 2;
        large[i] = realloc(p, opaque(LARGE));
        CHECK(large[i] && large[i][0] == 2, "realloc(8192 -> %d)", LARGE);
    }
    for (size_t i = 0; i < m; i++)
        free(large[i]);

    /* Large blocks of other sizes laid over those pages (all live at once,
       so that they start at many page boundaries), each shrunk to a small
       block (a copy of its first bytes) and freed. */
    for (size_t i = 0; i < m; i++) {
        large[i] = malloc(opaque(LARGE - 40000 + (i % 7) * 4096));
        CHECK(large[i], "malloc(large)");
        large[i][0] = 3;
    }
    for (size_t i = 0; i < m; i++) {
        unsigned char *p = realloc(large[i], opaque(64));
        CHECK(p && p[0] == 3, "realloc(large -> 64)");
        CHECK(malloc_usable_size(p) >= 64, "malloc_usable_size(%p)", p);
        free(p);
    }
    free(small[0]);

    for (size_t size = 16; size <= 4096; size *= 2) {
        void *a = malloc(opaque(size)), *b = malloc(opaque(size));
        CHECK(a && b, "malloc(%zu)", size);
        unsigned char *volatile stale = a;
        free(a);
        memcpy(b, stale, 16);
        free(b);
    }
    return 0;
}
