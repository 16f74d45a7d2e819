//! The depot: whole bins of free blocks parked between the thread caches,
//! under the heap lock (tcmalloc's transfer cache).
//!
//! ```text
//!  a bin full at its grown bound ──► park the whole list ──► depot[class]
//!  a bin empty                   ◄── take a whole list   ◄──┘
//!                 parked for PYMALLOC_DECAY_MS, or malloc_trim:
//!                 each block checked and given back to its pool
//! ```
//!
//! A parked list is a bin's list as it was: `count` blocks, each holding
//! its mangled link and its free-block key (`thread_cache`). Parking and
//! taking neither walk the blocks nor look them up: they were checked
//! when they entered a cache, and their pools count them as handed out
//! until they are given back. So a burst of frees longer than a bin
//! (Python freeing a structure of 20,000 objects, then building the next),
//! and blocks that one thread frees and another allocates, cost one lock
//! per bin instead of a lookup and a pool operation per block, twice.
//!
//! Bounds: `SLOTS` lists per class and, in all, `LIMIT_FACTOR` times a
//! thread cache's limit (`PYMALLOC_THREAD_CACHE`); past them a full bin
//! gives half its blocks back to their pools, as without the depot. A
//! list parked for `PYMALLOC_DECAY_MS` goes back to its pools (`expire`,
//! on a cache's tick), as does everything on `malloc_trim`, checked block
//! by block as a flush checks a bin (`give_back`). The double-free search
//! and `pymalloc_check_heap` look here too (`contains`, `check`).

use core::cell::UnsafeCell;
use core::ptr;

use crate::config;
use crate::fault::Fault;
use crate::heap::{HEAP, Heap};
use crate::size_class::{CACHED_CLASSES, size_of};

/// Lists parked at most per class.
const SLOTS: usize = 32;
/// The depot holds at most this many times a thread cache's byte limit.
const LIMIT_FACTOR: usize = 8;

#[derive(Clone, Copy)]
struct Parked {
    head: *mut u8,
    count: u32,
    /// The heap's clock when it was parked.
    at: u64,
}

const EMPTY: Parked = Parked { head: ptr::null_mut(), count: 0, at: 0 };

/// Per class, `used` lists in `lists`, oldest first.
#[derive(Clone, Copy)]
struct Shelf {
    lists: [Parked; SLOTS],
    used: usize,
}

impl Shelf {
    fn parked(&self) -> &[Parked] {
        &self.lists[..self.used.min(SLOTS)]
    }
}

struct Depot {
    shelves: [Shelf; CACHED_CLASSES],
    /// Bytes of every parked block.
    bytes: usize,
}

struct DepotCell(UnsafeCell<Depot>);

// SAFETY: only reached through `get`, with the heap lock held.
unsafe impl Sync for DepotCell {}

static DEPOT: DepotCell =
    DepotCell(UnsafeCell::new(Depot { shelves: [Shelf { lists: [EMPTY; SLOTS], used: 0 }; CACHED_CLASSES], bytes: 0 }));

/// The depot, for the holder of the heap lock (`locked` is its guard's
/// heap); the result must be dropped before the lock is released. It
/// belongs to `HEAP`: a heap of the tests' own (the model tests make
/// theirs) has none.
#[allow(clippy::mut_from_ref)]
fn get(locked: &Heap) -> Option<&'static mut Depot> {
    // SAFETY: the heap lock serialises every use, and no caller keeps the
    // reference past its own call (so no two are alive at once).
    ptr::eq(locked, HEAP.data_ptr()).then(|| unsafe { &mut *DEPOT.0.get() })
}

/// Parks the `count` blocks of `class` listed from `head` (a bin's whole
/// list, which the caller gives up); false, and nothing parked, when the
/// depot has no room for them.
pub fn park(heap: &Heap, class: usize, head: *mut u8, count: u32) -> bool {
    let at = heap.clock();
    let Some(depot) = get(heap) else { return false };
    let bytes = count as usize * size_of(class);
    let limit = config::get().thread_cache.saturating_mul(LIMIT_FACTOR);
    let Some(shelf) = depot.shelves.get_mut(class) else { return false };
    let Some(slot) = shelf.lists.get_mut(shelf.used) else { return false };
    if count == 0 || depot.bytes + bytes > limit {
        return false;
    }
    *slot = Parked { head, count, at };
    shelf.used += 1;
    depot.bytes += bytes;
    true
}

/// Takes the list of `class` parked last (its blocks are the likeliest to
/// be in the CPU's caches) if it holds at most `room` bytes: its head and
/// count, for the caller's empty bin.
pub fn take(heap: &Heap, class: usize, room: usize) -> Option<(*mut u8, u32)> {
    let depot = get(heap)?;
    let shelf = depot.shelves.get_mut(class)?;
    let last = *shelf.parked().last()?;
    let bytes = last.count as usize * size_of(class);
    if bytes > room {
        return None;
    }
    shelf.used -= 1;
    depot.bytes -= bytes;
    Some((last.head, last.count))
}

/// Gives the `count` blocks listed from `head` (of `class`) back to their
/// pools, each checked as a block a thread cache holds
/// (`Heap::pool_of_cached`). A block that fails the check, or a list that
/// goes on past its count, is a fault: the list is abandoned there.
fn give_back(heap: &mut Heap, class: usize, head: *mut u8, count: u32) -> Result<(), Fault> {
    let secret = heap.secret();
    let fault = |at| Fault::CorruptFreeList { at, class_size: size_of(class) };
    let (mut block, mut holder) = (head, ptr::null_mut());
    for _ in 0..count {
        let pool = heap.pool_of_cached(block, class).ok_or(fault(holder))?;
        // SAFETY: the heap vouched for the block: a carved block of ours,
        // at least 16 bytes, holding our link until it is freed.
        let next = secret.demangle(block, unsafe { block.cast::<usize>().read() });
        // SAFETY: `pool` is the block's pool, as just checked.
        unsafe { heap.free_cached(pool, block) };
        (holder, block) = (block, next);
    }
    if block.is_null() { Ok(()) } else { Err(fault(holder)) }
}

/// Gives back to their pools the lists parked at or before `cutoff` (the
/// heap's clock, ms); `u64::MAX` gives back everything (`malloc_trim`).
/// A corrupted list is reported after the others went back.
pub fn expire(heap: &mut Heap, cutoff: u64) -> Result<(), Fault> {
    let mut result = Ok(());
    for class in 0..CACHED_CLASSES {
        while let Some(oldest) = unpark_oldest(heap, class, cutoff) {
            result = result.and(give_back(heap, class, oldest.head, oldest.count));
        }
    }
    result
}

/// Takes out the oldest list of `class` if it was parked at or before
/// `cutoff`.
fn unpark_oldest(heap: &Heap, class: usize, cutoff: u64) -> Option<Parked> {
    let depot = get(heap)?;
    let shelf = depot.shelves.get_mut(class)?;
    let oldest = *shelf.parked().first()?;
    if oldest.at > cutoff {
        return None;
    }
    shelf.lists.rotate_left(1);
    shelf.used -= 1;
    depot.bytes -= oldest.count as usize * size_of(class);
    Some(oldest)
}

/// Whether the block `p` of `class` is on a parked list (the double-free
/// search). Each list is followed at most its count, and only through
/// blocks of the class that the heap counts as handed out.
pub fn contains(heap: &Heap, p: *mut u8, class: usize) -> bool {
    let secret = heap.secret();
    let Some(shelf) = get(heap).and_then(|depot| depot.shelves.get(class)) else { return false };
    shelf.parked().iter().any(|list| {
        let mut block = list.head;
        for _ in 0..list.count {
            if block == p {
                return true;
            }
            if heap.pool_of_cached(block, class).is_none() {
                return false;
            }
            // SAFETY: a cached block of ours (just checked): mapped, two words.
            block = secret.demangle(block, unsafe { block.cast::<usize>().read() });
        }
        false
    })
}

/// Adds the blocks parked per class to `blocks`; returns their bytes.
pub fn holdings(heap: &Heap, blocks: &mut [usize; CACHED_CLASSES]) -> usize {
    let Some(depot) = get(heap) else { return 0 };
    for (total, shelf) in blocks.iter_mut().zip(&depot.shelves) {
        *total += shelf.parked().iter().map(|list| list.count as usize).sum::<usize>();
    }
    depot.bytes
}

/// `pymalloc_check_heap`: each parked list holds `count` blocks of its
/// class, each a block a cache holds (`Heap::is_cached_block`), and ends
/// there; the byte count is theirs.
pub fn check(heap: &Heap) -> Result<(), &'static str> {
    let secret = heap.secret();
    let Some(depot) = get(heap) else { return Ok(()) };
    let mut bytes = 0;
    for (class, shelf) in depot.shelves.iter().enumerate() {
        for list in shelf.parked() {
            let mut block = list.head;
            for _ in 0..list.count {
                if !heap.is_cached_block(block, class) {
                    return Err("depot: a parked block is not a free block of its class");
                }
                // SAFETY: checked just above: a carved block of ours.
                block = secret.demangle(block, unsafe { block.cast::<usize>().read() });
            }
            if !block.is_null() {
                return Err("depot: a parked list is longer than its count");
            }
            bytes += list.count as usize * size_of(class);
        }
    }
    if bytes != depot.bytes {
        return Err("depot: byte count does not match its lists");
    }
    Ok(())
}
