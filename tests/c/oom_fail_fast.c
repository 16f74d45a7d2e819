/* Requests that cannot be served fail at once and change nothing: under
   RLIMIT_AS, with memory kept for reuse (empty pools, a free arena, cached
   large mappings), every allocation function at every alignment from 1 to
   2^63 fails with ENOMEM while the process maps and unmaps nothing, and
   the allocations after each failure map nothing either. Memory kept for
   reuse still gives way to a request it can make room for. */
#include "check.h"
#include "../../include/pymalloc.h"

#include "rlimit.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc, pvalloc */

/* Weak: preloaded, the program is linked without the library. */
#pragma weak pymalloc_get_stats

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define TiB ((size_t)1 << 40)

/* What the allocator holds from the OS, and what it keeps for reuse. */
typedef struct {
    size_t vm, mapped, returned, arenas, free_arena_bytes, cached_mappings, cached_bytes;
} held_t;

static held_t held(void) {
    pymalloc_stats s = {.size = sizeof s};
    CHECK(pymalloc_get_stats(&s) == 0, "pymalloc_get_stats failed");
    return (held_t){vm_size(), s.bytes_mapped, s.bytes_returned, s.arenas, s.free_arena_bytes, s.cached_mappings,
                    s.cached_bytes};
}

/* Nothing mapped, unmapped or returned to the OS between a and b. */
static void maps_nothing(held_t a, held_t b, const char *what) {
    CHECK(a.vm == b.vm, "%s: VmSize went from %zu to %zu", what, a.vm, b.vm);
    CHECK(a.mapped == b.mapped, "%s: bytes mapped went from %zu to %zu", what, a.mapped, b.mapped);
    CHECK(a.returned == b.returned, "%s: bytes returned to the OS went from %zu to %zu", what, a.returned,
          b.returned);
    CHECK(a.arenas == b.arenas, "%s: arenas went from %zu to %zu", what, a.arenas, b.arenas);
    CHECK(a.cached_mappings == b.cached_mappings && a.cached_bytes == b.cached_bytes,
          "%s: cached mappings went from %zu (%zu bytes) to %zu (%zu bytes)", what, a.cached_mappings, a.cached_bytes,
          b.cached_mappings, b.cached_bytes);
}

/* Nothing changed at all between a and b: what is kept for reuse neither. */
static void same(held_t a, held_t b, const char *what) {
    maps_nothing(a, b, what);
    CHECK(a.free_arena_bytes == b.free_arena_bytes, "%s: free arena bytes went from %zu to %zu", what,
          a.free_arena_bytes, b.free_arena_bytes);
}

static const char *const names[] = {"malloc", "calloc", "realloc", "reallocarray", "memalign", "posix_memalign",
                                    "aligned_alloc", "valloc", "pvalloc"};
enum { FUNCTIONS = sizeof names / sizeof *names };

/* Function f at alignment `align` (where it takes one) for n bytes: must
   fail with ENOMEM, leaving the old block of realloc intact. */
static void must_fail(int f, size_t align, size_t n, unsigned char *old) {
    char what[96];
    snprintf(what, sizeof what, "%s(align %zu, %zu bytes)", names[f], align, n);
    void *p = NULL;
    errno = 0;
    switch (f) {
    case 0: p = malloc(opaque(n)); break;
    case 1: p = calloc(opaque(1024), opaque(n / 1024)); break;
    case 2: p = realloc(old, opaque(n)); break;
    case 3: p = reallocarray(old, opaque(n / 1024), opaque(1024)); break;
    case 4: p = memalign(opaque(align), opaque(n)); break;
    case 5: {
        void *out = &out;
        int r = posix_memalign(&out, opaque(align < sizeof(void *) ? sizeof(void *) : align), opaque(n));
        CHECK(r == ENOMEM, "%s returned %d, expected ENOMEM", what, r);
        CHECK(out == &out, "%s changed *memptr", what);
        CHECK(errno == ENOMEM, "%s left errno %d (glibc's sets ENOMEM)", what, errno);
        return;
    }
    case 6: p = aligned_alloc(opaque(align), opaque(n)); break;
    case 7: p = valloc(opaque(n)); break;
    case 8: p = pvalloc(opaque(n)); break;
    }
    CHECK(p == NULL, "%s: expected NULL, got %p", what, p);
    CHECK(errno == ENOMEM, "%s: expected errno ENOMEM, got %d (%s)", what, errno, strerror(errno));
    for (int i = 0; i < 100; i++) CHECK(old[i] == 0x77, "%s changed the old block", what);
}

int main(void) {
    CHECK(pymalloc_get_stats != NULL, "not running under libpymalloc");
    grow_stack();
    unsigned char *old = malloc(opaque(100));
    CHECK(old != NULL, "malloc(100) failed");
    memset(old, 0x77, 100);

    /* Memory kept for reuse: a region whose large blocks were all freed
       (8 MiB of address space), arenas of medium blocks, then empty
       pools of a small and a medium class. */
    enum { LARGE = 4, MEDIUM = 64 };
    void *large[LARGE], *medium[MEDIUM];
    void *volatile small = malloc(opaque(16)), *volatile mid = malloc(opaque(4000));
    for (int i = 0; i < LARGE; i++) CHECK((large[i] = malloc(opaque(300 * KiB))) != NULL, "malloc(300 KiB)");
    for (int i = 0; i < MEDIUM; i++) CHECK((medium[i] = malloc(opaque(40000))) != NULL, "malloc(40000)");
    for (int i = 0; i < LARGE; i++) memset(large[i], i, 300 * KiB), free(large[i]);
    for (int i = 0; i < MEDIUM; i++) memset(medium[i], i, 40000), free(medium[i]);
    free(small), free(mid);
    held_t kept = held();
    CHECK(kept.cached_mappings > 0, "no freed large block kept after freeing large blocks");
    CHECK(kept.free_arena_bytes > 0, "no free arena after freeing %d medium blocks", MEDIUM);

    /* Headroom far below every request, and above what is kept. */
    struct rlimit unlimited;
    CHECK(getrlimit(RLIMIT_AS, &unlimited) == 0, "getrlimit failed");
    set_limit((rlim_t)(vm_size() + 32 * MiB));
    static const size_t sizes[] = {TiB, 64 * TiB, 1024 * MiB};
    held_t before = held();
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        for (int shift = 0; shift < 64; shift++) {
            for (int f = 0; f < FUNCTIONS; f++) {
                if (shift > 0 && (f < 4 || f > 6)) continue; /* no alignment to vary */
                held_t pre = held();
                must_fail(f, (size_t)1 << shift, sizes[s], old);
                same(pre, held(), names[f]);
                /* What a program does next maps nothing either: the empty
                   pools and the free arena are still there. (Its frees
                   may move pools: the debug mode's quarantine frees older
                   blocks.) */
                void *volatile a = malloc(opaque(16)), *volatile b = malloc(opaque(4000));
                void *volatile c = malloc(opaque(40000));
                CHECK(a && b && c, "malloc after a failed %s failed", names[f]);
                maps_nothing(before, held(), "malloc after a failure");
                free(c), free(b), free(a);
            }
        }
    }
    maps_nothing(kept, held(), "the failures");

    /* With no headroom at all, a request that releasing what is kept can
       make room for (the idle region and the free arenas) succeeds. */
    set_limit((rlim_t)vm_size());
    size_t room = 6 * MiB;
    void *fits = malloc(opaque(room));
    CHECK(fits != NULL, "malloc(%zu) failed with an idle region to give back", room);
    CHECK(held().cached_mappings == 0, "what was kept was not given back");
    memset(fits, 1, room);
    free(fits);
    set_limit(unlimited.rlim_cur);
    free(old);
    return 0;
}
