/* The debug mode's quarantine is not "in use": blocks freed into it leave
   the in-use counts of pymalloc_get_stats and mallinfo2 exactly as they
   were before they were allocated, and are counted in a row of their own
   (quarantined_blocks/bytes; mallinfo2's smblks/fsmblks, glibc's rows for
   freed blocks held back); malloc_trim gives them back. Large blocks skip
   the quarantine (made inaccessible at once instead). Run by
   tests/stats.rs with PYMALLOC_DEBUG=1 and a quarantine of 64 MiB. */
#include "check.h"

#include "pymalloc.h"

static pymalloc_stats get(void) {
    pymalloc_stats s = {.size = sizeof s};
    CHECK(pymalloc_get_stats(&s) == 0, "pymalloc_get_stats failed");
    return s;
}

int main(void) {
    enum { N = 100 };
    static void *blocks[N];
    static const size_t sizes[] = {24, 3000, 40000, 100000};
    enum { KINDS = sizeof sizes / sizeof *sizes };

    pymalloc_stats before = get();
    struct mallinfo2 mi_before = mallinfo2();
    for (int i = 0; i < N; i++) blocks[i] = malloc(opaque(sizes[i % KINDS]));
    pymalloc_stats during = get();
    CHECK(during.blocks_in_use == before.blocks_in_use + N, "blocks in use %zu -> %zu", before.blocks_in_use,
          during.blocks_in_use);
    CHECK(during.quarantined_blocks == before.quarantined_blocks, "quarantine grew while nothing was freed");
    size_t held = during.bytes_in_use - before.bytes_in_use; /* the heap blocks' bytes */

    for (int i = 0; i < N; i++) free(blocks[i]);
    pymalloc_stats after = get();
    struct mallinfo2 mi_after = mallinfo2();

    /* Exact: one thread, nothing else allocates or frees in between. */
    CHECK(after.blocks_in_use == before.blocks_in_use, "blocks in use %zu before, %zu after freeing",
          before.blocks_in_use, after.blocks_in_use);
    CHECK(after.bytes_in_use == before.bytes_in_use, "bytes in use %zu before, %zu after freeing",
          before.bytes_in_use, after.bytes_in_use);
    CHECK(after.small_blocks == before.small_blocks && after.medium_blocks == before.medium_blocks &&
              after.large_blocks == before.large_blocks,
          "small/medium/large blocks in use %zu/%zu/%zu before, %zu/%zu/%zu after", before.small_blocks,
          before.medium_blocks, before.large_blocks, after.small_blocks, after.medium_blocks, after.large_blocks);
    CHECK(after.quarantined_blocks == before.quarantined_blocks + N, "quarantined blocks %zu -> %zu, want +%d",
          before.quarantined_blocks, after.quarantined_blocks, N);
    CHECK(after.quarantined_bytes == before.quarantined_bytes + held, "quarantined bytes %zu -> %zu, want +%zu",
          before.quarantined_bytes, after.quarantined_bytes, held);
    CHECK(mi_after.uordblks == mi_before.uordblks, "mallinfo2 uordblks %zu before, %zu after freeing",
          mi_before.uordblks, mi_after.uordblks);
    CHECK(mi_after.hblks == mi_before.hblks && mi_after.hblkhd == mi_before.hblkhd,
          "mallinfo2 hblks %zu (%zu bytes) before, %zu (%zu bytes) after freeing", mi_before.hblks, mi_before.hblkhd,
          mi_after.hblks, mi_after.hblkhd);
    CHECK(mi_after.smblks == after.quarantined_blocks && mi_after.fsmblks == after.quarantined_bytes,
          "mallinfo2 smblks/fsmblks %zu/%zu, quarantined %zu/%zu", mi_after.smblks, mi_after.fsmblks,
          after.quarantined_blocks, after.quarantined_bytes);

    void *large = malloc(opaque(1 << 20));
    pymalloc_stats with_large = get();
    free(large);
    pymalloc_stats large_freed = get();
    CHECK(large_freed.quarantined_blocks == with_large.quarantined_blocks &&
              large_freed.large_blocks == with_large.large_blocks - 1,
          "a freed large block was quarantined (%zu -> %zu)", with_large.quarantined_blocks,
          large_freed.quarantined_blocks);

    malloc_trim(0);
    pymalloc_stats trimmed = get();
    CHECK(trimmed.quarantined_blocks == 0 && trimmed.quarantined_bytes == 0,
          "malloc_trim left %zu quarantined blocks (%zu bytes)", trimmed.quarantined_blocks, trimmed.quarantined_bytes);
    CHECK(trimmed.blocks_in_use == before.blocks_in_use, "blocks in use %zu before, %zu after malloc_trim",
          before.blocks_in_use, trimmed.blocks_in_use);

    malloc_stats(); /* the driver checks its quarantine line */
    return 0;
}
