/* Heap misuse that the allocator must stop: `misuse CASE` commits one
 * misuse and must not return. Before the faulty call it prints, on stdout,
 * "expect <message>" with the line the allocator must write on stderr
 * (addresses filled in), so the driver (tests/misuse.rs) can compare.
 * Exit status 0 means the misuse went unnoticed. */
#include "check.h"

#include <stdarg.h>

/* C23, exported by libpymalloc (weak: the program also links without it). */
extern void free_sized(void *, size_t) __attribute__((weak));
extern void free_aligned_sized(void *, size_t, size_t) __attribute__((weak));

static char data_segment[64];

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

static void double_free(size_t n) {
    void *p = block_with_neighbour(n);
    size_t class_size = malloc_usable_size(p);
    free(p);
    if (n > 128 * 1024)
        expect("free(): double free of %p, large block", p);
    else
        expect("free(): double free of %p, size class %zu", p, class_size);
    free(p);
}

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: misuse CASE");
    const char *c = argv[1];
    /* Unbuffered: printing allocates no stdio buffer between the setup and
       the misuse (it could take the very block freed a moment before). */
    setvbuf(stdout, NULL, _IONBF, 0);
    void *volatile v;
    if (!strcmp(c, "double-free-small")) {
        double_free(48);
    } else if (!strcmp(c, "double-free-medium")) {
        double_free(3000);
    } else if (!strcmp(c, "double-free-large")) {
        double_free(1 << 20);
    } else if (!strcmp(c, "double-free-large-unmapped")) {
        double_free((size_t)200 << 20); /* too big to be cached: unmapped at once */
    } else if (!strcmp(c, "double-free-last-in-pool")) {
        void *p = malloc(opaque(4000)); /* alone in its pool, which empties */
        size_t class_size = malloc_usable_size(p);
        free(p);
        expect("free(): double free of %p, size class %zu", p, class_size);
        free(p);
    } else if (!strcmp(c, "double-free-after-realloc")) {
        char *p = malloc(opaque(100));
        char *q = realloc(p, opaque(5000)); /* moves to another class */
        CHECK(q != p, "realloc did not move");
        expect("free(): double free of %p, size class %zu", (void *)p, (size_t)112);
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
        char *p = malloc(opaque(464)); /* the last block carved from a fresh pool */
        v = p + 464 * 5;               /* a block boundary beyond the carved part */
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
        expect("realloc(): pointer to a freed block %p, size class 208", p);
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
        expect("malloc_usable_size(): pointer to a freed block %p, size class 32", p);
        malloc_usable_size(p);
    } else if (!strcmp(c, "corrupt-free-list")) {
        /* A write after free overwrites the link of the free list's head. */
        void **a = block_with_neighbour(48), **b = malloc(opaque(48));
        free(a);
        free(b);
        b[0] = a + 64;
        expect("malloc(): corrupted free list: link in free block %p overwritten, size class 48",
               (void *)b);
        v = malloc(opaque(48));
    } else if (!strcmp(c, "corrupt-free-list-zeroed")) {
        /* memset(0) of a freed block: a zero link is not the end of a list. */
        char *a = block_with_neighbour(400);
        free(a);
        memset(a, 0, 16);
        expect("calloc(): corrupted free list: link in free block %p overwritten, size class 400",
               (void *)a);
        v = calloc(1, opaque(400));
    } else if (!strcmp(c, "free-sized-too-big")) {
        void *p = malloc(opaque(48));
        expect("free_sized(): wrong size 64 for block %p, size class 48", p);
        free_sized(p, opaque(64));
    } else if (!strcmp(c, "free-sized-smaller-class")) {
        void *p = malloc(opaque(100));
        expect("free_sized(): wrong size 48 for block %p, size class 112", p);
        free_sized(p, opaque(48));
    } else if (!strcmp(c, "free-sized-large")) {
        void *p = malloc(opaque(1 << 20));
        expect("free_sized(): wrong size 1000 for block %p, large block", p);
        free_sized(p, opaque(1000));
    } else if (!strcmp(c, "free-sized-double")) {
        void *p = block_with_neighbour(48);
        free(p);
        expect("free_sized(): double free of %p, size class 48", p);
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
        uintptr_t p;
        do p = (uintptr_t)malloc(opaque(48)); /* until one is not 32-aligned */
        while (p % 32 == 0);
        expect("free_aligned_sized(): wrong alignment 32 for block %p", (void *)p);
        free_aligned_sized((void *)p, opaque(32), opaque(48));
    } else if (!strcmp(c, "free-aligned-sized-wrong-size")) {
        void *p = aligned_alloc(opaque(64), opaque(100)); /* class 128 */
        expect("free_aligned_sized(): wrong size 20 for block %p, size class 128", p);
        free_aligned_sized(p, opaque(64), opaque(20));
    } else {
        CHECK(0, "unknown case %s", c);
    }
    fprintf(stderr, "misuse %s went unnoticed\n", c);
    return 0;
}
