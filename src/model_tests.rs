//! Model tests of the heap: random operation sequences against a shadow
//! of every live block, with the invariant walk on throughout.

use std::collections::BTreeMap;

use crate::geometry::{ARENA_SIZE, MEDIUM_MAX, MIN_ALIGN, PAGE_SIZE};
use crate::fault::Fault;
use crate::heap::{Block, Heap, Resize};
use crate::size_class::NUM_CLASSES;
use crate::debug_mode::Quarantine;
use crate::stats::Snapshot;

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small, some medium, a few large sizes: spans of regions up
    /// to their limit, and a few mappings of their own beyond it.
    fn size(&mut self) -> usize {
        match self.below(200) {
            0..=139 => self.below(513) as usize,
            140..=189 => 513 + self.below((MEDIUM_MAX - 512) as u64) as usize,
            190..=197 => MEDIUM_MAX + 1 + self.below(4 << 20) as usize,
            _ => MEDIUM_MAX + 1 + self.below(40 << 20) as usize,
        }
    }
}

fn new_heap() -> Box<Heap> {
    Box::new(Heap::new())
}

/// With no block live, every arena is free but those holding the classes'
/// kept empty pools (at most one pool per class).
fn assert_only_kept_pools_held(heap: &Heap) {
    // SAFETY: kept pools are live pool headers.
    let kept = (0..NUM_CLASSES).filter(|&c| unsafe { heap.kept_pool(c).as_ref() }.is_some_and(|p| p.ref_count.get() == 0)).count();
    let held = heap.arenas().counters.arenas - heap.arenas().retired_count();
    assert!(held <= kept, "{held} arenas in use with no live block, {kept} kept pools");
}

/// Which bytes of each block the model writes and checks.
#[derive(Clone, Copy, PartialEq)]
enum Writes {
    /// All of a small block, a sample of a big one (both ends and one
    /// byte per page).
    Most,
    /// Only the first and the last byte, as many real programs do (a
    /// string's terminator, a header): the rest keeps whatever the heap's
    /// earlier tenants left there, free-list links and keys included.
    Ends,
}

/// The shadow: every live block, by address, with its usable size, the
/// byte it was filled with, and whether it is a large block.
struct Shadow {
    live: BTreeMap<usize, (usize, u8, bool)>,
    writes: Writes,
}

/// Offsets of `len` bytes that the model writes and checks.
fn probe_offsets(len: usize, writes: Writes) -> impl Iterator<Item = usize> {
    let (head, tail) = match writes {
        Writes::Most if len <= 4096 => (len, len),
        Writes::Most => (64, len - 64),
        Writes::Ends => (len.min(1), len.saturating_sub(1).max(len.min(1))),
    };
    let pages = match writes {
        Writes::Most => head.next_multiple_of(PAGE_SIZE)..tail,
        Writes::Ends => tail..tail,
    };
    (0..head).chain(pages.step_by(PAGE_SIZE)).chain(tail..len)
}

impl Shadow {
    fn new(writes: Writes) -> Self {
        Shadow { live: BTreeMap::new(), writes }
    }

    fn add(&mut self, heap: &Heap, p: *mut u8, requested: usize, align: usize, fill: u8) {
        let addr = p as usize;
        assert!(!p.is_null());
        let (usable, class_size) = heap.block_info(p).unwrap();
        assert_eq!(addr % align.max(MIN_ALIGN), 0, "misaligned block {p:p} for align {align}");
        assert!(usable >= requested, "usable {usable} < requested {requested}");
        if let Some((&prev, &(len, ..))) = self.live.range(..=addr).next_back() {
            assert!(prev + len <= addr, "{p:p} overlaps the block at {prev:#x}+{len}");
        }
        if let Some((&next, _)) = self.live.range(addr..).next() {
            assert!(addr + usable <= next, "{p:p}+{usable} overlaps the block at {next:#x}");
        }
        for i in probe_offsets(usable, self.writes) {
            // SAFETY: i < usable, which the heap promised is ours to write.
            unsafe { p.add(i).write(fill) };
        }
        self.live.insert(addr, (usable, fill, class_size == 0));
    }

    fn verify(&self, addr: usize) {
        let (len, fill, _) = self.live[&addr];
        for i in probe_offsets(len, self.writes) {
            // SAFETY: a live block of ours, written by `add`.
            let byte = unsafe { (addr as *const u8).add(i).read() };
            assert_eq!(byte, fill, "block {addr:#x} byte {i} was overwritten");
        }
    }

    fn remove(&mut self, addr: usize) -> (usize, u8) {
        self.verify(addr);
        let (len, fill, _) = self.live.remove(&addr).unwrap();
        (len, fill)
    }

    fn pick(&self, rng: &mut Rng) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        let target = rng.next() as usize;
        self.live.range(target..).next().or_else(|| self.live.iter().next()).map(|(&a, _)| a)
    }

    /// The heap's counters (the statistics' totals and the large blocks'
    /// own) agree with the ledger of live blocks.
    fn check_counters(&self, heap: &Heap, quarantine: &Quarantine) {
        let (mut pool_blocks, mut pool_bytes, mut large_blocks, mut large_bytes) = (0, 0, 0, 0);
        for &(len, _, large) in self.live.values() {
            if large {
                (large_blocks, large_bytes) = (large_blocks + 1, large_bytes + len);
            } else {
                (pool_blocks, pool_bytes) = (pool_blocks + 1, pool_bytes + len);
            }
        }
        assert_eq!((heap.large().blocks, heap.large().bytes), (large_blocks, large_bytes), "large blocks and bytes");
        let t = Snapshot::of(heap, quarantine).totals;
        assert_eq!((t.large_blocks, t.large_bytes), (large_blocks, large_bytes), "statistics: large");
        assert_eq!(t.small_blocks + t.medium_blocks, pool_blocks, "statistics: pool blocks");
        assert_eq!(t.small_bytes + t.medium_bytes, pool_bytes, "statistics: pool bytes");
        assert_eq!((t.blocks_in_use, t.bytes_in_use), (pool_blocks + large_blocks, pool_bytes + large_bytes));
    }
}

fn check_zeroed(block: Block, n: usize) {
    if block.zeroed {
        for i in probe_offsets(n, Writes::Most) {
            // SAFETY: a fresh block of at least n bytes.
            assert_eq!(unsafe { block.ptr.add(i).read() }, 0, "zeroed block has a dirty byte {i}");
        }
    }
}

/// Random allocations, aligned allocations, frees and resizes of every
/// kind, each checked against the shadow; the counters are checked
/// against it after every operation, the heap's invariants every 500.
fn run_model(seed: u64, steps: usize, writes: Writes) {
    let mut heap = new_heap();
    let quarantine = Box::new(Quarantine::new());
    let mut rng = Rng(seed);
    let mut shadow = Shadow::new(writes);
    for step in 0..steps {
        let fill = (step % 251) as u8 + 1;
        match rng.below(10) {
            0..=3 => {
                let n = rng.size();
                let block = heap.alloc(n);
                check_zeroed(block, n);
                shadow.add(&heap, block.ptr, n, 1, fill);
            }
            4 => {
                let align = 1usize << rng.below(22);
                let n = rng.size() / 4;
                let block = heap.alloc_aligned(align, n);
                check_zeroed(block, n);
                shadow.add(&heap, block.ptr, n, align, fill);
            }
            5..=7 => {
                if let Some(addr) = shadow.pick(&mut rng) {
                    shadow.remove(addr);
                    heap.free(addr as *mut u8).unwrap();
                }
            }
            _ => {
                let Some(addr) = shadow.pick(&mut rng) else { continue };
                let n = rng.size().max(1);
                let (old_usable, old_fill) = shadow.remove(addr);
                match heap.resize(addr as *mut u8, n).unwrap() {
                    Resize::Done(q) => {
                        // The kept prefix must still hold the old fill.
                        let kept = old_usable.min(n);
                        for i in probe_offsets(old_usable, writes).take_while(|&i| i < kept) {
                            // SAFETY: q is live with at least `kept` bytes.
                            assert_eq!(unsafe { q.add(i).read() }, old_fill, "resize lost byte {i}");
                        }
                        shadow.add(&heap, q, n, 1, fill);
                    }
                    Resize::Move { usable } => {
                        assert_eq!(usable, old_usable);
                        let block = heap.alloc(n);
                        // As realloc does: the old block's bytes, all of
                        // them, whoever wrote them, go to the new one.
                        // SAFETY: both blocks are live and distinct.
                        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, block.ptr, usable.min(n)) };
                        heap.free(addr as *mut u8).unwrap();
                        shadow.add(&heap, block.ptr, n, 1, fill);
                    }
                    Resize::Failed => panic!("resize of {n} bytes failed"),
                }
            }
        }
        shadow.check_counters(&heap, &quarantine);
        if step % 500 == 0 {
            heap.check().unwrap();
        }
    }
    heap.check().unwrap();
    let live: Vec<usize> = shadow.live.keys().copied().collect();
    for addr in live {
        shadow.remove(addr);
        heap.free(addr as *mut u8).unwrap();
    }
    shadow.check_counters(&heap, &quarantine);
    heap.check().unwrap();
    assert_only_kept_pools_held(&heap);
    assert_eq!(heap.large().blocks, 0);
    heap.trim();
    assert_eq!(heap.arenas().counters.arenas, 0);
    heap.check().unwrap();
}

#[test]
fn random_sequences_match_the_shadow() {
    for seed in 1u64..=16 {
        run_model(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 20_000, Writes::Most);
    }
}

/// Blocks written only at their ends keep what the heap left in them:
/// stale free-list links and keys, copied along by every resize that
/// moves a block. None of it may pass for heap metadata.
#[test]
fn blocks_written_only_at_their_ends_are_never_taken_for_free_ones() {
    for seed in 1u64..=16 {
        run_model(seed.wrapping_mul(0xd1b5_4a32_d192_ed03), 20_000, Writes::Ends);
    }
}

#[test]
fn foreign_and_interior_pointers_are_rejected() {
    let mut heap = new_heap();
    let mut local = 0u64;
    let stack = (&raw mut local).cast::<u8>();
    assert_eq!(heap.free(stack), Err(Fault::InvalidPointer));
    assert_eq!(heap.usable_size(stack), Err(Fault::InvalidPointer));
    for n in [16, 100, 4000, 100_000, 1 << 20] {
        let p = heap.alloc(n).ptr;
        // SAFETY: pointer arithmetic inside the block; never dereferenced.
        let inner = unsafe { p.add(16) };
        assert_eq!(heap.free(inner), Err(Fault::InvalidPointer), "interior of {n}");
        assert_eq!(heap.resize(inner, 10), Err(Fault::InvalidPointer));
        heap.free(p).unwrap();
    }
    // A block beyond the carved part of its pool.
    let r = heap.alloc(48).ptr;
    // SAFETY: arithmetic only.
    assert_eq!(heap.free(unsafe { r.add(48 * 10) }), Err(Fault::InvalidPointer));
    heap.free(r).unwrap();
    heap.check().unwrap();
}

#[test]
#[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
fn double_frees_are_detected() {
    let freed = |class_size| Fault::Freed { class_size };
    let mut heap = new_heap();
    for n in [1, 48, 512, 1000, 100_000] {
        let first = heap.alloc(n).ptr;
        let class_size = heap.usable_size(first).unwrap();
        // Keep the pool alive with neighbours, so the freed block is found
        // by its key and the free-list walk.
        let keep = heap.alloc(n).ptr;
        let p = heap.alloc(n).ptr;
        heap.free(p).unwrap();
        assert_eq!(heap.free(p), Err(freed(class_size)), "double free of {n}");
        assert_eq!(heap.resize(p, 10), Err(freed(class_size)));
        assert_eq!(heap.usable_size(p), Err(freed(class_size)));
        // A live block holding its own key, on no free list and in no
        // thread cache (this heap has none), is live: the key is a hint.
        let q = heap.alloc(n).ptr;
        assert_eq!(q, p, "the freed block comes back first");
        // SAFETY: q is live with at least 16 bytes.
        unsafe { q.cast::<usize>().add(1).write(heap.secret().key_at(q)) };
        assert_eq!(heap.usable_size(q), Ok(class_size), "a live block of {n} that reads as free");
        heap.free(q).unwrap();
        assert_eq!(heap.free(q), Err(freed(class_size)));
        let q2 = heap.alloc(n).ptr;
        assert_eq!(q2, q);
        heap.free(q2).unwrap();
        heap.free(keep).unwrap();
        assert_eq!(heap.free(keep), Err(freed(class_size)));
        heap.free(first).unwrap();
    }
    // A block whose pool is now empty (and whose arena is free).
    let p = heap.alloc(48).ptr;
    heap.free(p).unwrap();
    assert_eq!(heap.free(p), Err(freed(48)));
    // Large blocks: cached, then unmapped, then moved away by realloc.
    let p = heap.alloc(1 << 20).ptr;
    heap.free(p).unwrap();
    assert_eq!(heap.free(p), Err(freed(0)));
    // SAFETY: arithmetic only.
    assert_eq!(heap.free(unsafe { p.add(4096) }), Err(Fault::InvalidPointer));
    let big = heap.alloc(200 << 20).ptr;
    heap.free(big).unwrap();
    assert_eq!(heap.free(big), Err(freed(0)), "an uncached mapping");
    let q = heap.alloc(40 << 20).ptr;
    let blocker = heap.alloc(40 << 20).ptr;
    let Resize::Done(r) = heap.resize(q, 100 << 20).unwrap() else { panic!("a large mapping grows by mremap") };
    assert!(heap.usable_size(r).unwrap() >= 100 << 20);
    if r != q {
        assert_eq!(heap.free(q), Err(freed(0)), "moved away by realloc");
    }
    heap.free(r).unwrap();
    heap.free(blocker).unwrap();
    heap.check().unwrap();
}

#[test]
#[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
fn corrupted_free_list_links_are_detected() {
    for n in [16, 48, 512, 2000, 20_000] {
        let mut heap = new_heap();
        let blocks: Vec<*mut u8> = (0..4).map(|_| heap.alloc(n).ptr).collect();
        heap.free(blocks[1]).unwrap();
        heap.free(blocks[2]).unwrap();
        // A write after free overwrites the link of the list head.
        // SAFETY: the block is mapped (freed, not returned to the OS).
        unsafe { blocks[2].cast::<usize>().write(blocks[0] as usize) };
        assert!(heap.check().is_err(), "the walk sees the bad link");
        let class_size = heap.usable_size(blocks[0]).unwrap();
        let corrupt = Fault::CorruptFreeList { at: blocks[2], class_size };
        if class_size > PAGE_SIZE {
            // So does `malloc_trim`'s walk of the free blocks' pages;
            // the decay's (a look, then the release) leaves it to the
            // allocation that meets it.
            assert_eq!(heap.release_free_block_pages(), Err(corrupt));
            heap.shed_idle_blocks();
            heap.shed_idle_blocks();
        }
        assert!(heap.alloc(n).ptr.is_null(), "malloc of {n}");
        assert_eq!(heap.take_fault(), Some(corrupt));
        assert_eq!(heap.take_fault(), None);
        // A double-free check walking the list meets the bad link too.
        assert_eq!(heap.free(blocks[1]), Err(corrupt));
    }
}

#[test]
fn idle_pools_in_use_give_back_their_free_blocks_pages() {
    const SIZE: usize = 64 << 10;
    let resident = |p: *mut u8| {
        let mut page = [0u8];
        crate::os::residency(p, &mut page);
        page[0] & 1 != 0
    };
    // The page after a block's first, which holds its link and key.
    // SAFETY: arithmetic only.
    let second = |p: *mut u8| unsafe { p.add(PAGE_SIZE) };
    let mut heap = new_heap();
    // The first free ticks the clock, which looks too: not in between.
    let first = heap.alloc(16).ptr;
    heap.free(first).unwrap();
    let blocks: Vec<*mut u8> = (0..4).map(|_| heap.alloc(SIZE).ptr).collect();
    for &b in &blocks {
        // SAFETY: a live block of SIZE bytes.
        unsafe { b.write_bytes(0x5a, SIZE) };
    }
    heap.free(blocks[1]).unwrap();
    heap.shed_idle_blocks();
    assert!(resident(second(blocks[1])), "the first look only notes the pool");
    heap.free(blocks[2]).unwrap();
    heap.shed_idle_blocks();
    assert!(resident(second(blocks[1])), "the pool changed since the last look");
    heap.shed_idle_blocks();
    assert!(!resident(second(blocks[1])) && !resident(second(blocks[2])), "idle since the last look");
    assert!(resident(blocks[1]) && resident(blocks[0]) && resident(second(blocks[0])));
    heap.check().unwrap();
    for _ in 1..3 {
        let p = heap.alloc(SIZE).ptr;
        // SAFETY: a live block of SIZE bytes.
        unsafe { p.write_bytes(7, SIZE) };
        assert!(resident(second(p)));
    }
    heap.check().unwrap();
}

/// Stale bytes that look like a link: a free block's old link, written
/// back after the block it named was handed out again, leads the walk of
/// free blocks' pages (`malloc_trim`'s, the decay's) to a live block,
/// which must keep its pages.
#[test]
#[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
fn a_stale_link_to_a_live_block_costs_it_no_page() {
    const SIZE: usize = 20_000;
    let mut heap = new_heap();
    let blocks: Vec<*mut u8> = (0..3).map(|_| heap.alloc(SIZE).ptr).collect();
    heap.free(blocks[1]).unwrap();
    heap.free(blocks[2]).unwrap(); // its link names blocks[1]
    // SAFETY: a free block's first word, mapped.
    let stale = unsafe { blocks[2].cast::<usize>().read() };
    let (a, b) = (heap.alloc(SIZE).ptr, heap.alloc(SIZE).ptr);
    assert_eq!((a, b), (blocks[2], blocks[1]));
    // SAFETY: a live block of SIZE bytes.
    unsafe { b.write_bytes(0x5a, SIZE) };
    heap.free(a).unwrap();
    // A write after free puts the old link back.
    // SAFETY: the block is mapped (freed, not returned to the OS).
    unsafe { a.cast::<usize>().write(stale) };
    assert!(heap.release_free_block_pages().is_err());
    heap.shed_idle_blocks();
    heap.shed_idle_blocks();
    // SAFETY: a live block of SIZE bytes.
    let bytes = unsafe { core::slice::from_raw_parts(b, SIZE) };
    assert!(bytes.iter().all(|&x| x == 0x5a), "the live block lost its pages");
}

#[test]
fn free_sized_accepts_the_request_up_to_the_usable_size() {
    let mut heap = new_heap();
    let mut rng = Rng(7);
    for _ in 0..5_000 {
        let n = rng.size();
        let align = 1usize << rng.below(14);
        let p = heap.alloc_aligned(align, n).ptr;
        let usable = heap.usable_size(p).unwrap();
        let size = n + rng.below((usable - n) as u64 + 1) as usize;
        if rng.below(4) == 0 {
            let class_size = if n > MEDIUM_MAX { 0 } else { usable };
            let wrong = Err(Fault::WrongSize { size: usable + 1, class_size });
            assert_eq!(heap.free_sized(p, usable + 1, align), wrong);
        }
        heap.free_sized(p, size, align).unwrap_or_else(|f| panic!("{n} aligned {align} freed as {size}: {f:?}"));
    }
    let p = heap.alloc(100).ptr;
    assert_eq!(heap.free_sized(p, 100, 3), Err(Fault::WrongAlignment { align: 3 }));
    assert_eq!(heap.free_sized(p, 10, 1), Err(Fault::WrongSize { size: 10, class_size: 112 }));
    heap.free_sized(p, 100, 1).unwrap();
    heap.check().unwrap();
}

#[test]
fn zeroed_means_zero_and_recycled_means_not() {
    for n in [1, 48, 512, 1000, 20_000, MEDIUM_MAX, MEDIUM_MAX + 1, 3 << 20] {
        let mut heap = new_heap();
        let first = heap.alloc(n);
        assert!(first.zeroed, "a fresh {n}-byte block should be known zero");
        check_zeroed(first, n);
        // SAFETY: a live block of n bytes.
        unsafe { first.ptr.write_bytes(0xab, n) };
        heap.free(first.ptr).unwrap();
        let again = heap.alloc(n);
        assert_eq!(again.ptr, first.ptr, "the {n}-byte block just freed is reused first");
        assert!(!again.zeroed, "a recycled {n}-byte block is dirty");
        heap.free(again.ptr).unwrap();
    }
}

#[test]
fn empty_arenas_go_back_to_the_os() {
    let mut heap = new_heap();
    let mut blocks = Vec::new();
    for i in 0..200_000 {
        blocks.push(heap.alloc(16 + (i % 32) * 16).ptr);
    }
    let peak = heap.arenas().counters.arenas;
    assert!(peak * ARENA_SIZE >= 200_000 * 16);
    // Free in an interleaved order so that arenas empty at different times.
    for parity in 0..2 {
        for (i, p) in blocks.iter().enumerate() {
            if i % 2 == parity {
                heap.free(*p).unwrap();
            }
        }
        heap.check().unwrap();
    }
    assert_only_kept_pools_held(&heap);
    // Nothing goes back before it is old enough; then everything does.
    assert!(!heap.purge(0));
    assert!(heap.purge(u64::MAX));
    heap.check().unwrap();
    assert_eq!(heap.arenas().counters.arenas, 0);
}

#[test]
fn freed_memory_is_reused_before_it_decays() {
    let mut heap = new_heap();
    let blocks: Vec<_> = (0..10_000).map(|i| heap.alloc(16 + (i % 32) * 16).ptr).collect();
    let big = heap.alloc(1 << 20).ptr;
    let arenas = heap.arenas().counters.arenas;
    for p in &blocks {
        heap.free(*p).unwrap();
    }
    heap.free(big).unwrap();
    assert_only_kept_pools_held(&heap);
    // The same work again takes the same memory: no new arena, and the
    // cached mapping comes back.
    let again: Vec<_> = (0..10_000).map(|i| heap.alloc(16 + (i % 32) * 16).ptr).collect();
    let big_again = heap.alloc(1 << 20).ptr;
    assert_eq!(heap.arenas().counters.arenas, arenas);
    assert_eq!(big_again, big);
    heap.check().unwrap();
    for p in again.iter().step_by(2) {
        heap.free(*p).unwrap();
    }
    heap.free(big_again).unwrap();
    // Half-empty pools stay; the empty ones and the mapping decay.
    assert!(heap.purge(u64::MAX));
    heap.check().unwrap();
    assert_eq!(heap.large().cache().bytes, 0);
    for p in again.iter().skip(1).step_by(2) {
        heap.free(*p).unwrap();
    }
    heap.check().unwrap();
}

#[test]
fn an_emptied_pool_is_kept_until_it_decays() {
    let mut heap = new_heap();
    let a = heap.alloc(48).ptr;
    heap.free(a).unwrap();
    // Kept: the arena stays, and the next block of the class is the same.
    assert_eq!(heap.arenas().retired_count(), 0);
    heap.check().unwrap();
    let b = heap.alloc(48).ptr;
    assert_eq!(a, b);
    // A second pool of the class that empties while the kept one is empty
    // goes back to its arena; the kept one stays.
    let class_pool = heap.kept_pool(crate::size_class::class_of(48));
    heap.free(b).unwrap();
    let cap = (crate::geometry::POOL_SIZE / 48) + 1;
    let many: Vec<_> = (0..2 * cap).map(|_| heap.alloc(48).ptr).collect();
    heap.check().unwrap();
    for p in &many {
        heap.free(*p).unwrap();
    }
    heap.check().unwrap();
    assert_eq!(heap.kept_pool(crate::size_class::class_of(48)), class_pool);
    assert_only_kept_pools_held(&heap);
    // Decay gives it back, with its arena.
    assert!(heap.purge(u64::MAX));
    heap.check().unwrap();
    assert!(heap.kept_pool(crate::size_class::class_of(48)).is_null());
    assert_eq!(heap.arenas().counters.arenas, 0);
}

/// A pool that was full and gets a block back waits behind the head,
/// which serves until it is full (at the head, the next `malloc` would
/// take that one block and unlink the pool again).
#[test]
fn a_pool_that_was_full_waits_behind_the_head() {
    let mut heap = new_heap();
    let class = crate::size_class::class_of(48);
    let mut pool_a_blocks = vec![heap.alloc(48).ptr];
    let pool_a = heap.used_list(class);
    while heap.used_list(class) == pool_a {
        pool_a_blocks.push(heap.alloc(48).ptr);
    }
    let first_of_b = heap.alloc(48).ptr;
    let pool_b = heap.used_list(class);
    assert!(!pool_b.is_null() && pool_b != pool_a);
    heap.free(pool_a_blocks[0]).unwrap();
    heap.check().unwrap();
    assert_eq!(heap.used_list(class), pool_b, "the head stays");
    let mut from_b = vec![first_of_b];
    while heap.used_list(class) == pool_b {
        let p = heap.alloc(48).ptr;
        assert!(!pool_a_blocks.contains(&p), "pool A served before the head was full");
        from_b.push(p);
    }
    assert_eq!(heap.used_list(class), pool_a);
    assert_eq!(heap.alloc(48).ptr, pool_a_blocks[0]);
    heap.check().unwrap();
    for p in pool_a_blocks.into_iter().chain(from_b) {
        heap.free(p).unwrap();
    }
    heap.check().unwrap();
}

#[test]
fn a_large_block_reuses_the_resident_pages_of_a_hole_after_clean_ones() {
    let mut heap = new_heap();
    // Clean pages (given back), then a freed block's resident pages, in
    // one free span.
    let x = heap.alloc(400 << 10).ptr;
    let a = heap.alloc(300 << 10).ptr;
    let guard = heap.alloc(200 << 10).ptr;
    heap.free(x).unwrap();
    heap.trim();
    // SAFETY: a live block of 300 KiB.
    unsafe { a.write_bytes(1, 300 << 10) };
    heap.free(a).unwrap();
    heap.check().unwrap();
    // A block of the freed one's size goes where its pages are, not at
    // the span's start (which would fault in 300 KiB afresh).
    let b = heap.alloc(300 << 10);
    assert_eq!(b.ptr, a);
    assert!(!b.zeroed);
    // A smaller one ends where the resident pages end.
    heap.free(b.ptr).unwrap();
    let c = heap.alloc(200 << 10);
    assert_eq!(c.ptr, a.wrapping_add(100 << 10));
    heap.check().unwrap();
    for p in [c.ptr, guard] {
        heap.free(p).unwrap();
    }
    heap.check().unwrap();
}

#[test]
fn a_class_needing_a_pool_takes_another_classes_kept_one() {
    use crate::geometry::POOL_SIZE;
    use crate::size_class::class_of;
    let mut heap = new_heap();
    let pool_of = |p: *mut u8| p as usize & !(POOL_SIZE - 1);
    // Half a pool of 64-byte blocks, written and emptied: kept, pages
    // resident.
    let blocks: Vec<_> = (0..POOL_SIZE / 64 / 2).map(|_| heap.alloc(64).ptr).collect();
    let kept = pool_of(blocks[0]);
    for p in &blocks {
        heap.free(*p).unwrap();
    }
    assert!(!heap.kept_pool(class_of(64)).is_null());
    // The arena still has pools never touched; another class of the tier
    // takes the kept pool instead, whose pages are resident.
    let b = heap.alloc(80).ptr;
    assert_eq!(pool_of(b), kept, "the 80-byte class reuses the 64-byte class's pool");
    assert!(heap.kept_pool(class_of(64)).is_null());
    heap.check().unwrap();
    // The 64-byte class, with nothing kept, gets a pool of its own again.
    let c = heap.alloc(64).ptr;
    assert_ne!(pool_of(c), kept);
    heap.free(b).unwrap();
    heap.free(c).unwrap();
    heap.check().unwrap();
    assert_only_kept_pools_held(&heap);
}

#[test]
fn new_pools_come_from_the_most_used_arena() {
    use crate::geometry::{ARENA_SIZE, MAX_POOLS_PER_ARENA, POOL_SIZE};
    let mut heap = new_heap();
    // Fill three arenas with 512-byte blocks (the last small class, in
    // pools of the smallest tier), then empty whole pools: 2 in the first
    // arena, 7 in the second, 12 in the third.
    let per_pool = POOL_SIZE / 512;
    let arena_of = |p: *mut u8| p as usize & !(ARENA_SIZE - 1);
    let pool_of = |p: *mut u8| p as usize & !(POOL_SIZE - 1);
    let blocks: Vec<*mut u8> = (0..3 * MAX_POOLS_PER_ARENA * per_pool).map(|_| heap.alloc(512).ptr).collect();
    let mut arenas: Vec<usize> = blocks.iter().map(|&p| arena_of(p)).collect();
    arenas.dedup();
    assert_eq!(arenas.len(), 3, "the blocks fill exactly three arenas, one after another");
    let mut emptied: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for (a, &arena) in arenas.iter().enumerate() {
        let mut pools: Vec<usize> = blocks.iter().filter(|&&p| arena_of(p) == arena).map(|&p| pool_of(p)).collect();
        pools.dedup();
        assert_eq!(pools.len(), MAX_POOLS_PER_ARENA);
        for &pool in &pools[..2 + 5 * a] {
            for &p in blocks.iter().filter(|&&p| pool_of(p) == pool) {
                heap.free(p).unwrap();
            }
            emptied[a].push(pool);
        }
        heap.check().unwrap();
    }
    // Every other pool is full, so each new block needs an empty pool.
    // First comes the one the class kept on its used list (one of those
    // just emptied, wherever it is: see `pool_emptied`)...
    assert!(!heap.kept_pool(crate::size_class::class_of(512)).is_null(), "no kept pool");
    let kept = pool_of(heap.alloc(512).ptr);
    for _ in 1..per_pool {
        assert_eq!(pool_of(heap.alloc(512).ptr), kept, "the kept pool serves until it is full");
    }
    let a = emptied.iter().position(|pools| pools.contains(&kept)).expect("the kept pool is one just emptied");
    emptied[a].retain(|&p| p != kept);
    // ...then the arenas' empty pools, most used arena first: the first
    // arena's pools are all used again before the second's, then the third's.
    for (a, pools) in emptied.iter().enumerate() {
        for k in 0..pools.len() * per_pool {
            let p = heap.alloc(512).ptr;
            assert!(
                pools.contains(&pool_of(p)),
                "block {k} after the kept pool came from arena {:?}, not from an emptied pool of arena {a} \
                 (the most used)",
                arenas.iter().position(|&x| x == arena_of(p))
            );
        }
    }
    heap.check().unwrap();
}

#[test]
fn large_blocks_reuse_the_cache_and_grow_in_place_or_move() {
    let mut heap = new_heap();
    let p = heap.alloc(1 << 20).ptr;
    heap.free(p).unwrap();
    let q = heap.alloc(1 << 20).ptr;
    assert_eq!(p, q, "a freed span of the same size comes back");
    // SAFETY: 1 MiB block.
    unsafe { q.write_bytes(7, 1 << 20) };
    assert_eq!(heap.resize(q, 3 << 20).unwrap(), Resize::Done(q), "a span grows into its free neighbour");
    assert_eq!(
        heap.resize(q, 64 << 20).unwrap(),
        Resize::Move { usable: 3 << 20 },
        "beyond the spans' limit a block is a mapping of its own"
    );
    heap.free(q).unwrap();
    let m = heap.alloc(40 << 20).ptr;
    // SAFETY: 40 MiB block.
    unsafe { m.write_bytes(7, 40 << 20) };
    let Resize::Done(r) = heap.resize(m, 64 << 20).unwrap() else { panic!("large growth moves by remapping") };
    // SAFETY: r holds the old 40 MiB prefix.
    assert!(unsafe { std::slice::from_raw_parts(r, 40 << 20) }.iter().all(|&b| b == 7));
    assert_eq!(heap.usable_size(r).unwrap(), 64 << 20);
    let Resize::Done(s) = heap.resize(r, 200 << 10).unwrap() else { panic!() };
    assert_eq!(s, r, "shrinking stays in place");
    assert!(heap.usable_size(s).unwrap() < 300 << 10);
    assert_eq!(heap.resize(s, 1000).unwrap(), Resize::Move { usable: heap.usable_size(s).unwrap() });
    heap.free(s).unwrap();
    assert!(heap.trim());
    assert_eq!(heap.large().blocks, 0);
}

/// Free spans keep their pages for reuse, but a request that needs
/// fresh pages first gives back the oldest free ones beyond a tenth of
/// the live peak (and one small region): the footprint (live plus
/// resident free bytes) stays within that of the peak.
#[test]
fn fresh_pages_for_large_blocks_come_after_giving_back_the_oldest_free_ones() {
    let mut heap = new_heap();
    let mut blocks = Vec::new();
    for i in 0..8 {
        let n = (4 + i) << 20;
        let p = heap.alloc(n).ptr;
        // SAFETY: a fresh block of n bytes.
        unsafe { p.write_bytes(1, n) };
        blocks.push((p, n));
    }
    let peak: usize = blocks.iter().map(|b| b.1).sum();
    let mut live = peak;
    for &(p, n) in blocks.iter().step_by(2) {
        heap.free(p).unwrap();
        live -= n;
    }
    let resident = |heap: &Heap| heap.large().regions().dirty_bytes;
    assert_eq!(resident(&heap), peak - live, "freed spans keep their pages");
    let big = heap.alloc(24 << 20).ptr; // fits no hole: fresh pages
    live += 24 << 20;
    let allowed = peak + peak / 10 + (8 << 20) - live;
    assert!(resident(&heap) <= allowed, "{} resident free bytes, at most {allowed} allowed", resident(&heap));
    assert!(resident(&heap) >= allowed - 4096, "no more than needed given back");
    heap.check().unwrap();
    // What was given back reads as zero when reused, what was not is reused as it is.
    let again = heap.alloc(4 << 20);
    check_zeroed(again, 4 << 20);
    heap.free(again.ptr).unwrap();
    heap.free(big).unwrap();
    for &(p, _) in blocks.iter().skip(1).step_by(2) {
        heap.free(p).unwrap();
    }
    heap.check().unwrap();
    assert!(heap.trim());
    assert_eq!(heap.large().regions().regions, 0, "every region unmapped once empty");
}

#[test]
fn header_matches_build_output() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/pymalloc.h"));
    let committed = include_str!("../include/pymalloc.h");
    assert!(
        generated == committed,
        "include/pymalloc.h is stale: run `PYMALLOC_BLESS_HEADER=1 cargo build` and commit it"
    );
}


#[test]
fn region_spans_merge_keep_their_pages_and_decay() {
    let mut heap = new_heap();
    const MIB: usize = 1 << 20;
    let a = heap.alloc(MIB);
    assert!(a.zeroed, "a new region reads as zero");
    let (a, b, c) = (a.ptr, heap.alloc(MIB).ptr, heap.alloc(MIB).ptr);
    // SAFETY: arithmetic only.
    assert_eq!((b, c), unsafe { (a.add(MIB), a.add(2 * MIB)) }, "spans are carved in address order");
    // SAFETY: 1 MiB blocks.
    unsafe {
        a.write_bytes(1, MIB);
        b.write_bytes(2, MIB);
    }
    heap.free(b).unwrap();
    heap.free(a).unwrap();
    heap.check().unwrap();
    assert_eq!((heap.large().regions().free_bytes - heap.large().regions().dirty_bytes) % MIB, 0);
    // The two merged: 2 MiB come back at `a`, with their pages (not zero).
    let ab = heap.alloc(2 * MIB);
    assert_eq!(ab.ptr, a);
    assert!(!ab.zeroed);
    // `c` lies right after it: growing means moving.
    assert_eq!(heap.resize(ab.ptr, 3 * MIB).unwrap(), Resize::Move { usable: 2 * MIB });
    // `c` grows in place into the free rest of the region, and shrinks
    // back, its tail merging with that rest.
    assert_eq!(heap.resize(c, 5 * MIB / 2).unwrap(), Resize::Done(c));
    assert_eq!(heap.usable_size(c).unwrap(), 5 * MIB / 2);
    assert_eq!(heap.resize(c, MIB).unwrap(), Resize::Done(c));
    heap.check().unwrap();
    assert_eq!(heap.large().regions().free_spans, 1);
    // Decay gives back the pages of free spans; a calloc then needs no
    // clearing, and reads zero.
    heap.free(ab.ptr).unwrap();
    assert!(heap.purge(u64::MAX));
    assert_eq!(heap.large().regions().dirty_bytes, 0);
    let again = heap.alloc(2 * MIB);
    assert!(again.zeroed);
    check_zeroed(again, 2 * MIB);
    heap.check().unwrap();
    // A region that is all free goes back to the OS.
    heap.free(again.ptr).unwrap();
    heap.free(c).unwrap();
    assert_eq!(heap.large().regions().free_spans, 1);
    assert!(heap.purge(u64::MAX));
    assert_eq!((heap.large().regions().regions, heap.large().regions().free_spans), (0, 0));
    heap.check().unwrap();
}

/// The heap starts as all zero bytes, so that its static (with the
/// arena map's root, a quarter of a MiB) sits in `.bss`: its pages cost
/// memory only once touched, and none of it is read from the file.
#[test]
fn the_heap_starts_as_zero_bytes() {
    let heap = core::mem::ManuallyDrop::new(Heap::new());
    // SAFETY: reading the bytes of a live value, padding included (which
    // a const initializer leaves zero).
    let bytes = unsafe { core::slice::from_raw_parts((&*heap as *const Heap).cast::<u8>(), size_of::<Heap>()) };
    let nonzero: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b != 0).map(|(i, _)| i).collect();
    assert!(nonzero.is_empty(), "non-zero bytes at offsets {:?}", &nonzero[..nonzero.len().min(40)]);
}
