//! Storage for the heap's own records (arena descriptors, large-block
//! descriptors): fixed-size slots carved from chunks mapped from the OS,
//! recycled through a free list. Never calls `malloc`.
//!
//! Chunks are aligned to their size and count their live slots in a
//! header at their start, so a chunk whose records are all freed (after a
//! program shrinks from many arenas to few) goes back to the OS.

use core::marker::PhantomData;
use core::ptr;

use crate::os;

const CHUNK_SIZE: usize = 256 << 10;
/// The chunk header: its count of live slots, padded to a slot boundary.
const HEADER: usize = 64;

pub struct Slab<T> {
    free: *mut FreeSlot,
    /// Unused tail of the newest chunk.
    bump: usize,
    end: usize,
    _records: PhantomData<T>,
}

struct FreeSlot {
    next: *mut FreeSlot,
}

/// The live-slot count in the header of the chunk holding `slot`.
fn live_count(slot: usize) -> *mut usize {
    (slot & !(CHUNK_SIZE - 1)) as *mut usize
}

impl<T> Slab<T> {
    const SLOT: usize = {
        assert!(size_of::<T>() >= size_of::<FreeSlot>() && HEADER + size_of::<T>() <= CHUNK_SIZE);
        size_of::<T>().next_multiple_of(64)
    };

    pub const fn new() -> Self {
        Slab { free: ptr::null_mut(), bump: 0, end: 0, _records: PhantomData }
    }

    /// An uninitialised slot for a `T`, or null when the OS refuses memory.
    pub fn alloc(&mut self) -> *mut T {
        let slot = if !self.free.is_null() {
            let slot = self.free;
            // SAFETY: slots on the free list were handed to `free` and hold
            // a FreeSlot written there.
            self.free = unsafe { (*slot).next };
            slot as usize
        } else {
            if self.end - self.bump < Self::SLOT {
                let chunk = os::map_aligned(CHUNK_SIZE, CHUNK_SIZE);
                if chunk.is_null() {
                    return ptr::null_mut();
                }
                // The rest of the old chunk (less than a slot) is abandoned.
                self.bump = chunk as usize + HEADER;
                self.end = chunk as usize + CHUNK_SIZE;
            }
            let slot = self.bump;
            self.bump += Self::SLOT;
            slot
        };
        // SAFETY: every slot lies in a live chunk whose header is ours.
        unsafe { *live_count(slot) += 1 };
        slot as *mut T
    }

    /// Returns a slot for reuse; its chunk goes back to the OS when this
    /// was its last live slot (and it is not the chunk still being carved).
    ///
    /// # Safety
    /// `record` came from `alloc` on this slab and is no longer used.
    pub unsafe fn free(&mut self, record: *mut T) {
        let slot = record as usize;
        let live = live_count(slot);
        // SAFETY: the slot's chunk is live while it holds a live slot.
        unsafe {
            *live -= 1;
            if *live == 0 && !(live as usize..live as usize + CHUNK_SIZE).contains(&self.bump) {
                self.release_chunk(live as usize);
                return;
            }
        }
        let slot = record.cast::<FreeSlot>();
        // SAFETY: the slot is ours, dead, 64-byte aligned and big enough.
        unsafe { slot.write(FreeSlot { next: self.free }) };
        self.free = slot;
    }

    /// Unlinks every free slot of an empty chunk and unmaps it.
    ///
    /// # Safety
    /// No slot of the chunk may be live.
    unsafe fn release_chunk(&mut self, chunk: usize) {
        let inside = |p: *mut FreeSlot| (chunk..chunk + CHUNK_SIZE).contains(&(p as usize));
        let mut link: *mut *mut FreeSlot = &mut self.free;
        // SAFETY: the free list holds dead slots of live chunks.
        unsafe {
            while !(*link).is_null() {
                if inside(*link) {
                    *link = (**link).next;
                } else {
                    link = &raw mut (**link).next;
                }
            }
            os::unmap(chunk as *mut u8, CHUNK_SIZE);
        }
    }
}
