//! Large blocks (above `MEDIUM_MAX`, or aligned beyond what a class
//! offers): one private mapping each, starting at the block.
//!
//! Descriptors live in a slab, not in front of the block, so a buffer
//! underflow cannot corrupt them. Freed mappings wait in a small cache
//! (most recent first) so that a program that repeatedly allocates and
//! frees big buffers does not pay page faults each time: a request takes
//! the cached mapping that fits it best, trimmed or grown with `mremap`
//! (which keeps its pages), and mappings unused for `PYMALLOC_DECAY_MS` go
//! back to the OS.
//!
//! How much the cache keeps is learned, as glibc learns its mmap
//! threshold: twice the largest mapping freed lately (or a quarter of the
//! bytes in live large blocks), at most `PYMALLOC_LARGE_CACHE`. A program
//! that replaces 20 MiB buffers keeps one or two of them resident for the
//! next request. When decay empties the cache, the limit starts from
//! zero again.
//!
//! A freed mapping enters the cache at another address: the heap moves
//! it, pages and all, to fresh address space (`Heap::move_away`, one
//! `mremap`), so the address the program knew is unmapped and a stale
//! pointer faults, as after glibc's `munmap`.

use core::ptr;

use crate::config;
use crate::geometry::PAGE_SIZE;

/// One large block: `base..base+len`, all of it usable; a mapping of its
/// own, or a span of a region (`crate::region`).
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
    /// A free span's first `dirty_len` bytes may hold resident pages
    /// (written since they were last given back); the rest reads as zero.
    pub dirty_len: usize,
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
            dirty_len: 0,
        }
    }

    /// A free span of a region.
    pub fn span(base: *mut u8, len: usize, dirty_len: usize, freed_at: u64) -> Self {
        LargeBlock { freed_at, in_region: true, free: true, dirty_len, ..LargeBlock::new(base, len) }
    }

    /// Whether this span is its whole region.
    pub fn is_whole_region(&self) -> bool {
        self.left.is_null() && self.right.is_null()
    }
}

/// Most mappings the cache holds.
const CACHE_MAX_ENTRIES: usize = 64;

const LIVE_SHARE: usize = 4;

/// Freed mappings, most recently freed first.
pub struct LargeCache {
    head: *mut LargeBlock,
    tail: *mut LargeBlock,
    pub entries: usize,
    pub bytes: usize,
    /// The most bytes the cache holds (see the module doc).
    pub limit: usize,
}

impl LargeCache {
    pub const fn new() -> Self {
        LargeCache { head: ptr::null_mut(), tail: ptr::null_mut(), entries: 0, bytes: 0, limit: 0 }
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
        let mut cur = self.head;
        // SAFETY: cached descriptors are live and linked only here.
        while let Some(block) = unsafe { cur.as_mut() } {
            cur = block.next;
            if block.base as usize % align != 0 {
                continue;
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
        }
        // SAFETY: as above.
        let block = unsafe { best.as_mut()? };
        self.unlink(block);
        Some(block)
    }

    /// Takes the mappings cached at or before `cutoff` (ms) out of the
    /// cache, linked through `next`, for the caller to unmap.
    pub fn evict_older(&mut self, cutoff: u64) -> *mut LargeBlock {
        let mut evicted: *mut LargeBlock = ptr::null_mut();
        // SAFETY: as in `take`.
        while let Some(oldest) = unsafe { self.tail.as_mut() } {
            if oldest.freed_at > cutoff {
                break;
            }
            self.unlink(oldest);
            oldest.next = evicted;
            evicted = oldest;
        }
        if self.entries == 0 {
            self.limit = 0; // large blocks are no longer replaced: learn anew
        }
        evicted
    }

    /// Whether a cached mapping starts at `p`.
    pub fn holds_base(&self, p: *mut u8) -> bool {
        let mut cur = self.head;
        // SAFETY: as in `take`.
        while let Some(block) = unsafe { cur.as_ref() } {
            if block.base == p {
                return true;
            }
            cur = block.next;
        }
        false
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
        while self.entries >= CACHE_MAX_ENTRIES || self.bytes + block.len > self.limit {
            // SAFETY: the cache is non-empty here (block.len alone fits),
            // and its tail is a live descriptor.
            let oldest = unsafe { &mut *self.tail };
            self.unlink(oldest);
            oldest.next = evicted;
            evicted = oldest;
        }
        block.freed_at = now;
        block.prev = ptr::null_mut();
        block.next = self.head;
        // SAFETY: as in `take`.
        match unsafe { self.head.as_mut() } {
            Some(head) => head.prev = block,
            None => self.tail = block,
        }
        self.head = block;
        self.entries += 1;
        self.bytes += block.len;
        evicted
    }

    fn unlink(&mut self, block: &mut LargeBlock) {
        // SAFETY: as in `take`.
        unsafe {
            match block.prev.as_mut() {
                Some(prev) => prev.next = block.next,
                None => self.head = block.next,
            }
            match block.next.as_mut() {
                Some(next) => next.prev = block.prev,
                None => self.tail = block.prev,
            }
        }
        block.next = ptr::null_mut();
        block.prev = ptr::null_mut();
        self.entries -= 1;
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
