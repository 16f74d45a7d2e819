/* The statistics API: pymalloc_get_stats and mallinfo2 follow allocations
   up and down, block for block and byte for byte; large blocks through
   every kind of resize (spans shrunk and grown in place or moved,
   mappings shrunk, grown and moved), checked against a ledger of the
   live blocks after each call; realloc(p, 0) frees; a shorter (older)
   struct is filled only as far as it goes; pymalloc_print_stats prints the report (checked by the driver,
   tests/stats.rs). Linked against the header. */
#include "check.h"

#include "pymalloc.h"

static pymalloc_stats get(void) {
    pymalloc_stats s;
    memset(&s, 0xAB, sizeof s);
    s.size = sizeof s;
    CHECK(pymalloc_get_stats(&s) == 0, "pymalloc_get_stats failed");
    CHECK(s.size == sizeof s, "size %zu, want %zu", s.size, sizeof s);
    return s;
}

/* The large blocks' counters against the ledger of live large blocks
   (`live`, their usable sizes summed), after every call. */
static void large_ledger(pymalloc_stats base, void **live, int n, const char *what) {
    size_t bytes = 0, blocks = 0;
    for (int i = 0; i < n; i++)
        if (live[i]) bytes += malloc_usable_size(live[i]), blocks++;
    pymalloc_stats now = get();
    CHECK(now.large_blocks == base.large_blocks + blocks, "%s: %zu large blocks, the ledger says %zu", what,
          now.large_blocks - base.large_blocks, blocks);
    CHECK(now.large_bytes == base.large_bytes + bytes, "%s: %zu bytes in large blocks, the ledger says %zu", what,
          now.large_bytes - base.large_bytes, bytes);
    CHECK(mallinfo2().hblkhd == now.large_bytes, "%s: mallinfo2 hblkhd %zu, stats %zu", what, mallinfo2().hblkhd,
          now.large_bytes);
}

static void large_resizes(void) {
    enum { MiB = 1 << 20 };
    pymalloc_stats base = get();
    void *live[4] = {0};
    /* A span shrunk in place, then freed: 100 times. */
    for (int i = 0; i < 100; i++) {
        live[0] = malloc(opaque(2 * MiB));
        large_ledger(base, live, 4, "span");
        live[0] = realloc(live[0], opaque(MiB));
        large_ledger(base, live, 4, "span shrunk");
        free(live[0]);
        live[0] = NULL;
        large_ledger(base, live, 4, "shrunk span freed");
    }
    /* Spans grown in place (a free neighbour) and moved (none); beyond
       the spans' limit; mappings shrunk, grown and moved; back to a span. */
    static const size_t sizes[] = {300 << 10, 600 << 10, 3 * MiB, 2 * MiB, 6 * MiB, 5 * MiB, 40 * MiB, 12 * MiB,
                                   3 * MiB, 200 << 10, 100 << 10};
    live[1] = malloc(opaque(256 << 10));
    live[2] = malloc(opaque(256 << 10));
    live[3] = malloc(opaque(8 * MiB));
    large_ledger(base, live, 4, "neighbours");
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        for (int j = 1; j < 4; j++) {
            void *q = realloc(live[j], opaque(sizes[k] + 4096 * j));
            CHECK(q != NULL, "realloc to %zu failed", sizes[k]);
            live[j] = q;
            char what[64];
            snprintf(what, sizeof what, "realloc to %zu", sizes[k] + 4096 * j);
            large_ledger(base, live, 4, what);
        }
        if (k == 4) { /* a hole next to block 1: it can grow in place */
            free(live[2]);
            live[2] = malloc(opaque(256 << 10));
            large_ledger(base, live, 4, "hole");
        }
    }
    for (int j = 0; j < 4; j++) free(live[j]), live[j] = NULL;
    large_ledger(base, live, 4, "all freed");
}

int main(void) {
    large_resizes();
    enum { N = 1000 };
    static void *small[N];
    pymalloc_stats before = get();
    struct mallinfo2 mi_before = mallinfo2();

    for (int i = 0; i < N; i++) small[i] = malloc(opaque(64));
    void *medium = malloc(opaque(20000));
    void *large = malloc(opaque(1 << 20));
    pymalloc_stats during = get();
    struct mallinfo2 mi_during = mallinfo2();

    /* Exact: nothing else allocates between the two snapshots (one
       thread, and CHECK only prints on failure). 64 is a class size;
       20000 bytes take the medium class of 20480; a 1 MiB block is a
       mapping of exactly 1 MiB (the default mode: stats.rs runs this
       program without PYMALLOC_DEBUG). */
    enum { MEDIUM_CLASS = 20480, LARGE = 1 << 20 };
    CHECK(during.small_blocks == before.small_blocks + N, "small blocks %zu -> %zu", before.small_blocks, during.small_blocks);
    CHECK(during.small_bytes == before.small_bytes + N * 64, "small bytes %zu -> %zu", before.small_bytes, during.small_bytes);
    CHECK(during.medium_blocks == before.medium_blocks + 1, "medium blocks %zu -> %zu", before.medium_blocks, during.medium_blocks);
    CHECK(during.medium_bytes == before.medium_bytes + MEDIUM_CLASS, "medium bytes %zu -> %zu", before.medium_bytes, during.medium_bytes);
    CHECK(malloc_usable_size(medium) == MEDIUM_CLASS, "medium usable size %zu", malloc_usable_size(medium));
    CHECK(during.large_blocks == before.large_blocks + 1, "large blocks %zu -> %zu", before.large_blocks, during.large_blocks);
    CHECK(during.large_bytes == before.large_bytes + LARGE, "large bytes %zu -> %zu", before.large_bytes, during.large_bytes);
    CHECK(during.blocks_in_use == before.blocks_in_use + N + 2, "blocks in use %zu -> %zu", before.blocks_in_use, during.blocks_in_use);
    CHECK(during.bytes_in_use == before.bytes_in_use + N * 64 + MEDIUM_CLASS + LARGE, "bytes in use %zu -> %zu", before.bytes_in_use, during.bytes_in_use);
    CHECK(during.bytes_in_use == during.small_bytes + during.medium_bytes + during.large_bytes, "bytes in use is not the sum");
    CHECK(during.arena_bytes == during.arenas * (during.arena_bytes / (during.arenas ? during.arenas : 1)), "arena bytes");
    CHECK(during.bytes_mapped >= during.arena_bytes + during.large_bytes, "bytes mapped %zu < arenas + large", during.bytes_mapped);
    CHECK(during.bytes_mapped_peak >= during.bytes_mapped, "peak below current");
    CHECK(mi_during.uordblks == mi_before.uordblks + N * 64 + MEDIUM_CLASS, "mallinfo2 uordblks %zu -> %zu", mi_before.uordblks, mi_during.uordblks);
    CHECK(mi_during.hblkhd == mi_before.hblkhd + LARGE, "mallinfo2 hblkhd %zu -> %zu", mi_before.hblkhd, mi_during.hblkhd);
    CHECK(mi_during.hblks == mi_before.hblks + 1, "mallinfo2 hblks %zu -> %zu", mi_before.hblks, mi_during.hblks);
    CHECK(mi_during.uordblks == during.small_bytes + during.medium_bytes, "mallinfo2 and pymalloc_get_stats disagree");
    struct mallinfo mi1 = mallinfo();
    CHECK((size_t)mi1.uordblks == mi_during.uordblks, "mallinfo and mallinfo2 disagree");

    pymalloc_print_stats(); /* with live blocks: the driver checks the rows */

    for (int i = 0; i < N; i++) free(small[i]);
    free(medium);
    free(large);
    pymalloc_stats after = get();
    struct mallinfo2 mi_after = mallinfo2();
    CHECK(after.small_blocks == before.small_blocks, "small blocks %zu after, %zu before", after.small_blocks, before.small_blocks);
    CHECK(after.small_bytes == before.small_bytes, "small bytes %zu after, %zu before", after.small_bytes, before.small_bytes);
    CHECK(after.medium_blocks == before.medium_blocks, "medium blocks %zu after, %zu before", after.medium_blocks, before.medium_blocks);
    CHECK(after.large_blocks == before.large_blocks, "large blocks %zu after, %zu before", after.large_blocks, before.large_blocks);
    CHECK(after.blocks_in_use == before.blocks_in_use, "blocks in use %zu after, %zu before", after.blocks_in_use, before.blocks_in_use);
    CHECK(after.bytes_in_use == before.bytes_in_use, "bytes in use %zu after, %zu before", after.bytes_in_use, before.bytes_in_use);
    CHECK(mi_after.uordblks == mi_before.uordblks, "mallinfo2 uordblks %zu after, %zu before", mi_after.uordblks, mi_before.uordblks);
    CHECK(after.arenas_allocated >= after.arenas, "arena counts");

    /* realloc(p, 0) frees p (glibc): its bytes leave the totals, and errno
       stays as it was. 100 bytes take the class of 112. */
    void *p = malloc(opaque(100));
    pymalloc_stats with_p = get();
    errno = 1234;
    void *r = realloc(p, 0);
    CHECK(r == NULL, "realloc(p, 0) returned %p", r);
    CHECK(errno == 1234, "realloc(p, 0) changed errno to %d", errno);
    pymalloc_stats freed = get();
    CHECK(freed.small_blocks == with_p.small_blocks - 1, "realloc(p, 0): small blocks %zu -> %zu", with_p.small_blocks, freed.small_blocks);
    CHECK(freed.bytes_in_use == with_p.bytes_in_use - 112, "realloc(p, 0): bytes in use %zu -> %zu", with_p.bytes_in_use, freed.bytes_in_use);

    /* An older, shorter struct: only its bytes are written. */
    struct { size_t size, arenas_allocated, guard; } old = {2 * sizeof(size_t), 0, 12345};
    CHECK(pymalloc_get_stats((pymalloc_stats *)&old) == 0, "short struct refused");
    CHECK(old.size == 2 * sizeof(size_t) && old.arenas_allocated == after.arenas_allocated && old.guard == 12345,
          "short struct: size %zu, guard %zu", old.size, old.guard);
    CHECK(pymalloc_get_stats(NULL) == -1, "NULL accepted");
    old.size = 3;
    CHECK(pymalloc_get_stats((pymalloc_stats *)&old) == -1, "size 3 accepted");
    return 0;
}
