/* C23 sized deallocation: every size a block may be freed with is
 * accepted (the request, anything up to the usable size, what a realloc
 * left), and NULL is a no-op. Misuse is in misuse.c. */
#include "check.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc */

/* C23; declared by pymalloc.h, weak so that the program also builds plain. */
extern void free_sized(void *, size_t) __attribute__((weak));
extern void free_aligned_sized(void *, size_t, size_t) __attribute__((weak));

static const size_t sizes[] = {0, 1, 15, 16, 17, 48, 100, 511, 512, 513, 640, 1000, 4096, 5000,
                               65536, 100000, 131072, 131073, 200000, 1 << 20, 5 << 20};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

int main(void) {
    CHECK(free_sized && free_aligned_sized, "free_sized/free_aligned_sized not found");
    errno = 1234;
    free_sized(NULL, 0);
    free_sized(NULL, 100);
    free_aligned_sized(NULL, 64, 100);
    CHECK(errno == 1234, "errno changed to %d", errno);
    for (size_t i = 0; i < COUNT(sizes); i++) {
        size_t n = sizes[i];
        /* The request itself, and every size up to the usable one. */
        void *p = malloc(opaque(n));
        CHECK(p, "malloc(%zu)", n);
        size_t usable = malloc_usable_size(p);
        free_sized(p, opaque(n));
        p = malloc(opaque(n));
        free_sized(p, opaque(usable));
        p = calloc(1, opaque(n));
        free_sized(p, opaque(n));
        p = malloc(opaque(n));
        free_sized(p, opaque(n + (usable - n) / 2));
        CHECK(errno == 1234, "free_sized changed errno to %d", errno);
        /* What a realloc left, shrinking in place or moving. */
        size_t m = n;
        p = malloc(opaque(m));
        while (m > 1) {
            m = m * 3 / 4;
            void *q = realloc(p, opaque(m));
            CHECK(q || m == 0, "realloc(%zu)", m);
            p = q;
            void *probe = malloc(opaque(m));
            free_sized(probe, opaque(m));
        }
        free_sized(p, opaque(m));
        /* Aligned blocks, with the request and with the usable size. */
        for (size_t align = 1; align <= (1 << 16); align <<= 1) {
            void *a = aligned_alloc(opaque(align), opaque(n));
            CHECK(a && (uintptr_t)a % align == 0, "aligned_alloc(%zu, %zu)", align, n);
            free_aligned_sized(a, opaque(align), opaque(n));
            a = aligned_alloc(opaque(align), opaque(n));
            free_aligned_sized(a, opaque(align), malloc_usable_size(a));
            void *m = memalign(opaque(align), opaque(n));
            free_aligned_sized(m, opaque(align), opaque(n));
        }
    }
    CHECK(errno == 1234, "errno changed to %d", errno);
    return 0;
}
