//! The geometry of the heap, in one place: page, pool, arena and granule
//! sizes, the pool tiers, and the thresholds between small, medium and
//! large requests.
//!
//! Invariants (checked at compile time below):
//! - `PAGE_SIZE <= POOL_SIZE <= ARENA_SIZE`, all powers of two;
//! - arenas are aligned to `ARENA_SIZE`, pools of tier `t` to
//!   `tier_pool_size(t)`, so every block's alignment is the lowest set bit
//!   of its class size;
//! - `GRANULE_SIZE <= ARENA_SIZE` and every large block is at least
//!   `GRANULE_SIZE` long, so no granule of the arena map holds the start of
//!   two large blocks (see `arena_map`).

/// The page size this build assumes (x86-64 and most aarch64 Linux).
pub const PAGE_SIZE: usize = 4096;

#[cfg(not(feature = "classic-geometry"))]
mod chosen {
    /// CPython 3.10+ on 64-bit: 16 KiB pools in 1 MiB arenas.
    pub const POOL_SHIFT: u32 = 14;
    pub const ARENA_SHIFT: u32 = 20;
}
#[cfg(feature = "classic-geometry")]
mod chosen {
    /// Classic pymalloc: 4 KiB pools in 256 KiB arenas.
    pub const POOL_SHIFT: u32 = 12;
    pub const ARENA_SHIFT: u32 = 18;
}
pub use chosen::{ARENA_SHIFT, POOL_SHIFT};

/// The smallest pool: the one that serves the 16..512 byte classes.
pub const POOL_SIZE: usize = 1 << POOL_SHIFT;
pub const ARENA_SIZE: usize = 1 << ARENA_SHIFT;

/// Pools come in tiers of 4x size each, so that every class gets a pool
/// holding at least `MIN_BLOCKS_PER_POOL` blocks (capped at one pool per
/// arena). An arena holds pools of one tier only.
pub const TIER_COUNT: usize = ((ARENA_SHIFT - POOL_SHIFT) / 2 + 1) as usize;
pub const MIN_BLOCKS_PER_POOL: usize = 8;

pub const fn tier_pool_shift(tier: usize) -> u32 {
    let shift = POOL_SHIFT + 2 * tier as u32;
    if shift > ARENA_SHIFT { ARENA_SHIFT } else { shift }
}

pub const fn tier_pool_size(tier: usize) -> usize {
    1 << tier_pool_shift(tier)
}

/// Most pools an arena can hold (those of the smallest tier).
pub const MAX_POOLS_PER_ARENA: usize = ARENA_SIZE / POOL_SIZE;

/// Largest request served by a small class (CPython's SMALL_REQUEST_THRESHOLD).
pub const SMALL_MAX: usize = 512;
/// Largest request served from arenas; anything bigger gets its own mapping.
pub const MEDIUM_MAX: usize = 128 << 10;

/// Resolution of the arena map (address -> owner).
pub const GRANULE_SHIFT: u32 = 17;
pub const GRANULE_SIZE: usize = 1 << GRANULE_SHIFT;

/// Every block is aligned to this (glibc's MALLOC_ALIGNMENT on 64-bit).
pub const MIN_ALIGN: usize = 16;

/// Requests above this fail with ENOMEM before any rounding can wrap
/// (glibc refuses anything above PTRDIFF_MAX).
pub const MAX_REQUEST: usize = isize::MAX as usize - ARENA_SIZE;

const _: () = {
    assert!(PAGE_SIZE.is_power_of_two() && PAGE_SIZE <= POOL_SIZE);
    assert!(POOL_SIZE <= ARENA_SIZE);
    assert!(GRANULE_SIZE <= ARENA_SIZE && GRANULE_SIZE <= MEDIUM_MAX);
    assert!(tier_pool_size(TIER_COUNT - 1) <= ARENA_SIZE);
    assert!(MEDIUM_MAX <= ARENA_SIZE);
};
