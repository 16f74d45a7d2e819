//! A large block's descriptor (`LargeBlock`): a mapping of its own or a
//! span of a region. Descriptors live in a slab, not in front of the
//! block, so a buffer underflow cannot corrupt them.

use core::ptr;

use crate::geometry::GRANULE_SIZE;
use crate::list::Linked;
use crate::os;

/// One large block: `base..base+len`, all of it usable; a mapping of its
/// own, or a span of a region (`region`).
pub struct LargeBlock {
    pub base: *mut u8,
    pub len: usize,
    /// Neighbours in the cache (a mapping) or in a bin (a free span) while
    /// free, since `freed_at` (ms).
    pub next: *mut LargeBlock,
    pub prev: *mut LargeBlock,
    pub freed_at: u64,
    /// A span's neighbours in address order within its region (null at
    /// the region's ends; always null for a mapping).
    pub left: *mut LargeBlock,
    pub right: *mut LargeBlock,
    pub in_region: bool,
    /// A span that is free pages, not a live block.
    pub free: bool,
    /// The bytes of a free span that may hold resident pages (written
    /// since they were last given back); the rest reads as zero.
    pub dirty: Dirty,
}

impl LargeBlock {
    /// A mapping of its own.
    pub fn new(base: *mut u8, len: usize) -> Self {
        LargeBlock {
            base,
            len,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            freed_at: 0,
            left: ptr::null_mut(),
            right: ptr::null_mut(),
            in_region: false,
            free: false,
            dirty: Dirty::NONE,
        }
    }

    /// A free span of a region.
    pub fn span(base: *mut u8, len: usize, dirty: Dirty, freed_at: u64) -> Self {
        LargeBlock { freed_at, in_region: true, free: true, dirty, ..LargeBlock::new(base, len) }
    }

    /// Whether this span is its whole region.
    pub fn is_whole_region(&self) -> bool {
        self.left.is_null() && self.right.is_null()
    }

    /// Where a block of `len` bytes (at most the span's length) goes in
    /// this free span: the offset, in whole pages, that reuses the most of
    /// its resident pages; its start when that does as well.
    pub fn placement(&self, len: usize) -> usize {
        let d = self.dirty;
        if d.within(len) >= len.min(d.len()) {
            0
        } else {
            // The dirty bytes reach past `len` and do not start the span:
            // the block ends where they end (`d.to <= self.len`).
            d.to - len
        }
    }

    /// The pages a block of `len` bytes placed in this free span must
    /// fault in afresh.
    pub fn fresh_for(&self, len: usize) -> usize {
        len - self.dirty.overlap(self.placement(len), len)
    }

    /// Whether `free_sized` may name `size` for this block: a mapping from
    /// the cache, or one a realloc kept, may be up to twice as big as asked.
    pub fn fits_size(&self, size: usize) -> bool {
        size <= self.len && 2 * os::page_round_up(size.max(GRANULE_SIZE)) >= self.len
    }
}

/// The bytes `from..to` of a free span (offsets from its start, whole
/// pages) that may be resident: one interval, exact where the pages were
/// written, so that what free spans hold can be counted. Empty is
/// `NONE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirty {
    pub from: usize,
    pub to: usize,
}

impl Dirty {
    pub const NONE: Dirty = Dirty { from: 0, to: 0 };

    /// All `len` bytes of a span.
    pub fn all(len: usize) -> Dirty {
        Dirty { from: 0, to: len }
    }

    pub fn len(self) -> usize {
        self.to - self.from
    }

    pub fn is_none(self) -> bool {
        self.from == self.to
    }

    /// The dirty bytes among the first `len`.
    pub fn within(self, len: usize) -> usize {
        self.to.min(len).saturating_sub(self.from)
    }

    /// The dirty bytes among `at..at + len`.
    pub fn overlap(self, at: usize, len: usize) -> usize {
        self.to.min(at + len).saturating_sub(self.from.max(at))
    }

    /// What is dirty among the first `len` bytes.
    pub fn before(self, len: usize) -> Dirty {
        if self.from >= len { Dirty::NONE } else { Dirty { from: self.from, to: self.to.min(len) } }
    }

    /// The interval without its first `n` bytes (at most its length).
    pub fn without_first(self, n: usize) -> Dirty {
        let from = self.from + n;
        if from >= self.to { Dirty::NONE } else { Dirty { from, to: self.to } }
    }

    /// What is dirty past the first `len` bytes, as offsets from there.
    pub fn after(self, len: usize) -> Dirty {
        if self.to <= len { Dirty::NONE } else { Dirty { from: self.from.max(len) - len, to: self.to - len } }
    }

    /// The dirty bytes of a span of `len` bytes followed by one with
    /// `right`: None when they are not one interval.
    pub fn join(self, len: usize, right: Dirty) -> Option<Dirty> {
        let right = Dirty { from: right.from + len, to: right.to + len };
        match (self.is_none(), right.is_none()) {
            (_, true) => Some(self),
            (true, false) => Some(right),
            (false, false) => (self.to == right.from).then_some(Dirty { from: self.from, to: right.to }),
        }
    }
}

/// In the cache (a mapping) or a bin (a free span): `prev` is newer,
/// `next` older.
impl Linked for LargeBlock {
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self) {
        (&mut self.prev, &mut self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::{Dirty, LargeBlock};

    const P: usize = 4096;

    fn d(from: usize, to: usize) -> Dirty {
        Dirty { from: from * P, to: to * P }
    }

    #[test]
    fn the_dirty_bytes_of_a_span_split_at_its_start() {
        let dirty = d(2, 6);
        assert_eq!(dirty.within(P), 0, "the first page is clean");
        assert_eq!(dirty.within(4 * P), 2 * P);
        assert_eq!(dirty.within(10 * P), 4 * P);
        assert_eq!(dirty.after(P), d(1, 5));
        assert_eq!(dirty.after(4 * P), d(0, 2));
        assert_eq!(dirty.after(6 * P), Dirty::NONE, "nothing dirty past the interval");
        assert_eq!(Dirty::all(3 * P).after(3 * P), Dirty::NONE);
        assert_eq!(dirty.without_first(P), d(3, 6));
        assert_eq!(dirty.without_first(4 * P), Dirty::NONE, "all of it given back");
        assert!(Dirty::NONE.is_none() && Dirty::NONE.within(10 * P) == 0);
        assert_eq!(dirty.before(4 * P), d(2, 4));
        assert_eq!(dirty.before(2 * P), Dirty::NONE, "clean up to where it starts");
        assert_eq!(dirty.before(10 * P), dirty);
        assert_eq!(dirty.overlap(3 * P, 2 * P), 2 * P);
        assert_eq!(dirty.overlap(5 * P, 4 * P), P);
        assert_eq!(dirty.overlap(6 * P, 4 * P), 0);
    }

    #[test]
    fn a_block_goes_where_the_span_has_resident_pages() {
        let span = |dirty| LargeBlock::span(core::ptr::null_mut(), 10 * P, dirty, 0);
        assert_eq!(span(Dirty::NONE).placement(4 * P), 0, "a clean span: its start");
        assert_eq!(span(d(0, 6)).placement(4 * P), 0, "resident at its start");
        assert_eq!(span(d(2, 3)).placement(4 * P), 0, "the start covers all there is");
        assert_eq!(span(d(4, 10)).placement(4 * P), 6 * P, "resident at its end");
        assert_eq!(span(d(3, 9)).placement(4 * P), 5 * P, "inside what is resident");
        assert_eq!(span(d(3, 6)).placement(4 * P), 2 * P, "over all that is resident");
        assert_eq!(span(d(3, 9)).fresh_for(4 * P), 0);
        assert_eq!(span(d(3, 6)).fresh_for(4 * P), P);
        assert_eq!(span(d(4, 10)).fresh_for(10 * P), 4 * P);
    }

    #[test]
    fn neighbours_join_only_into_one_interval() {
        // A span of 4 pages followed by another.
        assert_eq!(d(1, 4).join(4 * P, d(0, 2)), Some(d(1, 6)), "touching at the boundary");
        assert_eq!(d(1, 3).join(4 * P, d(0, 2)), None, "a clean page between");
        assert_eq!(d(1, 4).join(4 * P, d(1, 2)), None, "a clean page between");
        assert_eq!(Dirty::NONE.join(4 * P, d(1, 2)), Some(d(5, 6)), "a clean left span");
        assert_eq!(d(0, 2).join(4 * P, Dirty::NONE), Some(d(0, 2)), "a clean right span");
        assert_eq!(Dirty::NONE.join(4 * P, Dirty::NONE), Some(Dirty::NONE));
    }
}
