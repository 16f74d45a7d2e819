//! The heap, behind the global lock (`HEAP`): it dispatches each request
//! by size, to a class's pools or to the large blocks (`large`), keeps
//! the per-class lists of used pools, finds the block a pointer names
//! (the arena map), and keeps the clock by which what is freed decays
//! (`purge`). Arenas come and go through `arena`'s `Arenas`. When the OS
//! refuses a mapping, the heap, which sees every reserve, gives them back
//! if that can make room, and asks once more. Each public method is one
//! operation of the C API minus argument checks and `errno`, which stay
//! in `abi`.
//!
//! Nothing here allocates through `malloc`, touches thread-local storage
//! (except libc's `errno`, inside `os`) or prints: it all runs with the
//! lock held.

use core::ptr;

use lock_api::{Mutex, MutexGuard, RawMutex};

use crate::arena::{Arena, Arenas, Tier};
use crate::arena_map::{ArenaMap, Owner};
use crate::config;
use crate::fault::Fault;
use crate::geometry::{ARENA_SIZE, MEDIUM_MAX, MIN_ALIGN, PAGE_SIZE, POOL_SIZE, TIER_COUNT, tier_pool_size};
use crate::hardening::Secret;
use crate::large::{Large, NoSpace};
pub use crate::large::Resize;
use crate::large_block::LargeBlock;
use crate::lock::FutexMutex;
use crate::os;
use crate::pool::Pool;
use crate::purge::{self, DirtyPools, TICK_FREES};
use crate::size_class::{self, NUM_CLASSES, class_for_aligned, class_info, class_of};

/// The classes whose blocks span whole pages past their first, whose
/// free blocks can give pages back (`release_free_pages`).
const MULTI_PAGE_CLASSES: core::ops::Range<usize> = size_class::class_of(PAGE_SIZE) + 1..NUM_CLASSES;

/// Pages in the biggest pool.
const MAX_POOL_PAGES: usize = tier_pool_size(TIER_COUNT - 1) / PAGE_SIZE;

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

/// Whether a pool block of a class is in some thread cache: the front's
/// answer (`thread_cache`), called with the heap lock held, and given to
/// the heap before the first block enters a cache. The heap asks it
/// before calling a block that holds its free-block key, but is not on its
/// pool's free list, a double free (the key alone proves nothing).
pub type CacheSearch = fn(&Heap, *mut u8, usize) -> bool;

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

/// A live pool block as the lock-free lookup found it (`Heap::live_block`).
#[derive(Clone, Copy)]
pub struct PoolBlock {
    pub pool: *mut Pool,
    pub class: usize,
}

#[repr(C)] // hot fields first, together; the 256 KiB arena map last
pub struct Heap {
    /// Per class, the pools with blocks both in use and free: the head
    /// serves; a new pool goes first, one that was full goes second
    /// (`relink_used`).
    usedpools: [*mut Pool; NUM_CLASSES],
    /// Per class, the pool last kept when it became empty: it stays on
    /// the used list (ready for the next `malloc`, with its free list),
    /// not returned to its arena, until it stays empty for the decay time
    /// (`purge`) or another class of its tier takes it (`unkeep_other`).
    /// Only this pool may be empty on the class's used list;
    /// once it serves blocks again it is an ordinary used pool.
    kept: [*mut Pool; NUM_CLASSES],
    /// Mangles free-list links; drawn when the first arena is mapped.
    secret: Secret,
    tiers: [Tier; TIER_COUNT],
    /// Empty pools of live arenas still holding their pages.
    dirty_pools: DirtyPools,
    /// Set when an allocation found a free list corrupted (`fault` says
    /// how). Not an `Option`, so that a new heap is all zero bytes and
    /// its static lives in `.bss`, where only the pages touched count.
    has_fault: bool,
    fault: Fault,
    arenas: Arenas,
    large: Large,
    map: ArenaMap,
    /// The clock (ms) at the last tick: the time stamp of what is freed.
    clock: u64,
    /// The clock at the last look for idle pools in use (`shed_idle_blocks`).
    idle_looked_at: u64,
    /// Calls to `free` left until the next tick (0 at first: the first
    /// free ticks, and the heap starts as zero bytes).
    frees_to_tick: u32,
    /// Searches the thread caches; None while there are none.
    cache_search: Option<CacheSearch>,
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
            dirty_pools: DirtyPools::new(),
            map: ArenaMap::new(),
            arenas: Arenas::new(),
            large: Large::new(),
            secret: Secret::UNSET,
            has_fault: false,
            fault: Fault::InvalidPointer,
            clock: 0,
            frees_to_tick: 0,
            idle_looked_at: 0,
            cache_search: None,
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
        let Some(pool) = (unsafe { ArenaMap::pool_of(&self.map, p as usize) }) else { return false };
        // SAFETY: `pool_of` returns only born pools of live arenas.
        accept(unsafe { (*pool).class } as usize) && self.free_fast_in(pool, p)
    }

    /// `free_fast` of `p`, whose pool a lookup found to be `pool`.
    #[inline(always)]
    pub fn free_fast_in(&mut self, pool: *mut Pool, p: *mut u8) -> bool {
        self.free_fast_vouched(pool, p, |pool, secret| pool.is_unkeyed_carved_block(p, secret))
    }

    /// `free_fast_in` of `p`, which `live_block` found live on this thread
    /// with nothing freed since (`realloc`, once it has its new block): the
    /// lookup's checks still hold, so they are not made again.
    #[inline(always)]
    pub fn free_fast_live(&mut self, block: PoolBlock, p: *mut u8) -> bool {
        self.free_fast_vouched(block.pool, p, |_, _| true)
    }

    /// `free_fast_in`, with `vouch` saying whether `p` is a live block of
    /// the pool (a carved block without its key).
    #[inline(always)]
    fn free_fast_vouched(&mut self, pool: *mut Pool, p: *mut u8, vouch: impl FnOnce(&Pool, Secret) -> bool) -> bool {
        // SAFETY: the caller's lookup returned a born pool of a live arena.
        let pool = unsafe { &mut *pool };
        if pool.ref_count.get() <= 1 {
            // The pool may become empty: only the kept pool stays as it is,
            // stamped for `purge` (a stamp on a pool with live blocks is
            // harmless: it is stamped again when it becomes empty).
            if pool.ref_count.get() == 0 || !ptr::eq(*self.kept_slot(pool.class as usize), pool) {
                return false;
            }
            pool.emptied_at = self.clock;
        }
        if self.frees_to_tick <= 1 || !vouch(pool, self.secret) {
            return false;
        }
        let was_full = pool.is_full();
        // SAFETY: a carved block of a pool with live blocks, without its
        // key: live (the general path examines anything else).
        unsafe { pool.free(p, self.secret) };
        if was_full {
            self.relink_used(pool);
        }
        self.frees_to_tick -= 1;
        true
    }

    /// The lookup of `free` and `realloc` without the lock: `p` as a live
    /// block of a pool that vouches for it (see `Pool::live_block_class`).
    /// None proves nothing: the caller then takes the locked path, which
    /// examines `p` exactly.
    ///
    /// Sound without the lock: for a block the program holds, the map
    /// entry of its granule and its arena's `base` and `pool_shift` were
    /// written before the block was handed out (and the handing out
    /// happened before this call), and none of them changes until the
    /// arena is wholly free, which this block prevents; the pool fields
    /// read are as `Pool::live_block_class` says. The secret is written
    /// once, before the first block is handed out. For any other pointer
    /// the result is only a first filter.
    ///
    /// # Safety
    /// `heap` is `HEAP.data_ptr()`.
    #[inline(always)]
    pub unsafe fn live_block(heap: *const Heap, p: *mut u8) -> Option<PoolBlock> {
        // SAFETY: see above; only raw reads, no reference to the heap.
        unsafe {
            let pool = ArenaMap::pool_of(&raw const (*heap).map, p as usize)?;
            let class = Pool::live_block_class(pool, p, (&raw const (*heap).secret).read())?;
            Some(PoolBlock { pool, class })
        }
    }

    /// The pool of `p` if `p` is a block of `class` that the heap counts
    /// as handed out, as a block a thread cache holds must be; None if
    /// not (the cache's link to it was overwritten).
    pub fn pool_of_cached(&self, p: *mut u8, class: usize) -> Option<*mut Pool> {
        // SAFETY: our own live map.
        let pool = unsafe { ArenaMap::pool_of(&self.map, p as usize) }?;
        // SAFETY: `pool_of` returns only born pools of live arenas.
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
        // SAFETY: our own live map.
        let Some(pool) = (unsafe { ArenaMap::pool_of(&self.map, p as usize) }) else { return false };
        // SAFETY: `pool_of` returns only born pools of live arenas.
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

    /// Gives the heap the search of the thread caches (see `CacheSearch`).
    pub fn set_cache_search(&mut self, search: CacheSearch) {
        self.cache_search = Some(search);
    }

    /// Whether the block `p` of `class` is in a thread cache.
    #[cold]
    fn in_a_cache(&self, p: *mut u8, class: usize) -> bool {
        self.cache_search.is_some_and(|search| search(self, p, class))
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
                    if unsafe { (*pool).ref_count.get() > 0 && (*pool).is_unkeyed_carved_block(p, self.secret) } {
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
                // Free if its pool is empty, or it is on its pool's free
                // list or in a thread cache. Holding its key is only the
                // reason to look: a block that holds it and is in neither
                // is a live block whose bytes happen to read so.
                let freed = pool_ref.ref_count.get() == 0
                    || pool_ref.on_free_list(p, self.secret)?
                    || (pool_ref.holds_key(p, self.secret) && self.in_a_cache(p, pool_ref.class as usize));
                if freed {
                    return Err(Fault::Freed { class_size: pool_ref.block_size as usize });
                }
                Ok(Found::Pool(pool))
            }
            // A large block freed lately (or still cached), or a wild pointer.
            _ if self.large.was_freed(p) => {
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
        self.frees_to_tick = self.frees_to_tick.saturating_sub(1);
        if self.frees_to_tick == 0 {
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
        if !align.is_power_of_two() || !(p as usize).is_multiple_of(align) {
            return Err(Fault::WrongAlignment { align });
        }
        // SAFETY: `find` returns live records.
        let (fits, class_size) = unsafe {
            match found {
                Found::Pool(pool) => {
                    let class = (*pool).class as usize;
                    (sized_fits_class(size, align, class), (*pool).block_size as usize)
                }
                Found::Large(block) => ((*block).fits_size(size), 0),
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
        // Without the fast paths (the debug mode, whose blocks are laid
        // out otherwise) the counter stays at zero, so that `free_fast`
        // declines every block and each free ticks.
        self.frees_to_tick = if config::fast_paths() { TICK_FREES } else { 0 };
        self.clock = purge::now_ms();
        let config = config::get();
        let decay = config.decay_ms as u64;
        self.purge(self.clock.saturating_sub(decay));
        // Not in the debug mode: its check of a block handed out again
        // reads the freed block's poison.
        if self.clock.saturating_sub(self.idle_looked_at) >= decay && !config.debug {
            self.idle_looked_at = self.clock;
            self.shed_idle_blocks();
        }
        self.clock
    }

    /// The clock (ms) at the last tick.
    pub fn clock(&self) -> u64 {
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
            Self::decommit_pool(unsafe { &mut *pool });
            released = true;
        }
        while let Some(arena) = self.arenas.take_decayed(cutoff) {
            // SAFETY: retired arenas are live descriptors in no other list.
            let arena = unsafe { &mut *arena };
            self.forget_pools(arena);
            self.map.remove(arena.base as usize, ARENA_SIZE);
            self.arenas.unmap(arena);
            released = true;
        }
        released | self.large.release(cutoff)
    }

    /// Gives back the pages of empty pools of other tiers than `tier`,
    /// those emptied longest ago first, until about `bytes` have gone or
    /// none is left resident; returns how many of `bytes` they could not
    /// cover.
    fn shed_dirty_pools(&mut self, tier: usize, bytes: usize) -> usize {
        let mut excess = bytes;
        while excess > 0 {
            let Some(pool) = self.dirty_pools.pop_other_tier(tier) else { break };
            // SAFETY: listed pools are empty pools of live arenas.
            let pool = unsafe { &mut *pool };
            excess = excess.saturating_sub(pool.dirty_end as usize);
            Self::decommit_pool(pool);
        }
        excess
    }

    /// Decommits an empty pool of a live arena (taken off the dirty-pool
    /// list, or a kept pool being given back).
    fn decommit_pool(pool: &mut Pool) {
        debug_assert_eq!(pool.ref_count.get(), 0);
        // SAFETY: a pool with no block in use: none of its bytes is read
        // before it is carved anew.
        unsafe { os::decommit(pool.base, pool.size()) };
        pool.decommitted();
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
        self.arenas.for_each(|arena| {
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
            Found::Large(block) => self.resize_large(block, n),
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
            self.relink_used(pool);
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

    /// Puts a new pool first on its class's list.
    fn link_used(&mut self, pool: &mut Pool) {
        self.insert_used(pool, ptr::null_mut());
    }

    /// Puts a pool that was full, and has a free block again, second on
    /// its class's list: the head serves until it is full, and meanwhile
    /// more blocks of this pool may come free. At the head (as pymalloc
    /// lists it), in a heap of random lifetimes the next `malloc` took
    /// that one block and unlinked the pool again, two mispredicted
    /// branches per pair of calls (`c1.random`: 3.5 M -> 2.7 M
    /// mispredicts and 277 M -> 270 M instructions, cachegrind).
    #[inline(always)]
    fn relink_used(&mut self, pool: &mut Pool) {
        let head = *self.used_head(pool.class as usize);
        self.insert_used(pool, head);
    }

    /// Lists `pool` on its class's list after `prev` (a pool on it), or
    /// first if `prev` is null.
    #[inline(always)]
    fn insert_used(&mut self, pool: &mut Pool, prev: *mut Pool) {
        // SAFETY: pools in usedpools are live.
        let slot = match unsafe { prev.as_mut() } {
            Some(prev) => &mut prev.nextpool,
            None => self.used_head(pool.class as usize),
        };
        pool.prevpool = prev;
        pool.nextpool = *slot;
        *slot = pool;
        // SAFETY: as above.
        if let Some(next) = unsafe { pool.nextpool.as_mut() } {
            next.prevpool = pool;
        }
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

    /// Gives a pool to `class`: a free pool of the tier's most used arena
    /// if its pages are resident, else another class's kept pool of the
    /// tier (resident too: a program whose classes change as it goes, a
    /// buffer grown through them, say, reuses its pages instead of
    /// faulting in new ones), else a free pool of that arena or a new
    /// arena's; null when out of memory.
    #[cold]
    fn new_used_pool(&mut self, class: usize) -> *mut Pool {
        let tier = class_info(class).tier as usize;
        // SAFETY: usable arenas and their free pools are live.
        let resident_free = unsafe { self.tier_mut(tier).usable.as_ref() }
            .is_some_and(|arena| unsafe { arena.freepools.as_ref() }.is_some_and(|pool| pool.dirty_end != 0));
        let unkept = if resident_free { None } else { self.unkeep_other(class, tier) };
        let Some(pool) = unkept.or_else(|| self.arena_pool(tier)) else { return ptr::null_mut() };
        // SAFETY: both sources give a live, empty pool of a live arena, on
        // no used list.
        let pool = unsafe { &mut *pool };
        // The pages the new pool will fault in: as many resident pages of
        // free large spans go back first, then of empty pools of other
        // sizes (given back, then kept but idle), so that the footprint of
        // pools and regions together grows only when none holds free
        // pages (the peak of a program whose big buffers die young, as at
        // python3's start-up, or whose sizes change as it goes, is then
        // that of its live blocks).
        self.dirty_pools.remove(pool);
        let fresh = tier_pool_size(tier).saturating_sub(pool.dirty_end as usize);
        let uncovered = self.large.shed_free_resident(fresh);
        let uncovered = self.shed_dirty_pools(tier, uncovered);
        self.shed_idle_kept(tier, uncovered);
        pool.init(class);
        self.link_used(pool);
        pool
    }

    /// A free pool of `tier`'s most used arena, or of a new arena; None
    /// when out of memory.
    fn arena_pool(&mut self, tier: usize) -> Option<*mut Pool> {
        self.tier_mut(tier).take_pool().or_else(|| {
            self.add_arena(tier).then(|| self.tier_mut(tier).take_pool()).flatten()
        })
    }

    /// Takes the empty kept pool of another class of `tier` with the most
    /// resident bytes off its used list, unkept; None if there is none.
    fn unkeep_other(&mut self, class: usize, tier: usize) -> Option<*mut Pool> {
        let mut best: Option<(usize, u32)> = None;
        for other in (0..NUM_CLASSES).filter(|&c| c != class && class_info(c).tier as usize == tier) {
            // SAFETY: kept pools are live pools of their class (`pool_emptied`).
            let Some(pool) = (unsafe { self.kept[other].as_ref() }) else { continue };
            if pool.ref_count.get() == 0 && best.is_none_or(|(_, dirty)| dirty < pool.dirty_end) {
                best = Some((other, pool.dirty_end));
            }
        }
        let pool = core::mem::replace(&mut self.kept[best?.0], ptr::null_mut());
        // SAFETY: as above: a live pool on its class's used list.
        self.unlink_used(unsafe { &mut *pool });
        Some(pool)
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
        // it leaves only through `release_kept_pool`, `unkeep_other` or
        // here, all of which forget it first. A pool's arena outlives it.
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
            if self.empty_kept(class).is_some_and(|pool| pool.emptied_at <= cutoff) {
                self.release_kept_pool(class);
                released = true;
            }
        }
        released
    }

    /// Gives back the kept pools of the classes of other tiers than `tier`
    /// that have stayed empty since before the last clock tick (so not
    /// those of classes that empty and refill their pools in turn),
    /// emptied longest ago first, until about `bytes` of their pages have
    /// gone.
    fn shed_idle_kept(&mut self, tier: usize, bytes: usize) {
        let mut excess = bytes;
        while excess > 0 {
            let idle = (0..NUM_CLASSES).filter(|&c| class_info(c).tier as usize != tier).filter_map(|c| {
                let pool = self.empty_kept(c)?;
                (pool.dirty_end != 0 && pool.emptied_at < self.clock).then_some((c, pool.emptied_at, pool.dirty_end))
            });
            let Some((oldest, _, dirty)) = idle.min_by_key(|&(_, emptied_at, _)| emptied_at) else { break };
            excess = excess.saturating_sub(dirty as usize);
            self.release_kept_pool(oldest);
        }
    }

    /// `class`'s kept pool if it is empty.
    fn empty_kept(&self, class: usize) -> Option<&Pool> {
        // SAFETY: kept pools are live pools of their class (see above).
        unsafe { self.kept.get(class)?.as_ref() }.filter(|pool| pool.ref_count.get() == 0)
    }

    /// Gives `class`'s empty kept pool back to its arena, its memory back
    /// to the OS.
    fn release_kept_pool(&mut self, class: usize) {
        // SAFETY: the caller found the kept pool empty (`empty_kept`): a
        // live pool on its class's used list, none of its bytes in use.
        let pool = unsafe { &mut *core::mem::replace(self.kept_slot(class), ptr::null_mut()) };
        self.unlink_used(pool);
        if pool.dirty_end != 0 {
            Self::decommit_pool(pool);
        }
        self.give_back(pool);
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
            // Kept for reuse until it decays (its dirty pools decay one by
            // one meanwhile).
            self.arenas.retire(arena, self.clock);
        }
    }

    /// Adds a wholly free arena to `tier`: the most recently freed one of
    /// that tier as it is (its empty pools keep their class and pages),
    /// else a free arena of another tier, decommitted and cut anew, else a
    /// new mapping.
    fn add_arena(&mut self, tier: usize) -> bool {
        if let Some(arena) = self.arenas.take_retired(|a| a.tier as usize == tier) {
            // SAFETY: free arenas are live and in no tier.
            self.tier_mut(tier).add_free_arena(unsafe { &mut *arena });
            return true;
        }
        let arena = match self.arenas.take_retired(|_| true) {
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
    /// cached mappings, idle regions: address space a memory limit
    /// counts) are given back and the mapping tried once more, if that
    /// can make room (`could_make_room`). A request that cannot be served
    /// fails after one failed mapping and leaves the heap as it was;
    /// releasing for it would only make the next small `malloc` map them
    /// again.
    fn map_memory(&mut self, len: usize, align: usize) -> *mut u8 {
        let p = os::map_aligned(len, align);
        if p.is_null() && self.could_make_room(len, align) && self.release_reserves() {
            return os::map_aligned(len, align);
        }
        p
    }

    /// Whether releasing the reserves can make room for a mapping of
    /// `len` bytes aligned to `align` that the OS refused: under an
    /// address-space limit, if they and what is left below the limit hold
    /// the address space it needs; with no limit (the refusal came from
    /// elsewhere: overcommit, the count of mappings), if they alone do.
    fn could_make_room(&self, len: usize, align: usize) -> bool {
        let reserves = self.arenas.retired_count() * ARENA_SIZE + self.large.reserve_bytes();
        let Some(span) = os::span_needed(len, align) else { return false };
        reserves > 0 && span <= reserves.saturating_add(os::address_space_headroom().unwrap_or(0))
    }

    /// Gives back everything kept for reuse: empty pools, free arenas,
    /// cached mappings, free pages of regions and regions with no live
    /// block. True if there was any.
    fn release_reserves(&mut self) -> bool {
        self.purge(u64::MAX)
    }

    /// A new arena, from a fresh mapping; null when out of memory.
    fn map_arena(&mut self) -> *mut Arena {
        self.secret.ensure();
        self.start_clock();
        let base = self.map_memory(ARENA_SIZE, ARENA_SIZE);
        if base.is_null() {
            return ptr::null_mut();
        }
        let map = &mut self.map;
        self.arenas.add(base, |arena| map.insert(base as usize, ARENA_SIZE, Owner::Arena(arena)))
    }

    /// A large block (`Large::alloc`), or a null block.
    fn alloc_large(&mut self, n: usize, align: usize) -> Block {
        self.start_clock();
        let found = self.with_room(|heap| heap.large.alloc(n, align, &mut heap.map, heap.clock));
        match found.flatten() {
            Some((ptr, zeroed)) => Block { ptr, zeroed },
            None => Block::NONE,
        }
    }

    fn free_large(&mut self, block: *mut LargeBlock) {
        let now = self.large_stamp();
        self.large.free(block, &mut self.map, now);
    }

    fn resize_large(&mut self, block: *mut LargeBlock, n: usize) -> Resize {
        let now = self.large_stamp();
        self.with_room(|heap| heap.large.resize(block, n, &mut heap.map, now)).unwrap_or(Resize::Failed)
    }

    /// Runs `op`, an operation on large blocks. When the OS refused it a
    /// mapping and releasing the reserves can make room for that mapping,
    /// releases them and runs it once more; None if it still failed.
    #[inline(always)]
    fn with_room<T>(&mut self, mut op: impl FnMut(&mut Self) -> Result<T, NoSpace>) -> Option<T> {
        match op(self) {
            Ok(result) => Some(result),
            Err(refused) => self.retry_with_room(refused, op),
        }
    }

    #[cold]
    #[inline(never)]
    fn retry_with_room<T>(&mut self, refused: NoSpace, mut op: impl FnMut(&mut Self) -> Result<T, NoSpace>) -> Option<T> {
        if self.could_make_room(refused.len, refused.align) && self.release_reserves() {
            return op(self).ok();
        }
        None
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

    /// Gives back to the OS all memory that holds no live block: empty
    /// pools are decommitted, free arenas and cached mappings unmapped.
    /// True if anything was released.
    pub fn trim(&mut self) -> bool {
        self.release_reserves()
    }

    /// Gives back the whole pages inside the free blocks of pools in use
    /// (all of a free block but the page holding its link and key), as
    /// glibc's `malloc_trim` gives back its free chunks' pages; true if
    /// any went. Not for the debug mode, whose check of a block handed
    /// out again reads the poison of its freed bytes.
    pub fn release_free_block_pages(&mut self) -> Result<bool, Fault> {
        let mut released = false;
        for pool in self.multi_page_pools() {
            // SAFETY: pools on a used list are live.
            released |= Self::release_free_pages(unsafe { &*pool }, self.secret)?;
        }
        Ok(released)
    }

    /// Gives back the pages inside the free blocks of pools in use that
    /// have stayed as they were since the last look, a decay period ago
    /// (`tick`): the free list's head and the count of blocks handed out
    /// unchanged. A pool that changes is looked at again next time.
    pub fn shed_idle_blocks(&mut self) {
        for pool in self.multi_page_pools() {
            // SAFETY: pools on a used list are live, and ours under the
            // lock (in arenas' descriptors, not in the heap itself).
            let pool = unsafe { &mut *pool };
            let now = (pool.freeblock, pool.ref_count.get());
            if now != (pool.seen_head, pool.seen_count) {
                (pool.seen_head, pool.seen_count, pool.seen_shed) = (now.0, now.1, false);
            } else if !pool.seen_shed && now.1 > 0 {
                pool.seen_shed = true;
                // A corrupted link is left for the allocation that meets
                // it to report.
                let _ = Self::release_free_pages(pool, self.secret);
            }
        }
    }

    /// The used pools of the classes whose free blocks can give pages
    /// back (`MULTI_PAGE_CLASSES`). Each pool's successor is read before
    /// the pool is yielded; the caller must not unlink pools.
    fn multi_page_pools(&self) -> impl Iterator<Item = *mut Pool> + '_ {
        MULTI_PAGE_CLASSES.flat_map(|class| {
            let mut cur = self.usedpools[class];
            core::iter::from_fn(move || {
                // SAFETY: pools on a used list are live.
                let pool = unsafe { cur.as_ref() }?;
                let this = cur;
                cur = pool.nextpool;
                Some(this)
            })
        })
    }

    /// Gives back the whole pages inside `pool`'s free blocks past the
    /// page holding each one's link and key, those still resident (so a
    /// second call finds none); true if any went. Fails, having given
    /// back nothing, if a link is corrupted or the list does not hold
    /// exactly the blocks not handed out: a stale link that leads to a
    /// live block must not cost that block its pages.
    fn release_free_pages(pool: &Pool, secret: Secret) -> Result<bool, Fault> {
        if !pool.free_list_is_exact(secret)? {
            return Err(pool.corrupt_link(pool.freeblock));
        }
        let base = pool.base as usize;
        let mut resident = [0u8; MAX_POOL_PAGES];
        let resident = &mut resident[..(pool.size() / PAGE_SIZE).min(MAX_POOL_PAGES)];
        os::residency(pool.base, resident);
        let size = pool.block_size as usize;
        let mut released = false;
        pool.walk_free_list(secret, |block| {
            let from = os::page_round_up(block as usize + 2 * size_of::<usize>());
            let to = (block as usize + size) & !(PAGE_SIZE - 1);
            let pages = (from - base) / PAGE_SIZE..(to - base) / PAGE_SIZE;
            if from < to && resident.get(pages).is_none_or(|pages| pages.iter().any(|&page| page & 1 != 0)) {
                // SAFETY: pages of a free block past its link and key:
                // nothing reads them before it is handed out again, and
                // what it held then is unspecified.
                unsafe { os::decommit(from as *mut u8, to - from) };
                released = true;
            }
        })?;
        Ok(released)
    }

    pub fn arenas(&self) -> &Arenas {
        &self.arenas
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

    pub fn large(&self) -> &Large {
        &self.large
    }

    pub fn secret(&self) -> Secret {
        self.secret
    }
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
