//! pymalloc-rs: a drop-in replacement for the C allocator over the design
//! of CPython's small-object allocator (`Objects/obmalloc.c`).
//!
//! # Memory layout
//!
//! ```text
//!  thread 1: cache ┐   thread 2: cache ┐     per-thread bins of free blocks
//!   (bins, no lock)│    (bins, no lock)│     (`thread_cache`): pop / push,
//!                  ▼                   ▼     batches to and from the heap
//!  ═══════════════ the heap, behind ONE lock (`heap::HEAP`) ═══════════════
//!  depot: whole bins parked by one cache, taken whole by another (`depot`)
//!  OS (mmap) ──► arena: ARENA_SIZE bytes, aligned to ARENA_SIZE
//!                ┌──────────┬──────────┬──────────┬─────┬──────────┐
//!                │  pool 0  │  pool 1  │  pool 2  │ ... │ pool n-1 │  pools of one tier
//!                └──────────┴──────────┴──────────┴─────┴──────────┘
//!                pool: blocks of one size class, carved lazily
//!                ┌─────┬─────┬─────┬─────┬───────────────────────────┐
//!                │ blk │ blk │free │ blk │ never touched ...         │
//!                └─────┴─────┴──┬──┴─────┴───────────────────────────┘
//!                               └─► free list (mangled link in the first
//!                                   word, double-free key in the second)
//!
//!  OS (mmap) ──► region: 8-256 MiB of address space, tiled by spans
//!                ┌──────────┬────────┬──────────────┬─────┬──────────────────┐
//!                │ block    │ free   │ block        │ ... │ free, untouched  │
//!                └──────────┴────────┴──────────────┴─────┴──────────────────┘
//!                free spans merge with their neighbours and keep their pages
//!
//!  descriptors (slab, from mmap):  Arena { pools: [Pool; n], free-pool list, ... }
//!                                  LargeBlock { base, len, left, right, ... }
//!  arena map (radix tree):        address >> 17 ──► Arena | LargeBlock
//! ```
//!
//! | request               | served by                                          |
//! |-----------------------|----------------------------------------------------|
//! | 0 ..= 512 B           | 32 small classes, 16 B apart, in the smallest pools |
//! | 513 B ..= 128 KiB     | 32 medium classes, 4 per power of two, in pools of 4x, 16x, 64x the smallest |
//! | 128 KiB ..= 32 MiB    | a span of a region (`region`): fewest fresh pages, merged when freed |
//! | above 32 MiB          | a private mapping each (`large`), with a learned cache |
//! | aligned               | the smallest class whose size is a multiple of the alignment, else a span or a mapping |
//!
//! # Layers
//!
//! Each module owns one concept and its life; imports only go down
//! (`lib.rs` declares the modules in this order and `tests/layers.rs`
//! checks that none names a module above it):
//!
//! ```text
//!  entry    cxx, abi, init      C and C++ exports: argument checks, errno,
//!                               glibc's semantics; the constructor
//!  front    fork, report,       fork handlers; statistics reports and
//!           stats, front,       snapshots; which thread has which cache
//!           thread_cache,       and their registry; one thread's cache;
//!           depot,              whole bins parked between the caches;
//!           debug_mode          the debug mode's guard bytes and its own
//!                               quarantine (both guarded by the heap lock)
//!  heap     check, heap         the one lock (HEAP); dispatch by size;
//!                               the per-class pool lists; the clock;
//!                               releasing reserves when the OS refuses;
//!                               the invariant walk (check)
//!  parts    purge               when freed memory goes back (DirtyPools)
//!           large, region       large blocks: mappings, their cache and
//!                               the regions' spans, from allocation to
//!                               release (Large); free spans' bins
//!           arena_map,          address -> arena or large descriptor
//!           large_block         a large block's descriptor
//!           arena, pool         arenas from mapping to unmapping
//!                               (Arenas) and their tiers' lists; pools
//!                               and their blocks
//!  system   config, list,       PYMALLOC_* options; lists by age; heap
//!           fault, print,       faults and their one-line report; printing
//!           lock, tls, slab,    without allocating; the futex lock; the
//!           os, hardening,      thread-local words; descriptor slabs; mmap
//!           size_class,         and friends; link mangling; size classes
//!           geometry            and the geometry
//! ```
//!
//! A `free` reads top to bottom: `abi::free` decides its path once: with
//! one thread, the lookup (`ArenaMap::pool_of`) and `Heap::free_fast_in`
//! (the lock elided); with a cache (`front::made`), the lock-free lookup
//! (`Heap::live_block`) and `ThreadCache::free_of_class` (most calls end
//! there, no lock); else `abi::free_contended` (the cache's making,
//! `Heap::free_fast` under a free lock) -> `abi::release` (the general
//! path, beside the fast one) -> `debug_mode` when on, else `Heap::free`
//! -> `pool` or `Large::free`. `realloc` of a pool block looks it up once
//! and hands the answer to the `free` of the old block.
//! The options sit in the system layer because every layer reads one.
//!
//! With the default geometry (CPython 3.10+), pools are 16 KiB / 64 KiB /
//! 256 KiB / 1 MiB in 1 MiB arenas; the classic geometry (feature
//! `classic-geometry`) uses 4 KiB / 16 KiB / 64 KiB / 256 KiB in 256 KiB
//! arenas. Everything about sizes lives in `geometry` and `size_class`.
//!
//! # Invariants
//!
//! - A pool is unborn, used (in `usedpools[class]`), full (in no list) or
//!   empty (on its arena's free-pool list); see `pool`. Each class may keep
//!   its last emptied pool on its used list until it decays (or, idle,
//!   gives its pages to a pool of another tier being born), so a class
//!   that empties and refills a pool in turn stays on the fast path.
//! - A free block's link is stored mangled with its own address and a
//!   per-process secret, and its second word holds a key bound to its
//!   address that marks it free: a hint for double-free detection, which
//!   looks for the block on its pool's free list and in the thread caches
//!   before calling it freed; only these 16 bytes of a free block are
//!   ever written; see `hardening`. `PYMALLOC_DEBUG=1` wraps every block
//!   in guard bytes (`debug_mode`).
//! - Each tier's usable arenas are sorted by free pools, most used first,
//!   kept in O(1) per change; entirely free arenas leave the list; see
//!   `arena`.
//! - Freed memory is reused first and goes back to the OS once it has
//!   stayed unused for a while (empty pools, free spans and the pages
//!   inside free blocks of idle pools decommitted, free arenas, cached
//!   mappings and empty regions unmapped); see
//!   `purge`. Pools and free spans share one footprint: a pool born on
//!   pages that are not resident first decommits as many resident pages
//!   of the free spans (`Large::shed_free_resident`), then of the empty
//!   pools of other tiers (`Heap::shed_dirty_pools`, `shed_idle_kept`).
//! - A region is tiled by spans in address order; two free spans are
//!   neighbours only if their dirty bytes are not one interval; a free
//!   span's pages outside its `dirty` interval read as zero;
//!   see `region`. A cached mapping is never at the address it was freed
//!   at (moved by `mremap`), and in the debug mode free spans are
//!   inaccessible (`PROT_NONE`).
//! - Every pointer passed to `free`, `realloc` or `malloc_usable_size` is
//!   looked up in the arena map and must be the first byte of a live
//!   block; anything else aborts with a message (`fault::fatal`).
//! - Every block is 16-byte aligned; a block's alignment is the lowest
//!   set bit of its class size.
//!
//! # Locking rules
//!
//! Each thread's cache (`thread_cache`, reached through one initial-exec
//! TLS word, `front`) serves `malloc` and `free` of blocks up to 16 KiB
//! without any lock or atomic read-modify-write; it takes the heap lock
//! once per batch (an empty bin takes a list parked in the `depot` or
//! refills from the pools; a full one is parked whole or flushes half). Its
//! `free` checks the pointer against the arena map and the pool header
//! without the lock: the fields read either stay fixed while the block is
//! live or are atomics written under the lock (`pool::Shared`). A thread
//! holding the heap lock may stop another thread's cache and use its bins
//! (the owner marks its operations busy; the stopper passes a process-wide
//! barrier, `membarrier`, and waits for the owner to leave); the owner
//! takes its cache back under the heap lock.
//!
//! One global lock (`heap::HEAP`, a futex mutex behind `lock_api`, see
//! `lock`) guards the whole heap. While it is held the code never calls
//! `malloc`, never touches thread-local storage (other than libc's errno),
//! never prints and never panics; system calls that may fail leave errno
//! alone. Anything that may allocate (stdio in `malloc_info`, `abort`'s
//! signal handlers, `pthread_atfork`) runs after the lock is released.
//! The lock word holds its owner's thread pointer, so "do I hold it?" has
//! an exact answer. `fork` takes glibc's stdio list lock and then the heap
//! lock in its prepare handler, unless a signal handler forks while its
//! thread holds the heap lock (`fork`). The heap is a
//! `const` static, so the first `malloc`, which can come before any
//! constructor, needs no initialisation (`init`); it only resolves the
//! `PYMALLOC_*` options, before taking the lock (`config`). Statistics
//! are copied under the lock and printed after it (`stats`, `report`).
//!
//! The crate is `no_std` outside tests and allocates nothing of its own.

#![cfg_attr(not(test), no_std)]

// The modules, top layer first: each names (`crate::...`) only modules
// declared after it (tests/layers.rs checks it).

#[cfg(test)]
mod model_tests;

// Entry points: the exported functions and start-up.
#[cfg_attr(test, allow(dead_code))] // in tests nothing is exported
mod cxx;
#[cfg_attr(test, allow(dead_code))] // in tests nothing is exported
mod abi;
mod init;

// Front: what stands before the heap.
#[cfg_attr(test, allow(dead_code))] // installed by the constructor, absent in tests
mod fork;
#[cfg_attr(test, allow(dead_code))] // the exit hook is absent in tests
mod report;
mod stats;
#[cfg_attr(test, allow(dead_code))] // its TLS slot is used only by the exports
mod front;
mod thread_cache;
mod depot;
mod debug_mode;

// The heap: one lock, dispatch by size, the per-class pool lists.
mod check;
mod heap;

// What the heap is made of.
mod purge;
mod large;
mod region;
mod arena_map;
mod large_block;
mod arena;
mod pool;

// The system below: options, faults, printing, the OS, the lock, sizes.
mod config;
mod list;
mod fault;
mod print;
mod lock;
mod tls;
mod slab;
mod os;
mod hardening;
mod size_class;
mod geometry;

pub use abi::{
    pymalloc_check_heap, pymalloc_get_stats, pymalloc_print_stats, pymalloc_stats, pymalloc_version,
    pymalloc_write_stats,
};

/// No path of the library can panic (tests/exports.rs walks the machine
/// code to check it), and the crate links no std to provide a handler:
/// were a panic to happen anyway, abort without a word or an allocation.
#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}
