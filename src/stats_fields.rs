// The statistics totals, defined once. This list makes the `Totals`
// struct (src/stats.rs), the C `struct pymalloc_stats` (build.rs writes
// it into include/pymalloc.h), and the summary rows of the text and JSON
// reports, in this order. Append new fields at the end: C programs built
// against an older header keep working (`pymalloc_get_stats` fills only
// the `size` bytes they ask for).
stats_fields! {
    arenas_allocated: "arenas allocated total",
    arenas_reclaimed: "arenas reclaimed",
    arenas_highwater: "arenas highwater mark",
    arenas: "arenas allocated current",
    arena_bytes: "bytes in arenas",
    small_blocks: "small blocks in use",
    small_bytes: "bytes in small blocks",
    medium_blocks: "medium blocks in use",
    medium_bytes: "bytes in medium blocks",
    avail_bytes: "bytes in available blocks",
    pools_in_use: "pools in use",
    free_pool_bytes: "bytes in unused pools",
    quantization_bytes: "bytes lost to quantization",
    free_arena_bytes: "bytes in free arenas",
    large_blocks: "large blocks in use",
    large_bytes: "bytes in large blocks",
    cached_mappings: "large blocks kept for reuse",
    cached_bytes: "bytes they keep resident",
    blocks_in_use: "blocks in use, all sizes",
    bytes_in_use: "bytes in use, all sizes",
    bytes_mapped: "bytes mapped",
    bytes_mapped_peak: "bytes mapped, peak",
    bytes_returned: "bytes returned to the OS",
    thread_caches: "threads with a cache",
    thread_cache_blocks: "blocks in thread caches",
    thread_cache_bytes: "bytes in thread caches",
    quarantined_blocks: "blocks in the debug quarantine",
    quarantined_bytes: "bytes in the debug quarantine",
}
