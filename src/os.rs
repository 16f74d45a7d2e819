//! The only place that talks to the kernel about memory: map, unmap,
//! remap and decommit; and so the place that counts what the allocator
//! holds from the OS (`OS_TOTALS`).
//!
//! Contract: every function is safe to call with the heap lock held (no
//! allocation, no thread-local storage beyond libc's `errno`), returns
//! null/false on failure instead of reporting, and leaves `errno` as it
//! found it, so that `free` and successful allocations never change it.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::geometry::PAGE_SIZE;

/// Saves `errno` and restores it when dropped.
pub struct KeepErrno(i32);

impl KeepErrno {
    pub fn new() -> Self {
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's lifetime; it does not allocate.
        KeepErrno(unsafe { *libc::__errno_location() })
    }
}

impl Drop for KeepErrno {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

pub fn set_errno(value: i32) {
    // SAFETY: as in `KeepErrno::new`.
    unsafe { *libc::__errno_location() = value };
}

/// Bytes mapped now (heap memory and its descriptors), their peak, and
/// the bytes given back since start (unmapped or decommitted).
pub struct OsTotals {
    mapped: AtomicUsize,
    peak: AtomicUsize,
    returned: AtomicUsize,
}

pub static OS_TOTALS: OsTotals =
    OsTotals { mapped: AtomicUsize::new(0), peak: AtomicUsize::new(0), returned: AtomicUsize::new(0) };

impl OsTotals {
    pub fn mapped(&self) -> usize {
        self.mapped.load(Relaxed)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }
    pub fn returned(&self) -> usize {
        self.returned.load(Relaxed)
    }
    fn grew(&self, n: usize) {
        let now = self.mapped.fetch_add(n, Relaxed) + n;
        self.peak.fetch_max(now, Relaxed);
    }
    /// `n` bytes left the address space; `returned` if they had been
    /// used (not an alignment trim or a mapping moved elsewhere).
    fn shrank(&self, n: usize, returned: bool) {
        self.mapped.fetch_sub(n, Relaxed);
        if returned {
            self.returned.fetch_add(n, Relaxed);
        }
    }
}

pub const fn page_round_up(n: usize) -> usize {
    (n + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Maps `len` bytes (a multiple of the page size) of fresh zeroed memory.
pub fn map(len: usize) -> *mut u8 {
    let p = map_scratch(len);
    if !p.is_null() {
        OS_TOTALS.grew(len);
    }
    p
}

/// As `map`, but not counted in `OS_TOTALS`: for the statistics' own
/// buffers, which must not disturb what they measure.
pub fn map_scratch(len: usize) -> *mut u8 {
    let _keep = KeepErrno::new();
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing cannot alias any existing object.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { ptr::null_mut() } else { p.cast() }
}

/// The address space the process may still map under its limit
/// (`RLIMIT_AS`, less what is mapped now: `/proc/self/statm`), or None
/// when it has no limit (or the numbers cannot be had). For the paths
/// where the OS refused a mapping: it costs three system calls.
pub fn address_space_headroom() -> Option<usize> {
    let _keep = KeepErrno::new();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let mut text = [0u8; 128];
    // SAFETY: a NUL-terminated path; `text` is ours to fill, and read
    // stops within it. Nothing here allocates.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, text.as_mut_ptr().cast(), text.len());
        libc::close(fd);
        n
    };
    // The first field: the pages of the address space.
    let digits = text.get(..usize::try_from(n).ok()?)?.iter().take_while(|b| b.is_ascii_digit());
    let pages = digits.fold(0usize, |v, &d| v.saturating_mul(10).saturating_add((d - b'0') as usize));
    Some((limit.rlim_cur as usize).saturating_sub(pages.saturating_mul(PAGE_SIZE)))
}

/// The bytes `map_aligned(len, align)` maps before trimming; None if that
/// overflows (no mapping can serve it).
pub fn span_needed(len: usize, align: usize) -> Option<usize> {
    len.checked_add(align.saturating_sub(PAGE_SIZE))
}

/// Maps `len` bytes aligned to `align` (a power of two) by over-mapping
/// and trimming both ends.
pub fn map_aligned(len: usize, align: usize) -> *mut u8 {
    aligned(len, align, map)
}

/// As `reserve`, aligned to `align` (a power of two).
pub fn reserve_aligned(len: usize, align: usize) -> *mut u8 {
    aligned(len, align, reserve)
}

/// `len` bytes aligned to `align` from `map`, over-mapped and trimmed.
fn aligned(len: usize, align: usize, map: fn(usize) -> *mut u8) -> *mut u8 {
    if align <= PAGE_SIZE {
        return map(len);
    }
    let Some(span) = span_needed(len, align) else {
        return ptr::null_mut();
    };
    let raw = map(span);
    if raw.is_null() {
        return raw;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = span - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping made just above
    // and nothing refers to them.
    unsafe {
        if head > 0 {
            unmap_scratch(raw, head);
        }
        if tail > 0 {
            unmap_scratch((aligned + len) as *mut u8, tail);
        }
    }
    OS_TOTALS.shrank(head + tail, false);
    aligned as *mut u8
}

/// Maps `len` bytes (a multiple of the page size) of address space that
/// cannot be read or written until `protect` opens parts of it. Charged
/// to no one's memory until then (even with strict overcommit).
pub fn reserve(len: usize) -> *mut u8 {
    let _keep = KeepErrno::new();
    // SAFETY: as in `map_scratch`.
    let p = unsafe {
        libc::mmap(ptr::null_mut(), len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    OS_TOTALS.grew(len);
    p.cast()
}

/// Makes a range of our mappings readable and writable, or inaccessible
/// (so that a stale pointer into freed memory faults at once); its pages
/// stay as they are. False when the kernel refuses (out of memory for
/// the commit, or its limit on mappings reached).
///
/// # Safety
/// The range must be ours; made inaccessible, nothing may use it.
pub unsafe fn protect(p: *mut u8, len: usize, accessible: bool) -> bool {
    let _keep = KeepErrno::new();
    let prot = if accessible { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_NONE };
    // SAFETY: as the caller guarantees.
    unsafe { libc::mprotect(p.cast(), len, prot) == 0 }
}

/// Unmaps a range returned by `map` or `map_aligned`.
///
/// # Safety
/// The range must be a mapping (or part of one) that this crate made and
/// that nothing will access again.
pub unsafe fn unmap(p: *mut u8, len: usize) {
    OS_TOTALS.shrank(len, true);
    // SAFETY: as the caller guarantees.
    unsafe { unmap_scratch(p, len) };
}

/// Unmaps a range returned by `map_scratch`, uncounted.
///
/// # Safety
/// As for `unmap`.
pub unsafe fn unmap_scratch(p: *mut u8, len: usize) {
    let _keep = KeepErrno::new();
    // SAFETY: the caller guarantees the range is ours and dead.
    unsafe { libc::munmap(p.cast(), len) };
}

/// Grows a mapping where it is; false if the pages after it are taken.
///
/// # Safety
/// `p..p+old_len` must be one whole mapping made by this crate.
pub unsafe fn grow_in_place(p: *mut u8, old_len: usize, new_len: usize) -> bool {
    let _keep = KeepErrno::new();
    // SAFETY: the caller guarantees the range is one of our mappings;
    // without MREMAP_MAYMOVE it cannot move.
    let grown = unsafe { libc::mremap(p.cast(), old_len, new_len, 0) != libc::MAP_FAILED };
    if grown {
        OS_TOTALS.grew(new_len - old_len);
    }
    grown
}

/// Moves the pages of mapping `p..p+old_len` to `target`, growing it to
/// `new_len` bytes and replacing what was mapped there; false (nothing
/// changed) on failure.
///
/// # Safety
/// `p..p+old_len` must be one whole mapping of ours, and
/// `target..target+new_len` a mapping of ours that nothing uses.
pub unsafe fn move_onto(p: *mut u8, old_len: usize, new_len: usize, target: *mut u8) -> bool {
    let _keep = KeepErrno::new();
    // SAFETY: as the caller guarantees; MREMAP_FIXED replaces only `target`.
    let q = unsafe {
        libc::mremap(p.cast(), old_len, new_len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, target)
    };
    let moved = q != libc::MAP_FAILED;
    if moved {
        OS_TOTALS.shrank(old_len, false); // the target was counted when mapped
    }
    moved
}

/// Grows a mapping to `new_len` bytes, where it is or elsewhere, keeping
/// its pages; null (nothing changed) on failure.
///
/// # Safety
/// `p..p+old_len` must be one whole mapping of ours that nothing refers
/// to by address while it moves.
pub unsafe fn remap(p: *mut u8, old_len: usize, new_len: usize) -> *mut u8 {
    let _keep = KeepErrno::new();
    // SAFETY: as the caller guarantees.
    let q = unsafe { libc::mremap(p.cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
    if q == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    OS_TOTALS.grew(new_len - old_len);
    q.cast()
}

/// Shrinks a mapping in place to `new_len` bytes.
///
/// # Safety
/// `p..p+old_len` must be one whole mapping made by this crate and
/// nothing may access its tail beyond `new_len` again.
pub unsafe fn shrink(p: *mut u8, old_len: usize, new_len: usize) {
    // SAFETY: the tail is ours and dead, as the caller guarantees.
    unsafe { unmap(p.add(new_len), old_len - new_len) };
}

/// Gives the pages back to the kernel but keeps the range mapped: the
/// next touch faults in zeroed pages.
///
/// # Safety
/// The range must be ours and hold nothing anyone will read again.
pub unsafe fn decommit(p: *mut u8, len: usize) {
    let _keep = KeepErrno::new();
    // SAFETY: the caller guarantees the range is ours and dead.
    unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) };
    OS_TOTALS.returned.fetch_add(len, Relaxed);
}

/// Marks in `resident` which pages of the page-aligned range
/// `p..p + resident.len() pages` are resident (`mincore`, bit 0 of each
/// byte); all of them when the kernel cannot tell.
pub fn residency(p: *mut u8, resident: &mut [u8]) {
    let _keep = KeepErrno::new();
    // SAFETY: `resident` holds a byte for each page of the range;
    // mincore only reads the page tables of the range.
    if unsafe { libc::mincore(p.cast(), resident.len() * PAGE_SIZE, resident.as_mut_ptr()) } != 0 {
        resident.fill(1);
    }
}
