//! Arenas: `ARENA_SIZE` bytes from the OS, aligned to their size, cut into
//! equal pools of one tier; and each tier's list of usable arenas.
//!
//! The descriptor (`Arena`) lives outside the arena, in a slab, and holds
//! the pool headers. Pools are born lazily: `next_unused` counts the pools
//! ever carved, and empty ones go on the arena's free-pool list.
//!
//! `Tier::usable` lists the arenas of a tier that have a free pool, sorted
//! by `nfreepools` ascending: new pools come from the most-used arena, so
//! nearly empty arenas drain and go back to the OS. `Tier::last_with[n]`
//! is the last arena in the list with exactly `n` free pools (CPython's
//! `nfp2lasta`), which keeps the list sorted in O(1) per change.

use core::ptr;

use crate::geometry::{ARENA_SIZE, MAX_POOLS_PER_ARENA, tier_pool_shift};
use crate::list::{AgeList, Linked};
use crate::pool::{Pool, Shared};

pub struct Arena {
    pub base: *mut u8,
    pub pool_shift: u32,
    pub tier: u8,
    pub ntotalpools: u32,
    /// Pools that are empty or unborn.
    pub nfreepools: u32,
    /// Pools `0..next_unused` have been born.
    pub next_unused: Shared,
    /// Bytes of the arena (from its start) that may have been written.
    pub dirty_end: usize,
    /// Empty pools, linked through `Pool::nextpool`.
    pub freepools: *mut Pool,
    /// Neighbours in the tier's usable list (only while nfreepools > 0).
    pub nextarena: *mut Arena,
    pub prevarena: *mut Arena,
    /// Neighbours in the list of every arena the heap holds.
    pub next_all: *mut Arena,
    pub prev_all: *mut Arena,
    /// Entirely free and waiting for reuse in `FreeArenas` (linked
    /// through `nextarena`/`prevarena`), since `freed_at` (ms).
    pub retired: bool,
    pub freed_at: u64,
    pub pools: [Pool; MAX_POOLS_PER_ARENA],
}

impl Arena {
    /// Makes an arena's descriptor serve `tier` with every pool free.
    pub fn reset(&mut self, tier: usize) {
        self.pool_shift = tier_pool_shift(tier);
        self.tier = tier as u8;
        self.ntotalpools = (ARENA_SIZE >> self.pool_shift) as u32;
        self.nfreepools = self.ntotalpools;
        self.next_unused.set(0);
        self.freepools = ptr::null_mut();
        self.nextarena = ptr::null_mut();
        self.prevarena = ptr::null_mut();
    }

    pub fn pool_size(&self) -> usize {
        1 << self.pool_shift
    }

    /// The header of the pool holding `addr`, or None if that pool was
    /// never born or `addr` lies outside the arena.
    ///
    /// # Safety
    /// `arena` must be a live descriptor.
    #[inline(always)]
    pub unsafe fn pool_at(arena: *mut Arena, addr: usize) -> Option<*mut Pool> {
        // SAFETY: the caller guarantees `arena` is live.
        let (base, shift, born) = unsafe { ((*arena).base as usize, (*arena).pool_shift, (*arena).next_unused.get()) };
        let index = addr.wrapping_sub(base) >> shift;
        if index >= born as usize {
            return None;
        }
        // SAFETY: index < next_unused <= MAX_POOLS_PER_ARENA, inside `pools`.
        Some(unsafe { (&raw mut (*arena).pools).cast::<Pool>().add(index) })
    }

    /// Takes an empty or unborn pool; the arena must have one.
    fn take_pool(&mut self) -> *mut Pool {
        debug_assert!(self.nfreepools > 0);
        self.nfreepools -= 1;
        let pool = self.freepools;
        if !pool.is_null() {
            // SAFETY: pools on the free list are born pools of this arena.
            self.freepools = unsafe { (*pool).nextpool };
            return pool;
        }
        let index = self.next_unused.get() as usize;
        self.next_unused.set(index as u32 + 1);
        let size = self.pool_size();
        let offset = index * size;
        let dirty = self.dirty_end.saturating_sub(offset).min(size) as u32;
        self.dirty_end = self.dirty_end.max(offset + size);
        // SAFETY: index < ntotalpools (a free pool exists and none is on
        // the free list, so not all were born), so the pool lies inside the
        // arena's mapping and its header inside `pools`.
        unsafe {
            let pool = self.pools.get_unchecked_mut(index);
            *pool = Pool::unborn(self.base.add(offset), self.pool_shift, dirty);
            pool
        }
    }

    /// Puts an empty pool on the free-pool list.
    fn return_pool(&mut self, pool: *mut Pool) {
        // SAFETY: the pool is one of ours and empty; its links are free.
        unsafe { (*pool).nextpool = self.freepools };
        self.freepools = pool;
        self.nfreepools += 1;
    }
}

/// Arenas whose pools are all free, kept for reuse: most recently freed
/// first (they are in no tier, so their tier links serve here).
pub struct FreeArenas(AgeList<Arena>);

impl FreeArenas {
    pub const fn new() -> Self {
        FreeArenas(AgeList::new())
    }

    pub fn count(&self) -> usize {
        self.0.len
    }

    pub fn push(&mut self, arena: &mut Arena, now: u64) {
        debug_assert!(!arena.retired);
        arena.retired = true;
        arena.freed_at = now;
        self.0.push_newest(arena);
    }

    /// The most recently freed arena that `wanted`, taken off the list.
    pub fn pop_newest(&mut self, wanted: impl Fn(&Arena) -> bool) -> Option<*mut Arena> {
        // SAFETY: listed arenas are live descriptors.
        let arena = unsafe { self.0.find_newest(|a| wanted(a)).as_mut()? };
        self.unlink(arena);
        Some(arena)
    }

    /// The oldest arena if it was freed at or before `cutoff`, taken off
    /// the list.
    pub fn pop_older(&mut self, cutoff: u64) -> Option<*mut Arena> {
        // SAFETY: listed arenas are live descriptors.
        let arena = unsafe { self.0.oldest().as_mut()? };
        if arena.freed_at > cutoff {
            return None;
        }
        self.unlink(arena);
        Some(arena)
    }

    fn unlink(&mut self, arena: &mut Arena) {
        self.0.unlink(arena);
        arena.retired = false;
    }
}

/// In a tier's usable list or among the free arenas: `prevarena` is
/// newer, `nextarena` older.
impl Linked for Arena {
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self) {
        (&mut self.prevarena, &mut self.nextarena)
    }
}

/// The arenas of one tier that have a free pool, most used first.
pub struct Tier {
    pub usable: *mut Arena,
    last_with: [*mut Arena; MAX_POOLS_PER_ARENA + 1],
}

impl Tier {
    pub const fn new() -> Self {
        Tier { usable: ptr::null_mut(), last_with: [ptr::null_mut(); MAX_POOLS_PER_ARENA + 1] }
    }

    /// The last arena in the list with exactly `n` free pools, or null.
    pub fn last_with(&self, n: usize) -> *mut Arena {
        debug_assert!(n <= MAX_POOLS_PER_ARENA);
        // SAFETY: n is an arena's free-pool count, <= MAX_POOLS_PER_ARENA.
        unsafe { *self.last_with.get_unchecked(n) }
    }

    fn set_last_with(&mut self, n: usize, arena: *mut Arena) {
        debug_assert!(n <= MAX_POOLS_PER_ARENA);
        // SAFETY: as in `last_with`.
        unsafe { *self.last_with.get_unchecked_mut(n) = arena };
    }

    /// Adds an arena whose pools are all free; only called when no arena
    /// of the tier has a free pool.
    pub fn add_free_arena(&mut self, arena: &mut Arena) {
        debug_assert!(self.usable.is_null());
        debug_assert_eq!(arena.nfreepools, arena.ntotalpools);
        arena.nextarena = ptr::null_mut();
        arena.prevarena = ptr::null_mut();
        self.usable = arena;
        self.set_last_with(arena.nfreepools as usize, arena);
    }

    /// Takes a pool from the most-used arena with a free pool, if any.
    pub fn take_pool(&mut self) -> Option<*mut Pool> {
        // SAFETY: arenas in the usable list are live descriptors.
        let arena = unsafe { self.usable.as_mut()? };
        let nf = arena.nfreepools as usize;
        // The head holds the fewest free pools; taking one keeps it first.
        if ptr::eq(self.last_with(nf), arena) {
            self.set_last_with(nf, ptr::null_mut());
        }
        let pool = arena.take_pool();
        if nf == 1 {
            // Now full: leave the list.
            self.usable = arena.nextarena;
            // SAFETY: as above.
            if let Some(next) = unsafe { self.usable.as_mut() } {
                next.prevarena = ptr::null_mut();
            }
            arena.nextarena = ptr::null_mut();
        } else if self.last_with(nf - 1).is_null() {
            self.set_last_with(nf - 1, arena);
        }
        Some(pool)
    }

    /// Returns an empty pool to its arena and restores the list order.
    /// True if the arena is now entirely free; it has then left the list
    /// and the caller disposes of it.
    pub fn return_pool(&mut self, arena: &mut Arena, pool: *mut Pool) -> bool {
        let arena_ptr: *mut Arena = arena;
        let nf = arena.nfreepools as usize;
        let last_nf = self.last_with(nf);
        if last_nf == arena_ptr {
            let prev = arena.prevarena;
            // SAFETY: list neighbours are live descriptors.
            let prev_has_nf = !prev.is_null() && unsafe { (*prev).nfreepools } as usize == nf;
            self.set_last_with(nf, if prev_has_nf { prev } else { ptr::null_mut() });
        }
        arena.return_pool(pool);
        let nf = nf + 1;

        if nf == arena.ntotalpools as usize {
            if nf > 1 {
                self.unlink(arena);
            }
            return true;
        }
        if nf == 1 {
            // It was full: it becomes the most-used arena with a free pool.
            arena.prevarena = ptr::null_mut();
            arena.nextarena = self.usable;
            // SAFETY: as above.
            if let Some(head) = unsafe { self.usable.as_mut() } {
                head.prevarena = arena_ptr;
            }
            self.usable = arena_ptr;
            if self.last_with(1).is_null() {
                self.set_last_with(1, arena_ptr);
            }
            return false;
        }
        if self.last_with(nf).is_null() {
            self.set_last_with(nf, arena_ptr);
        }
        if last_nf == arena_ptr {
            return false; // no arena with its old count follows it: still sorted
        }
        // Slide it right, to just after the last arena with its old count.
        self.unlink(arena);
        // SAFETY: last_nf was in the list with count nf - 1 and still is.
        let after = unsafe { &mut *last_nf };
        arena.prevarena = last_nf;
        arena.nextarena = after.nextarena;
        // SAFETY: as above.
        if let Some(next) = unsafe { after.nextarena.as_mut() } {
            next.prevarena = arena_ptr;
        }
        after.nextarena = arena_ptr;
        false
    }

    fn unlink(&mut self, arena: &mut Arena) {
        // SAFETY: list neighbours are live descriptors.
        unsafe {
            match arena.prevarena.as_mut() {
                Some(prev) => prev.nextarena = arena.nextarena,
                None => self.usable = arena.nextarena,
            }
            if let Some(next) = arena.nextarena.as_mut() {
                next.prevarena = arena.prevarena;
            }
        }
        arena.nextarena = ptr::null_mut();
        arena.prevarena = ptr::null_mut();
    }
}
