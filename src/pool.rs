//! Pools: a stretch of an arena serving blocks of one size class.
//!
//! Pool headers live out of line, in their arena's descriptor, so a pool's
//! memory holds nothing but blocks (medium classes fill their pools
//! exactly, and decommitting a pool loses no bookkeeping).
//!
//! A pool is in one of four states:
//!
//! ```text
//! unborn  index >= arena.next_unused; no header yet
//! used    0 < ref_count, room left      linked in heap.usedpools[class]
//! full    no room left                  linked nowhere
//! empty   ref_count == 0                on its arena's free-pool list
//! ```
//!
//! except that each class may keep one empty pool on its used list, for
//! its next `malloc`, until it decays (`heap.kept`).
//!
//! Blocks are carved lazily (pymalloc's `nextoffset`/`maxnextoffset`): a
//! block is taken from the free list if there is one, else from the
//! never-used tail of the pool, so untouched memory stays untouched.

use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::geometry::MIN_ALIGN;
use crate::hardening::Secret;
use crate::list::Linked;
use crate::fault::Fault;
use crate::size_class::{class_info, is_multiple};

/// A count that changes under the heap lock while other threads read it
/// without the lock: the thread cache's `free` checks a block against its
/// pool's `ref_count` and `nextoffset` and its arena's `next_unused`
/// (`Heap::live_block`). Only lock holders write it, so a relaxed
/// load and store are enough (plain moves on x86-64 and aarch64); the
/// atomic makes the unlocked read well defined.
pub struct Shared(AtomicU32);

impl Shared {
    pub const fn new(value: u32) -> Shared {
        Shared(AtomicU32::new(value))
    }

    #[inline(always)]
    pub fn get(&self) -> u32 {
        self.0.load(Relaxed)
    }

    /// Only with the heap lock held (or on a heap no other thread sees).
    #[inline(always)]
    pub fn set(&self, value: u32) {
        self.0.store(value, Relaxed)
    }
}

/// The `class` of a pool that has never served a class since it was born
/// or decommitted.
pub const NO_CLASS: u8 = u8::MAX;

pub struct Pool {
    /// Head of the list of freed blocks, linked through each block's first
    /// word (mangled, see `hardening`); null when empty.
    pub freeblock: *mut u8,
    /// Neighbours in `usedpools[class]` (used pools), or `nextpool` only in
    /// the arena's free-pool list (empty pools).
    pub nextpool: *mut Pool,
    pub prevpool: *mut Pool,
    /// The pool's first byte (aligned to the pool size).
    pub base: *mut u8,
    /// log2 of the pool's size (its arena's tier's). A pool does not
    /// point to its arena: the arena map names it (`Heap::arena_of`).
    pub shift: u8,
    /// Blocks handed out and not yet freed.
    pub ref_count: Shared,
    /// Offset of the first never-carved block.
    pub nextoffset: Shared,
    /// Last offset at which a whole block still fits.
    pub maxnextoffset: u32,
    /// Offsets at and above this have not been written since the OS
    /// zeroed them: blocks carved there need no clearing for `calloc`.
    pub dirty_end: u32,
    pub block_size: u32,
    /// `class_info(class).multiple_magic`, here for `is_carved_block`.
    pub multiple_magic: u64,
    pub class: u8,
    /// On the heap's list of empty pools whose memory is still committed
    /// (`purge::DirtyPools`), since `emptied_at` (ms).
    pub dirty_listed: bool,
    pub dirty_prev: *mut Pool,
    pub dirty_next: *mut Pool,
    pub emptied_at: u64,
    /// The free list's head and `ref_count` when the heap last looked
    /// for idle pools in use (`Heap::shed_idle_blocks`), and whether it
    /// gave back their free blocks' pages then.
    pub seen_head: *mut u8,
    pub seen_count: u32,
    pub seen_shed: bool,
}

impl Pool {
    /// Header of a pool being born at `base`; `dirty_end` is how much of
    /// its memory may have been written by an earlier tenant.
    pub fn unborn(base: *mut u8, shift: u32, dirty_end: u32) -> Pool {
        Pool {
            freeblock: ptr::null_mut(),
            nextpool: ptr::null_mut(),
            prevpool: ptr::null_mut(),
            base,
            shift: shift as u8,
            ref_count: Shared::new(0),
            nextoffset: Shared::new(0),
            maxnextoffset: 0,
            dirty_end,
            block_size: 0,
            multiple_magic: 0,
            class: NO_CLASS,
            dirty_listed: false,
            dirty_prev: ptr::null_mut(),
            dirty_next: ptr::null_mut(),
            emptied_at: 0,
            seen_head: ptr::null_mut(),
            seen_count: 0,
            seen_shed: false,
        }
    }

    pub fn size(&self) -> usize {
        1 << self.shift
    }

    /// Prepares an empty pool to serve `class`. A pool that last served
    /// the same class keeps its free list (all of its blocks are on it),
    /// as in pymalloc.
    pub fn init(&mut self, class: usize) {
        debug_assert_eq!(self.ref_count.get(), 0);
        if self.class as usize == class {
            return;
        }
        let info = class_info(class);
        let size = info.size;
        self.class = class as u8;
        self.block_size = size;
        self.multiple_magic = info.multiple_magic;
        self.freeblock = ptr::null_mut();
        self.nextoffset.set(0);
        self.maxnextoffset = self.size() as u32 - size;
    }

    /// Forgets the pool's blocks after its memory was decommitted (the
    /// pages read as zero again).
    pub fn decommitted(&mut self) {
        debug_assert_eq!(self.ref_count.get(), 0);
        self.class = NO_CLASS;
        self.freeblock = ptr::null_mut();
        self.nextoffset.set(0);
        self.dirty_end = 0;
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.freeblock.is_null() && self.nextoffset.get() > self.maxnextoffset
    }

    /// Takes a block from a pool that is not full. Returns the block and
    /// whether its bytes are known to be zero; None, changing nothing,
    /// when the head of the free list holds a corrupted link.
    #[inline(always)]
    pub fn alloc(&mut self, secret: Secret) -> Option<(*mut u8, bool)> {
        debug_assert!(!self.is_full());
        let block = self.freeblock;
        if !block.is_null() {
            // SAFETY: the head of the free list is a free block of this
            // pool, holding its link in its first word (written by `free`).
            let next = secret.demangle(block, unsafe { block.cast::<usize>().read() });
            if !self.is_link(next) {
                return None;
            }
            if !cfg!(feature = "unchecked") {
                // SAFETY: every block has at least two words; this one is
                // ours until returned. Clears the free-block key.
                unsafe { block.cast::<usize>().add(1).write(0) };
            }
            self.freeblock = next;
            self.ref_count.set(self.ref_count.get() + 1);
            return Some((block, false));
        }
        let offset = self.nextoffset.get();
        let end = offset + self.block_size;
        self.nextoffset.set(end);
        let zeroed = offset >= self.dirty_end;
        if end > self.dirty_end {
            self.dirty_end = end;
        }
        self.ref_count.set(self.ref_count.get() + 1);
        // SAFETY: offset <= maxnextoffset, so the block lies in the pool.
        let block = unsafe { self.base.add(offset as usize) };
        if !zeroed && !cfg!(feature = "unchecked") {
            // Memory an earlier tenant of the pool wrote may hold the key
            // where this block's second word is: clear it, or `free` would
            // take the block for a free one and walk the free list.
            // SAFETY: as above; every block has at least two words.
            unsafe { block.cast::<usize>().add(1).write(0) };
        }
        Some((block, zeroed))
    }

    /// Puts a block back on the free list, marked with the free-block key.
    ///
    /// # Safety
    /// `block` must be a live block of this pool (see `is_carved_block`
    /// and `is_free`).
    #[inline(always)]
    pub unsafe fn free(&mut self, block: *mut u8, secret: Secret) {
        // SAFETY: the block is ours and dead; its first two words become
        // the link and the key.
        unsafe {
            block.cast::<usize>().write(secret.mangle(block, self.freeblock));
            if !cfg!(feature = "unchecked") {
                block.cast::<usize>().add(1).write(secret.key_at(block));
            }
        }
        self.freeblock = block;
        self.ref_count.set(self.ref_count.get() - 1);
    }

    /// True if `addr` is the first byte of a block this pool has carved,
    /// live or free (not an interior pointer, not beyond the carved part).
    #[inline(always)]
    pub fn is_carved_block(&self, addr: usize) -> bool {
        let offset = addr.wrapping_sub(self.base as usize);
        if offset >= self.nextoffset.get() as usize {
            return false;
        }
        is_multiple(offset as u64, self.multiple_magic)
    }

    /// The cheap test of `free`: true if `addr` is a carved block that does
    /// not carry its free-block key. With `ref_count > 0` (the caller's to
    /// check) that is a live block; false proves nothing: the caller
    /// examines the pointer with `is_carved_block`, `on_free_list` and the
    /// thread caches.
    #[inline(always)]
    pub fn is_unkeyed_carved_block(&self, addr: *mut u8, secret: Secret) -> bool {
        if !self.is_carved_block(addr as usize) {
            return false;
        }
        // SAFETY: a carved block: mapped, and at least two words long.
        cfg!(feature = "unchecked") || unsafe { addr.cast::<usize>().add(1).read() } != secret.key_at(addr)
    }

    /// Whether the carved block at `addr` holds its free-block key in its
    /// second word: a hint that it is free (on this pool's list or in a
    /// thread cache), not proof (see `hardening`).
    pub fn holds_key(&self, addr: *mut u8, secret: Secret) -> bool {
        // SAFETY: callers pass carved blocks: mapped, two words at least.
        !cfg!(feature = "unchecked") && unsafe { addr.cast::<usize>().add(1).read() } == secret.key_at(addr)
    }

    /// `is_unkeyed_carved_block` for the thread cache's `free`, without the heap
    /// lock: the class of `addr` if it is a carved block of a pool with
    /// live blocks that does not hold its key.
    ///
    /// Sound without the lock: for a block the program holds, the pool's
    /// `base`, `multiple_magic` and `class` were written before the
    /// block was handed out and stay until the pool is empty, which the
    /// block prevents; `ref_count` and `nextoffset` change under the lock
    /// meanwhile, so they are atomics (`Shared`), and every value they
    /// take while the block is live says "live, carved" (at least 1, and
    /// beyond the block). Fields are read through raw pointers: no
    /// reference to a header another thread may be changing.
    ///
    /// # Safety
    /// `pool` is a born pool header of a live arena.
    #[inline(always)]
    pub unsafe fn live_block_class(pool: *const Pool, addr: *mut u8, secret: Secret) -> Option<usize> {
        // SAFETY: see above.
        unsafe {
            if (*pool).ref_count.get() == 0 {
                return None;
            }
            let offset = (addr as usize).wrapping_sub((&raw const (*pool).base).read() as usize);
            if offset >= (*pool).nextoffset.get() as usize {
                return None;
            }
            if !is_multiple(offset as u64, (&raw const (*pool).multiple_magic).read()) {
                return None;
            }
            // A carved block of a pool with live blocks: mapped, two words.
            if !cfg!(feature = "unchecked") && addr.cast::<usize>().add(1).read() == secret.key_at(addr) {
                return None;
            }
            Some((&raw const (*pool).class).read() as usize)
        }
    }

    /// Whether `block` is on the free list; fails if the walk meets a
    /// corrupted link.
    #[cold]
    pub fn on_free_list(&self, block: *mut u8, secret: Secret) -> Result<bool, Fault> {
        let mut found = false;
        self.walk_free_list(secret, |free| found |= free == block)?;
        Ok(found)
    }

    /// Whether the free list holds exactly the carved blocks not handed
    /// out (`ref_count` + free blocks = carved blocks), as it must; fails
    /// at a corrupted link.
    pub fn free_list_is_exact(&self, secret: Secret) -> Result<bool, Fault> {
        let free = self.walk_free_list(secret, |_| {})?;
        Ok(Some(self.ref_count.get() + free) == self.nextoffset.get().checked_div(self.block_size))
    }

    /// Calls `f` on every block of the free list, checking every link
    /// exactly (carved block boundary) and that the list has no cycle.
    pub fn walk_free_list(&self, secret: Secret, mut f: impl FnMut(*mut u8)) -> Result<u32, Fault> {
        let mut count = 0;
        let mut cur = self.freeblock;
        while !cur.is_null() {
            f(cur);
            count += 1;
            // SAFETY: cur is the head or a link validated below: a carved
            // block of this pool.
            let next = secret.demangle(cur, unsafe { cur.cast::<usize>().read() });
            let cycle = count > self.capacity();
            if cycle || !(next.is_null() || self.is_carved_block(next as usize)) {
                return Err(self.corrupt_link(cur));
            }
            cur = next;
        }
        Ok(count)
    }

    /// Whether a demangled link may be followed: the end of the list, or
    /// an aligned address in the carved part of the pool. (The exact block
    /// boundary is checked by `walk_free_list`; this is the cheap test of
    /// every `malloc`.)
    #[inline(always)]
    fn is_link(&self, next: *mut u8) -> bool {
        if cfg!(feature = "unchecked") {
            return true;
        }
        let offset = (next as usize).wrapping_sub(self.base as usize);
        // Rotating moves a misaligned offset's low bits to the top, so one
        // comparison checks both (block sizes are multiples of MIN_ALIGN).
        let shift = MIN_ALIGN.trailing_zeros();
        next.is_null() || offset.rotate_right(shift) < (self.nextoffset.get() >> shift) as usize
    }

    /// The fault of a corrupted link held by the free block `at`.
    #[cold]
    pub fn corrupt_link(&self, at: *mut u8) -> Fault {
        Fault::CorruptFreeList { at, class_size: self.block_size as usize }
    }

    /// Blocks the pool can hold (0 before it serves a class).
    pub fn capacity(&self) -> u32 {
        core::num::NonZeroU32::new(self.block_size).map_or(0, |size| self.maxnextoffset / size + 1)
    }
}

/// Among the dirty pools (`purge::DirtyPools`): `dirty_next` is newer,
/// `dirty_prev` older.
impl Linked for Pool {
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self) {
        (&mut self.dirty_next, &mut self.dirty_prev)
    }
}
