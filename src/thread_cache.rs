//! The front: a per-thread cache of free blocks in front of the heap's
//! lock, as glibc's tcache sits in front of its arenas.
//!
//! ```text
//!  malloc(n), n <= CACHE_MAX ──► this thread's bin[class]: pop ──► block
//!                                    │ empty: one lock, take a batch ─► heap
//!  free(p), p a pool block   ──► this thread's bin[class]: push
//!                                    │ full (or over the byte limit, or
//!                                    │ a tick due): one lock, give a batch back ─► heap
//! ```
//!
//! The heap stays the single source of truth: a cached block is a block
//! its pool counts as handed out, which the cache holds for its thread.
//! `free` pushes onto the calling thread's cache whichever thread
//! allocated the block, so blocks never go back to an owner and no
//! thread ever touches another thread's cache (except a `fork` child,
//! see `reclaim_after_fork`). Pop and push take no lock, make no atomic
//! read-modify-write and call nothing.
//!
//! # Finding the cache
//!
//! One pointer per thread, in initial-exec TLS (`tls`): reaching it is a
//! load of its offset from the GOT and a load relative to the thread
//! pointer, never `__tls_get_addr`, so it cannot allocate. The pointer also encodes the thread's state:
//! `NONE` before its first call, `OFF` after it exited (or with the cache
//! disabled), `CREATING` while the cache is being made.
//!
//! # Hardening, as in the pools
//!
//! A cached block holds a link to the next one in its first word, mangled
//! with the heap's secret and its own address (`hardening`), and the
//! free-block key in its second; `malloc` clears the key. A block that
//! reaches `free` with the key is handed to the heap, whose exact check
//! calls it a double free (it is on its pool's free list, or in a cache).
//! Only pool blocks whose pool vouches for them (a carved block of a pool
//! with live blocks, `Heap::cached_class_of`) enter a cache; anything
//! else takes the heap's path, which reports invalid pointers. A link
//! that fails to demangle to an aligned address aborts as a corrupted
//! free list; flushes check every block exactly.
//!
//! # Bounds and return of memory
//!
//! Each bin holds at most `Bin::max` blocks (`BIN_BYTES` worth, 4 to 128
//! blocks) and a thread at most `PYMALLOC_THREAD_CACHE` bytes; a refill
//! takes half a bin, a flush gives back half. Every `TICK_FREES` frees
//! the thread reads the clock under the lock (the heap's decay runs even
//! when every call is served by caches), and once per `PYMALLOC_DECAY_MS`
//! gives its whole cache back: blocks held longer would pin pools that
//! could otherwise drain, and what the thread still needs then comes from
//! the heap's fullest pools. A thread that stops calling keeps at most its
//! limit.
//!
//! # Life
//!
//! A cache is made on a thread's first call after the library's
//! constructor has run and once the process has a second thread (earlier
//! calls use the heap directly: with one thread the heap's lock is elided
//! and the pools serve a call with less work than a cache's bookkeeping),
//! from a slab under the heap lock. The debug mode never makes one. A
//! pthread key's destructor flushes it when the thread exits; after that
//! the thread's calls use the heap directly, so destructors that run
//! after ours still work. `malloc_trim` flushes the
//! calling thread's cache. After `fork` the child's thread keeps its
//! cache and the caches of threads that do not exist in the child are
//! given back to the heap (`reclaim_after_fork`).

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use crate::config;
use crate::hardening::Secret;
use crate::fault::Fault;
use crate::heap::{HEAP, Heap};
use crate::lock::single_threaded;
use crate::purge::{self, TICK_FREES};
use crate::size_class::{NUM_CLASSES, class_info, class_of};
use crate::slab::Slab;
use crate::tls;

/// Largest request served by the caches; bigger ones go to the heap.
pub const CACHE_MAX: usize = 16 << 10;
/// Classes with a bin: every class up to `CACHE_MAX`.
pub const CACHED_CLASSES: usize = class_of(CACHE_MAX) + 1;
/// Bytes a bin may hold (within 4..=128 blocks).
const BIN_BYTES: usize = 32 << 10;
const BIN_MIN: u32 = 4;
const BIN_MAX: u32 = 128;

/// Thread states stored in the TLS slot in place of a cache pointer.
const NONE: usize = 0;
const OFF: usize = 1;
const CREATING: usize = 2;
/// Any slot value above this is a cache.
const LAST_STATE: usize = 4095;

const _: () = assert!(CACHED_CLASSES <= NUM_CLASSES);

/// This thread's slot: its cache pointer or state.
#[inline(always)]
fn slot() -> *mut usize {
    tls::cache_slot()
}

/// The calling thread's cache, made on its first call once the process
/// has a second thread; None when the thread has none: the process has
/// one thread (the heap's lock is then elided, and the pools serve each
/// call directly at less cost than a cache's bookkeeping), or the cache is
/// disabled, the debug mode is on, the thread exited, start-up is not
/// over, or there was no memory for it.
#[inline(always)]
pub fn current() -> Option<&'static mut ThreadCache> {
    // First, so that a single-threaded call pays one load for the cache
    // (glibc never sets the flag again once a thread was created, so no
    // cache exists while it is set).
    if single_threaded() {
        return None;
    }
    // SAFETY: the slot is this thread's own word, written only by it.
    let value = unsafe { slot().read() };
    if value > LAST_STATE {
        // SAFETY: a cache pointer in the slot is this thread's live cache,
        // used only by this thread (see the module docs).
        return Some(unsafe { &mut *(value as *mut ThreadCache) });
    }
    if value == NONE { create() } else { None }
}

/// Set by the library's constructor: caches are made only after it, when
/// the options are read and libc is fully initialised.
static READY: AtomicU32 = AtomicU32::new(0);

pub fn enable() {
    READY.store(1, Relaxed);
}

/// The pthread key whose destructor flushes a cache at thread exit.
static KEY: AtomicU32 = AtomicU32::new(KEY_UNSET);
const KEY_UNSET: u32 = u32::MAX;
const KEY_MAKING: u32 = u32::MAX - 1;
const KEY_FAILED: u32 = u32::MAX - 2;

/// The key, made on first use (`pthread_key_create` neither allocates
/// nor takes a lock another thread could hold in `malloc`).
fn exit_key() -> Option<libc::pthread_key_t> {
    loop {
        match KEY.load(Relaxed) {
            KEY_FAILED => return None,
            KEY_MAKING => core::hint::spin_loop(),
            KEY_UNSET => {
                if KEY.compare_exchange(KEY_UNSET, KEY_MAKING, Relaxed, Relaxed).is_err() {
                    continue;
                }
                let mut key: libc::pthread_key_t = 0;
                // SAFETY: `key` is a valid out-pointer; the destructor lives forever.
                let ok = unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0;
                let value = if ok && key < KEY_FAILED { key } else { KEY_FAILED };
                KEY.store(value, Relaxed);
            }
            key => return Some(key),
        }
    }
}

#[cold]
#[inline(never)]
fn create() -> Option<&'static mut ThreadCache> {
    let options = config::get();
    let limit = if options.debug { 0 } else { options.thread_cache };
    let slot = slot();
    if READY.load(Relaxed) == 0 {
        return None; // start-up: ask again on the next call
    }
    // SAFETY: this thread's own slot.
    unsafe { slot.write(if limit == 0 { OFF } else { CREATING }) };
    if limit == 0 {
        return None;
    }
    let Some(key) = exit_key() else {
        // SAFETY: as above.
        unsafe { slot.write(OFF) };
        return None;
    };
    let cache = {
        let mut heap = HEAP.lock();
        // SAFETY: the heap lock is held.
        let registry = unsafe { Registry::get(&mut heap) };
        let cache = registry.records.alloc();
        if !cache.is_null() {
            heap.ensure_secret();
            // SAFETY: a fresh slot of the right size, ours alone.
            unsafe { cache.write(ThreadCache::new(heap.secret(), limit, purge::now_ms())) };
            registry.link(cache);
        }
        cache
    };
    // With a key above 31, glibc may allocate here: that call sees
    // CREATING and uses the heap directly.
    // SAFETY: the key is ours; `cache` is null or live.
    if cache.is_null() || unsafe { libc::pthread_setspecific(key, cache.cast()) } != 0 {
        if !cache.is_null() {
            // SAFETY: created above, in no thread's slot.
            unsafe { destroy(cache) };
        }
        // SAFETY: as above.
        unsafe { slot.write(OFF) };
        return None;
    }
    // SAFETY: as above; the cache is live and this thread's.
    unsafe {
        slot.write(cache as usize);
        Some(&mut *cache)
    }
}

/// The key's destructor: the thread is exiting.
extern "C" fn thread_exit(cache: *mut c_void) {
    let slot = slot();
    // SAFETY: this thread's own slot; later calls use the heap directly.
    unsafe {
        if slot.read() != cache as usize {
            return; // not ours: nothing to do (cannot happen)
        }
        slot.write(OFF);
        destroy(cache.cast());
    }
}

/// Flushes a cache whose thread is gone or going, and frees it.
///
/// # Safety
/// `cache` is a live cache that no thread will use again.
unsafe fn destroy(cache: *mut ThreadCache) {
    let mut heap = HEAP.lock();
    // SAFETY: the caller gives the cache up; the heap lock is held.
    let result = unsafe { (*cache).flush_all(&mut heap) };
    // SAFETY: as above.
    unsafe {
        let registry = Registry::get(&mut heap);
        registry.unlink(cache);
        registry.records.free(cache);
    }
    drop(heap);
    if let Err(fault) = result {
        crate::fault::fatal("free", fault, ptr::null());
    }
}

/// Every cache, for statistics and for `fork`: guarded by the heap lock.
struct Registry {
    first: *mut ThreadCache,
    records: Slab<ThreadCache>,
}

struct RegistryCell(core::cell::UnsafeCell<Registry>);

// SAFETY: only reached through `Registry::get`, with the heap lock held.
unsafe impl Sync for RegistryCell {}

static REGISTRY: RegistryCell =
    RegistryCell(core::cell::UnsafeCell::new(Registry { first: ptr::null_mut(), records: Slab::new() }));

impl Registry {
    /// # Safety
    /// The caller holds the heap lock (`_heap` is its guard's heap) and
    /// drops the result before releasing it.
    unsafe fn get(_heap: &mut Heap) -> &'static mut Registry {
        // SAFETY: the heap lock serialises every use.
        unsafe { &mut *REGISTRY.0.get() }
    }

    fn link(&mut self, cache: *mut ThreadCache) {
        // SAFETY: `cache` and the list's caches are live records.
        unsafe {
            (*cache).prev = ptr::null_mut();
            (*cache).next = self.first;
            if let Some(next) = self.first.as_mut() {
                next.prev = cache;
            }
        }
        self.first = cache;
    }

    fn unlink(&mut self, cache: *mut ThreadCache) {
        // SAFETY: `cache` is on the list; its neighbours are live records.
        unsafe {
            let c = &mut *cache;
            match c.prev.as_mut() {
                Some(prev) => prev.next = c.next,
                None => self.first = c.next,
            }
            if let Some(next) = c.next.as_mut() {
                next.prev = c.prev;
            }
        }
    }
}

/// One class's cached blocks: a singly linked, mangled list.
#[repr(C)]
struct Bin {
    head: *mut u8,
    /// Blocks on the list. Atomic only so that statistics may read it
    /// from another thread (relaxed: plain loads and stores).
    count: AtomicU32,
    max: u32,
    size: u32,
}

#[repr(C)] // what every call reads first, in one cache line with the smallest bins
pub struct ThreadCache {
    secret: Secret,
    /// Bytes held by all bins (atomic for statistics, as `Bin::count`).
    bytes: AtomicUsize,
    limit: usize,
    /// Frees left until this thread next reads the clock.
    ticks: u32,
    bins: [Bin; CACHED_CLASSES],
    /// The clock (ms) at the last scavenge.
    scavenged_at: u64,
    next: *mut ThreadCache,
    prev: *mut ThreadCache,
}

impl ThreadCache {
    fn new(secret: Secret, limit: usize, now: u64) -> ThreadCache {
        ThreadCache {
            bins: core::array::from_fn(|class| {
                let size = class_info(class).size;
                let max = (BIN_BYTES / size as usize).clamp(BIN_MIN as usize, BIN_MAX as usize) as u32;
                Bin { head: ptr::null_mut(), count: AtomicU32::new(0), max, size }
            }),
            bytes: AtomicUsize::new(0),
            limit,
            ticks: TICK_FREES,
            secret,
            scavenged_at: now,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        }
    }

    #[inline(always)]
    fn bin(&mut self, class: usize) -> &mut Bin {
        debug_assert!(class < CACHED_CLASSES);
        // SAFETY: callers pass class < CACHED_CLASSES (checked by them).
        unsafe { self.bins.get_unchecked_mut(class) }
    }

    /// A block of `class` (< CACHED_CLASSES) for `function`: popped, or
    /// after a refill. Null only when out of memory (errno is then ENOMEM).
    #[inline(always)]
    pub fn alloc(&mut self, class: usize, function: &str) -> *mut u8 {
        let secret = self.secret;
        let bin = self.bin(class);
        let block = bin.head;
        if block.is_null() {
            return self.refill(class, function);
        }
        // SAFETY: the head is a cached block: ours, at least 16 bytes,
        // holding its mangled link in its first word.
        let next = secret.demangle(block, unsafe { block.cast::<usize>().read() });
        if next as usize % crate::geometry::MIN_ALIGN != 0 {
            corrupted(block, bin.size, function);
        }
        // Wrapping: a list longer than its count (an overwritten link)
        // is found by the next flush or heap check, not by a panic here.
        let count = bin.count.load(Relaxed).wrapping_sub(1);
        bin.head = next;
        bin.count.store(count, Relaxed);
        let size = bin.size as usize;
        self.bytes.store(self.bytes.load(Relaxed).wrapping_sub(size), Relaxed);
        // SAFETY: as above; the block is handed out: its key is cleared.
        unsafe { block.cast::<usize>().add(1).write(0) };
        block
    }

    /// Takes `p` (not null) if it is a pool block of a cached class;
    /// false changes nothing (the caller takes the heap's path).
    #[inline(always)]
    pub fn free(&mut self, p: *mut u8) -> bool {
        self.free_checked(p, |_| true)
    }

    /// `free` of a block only if `accept` takes its class; false (nothing
    /// changed) if not.
    #[inline(always)]
    pub fn free_checked(&mut self, p: *mut u8, accept: impl FnOnce(usize) -> bool) -> bool {
        let Some(class) = self.class_of_block(p) else { return false };
        if class >= CACHED_CLASSES || !accept(class) {
            return false;
        }
        let secret = self.secret;
        let (limit, ticks) = (self.limit, self.ticks);
        let bytes = self.bytes.load(Relaxed);
        let bin = self.bin(class);
        let count = bin.count.load(Relaxed);
        if count >= bin.max || bytes > limit || ticks <= 1 {
            self.free_slow(p, class);
            return true;
        }
        // SAFETY: `cached_class_of` vouched for p: a live block of at least
        // 16 bytes, which the caller gives up.
        unsafe {
            p.cast::<usize>().write(secret.mangle(p, bin.head));
            p.cast::<usize>().add(1).write(secret.key());
        }
        bin.head = p;
        bin.count.store(count + 1, Relaxed);
        let size = bin.size as usize;
        self.bytes.store(bytes + size, Relaxed);
        self.ticks = ticks - 1;
        true
    }

    /// The class of `p` if it is a live pool block (`Heap::cached_class_of`),
    /// found without the lock; None proves nothing.
    #[inline(always)]
    pub fn class_of_block(&self, p: *mut u8) -> Option<usize> {
        // SAFETY: as in `free`.
        unsafe { Heap::cached_class_of(HEAP.data_ptr(), p, self.secret.key()) }
    }

    /// Pushes `p` without the bounds checks (there is room: the caller
    /// just made it).
    fn push(&mut self, p: *mut u8, class: usize) {
        let secret = self.secret;
        let bin = self.bin(class);
        // SAFETY: p is a block of `class` that this thread holds.
        unsafe {
            p.cast::<usize>().write(secret.mangle(p, bin.head));
            p.cast::<usize>().add(1).write(secret.key());
        }
        bin.head = p;
        bin.count.store(bin.count.load(Relaxed) + 1, Relaxed);
        let size = bin.size as usize;
        self.bytes.store(self.bytes.load(Relaxed) + size, Relaxed);
    }

    /// An empty bin: takes half a bin's worth of blocks from the heap under
    /// one lock acquisition and returns one of them.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, class: usize, function: &str) -> *mut u8 {
        // Half a bin, within the thread's byte limit (the block returned
        // is not cached, so at least that one).
        let room = self.limit.saturating_sub(self.bytes.load(Relaxed)).checked_div(self.bin(class).size as usize).unwrap_or(0);
        let want = (self.bin(class).max / 2).min(room.min(BIN_MAX as usize) as u32 + 1).max(1);
        let mut heap = HEAP.lock();
        let mut first: *mut u8 = ptr::null_mut();
        for _ in 0..want {
            let block = heap.alloc_class(class);
            if block.ptr.is_null() {
                break;
            }
            if first.is_null() {
                first = block.ptr;
            } else {
                self.push(block.ptr, class);
            }
        }
        if first.is_null() {
            if let Some(fault) = heap.take_fault() {
                drop(heap);
                crate::fault::fatal(function, fault, ptr::null());
            }
            drop(heap);
            crate::os::set_errno(libc::ENOMEM);
        }
        first
    }

    /// `free` of a block of `class` into a bin that is full, or a cache
    /// over its byte limit, or when a tick is due: under one lock, gives
    /// back half the bin (or half of every bin), and on a tick reads the
    /// clock (the heap's decay) and, once per decay period, gives back
    /// the whole cache.
    #[cold]
    #[inline(never)]
    fn free_slow(&mut self, p: *mut u8, class: usize) {
        let mut heap = HEAP.lock();
        let mut result = Ok(());
        if self.ticks <= 1 {
            self.ticks = TICK_FREES;
            let now = heap.tick();
            if now.saturating_sub(self.scavenged_at) >= config::get().decay_ms as u64 {
                // Every decay period the whole cache goes back: what the
                // thread still needs comes back from the heap's fullest
                // pools, and the pools its old blocks pinned can drain.
                self.scavenged_at = now;
                result = result.and(self.flush_all(&mut heap));
            }
        }
        if self.bytes.load(Relaxed) > self.limit {
            for c in 0..CACHED_CLASSES {
                let half = self.bin(c).count.load(Relaxed).div_ceil(2);
                result = result.and(self.flush(&mut heap, c, half));
            }
        }
        let (count, max) = (self.bin(class).count.load(Relaxed), self.bin(class).max);
        if count >= max {
            result = result.and(self.flush(&mut heap, class, count - max / 2));
        }
        drop(heap);
        if let Err(fault) = result {
            crate::fault::fatal("free", fault, ptr::null());
        }
        self.push(p, class);
    }

    /// Gives the first `n` blocks of `class`'s bin back to the heap,
    /// which checks each one. A block that fails the check (the link that
    /// led to it was overwritten) is a fault; the rest of that bin is then
    /// abandoned, never followed.
    fn flush(&mut self, heap: &mut Heap, class: usize, n: u32) -> Result<(), Fault> {
        let secret = self.secret;
        let bin = self.bin(class);
        let count = bin.count.load(Relaxed);
        let size = bin.size as usize;
        let (mut block, mut holder) = (bin.head, ptr::null_mut());
        let mut done = 0;
        let mut result = Ok(());
        while done < n.min(count) {
            let Some(pool) = heap.pool_of_cached(block, class) else {
                result = Err(Fault::CorruptFreeList { at: holder, class_size: size });
                break;
            };
            // SAFETY: the heap vouched for the block: a carved block of
            // ours, at least 16 bytes, holding our link until it is freed.
            let next = secret.demangle(block, unsafe { block.cast::<usize>().read() });
            // SAFETY: `pool` is the block's pool, as just checked.
            unsafe { heap.free_cached(pool, block) };
            (holder, block) = (block, next);
            done += 1;
        }
        let left = if result.is_ok() { count - done } else { 0 };
        if result.is_ok() && left == 0 && !block.is_null() {
            result = Err(Fault::CorruptFreeList { at: holder, class_size: size });
        }
        bin.head = if left == 0 { ptr::null_mut() } else { block };
        bin.count.store(left, Relaxed);
        self.bytes.store(self.bytes.load(Relaxed).saturating_sub((count - left) as usize * size), Relaxed);
        result
    }

    /// Gives every block back to the heap.
    fn flush_all(&mut self, heap: &mut Heap) -> Result<(), Fault> {
        let mut result = Ok(());
        for class in 0..CACHED_CLASSES {
            let count = self.bin(class).count.load(Relaxed);
            result = result.and(self.flush(heap, class, count));
        }
        result
    }
}

/// A cached block's link demangled to a misaligned address: it was
/// overwritten (a write after free).
#[cold]
fn corrupted(block: *mut u8, size: u32, function: &str) -> ! {
    let fault = Fault::CorruptFreeList { at: block, class_size: size as usize };
    crate::fault::fatal(function, fault, ptr::null())
}

/// `malloc_trim`: gives the calling thread's cached blocks back to the heap.
pub fn flush_current(heap: &mut Heap) -> Result<(), Fault> {
    // SAFETY: the slot is this thread's own word.
    let value = unsafe { slot().read() };
    if value <= LAST_STATE {
        return Ok(());
    }
    // SAFETY: this thread's live cache.
    unsafe { (*(value as *mut ThreadCache)).flush_all(heap) }
}

/// In a `fork` child, with the heap lock held and the heap consistent:
/// the caches of the threads that do not exist here go back to the heap.
/// Their owners may have been stopped inside a push or a pop, so each
/// list is followed only while its blocks check out exactly
/// (`Heap::free_cached`); what does not (at most the block being pushed
/// or popped, and what follows it) stays lost.
pub fn reclaim_after_fork(heap: &mut Heap) {
    // SAFETY: the slot is this thread's own word.
    let mine = unsafe { slot().read() } as *mut ThreadCache;
    // SAFETY: the heap lock is held.
    let registry = unsafe { Registry::get(heap) };
    let mut cache = registry.first;
    while !cache.is_null() {
        // SAFETY: registered caches are live records.
        let next = unsafe { (*cache).next };
        if cache != mine {
            // SAFETY: its thread does not exist in this process.
            let _ = unsafe { (*cache).flush_all(heap) };
            registry.unlink(cache);
            // SAFETY: unlinked, unused from now on.
            unsafe { registry.records.free(cache) };
        }
        cache = next;
    }
}

/// What all caches hold, for statistics: blocks per class, their bytes,
/// and the number of caches. Read without their owners' cooperation, so
/// only approximately consistent while threads run.
pub struct Holdings {
    pub blocks: [usize; CACHED_CLASSES],
    pub bytes: usize,
    pub threads: usize,
}

pub fn holdings(_heap: &Heap) -> Holdings {
    let mut h = Holdings { blocks: [0; CACHED_CLASSES], bytes: 0, threads: 0 };
    // SAFETY: the heap lock is held (the caller's heap is behind it), so
    // the list does not change; only its `first` is read here.
    let mut cache = unsafe { (*REGISTRY.0.get()).first };
    // SAFETY: registered caches are live records; their counts are atomics.
    while let Some(c) = unsafe { cache.as_ref() } {
        for (total, bin) in h.blocks.iter_mut().zip(&c.bins) {
            *total += bin.count.load(Relaxed) as usize;
        }
        h.bytes += c.bytes.load(Relaxed);
        h.threads += 1;
        cache = c.next;
    }
    h
}

/// `pymalloc_check_heap`: the calling thread's cache holds, in each bin,
/// `count` distinct blocks of its class, each a carved block of a live
/// pool with the free-block key, linked without a cycle.
pub fn check_current(heap: &Heap) -> Result<(), &'static str> {
    // SAFETY: the slot is this thread's own word.
    let value = unsafe { slot().read() };
    if value <= LAST_STATE {
        return Ok(());
    }
    // SAFETY: this thread's live cache, not in use during this call.
    check(unsafe { &*(value as *const ThreadCache) }, heap)
}

fn check(cache: &ThreadCache, heap: &Heap) -> Result<(), &'static str> {
    let mut bytes = 0;
    for (class, bin) in cache.bins.iter().enumerate() {
        let count = bin.count.load(Relaxed);
        let mut block = bin.head;
        let mut seen = 0;
        while !block.is_null() {
            if seen == count {
                return Err("thread cache: more blocks on a bin's list than its count");
            }
            if !heap.is_cached_block(block, class) {
                return Err("thread cache: a cached block is not a free block of its class");
            }
            // SAFETY: checked just above: a carved block of ours.
            block = cache.secret.demangle(block, unsafe { block.cast::<usize>().read() });
            seen += 1;
        }
        if seen != count || count > bin.max {
            return Err("thread cache: a bin's count does not match its list");
        }
        bytes += count as usize * bin.size as usize;
    }
    if bytes != cache.bytes.load(Relaxed) {
        return Err("thread cache: byte count does not match its bins");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn new_cache(limit: usize) -> Box<ThreadCache> {
        let mut heap = HEAP.lock();
        heap.ensure_secret();
        Box::new(ThreadCache::new(heap.secret(), limit, 0))
    }

    /// Random mallocs and frees through a cache (on the process's test
    /// heap), against a shadow of the live blocks: no block is handed out
    /// twice, the cache stays within its bounds and consistent, and after
    /// the thread "exits" (flush) every block is back in the heap.
    #[test]
    fn serves_refills_flushes_and_gives_everything_back() {
        let mut cache = new_cache(64 << 10);
        let mut live: Vec<(*mut u8, usize)> = Vec::new();
        let mut seen = HashSet::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if live.len() < 3000 && (rng % 3 != 0 || live.is_empty()) {
                let n = 1 + (rng >> 8) as usize % if rng % 16 == 0 { CACHE_MAX } else { 600 };
                let class = class_of(n);
                let p = cache.alloc(class, "malloc");
                assert!(!p.is_null());
                assert!(seen.insert(p), "block {p:p} handed out twice");
                assert!(HEAP.lock().usable_size(p).unwrap() >= n);
                // SAFETY: a live block of at least n bytes.
                unsafe { p.write_bytes(0x5A, n) };
                live.push((p, class));
            } else {
                let (p, class) = live.swap_remove((rng >> 20) as usize % live.len());
                seen.remove(&p);
                assert_eq!(cache.class_of_block(p), Some(class));
                assert!(cache.free(p), "a live pool block enters the cache");
                assert_eq!(cache.class_of_block(p), None, "a cached block is not live");
            }
            assert!(cache.bytes.load(Relaxed) <= cache.limit + CACHE_MAX);
            if step % 5000 == 0 {
                let heap = HEAP.lock();
                check(&cache, &heap).unwrap();
                heap.check().unwrap();
            }
        }
        for (p, _) in live.drain(..) {
            assert!(cache.free(p));
        }
        let mut heap = HEAP.lock();
        check(&cache, &heap).unwrap();
        cache.flush_all(&mut heap).unwrap();
        assert_eq!(cache.bytes.load(Relaxed), 0);
        assert!(cache.bins.iter().all(|b| b.head.is_null() && b.count.load(Relaxed) == 0));
        heap.check().unwrap();
    }

    /// A second free of a cached block is refused by the cache and called
    /// a double free by the heap; so are realloc and usable size of it.
    #[test]
    #[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
    fn double_free_of_a_cached_block_is_caught() {
        let mut cache = new_cache(256 << 10);
        for n in [16, 48, 512, 3000, CACHE_MAX] {
            let class = class_of(n);
            let keep = cache.alloc(class, "malloc");
            let p = cache.alloc(class, "malloc");
            let size = class_info(class).size as usize;
            assert!(cache.free(p));
            assert!(!cache.free(p), "the key sends a second free to the heap");
            let mut heap = HEAP.lock();
            assert_eq!(heap.free(p), Err(Fault::Freed { class_size: size }));
            assert_eq!(heap.usable_size(p), Err(Fault::Freed { class_size: size }));
            assert_eq!(heap.resize(p, 10), Err(Fault::Freed { class_size: size }));
            drop(heap);
            assert!(cache.free(keep));
        }
        let mut heap = HEAP.lock();
        cache.flush_all(&mut heap).unwrap();
    }

    /// A cached block's link overwritten by a write after free: the flush
    /// (thread exit, trim) finds it and reports the block holding it.
    #[test]
    #[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
    fn overwritten_links_are_reported() {
        let mut cache = new_cache(256 << 10);
        let class = class_of(64);
        let a = cache.alloc(class, "malloc");
        let b = cache.alloc(class, "malloc");
        assert!(cache.free(a) && cache.free(b));
        // SAFETY: b is a cached block of 64 bytes: a write after free.
        unsafe { b.cast::<usize>().write(0x1234_5670) };
        let mut heap = HEAP.lock();
        assert!(check(&cache, &heap).is_err());
        let size = class_info(class).size as usize;
        assert_eq!(cache.flush_all(&mut heap), Err(Fault::CorruptFreeList { at: b, class_size: size }));
        assert!(cache.bins.iter().all(|bin| bin.count.load(Relaxed) == 0), "the rest is abandoned");
    }

    #[test]
    fn bins_are_bounded_and_cover_the_cached_classes() {
        let cache = new_cache(256 << 10);
        assert_eq!(class_info(CACHED_CLASSES - 1).size as usize, CACHE_MAX);
        for bin in &cache.bins {
            assert!((BIN_MIN..=BIN_MAX).contains(&bin.max));
            assert!(bin.max as usize * bin.size as usize <= BIN_BYTES.max(BIN_MIN as usize * bin.size as usize));
        }
    }
}
