//! Giving memory back: what the heap keeps of freed memory, and when it
//! lets it go.
//!
//! Freed memory is reused first, most recently freed first, so a program
//! that frees and allocates again pays no system call and no page fault.
//! Memory that stays unused for `PYMALLOC_DECAY_MS` (250 ms by default)
//! goes back to the OS:
//!
//! | kept                                      | returned by                      | owner            |
//! |-------------------------------------------|----------------------------------|------------------|
//! | each class's last emptied pool (kept)     | `MADV_DONTNEED`, then its arena  | `heap`           |
//! | empty pools of live arenas (dirty)        | `MADV_DONTNEED` (the pool stays) | `heap`, here     |
//! | entirely free arenas (retired)            | `munmap`                         | `arena::Arenas`  |
//! | freed large mappings (the cache)          | `munmap`                         | `large::Large`   |
//! | free spans' pages; regions with no block  | `MADV_DONTNEED`; `munmap`        | `large::Large`   |
//! | pages inside free blocks of idle pools    | `MADV_DONTNEED`                  | `heap`           |
//!
//! `Heap::purge` asks each owner in turn; every list it pops is ordered
//! by age (`list::AgeList`), so what has decayed is found at one end.
//! Free spans and empty pools can go sooner, oldest first: a pool or a
//! span that faults in fresh pages first gives back as many of theirs
//! (the shared footprint: `Heap::new_used_pool`, `Large::hold_footprint`).
//! The whole pages inside free blocks of pools still in use go back
//! once their pool has stayed as it was between two looks a decay period
//! apart (`Heap::shed_idle_blocks`), and at once on `malloc_trim`
//! (`Heap::release_free_block_pages`).
//!
//! The clock is read only every `TICK_FREES` calls to `free` (one counter
//! decrement on the fast path; `CLOCK_MONOTONIC_COARSE` is served by the
//! vDSO, no system call), and things freed between two readings carry the
//! time of the earlier one. A program that stops calling `free` keeps what
//! it freed last until `malloc_trim`, which returns everything now.

use crate::geometry::{POOL_SHIFT, TIER_COUNT};
use crate::list::AgeList;
use crate::pool::Pool;

/// Calls to `free` between two readings of the clock.
pub const TICK_FREES: u32 = 4096;

/// Milliseconds of a monotonic clock, at the resolution of the kernel tick.
pub fn now_ms() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid out-parameter; CLOCK_MONOTONIC_COARSE cannot
    // fail on Linux, so errno is left alone.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// Empty pools of live arenas whose memory is still committed, oldest
/// first, a list per tier (pool size).
pub struct DirtyPools([AgeList<Pool>; TIER_COUNT]);

/// The tier of a pool, from its size (`min`: an index that provably
/// fits, so no bounds check can panic here).
fn tier(pool: &Pool) -> usize {
    ((pool.shift as u32).saturating_sub(POOL_SHIFT) as usize / 2).min(TIER_COUNT - 1)
}

impl DirtyPools {
    pub const fn new() -> Self {
        DirtyPools([const { AgeList::new() }; TIER_COUNT])
    }

    /// Appends a pool that just became empty, stamped `now`.
    pub fn push(&mut self, pool: &mut Pool, now: u64) {
        debug_assert!(!pool.dirty_listed);
        pool.dirty_listed = true;
        pool.emptied_at = now;
        self.0[tier(pool)].push_newest(pool);
    }

    /// Takes a pool off the list if it is on it (it is being reused, or
    /// its arena is leaving).
    pub fn remove(&mut self, pool: &mut Pool) {
        if pool.dirty_listed {
            self.0[tier(pool)].unlink(pool);
            pool.dirty_listed = false;
        }
    }

    /// Takes the oldest pool off the list if it was emptied at or before
    /// `cutoff`.
    pub fn pop_older(&mut self, cutoff: u64) -> Option<*mut Pool> {
        let pool = self.oldest(|_| true)?;
        // SAFETY: listed pools are live headers.
        let pool = unsafe { &mut *pool };
        if pool.emptied_at > cutoff {
            return None;
        }
        self.remove(pool);
        Some(pool)
    }

    /// Takes the oldest pool of another tier than `tier` off the list.
    /// (A pool of the same tier would be the next one born there, and
    /// decommitting it would only trade resident pages for fresh ones.)
    pub fn pop_other_tier(&mut self, tier: usize) -> Option<*mut Pool> {
        let pool = self.oldest(|t| t != tier)?;
        // SAFETY: listed pools are live headers.
        let pool = unsafe { &mut *pool };
        self.remove(pool);
        Some(pool)
    }

    /// The oldest pool of the tiers `wanted`.
    fn oldest(&self, wanted: impl Fn(usize) -> bool) -> Option<*mut Pool> {
        let heads = self.0.iter().enumerate().filter(|&(t, _)| wanted(t)).map(|(_, list)| list.oldest());
        // SAFETY: listed pools are live headers.
        heads.filter(|p| !p.is_null()).min_by_key(|&p| unsafe { (*p).emptied_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::tier_pool_shift;

    fn pool_of_tier(tier: usize) -> Pool {
        Pool::unborn(core::ptr::null_mut(), tier_pool_shift(tier), 0)
    }

    #[test]
    fn oldest_first_across_tiers_and_others_first_when_shedding() {
        let mut pools = [pool_of_tier(0), pool_of_tier(1), pool_of_tier(0), pool_of_tier(2)];
        let addr: Vec<*mut Pool> = pools.iter_mut().map(|p| p as *mut Pool).collect();
        let mut dirty = DirtyPools::new();
        for (stamp, pool) in pools.iter_mut().enumerate() {
            dirty.push(pool, 10 + stamp as u64);
        }
        // Shedding for a tier-0 birth skips the tier-0 pools, oldest first.
        assert_eq!(dirty.pop_other_tier(0), Some(addr[1]));
        assert_eq!(dirty.pop_other_tier(0), Some(addr[3]));
        assert_eq!(dirty.pop_other_tier(0), None);
        // The decay takes the oldest of any tier, up to its cutoff.
        assert_eq!(dirty.pop_older(10), Some(addr[0]));
        assert_eq!(dirty.pop_older(11), None);
        assert_eq!(dirty.pop_older(12), Some(addr[2]));
        assert_eq!(dirty.pop_older(u64::MAX), None);
        assert!(pools.iter().all(|p| !p.dirty_listed));
    }
}
