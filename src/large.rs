//! Large blocks (above `MEDIUM_MAX`, or aligned beyond what a class
//! offers), and everything about them: allocation, reuse, splitting,
//! resizing and giving back (`Large`). Up to `region::SPAN_MAX` bytes a
//! block is a span of a region (`region`); above, a private mapping of
//! its own, starting at the block.
//!
//! Freed mappings wait in a small cache (most recent first) so that a
//! program that repeatedly allocates and frees big buffers does not pay
//! page faults each time: a request takes the cached mapping that fits it
//! best, trimmed or grown with `mremap` (which keeps its pages), and
//! mappings unused for `PYMALLOC_DECAY_MS` go back to the OS.
//!
//! How much the cache keeps is learned, as glibc learns its mmap
//! threshold: twice the largest mapping freed lately (or a quarter of the
//! bytes in live large blocks), at most `PYMALLOC_LARGE_CACHE`. A program
//! that replaces 20 MiB buffers keeps one or two of them resident for the
//! next request. When decay empties the cache, the limit starts from
//! zero again.
//!
//! A freed mapping enters the cache at another address: it moves, pages
//! and all, to fresh address space (`move_away`, one `mremap`), so the
//! address the program knew is unmapped and a stale pointer faults, as
//! after glibc's `munmap`.
//!
//! When the OS refuses a mapping, an operation returns `NoSpace` with
//! every live block as it was: the heap, which sees every reserve
//! (`reserve_bytes` here, free arenas there), releases them if that can
//! make room and asks once more (`Heap::with_room`).

use core::ptr;

use crate::arena_map::{ArenaMap, Owner};
use crate::config;
use crate::geometry::{GRANULE_SIZE, MAX_REQUEST, MEDIUM_MAX, PAGE_SIZE};
use crate::large_block::{Dirty, LargeBlock};
use crate::list::AgeList;
use crate::os;
use crate::region::{self, Regions};
use crate::slab::Slab;

/// The alignment of mappings of their own, and of the address space a
/// freed one moves to: a page table's reach on x86-64 and aarch64 (4 KiB
/// pages), so that `mremap` moves page tables, not each page's entry.
const MOVE_ALIGN: usize = 2 << 20;

/// The OS refused a mapping of `len` bytes aligned to `align`.
#[derive(Clone, Copy)]
pub struct NoSpace {
    pub len: usize,
    pub align: usize,
}

/// A fresh mapping of `len` bytes aligned to `align`, or `NoSpace`.
fn map_os(len: usize, align: usize) -> Result<*mut u8, NoSpace> {
    let p = os::map_aligned(len, align);
    if p.is_null() { Err(NoSpace { len, align }) } else { Ok(p) }
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

/// Every large block: live ones (named by the arena map), the cache of
/// freed mappings, and the regions' free spans.
pub struct Large {
    records: Slab<LargeBlock>,
    cache: LargeCache,
    regions: Regions,
    /// Large blocks freed lately, to tell a double free from a wild pointer.
    recently_freed: RecentlyFreed,
    /// Live large blocks, and the bytes they hold.
    pub blocks: usize,
    pub bytes: usize,
    /// The most bytes live large blocks held lately: since `peak_at`
    /// (ms), at most one decay period ago (`hold_footprint`).
    live_peak: usize,
    peak_at: u64,
}

impl Large {
    pub const fn new() -> Self {
        Large {
            records: Slab::new(),
            cache: LargeCache::new(),
            regions: Regions::new(),
            recently_freed: RecentlyFreed::new(),
            blocks: 0,
            bytes: 0,
            live_peak: 0,
            peak_at: 0,
        }
    }

    /// Bytes of address space that releasing everything kept would free:
    /// cached mappings and regions with no live block.
    pub fn reserve_bytes(&self) -> usize {
        self.cache.bytes + self.regions.idle_bytes
    }

    /// Whether `p`, which starts no live block, is a large block freed
    /// lately (or still cached): a double free rather than a wild pointer.
    pub fn was_freed(&self, p: *mut u8) -> bool {
        self.recently_freed.contains(p) || self.cache.holds_base(p)
    }

    /// Gives back the cached mappings and the free spans' pages unused
    /// since `cutoff` (ms), and unmaps regions that are one such span;
    /// true if there were any.
    pub fn release(&mut self, cutoff: u64) -> bool {
        let evicted = self.cache.evict_older(cutoff);
        let released = !evicted.is_null();
        self.unmap_list(evicted);
        released | self.decay_spans(cutoff)
    }

    pub fn cache(&self) -> &LargeCache {
        &self.cache
    }

    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// A large block of at least `n` bytes (and one granule) whose address
    /// is a multiple of `align` (a power of two, at least a page): a span
    /// of a region when it is small enough, else a mapping of its own.
    ///
    /// Enters the block in `map`; returns it and whether it reads as zero.
    /// None when nothing can serve it now; `NoSpace` when the OS refused
    /// a mapping (or to grow a cached one). `clock` stamps what goes back
    /// into the cache.
    pub fn alloc(&mut self, n: usize, align: usize, map: &mut ArenaMap, clock: u64) -> Result<Option<(*mut u8, bool)>, NoSpace> {
        if n > MAX_REQUEST {
            return Ok(None);
        }
        let len = os::page_round_up(n.max(GRANULE_SIZE));
        if clock.saturating_sub(self.peak_at) > config::get().decay_ms as u64 {
            (self.live_peak, self.peak_at) = (self.bytes, clock);
        }
        let found = if align <= PAGE_SIZE && len <= region::SPAN_MAX {
            self.take_span(len)?
        } else {
            self.take_mapping(len, align, clock)?
        };
        let Some((block, zeroed)) = found else {
            return Ok(None);
        };
        // SAFETY: `block` is a live descriptor owned by nobody else.
        let b = unsafe { &mut *block };
        if !map.insert(b.base as usize, GRANULE_SIZE, Owner::Large(block)) {
            self.unallocate(b);
            return Ok(None);
        }
        self.blocks += 1;
        self.bytes += b.len;
        Ok(Some((b.base, zeroed)))
    }

    /// A mapping of its own for a block of `len` bytes aligned to `align`:
    /// a cached one if any serves, else a new one. Also whether it reads
    /// as zero.
    fn take_mapping(&mut self, len: usize, align: usize, clock: u64) -> Result<Option<(*mut LargeBlock, bool)>, NoSpace> {
        if let Some(block) = self.reuse_cached(len, align, clock)? {
            return Ok(Some((block, false)));
        }
        // Aligned as `move_away` will move it when it is freed.
        let base = map_os(len, align.max(MOVE_ALIGN))?;
        let block = self.records.alloc();
        if block.is_null() {
            // SAFETY: mapped just above, unused.
            unsafe { os::unmap(base, len) };
            return Ok(None);
        }
        // SAFETY: the slot is ours.
        unsafe { block.write(LargeBlock::new(base, len)) };
        Ok(Some((block, true)))
    }

    /// A cached mapping made `len` bytes long: one much longer is split
    /// and its tail cached again, one too short is grown with `mremap`
    /// (which keeps its pages). None if none serves; `NoSpace` if growing
    /// one failed (it stays cached).
    fn reuse_cached(&mut self, len: usize, align: usize, clock: u64) -> Result<Option<*mut LargeBlock>, NoSpace> {
        // SAFETY: the cache hands out live descriptors it let go of.
        let Some(b) = self.cache.take(len, align).map(|b| unsafe { &mut *b }) else {
            return Ok(None);
        };
        if b.len >= len {
            let tail = b.len - len;
            if tail > b.len / 4 && tail >= GRANULE_SIZE {
                self.cache_tail(b, len, clock);
            }
        } else {
            // SAFETY: the mapping is ours and unused; a moved one is not
            // in the arena map yet.
            let moved = unsafe { os::remap(b.base, b.len, len) };
            if moved.is_null() {
                // Still cached: a request that fails leaves the heap as it was.
                let evicted = self.cache.insert(b, clock);
                self.unmap_list(evicted);
                return Err(NoSpace { len, align });
            }
            b.base = moved;
            b.len = len;
        }
        Ok(Some(b))
    }

    /// Cuts cached mapping `b` to `len` bytes; the rest becomes a cached
    /// mapping of its own, or is unmapped when the cache cannot take it.
    fn cache_tail(&mut self, b: &mut LargeBlock, len: usize, clock: u64) {
        // SAFETY: `len` is inside the mapping.
        let tail_base = unsafe { b.base.add(len) };
        let tail_len = b.len - len;
        b.len = len;
        let record = if self.cache.accepts(tail_len) { self.records.alloc() } else { ptr::null_mut() };
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
        let evicted = self.cache.insert(tail, clock);
        self.unmap_list(evicted);
    }

    /// A span of `len` bytes (a multiple of the page size) from the
    /// regions, mapping a new region if no free span is big enough, placed
    /// where its free span has the most resident pages; also whether it
    /// reads as zero.
    fn take_span(&mut self, len: usize) -> Result<Option<(*mut LargeBlock, bool)>, NoSpace> {
        let span = match self.regions.take(len) {
            Some(span) => span,
            None => match self.map_region(len)? {
                Some(span) => span,
                None => return Ok(None),
            },
        };
        // SAFETY: a free span just taken out of its bin: ours alone.
        let mut s = unsafe { &mut *span };
        // Live before anything can merge with it.
        s.free = false;
        let at = s.placement(len);
        if at > 0 {
            // SAFETY: a descriptor just made, ours alone.
            if let Some(block) = unsafe { self.cut(s, at).as_mut() } {
                // The block is the part from `at`; the pages before it
                // stay a free span in its place.
                block.free = false;
                s.free = true;
                self.release_span(s);
                s = block;
            }
        }
        if s.len > len {
            // SAFETY: as above.
            if let Some(rest) = unsafe { self.cut(s, len).as_mut() } {
                self.release_span(rest); // merged with its right neighbour if it now can be
            }
        }
        let fresh = s.len - s.dirty.within(s.len);
        self.hold_footprint(fresh, s.len);
        // SAFETY: the span's pages are ours, and now the caller's.
        if !unsafe { guard_span(s.base, s.len, true) } {
            s.free = true;
            self.release_span(s);
            return Ok(None);
        }
        Ok(Some((ptr::from_mut(s), fresh == s.len)))
    }

    /// Keeps the pages resident in regions (live blocks, which `coming`
    /// bytes are about to join, and free spans) within
    /// `1 + 1/FREE_RESIDENT_SHARE` times the most the live blocks held
    /// lately (and `FREE_RESIDENT_MIN`): when a request faults in `new`
    /// bytes of fresh pages beyond that, as many resident bytes of the
    /// free spans freed longest ago go back first. So the footprint grows
    /// only when the holes are few, and its peak stays within that share
    /// of the live peak, while a program that replaces blocks of changing
    /// sizes finds its freed pages resident.
    fn hold_footprint(&mut self, new: usize, coming: usize) {
        let live = self.bytes + coming;
        self.live_peak = self.live_peak.max(live);
        let allowed = (self.live_peak + self.live_peak / FREE_RESIDENT_SHARE + FREE_RESIDENT_MIN).saturating_sub(live);
        self.shed_free_resident(new.min(self.regions.dirty_bytes.saturating_sub(allowed)));
    }

    /// Gives back about `bytes` (rounded up to pages) of the free spans'
    /// resident pages, those freed longest ago first, or all they hold;
    /// returns how many of `bytes` they could not cover.
    pub fn shed_free_resident(&mut self, bytes: usize) -> usize {
        let mut excess = bytes;
        while excess > 0 && self.regions.dirty_bytes > 0 {
            // SAFETY: binned spans are live descriptors of free pages.
            let Some(s) = (unsafe { self.regions.oldest_dirty().as_mut() }) else { break };
            // The start of its dirty bytes: what is left resident is then
            // whole freed blocks' tails, never a freed block's header
            // above released pages (which the debug mode's check of
            // reused memory would read as poison overwritten).
            let cut = os::page_round_up(excess.min(s.dirty.len()));
            // SAFETY: the span's pages hold no live block.
            unsafe { os::decommit(s.base.add(s.dirty.from), cut) };
            excess = excess.saturating_sub(cut);
            self.regions.unbin(s);
            s.dirty = s.dirty.without_first(cut);
            self.release_span(s); // it may merge with a neighbour now
        }
        excess
    }

    /// A new region for a span of at least `len` bytes, as one free span.
    fn map_region(&mut self, len: usize) -> Result<Option<*mut LargeBlock>, NoSpace> {
        let guarded = config::get().debug;
        let size = self.regions.next_region_size(len);
        let reserved = if guarded { os::reserve(size) } else { os::map(size) };
        let (mut base, mut size) = (reserved, size);
        if base.is_null() {
            (base, size) = (map_os(len, PAGE_SIZE)?, len);
            // SAFETY: mapped just above, unused. Best effort: free pages
            // left accessible are only less guarded.
            unsafe { guard_span(base, size, false) };
        }
        let span = self.records.alloc();
        if span.is_null() {
            // SAFETY: mapped just above, unused.
            unsafe { os::unmap(base, size) };
            return Ok(None);
        }
        // SAFETY: the slot is ours.
        unsafe { span.write(LargeBlock::span(base, size, Dirty::NONE, 0)) };
        self.regions.regions += 1;
        self.regions.region_bytes += size;
        Ok(Some(span))
    }

    /// Cuts span `s` at `at` (whole pages, inside it): a new free span
    /// for `at..`, `s`'s right neighbour in the region's tiling, each
    /// keeping its own part of the dirty bytes. Null (nothing changed)
    /// when there is no descriptor for it.
    fn cut(&mut self, s: &mut LargeBlock, at: usize) -> *mut LargeBlock {
        let rest = self.records.alloc();
        if !rest.is_null() {
            // SAFETY: the slot is ours; `at` is inside the span.
            unsafe {
                rest.write(LargeBlock::span(s.base.add(at), s.len - at, s.dirty.after(at), s.freed_at));
                self.split_off(s, &mut *rest);
            }
            s.dirty = s.dirty.before(at);
        }
        rest
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

    /// Bins free span `s` (out of any bin), merged with the free
    /// neighbours it can merge with (`region::mergeable`). Returns the
    /// merged span.
    fn release_span<'a>(&mut self, mut s: &'a mut LargeBlock) -> &'a mut LargeBlock {
        // SAFETY: a span's neighbours are live descriptors of its region,
        // binned when free; a merged-away descriptor is referred to by
        // nothing once its neighbours are relinked.
        unsafe {
            if let Some(left) = s.left.as_mut().filter(|l| l.free && region::mergeable(l, s)) {
                self.regions.unbin(left);
                self.absorb(left, s);
                s = left;
            }
            if let Some(right) = s.right.as_mut().filter(|r| r.free && region::mergeable(s, r)) {
                self.regions.unbin(right);
                self.absorb(s, right);
            }
        }
        self.regions.bin(s);
        s
    }

    /// Merges free span `right` (out of its bin) into its left neighbour
    /// `s`, which it is `mergeable` with, and frees its descriptor.
    fn absorb(&mut self, s: &mut LargeBlock, right: &mut LargeBlock) {
        // The callers merge only `mergeable` spans; were it otherwise, all
        // of it counting as dirty would still be safe.
        s.dirty = s.dirty.join(s.len, right.dirty).unwrap_or(Dirty::all(s.len + right.len));
        s.len += right.len;
        s.freed_at = s.freed_at.max(right.freed_at);
        s.right = right.right;
        // SAFETY: as in `split_off`; nothing refers to `right` any more.
        unsafe {
            if let Some(next) = right.right.as_mut() {
                next.left = s;
            }
            self.records.free(right);
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
            if !s.dirty.is_none() {
                // SAFETY: the span's pages hold no live block.
                unsafe { os::decommit(s.base.add(s.dirty.from), s.dirty.len()) };
                s.dirty = Dirty::NONE;
                released = true;
            }
            s.free = true;
            let merged = self.release_span(s);
            if merged.is_whole_region() && merged.freed_at <= cutoff {
                self.regions.unbin(merged);
                self.regions.regions -= 1;
                self.regions.region_bytes -= merged.len;
                self.unmap(merged);
                released = true;
            }
        }
        released
    }

    /// Returns a large block that never reached its owner.
    fn unallocate(&mut self, b: &mut LargeBlock) {
        if b.in_region {
            // SAFETY: the span was never handed out. Best effort.
            unsafe { guard_span(b.base, b.len, false) };
            b.free = true;
            b.dirty = Dirty::all(b.len);
            self.release_span(b);
        } else {
            self.unmap(b);
        }
    }

    /// Frees live block `block`, which `map` names, stamped `now` (ms).
    pub fn free(&mut self, block: *mut LargeBlock, map: &mut ArenaMap, now: u64) {
        // SAFETY: the caller found it in the map, so it is live.
        let b = unsafe { &mut *block };
        map.remove(b.base as usize, GRANULE_SIZE);
        self.blocks -= 1;
        self.bytes -= b.len;
        self.recently_freed.record(b.base);
        if b.in_region {
            // SAFETY: the block is free: nothing may touch it any more.
            // Best effort.
            unsafe { guard_span(b.base, b.len, false) };
            b.free = true;
            b.dirty = Dirty::all(b.len);
            b.freed_at = now;
            self.release_span(b);
        } else if self.cache.learn(b.len, self.bytes) && self.move_away(b) {
            let evicted = self.cache.insert(b, now);
            self.unmap_list(evicted);
        } else {
            self.unmap(b);
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

    fn unmap(&mut self, block: &mut LargeBlock) {
        // SAFETY: the block is out of the map and the cache: nobody uses it.
        unsafe {
            os::unmap(block.base, block.len);
            self.records.free(block);
        }
    }

    fn unmap_list(&mut self, mut list: *mut LargeBlock) {
        // SAFETY: lists from the cache hold live descriptors it let go of.
        while let Some(block) = unsafe { list.as_mut() } {
            list = block.next;
            self.unmap(block);
        }
    }

    /// Resizes live block `block`, which `map` names, to `n` bytes where
    /// it is (a span's freed tail stamped `now`), or says how the caller
    /// must move it; `NoSpace` when the OS refused the mapping to move it
    /// to.
    pub fn resize(&mut self, block: *mut LargeBlock, n: usize, map: &mut ArenaMap, now: u64) -> Result<Resize, NoSpace> {
        // SAFETY: the caller found it in the map, so it is live.
        let b = unsafe { &mut *block };
        if n <= MEDIUM_MAX && n < b.len / 2 {
            return Ok(Resize::Move { usable: b.len }); // into an arena, releasing the mapping
        }
        if n > MAX_REQUEST {
            return Ok(Resize::Failed);
        }
        let len = os::page_round_up(n.max(GRANULE_SIZE));
        if b.in_region {
            return Ok(self.resize_span(b, len, now));
        }
        if len <= b.len {
            if len < b.len {
                // SAFETY: the tail beyond `len` is ours and the caller gave it up.
                unsafe { os::shrink(b.base, b.len, len) };
                self.bytes -= b.len - len;
                b.len = len;
            }
            return Ok(Resize::Done(b.base));
        }
        // SAFETY: b is one whole mapping of ours.
        if unsafe { os::grow_in_place(b.base, b.len, len) } {
            self.bytes += len - b.len;
            b.len = len;
            return Ok(Resize::Done(b.base));
        }
        // Move: reserve the destination first so that it can be entered in
        // the map before the pages move (the map may need a new leaf).
        let target = map_os(len, PAGE_SIZE)?;
        if !map.insert(target as usize, GRANULE_SIZE, Owner::Large(block)) {
            // SAFETY: mapped just above, unused.
            unsafe { os::unmap(target, len) };
            return Ok(Resize::Failed);
        }
        // SAFETY: b is one whole mapping of ours; target is ours and unused.
        if !unsafe { os::move_onto(b.base, b.len, len, target) } {
            map.remove(target as usize, GRANULE_SIZE);
            // SAFETY: as above.
            unsafe { os::unmap(target, len) };
            return Ok(Resize::Failed);
        }
        map.remove(b.base as usize, GRANULE_SIZE);
        self.recently_freed.record(b.base);
        self.bytes += len - b.len;
        b.base = target;
        b.len = len;
        Ok(Resize::Done(target))
    }

    /// `resize` for a span, to `len` bytes (a multiple of the page
    /// size): a shrink frees the tail, a growth takes the pages of a free
    /// right neighbour; otherwise the block moves.
    fn resize_span(&mut self, b: &mut LargeBlock, len: usize, now: u64) -> Resize {
        if len < b.len {
            let tail = self.records.alloc();
            if !tail.is_null() {
                let freed = b.len - len;
                // SAFETY: the slot is ours; the tail beyond `len` is ours
                // and the caller gave it up.
                unsafe {
                    tail.write(LargeBlock::span(b.base.add(len), freed, Dirty::all(freed), now));
                    guard_span((*tail).base, freed, false); // best effort
                    self.split_off(b, &mut *tail);
                    self.release_span(&mut *tail);
                }
                self.bytes -= freed;
            }
            return Resize::Done(b.base);
        }
        if len == b.len {
            return Resize::Done(b.base);
        }
        if len > region::SPAN_MAX {
            // Bigger blocks are mappings of their own, which fault once
            // freed (a span's pages stay accessible).
            return Resize::Move { usable: b.len };
        }
        // SAFETY: a span's neighbours are live descriptors of its region.
        let right = unsafe { b.right.as_mut() }.filter(|r| r.free && b.len + r.len >= len);
        // SAFETY: the free pages right after the block are ours, and
        // become the caller's.
        match right.filter(|r| unsafe { guard_span(r.base, len - b.len, true) }) {
            Some(right) => {
                let grown = len - b.len;
                let fresh = grown - right.dirty.within(grown);
                self.regions.unbin(right);
                if right.len > grown {
                    // SAFETY: `grown` is inside the free span.
                    right.base = unsafe { right.base.add(grown) };
                    right.len -= grown;
                    right.dirty = right.dirty.after(grown);
                    self.release_span(right); // shorter now, it may merge with its right neighbour
                } else {
                    b.right = right.right;
                    // SAFETY: as above; nothing refers to `right` any more.
                    unsafe {
                        if let Some(next) = right.right.as_mut() {
                            next.left = b;
                        }
                        self.records.free(right);
                    }
                }
                self.bytes += grown;
                b.len = len;
                self.hold_footprint(fresh, 0);
                Resize::Done(b.base)
            }
            _ => Resize::Move { usable: b.len },
        }
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

/// How far the pages resident in regions may exceed the live peak: a
/// share of it, and a floor (`hold_footprint`).
const FREE_RESIDENT_SHARE: usize = 10;
const FREE_RESIDENT_MIN: usize = region::REGION_MIN;

/// Most mappings the cache holds.
const CACHE_MAX_ENTRIES: usize = 64;

const LIVE_SHARE: usize = 4;

/// Freed mappings, most recently freed first.
pub struct LargeCache {
    mappings: AgeList<LargeBlock>,
    pub bytes: usize,
    /// The most bytes the cache holds (see the module doc).
    pub limit: usize,
}

impl LargeCache {
    pub const fn new() -> Self {
        LargeCache { mappings: AgeList::new(), bytes: 0, limit: 0 }
    }

    pub fn entries(&self) -> usize {
        self.mappings.len
    }

    /// Learns from a freed mapping of `len` bytes while `live` bytes stay
    /// in large blocks; whether the cache takes it.
    pub fn learn(&mut self, len: usize, live: usize) -> bool {
        let cap = config::get().large_cache;
        self.limit = self.limit.max(len.saturating_mul(2)).max(live / LIVE_SHARE).min(cap);
        len <= self.limit
    }

    /// Takes the cached mapping to reuse for `len` bytes at alignment
    /// `align`: the smallest one that holds `len`, else (for page
    /// alignment) the largest, for the caller to grow. Most recent first
    /// among equals.
    pub fn take(&mut self, len: usize, align: usize) -> Option<*mut LargeBlock> {
        let mut best: *mut LargeBlock = ptr::null_mut();
        let mut best_len = 0;
        self.mappings.find_newest(|block| {
            // A mask, not `%`: `align` is a power of two (and no division
            // means no panic path).
            if block.base as usize & (align - 1) != 0 {
                return false;
            }
            let better = if best_len >= len {
                block.len >= len && block.len < best_len
            } else {
                block.len > best_len && (block.len >= len || align <= PAGE_SIZE)
            };
            if better {
                best = block;
                best_len = block.len;
            }
            false
        });
        // SAFETY: cached descriptors are live.
        let block = unsafe { best.as_mut()? };
        self.unlink(block);
        Some(block)
    }

    /// Takes the mappings cached at or before `cutoff` (ms) out of the
    /// cache, linked through `next`, for the caller to unmap.
    pub fn evict_older(&mut self, cutoff: u64) -> *mut LargeBlock {
        let mut evicted: *mut LargeBlock = ptr::null_mut();
        // SAFETY: cached descriptors are live.
        while let Some(oldest) = unsafe { self.mappings.oldest().as_mut() } {
            if oldest.freed_at > cutoff {
                break;
            }
            self.unlink(oldest);
            oldest.next = evicted;
            evicted = oldest;
        }
        if self.entries() == 0 {
            self.limit = 0; // large blocks are no longer replaced: learn anew
        }
        evicted
    }

    /// Whether a cached mapping starts at `p`.
    pub fn holds_base(&self, p: *mut u8) -> bool {
        !self.mappings.find_newest(|block| block.base == p).is_null()
    }

    /// Whether a mapping of `len` bytes fits the cache at all.
    pub fn accepts(&self, len: usize) -> bool {
        len <= self.limit
    }

    /// Caches a freed mapping that it `accepts`; returns the mappings it
    /// pushed out (oldest first, linked through `next`) for the caller to
    /// unmap.
    pub fn insert(&mut self, block: &mut LargeBlock, now: u64) -> *mut LargeBlock {
        let mut evicted: *mut LargeBlock = ptr::null_mut();
        while self.entries() >= CACHE_MAX_ENTRIES || self.bytes + block.len > self.limit {
            // SAFETY: the cache is non-empty here (block.len alone fits),
            // and its descriptors are live.
            let oldest = unsafe { &mut *self.mappings.oldest() };
            self.unlink(oldest);
            oldest.next = evicted;
            evicted = oldest;
        }
        block.freed_at = now;
        self.mappings.push_newest(block);
        self.bytes += block.len;
        evicted
    }

    fn unlink(&mut self, block: &mut LargeBlock) {
        self.mappings.unlink(block);
        self.bytes -= block.len;
    }
}

/// The start addresses of the last large blocks freed (or moved away by
/// `realloc`), so that freeing one again is reported as a double free
/// even after its mapping went back to the OS. Only consulted for a
/// pointer that starts no live block.
pub struct RecentlyFreed {
    bases: [*mut u8; RECENTLY_FREED],
    next: usize,
}

const RECENTLY_FREED: usize = 32;

impl RecentlyFreed {
    pub const fn new() -> Self {
        RecentlyFreed { bases: [ptr::null_mut(); RECENTLY_FREED], next: 0 }
    }

    pub fn record(&mut self, base: *mut u8) {
        // The modulo (not a kept invariant) lets the compiler drop the
        // bounds check, and with it a panic path.
        self.bases[self.next % RECENTLY_FREED] = base;
        self.next = self.next.wrapping_add(1);
    }

    pub fn contains(&self, p: *mut u8) -> bool {
        !p.is_null() && self.bases.contains(&p)
    }
}
