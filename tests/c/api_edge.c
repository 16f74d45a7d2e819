/* Edge cases of the C allocator API, with glibc semantics. */
#include "check.h"

#include <dlfcn.h>
#include <fcntl.h>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* mallinfo, valloc, pvalloc */

/* Not in any header (cfree and __posix_memalign are not even exported by
   glibc 2.36 for new links): weak, so the program also links against glibc. */
extern void cfree(void *) __attribute__((weak));
extern void *__libc_malloc(size_t) __attribute__((weak));
extern void *__libc_calloc(size_t, size_t) __attribute__((weak));
extern void *__libc_realloc(void *, size_t) __attribute__((weak));
extern void __libc_free(void *) __attribute__((weak));
extern void *__libc_memalign(size_t, size_t) __attribute__((weak));
extern void *__libc_valloc(size_t) __attribute__((weak));
extern void *__libc_pvalloc(size_t) __attribute__((weak));
extern int __posix_memalign(void **, size_t, size_t) __attribute__((weak));

#define SENTINEL 0x5eed
#define ALIGNED(p, a) (((uintptr_t)(p) & ((uintptr_t)(a) - 1)) == 0)

static size_t page;

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + seed);
}
static int intact(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed)) return 0;
    return 1;
}

/* A block: non-NULL, 16-aligned, usable >= n. */
static void check_ptr(void *p, size_t n, const char *what) {
    CHECK(p != NULL, "%s(%zu) returned NULL (errno %d)", what, n, errno);
    CHECK(ALIGNED(p, 16), "%s(%zu) = %p is not 16-byte aligned", what, n, p);
    size_t u = malloc_usable_size(p);
    CHECK(u >= n, "%s(%zu): malloc_usable_size %zu < request", what, n, u);
}
/* A fresh block: as above, and all usable bytes writable (overwrites them). */
static void check_block(void *p, size_t n, const char *what) {
    check_ptr(p, n, what);
    memset(p, 0xC3, malloc_usable_size(p));
}

static void test_basic(void) {
    /* malloc(0): unique, non-NULL, freeable */
    void *a = malloc(opaque(0)), *b = malloc(opaque(0));
    check_block(a, 0, "malloc");
    check_block(b, 0, "malloc");
    CHECK(a != b, "two malloc(0) returned the same pointer %p", a);
    free(a);
    free(b);
    /* many malloc(0) live at once are all distinct */
    enum { NZ = 1000 };
    static void *z[NZ];
    for (int i = 0; i < NZ; i++) {
        z[i] = malloc(opaque(0));
        CHECK(z[i] != NULL, "malloc(0) #%d returned NULL", i);
        for (int j = 0; j < i; j++) CHECK(z[i] != z[j], "malloc(0) #%d == #%d", i, j);
    }
    for (int i = 0; i < NZ; i++) free(z[i]);

    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu",
          malloc_usable_size(NULL));

    /* free keeps errno, for every kind of block */
    static const size_t sizes[] = {0, 1, 24, 100, 512, 1000, 4096, 65536, 200000, 1 << 20, 32 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = malloc(opaque(sizes[i]));
        check_block(p, sizes[i], "malloc");
        errno = SENTINEL;
        free(p);
        CHECK(errno == SENTINEL, "free of a %zu-byte block changed errno to %d", sizes[i], errno);
    }
    errno = SENTINEL;
    free(NULL);
    CHECK(errno == SENTINEL, "free(NULL) changed errno to %d", errno);

    /* calloc(0, x), calloc(x, 0), calloc(0, SIZE_MAX): non-NULL */
    void *c = calloc(opaque(0), opaque(0));
    check_block(c, 0, "calloc(0,0)");
    free(c);
    c = calloc(opaque(0), opaque(SIZE_MAX));
    check_block(c, 0, "calloc(0,SIZE_MAX)");
    free(c);
    c = calloc(opaque(SIZE_MAX), opaque(0));
    check_block(c, 0, "calloc(SIZE_MAX,0)");
    free(c);
    c = calloc(opaque(1000), opaque(3));
    check_block(c, 3000, "calloc(1000,3)");
    free(c);
}

static void test_realloc(void) {
    /* realloc(NULL, n) is malloc(n) */
    for (size_t n = 0; n < 5000; n += 333) {
        void *p = realloc(NULL, opaque(n));
        check_block(p, n, "realloc(NULL)");
        free(p);
    }
    /* realloc(p, 0) frees p and returns NULL (glibc), for small and big blocks */
    static const size_t sizes[] = {1, 100, 1000, 100000, 4 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = malloc(opaque(sizes[i]));
        check_block(p, sizes[i], "malloc");
        void *q = realloc(p, opaque(0));
        CHECK(q == NULL, "realloc(p[%zu], 0) returned %p, not NULL", sizes[i], q);
    }
    /* growing within malloc_usable_size keeps the pointer */
    for (size_t n = 1; n < 300000; n = n * 3 + 1) {
        unsigned char *p = malloc(opaque(n));
        check_block(p, n, "malloc");
        size_t u = malloc_usable_size(p);
        fill(p, n, 7);
        uintptr_t where = (uintptr_t)p;
        for (size_t m = n; m <= u; m += (u - n) / 4 + 1) {
            p = realloc(p, opaque(m));
            CHECK((uintptr_t)p == where, "realloc(p, %zu) with usable size %zu moved the block %#lx -> %p", m, u,
                  (unsigned long)where, (void *)p);
        }
        p = realloc(p, opaque(u));
        CHECK((uintptr_t)p == where, "realloc(p, usable=%zu) moved the block", u);
        CHECK(intact(p, n, 7), "in-place realloc of a %zu-byte block changed its contents", n);
        free(p);
    }
    /* reallocarray */
    unsigned char *p = reallocarray(NULL, opaque(10), opaque(10));
    check_block(p, 100, "reallocarray(NULL,10,10)");
    fill(p, 100, 3);
    p = reallocarray(p, opaque(100), opaque(100));
    check_ptr(p, 10000, "reallocarray(p,100,100)");
    CHECK(intact(p, 100, 3), "reallocarray lost the contents");
    free(p);
}

static void test_enomem(void) {
    char what[160];
    static const size_t huge[] = {
        SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 7, SIZE_MAX - 8, SIZE_MAX - 15, SIZE_MAX - 16, SIZE_MAX - 31,
        SIZE_MAX - 32, SIZE_MAX - 63, SIZE_MAX - 4095, SIZE_MAX - 4096, SIZE_MAX - 65536,
        SIZE_MAX - (1 << 20), SIZE_MAX - (4 << 20) - 1, SIZE_MAX / 2, (size_t)PTRDIFF_MAX,
        (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX + 4096, (size_t)1 << 62, (size_t)1 << 61, (size_t)1 << 60,
    };
    const size_t nh = sizeof huge / sizeof *huge;
    unsigned char *keep = malloc(opaque(200));
    check_block(keep, 200, "malloc");
    fill(keep, 200, 42);
    for (size_t i = 0; i < nh; i++) {
        size_t n = opaque(huge[i]);
        snprintf(what, sizeof what, "malloc(%#zx)", n);
        EXPECT_ENOMEM(malloc(n), what);
        snprintf(what, sizeof what, "calloc(1, %#zx)", n);
        EXPECT_ENOMEM(calloc(opaque(1), n), what);
        snprintf(what, sizeof what, "calloc(%#zx, 1)", n);
        EXPECT_ENOMEM(calloc(n, opaque(1)), what);
        snprintf(what, sizeof what, "realloc(NULL, %#zx)", n);
        EXPECT_ENOMEM(realloc(NULL, n), what);
        snprintf(what, sizeof what, "realloc(p, %#zx)", n);
        EXPECT_ENOMEM(realloc(keep, n), what);
        CHECK(intact(keep, 200, 42), "failed realloc(p, %#zx) corrupted the old block", n);
        snprintf(what, sizeof what, "reallocarray(p, 1, %#zx)", n);
        EXPECT_ENOMEM(reallocarray(keep, opaque(1), n), what);
        snprintf(what, sizeof what, "valloc(%#zx)", n);
        EXPECT_ENOMEM(valloc(n), what);
        snprintf(what, sizeof what, "pvalloc(%#zx)", n);
        EXPECT_ENOMEM(pvalloc(n), what);
        for (size_t al = 1; al <= ((size_t)1 << 26); al <<= 1) {
            snprintf(what, sizeof what, "memalign(%zu, %#zx)", al, n);
            EXPECT_ENOMEM(memalign(opaque(al), n), what);
            snprintf(what, sizeof what, "aligned_alloc(%zu, %#zx)", al, n);
            EXPECT_ENOMEM(aligned_alloc(opaque(al), n), what);
            /* sizes that wrap only once rounded up to the alignment */
            snprintf(what, sizeof what, "memalign(%zu, SIZE_MAX - %zu)", al, al - 1);
            EXPECT_ENOMEM(memalign(opaque(al), opaque(SIZE_MAX - (al - 1))), what);
            if (al >= sizeof(void *)) {
                void *m = (void *)&what;
                errno = 0;
                int r = posix_memalign(&m, opaque(al), n);
                CHECK(r == ENOMEM, "posix_memalign(%zu, %#zx) returned %d, expected ENOMEM", al, n, r);
                /* glibc's fails through its malloc, which sets errno */
                CHECK(errno_now() == ENOMEM, "failed posix_memalign(%zu, %#zx) left errno %d", al, n, errno);
                CHECK(m == (void *)&what, "failed posix_memalign(%zu, %#zx) changed *memptr", al, n);
            }
        }
    }
    /* sizes that wrap when rounded up to a page */
    for (size_t k = 0; k < page; k += 511) {
        snprintf(what, sizeof what, "pvalloc(SIZE_MAX - %zu)", k);
        EXPECT_ENOMEM(pvalloc(opaque(SIZE_MAX - k)), what);
        snprintf(what, sizeof what, "valloc(SIZE_MAX - %zu)", k);
        EXPECT_ENOMEM(valloc(opaque(SIZE_MAX - k)), what);
    }
    /* multiplication overflow in calloc and reallocarray */
    static const size_t ov[][2] = {
        {SIZE_MAX / 2 + 1, 2}, {2, SIZE_MAX / 2 + 1}, {(size_t)1 << 33, (size_t)1 << 33},
        {SIZE_MAX, SIZE_MAX}, {SIZE_MAX, 2}, {65537, ((size_t)1 << 48) + 1}, {(size_t)1 << 32, (size_t)1 << 32},
        {SIZE_MAX / 16 + 1, 16}, {3, SIZE_MAX / 3 + 1},
    };
    for (size_t i = 0; i < sizeof ov / sizeof *ov; i++) {
        size_t a = opaque(ov[i][0]), b = opaque(ov[i][1]);
        snprintf(what, sizeof what, "calloc(%#zx, %#zx)", a, b);
        EXPECT_ENOMEM(calloc(a, b), what);
        snprintf(what, sizeof what, "reallocarray(NULL, %#zx, %#zx)", a, b);
        EXPECT_ENOMEM(reallocarray(NULL, a, b), what);
        snprintf(what, sizeof what, "reallocarray(p, %#zx, %#zx)", a, b);
        EXPECT_ENOMEM(reallocarray(keep, a, b), what);
        CHECK(intact(keep, 200, 42), "failed reallocarray(p, %#zx, %#zx) corrupted the old block", a, b);
    }
    /* the old block is still a valid, usable block */
    keep = realloc(keep, opaque(100000));
    check_ptr(keep, 100000, "realloc after failures");
    CHECK(intact(keep, 200, 42), "realloc after failures lost the contents");
    free(keep);
    /* and the allocator still works after all of this */
    void *p = malloc(opaque(1000));
    check_block(p, 1000, "malloc after ENOMEM");
    free(p);
}

static void test_posix_memalign_einval(void) {
    static const size_t bad[] = {0, 1, 2, 3, 4, 6, 12, 24, 40, 48, 100, 4095, 4097, 4096 + 8,
                                 SIZE_MAX, SIZE_MAX / 2, ((size_t)1 << 63) + 8};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        void *m = (void *)&m;
        errno = SENTINEL;
        int r = posix_memalign(&m, opaque(bad[i]), opaque(16));
        CHECK(r == EINVAL, "posix_memalign(align=%zu) returned %d, expected EINVAL", bad[i], r);
        CHECK(m == (void *)&m, "posix_memalign(align=%zu) failed but changed *memptr to %p", bad[i], m);
        CHECK(errno_now() == SENTINEL, "posix_memalign(align=%zu) changed errno to %d", bad[i], errno);
        /* a bad alignment wins over a huge size */
        r = posix_memalign(&m, opaque(bad[i]), opaque(SIZE_MAX));
        CHECK(r == EINVAL, "posix_memalign(align=%zu, SIZE_MAX) returned %d, expected EINVAL", bad[i], r);
        CHECK(m == (void *)&m, "posix_memalign(align=%zu) failed but changed *memptr", bad[i]);
    }
    /* huge power-of-two alignment: valid argument, cannot be served */
    void *m = (void *)&m;
    errno = 0;
    int r = posix_memalign(&m, opaque((size_t)1 << 63), opaque(16));
    CHECK(r == ENOMEM, "posix_memalign(1<<63, 16) returned %d, expected ENOMEM", r);
    CHECK(errno_now() == ENOMEM, "failed posix_memalign(1<<63, 16) left errno %d", errno);
    CHECK(m == (void *)&m, "posix_memalign(1<<63) failed but changed *memptr");
    /* size 0 succeeds with a unique pointer (glibc) */
    void *x = NULL, *y = NULL;
    CHECK(posix_memalign(&x, opaque(64), opaque(0)) == 0 && x != NULL, "posix_memalign(64, 0) failed");
    CHECK(posix_memalign(&y, opaque(64), opaque(0)) == 0 && y != NULL, "posix_memalign(64, 0) failed");
    CHECK(x != y && ALIGNED(x, 64) && ALIGNED(y, 64), "posix_memalign(64, 0): %p %p", x, y);
    free(x);
    free(y);
}

static void test_memalign_rules(void) {
    /* non-power-of-two alignments round up to the next power of two */
    static const size_t odd[][2] = {{3, 4}, {24, 32}, {48, 64}, {100, 128}, {257, 512},
                                    {1000, 1024}, {4097, 8192}, {40000, 65536}, {(3 << 20) + 1, 4 << 20}};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        for (size_t n = 0; n < 5000; n += 1250) {
            void *p = memalign(opaque(odd[i][0]), opaque(n));
            check_block(p, n, "memalign(odd)");
            CHECK(ALIGNED(p, odd[i][1]), "memalign(%zu, %zu) = %p is not %zu-aligned", odd[i][0], n, p, odd[i][1]);
            free(p);
        }
    }
    /* 0 and tiny alignments are fine */
    for (size_t al = 0; al <= 16; al++) {
        void *p = memalign(opaque(al), opaque(40));
        check_block(p, 40, "memalign(small alignment)");
        free(p);
    }
    /* alignment above SIZE_MAX/2+1 cannot be a power of two: EINVAL */
    static const size_t badal[] = {SIZE_MAX / 2 + 2, SIZE_MAX - 4095, SIZE_MAX};
    for (size_t i = 0; i < sizeof badal / sizeof *badal; i++) {
        errno = 0;
        void *p = memalign(opaque(badal[i]), opaque(16));
        CHECK(p == NULL && errno == EINVAL, "memalign(%#zx, 16) = %p errno %d, expected NULL/EINVAL", badal[i], p, errno);
    }
    /* SIZE_MAX/2+1 is a power of two: valid, but unservable */
    errno = 0;
    void *p = memalign(opaque(SIZE_MAX / 2 + 1), opaque(16));
    CHECK(p == NULL && errno == ENOMEM, "memalign(1<<63, 16) = %p errno %d, expected NULL/ENOMEM", p, errno);

    /* aligned_alloc: powers of two work, also with a size that is not a multiple */
    p = aligned_alloc(opaque(64), opaque(100));
    check_block(p, 100, "aligned_alloc(64, 100)");
    CHECK(ALIGNED(p, 64), "aligned_alloc(64, 100) = %p", p);
    free(p);
    /* glibc >= 2.38 (and pymalloc): a non-power-of-two alignment is EINVAL.
       This machine's glibc 2.36 accepts it, so only check it for pymalloc. */
    if (pymalloc_expected()) {
        static const size_t bad[] = {0, 3, 5, 6, 12, 24, 48, 100, 4097, SIZE_MAX};
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            errno = 0;
            p = aligned_alloc(opaque(bad[i]), opaque(64));
            CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64) = %p errno %d, expected NULL/EINVAL",
                  bad[i], p, errno);
        }
    }

    /* valloc / pvalloc */
    for (size_t n = 0; n < 3 * page; n += page / 3 + 1) {
        void *v = valloc(opaque(n));
        check_block(v, n, "valloc");
        CHECK(ALIGNED(v, page), "valloc(%zu) = %p not page aligned", n, v);
        free(v);
        void *pv = pvalloc(opaque(n));
        size_t want = (n + page - 1) & ~(page - 1);
        check_block(pv, want, "pvalloc");
        CHECK(ALIGNED(pv, page), "pvalloc(%zu) = %p not page aligned", n, pv);
        free(pv);
    }
}

static void test_info(void) {
    /* mallinfo2/mallinfo: uordblks follows 10 MB of 1 KiB blocks */
    enum { NB = 10 * 1024 };
    static void *blocks[NB];
    struct mallinfo2 before = mallinfo2();
    struct mallinfo before1 = mallinfo();
    for (int i = 0; i < NB; i++) {
        blocks[i] = malloc(opaque(1024));
        CHECK(blocks[i] != NULL, "malloc(1024) failed");
        memset(blocks[i], i, 1024);
    }
    struct mallinfo2 during = mallinfo2();
    struct mallinfo during1 = mallinfo();
    CHECK(during.uordblks >= before.uordblks + (size_t)NB * 1024,
          "mallinfo2().uordblks went from %zu to %zu after allocating %d KiB", before.uordblks,
          during.uordblks, NB);
    CHECK((long)during1.uordblks - (long)before1.uordblks >= (long)NB * 1024,
          "mallinfo().uordblks went from %d to %d after allocating %d KiB", before1.uordblks,
          during1.uordblks, NB);
    for (int i = 0; i < NB; i++) free(blocks[i]);
    struct mallinfo2 after = mallinfo2();
    struct mallinfo after1 = mallinfo();
    /* a few freed blocks may stay cached as "in use": require 90% of the drop */
    CHECK(after.uordblks + (size_t)NB * 1024 * 9 / 10 <= during.uordblks,
          "mallinfo2().uordblks went from %zu to %zu after freeing %d KiB", during.uordblks, after.uordblks, NB);
    CHECK(after1.uordblks + NB * 1024 * 9 / 10 <= during1.uordblks,
          "mallinfo().uordblks went from %d to %d after freeing %d KiB", during1.uordblks, after1.uordblks, NB);

    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim(0) returned %d", t);
    t = malloc_trim(opaque(1 << 20));
    CHECK(t == 0 || t == 1, "malloc_trim(1 MiB) returned %d", t);

    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "mallopt(M_MMAP_THRESHOLD, 1 MiB) did not return 1");
    /* glibc 2.36's __libc_mallopt has no default case: every parameter
       returns 1, except an M_MXFAST outside 0..160. */
    int r = mallopt((int)opaque(12345), 0);
    CHECK(r == 1, "mallopt(12345, 0) returned %d, expected 1 as glibc", r);
    r = mallopt(M_MMAP_THRESHOLD, (int)opaque(64 << 20));
    CHECK(r == 1, "mallopt(M_MMAP_THRESHOLD, 64 MiB) returned %d, expected 1 as glibc", r);
    r = mallopt(M_MXFAST, (int)opaque(160));
    CHECK(r == 1, "mallopt(M_MXFAST, 160) returned %d, expected 1 as glibc", r);
    r = mallopt(M_MXFAST, (int)opaque(161));
    CHECK(r == 0, "mallopt(M_MXFAST, 161) returned %d, expected 0 as glibc", r);
    r = mallopt(M_MXFAST, (int)opaque(-1));
    CHECK(r == 0, "mallopt(M_MXFAST, -1) returned %d, expected 0 as glibc", r);

    /* malloc_stats writes to stderr and never to stdout */
    fflush(stdout);
    fflush(stderr);
    FILE *fo = tmpfile(), *fe = tmpfile();
    CHECK(fo && fe, "tmpfile failed");
    int so = dup(1), se = dup(2);
    CHECK(so >= 0 && se >= 0, "dup failed");
    CHECK(dup2(fileno(fo), 1) == 1 && dup2(fileno(fe), 2) == 2, "dup2 failed");
    malloc_stats();
    fflush(stdout);
    fflush(stderr);
    CHECK(dup2(so, 1) == 1 && dup2(se, 2) == 2, "dup2 back failed");
    close(so);
    close(se);
    long out_len = lseek(fileno(fo), 0, SEEK_END), err_len = lseek(fileno(fe), 0, SEEK_END);
    CHECK(out_len == 0, "malloc_stats() wrote %ld bytes to stdout", out_len);
    CHECK(err_len > 0, "malloc_stats() wrote nothing to stderr");
    fclose(fo);
    fclose(fe);

    /* malloc_info */
    char *buf = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&buf, &len);
    CHECK(ms != NULL, "open_memstream failed");
    r = malloc_info(0, ms);
    fclose(ms);
    CHECK(r == 0, "malloc_info(0, f) returned %d", r);
    CHECK(buf != NULL && len > 7 && strncmp(buf, "<malloc", 7) == 0,
          "malloc_info output does not start with <malloc: '%.40s'", buf ? buf : "(null)");
    free(buf);
    FILE *dn = fopen("/dev/null", "w");
    CHECK(dn != NULL, "fopen /dev/null failed");
    errno = 0;
    r = malloc_info((int)opaque(1), dn);
    int e = errno;
    fclose(dn);
    /* glibc returns the value EINVAL and leaves errno alone. */
    CHECK(r == EINVAL && e == 0, "malloc_info(1, f) returned %d errno %d, expected EINVAL/0 as glibc", r, e);
}

/* Where a function we call really lives. */
static void check_from_pymalloc(void *fn, const char *name) {
    Dl_info info;
    CHECK(fn != NULL, "%s is not defined", name);
    CHECK(dladdr(fn, &info) != 0 && info.dli_fname != NULL, "dladdr(%s) failed", name);
    CHECK(strstr(info.dli_fname, "libpymalloc") != NULL, "%s resolves to %s, not libpymalloc", name,
          info.dli_fname);
}

static void test_aliases(void) {
    if (pymalloc_expected()) {
        void *volatile fns[] = {
            (void *)malloc, (void *)free, (void *)calloc, (void *)realloc, (void *)reallocarray,
            (void *)posix_memalign, (void *)aligned_alloc, (void *)memalign, (void *)valloc,
            (void *)pvalloc, (void *)malloc_usable_size, (void *)cfree, (void *)__libc_malloc,
            (void *)__libc_calloc, (void *)__libc_realloc, (void *)__libc_free, (void *)__libc_memalign,
            (void *)__libc_valloc, (void *)__libc_pvalloc, (void *)__posix_memalign, (void *)mallopt,
            (void *)malloc_trim, (void *)mallinfo, (void *)mallinfo2, (void *)malloc_stats,
            (void *)malloc_info,
        };
        static const char *names[] = {
            "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
            "memalign", "valloc", "pvalloc", "malloc_usable_size", "cfree", "__libc_malloc",
            "__libc_calloc", "__libc_realloc", "__libc_free", "__libc_memalign", "__libc_valloc",
            "__libc_pvalloc", "__posix_memalign", "mallopt", "malloc_trim", "mallinfo", "mallinfo2",
            "malloc_stats", "malloc_info",
        };
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) check_from_pymalloc(fns[i], names[i]);
    }
    if (cfree) {
        void *p = malloc(opaque(100));
        check_block(p, 100, "malloc");
        errno = SENTINEL;
        cfree(p);
        CHECK(errno == SENTINEL, "cfree changed errno");
        cfree(NULL);
    }
    if (__libc_malloc && __libc_free && __libc_calloc && __libc_realloc) {
        unsigned char *p = __libc_malloc(opaque(300));
        check_block(p, 300, "__libc_malloc");
        fill(p, 300, 9);
        p = __libc_realloc(p, opaque(70000));
        check_ptr(p, 70000, "__libc_realloc");
        CHECK(intact(p, 300, 9), "__libc_realloc lost the contents");
        free(p); /* mixes with the plain functions */
        p = malloc(opaque(50));
        errno = SENTINEL;
        __libc_free(p);
        CHECK(errno == SENTINEL, "__libc_free changed errno");
        __libc_free(NULL);
        unsigned char *c = __libc_calloc(opaque(100), opaque(10));
        CHECK(c != NULL, "__libc_calloc failed");
        for (int i = 0; i < 1000; i++) CHECK(c[i] == 0, "__libc_calloc memory not zero at %d", i);
        __libc_free(c);
        EXPECT_ENOMEM(__libc_malloc(opaque(SIZE_MAX)), "__libc_malloc(SIZE_MAX)");
        EXPECT_ENOMEM(__libc_calloc(opaque(SIZE_MAX / 2 + 1), opaque(2)), "__libc_calloc overflow");
        p = __libc_malloc(opaque(10));
        CHECK(__libc_realloc(p, opaque(0)) == NULL, "__libc_realloc(p, 0) != NULL");
        EXPECT_ENOMEM(__libc_realloc(NULL, opaque(SIZE_MAX)), "__libc_realloc(NULL, SIZE_MAX)");
    }
    if (__libc_memalign && __libc_valloc && __libc_pvalloc) {
        void *p = __libc_memalign(opaque(4096), opaque(100));
        check_block(p, 100, "__libc_memalign");
        CHECK(ALIGNED(p, 4096), "__libc_memalign(4096) = %p", p);
        free(p);
        p = __libc_memalign(opaque(24), opaque(100));
        check_block(p, 100, "__libc_memalign(24)");
        CHECK(ALIGNED(p, 32), "__libc_memalign(24) = %p not 32-aligned", p);
        free(p);
        p = __libc_valloc(opaque(5000));
        check_block(p, 5000, "__libc_valloc");
        CHECK(ALIGNED(p, page), "__libc_valloc = %p", p);
        free(p);
        p = __libc_pvalloc(opaque(5000));
        check_block(p, 2 * page, "__libc_pvalloc");
        CHECK(ALIGNED(p, page), "__libc_pvalloc = %p", p);
        free(p);
        EXPECT_ENOMEM(__libc_memalign(opaque(64), opaque(SIZE_MAX)), "__libc_memalign(64, SIZE_MAX)");
        EXPECT_ENOMEM(__libc_valloc(opaque(SIZE_MAX)), "__libc_valloc(SIZE_MAX)");
        EXPECT_ENOMEM(__libc_pvalloc(opaque(SIZE_MAX)), "__libc_pvalloc(SIZE_MAX)");
    }
    if (__posix_memalign) {
        void *p = (void *)&p;
        CHECK(__posix_memalign(&p, opaque(24), opaque(16)) == EINVAL, "__posix_memalign(24) != EINVAL");
        CHECK(p == (void *)&p, "__posix_memalign(24) changed *memptr");
        CHECK(__posix_memalign(&p, opaque(64), opaque(SIZE_MAX)) == ENOMEM, "__posix_memalign(64, SIZE_MAX) != ENOMEM");
        CHECK(__posix_memalign(&p, opaque(256), opaque(1000)) == 0, "__posix_memalign(256, 1000) failed");
        check_block(p, 1000, "__posix_memalign");
        CHECK(ALIGNED(p, 256), "__posix_memalign(256) = %p", p);
        free(p);
    }
}

int main(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    test_basic();
    test_realloc();
    test_enomem();
    test_posix_memalign_einval();
    test_memalign_rules();
    test_aliases();
    test_info();
    return 0;
}
