//! The arena map: which arena or large block owns an address
//! (CPython's `arena_map`, a two-level radix tree).
//!
//! The address space (48 bits) is cut into granules of `GRANULE_SIZE`
//! bytes. The root is a static array; a leaf (one per 8 GiB of address
//! space in use) comes from `os::map`, never from `malloc`, and is never
//! freed. An entry names the owner of its granule:
//!
//! - every granule of an arena (arenas are aligned, so they own whole
//!   granules);
//! - the granule holding the first byte of a large block. Large blocks are
//!   at least one granule long, so no granule holds two of them, and a
//!   lookup must also check that the pointer is the block's first byte.
//!
//! A pointer we never handed out finds no entry (or fails that check)
//! instead of being dereferenced.

use core::ptr;

use crate::arena::Arena;
use crate::geometry::GRANULE_SHIFT;
use crate::large_block::LargeBlock;
use crate::os;
use crate::pool::Pool;

const ADDRESS_BITS: u32 = 48;
const KEY_BITS: u32 = ADDRESS_BITS - GRANULE_SHIFT;
const LEAF_BITS: u32 = 16;
const ROOT_BITS: u32 = KEY_BITS - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;

type Leaf = [usize; LEAF_LEN];

/// Low bit of an entry: set for an arena, clear for a large block (so
/// that `arena_of`, on the path of every `free`, tests one bit).
const ARENA_TAG: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Owner {
    Arena(*mut Arena),
    Large(*mut LargeBlock),
}

impl Owner {
    fn encode(self) -> usize {
        match self {
            Owner::Arena(a) => a as usize | ARENA_TAG,
            Owner::Large(l) => l as usize,
        }
    }

    fn decode(entry: usize) -> Option<Owner> {
        match entry {
            0 => None,
            e if e & ARENA_TAG != 0 => Some(Owner::Arena((e - ARENA_TAG) as *mut Arena)),
            e => Some(Owner::Large(e as *mut LargeBlock)),
        }
    }
}

pub struct ArenaMap {
    root: [*mut Leaf; 1 << ROOT_BITS],
}

/// Splits an address into (root index, leaf index), or None when it lies
/// outside the 48-bit space we can map.
#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    let key = addr >> GRANULE_SHIFT;
    if key >> KEY_BITS != 0 {
        return None;
    }
    Some((key >> LEAF_BITS, key & (LEAF_LEN - 1)))
}

impl ArenaMap {
    pub const fn new() -> Self {
        ArenaMap { root: [ptr::null_mut(); 1 << ROOT_BITS] }
    }

    /// The owner of the granule holding `addr`, if any.
    #[inline(always)]
    pub fn get(&self, addr: usize) -> Option<Owner> {
        let (hi, lo) = split(addr)?;
        let leaf = self.root[hi];
        if leaf.is_null() {
            return None;
        }
        // SAFETY: a non-null root entry is a leaf mapped by `entry_mut`,
        // never unmapped, and `lo < LEAF_LEN`.
        Owner::decode(unsafe { (*leaf)[lo] })
    }

    /// The arena owning the granule of `addr`, or null (no owner, or a
    /// large block): `get` for the fast path of `free`. An address beyond
    /// 48 bits is not rejected but masked into the map: the arena it may
    /// find does not contain it, which the caller's `Arena::pool_at`
    /// detects.
    ///
    /// Takes a raw pointer and reads only the two entries on the way, so
    /// that the thread cache may call it without the heap lock (see
    /// `Heap::live_block`): a root entry never changes once set, and
    /// a granule's entry does not change while a block in it is live.
    ///
    /// # Safety
    /// `map` points to a live map.
    #[inline(always)]
    pub unsafe fn arena_of(map: *const ArenaMap, addr: usize) -> *mut Arena {
        let key = addr >> GRANULE_SHIFT;
        // SAFETY: the mask keeps the index inside the root.
        let leaf = unsafe { (&raw const (*map).root).cast::<*mut Leaf>().add((key >> LEAF_BITS) & ((1 << ROOT_BITS) - 1)).read() };
        if leaf.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: as in `get`; the mask keeps the index inside the leaf.
        let entry = unsafe { leaf.cast::<usize>().add(key & (LEAF_LEN - 1)).read() };
        if entry & ARENA_TAG == 0 {
            return ptr::null_mut();
        }
        // SAFETY: a tagged entry encodes a live descriptor, never null.
        unsafe { core::hint::assert_unchecked(entry != ARENA_TAG) };
        (entry - ARENA_TAG) as *mut Arena
    }

    /// The lookup of every `free`: the header of the born pool holding
    /// `addr`, or None (no arena of ours there, or a pool never born). A
    /// pointer into a large block, or none of ours, finds None. Lock-free
    /// as `arena_of`, whose conditions it shares: for a block the program
    /// holds, the answer cannot change under it.
    ///
    /// # Safety
    /// `map` points to a live map.
    #[inline(always)]
    pub unsafe fn pool_of(map: *const ArenaMap, addr: usize) -> Option<*mut Pool> {
        // SAFETY: as the caller guarantees; the map names live arenas only.
        unsafe {
            let arena = Self::arena_of(map, addr);
            if arena.is_null() {
                return None;
            }
            Arena::pool_at(arena, addr)
        }
    }

    /// Records `owner` for every granule of `start..start+len`; false (and
    /// nothing recorded) if a leaf could not be mapped.
    pub fn insert(&mut self, start: usize, len: usize, owner: Owner) -> bool {
        let mut addr = start;
        while addr < start + len {
            match self.entry_mut(addr) {
                Some(entry) => *entry = owner.encode(),
                None => {
                    self.remove(start, addr - start);
                    return false;
                }
            }
            addr += 1 << GRANULE_SHIFT;
        }
        true
    }

    /// Forgets the owner of every granule of `start..start+len`.
    pub fn remove(&mut self, start: usize, len: usize) {
        let mut addr = start;
        while addr < start + len {
            if let Some((hi, lo)) = split(addr) {
                let leaf = self.root[hi];
                if !leaf.is_null() {
                    // SAFETY: as in `get`.
                    unsafe { (*leaf)[lo] = 0 };
                }
            }
            addr += 1 << GRANULE_SHIFT;
        }
    }

    /// Calls `f` on every large block in the map.
    pub fn for_each_large(&self, mut f: impl FnMut(*mut LargeBlock)) {
        for &leaf in self.root.iter().filter(|leaf| !leaf.is_null()) {
            // SAFETY: as in `get`.
            for &entry in unsafe { (*leaf).iter() } {
                if let Some(Owner::Large(block)) = Owner::decode(entry) {
                    f(block);
                }
            }
        }
    }

    fn entry_mut(&mut self, addr: usize) -> Option<&mut usize> {
        let (hi, lo) = split(addr)?;
        if self.root[hi].is_null() {
            let leaf = os::map(size_of::<Leaf>());
            if leaf.is_null() {
                return None;
            }
            self.root[hi] = leaf.cast();
        }
        // SAFETY: the leaf is mapped, zero-initialised (all entries empty)
        // and owned by this map; `lo < LEAF_LEN`.
        Some(unsafe { &mut (*self.root[hi])[lo] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::GRANULE_SIZE;

    #[test]
    fn insert_get_remove() {
        let mut map = Box::new(ArenaMap::new());
        let arena = 0x10_0000 as *mut Arena;
        let large = 0x20_0040 as *mut LargeBlock;
        let base = 0x7f00_0000_0000usize;
        assert!(map.insert(base, 4 * GRANULE_SIZE, Owner::Arena(arena)));
        assert!(map.insert(base + 8 * GRANULE_SIZE, GRANULE_SIZE, Owner::Large(large)));
        assert_eq!(map.get(base), Some(Owner::Arena(arena)));
        assert_eq!(map.get(base + 4 * GRANULE_SIZE - 1), Some(Owner::Arena(arena)));
        assert_eq!(map.get(base + 4 * GRANULE_SIZE), None);
        assert_eq!(map.get(base + 8 * GRANULE_SIZE + 5), Some(Owner::Large(large)));
        assert_eq!(map.get(usize::MAX), None);
        assert_eq!(map.get(1 << 48), None);
        assert_eq!(map.get(0x1000), None);
        map.remove(base, 4 * GRANULE_SIZE);
        assert_eq!(map.get(base), None);
        assert_eq!(map.get(base + 8 * GRANULE_SIZE), Some(Owner::Large(large)));
    }

    #[test]
    fn refuses_addresses_beyond_48_bits() {
        let mut map = Box::new(ArenaMap::new());
        assert!(!map.insert(1 << 50, GRANULE_SIZE, Owner::Arena(0x1000 as *mut Arena)));
    }
}
