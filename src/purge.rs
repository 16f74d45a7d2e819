//! Giving memory back: what the heap keeps of freed memory, and when it
//! lets it go.
//!
//! Freed memory is reused first, most recently freed first, so a program
//! that frees and allocates again pays no system call and no page fault.
//! Memory that stays unused for `PYMALLOC_DECAY_MS` (250 ms by default)
//! goes back to the OS:
//!
//! | kept                                  | returned by                         |
//! |---------------------------------------|-------------------------------------|
//! | empty pools of live arenas (dirty)    | `MADV_DONTNEED` (the pool stays)    |
//! | entirely free arenas                  | `munmap`                            |
//! | freed large mappings (`large` cache)  | `munmap`                            |
//!
//! The clock is read only every `TICK_FREES` calls to `free` (one counter
//! decrement on the fast path; `CLOCK_MONOTONIC_COARSE` is served by the
//! vDSO, no system call), and things freed between two readings carry the
//! time of the earlier one. A program that stops calling `free` keeps what
//! it freed last until `malloc_trim`, which returns everything now.

use core::ptr;

use crate::arena::Arena;
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
/// first, linked through `Pool::dirty_prev`/`dirty_next`.
pub struct DirtyPools {
    oldest: *mut Pool,
    newest: *mut Pool,
}

impl DirtyPools {
    pub const fn new() -> Self {
        DirtyPools { oldest: ptr::null_mut(), newest: ptr::null_mut() }
    }

    /// Appends a pool that just became empty, stamped `now`.
    pub fn push(&mut self, pool: &mut Pool, now: u64) {
        debug_assert!(!pool.dirty_listed);
        pool.dirty_listed = true;
        pool.emptied_at = now;
        pool.dirty_next = ptr::null_mut();
        pool.dirty_prev = self.newest;
        // SAFETY: listed pools are live headers.
        match unsafe { self.newest.as_mut() } {
            Some(newest) => newest.dirty_next = pool,
            None => self.oldest = pool,
        }
        self.newest = pool;
    }

    /// Takes a pool off the list if it is on it (it is being reused, or
    /// its arena is leaving).
    pub fn remove(&mut self, pool: &mut Pool) {
        if !pool.dirty_listed {
            return;
        }
        // SAFETY: listed pools are live headers.
        unsafe {
            match pool.dirty_prev.as_mut() {
                Some(prev) => prev.dirty_next = pool.dirty_next,
                None => self.oldest = pool.dirty_next,
            }
            match pool.dirty_next.as_mut() {
                Some(next) => next.dirty_prev = pool.dirty_prev,
                None => self.newest = pool.dirty_prev,
            }
        }
        pool.dirty_listed = false;
        pool.dirty_prev = ptr::null_mut();
        pool.dirty_next = ptr::null_mut();
    }

    /// Takes the oldest pool off the list if it was emptied at or before
    /// `cutoff`.
    pub fn pop_older(&mut self, cutoff: u64) -> Option<*mut Pool> {
        // SAFETY: listed pools are live headers.
        let pool = unsafe { self.oldest.as_mut()? };
        if pool.emptied_at > cutoff {
            return None;
        }
        self.remove(pool);
        Some(pool)
    }
}

/// Arenas whose pools are all free, kept for reuse: most recently freed
/// first, linked through `Arena::nextarena`/`prevarena` (they are in no
/// tier).
pub struct FreeArenas {
    newest: *mut Arena,
    oldest: *mut Arena,
    pub count: usize,
}

impl FreeArenas {
    pub const fn new() -> Self {
        FreeArenas { newest: ptr::null_mut(), oldest: ptr::null_mut(), count: 0 }
    }

    pub fn push(&mut self, arena: &mut Arena, now: u64) {
        debug_assert!(!arena.retired);
        arena.retired = true;
        arena.freed_at = now;
        arena.prevarena = ptr::null_mut();
        arena.nextarena = self.newest;
        // SAFETY: listed arenas are live descriptors.
        match unsafe { self.newest.as_mut() } {
            Some(newest) => newest.prevarena = arena,
            None => self.oldest = arena,
        }
        self.newest = arena;
        self.count += 1;
    }

    /// The most recently freed arena that `wanted`, taken off the list.
    pub fn pop_newest(&mut self, wanted: impl Fn(&Arena) -> bool) -> Option<*mut Arena> {
        let mut cur = self.newest;
        // SAFETY: listed arenas are live descriptors.
        while let Some(arena) = unsafe { cur.as_mut() } {
            if wanted(arena) {
                self.unlink(arena);
                return Some(arena);
            }
            cur = arena.nextarena;
        }
        None
    }

    /// The oldest arena if it was freed at or before `cutoff`, taken off
    /// the list.
    pub fn pop_older(&mut self, cutoff: u64) -> Option<*mut Arena> {
        // SAFETY: listed arenas are live descriptors.
        let arena = unsafe { self.oldest.as_mut()? };
        if arena.freed_at > cutoff {
            return None;
        }
        self.unlink(arena);
        Some(arena)
    }

    fn unlink(&mut self, arena: &mut Arena) {
        // SAFETY: listed arenas are live descriptors.
        unsafe {
            match arena.prevarena.as_mut() {
                Some(prev) => prev.nextarena = arena.nextarena,
                None => self.newest = arena.nextarena,
            }
            match arena.nextarena.as_mut() {
                Some(next) => next.prevarena = arena.prevarena,
                None => self.oldest = arena.prevarena,
            }
        }
        arena.nextarena = ptr::null_mut();
        arena.prevarena = ptr::null_mut();
        arena.retired = false;
        self.count -= 1;
    }
}
