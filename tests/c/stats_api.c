/* The statistics API: pymalloc_get_stats and mallinfo2 follow allocations
   up and down; a shorter (older) struct is filled only as far as it
   goes; pymalloc_print_stats prints the report (checked by the driver,
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

int main(void) {
    enum { N = 1000 };
    static void *small[N];
    pymalloc_stats before = get();
    struct mallinfo2 mi_before = mallinfo2();

    for (int i = 0; i < N; i++) small[i] = malloc(opaque(64));
    void *medium = malloc(opaque(20000));
    void *large = malloc(opaque(1 << 20));
    pymalloc_stats during = get();
    struct mallinfo2 mi_during = mallinfo2();

    CHECK(during.small_blocks >= before.small_blocks + N, "small blocks %zu -> %zu", before.small_blocks, during.small_blocks);
    CHECK(during.small_bytes >= before.small_bytes + N * 64, "small bytes %zu -> %zu", before.small_bytes, during.small_bytes);
    CHECK(during.medium_blocks >= before.medium_blocks + 1, "medium blocks did not rise");
    CHECK(during.large_blocks == before.large_blocks + 1, "large blocks %zu -> %zu", before.large_blocks, during.large_blocks);
    CHECK(during.large_bytes >= before.large_bytes + (1 << 20), "large bytes did not rise");
    CHECK(during.bytes_in_use >= before.bytes_in_use + N * 64 + 20000 + (1 << 20), "bytes in use did not rise");
    CHECK(during.bytes_in_use == during.small_bytes + during.medium_bytes + during.large_bytes, "bytes in use is not the sum");
    CHECK(during.arena_bytes == during.arenas * (during.arena_bytes / (during.arenas ? during.arenas : 1)), "arena bytes");
    CHECK(during.bytes_mapped >= during.arena_bytes + during.large_bytes, "bytes mapped %zu < arenas + large", during.bytes_mapped);
    CHECK(during.bytes_mapped_peak >= during.bytes_mapped, "peak below current");
    CHECK(mi_during.uordblks >= mi_before.uordblks + N * 64 + 20000, "mallinfo2 uordblks %zu -> %zu", mi_before.uordblks, mi_during.uordblks);
    CHECK(mi_during.hblkhd >= mi_before.hblkhd + (1 << 20), "mallinfo2 hblkhd did not rise");
    CHECK(mi_during.uordblks == during.small_bytes + during.medium_bytes, "mallinfo2 and pymalloc_get_stats disagree");
    struct mallinfo mi1 = mallinfo();
    CHECK((size_t)mi1.uordblks == mi_during.uordblks, "mallinfo and mallinfo2 disagree");

    pymalloc_print_stats(); /* with live blocks: the driver checks the rows */

    for (int i = 0; i < N; i++) free(small[i]);
    free(medium);
    free(large);
    pymalloc_stats after = get();
    struct mallinfo2 mi_after = mallinfo2();
    CHECK(after.small_bytes == before.small_bytes, "small bytes %zu after, %zu before", after.small_bytes, before.small_bytes);
    CHECK(after.bytes_in_use == before.bytes_in_use, "bytes in use %zu after, %zu before", after.bytes_in_use, before.bytes_in_use);
    CHECK(mi_after.uordblks == mi_before.uordblks, "mallinfo2 uordblks %zu after, %zu before", mi_after.uordblks, mi_before.uordblks);
    CHECK(after.arenas_allocated >= after.arenas, "arena counts");

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
