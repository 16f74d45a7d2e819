//! Storage for the heap's own records (arena descriptors, large-block
//! descriptors): fixed-size slots carved from chunks mapped from the OS,
//! recycled through a free list. Never calls `malloc`.

use core::marker::PhantomData;
use core::ptr;

use crate::os;

const CHUNK_SIZE: usize = 256 << 10;

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

impl<T> Slab<T> {
    const SLOT: usize = {
        assert!(size_of::<T>() >= size_of::<FreeSlot>() && size_of::<T>() <= CHUNK_SIZE);
        size_of::<T>().next_multiple_of(64)
    };

    pub const fn new() -> Self {
        Slab { free: ptr::null_mut(), bump: 0, end: 0, _records: PhantomData }
    }

    /// An uninitialised slot for a `T`, or null when the OS refuses memory.
    pub fn alloc(&mut self) -> *mut T {
        if !self.free.is_null() {
            let slot = self.free;
            // SAFETY: slots on the free list were handed to `free` and hold
            // a FreeSlot written there.
            self.free = unsafe { (*slot).next };
            return slot.cast();
        }
        if self.end - self.bump < Self::SLOT {
            let chunk = os::map(CHUNK_SIZE);
            if chunk.is_null() {
                return ptr::null_mut();
            }
            // The rest of the old chunk (less than a slot) is abandoned.
            self.bump = chunk as usize;
            self.end = chunk as usize + CHUNK_SIZE;
        }
        let slot = self.bump;
        self.bump += Self::SLOT;
        slot as *mut T
    }

    /// Returns a slot for reuse.
    ///
    /// # Safety
    /// `record` came from `alloc` on this slab and is no longer used.
    pub unsafe fn free(&mut self, record: *mut T) {
        let slot = record.cast::<FreeSlot>();
        // SAFETY: the slot is ours, dead, 64-byte aligned and big enough.
        unsafe { slot.write(FreeSlot { next: self.free }) };
        self.free = slot;
    }
}
