/* Out of memory under RLIMIT_AS: every failure is NULL + ENOMEM (never a
   crash), realloc keeps the old block, and everything works again once the
   limit is lifted. */
#include "check.h"

#include "rlimit.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc, pvalloc */

#define MiB ((size_t)1 << 20)
#define HEADROOM (256 * MiB)
#define CAP (4096 * MiB) /* more than this under the limit means the limit is not honoured */

static size_t page;

/* NULL is fine (errno must be ENOMEM), success is fine (freed at once). */
#define MAYBE(expr, what)                                                                     \
    do {                                                                                      \
        errno = 0;                                                                            \
        void *r_ = (expr);                                                                    \
        if (r_) {                                                                             \
            memset(r_, 1, malloc_usable_size(r_));                                            \
            free(r_);                                                                         \
        } else                                                                                \
            CHECK(errno == ENOMEM, "%s failed with errno %d (%s), expected ENOMEM", what,     \
                  errno, strerror(errno));                                                    \
    } while (0)

/* Every kind of allocation of a size that cannot fit now. */
static void all_kinds_fail(size_t n, const char *when) {
    char what[128];
    snprintf(what, sizeof what, "%s: malloc(%zu)", when, n);
    EXPECT_ENOMEM(malloc(opaque(n)), what);
    snprintf(what, sizeof what, "%s: calloc(1, %zu)", when, n);
    EXPECT_ENOMEM(calloc(opaque(1), opaque(n)), what);
    snprintf(what, sizeof what, "%s: calloc(%zu, 1024)", when, n / 1024);
    EXPECT_ENOMEM(calloc(opaque(n / 1024), opaque(1024)), what);
    snprintf(what, sizeof what, "%s: memalign(4096, %zu)", when, n);
    EXPECT_ENOMEM(memalign(opaque(4096), opaque(n)), what);
    snprintf(what, sizeof what, "%s: aligned_alloc(64, %zu)", when, n);
    EXPECT_ENOMEM(aligned_alloc(opaque(64), opaque(n)), what);
    snprintf(what, sizeof what, "%s: valloc(%zu)", when, n);
    EXPECT_ENOMEM(valloc(opaque(n)), what);
    snprintf(what, sizeof what, "%s: pvalloc(%zu)", when, n);
    EXPECT_ENOMEM(pvalloc(opaque(n)), what);
    void *m = (void *)&m;
    int r = posix_memalign(&m, opaque(256), opaque(n));
    CHECK(r == ENOMEM, "%s: posix_memalign(256, %zu) returned %d, expected ENOMEM", when, n, r);
    CHECK(m == (void *)&m, "%s: failed posix_memalign changed *memptr", when);
    /* realloc to n fails and keeps the old block */
    unsigned char *p = malloc(opaque(100));
    if (p) {
        memset(p, 0x77, 100);
        snprintf(what, sizeof what, "%s: realloc(p, %zu)", when, n);
        EXPECT_ENOMEM(realloc(p, opaque(n)), what);
        for (int i = 0; i < 100; i++) CHECK(p[i] == 0x77, "%s: failed realloc changed the old block", when);
        snprintf(what, sizeof what, "%s: reallocarray(p, %zu, 1024)", when, n / 1024);
        EXPECT_ENOMEM(reallocarray(p, opaque(n / 1024), opaque(1024)), what);
        for (int i = 0; i < 100; i++) CHECK(p[i] == 0x77, "%s: failed reallocarray changed the old block", when);
        free(p);
    }
}

/* Allocates blocks of one size (chained through their first word) until NULL. */
static size_t fill_until_null(size_t size, int use_calloc, void **chain) {
    size_t total = 0;
    *chain = NULL;
    for (;;) {
        errno = 0;
        void **p = use_calloc ? calloc(opaque(1), opaque(size)) : malloc(opaque(size));
        if (!p) {
            CHECK(errno == ENOMEM, "%s(%zu) failed after %zu bytes with errno %d (%s), expected ENOMEM",
                  use_calloc ? "calloc" : "malloc", size, total, errno, strerror(errno));
            break;
        }
        CHECK(((uintptr_t)p & 15) == 0, "malloc(%zu) = %p not 16-aligned", size, (void *)p);
        if (use_calloc) {
            const unsigned char *c = (const unsigned char *)p;
            for (size_t i = 0; i < size; i += 512) CHECK(c[i] == 0, "calloc(1, %zu) not zeroed at %zu", size, i);
            CHECK(c[size - 1] == 0, "calloc(1, %zu) not zeroed at the end", size);
        }
        *p = *chain;
        ((unsigned char *)p)[size - 1] = 0x42; /* touch the end too */
        *chain = p;
        total += size;
        CHECK(total < CAP, "allocated %zu MiB of %zu-byte blocks with only %zu MiB of address space headroom",
              total / MiB, size, HEADROOM / MiB);
    }
    return total;
}

static void free_chain(void *chain, size_t size) {
    while (chain) {
        void *next = *(void **)chain;
        CHECK(((unsigned char *)chain)[size - 1] == 0x42, "block of size %zu corrupted", size);
        free(chain);
        chain = next;
    }
}

int main(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    grow_stack();
    void *warm = malloc(opaque(100)); /* initialise the allocator before measuring */
    free(warm);
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0, "getrlimit failed");
    size_t base = vm_size();
    set_limit((rlim_t)(base + HEADROOM));

    /* nothing fits the headroom: every kind fails cleanly */
    all_kinds_fail(512 * MiB, "empty");
    all_kinds_fail(2048 * MiB, "empty");

    /* fill the address space with one size at a time, test while full */
    static const size_t sizes[] = {64 * MiB, 1 * MiB, 40000, 3000, 200, 16};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        for (int use_calloc = 0; use_calloc < 2; use_calloc++) {
            if (use_calloc && sizes[s] < 3000) continue; /* calloc of small blocks: see below */
            void *chain;
            size_t got = fill_until_null(sizes[s], use_calloc, &chain);
            if (s == 0 && !use_calloc)
                CHECK(got >= 64 * MiB, "only %zu MiB of 64 MiB blocks fit in %zu MiB of headroom", got / MiB,
                      HEADROOM / MiB);
            all_kinds_fail(64 * MiB, "full");
            MAYBE(malloc(opaque(10)), "malloc(10) while full");
            MAYBE(calloc(opaque(10), opaque(10)), "calloc(10, 10) while full");
            MAYBE(malloc(opaque(5000)), "malloc(5000) while full");
            MAYBE(memalign(opaque(64), opaque(100)), "memalign(64, 100) while full");
            free_chain(chain, sizes[s]);
            int t = malloc_trim(0);
            CHECK(t == 0 || t == 1, "malloc_trim(0) returned %d", t);
        }
    }
    { /* calloc of small blocks until NULL */
        void *chain;
        fill_until_null(48, 1, &chain);
        all_kinds_fail(64 * MiB, "full of calloc(48)");
        free_chain(chain, 48);
        malloc_trim(0);
    }

    /* memory freed under the limit serves other sizes without malloc_trim:
       whatever the allocator keeps for reuse (cached mappings, a spare
       arena) must give way when the limit is reached. Blocks of 32 KiB
       (less the debug mode's 48 bytes) fill their pools exactly in both
       geometries (8 to a 256 KiB pool), so a shortfall is memory held
       back, not the quantization of a class (40000-byte blocks lose 6% of
       each pool to it in the classic geometry). */
    {
        enum { MEDIUM = (32 << 10) - 48 };
        void *chain;
        size_t big = fill_until_null(MiB, 0, &chain);
        free_chain(chain, MiB);
        size_t medium = fill_until_null(MEDIUM, 0, &chain);
        CHECK(medium + 16 * MiB >= big, "after freeing %zu MiB of 1 MiB blocks only %zu MiB of %d-byte blocks fit",
              big / MiB, medium / MiB, MEDIUM);
        free_chain(chain, MEDIUM);
    }

    /* realloc growing one block until it fails: the old block stays intact */
    {
        size_t n = MiB;
        unsigned char *p = malloc(opaque(n));
        CHECK(p != NULL, "malloc(1 MiB) failed under the limit");
        for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 7 + (i >> 12));
        for (;;) {
            errno = 0;
            unsigned char *q = realloc(p, opaque(2 * n));
            if (!q) {
                CHECK(errno == ENOMEM, "realloc(p, %zu) failed with errno %d, expected ENOMEM", 2 * n, errno);
                for (size_t i = 0; i < n; i++)
                    CHECK(p[i] == (unsigned char)(i * 7 + (i >> 12)),
                          "failed realloc(p, %zu) corrupted the old block at byte %zu", 2 * n, i);
                break;
            }
            for (size_t i = 0; i < n; i++)
                CHECK(q[i] == (unsigned char)(i * 7 + (i >> 12)), "realloc to %zu lost byte %zu", 2 * n, i);
            p = q;
            n *= 2;
            CHECK(n < CAP, "realloc grew a block to %zu MiB under the limit", n / MiB);
            for (size_t i = n / 2; i < n; i++) p[i] = (unsigned char)(i * 7 + (i >> 12));
        }
        free(p);
    }

    /* lift the limit: everything works again */
    set_limit(old.rlim_cur);
    enum { NBIG = 300 };
    static void *big[NBIG];
    for (int i = 0; i < NBIG; i++) {
        big[i] = malloc(opaque(MiB));
        CHECK(big[i] != NULL, "malloc(1 MiB) #%d failed after lifting the limit", i);
        memset(big[i], i, MiB);
    }
    void *huge = malloc(opaque(200 * MiB));
    CHECK(huge != NULL, "malloc(200 MiB) failed after lifting the limit");
    memset(huge, 3, 200 * MiB);
    unsigned char *z = calloc(opaque(100), opaque(MiB));
    CHECK(z != NULL, "calloc(100, 1 MiB) failed after lifting the limit");
    for (size_t i = 0; i < 100 * MiB; i += page) CHECK(z[i] == 0, "calloc memory not zero");
    void *a = memalign(opaque(4096), opaque(5000)), *b = aligned_alloc(opaque(64), opaque(640));
    void *v = valloc(opaque(10000)), *pv = pvalloc(opaque(10000)), *pm = NULL;
    CHECK(posix_memalign(&pm, opaque(128), opaque(1000)) == 0 && pm, "posix_memalign failed after the limit");
    CHECK(a && b && v && pv, "an aligned allocation failed after lifting the limit");
    void *s = malloc(opaque(10)), *r = realloc(NULL, opaque(100000));
    CHECK(s && r, "malloc/realloc failed after lifting the limit");
    r = realloc(r, opaque(50 * MiB));
    CHECK(r != NULL, "realloc to 50 MiB failed after lifting the limit");
    memset(r, 9, 50 * MiB);
    for (int i = 0; i < NBIG; i++) {
        CHECK(((unsigned char *)big[i])[MiB - 1] == (unsigned char)i, "1 MiB block %d corrupted", i);
        free(big[i]);
    }
    free(huge), free(z), free(a), free(b), free(v), free(pv), free(pm), free(s), free(r);
    return 0;
}
