//! The heap: every size class, arena and large block, behind the global
//! lock (`HEAP`). Each method is one operation of the C API minus argument
//! checks and `errno`, which stay in `abi`.
//!
//! Nothing here allocates through `malloc`, touches thread-local storage
//! (except libc's `errno`, inside `os`) or prints: it all runs with the
//! lock held.

use core::ptr;

use lock_api::{Mutex, MutexGuard, RawMutex};

use crate::arena::{Arena, Tier};
use crate::arena_map::{ArenaMap, Owner};
use crate::fault::Fault;
use crate::hardening::Secret;
use crate::geometry::{
    ARENA_SIZE, GRANULE_SIZE, MAX_REQUEST, MEDIUM_MAX, MIN_ALIGN, PAGE_SIZE, POOL_SIZE, TIER_COUNT,
};
use crate::large::{LargeBlock, LargeCache, RecentlyFreed};
use crate::region::{self, Regions};
use crate::lock::FutexMutex;
use crate::os;
use crate::pool::Pool;
use crate::config;
use crate::purge::{self, DirtyPools, FreeArenas, TICK_FREES};
use crate::size_class::{self, NUM_CLASSES, class_for_aligned, class_info, class_of};
use crate::slab::Slab;

/// The alignment of mappings of their own, and of the address space a
/// freed one moves to: a page table's reach on x86-64 and aarch64 (4 KiB
/// pages), so that `mremap` moves page tables, not each page's entry.
const MOVE_ALIGN: usize = 2 << 20;

/// The one heap of the process and its lock.
pub static HEAP: Mutex<FutexMutex, Heap> = Mutex::from_raw(FutexMutex::INIT, Heap::new());

pub type HeapGuard = MutexGuard<'static, FutexMutex, Heap>;

/// A fresh block: null when out of memory; `zeroed` when its bytes are
/// known to be zero (fresh from the OS), so `calloc` can skip clearing.
#[derive(Clone, Copy)]
pub struct Block {
    pub ptr: *mut u8,
    pub zeroed: bool,
}

impl Block {
    const NONE: Block = Block { ptr: ptr::null_mut(), zeroed: false };
}

/// What the heap counts as it changes, under its lock (the rest of the
/// statistics are counted by walking the heap, or by `os`).
#[derive(Clone, Copy, Default)]
pub struct Counters {
    /// Arenas mapped now (free ones included).
    pub arenas: usize,
    pub arenas_allocated: usize,
    pub arenas_reclaimed: usize,
    pub arenas_highwater: usize,
    pub large_blocks: usize,
    pub large_bytes: usize,
}

impl Counters {
    pub const ZERO: Counters = Counters {
        arenas: 0,
        arenas_allocated: 0,
        arenas_reclaimed: 0,
        arenas_highwater: 0,
        large_blocks: 0,
        large_bytes: 0,
    };

    pub fn arena_mapped(&mut self) {
        self.arenas += 1;
        self.arenas_allocated += 1;
        self.arenas_highwater = self.arenas_highwater.max(self.arenas);
    }

    pub fn arena_unmapped(&mut self) {
        self.arenas -= 1;
        self.arenas_reclaimed += 1;
    }
}

/// Where a live block lives.
enum Found {
    Pool(*mut Pool),
    Large(*mut LargeBlock),
}

/// Whether `realloc` to `n` bytes keeps a pool block of `class` and
/// `usable` bytes where it is: it must fit, and a shrink copies only into
/// a smaller class, and only when that saves a quarter (as pymalloc does).
#[inline(always)]
pub fn stays_in_place(n: usize, usable: usize, class: usize) -> bool {
    n <= usable && (4 * n > 3 * usable || (n <= MEDIUM_MAX && class_of(n) == class))
}

/// What `realloc` must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Resize {
    /// Done: the (possibly remapped) block now holds the new size.
    Done(*mut u8),
    /// The caller allocates anew, copies `min(usable, new size)` bytes
    /// and frees the old block.
    Move { usable: usize },
    /// Out of memory; the old block is untouched.
    Failed,
}

#[repr(C)] // hot fields first, together; the 256 KiB arena map last
pub struct Heap {
    /// Per class, the pools with blocks both in use and free, most
    /// recently refilled first.
    usedpools: [*mut Pool; NUM_CLASSES],
    /// Per class, the pool last kept when it became empty: it stays on
    /// the used list (ready for the next `malloc`, with its free list),
    /// not returned to its arena, until it stays empty for the decay time
    /// (`purge`). Only this pool may be empty on the class's used list;
    /// once it serves blocks again it is an ordinary used pool.
    kept: [*mut Pool; NUM_CLASSES],
    /// Mangles free-list links; drawn when the first arena is mapped.
    secret: Secret,
    tiers: [Tier; TIER_COUNT],
    /// Entirely free arenas kept for reuse until they decay (`purge`).
    free_arenas: FreeArenas,
    /// Empty pools of live arenas still holding their pages.
    dirty_pools: DirtyPools,
    /// Every arena, free ones included.
    all_arenas: *mut Arena,
    /// Set when an allocation found a free list corrupted (`fault` says
    /// how). Not an `Option`, so that a new heap is all zero bytes and
    /// its static lives in `.bss`, where only the pages touched count.
    has_fault: bool,
    fault: Fault,
    pub counters: Counters,
    arena_records: Slab<Arena>,
    large_records: Slab<LargeBlock>,
    large_cache: LargeCache,
    regions: Regions,
    /// Large blocks freed lately, to tell a double free from a wild pointer.
    recently_freed: RecentlyFreed,
    map: ArenaMap,
    /// The clock (ms) at the last tick: the time stamp of what is freed.
    clock: u64,
    /// Calls to `free` since the last tick.
    frees_since_tick: u32,
}

// SAFETY: the raw pointers refer to memory owned by the heap alone, which
// is only reached through `HEAP`'s lock (or a test's exclusive Heap).
unsafe impl Send for Heap {}

impl Heap {
    pub const fn new() -> Self {
        Heap {
            usedpools: [ptr::null_mut(); NUM_CLASSES],
            kept: [ptr::null_mut(); NUM_CLASSES],
            tiers: [const { Tier::new() }; TIER_COUNT],
            free_arenas: FreeArenas::new(),
            dirty_pools: DirtyPools::new(),
            all_arenas: ptr::null_mut(),
            map: ArenaMap::new(),
            arena_records: Slab::new(),
            large_records: Slab::new(),
            large_cache: LargeCache::new(),
            regions: Regions::new(),
            recently_freed: RecentlyFreed::new(),
            secret: Secret::UNSET,
            has_fault: false,
            fault: Fault::InvalidPointer,
            counters: Counters::ZERO,
            clock: 0,
            frees_since_tick: 0,
        }
    }

    /// A block of at least `n` bytes, aligned to `MIN_ALIGN`. A null block
    /// means out of memory, or a corrupted free list: see `take_fault`.
    #[inline(always)]
    pub fn alloc(&mut self, n: usize) -> Block {
        if n <= MEDIUM_MAX {
            self.alloc_class(class_of(n))
        } else {
            self.alloc_large(n, PAGE_SIZE)
        }
    }

    /// A block of at least `n` bytes aligned to `align`, a power of two;
    /// null as for `alloc`.
    pub fn alloc_aligned(&mut self, align: usize, n: usize) -> Block {
        if align <= MIN_ALIGN {
            return self.alloc(n);
        }
        match class_for_aligned(n, align) {
            Some(class) => self.alloc_class(class),
            None => self.alloc_large(n, align.max(PAGE_SIZE)),
        }
    }

    /// A block of `class`; null as for `alloc`.
    #[inline(always)]
    pub fn alloc_class(&mut self, class: usize) -> Block {
        let mut pool = *self.used_head(class);
        if pool.is_null() {
            pool = self.new_used_pool(class);
            if pool.is_null() {
                return Block::NONE;
            }
        }
        // SAFETY: pools in usedpools are live and not full.
        let pool = unsafe { &mut *pool };
        let Some((ptr, zeroed)) = pool.alloc(self.secret) else {
            return self.corrupted(pool);
        };
        if pool.is_full() {
            self.unlink_used(pool);
        }
        Block { ptr, zeroed }
    }

    /// The fast path of `malloc` for `class`: a block from the head used
    /// pool. Null when anything is unusual (no used pool, a corrupted
    /// link); the caller then takes the general path (`alloc`), which
    /// handles it all.
    #[inline(always)]
    pub fn alloc_fast(&mut self, class: usize) -> *mut u8 {
        let pool = *self.used_head(class);
        // SAFETY: pools in usedpools are live and not full.
        let Some(pool) = (unsafe { pool.as_mut() }) else { return ptr::null_mut() };
        let Some((block, _)) = pool.alloc(self.secret) else { return ptr::null_mut() };
        if pool.is_full() {
            self.unlink_used(pool);
        }
        block
    }

    /// The fast path of `free`: frees `p` if it is a live block of a pool
    /// that does not become empty (or is the class's kept pool), and no
    /// clock tick is due. False (nothing changed) otherwise; the caller
    /// then takes the general path (`free`), which handles every case and
    /// reports faults.
    #[inline(always)]
    pub fn free_fast(&mut self, p: *mut u8) -> bool {
        self.free_fast_checked(p, |_| true)
    }

    /// `free_fast` of a block only if `accept` takes its class; false
    /// (nothing changed) if not.
    #[inline(always)]
    pub fn free_fast_checked(&mut self, p: *mut u8, accept: impl FnOnce(usize) -> bool) -> bool {
        // SAFETY: our own live map.
        let arena = unsafe { ArenaMap::arena_of(&self.map, p as usize) };
        if arena.is_null() {
            return false;
        }
        // SAFETY: the map only names live arena descriptors.
        let Some(pool) = (unsafe { Arena::pool_at(arena, p as usize) }) else { return false };
        // SAFETY: pool_at returns only born pools of the arena.
        let pool = unsafe { &mut *pool };
        if !accept(pool.class as usize) {
            return false;
        }
        if pool.ref_count.get() <= 1 {
            // The pool may become empty: only the kept pool stays as it is,
            // stamped for `purge` (a stamp on a pool with live blocks is
            // harmless: it is stamped again when it becomes empty).
            if pool.ref_count.get() == 0 || !ptr::eq(*self.kept_slot(pool.class as usize), pool) {
                return false;
            }
            pool.emptied_at = self.clock;
        }
        if self.frees_since_tick + 1 >= TICK_FREES || !pool.is_live_block(p, self.secret) {
            return false;
        }
        let was_full = pool.is_full();
        // SAFETY: is_live_block vouched for p.
        unsafe { pool.free(p, self.secret) };
        if was_full {
            self.link_used(pool);
        }
        self.frees_since_tick += 1;
        true
    }

    /// The class of `p` if its pool vouches for it as a live block (see
    /// `Pool::live_block_class`), read without the lock for the thread
    /// cache's `free`. None proves nothing: the caller then takes the
    /// locked path, which examines `p` exactly.
    ///
    /// Sound without the lock: for a block the program holds, the map
    /// entry of its granule and its arena's `base` and `pool_shift` were
    /// written before the block was handed out (and the handing out
    /// happened before this `free`), and none of them changes until the
    /// arena is wholly free, which this block prevents; the pool fields
    /// read are as `Pool::live_block_class` says. For any other pointer
    /// the result is only a first filter.
    ///
    /// # Safety
    /// `heap` is `HEAP.data_ptr()`.
    #[inline(always)]
    pub unsafe fn cached_class_of(heap: *const Heap, p: *mut u8, key: usize) -> Option<usize> {
        // SAFETY: see above; only raw reads, no reference to the heap.
        unsafe {
            let arena = ArenaMap::arena_of(&raw const (*heap).map, p as usize);
            if arena.is_null() {
                return None;
            }
            let pool = Arena::pool_at(arena, p as usize)?;
            Pool::live_block_class(pool, p, key)
        }
    }

    /// The pool of `p` if `p` is a block of `class` that the heap counts
    /// as handed out, as a block a thread cache holds must be; None if
    /// not (the cache's link to it was overwritten).
    pub fn pool_of_cached(&self, p: *mut u8, class: usize) -> Option<*mut Pool> {
        let Some(Owner::Arena(arena)) = self.map.get(p as usize) else { return None };
        // SAFETY: the map only names live arena descriptors.
        let pool = unsafe { Arena::pool_at(arena, p as usize) }?;
        // SAFETY: pool_at returns only born pools of the arena.
        let header = unsafe { &*pool };
        let fits = header.class as usize == class && header.ref_count.get() > 0 && header.is_carved_block(p as usize);
        fits.then_some(pool)
    }

    /// Gives back to its pool a block a thread cache held.
    ///
    /// # Safety
    /// `pool` is `pool_of_cached(p, ..)`, and nothing has changed since.
    pub unsafe fn free_cached(&mut self, pool: *mut Pool, p: *mut u8) {
        // SAFETY: as the caller guarantees.
        self.free_block(unsafe { &mut *pool }, p);
        self.count_free();
    }

    /// Whether `p` is a block of `class` as a thread cache holds it: a
    /// carved block of a live pool of the class, marked with the key, and
    /// not on the pool's free list (for `pymalloc_check_heap`).
    pub fn is_cached_block(&self, p: *mut u8, class: usize) -> bool {
        let Some(Owner::Arena(arena)) = self.map.get(p as usize) else { return false };
        // SAFETY: as in `free_cached`.
        let Some(pool) = (unsafe { Arena::pool_at(arena, p as usize) }) else { return false };
        // SAFETY: as in `free_cached`.
        let pool = unsafe { &*pool };
        pool.class as usize == class
            && pool.ref_count.get() > 0
            && pool.is_carved_block(p as usize)
            && pool.holds_key(p, self.secret)
            && pool.on_free_list(p, self.secret) == Ok(false)
    }

    /// Draws the secret that mangles links, if not yet drawn.
    pub fn ensure_secret(&mut self) {
        self.secret.ensure();
    }

    #[cold]
    fn corrupted(&mut self, pool: &Pool) -> Block {
        self.fault = pool.corrupt_link(pool.freeblock);
        self.has_fault = true;
        Block::NONE
    }

    /// Why the last allocation returned a null block, if not for lack of
    /// memory; forgotten once asked.
    pub fn take_fault(&mut self) -> Option<Fault> {
        core::mem::take(&mut self.has_fault).then_some(self.fault)
    }

    /// The live block starting at `p`: its pool, or its large mapping.
    #[inline(always)]
    fn find(&self, p: *mut u8) -> Result<Found, Fault> {
        // The common case, vouched for cheaply; anything else is examined
        // by `examine`, which also explains what is wrong.
        match self.map.get(p as usize) {
            Some(Owner::Arena(arena)) => {
                // SAFETY: the map only names live arena descriptors, and
                // only for addresses inside their arena.
                if let Some(pool) = unsafe { Arena::pool_at(arena, p as usize) } {
                    // SAFETY: pool_at returns only born pools of the arena.
                    if unsafe { (*pool).is_live_block(p, self.secret) } {
                        return Ok(Found::Pool(pool));
                    }
                }
            }
            // SAFETY: the map only names live large descriptors.
            Some(Owner::Large(block)) if unsafe { (*block).base } == p => return Ok(Found::Large(block)),
            _ => {}
        }
        self.examine(p)
    }

    /// `find` for a pointer its fast path could not vouch for: a live
    /// block after all (one that holds the free-block key), or the fault.
    #[cold]
    #[inline(never)]
    fn examine(&self, p: *mut u8) -> Result<Found, Fault> {
        match self.map.get(p as usize) {
            Some(Owner::Arena(arena)) => {
                // SAFETY: as in `find`.
                let pool = unsafe { Arena::pool_at(arena, p as usize) }.ok_or(Fault::InvalidPointer)?;
                // SAFETY: as in `find`.
                let pool_ref = unsafe { &*pool };
                if !pool_ref.is_carved_block(p as usize) {
                    return Err(Fault::InvalidPointer);
                }
                // On its pool's free list, or with the key but not there:
                // in a thread cache (only the secret key marks a block so).
                if pool_ref.ref_count.get() == 0
                    || pool_ref.on_free_list(p, self.secret)?
                    || pool_ref.holds_key(p, self.secret)
                {
                    return Err(Fault::Freed { class_size: pool_ref.block_size as usize });
                }
                Ok(Found::Pool(pool))
            }
            // A large block freed lately (or still cached), or a wild pointer.
            _ if self.recently_freed.contains(p) || self.large_cache.holds_base(p) => {
                Err(Fault::Freed { class_size: 0 })
            }
            _ => Err(Fault::InvalidPointer),
        }
    }

    /// Frees the block at `p` (not null).
    #[inline(always)]
    pub fn free(&mut self, p: *mut u8) -> Result<(), Fault> {
        match self.find(p)? {
            // SAFETY: `find` returns live records.
            Found::Pool(pool) => self.free_block(unsafe { &mut *pool }, p),
            Found::Large(block) => self.free_large(block),
        }
        self.count_free();
        Ok(())
    }

    /// Counts a call to `free`: every `TICK_FREES` of them, the clock.
    #[inline(always)]
    fn count_free(&mut self) {
        self.frees_since_tick += 1;
        if self.frees_since_tick >= TICK_FREES {
            self.tick();
        }
    }

    /// Frees the block at `p` (not null), which the caller says was
    /// allocated for `size` bytes aligned to `align` (C23's `free_sized`
    /// with `align` 1, `free_aligned_sized`). Any size from the original
    /// request up to the usable size is accepted, as is one a `realloc`
    /// could have left the block at; a size that would have been served
    /// by a smaller class, or a bigger one, is a fault.
    pub fn free_sized(&mut self, p: *mut u8, size: usize, align: usize) -> Result<(), Fault> {
        let found = self.find(p)?;
        if !align.is_power_of_two() || p as usize % align != 0 {
            return Err(Fault::WrongAlignment { align });
        }
        // SAFETY: `find` returns live records.
        let (fits, class_size) = unsafe {
            match found {
                Found::Pool(pool) => {
                    let class = (*pool).class as usize;
                    (sized_fits_class(size, align, class), (*pool).block_size as usize)
                }
                Found::Large(block) => {
                    // A mapping from the cache, or one a realloc kept,
                    // may be up to twice as big as asked.
                    let usable = (*block).len;
                    (size <= usable && 2 * os::page_round_up(size.max(GRANULE_SIZE)) >= usable, 0)
                }
            }
        };
        if !fits {
            return Err(Fault::WrongSize { size, class_size });
        }
        match found {
            // SAFETY: as above.
            Found::Pool(pool) => self.free_block(unsafe { &mut *pool }, p),
            Found::Large(block) => self.free_large(block),
        }
        self.count_free();
        Ok(())
    }

    /// Reads the clock and gives back what has stayed unused for
    /// `PYMALLOC_DECAY_MS` (see `purge`).
    /// Returns the clock (ms) read anew.
    #[cold]
    #[inline(never)]
    pub fn tick(&mut self) -> u64 {
        self.frees_since_tick = 0;
        self.clock = purge::now_ms();
        self.purge(self.clock.saturating_sub(config::get().decay_ms as u64));
        self.clock
    }

    /// Reads the clock for the first time, before anything is freed: a
    /// stamp of 0 would read as freed long ago, released at the first
    /// tick whatever `PYMALLOC_DECAY_MS` says.
    fn start_clock(&mut self) {
        if self.clock == 0 {
            self.clock = purge::now_ms();
        }
    }

    /// Gives back to the OS the empty pools, free arenas and cached
    /// mappings freed at or before `cutoff` (ms); true if there were any.
    pub fn purge(&mut self, cutoff: u64) -> bool {
        let mut released = self.release_kept(cutoff);
        while let Some(pool) = self.dirty_pools.pop_older(cutoff) {
            // SAFETY: listed pools are empty pools of live arenas.
            unsafe {
                let pool = &mut *pool;
                os::decommit(pool.base, pool.size());
                pool.decommitted();
            }
            released = true;
        }
        while let Some(arena) = self.free_arenas.pop_older(cutoff) {
            // SAFETY: free arenas are live descriptors in no other list.
            let arena = unsafe { &mut *arena };
            self.forget_pools(arena);
            self.unmap_arena(arena);
            released = true;
        }
        let evicted = self.large_cache.evict_older(cutoff);
        released |= !evicted.is_null();
        self.unmap_large_list(evicted);
        released | self.decay_spans(cutoff)
    }

    /// Bytes usable at `p` (not null).
    pub fn usable_size(&self, p: *mut u8) -> Result<usize, Fault> {
        let found = self.find(p)?;
        // SAFETY: `find` returns live records.
        Ok(unsafe {
            match found {
                Found::Pool(pool) => (*pool).block_size as usize,
                Found::Large(block) => (*block).len,
            }
        })
    }

    /// Bytes usable at `p` (not null) and its class size (0 for a large
    /// block), as faults name it.
    pub fn block_info(&self, p: *mut u8) -> Result<(usize, usize), Fault> {
        let found = self.find(p)?;
        // SAFETY: `find` returns live records.
        Ok(unsafe {
            match found {
                Found::Pool(pool) => ((*pool).block_size as usize, (*pool).block_size as usize),
                Found::Large(block) => ((*block).len, 0),
            }
        })
    }

    /// Calls `f(block, usable size, class size or 0)` on every live block
    /// (for the debug mode's heap check).
    pub fn for_each_live_block(&self, mut f: impl FnMut(*mut u8, usize, usize)) {
        const WORDS: usize = POOL_SIZE / MIN_ALIGN / 64;
        self.for_each_arena(|arena| {
            for pool in arena.pools.iter().take(arena.next_unused.get() as usize) {
                let size = pool.block_size as usize;
                if pool.ref_count.get() == 0 || arena.retired || size == 0 {
                    continue;
                }
                // The free blocks, as a bitmap of block indices.
                let mut free = [0u64; WORDS];
                let _ = pool.walk_free_list(self.secret, |block| {
                    let i = (block as usize - pool.base as usize) / size;
                    if let Some(word) = free.get_mut(i / 64) {
                        *word |= 1 << (i % 64);
                    }
                });
                for i in 0..pool.nextoffset.get() as usize / size {
                    let is_free = free.get(i / 64).is_some_and(|word| word >> (i % 64) & 1 != 0);
                    if !is_free {
                        f(pool.base.wrapping_add(i * size), size, size);
                    }
                }
            }
        });
        self.map.for_each_large(|block| {
            // SAFETY: the map only names live large descriptors.
            let b = unsafe { &*block };
            f(b.base, b.len, 0);
        });
    }

    /// Resizes the block at `p` (not null) to `n` bytes (not zero) where
    /// it is, or says how the caller must move it.
    pub fn resize(&mut self, p: *mut u8, n: usize) -> Result<Resize, Fault> {
        Ok(match self.find(p)? {
            Found::Pool(pool) => {
                // SAFETY: `find` returns live records.
                let pool = unsafe { &*pool };
                let usable = pool.block_size as usize;
                if stays_in_place(n, usable, pool.class as usize) { Resize::Done(p) } else { Resize::Move { usable } }
            }
            // SAFETY: as above.
            Found::Large(block) => self.resize_large(unsafe { &mut *block }, n),
        })
    }

    #[inline(always)]
    fn free_block(&mut self, pool: &mut Pool, p: *mut u8) {
        let was_full = pool.is_full();
        // SAFETY: `find` vouched for p: a live block of the pool.
        unsafe { pool.free(p, self.secret) };
        if pool.ref_count.get() == 0 {
            self.pool_emptied(pool, was_full);
        } else if was_full {
            self.link_used(pool);
        }
    }

    /// The head of `class`'s list of used pools.
    #[inline(always)]
    fn used_head(&mut self, class: usize) -> &mut *mut Pool {
        debug_assert!(class < NUM_CLASSES);
        // SAFETY: every class index comes from `size_class` or from a pool
        // serving a class, so class < NUM_CLASSES.
        unsafe { self.usedpools.get_unchecked_mut(class) }
    }

    /// `class`'s kept pool (see `kept`).
    #[inline(always)]
    fn kept_slot(&mut self, class: usize) -> &mut *mut Pool {
        debug_assert!(class < NUM_CLASSES);
        // SAFETY: as in `used_head`.
        unsafe { self.kept.get_unchecked_mut(class) }
    }

    fn tier_mut(&mut self, tier: usize) -> &mut Tier {
        debug_assert!(tier < TIER_COUNT);
        // SAFETY: tiers come from the class table or an arena's `tier`,
        // both < TIER_COUNT.
        unsafe { self.tiers.get_unchecked_mut(tier) }
    }

    fn link_used(&mut self, pool: &mut Pool) {
        let head = self.used_head(pool.class as usize);
        pool.prevpool = ptr::null_mut();
        pool.nextpool = *head;
        // SAFETY: pools in usedpools are live.
        if let Some(next) = unsafe { head.as_mut() } {
            next.prevpool = pool;
        }
        *head = pool;
    }

    fn unlink_used(&mut self, pool: &mut Pool) {
        // SAFETY: pools in usedpools are live.
        unsafe {
            match pool.prevpool.as_mut() {
                Some(prev) => prev.nextpool = pool.nextpool,
                None => *self.used_head(pool.class as usize) = pool.nextpool,
            }
            if let Some(next) = pool.nextpool.as_mut() {
                next.prevpool = pool.prevpool;
            }
        }
        pool.nextpool = ptr::null_mut();
        pool.prevpool = ptr::null_mut();
    }

    /// Gives a pool to `class`, taking it from the tier's most used arena,
    /// or from a new arena; null when out of memory.
    #[cold]
    fn new_used_pool(&mut self, class: usize) -> *mut Pool {
        let tier = class_info(class).tier as usize;
        let pool = match self.tier_mut(tier).take_pool() {
            Some(pool) => pool,
            None => {
                if !self.add_arena(tier) {
                    return ptr::null_mut();
                }
                match self.tier_mut(tier).take_pool() {
                    Some(pool) => pool,
                    None => return ptr::null_mut(),
                }
            }
        };
        // SAFETY: take_pool returns a live, empty pool of a live arena.
        let pool = unsafe { &mut *pool };
        self.dirty_pools.remove(pool);
        pool.init(class);
        self.link_used(pool);
        pool
    }

    /// A pool just became empty: kept on its used list if its class has
    /// no empty pool there yet (a program that frees a class's last
    /// block often allocates one again soon) and its arena is the most
    /// used of its tier, else given back to its arena. Of two empty pools
    /// the one in the fuller arena is kept. Keeping pools only in full
    /// arenas lets the emptier ones drain and go back to the OS.
    #[cold]
    fn pool_emptied(&mut self, pool: &mut Pool, was_full: bool) {
        let pool: *mut Pool = pool;
        // SAFETY: `pool` is live; a kept pool is a live pool of the class:
        // it goes back to its arena only through `release_kept` or here,
        // both of which forget it first. A pool's arena outlives it.
        unsafe {
            let kept = *self.kept_slot((*pool).class as usize);
            let arena = &*self.arena_of(&*pool);
            let mut give = ptr::null_mut();
            if !kept.is_null() && kept != pool && (*kept).ref_count.get() == 0 {
                let fuller = arena.nfreepools < (*self.arena_of(&*kept)).nfreepools;
                give = if fuller { kept } else { pool };
            } else if kept != pool {
                // Kept only where a new pool would come from: the tier's
                // most used arena (or one as full).
                let head = self.tier_mut(arena.tier as usize).usable;
                if !head.is_null() && (*head).nfreepools < arena.nfreepools {
                    give = pool;
                }
            }
            if give != pool {
                if was_full {
                    self.link_used(&mut *pool);
                }
                (*pool).emptied_at = self.clock;
                *self.kept_slot((*pool).class as usize) = pool;
            }
            if !give.is_null() {
                if give != pool || !was_full {
                    self.unlink_used(&mut *give);
                }
                self.give_back(&mut *give);
            }
        }
    }

    /// Gives the kept pools that have been empty since `cutoff` (ms) or
    /// before back to their arenas, their memory back to the OS; true if
    /// there were any.
    fn release_kept(&mut self, cutoff: u64) -> bool {
        let mut released = false;
        for class in 0..NUM_CLASSES {
            // SAFETY: kept pools are live pools of the class (see above).
            let Some(pool) = (unsafe { self.kept[class].as_mut() }) else { continue };
            if pool.ref_count.get() != 0 || pool.emptied_at > cutoff {
                continue;
            }
            self.unlink_used(pool);
            self.kept[class] = ptr::null_mut();
            if pool.dirty_end != 0 {
                // SAFETY: the pool is empty: none of its bytes is in use.
                unsafe { os::decommit(pool.base, pool.size()) };
                pool.decommitted();
            }
            self.give_back(pool);
            released = true;
        }
        released
    }

    /// The arena of a born pool, as the arena map names it.
    fn arena_of(&self, pool: &Pool) -> *mut Arena {
        // SAFETY: our own live map; a born pool lies inside its arena,
        // which the map names while it is mapped.
        unsafe { ArenaMap::arena_of(&self.map, pool.base as usize) }
    }

    /// Returns an empty pool, on no used list and not kept, to its arena.
    fn give_back(&mut self, pool: &mut Pool) {
        debug_assert!(!self.is_kept(pool));
        if pool.dirty_end != 0 {
            self.dirty_pools.push(pool, self.clock);
        }
        // SAFETY: a pool's arena outlives it.
        let arena = unsafe { &mut *self.arena_of(pool) };
        if self.tier_mut(arena.tier as usize).return_pool(arena, pool) {
            self.retire_arena(arena);
        }
    }

    /// Adds a wholly free arena to `tier`: the most recently freed one of
    /// that tier as it is (its empty pools keep their class and pages),
    /// else a free arena of another tier, decommitted and cut anew, else a
    /// new mapping.
    fn add_arena(&mut self, tier: usize) -> bool {
        if let Some(arena) = self.free_arenas.pop_newest(|a| a.tier as usize == tier) {
            // SAFETY: free arenas are live and in no tier.
            self.tier_mut(tier).add_free_arena(unsafe { &mut *arena });
            return true;
        }
        let arena = match self.free_arenas.pop_newest(|_| true) {
            Some(arena) => {
                // SAFETY: as above.
                let a = unsafe { &mut *arena };
                self.forget_pools(a);
                // SAFETY: every pool is free: nothing lives in the arena.
                unsafe { os::decommit(a.base, ARENA_SIZE) };
                a.dirty_end = 0;
                arena
            }
            None => {
                let arena = self.map_arena();
                if arena.is_null() {
                    return false;
                }
                arena
            }
        };
        // SAFETY: the arena is live and in no tier.
        let arena = unsafe { &mut *arena };
        arena.reset(tier);
        self.tier_mut(tier).add_free_arena(arena);
        true
    }

    /// Takes an entirely free arena's pools off the dirty-pool list.
    fn forget_pools(&mut self, arena: &mut Arena) {
        let mut cur = arena.freepools;
        // SAFETY: free-pool lists hold born, empty pools of this arena.
        while let Some(pool) = unsafe { cur.as_mut() } {
            cur = pool.nextpool;
            self.dirty_pools.remove(pool);
        }
    }

    /// Maps fresh memory. When the OS refuses, the reserves (free arenas,
    /// cached mappings: address space a memory limit counts) are given
    /// back and the mapping tried once more, but only if they hold at
    /// least the address space the mapping needs, so that releasing them
    /// is sure to make room under a limit. A request that cannot be served
    /// fails after one system call and leaves the heap as it was; releasing
    /// for it would only make the next small `malloc` map them again.
    fn map_memory(&mut self, len: usize, align: usize) -> *mut u8 {
        let p = os::map_aligned(len, align);
        if p.is_null() && self.could_make_room(len, align) && self.release_reserves() {
            return os::map_aligned(len, align);
        }
        p
    }

    /// Whether releasing the reserves frees the address space that a
    /// mapping of `len` bytes aligned to `align` needs.
    fn could_make_room(&self, len: usize, align: usize) -> bool {
        let reserves = self.free_arenas.count * ARENA_SIZE + self.large_cache.bytes + self.regions.idle_bytes;
        os::span_needed(len, align).is_some_and(|span| span <= reserves)
    }

    /// Gives back everything kept for reuse: empty pools, free arenas,
    /// cached mappings, free pages of regions and regions with no live
    /// block. True if there was any.
    fn release_reserves(&mut self) -> bool {
        self.purge(u64::MAX)
    }

    fn map_arena(&mut self) -> *mut Arena {
        self.secret.ensure();
        self.start_clock();
        let base = self.map_memory(ARENA_SIZE, ARENA_SIZE);
        if base.is_null() {
            return ptr::null_mut();
        }
        let arena = self.arena_records.alloc();
        if arena.is_null() || !self.map.insert(base as usize, ARENA_SIZE, Owner::Arena(arena)) {
            // SAFETY: base was mapped just above and is unused; the record
            // (if any) was just allocated.
            unsafe {
                os::unmap(base, ARENA_SIZE);
                if !arena.is_null() {
                    self.arena_records.free(arena);
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
            a.next_all = self.all_arenas;
            if let Some(next) = self.all_arenas.as_mut() {
                next.prev_all = arena;
            }
        }
        self.all_arenas = arena;
        self.counters.arena_mapped();
        arena
    }

    /// Keeps an arena whose pools are all free for reuse, until it decays
    /// (its dirty pools decay one by one meanwhile).
    fn retire_arena(&mut self, arena: &mut Arena) {
        self.free_arenas.push(arena, self.clock);
    }

    fn unmap_arena(&mut self, arena: &mut Arena) {
        // SAFETY: all-list neighbours are live descriptors.
        unsafe {
            match arena.prev_all.as_mut() {
                Some(prev) => prev.next_all = arena.next_all,
                None => self.all_arenas = arena.next_all,
            }
            if let Some(next) = arena.next_all.as_mut() {
                next.prev_all = arena.prev_all;
            }
        }
        self.map.remove(arena.base as usize, ARENA_SIZE);
        self.counters.arena_unmapped();
        // SAFETY: every pool is free, nothing refers to the arena any more.
        unsafe {
            os::unmap(arena.base, ARENA_SIZE);
            self.arena_records.free(arena);
        }
    }

    /// A large block of at least `n` bytes (and one granule) whose address
    /// is a multiple of `align` (a power of two, at least a page): a span
    /// of a region when it is small enough, else a mapping of its own.
    fn alloc_large(&mut self, n: usize, align: usize) -> Block {
        if n > MAX_REQUEST {
            return Block::NONE;
        }
        let len = os::page_round_up(n.max(GRANULE_SIZE));
        let found = if align <= PAGE_SIZE && len <= region::SPAN_MAX {
            self.take_span(len)
        } else {
            self.take_mapping(len, align)
        };
        let Some((block, zeroed)) = found else {
            return Block::NONE;
        };
        // SAFETY: `block` is a live descriptor owned by nobody else.
        let b = unsafe { &mut *block };
        if !self.map.insert(b.base as usize, GRANULE_SIZE, Owner::Large(block)) {
            self.unallocate_large(b);
            return Block::NONE;
        }
        self.counters.large_blocks += 1;
        self.counters.large_bytes += b.len;
        Block { ptr: b.base, zeroed }
    }

    /// A mapping of its own for a block of `len` bytes aligned to `align`:
    /// a cached one if any serves, else a new one. Also whether it reads
    /// as zero.
    fn take_mapping(&mut self, len: usize, align: usize) -> Option<(*mut LargeBlock, bool)> {
        if let Some(block) = self.reuse_cached(len, align).ok()? {
            return Some((block, false));
        }
        // Aligned as `move_away` will move it when it is freed.
        let base = self.map_memory(len, align.max(MOVE_ALIGN));
        if base.is_null() {
            return None;
        }
        let block = self.large_records.alloc();
        if block.is_null() {
            // SAFETY: mapped just above, unused.
            unsafe { os::unmap(base, len) };
            return None;
        }
        // SAFETY: the slot is ours.
        unsafe { block.write(LargeBlock::new(base, len)) };
        Some((block, true))
    }

    /// A cached mapping made `len` bytes long: one much longer is split
    /// and its tail cached again, one too short is grown with `mremap`
    /// (which keeps its pages). None if none serves; Err if growing one
    /// failed and releasing the reserves cannot make room for `len` bytes
    /// either: then no mapping can serve the request now.
    fn reuse_cached(&mut self, len: usize, align: usize) -> Result<Option<*mut LargeBlock>, ()> {
        // SAFETY: the cache hands out live descriptors it let go of.
        let Some(b) = self.large_cache.take(len, align).map(|b| unsafe { &mut *b }) else {
            return Ok(None);
        };
        if b.len >= len {
            let tail = b.len - len;
            if tail > b.len / 4 && tail >= GRANULE_SIZE {
                self.cache_tail(b, len);
            }
        } else {
            // SAFETY: the mapping is ours and unused; a moved one is not
            // in the arena map yet.
            let moved = unsafe { os::remap(b.base, b.len, len) };
            if moved.is_null() {
                // Still cached: a request that fails leaves the heap as it was.
                let evicted = self.large_cache.insert(b, self.clock);
                self.unmap_large_list(evicted);
                return if self.could_make_room(len, align) { Ok(None) } else { Err(()) };
            }
            b.base = moved;
            b.len = len;
        }
        Ok(Some(b))
    }

    /// Cuts cached mapping `b` to `len` bytes; the rest becomes a cached
    /// mapping of its own, or is unmapped when the cache cannot take it.
    fn cache_tail(&mut self, b: &mut LargeBlock, len: usize) {
        // SAFETY: `len` is inside the mapping.
        let tail_base = unsafe { b.base.add(len) };
        let tail_len = b.len - len;
        b.len = len;
        let record = if self.large_cache.accepts(tail_len) { self.large_records.alloc() } else { ptr::null_mut() };
        if record.is_null() {
            // SAFETY: the tail is ours and unused.
            unsafe { os::unmap(tail_base, tail_len) };
            return;
        }
        // SAFETY: the slot is ours; the tail is a whole range of pages.
        let tail = unsafe {
            record.write(LargeBlock::new(tail_base, tail_len));
            &mut *record
        };
        let evicted = self.large_cache.insert(tail, self.clock);
        self.unmap_large_list(evicted);
    }

    /// A span of `len` bytes (a multiple of the page size) from the
    /// regions, mapping a new region if no free span is big enough; also
    /// whether it reads as zero.
    fn take_span(&mut self, len: usize) -> Option<(*mut LargeBlock, bool)> {
        let span = match self.regions.take(len) {
            Some(span) => span,
            None => self.map_region(len)?,
        };
        // SAFETY: a free span just taken out of its bin: ours alone.
        let s = unsafe { &mut *span };
        if s.len > len {
            let rest = self.large_records.alloc();
            if !rest.is_null() {
                // SAFETY: the slot is ours; `len` is inside the span, and
                // the rest joins the span's place in the region's tiling.
                unsafe {
                    rest.write(LargeBlock::span(s.base.add(len), s.len - len, s.dirty_len.saturating_sub(len), s.freed_at));
                    self.split_off(s, &mut *rest);
                    self.regions.bin(&mut *rest);
                }
            }
        }
        // SAFETY: the span's pages are ours, and now the caller's.
        if !unsafe { guard_span(s.base, s.len, true) } {
            self.release_span(s);
            return None;
        }
        s.free = false;
        Some((span, s.dirty_len == 0))
    }

    /// A new region for a span of at least `len` bytes, as one free span.
    fn map_region(&mut self, len: usize) -> Option<*mut LargeBlock> {
        self.start_clock();
        let guarded = config::get().debug;
        let reserved = if guarded { os::reserve(region::REGION_SIZE) } else { os::map(region::REGION_SIZE) };
        let (mut base, mut size) = (reserved, region::REGION_SIZE);
        if base.is_null() {
            (base, size) = (self.map_memory(len, PAGE_SIZE), len);
            if base.is_null() {
                return None;
            }
            // SAFETY: mapped just above, unused. Best effort: free pages
            // left accessible are only less guarded.
            unsafe { guard_span(base, size, false) };
        }
        let span = self.large_records.alloc();
        if span.is_null() {
            // SAFETY: mapped just above, unused.
            unsafe { os::unmap(base, size) };
            return None;
        }
        // SAFETY: the slot is ours.
        unsafe { span.write(LargeBlock::span(base, size, 0, 0)) };
        self.regions.regions += 1;
        self.regions.region_bytes += size;
        Some(span)
    }

    /// Makes `rest` (the pages right after `s.len`, up to the old end of
    /// `s`) `s`'s right neighbour.
    fn split_off(&mut self, s: &mut LargeBlock, rest: &mut LargeBlock) {
        rest.left = s;
        rest.right = s.right;
        // SAFETY: a span's neighbours are live descriptors of its region.
        if let Some(right) = unsafe { s.right.as_mut() } {
            right.left = rest;
        }
        s.right = rest;
        s.len -= rest.len;
    }

    /// Bins free span `s` (out of any bin), merged with its free
    /// neighbours. Returns the merged span.
    fn release_span<'a>(&mut self, mut s: &'a mut LargeBlock) -> &'a mut LargeBlock {
        // SAFETY: a span's neighbours are live descriptors of its region,
        // binned when free; a merged-away descriptor is referred to by
        // nothing once its neighbours are relinked.
        unsafe {
            if let Some(left) = s.left.as_mut().filter(|l| l.free) {
                self.regions.unbin(left);
                self.absorb(left, s);
                s = left;
            }
            if let Some(right) = s.right.as_mut().filter(|r| r.free) {
                self.regions.unbin(right);
                self.absorb(s, right);
            }
        }
        self.regions.bin(s);
        s
    }

    /// Merges free span `right` (out of its bin) into its left neighbour
    /// `s` and frees its descriptor.
    fn absorb(&mut self, s: &mut LargeBlock, right: &mut LargeBlock) {
        if right.dirty_len > 0 {
            s.dirty_len = s.len + right.dirty_len;
        }
        s.len += right.len;
        s.freed_at = s.freed_at.max(right.freed_at);
        s.right = right.right;
        // SAFETY: as in `split_off`; nothing refers to `right` any more.
        unsafe {
            if let Some(next) = right.right.as_mut() {
                next.left = s;
            }
            self.large_records.free(right);
        }
    }

    /// Gives back the pages of free spans unused since `cutoff` (ms), and
    /// unmaps regions that are one such span; true if there were any.
    fn decay_spans(&mut self, cutoff: u64) -> bool {
        // Take them out of their bins first, marked not free, so that
        // merging one cannot reach another before its turn.
        let mut unused: *mut LargeBlock = ptr::null_mut();
        self.regions.for_each_free(|regions, span| {
            // SAFETY: binned spans are live descriptors of free pages.
            let s = unsafe { &mut *span };
            if s.freed_at <= cutoff {
                regions.unbin(s);
                s.free = false;
                s.next = unused;
                unused = s;
            }
        });
        let mut released = false;
        // SAFETY: spans unbinned above: free pages nobody else refers to.
        while let Some(s) = unsafe { unused.as_mut() } {
            unused = s.next;
            if s.dirty_len > 0 {
                // SAFETY: the span's pages hold no live block.
                unsafe { os::decommit(s.base, s.dirty_len) };
                s.dirty_len = 0;
                released = true;
            }
            s.free = true;
            let merged = self.release_span(s);
            if merged.is_whole_region() && merged.freed_at <= cutoff {
                self.regions.unbin(merged);
                self.regions.regions -= 1;
                self.regions.region_bytes -= merged.len;
                self.unmap_large(merged);
                released = true;
            }
        }
        released
    }

    /// Returns a large block that never reached its owner.
    fn unallocate_large(&mut self, b: &mut LargeBlock) {
        if b.in_region {
            // SAFETY: the span was never handed out. Best effort.
            unsafe { guard_span(b.base, b.len, false) };
            b.free = true;
            b.dirty_len = b.len;
            self.release_span(b);
        } else {
            self.unmap_large(b);
        }
    }

    fn free_large(&mut self, block: *mut LargeBlock) {
        let now = self.large_stamp();
        // SAFETY: the caller found it in the map, so it is live.
        let b = unsafe { &mut *block };
        self.map.remove(b.base as usize, GRANULE_SIZE);
        self.counters.large_blocks -= 1;
        self.counters.large_bytes -= b.len;
        self.recently_freed.record(b.base);
        if b.in_region {
            // SAFETY: the block is free: nothing may touch it any more.
            // Best effort.
            unsafe { guard_span(b.base, b.len, false) };
            b.free = true;
            b.dirty_len = b.len;
            b.freed_at = now;
            self.release_span(b);
        } else if self.large_cache.learn(b.len, self.counters.large_bytes) && self.move_away(b) {
            let evicted = self.large_cache.insert(b, now);
            self.unmap_large_list(evicted);
        } else {
            self.unmap_large(b);
        }
    }

    /// Moves freed mapping `b`, pages and all, to fresh address space
    /// (one `mremap`, which moves whole page tables where both ends are
    /// 2 MiB aligned): its old address is unmapped, so a stale pointer
    /// faults at once, and it is ready for reuse where it now is. False
    /// (nothing changed) when no address space could be had.
    fn move_away(&mut self, b: &mut LargeBlock) -> bool {
        // The alignment it has (what a request may have asked for), from
        // 2 MiB (a page table's reach) to 64 MiB (more is by chance).
        let align = (1usize << (b.base as usize).trailing_zeros()).clamp(MOVE_ALIGN, 64 << 20);
        let target = os::reserve_aligned(b.len, align);
        if target.is_null() {
            return false;
        }
        // SAFETY: `b` is one whole mapping of ours, out of the map, that
        // nobody may touch any more; `target` was reserved just above.
        if !unsafe { os::move_onto(b.base, b.len, b.len, target) } {
            // SAFETY: reserved above, unused.
            unsafe { os::unmap(target, b.len) };
            return false;
        }
        b.base = target;
        true
    }

    /// The time stamp of a large block freed now: read anew (a large free
    /// costs far more than the clock), with a tick when the last one is a
    /// decay period old, so that programs that free mostly large blocks
    /// still give back what they stopped using.
    fn large_stamp(&mut self) -> u64 {
        let now = purge::now_ms();
        if now.saturating_sub(self.clock) >= config::get().decay_ms as u64 {
            return self.tick();
        }
        now
    }

    fn unmap_large(&mut self, block: &mut LargeBlock) {
        // SAFETY: the block is out of the map and the cache: nobody uses it.
        unsafe {
            os::unmap(block.base, block.len);
            self.large_records.free(block);
        }
    }

    fn unmap_large_list(&mut self, mut list: *mut LargeBlock) {
        // SAFETY: lists from the cache hold live descriptors it let go of.
        while let Some(block) = unsafe { list.as_mut() } {
            list = block.next;
            self.unmap_large(block);
        }
    }

    fn resize_large(&mut self, b: &mut LargeBlock, n: usize) -> Resize {
        if n <= MEDIUM_MAX && n < b.len / 2 {
            return Resize::Move { usable: b.len }; // into an arena, releasing the mapping
        }
        if n > MAX_REQUEST {
            return Resize::Failed;
        }
        let len = os::page_round_up(n.max(GRANULE_SIZE));
        if b.in_region {
            return self.resize_span(b, len);
        }
        if len <= b.len {
            if len < b.len {
                // SAFETY: the tail beyond `len` is ours and the caller gave it up.
                unsafe { os::shrink(b.base, b.len, len) };
                self.counters.large_bytes -= b.len - len;
                b.len = len;
            }
            return Resize::Done(b.base);
        }
        // SAFETY: b is one whole mapping of ours.
        if unsafe { os::grow_in_place(b.base, b.len, len) } {
            self.counters.large_bytes += len - b.len;
            b.len = len;
            return Resize::Done(b.base);
        }
        // Move: reserve the destination first so that it can be entered in
        // the map before the pages move (the map may need a new leaf).
        let target = self.map_memory(len, PAGE_SIZE);
        if target.is_null() {
            return Resize::Failed;
        }
        let block: *mut LargeBlock = b;
        if !self.map.insert(target as usize, GRANULE_SIZE, Owner::Large(block)) {
            // SAFETY: mapped just above, unused.
            unsafe { os::unmap(target, len) };
            return Resize::Failed;
        }
        // SAFETY: b is one whole mapping of ours; target is ours and unused.
        if !unsafe { os::move_onto(b.base, b.len, len, target) } {
            self.map.remove(target as usize, GRANULE_SIZE);
            // SAFETY: as above.
            unsafe { os::unmap(target, len) };
            return Resize::Failed;
        }
        self.map.remove(b.base as usize, GRANULE_SIZE);
        self.recently_freed.record(b.base);
        self.counters.large_bytes += len - b.len;
        b.base = target;
        b.len = len;
        Resize::Done(target)
    }

    /// `resize_large` for a span, to `len` bytes (a multiple of the page
    /// size): a shrink frees the tail, a growth takes the pages of a free
    /// right neighbour; otherwise the block moves.
    fn resize_span(&mut self, b: &mut LargeBlock, len: usize) -> Resize {
        if len < b.len {
            let tail = self.large_records.alloc();
            if !tail.is_null() {
                let now = self.large_stamp();
                // SAFETY: the slot is ours; the tail beyond `len` is ours
                // and the caller gave it up.
                unsafe {
                    tail.write(LargeBlock::span(b.base.add(len), b.len - len, b.len - len, now));
                    guard_span((*tail).base, (*tail).len, false); // best effort
                    self.split_off(b, &mut *tail);
                    self.release_span(&mut *tail);
                }
                self.counters.large_bytes -= b.len - len;
            }
            return Resize::Done(b.base);
        }
        if len == b.len {
            return Resize::Done(b.base);
        }
        // SAFETY: a span's neighbours are live descriptors of its region.
        let right = unsafe { b.right.as_mut() }.filter(|r| r.free && b.len + r.len >= len);
        // SAFETY: the free pages right after the block are ours, and
        // become the caller's.
        match right.filter(|r| unsafe { guard_span(r.base, len - b.len, true) }) {
            Some(right) => {
                let grown = len - b.len;
                self.regions.unbin(right);
                if right.len > grown {
                    // SAFETY: `grown` is inside the free span.
                    right.base = unsafe { right.base.add(grown) };
                    right.len -= grown;
                    right.dirty_len = right.dirty_len.saturating_sub(grown);
                    self.regions.bin(right);
                } else {
                    b.right = right.right;
                    // SAFETY: as above; nothing refers to `right` any more.
                    unsafe {
                        if let Some(next) = right.right.as_mut() {
                            next.left = b;
                        }
                        self.large_records.free(right);
                    }
                }
                self.counters.large_bytes += grown;
                b.len = len;
                Resize::Done(b.base)
            }
            _ => Resize::Move { usable: b.len },
        }
    }

    /// Gives back to the OS all memory that holds no live block: empty
    /// pools are decommitted, free arenas and cached mappings unmapped.
    /// True if anything was released.
    pub fn trim(&mut self) -> bool {
        self.release_reserves()
    }

    /// Calls `f` on every arena (free ones included) - for statistics and
    /// invariant checks.
    pub fn for_each_arena(&self, mut f: impl FnMut(&Arena)) {
        let mut cur = self.all_arenas;
        // SAFETY: the all-arena list holds live descriptors.
        while let Some(arena) = unsafe { cur.as_ref() } {
            f(arena);
            cur = arena.next_all;
        }
    }

    pub fn map(&self) -> &ArenaMap {
        &self.map
    }

    pub fn used_list(&self, class: usize) -> *mut Pool {
        self.usedpools[class]
    }

    /// `class`'s kept pool, or null (see `kept`).
    pub fn kept_pool(&self, class: usize) -> *mut Pool {
        self.kept[class]
    }

    /// Whether `pool` is its class's kept pool (see `kept`).
    pub fn is_kept(&self, pool: &Pool) -> bool {
        self.kept.get(pool.class as usize).is_some_and(|&k| ptr::eq(k, pool))
    }

    pub fn tier(&self, tier: usize) -> &Tier {
        &self.tiers[tier]
    }

    pub fn large_cache(&self) -> &LargeCache {
        &self.large_cache
    }

    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    #[cfg(test)]
    pub fn free_arena_count(&self) -> usize {
        self.free_arenas.count
    }

    pub fn secret(&self) -> Secret {
        self.secret
    }
}

/// In the debug mode, opens (`accessible`) or closes the pages of a span
/// as it is allocated or freed, so that a stale pointer to a freed span
/// faults at once; false if the kernel refused. In the default mode free
/// spans stay accessible, as glibc's heap is below its mmap threshold:
/// an `mprotect` per call costs 10 times the work of a workload that
/// replaces 128 KiB..4 MiB blocks (README, "Large blocks").
///
/// # Safety
/// As for `os::protect`.
unsafe fn guard_span(base: *mut u8, len: usize, accessible: bool) -> bool {
    // SAFETY: as the caller guarantees.
    !config::get().debug || unsafe { os::protect(base, len, accessible) }
}

/// Whether a pool block of `class` can have been allocated for `size`
/// bytes aligned to `align` (a power of two): `size` gets that class, or
/// is one a shrinking realloc kept the block at (see `resize`). The rule
/// of `Heap::free_sized`, also applied without the lock by the sized
/// frees' fast paths.
#[inline(always)]
pub fn sized_fits_class(size: usize, align: usize, class: usize) -> bool {
    let usable = size_class::size_of(class);
    let allocated = class_for_aligned(size, align) == Some(class);
    let kept = align <= MIN_ALIGN && 4 * size > 3 * usable;
    size <= usable && (allocated || kept)
}
