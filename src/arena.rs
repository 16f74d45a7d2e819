//! Arenas: `ARENA_SIZE` bytes from the OS, aligned to their size, cut into
//! equal pools of one tier; each tier's list of usable arenas; and every
//! arena's life, from mapping through retirement (all pools free, kept
//! for reuse) to unmapping (`Arenas`).
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
use crate::os;
use crate::pool::{Pool, Shared};
use crate::slab::Slab;

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
    /// Entirely free and waiting for reuse (`Arenas::retire`, linked
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

/// What is counted of arenas as they come and go.
#[derive(Clone, Copy, Default)]
pub struct ArenaCounters {
    /// Arenas mapped now (free ones included).
    pub arenas: usize,
    pub arenas_allocated: usize,
    pub arenas_reclaimed: usize,
    pub arenas_highwater: usize,
}

/// Every arena of the heap, from mapping to unmapping: the descriptors,
/// the list of them all, and the entirely free ones kept for reuse (most
/// recently freed first; they are in no tier, so their tier links serve
/// here).
pub struct Arenas {
    records: Slab<Arena>,
    all: *mut Arena,
    retired: AgeList<Arena>,
    pub counters: ArenaCounters,
}

impl Arenas {
    pub const fn new() -> Self {
        Arenas {
            records: Slab::new(),
            all: ptr::null_mut(),
            retired: AgeList::new(),
            counters: ArenaCounters { arenas: 0, arenas_allocated: 0, arenas_reclaimed: 0, arenas_highwater: 0 },
        }
    }

    /// Makes an arena of the `ARENA_SIZE` bytes at `base`, fresh from the
    /// OS and aligned to their size, once `enter` (which enters it in the
    /// arena map) agrees. Null, and `base` unmapped, if no descriptor
    /// could be had or `enter` refused.
    pub fn add(&mut self, base: *mut u8, enter: impl FnOnce(*mut Arena) -> bool) -> *mut Arena {
        let arena = self.records.alloc();
        if arena.is_null() || !enter(arena) {
            // SAFETY: base is a fresh mapping nobody uses; the record (if
            // any) was just allocated.
            unsafe {
                os::unmap(base, ARENA_SIZE);
                if !arena.is_null() {
                    self.records.free(arena);
                }
            }
            return ptr::null_mut();
        }
        // SAFETY: the slot is ours; pool headers are written as pools are born.
        unsafe {
            let a = &mut *arena;
            a.base = base;
            a.dirty_end = 0;
            a.retired = false;
            a.freed_at = 0;
            a.prev_all = ptr::null_mut();
            a.next_all = self.all;
            if let Some(next) = self.all.as_mut() {
                next.prev_all = arena;
            }
        }
        self.all = arena;
        let c = &mut self.counters;
        c.arenas += 1;
        c.arenas_allocated += 1;
        c.arenas_highwater = c.arenas_highwater.max(c.arenas);
        arena
    }

    /// Keeps an arena whose pools are all free for reuse, stamped `now`.
    pub fn retire(&mut self, arena: &mut Arena, now: u64) {
        debug_assert!(!arena.retired);
        arena.retired = true;
        arena.freed_at = now;
        self.retired.push_newest(arena);
    }

    /// The most recently retired arena that `wanted`, taken back.
    pub fn take_retired(&mut self, wanted: impl Fn(&Arena) -> bool) -> Option<*mut Arena> {
        // SAFETY: retired arenas are live descriptors.
        let arena = unsafe { self.retired.find_newest(|a| wanted(a)).as_mut()? };
        self.unretire(arena);
        Some(arena)
    }

    /// The oldest retired arena if it was retired at or before `cutoff`
    /// (ms), taken back for the caller to unmap.
    pub fn take_decayed(&mut self, cutoff: u64) -> Option<*mut Arena> {
        // SAFETY: retired arenas are live descriptors.
        let arena = unsafe { self.retired.oldest().as_mut()? };
        if arena.freed_at > cutoff {
            return None;
        }
        self.unretire(arena);
        Some(arena)
    }

    fn unretire(&mut self, arena: &mut Arena) {
        self.retired.unlink(arena);
        arena.retired = false;
    }

    /// Arenas retired and kept for reuse.
    pub fn retired_count(&self) -> usize {
        self.retired.len
    }

    /// Gives an arena with no live pool, out of the arena map and of
    /// every list but the list of all, back to the OS.
    pub fn unmap(&mut self, arena: &mut Arena) {
        // SAFETY: all-list neighbours are live descriptors.
        unsafe {
            match arena.prev_all.as_mut() {
                Some(prev) => prev.next_all = arena.next_all,
                None => self.all = arena.next_all,
            }
            if let Some(next) = arena.next_all.as_mut() {
                next.prev_all = arena.prev_all;
            }
        }
        self.counters.arenas -= 1;
        self.counters.arenas_reclaimed += 1;
        // SAFETY: nothing refers to the arena any more.
        unsafe {
            os::unmap(arena.base, ARENA_SIZE);
            self.records.free(arena);
        }
    }

    /// Calls `f` on every arena, retired ones included.
    pub fn for_each(&self, mut f: impl FnMut(&Arena)) {
        let mut cur = self.all;
        // SAFETY: the all-arena list holds live descriptors.
        while let Some(arena) = unsafe { cur.as_ref() } {
            f(arena);
            cur = arena.next_all;
        }
    }
}

/// Among the retired arenas: `prevarena` is newer, `nextarena` older.
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
