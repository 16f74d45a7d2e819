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
//!
//! `Heap::purge` asks each owner in turn; every list it pops is ordered
//! by age (`list::AgeList`), so what has decayed is found at one end.
//!
//! The clock is read only every `TICK_FREES` calls to `free` (one counter
//! decrement on the fast path; `CLOCK_MONOTONIC_COARSE` is served by the
//! vDSO, no system call), and things freed between two readings carry the
//! time of the earlier one. A program that stops calling `free` keeps what
//! it freed last until `malloc_trim`, which returns everything now.

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
/// first.
pub struct DirtyPools(AgeList<Pool>);

impl DirtyPools {
    pub const fn new() -> Self {
        DirtyPools(AgeList::new())
    }

    /// Appends a pool that just became empty, stamped `now`.
    pub fn push(&mut self, pool: &mut Pool, now: u64) {
        debug_assert!(!pool.dirty_listed);
        pool.dirty_listed = true;
        pool.emptied_at = now;
        self.0.push_newest(pool);
    }

    /// Takes a pool off the list if it is on it (it is being reused, or
    /// its arena is leaving).
    pub fn remove(&mut self, pool: &mut Pool) {
        if pool.dirty_listed {
            self.0.unlink(pool);
            pool.dirty_listed = false;
        }
    }

    /// Takes the oldest pool off the list if it was emptied at or before
    /// `cutoff`.
    pub fn pop_older(&mut self, cutoff: u64) -> Option<*mut Pool> {
        // SAFETY: listed pools are live headers.
        let pool = unsafe { self.0.oldest().as_mut()? };
        if pool.emptied_at > cutoff {
            return None;
        }
        self.remove(pool);
        Some(pool)
    }
}
