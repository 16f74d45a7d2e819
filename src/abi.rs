//! The exported C functions: argument checks, `errno`, and one call into
//! the heap each. glibc's semantics, exactly (see README, "The C API").
//!
//! In unit tests the symbols are not exported (`cfg_attr(not(test))`), so
//! the test harness keeps the system allocator.

use core::ffi::{c_char, c_int, c_void};
use core::fmt::Write;
use core::ptr;

use crate::config;
use crate::fault::{self, Fault, fatal};
use crate::debug_mode::{self, Quarantine};
use crate::geometry::{MIN_ALIGN, PAGE_SIZE, SMALL_MAX};
use crate::heap::{Block, HEAP, Heap, HeapGuard, PoolBlock, Resize, sized_fits_class, stays_in_place};
use crate::size_class::{self, CACHE_MAX, class_of};
use crate::os::set_errno;
use crate::report;
use crate::print::{ChunkWriter, write_fd};
use crate::stats::{Snapshot, Totals};
use crate::front;
use crate::lock::single_threaded;

/// Whether the debug mode (`debug_mode`) is on; resolves the options on
/// the first call, so the mode is fixed before the first block is served.
#[inline(always)]
fn debug_on() -> bool {
    config::get().debug
}

/// Runs `f`, a debug-mode operation of `function` given the pointer
/// `addr`, under the lock; reports its fault after the lock is released.
#[cold]
#[inline(never)]
fn debugged<T>(function: &str, addr: *mut c_void, f: impl FnOnce(&mut Heap, &mut Quarantine) -> Result<T, Fault>) -> T {
    let result = debug_mode::locked(f);
    result.unwrap_or_else(|fault| fatal(function, fault, addr.cast()))
}

/// A debug-mode block of `n` bytes aligned to `align`, or null with ENOMEM.
#[cold]
fn debug_alloc(n: usize, align: usize, zero: bool, function: &str) -> *mut c_void {
    let p = debugged(function, ptr::null_mut(), |heap, _| debug_mode::alloc(heap, n, align, zero));
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// Releases the lock after an allocation by `function`. A null block is
/// out of memory (the caller sets errno), unless the heap found itself
/// corrupted: then this reports it and aborts.
#[inline(always)]
fn unlock_checked(mut heap: HeapGuard, block: Block, function: &str) -> Block {
    if block.ptr.is_null() {
        if let Some(fault) = heap.take_fault() {
            drop(heap);
            fatal(function, fault, ptr::null());
        }
    }
    block
}

/// `malloc`: one decision on the path, then a small leaf whose slow
/// paths are tail calls. A process with one thread takes a block from the
/// head pool of its class (the lock is elided); a thread with a cache
/// pops it; anything else (the debug mode, options not yet read, a large
/// block, an empty pool list, a thread without a cache yet) goes on to
/// `malloc_contended`.
#[inline(always)]
fn malloc_fast(n: usize, function: &str) -> *mut c_void {
    if single_threaded() {
        if n < config::fast_size_below() {
            // The lock is elided: `try_lock` cannot fail here.
            if let Some(mut heap) = HEAP.try_lock() {
                let p = heap.alloc_fast(class_of(n));
                if !p.is_null() {
                    return p.cast();
                }
            }
        }
        return alloc_general(n, function);
    }
    if n <= CACHE_MAX {
        if let Some(cache) = front::made() {
            return cache.alloc(class_of(n), function).cast();
        }
    }
    malloc_contended(n, function)
}

/// `malloc` in a process with threads, without a cache to serve it: the
/// thread's first call (which makes its cache), or the heap's fast path
/// when its lock is free, else the general path.
#[inline(never)]
fn malloc_contended(n: usize, function: &str) -> *mut c_void {
    if n <= CACHE_MAX {
        if let Some(cache) = front::current() {
            return cache.alloc(class_of(n), function).cast();
        }
    }
    if n < config::fast_size_below() {
        if let Some(mut heap) = HEAP.try_lock() {
            let p = heap.alloc_fast(class_of(n));
            if !p.is_null() {
                return p.cast();
            }
        }
    }
    alloc_general(n, function)
}

#[inline(never)]
fn alloc_general(n: usize, function: &str) -> *mut c_void {
    alloc(n, function)
}

/// A block of `n` bytes for `function`, or null with ENOMEM.
#[inline(always)]
fn alloc(n: usize, function: &str) -> *mut c_void {
    if debug_on() {
        return debug_alloc(n, 1, false, function);
    }
    let mut heap = HEAP.lock();
    let block = heap.alloc(n);
    let block = unlock_checked(heap, block, function);
    if block.ptr.is_null() {
        set_errno(libc::ENOMEM);
    }
    block.ptr.cast()
}

/// `align` must be a power of two.
fn alloc_aligned(align: usize, n: usize, function: &str) -> *mut c_void {
    if debug_on() {
        return debug_alloc(n, align, false, function);
    }
    let mut heap = HEAP.lock();
    let block = heap.alloc_aligned(align, n);
    let block = unlock_checked(heap, block, function);
    if block.ptr.is_null() {
        set_errno(libc::ENOMEM);
    }
    block.ptr.cast()
}

/// `free`: the paths of `malloc_fast`, in the same order.
#[inline(always)]
pub(crate) fn free_fast(p: *mut c_void, function: &str) {
    if p.is_null() {
        return;
    }
    if single_threaded() {
        // No test of `fast_paths`: without them the heap's clock counter
        // stays at zero, and `free_fast` declines (see `Heap::tick`).
        if let Some(mut heap) = HEAP.try_lock() {
            if heap.free_fast(p.cast()) {
                return;
            }
        }
        return release_general(p, function);
    }
    if let Some(cache) = front::made() {
        if cache.free(p.cast()) {
            return;
        }
    }
    free_contended(p, function)
}

/// `free` in a process with threads that no cache took, as `malloc_contended`.
#[inline(never)]
fn free_contended(p: *mut c_void, function: &str) {
    if let Some(cache) = front::current() {
        if cache.free(p.cast()) {
            return;
        }
    }
    // No test of `fast_paths`, as in `free_fast`.
    if let Some(mut heap) = HEAP.try_lock() {
        if heap.free_fast(p.cast()) {
            return;
        }
    }
    release_general(p, function)
}

/// `free` of `p`, a pool block the lock-free lookup found as `block`.
#[inline(always)]
fn free_pool_block(p: *mut c_void, block: PoolBlock) {
    if single_threaded() {
        if let Some(mut heap) = HEAP.try_lock() {
            if heap.free_fast_live(block, p.cast()) {
                return;
            }
        }
    } else if let Some(cache) = front::made() {
        if cache.free_of_class(p.cast(), block.class) {
            return;
        }
    }
    free_fast(p, "realloc")
}

#[inline(never)]
fn release_general(p: *mut c_void, function: &str) {
    release(p, function)
}

/// The general path of `free`: the debug layer, or the heap under its
/// lock; a fault is reported once the lock is released.
#[inline(always)]
fn release(p: *mut c_void, function: &str) {
    if p.is_null() {
        return;
    }
    if debug_on() {
        return debugged(function, p, |heap, q| debug_mode::free(heap, q, p.cast(), None));
    }
    let result = HEAP.lock().free(p.cast());
    if let Err(fault) = result {
        fatal(function, fault, p.cast());
    }
}

fn resize(p: *mut c_void, n: usize) -> *mut c_void {
    if p.is_null() {
        return malloc_fast(n, "realloc");
    }
    if n == 0 {
        free_fast(p, "realloc");
        return ptr::null_mut();
    }
    // A pool block, looked up once: no lock unless the heap is needed
    // (for the new block, or to take the old one back).
    if config::fast_paths() {
        // SAFETY: `HEAP.data_ptr()` is the heap that function expects.
        if let Some(block) = unsafe { Heap::live_block(HEAP.data_ptr(), p.cast()) } {
            let usable = size_class::size_of(block.class);
            if stays_in_place(n, usable, block.class) {
                return p;
            }
            let q = malloc_fast(n, "realloc");
            if q.is_null() {
                // A shrink may keep the old block; a growth fails.
                return if n <= usable { p } else { q };
            }
            // SAFETY: both blocks are live, distinct, and hold at least
            // min(usable, n) bytes.
            unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), usable.min(n)) };
            free_pool_block(p, block);
            return q;
        }
    }
    if debug_on() {
        let q = debugged("realloc", p, |heap, q| debug_mode::realloc(heap, q, p.cast(), n));
        if q.is_null() {
            set_errno(libc::ENOMEM);
        }
        return q.cast();
    }
    let result = HEAP.lock().resize(p.cast(), n);
    match result {
        Ok(Resize::Done(q)) => q.cast(),
        Ok(Resize::Move { usable }) => {
            let mut heap = HEAP.lock();
            let block = heap.alloc(n);
            let q: *mut c_void = unlock_checked(heap, block, "realloc").ptr.cast();
            if q.is_null() {
                // A shrink may keep the old block; a growth fails.
                if n <= usable {
                    return p;
                }
                set_errno(libc::ENOMEM);
                return q;
            }
            // SAFETY: both blocks are live, distinct, and hold at least
            // min(usable, n) bytes.
            unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), usable.min(n)) };
            release(p, "realloc");
            q
        }
        Ok(Resize::Failed) => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
        Err(fault) => fatal("realloc", fault, p.cast()),
    }
}

fn zeroed_alloc(count: usize, size: usize) -> *mut c_void {
    let Some(n) = count.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // A small block is cleared whatever it is: `malloc`'s fast paths
    // serve it. Above SMALL_MAX the heap knows whether a fresh block was
    // carved from pages the OS zeroed, and clears only the others.
    if n <= SMALL_MAX {
        let p = malloc_fast(n, "calloc");
        if !p.is_null() {
            // SAFETY: a block of at least n bytes, ours.
            unsafe { ptr::write_bytes(p.cast::<u8>(), 0, n) };
        }
        return p;
    }
    if debug_on() {
        return debug_alloc(n, 1, true, "calloc");
    }
    let mut heap = HEAP.lock();
    let block = heap.alloc(n);
    let block = unlock_checked(heap, block, "calloc");
    if block.ptr.is_null() {
        set_errno(libc::ENOMEM);
    } else if !block.zeroed {
        // SAFETY: a fresh block of at least n bytes, outside the lock.
        unsafe { ptr::write_bytes(block.ptr, 0, n) };
    }
    block.ptr.cast()
}

fn memalign_impl(align: usize, n: usize) -> *mut c_void {
    if align <= MIN_ALIGN {
        return alloc(n, "memalign");
    }
    // glibc: an alignment above SIZE_MAX/2+1 is invalid, others round up.
    if align > usize::MAX / 2 + 1 {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc_aligned(align.next_power_of_two(), n, "memalign")
}

fn usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    usable_size_for(p, "malloc_usable_size")
}

/// The usable size of `p` (not null); a fault is reported as `function`'s.
fn usable_size_for(p: *mut c_void, function: &str) -> usize {
    if debug_on() {
        return debugged(function, p, |heap, q| debug_mode::usable_size(heap, q, p.cast()));
    }
    let result = HEAP.lock().usable_size(p.cast());
    match result {
        Ok(n) => n,
        Err(fault) => fatal(function, fault, p.cast()),
    }
}

fn posix_memalign_impl(out: *mut *mut c_void, align: usize, n: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = if debug_on() {
        debugged("posix_memalign", ptr::null_mut(), |heap, _| debug_mode::alloc(heap, n, align, false))
    } else {
        let mut heap = HEAP.lock();
        let block = heap.alloc_aligned(align, n);
        unlock_checked(heap, block, "posix_memalign").ptr
    };
    if p.is_null() {
        // glibc's posix_memalign fails through its malloc, which sets
        // errno too (glibc's own tst-malloc-thread-fail checks it).
        set_errno(libc::ENOMEM);
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer (C contract).
    unsafe { *out = p.cast() };
    0
}

fn pvalloc_impl(n: usize) -> *mut c_void {
    let Some(rounded) = n.checked_next_multiple_of(PAGE_SIZE) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    alloc_aligned(PAGE_SIZE, rounded, "pvalloc")
}

/// C `malloc`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    malloc_fast(size, "malloc")
}

/// C `free`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn free(p: *mut c_void) {
    free_fast(p, "free")
}

/// C23 sized deallocation: `free` of a block allocated for `size` bytes
/// (by `malloc`, `calloc` or `realloc`). A size the block cannot have been
/// allocated for is reported like an invalid pointer. Declared in the
/// header, as glibc's <stdlib.h> may lack it.
#[unsafe(no_mangle)]
pub extern "C" fn free_sized(ptr: *mut c_void, size: usize) {
    release_sized(ptr, size, 1, "free_sized");
}

/// C23: `free` of a block from `aligned_alloc(alignment, size)`.
#[unsafe(no_mangle)]
pub extern "C" fn free_aligned_sized(ptr: *mut c_void, alignment: usize, size: usize) {
    release_sized(ptr, size, alignment, "free_aligned_sized");
}

/// `free` of a block the caller says was allocated for `size` bytes
/// aligned to `align`: the fast paths of `free_fast` when the block's
/// class fits (`sized_fits_class`), else the general path, which reports
/// a size or alignment the block cannot have.
#[inline(always)]
pub(crate) fn release_sized(p: *mut c_void, size: usize, align: usize, function: &str) {
    if p.is_null() {
        return;
    }
    let fits = |class| align.is_power_of_two() && (p as usize).is_multiple_of(align) && sized_fits_class(size, align, class);
    if let Some(cache) = front::current() {
        if cache.free_checked(p.cast(), fits) {
            return;
        }
    } else if config::fast_paths() {
        if let Some(mut heap) = HEAP.try_lock() {
            if heap.free_fast_checked(p.cast(), fits) {
                return;
            }
        }
    }
    release_sized_general(p, size, align, function)
}

#[inline(never)]
fn release_sized_general(p: *mut c_void, size: usize, align: usize, function: &str) {
    if debug_on() {
        return debugged(function, p, |heap, q| debug_mode::free(heap, q, p.cast(), Some((size, align))));
    }
    let result = HEAP.lock().free_sized(p.cast(), size, align);
    if let Err(fault) = result {
        fatal(function, fault, p.cast());
    }
}

/// `free` of a block the caller says is aligned to `align`: a misaligned
/// pointer, or an alignment that is not a power of two, is reported as
/// `free_aligned_sized` reports it (after the checks of `free`).
#[inline(always)]
pub(crate) fn release_aligned(p: *mut c_void, align: usize, function: &str) {
    if !align.is_power_of_two() || !(p as usize).is_multiple_of(align) {
        misaligned(p, align, function);
    }
    free_fast(p, function)
}

#[cold]
#[inline(never)]
fn misaligned(p: *mut c_void, align: usize, function: &str) {
    if p.is_null() {
        return;
    }
    // A pointer that is no live block is reported as such first.
    let _ = usable_size_for(p, function);
    fatal(function, Fault::WrongAlignment { align }, p.cast())
}

/// Old name of `free`, still exported by glibc.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn cfree(p: *mut c_void) {
    free_fast(p, "free")
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    zeroed_alloc(count, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    resize(p, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(n) => resize(p, n),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// `out` must be valid for a pointer write.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    posix_memalign_impl(out, align, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // glibc 2.38+: the alignment must be a power of two.
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc_aligned(align, size, "aligned_alloc")
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_aligned(PAGE_SIZE, size, "valloc")
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    pvalloc_impl(size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    usable_size(p)
}

// glibc's internal names, which some programs and libraries call directly.

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc_fast(size, "malloc")
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_free(p: *mut c_void) {
    free_fast(p, "free")
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut c_void {
    zeroed_alloc(count, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    resize(p, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    alloc_aligned(PAGE_SIZE, size, "valloc")
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc_impl(size)
}

/// # Safety
/// `out` must be valid for a pointer write.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    posix_memalign_impl(out, align, size)
}

// Tuning and statistics.

/// Accepts every parameter and ignores it (the heap tunes itself),
/// answering as glibc 2.36 does: 1, except 0 for an M_MXFAST outside
/// 0..=160.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    const MAX_FAST_SIZE: c_int = 160;
    (param != libc::M_MXFAST || (0..=MAX_FAST_SIZE).contains(&value)) as c_int
}

/// Returns free memory to the OS; 1 if any was released.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    if debug_on() {
        debugged("malloc_trim", ptr::null_mut(), debug_mode::flush);
    }
    let mut heap = HEAP.lock();
    let released = front::trim_all(&mut heap).and_then(|()| {
        let reserves = heap.trim();
        // The debug mode's poison stays: it is what shows a write after free.
        let pages = if debug_on() { false } else { heap.release_free_block_pages()? };
        Ok(reserves | pages)
    });
    match released {
        Ok(released) => released as c_int,
        Err(fault) => {
            drop(heap);
            fatal("malloc_trim", fault, ptr::null())
        }
    }
}

fn snapshot() -> Snapshot {
    debug_mode::locked(|heap, quarantine| Snapshot::of(heap, quarantine))
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
    snapshot().mallinfo2()
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn mallinfo() -> libc::mallinfo {
    let m = snapshot().mallinfo2();
    let int = |n: usize| n.min(c_int::MAX as usize) as c_int;
    libc::mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// Prints glibc's summary to stderr.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn malloc_stats() {
    let s = snapshot();
    let mut out = ChunkWriter::new(|bytes| write_fd(2, bytes));
    let _ = s.write_malloc_stats(&mut out);
}

/// Writes glibc-style XML to `stream`; `options` must be 0 (otherwise
/// returns EINVAL, as glibc does).
///
/// # Safety
/// `stream` must be a valid `FILE`.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        return libc::EINVAL;
    }
    let s = snapshot();
    // stdio may allocate: it runs after the lock is released.
    let mut out = ChunkWriter::new(|bytes: &[u8]| {
        // SAFETY: the caller passes a valid FILE; the slice is live.
        unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), stream) };
    });
    let _ = s.write_malloc_info(&mut out);
    0
}

/// Walks the whole heap checking its invariants (and, in the debug mode,
/// every block's guard bytes and every quarantined block's poison): 0 if
/// it is consistent; otherwise prints the first problem on stderr and
/// returns -1.
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_check_heap() -> c_int {
    let debug = debug_on();
    let (result, guards) = {
        let heap = HEAP.lock();
        let result = heap.check().and_then(|()| front::check_current(&heap));
        (result, if debug && result.is_ok() { debug_mode::check(&heap) } else { Ok(()) })
    };
    if let Err((fault, block)) = guards {
        fault::report("pymalloc_check_heap", fault, block);
        return -1;
    }
    match result {
        Ok(()) => 0,
        Err(what) => {
            let mut out = ChunkWriter::new(|bytes| write_fd(2, bytes));
            let _ = writeln!(out, "pymalloc: heap check: {what}");
            -1
        }
    }
}

/// Prints the statistics report (text) on stderr.
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_print_stats() {
    report::print_text(2);
}

/// Writes the statistics report to file descriptor `fd`: `format` is
/// "text" (as `pymalloc_print_stats`) or "json" (the same numbers and
/// every arena's pools, as `scripts/heapmap` reads). Returns 0, or -1 for
/// an unknown format.
///
/// # Safety
/// `format` must be NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_write_stats(fd: c_int, format: *const c_char) -> c_int {
    if format.is_null() {
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    match unsafe { core::ffi::CStr::from_ptr(format) }.to_bytes() {
        b"text" => report::print_text(fd),
        b"json" => report::print_json(fd),
        _ => return -1,
    }
    0
}

/// The C `struct pymalloc_stats`: `size`, then the totals. Its C
/// declaration is written by build.rs from the same field list.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct pymalloc_stats {
    pub size: usize,
    pub totals: Totals,
}

/// Fills `*stats` with the heap's totals. Set `stats->size = sizeof
/// *stats` first: only that many bytes are written (so a program built
/// against an older, shorter struct keeps working), and `size` is set to
/// the bytes actually filled. Returns 0, or -1 if `stats` is NULL or its
/// `size` is too small to hold `size` itself.
///
/// # Safety
/// `stats` must be NULL or point to `stats->size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_get_stats(stats: *mut pymalloc_stats) -> c_int {
    if stats.is_null() {
        return -1;
    }
    // SAFETY: the caller passes a struct whose first field is `size`.
    let room = unsafe { (*stats).size };
    if room < size_of::<usize>() {
        return -1;
    }
    let filled = room.min(size_of::<pymalloc_stats>());
    let full = pymalloc_stats { size: filled, totals: snapshot().totals };
    // SAFETY: `filled` bytes fit both the caller's struct and ours.
    unsafe { ptr::copy_nonoverlapping((&raw const full).cast::<u8>(), stats.cast::<u8>(), filled) };
    0
}

/// The library's version, "MAJOR.MINOR.PATCH".
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
