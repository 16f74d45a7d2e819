//! Large blocks up to `SPAN_MAX` bytes, carved from regions: mappings of
//! `REGION_MIN` to `REGION_MAX` bytes, as much as the regions mapped so
//! far (so their address space stays in proportion to what they serve:
//! a memory limit counts all of it), or one block's size when that much
//! address space is refused; each tiled by spans of whole pages. A span
//! is a live large block or a run of free pages.
//!
//! A freed block merges with its free neighbours and keeps its pages, so
//! the next large request of any size reuses pages that are already
//! faulted in, as glibc's heap does below its mmap threshold. A free span
//! knows the one interval of its bytes that may be resident (`Dirty`),
//! and two free neighbours merge only when their intervals join into one
//! (`mergeable`), so that what free spans hold is counted exactly. A
//! request takes the span that needs the fewest new pages, placed over
//! its resident ones (`LargeBlock::placement`: its start, or where the
//! resident pages end), so the footprint grows only when the holes
//! cannot serve. Free spans unused for `PYMALLOC_DECAY_MS` give their
//! pages back (`MADV_DONTNEED`), the oldest sooner when a request needs
//! fresh pages while free spans hold more than their bound
//! (`Large::hold_footprint`), and a region that is one free span is
//! unmapped.
//!
//! Spans are described by `LargeBlock`s in the heap's slab, never by
//! headers next to the pages, so an overflow cannot corrupt them. Each
//! knows its neighbours in address order (`left`, `right`: the boundary
//! tags of a classic allocator, kept aside); free spans also sit in a bin
//! by size, most recently freed first.

use core::ptr;

use crate::geometry::PAGE_SIZE;
use crate::large_block::LargeBlock;

/// The address space a region reserves, at least and at most. Pages are
/// touched only as spans are used, so most of it costs no memory until
/// needed.
pub const REGION_MIN: usize = 8 << 20;
pub const REGION_MAX: usize = 256 << 20;
/// The largest block served from regions; bigger ones are mappings of
/// their own, which `mremap` can grow without copying.
pub const SPAN_MAX: usize = 32 << 20;

/// Bin `i` holds free spans of `2^i .. 2^(i+1)` pages (one bit each in
/// `Regions::nonempty`).
const BINS: usize = 32;
/// Free spans of a bin compared in search of the best fit.
const FIT_SCAN: usize = 64;

fn bin_of(len: usize) -> usize {
    // A floor log2 that cannot panic (spans have at least one page).
    ((usize::BITS - 1 - ((len / PAGE_SIZE) | 1).leading_zeros()) as usize).min(BINS - 1)
}

/// Whether free spans `left` and `right`, neighbours in that order, may
/// become one: only if their dirty bytes make one interval, so that what
/// a span says it holds resident stays exact (the footprint bound of
/// `Large` counts on it) rather than growing by the clean pages between
/// them. Two dirty spans with clean pages between stay apart until decay
/// makes one of them clean.
pub fn mergeable(left: &LargeBlock, right: &LargeBlock) -> bool {
    left.dirty.join(left.len, right.dirty).is_some()
}

/// The free spans of every region.
pub struct Regions {
    bins: [*mut LargeBlock; BINS],
    /// Bit `i` set when bin `i` is not empty.
    nonempty: u32,
    /// Free spans, and bytes in them; free spans with resident pages.
    pub free_spans: usize,
    pub free_bytes: usize,
    pub dirty_spans: usize,
    /// Bytes of regions that are one free span (unmapped when they decay).
    pub idle_bytes: usize,
    /// Bytes of free spans that may hold resident pages (not given back
    /// since they were last used).
    pub dirty_bytes: usize,
    /// Regions mapped, and their bytes.
    pub regions: usize,
    pub region_bytes: usize,
}

impl Regions {
    pub const fn new() -> Self {
        Regions {
            bins: [ptr::null_mut(); BINS],
            nonempty: 0,
            free_spans: 0,
            free_bytes: 0,
            dirty_spans: 0,
            idle_bytes: 0,
            dirty_bytes: 0,
            regions: 0,
            region_bytes: 0,
        }
    }

    /// The size of the next region, for a span of `len` bytes: as much as
    /// the regions mapped now, within `REGION_MIN..=REGION_MAX`, so that
    /// the regions' address space doubles at most with each new one.
    pub fn next_region_size(&self, len: usize) -> usize {
        self.region_bytes.clamp(REGION_MIN, REGION_MAX).max(len)
    }

    /// Takes a free span of at least `len` bytes (a multiple of the page
    /// size) out of its bin: the best fit among the first few of `len`'s
    /// own bin and of the bins above, from the smallest up, preferring
    /// spans whose resident pages the block can reuse (reusing them costs
    /// no page faults and no more memory). The search ends at the first
    /// bin that holds a span needing no new pages.
    pub fn take(&mut self, len: usize) -> Option<*mut LargeBlock> {
        let mut bins = self.nonempty & !((1u32 << bin_of(len)) - 1);
        let key = |s: &LargeBlock| (s.fresh_for(len), s.len, s.base as usize);
        let (mut best, mut best_key) = (ptr::null_mut(), (usize::MAX, 0, 0));
        while bins != 0 && best_key.0 > 0 {
            let bin = bins.trailing_zeros() as usize % BINS;
            bins &= bins - 1;
            let mut cur = self.bins[bin];
            for _ in 0..FIT_SCAN {
                // SAFETY: binned spans are live descriptors linked only here.
                let Some(span) = (unsafe { cur.as_ref() }) else { break };
                if span.len >= len && key(span) < best_key {
                    (best, best_key) = (cur, key(span));
                }
                cur = span.next;
            }
        }
        // SAFETY: as above; the caller takes it out of the bins.
        let span = unsafe { best.as_mut()? };
        self.unbin(span);
        Some(span)
    }

    /// Puts a free span in its bin.
    pub fn bin(&mut self, span: &mut LargeBlock) {
        let bin = bin_of(span.len);
        span.prev = ptr::null_mut();
        span.next = self.bins[bin];
        // SAFETY: as in `take`.
        if let Some(head) = unsafe { span.next.as_mut() } {
            head.prev = span;
        }
        self.bins[bin] = span;
        self.nonempty |= 1 << bin;
        self.free_spans += 1;
        self.free_bytes += span.len;
        self.dirty_spans += usize::from(!span.dirty.is_none());
        self.dirty_bytes += span.dirty.len();
        if span.is_whole_region() {
            self.idle_bytes += span.len;
        }
    }

    /// Takes a free span out of its bin.
    pub fn unbin(&mut self, span: &mut LargeBlock) {
        let bin = bin_of(span.len);
        // SAFETY: as in `take`.
        unsafe {
            match span.prev.as_mut() {
                Some(prev) => prev.next = span.next,
                None => self.bins[bin] = span.next,
            }
            if let Some(next) = span.next.as_mut() {
                next.prev = span.prev;
            }
        }
        if self.bins[bin].is_null() {
            self.nonempty &= !(1 << bin);
        }
        span.next = ptr::null_mut();
        span.prev = ptr::null_mut();
        self.free_spans -= 1;
        self.free_bytes -= span.len;
        self.dirty_spans -= usize::from(!span.dirty.is_none());
        self.dirty_bytes -= span.dirty.len();
        if span.is_whole_region() {
            self.idle_bytes -= span.len;
        }
    }

    /// The binned span with resident pages that was freed longest ago,
    /// or null.
    pub fn oldest_dirty(&self) -> *mut LargeBlock {
        let mut oldest: Option<&LargeBlock> = None;
        for &head in &self.bins {
            let mut cur = head;
            // SAFETY: as in `take`.
            while let Some(span) = unsafe { cur.as_ref() } {
                if !span.dirty.is_none() && oldest.is_none_or(|o| span.freed_at < o.freed_at) {
                    oldest = Some(span);
                }
                cur = span.next;
            }
        }
        oldest.map_or(ptr::null_mut(), |o| ptr::from_ref(o).cast_mut())
    }

    /// Calls `f` on every free span; `f` may unbin the span it is given
    /// (and only that one).
    pub fn for_each_free(&mut self, mut f: impl FnMut(&mut Self, *mut LargeBlock)) {
        for bin in 0..BINS {
            let mut cur = self.bins[bin];
            while !cur.is_null() {
                // SAFETY: as in `take`; read before `f` may unlink it.
                let next = unsafe { (*cur).next };
                f(self, cur);
                cur = next;
            }
        }
    }

    /// The first broken invariant of the free spans, if any: each is
    /// binned by its size, merged with the neighbours it is `mergeable`
    /// with (which link back to it), and the totals add up.
    pub fn check(&self) -> Result<(), &'static str> {
        let (mut spans, mut bytes, mut dirty_spans, mut dirty, mut idle) = (0, 0, 0, 0, 0);
        for (bin, &head) in self.bins.iter().enumerate() {
            if head.is_null() == (self.nonempty >> bin & 1 != 0) {
                return Err("region bin bitmap disagrees with its bins");
            }
            let mut cur = head;
            // SAFETY: binned spans are live descriptors linked only here,
            // their neighbours live descriptors of the same region.
            while let Some(span) = unsafe { cur.as_ref() } {
                if !span.free || !span.in_region || bin_of(span.len) != bin || span.len % PAGE_SIZE != 0 {
                    return Err("a binned span is not a free span of its bin");
                }
                if span.dirty.from > span.dirty.to || span.dirty.to > span.len {
                    return Err("a free span's dirty bytes are not within it");
                }
                // SAFETY: as above.
                let (left, right) = unsafe { (span.left.as_ref(), span.right.as_ref()) };
                if left.is_some_and(|l| (l.free && mergeable(l, span)) || !ptr::eq(l.right, span) || l.base.wrapping_add(l.len) != span.base)
                    || right.is_some_and(|r| (r.free && mergeable(span, r)) || !ptr::eq(r.left, span) || span.base.wrapping_add(span.len) != r.base)
                {
                    return Err("a free span is not merged with, or not linked to, its neighbours");
                }
                spans += 1;
                bytes += span.len;
                dirty_spans += usize::from(!span.dirty.is_none());
                dirty += span.dirty.len();
                if span.is_whole_region() {
                    idle += span.len;
                }
                cur = span.next;
            }
        }
        let counted = (self.free_spans, self.free_bytes, self.dirty_spans, self.dirty_bytes, self.idle_bytes);
        if (spans, bytes, dirty_spans, dirty, idle) != counted {
            return Err("region free-span totals disagree with the bins");
        }
        Ok(())
    }
}
