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
//! Blocks are carved lazily (pymalloc's `nextoffset`/`maxnextoffset`): a
//! block is taken from the free list if there is one, else from the
//! never-used tail of the pool, so untouched memory stays untouched.

use core::ptr;

use crate::arena::Arena;
use crate::size_class::{RECIP_SHIFT, class_info};

/// The `class` of a pool that has never served a class since it was born
/// or decommitted.
pub const NO_CLASS: u8 = u8::MAX;

pub struct Pool {
    /// Head of the list of freed blocks, linked through each block's first
    /// word; null when empty.
    pub freeblock: *mut u8,
    /// Neighbours in `usedpools[class]` (used pools), or `nextpool` only in
    /// the arena's free-pool list (empty pools).
    pub nextpool: *mut Pool,
    pub prevpool: *mut Pool,
    /// The pool's first byte (aligned to the pool size).
    pub base: *mut u8,
    pub arena: *mut Arena,
    /// Blocks handed out and not yet freed.
    pub ref_count: u32,
    /// Offset of the first never-carved block.
    pub nextoffset: u32,
    /// Last offset at which a whole block still fits.
    pub maxnextoffset: u32,
    /// Offsets at and above this have not been written since the OS
    /// zeroed them: blocks carved there need no clearing for `calloc`.
    pub dirty_end: u32,
    pub block_size: u32,
    pub class: u8,
}

impl Pool {
    /// Header of a pool being born at `base`; `dirty_end` is how much of
    /// its memory may have been written by an earlier tenant.
    pub fn unborn(base: *mut u8, arena: *mut Arena, dirty_end: u32) -> Pool {
        Pool {
            freeblock: ptr::null_mut(),
            nextpool: ptr::null_mut(),
            prevpool: ptr::null_mut(),
            base,
            arena,
            ref_count: 0,
            nextoffset: 0,
            maxnextoffset: 0,
            dirty_end,
            block_size: 0,
            class: NO_CLASS,
        }
    }

    /// Prepares an empty pool of `pool_size` bytes to serve `class`. A pool
    /// that last served the same class keeps its free list (all of its
    /// blocks are on it), as in pymalloc.
    pub fn init(&mut self, class: usize, pool_size: usize) {
        debug_assert_eq!(self.ref_count, 0);
        if self.class as usize == class {
            return;
        }
        let size = class_info(class).size;
        self.class = class as u8;
        self.block_size = size;
        self.freeblock = ptr::null_mut();
        self.nextoffset = 0;
        self.maxnextoffset = pool_size as u32 - size;
    }

    /// Forgets the pool's blocks after its memory was decommitted (the
    /// pages read as zero again).
    pub fn decommitted(&mut self) {
        debug_assert_eq!(self.ref_count, 0);
        self.class = NO_CLASS;
        self.freeblock = ptr::null_mut();
        self.nextoffset = 0;
        self.dirty_end = 0;
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.freeblock.is_null() && self.nextoffset > self.maxnextoffset
    }

    /// Takes a block from a pool that is not full. Returns the block and
    /// whether its bytes are known to be zero.
    #[inline(always)]
    pub fn alloc(&mut self) -> (*mut u8, bool) {
        debug_assert!(!self.is_full());
        self.ref_count += 1;
        let block = self.freeblock;
        if !block.is_null() {
            // SAFETY: a block on the free list is inside this pool and
            // holds the next link in its first word (written by `free`).
            self.freeblock = unsafe { block.cast::<*mut u8>().read() };
            return (block, false);
        }
        let offset = self.nextoffset;
        self.nextoffset = offset + self.block_size;
        let zeroed = offset >= self.dirty_end;
        if self.nextoffset > self.dirty_end {
            self.dirty_end = self.nextoffset;
        }
        // SAFETY: offset <= maxnextoffset, so the block lies in the pool.
        (unsafe { self.base.add(offset as usize) }, zeroed)
    }

    /// Puts a block back on the free list.
    ///
    /// # Safety
    /// `block` must be a live block of this pool (see `owns_block`).
    #[inline(always)]
    pub unsafe fn free(&mut self, block: *mut u8) {
        // SAFETY: the block is ours and dead; its first word becomes the link.
        unsafe { block.cast::<*mut u8>().write(self.freeblock) };
        self.freeblock = block;
        self.ref_count -= 1;
    }

    /// True if `addr` is the first byte of a block this pool has handed
    /// out (not an interior pointer, not beyond the carved part).
    #[inline(always)]
    pub fn owns_block(&self, addr: usize) -> bool {
        if self.ref_count == 0 {
            return false;
        }
        let offset = addr.wrapping_sub(self.base as usize);
        if offset >= self.nextoffset as usize {
            return false;
        }
        let index = (offset as u64 * class_info(self.class as usize).recip) >> RECIP_SHIFT;
        index * self.block_size as u64 == offset as u64
    }

    /// Blocks the pool can hold (0 before it serves a class).
    pub fn capacity(&self) -> u32 {
        core::num::NonZeroU32::new(self.block_size).map_or(0, |size| self.maxnextoffset / size + 1)
    }
}
