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

use core::ptr;

use crate::config;
use crate::geometry::PAGE_SIZE;

/// One large block: the mapping `base..base+len`, all of it usable.
pub struct LargeBlock {
    pub base: *mut u8,
    pub len: usize,
    /// Neighbours in the cache while the mapping is cached, since
    /// `freed_at` (ms).
    next: *mut LargeBlock,
    prev: *mut LargeBlock,
    freed_at: u64,
}

impl LargeBlock {
    pub fn new(base: *mut u8, len: usize) -> Self {
        LargeBlock { base, len, next: ptr::null_mut(), prev: ptr::null_mut(), freed_at: 0 }
    }
}

/// Most mappings the cache holds (bytes: `PYMALLOC_LARGE_CACHE`).
const CACHE_MAX_ENTRIES: usize = 64;

fn max_bytes() -> usize {
    config::get().large_cache
}

/// Freed mappings, most recently freed first.
pub struct LargeCache {
    head: *mut LargeBlock,
    tail: *mut LargeBlock,
    pub entries: usize,
    pub bytes: usize,
}

impl LargeCache {
    pub const fn new() -> Self {
        LargeCache { head: ptr::null_mut(), tail: ptr::null_mut(), entries: 0, bytes: 0 }
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

    /// Whether a mapping of `len` bytes may be cached at all.
    pub fn accepts(len: usize) -> bool {
        len <= max_bytes() / 4
    }

    /// Caches a freed mapping; returns the mappings it pushed out (oldest
    /// first, linked through `next`) for the caller to unmap.
    pub fn insert(&mut self, block: &mut LargeBlock, now: u64) -> *mut LargeBlock {
        let mut evicted: *mut LargeBlock = ptr::null_mut();
        while self.entries >= CACHE_MAX_ENTRIES || self.bytes + block.len > max_bytes() {
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

/// Walks a list returned by `insert` or `drain`.
pub fn next_in_list(block: &LargeBlock) -> *mut LargeBlock {
    block.next
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
