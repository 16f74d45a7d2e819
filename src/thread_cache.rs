//! One thread's cache of free blocks in front of the heap's lock, as
//! glibc's tcache sits in front of its arenas: a bin per class up to
//! `CACHE_MAX`, each a singly linked list of blocks. (Which thread has
//! which cache, and a cache's life, are `front`'s.)
//!
//! ```text
//!  malloc(n), n <= CACHE_MAX ──► bin[class]: pop ──► block
//!                                    │ empty: one lock, take a parked list
//!                                    │ (`depot`), else a batch ─► heap
//!  free(p), p a pool block   ──► bin[class]: push
//!                                    │ full: one lock, park the bin whole,
//!                                    │ else give half back ─► heap
//!                                    │ (over the byte limit, or a tick
//!                                    │ due: one lock, give back ─► heap)
//! ```
//!
//! The heap stays the single source of truth: a cached block is a block
//! its pool counts as handed out, which the cache holds for its thread.
//! `free` pushes onto the calling thread's cache whichever thread
//! allocated the block, so blocks never go back to an owner. Pop and
//! push take no lock, make no atomic read-modify-write and call nothing.
//!
//! # Hardening, as in the pools
//!
//! A cached block holds a link to the next one in its first word, mangled
//! with the heap's secret and its own address (`hardening`), and its
//! free-block key in its second; `malloc` clears the key. A block that
//! reaches `free` with its key is handed to the heap, which calls it a
//! double free only if it finds it on its pool's free list or in a cache
//! (`contains`). Only pool blocks whose pool vouches for them (a carved
//! block of a pool with live blocks, `Heap::live_block`) enter a
//! cache; anything else takes the heap's path, which reports invalid
//! pointers. A link that fails to demangle to an aligned address aborts
//! as a corrupted free list; flushes check every block exactly.
//!
//! # Bounds and return of memory
//!
//! Each bin holds at most `Bin::max` blocks (`BIN_BYTES` worth, 4 to 128
//! blocks, at first) and a thread at most `PYMALLOC_THREAD_CACHE` bytes;
//! a refill takes half a bin, a flush gives back half. A bin that
//! overflows doubles its bound instead, up to `GROWN_BYTES` worth (at
//! most `GROWN_MAX` blocks), so that a burst of frees followed by one of
//! mallocs of the same class (Python freeing a list of objects, then
//! building the next) stays in the cache; one that overflows at that
//! bound is parked whole in the `depot`, where an empty bin of the class
//! takes it back whole, before either falls back to flushing half a bin
//! or refilling block by block; bounds start again from the
//! initial ones whenever the whole cache is given back. A thread over its
//! byte limit gives back half of its biggest bins, the one it frees to
//! last, until it holds half the limit. Every `TICK_FREES` frees the
//! thread reads the clock under the lock (the heap's decay runs even
//! when every call is served by caches), and once per `PYMALLOC_DECAY_MS`
//! gives its whole cache back: blocks held longer would pin pools that
//! could otherwise drain, and what the thread still needs then comes from
//! the heap's fullest pools. The caches of threads that stop calling are
//! given back by the others (`front`), through the protocol below.
//!
//! # Reaching another thread's bins
//!
//! Only the owner pops and pushes, without a lock. Another thread holding
//! the heap lock sometimes needs a cache's bins all the same: to give back
//! the cache of a thread that has gone idle (the decay, `malloc_trim` from
//! any thread), and to look for a block that holds its free-block key
//! before calling its free a double free. So the owner marks each of its
//! lock-free operations `busy` and, inside it, checks `stopped`; the other
//! thread sets `stopped`, has every running thread of the process execute
//! a memory barrier (`lock::barrier_all_threads`), and waits for `busy`
//! to clear. An operation that began before its thread's barrier is seen
//! busy and waited for; one that begins after sees `stopped` and takes the
//! heap lock instead, which the other thread holds until it is done with
//! the bins (Dekker's exclusion, with the owner's half of the fence paid
//! by the kernel, and only when asked). The owner clears `stopped` under
//! the heap lock. An owner that stays busy (preempted, or in a signal
//! handler that forks) is left alone.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, compiler_fence};

use crate::config;
use crate::depot;
use crate::fault::Fault;
use crate::geometry::MIN_ALIGN;
use crate::hardening::Secret;
use crate::heap::{HEAP, Heap};
use crate::purge::TICK_FREES;
use crate::size_class::{CACHED_CLASSES, class_info};

use Ordering::{Acquire, Relaxed, Release};

/// Bytes a bin may hold at first (within 4..=128 blocks).
const BIN_BYTES: usize = 32 << 10;
const BIN_MIN: u32 = 4;
const BIN_MAX: u32 = 128;
/// What a bin may grow to when its traffic overflows it (`free_locked`): bursts
/// of frees then mallocs of one class are then served without sending
/// most blocks through the lock and back.
const GROWN_BYTES: usize = 128 << 10;
const GROWN_MAX: u32 = 1024;

/// Pause loops, then yields, that a thread stopping a cache waits for
/// its owner to leave an operation before leaving that cache alone.
const SPINS: u32 = 1 << 12;
const YIELDS: u32 = 16;

/// What a cache's owner asks the registry (`front`) to do on each of its
/// clock ticks, with the heap lock held and the clock just read; a fault
/// it finds is reported by the `free` that ticked.
pub type OnTick = fn(&mut Heap, u64) -> Result<(), Fault>;

/// One class's cached blocks: a singly linked, mangled list. `head` and
/// `count` are atomics because another lock holder may read and change
/// them while the owner is stopped (relaxed: plain loads and stores).
#[repr(C)]
struct Bin {
    head: AtomicPtr<u8>,
    count: AtomicU32,
    /// At most this many blocks: `initial` to start with, doubled (up to
    /// `grown`) each time the bin overflows, back to `initial` when the
    /// cache is given back. Written by the owner under the heap lock.
    max: AtomicU32,
    size: u32,
    initial: u32,
    grown: u32,
}

impl Bin {
    #[inline(always)]
    fn max(&self) -> u32 {
        self.max.load(Relaxed)
    }
}

#[repr(C)] // what every call reads first, in one cache line with the smallest bins
pub struct ThreadCache {
    secret: Secret,
    /// Bytes held by all bins.
    bytes: AtomicUsize,
    limit: usize,
    /// Frees left until this thread next reads the clock.
    ticks: AtomicU32,
    /// Set by the owner around each lock-free operation.
    busy: AtomicBool,
    /// Set by another thread that holds the heap lock and may be using the
    /// bins; cleared by the owner under the heap lock.
    stopped: AtomicBool,
    bins: [Bin; CACHED_CLASSES],
    /// The clock (ms) at the last scavenge (written under the heap lock).
    scavenged_at: AtomicU64,
    on_tick: OnTick,
}

impl ThreadCache {
    pub fn new(secret: Secret, limit: usize, now: u64, on_tick: OnTick) -> ThreadCache {
        ThreadCache {
            bins: core::array::from_fn(|class| {
                let size = class_info(class).size;
                let initial = (BIN_BYTES / size as usize).clamp(BIN_MIN as usize, BIN_MAX as usize) as u32;
                let grown = (GROWN_BYTES / size as usize).clamp(initial as usize, GROWN_MAX as usize) as u32;
                Bin { head: AtomicPtr::new(ptr::null_mut()), count: AtomicU32::new(0), max: AtomicU32::new(initial), size, initial, grown }
            }),
            bytes: AtomicUsize::new(0),
            limit,
            ticks: AtomicU32::new(TICK_FREES),
            busy: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            secret,
            scavenged_at: AtomicU64::new(now),
            on_tick,
        }
    }

    #[inline(always)]
    fn bin(&self, class: usize) -> &Bin {
        debug_assert!(class < CACHED_CLASSES);
        // SAFETY: callers pass class < CACHED_CLASSES (checked by them).
        unsafe { self.bins.get_unchecked(class) }
    }

    /// Starts a lock-free operation: false if another thread has stopped
    /// the cache (the operation then takes the heap lock instead).
    #[inline(always)]
    fn enter(&self) -> bool {
        self.busy.store(true, Relaxed);
        // The store must stay before the load (see the module doc; the
        // CPU's half of the fence is `barrier_all_threads`).
        compiler_fence(Ordering::SeqCst);
        if self.stopped.load(Relaxed) {
            self.leave();
            return false;
        }
        true
    }

    /// Ends a lock-free operation; what it wrote is seen by whoever sees
    /// `busy` clear.
    #[inline(always)]
    fn leave(&self) {
        self.busy.store(false, Release);
    }

    /// Under the heap lock, by the owner: the cache is its own again.
    fn resume(&self) {
        self.stopped.store(false, Relaxed);
    }

    /// A block of `class` (< CACHED_CLASSES) for `function`: popped, or
    /// after a refill. Null only when out of memory (errno is then ENOMEM).
    #[inline(always)]
    pub fn alloc(&self, class: usize, function: &str) -> *mut u8 {
        if !self.enter() {
            return self.alloc_locked(class, function);
        }
        let block = self.pop(class, function);
        self.leave();
        if block.is_null() {
            return self.alloc_locked(class, function);
        }
        block
    }

    /// Takes the head of `class`'s bin, or null if it is empty.
    #[inline(always)]
    fn pop(&self, class: usize, function: &str) -> *mut u8 {
        let bin = self.bin(class);
        let block = bin.head.load(Relaxed);
        if block.is_null() {
            return block;
        }
        // SAFETY: the head is a cached block: ours, at least 16 bytes,
        // holding its mangled link in its first word.
        let next = self.secret.demangle(block, unsafe { block.cast::<usize>().read() });
        if !(next as usize).is_multiple_of(MIN_ALIGN) {
            corrupted(block, bin.size, function);
        }
        // Wrapping: a list longer than its count (an overwritten link)
        // is found by the next flush or heap check, not by a panic here.
        bin.head.store(next, Relaxed);
        bin.count.store(bin.count.load(Relaxed).wrapping_sub(1), Relaxed);
        self.bytes.store(self.bytes.load(Relaxed).wrapping_sub(bin.size as usize), Relaxed);
        // SAFETY: as above; the block is handed out: its key is cleared.
        unsafe { block.cast::<usize>().add(1).write(0) };
        block
    }

    /// Takes `p` (not null) if it is a pool block of a cached class;
    /// false changes nothing (the caller takes the heap's path).
    #[inline(always)]
    pub fn free(&self, p: *mut u8) -> bool {
        self.free_checked(p, |_| true)
    }

    /// `free` of a block only if `accept` takes its class; false (nothing
    /// changed) if not.
    #[inline(always)]
    pub fn free_checked(&self, p: *mut u8, accept: impl FnOnce(usize) -> bool) -> bool {
        // SAFETY: `HEAP.data_ptr()` is the heap that function expects.
        let Some(block) = (unsafe { Heap::live_block(HEAP.data_ptr(), p) }) else { return false };
        accept(block.class) && self.free_of_class(p, block.class)
    }

    /// Takes `p`, a live pool block of `class` (as the lookup found it),
    /// if the class is cached; false changes nothing.
    #[inline(always)]
    pub fn free_of_class(&self, p: *mut u8, class: usize) -> bool {
        if class >= CACHED_CLASSES {
            return false;
        }
        // Everything is read before the operation starts and used only if
        // the cache turns out not stopped: until a stopper sees `busy`
        // clear it writes nothing, and once it has set `stopped` the check
        // below sees it (see the module doc). Only stores follow it.
        let bin = self.bin(class);
        let (count, bytes, ticks) = (bin.count.load(Relaxed), self.bytes.load(Relaxed), self.ticks.load(Relaxed));
        let head = bin.head.load(Relaxed);
        let (link, key) = (self.secret.mangle(p, head), self.secret.key_at(p));
        if count >= bin.max() || bytes > self.limit || ticks <= 1 || !self.enter() {
            self.free_locked(p, class);
            return true;
        }
        // SAFETY: the lookup vouched for p: a live block of at least 16
        // bytes, which the caller gives up.
        unsafe {
            p.cast::<usize>().write(link);
            p.cast::<usize>().add(1).write(key);
        }
        bin.head.store(p, Relaxed);
        bin.count.store(count + 1, Relaxed);
        self.bytes.store(bytes + bin.size as usize, Relaxed);
        self.ticks.store(ticks - 1, Relaxed);
        self.leave();
        true
    }

    /// The class of `p` if it is a live pool block (`Heap::live_block`),
    /// found without the lock; None proves nothing.
    #[cfg(test)]
    fn class_of_block(&self, p: *mut u8) -> Option<usize> {
        // SAFETY: `HEAP.data_ptr()` is the heap that function expects.
        unsafe { Heap::live_block(HEAP.data_ptr(), p) }.map(|block| block.class)
    }

    /// Pushes `p` without the bounds checks (there is room). Only by the
    /// owner, inside an operation or under the heap lock.
    #[inline(always)]
    fn push(&self, p: *mut u8, class: usize) {
        let bin = self.bin(class);
        // SAFETY: p is a live block of `class` that this thread gives up.
        unsafe {
            p.cast::<usize>().write(self.secret.mangle(p, bin.head.load(Relaxed)));
            p.cast::<usize>().add(1).write(self.secret.key_at(p));
        }
        bin.head.store(p, Relaxed);
        bin.count.store(bin.count.load(Relaxed) + 1, Relaxed);
        self.bytes.store(self.bytes.load(Relaxed) + bin.size as usize, Relaxed);
    }

    /// `alloc` under the heap lock: the bin was empty (a refill takes half
    /// a bin's worth of blocks, within the thread's byte limit, and returns
    /// one of them) or the cache was stopped.
    #[cold]
    #[inline(never)]
    fn alloc_locked(&self, class: usize, function: &str) -> *mut u8 {
        let mut heap = HEAP.lock();
        self.resume();
        let cached = self.pop(class, function);
        if !cached.is_null() {
            return cached;
        }
        let bin = self.bin(class);
        let size = bin.size as usize;
        if let Some((head, count)) = depot::take(&heap, class, self.limit.saturating_sub(self.bytes.load(Relaxed))) {
            // A whole parked list becomes the bin (it is empty): no block
            // is looked at but the one popped.
            bin.head.store(head, Relaxed);
            bin.count.store(count, Relaxed);
            bin.max.store(bin.max().max(count), Relaxed);
            self.bytes.store(self.bytes.load(Relaxed) + count as usize * size, Relaxed);
            return self.pop(class, function);
        }
        // The block returned is not cached, so at least that one.
        let room = self.limit.saturating_sub(self.bytes.load(Relaxed)).checked_div(size).unwrap_or(0);
        let want = (bin.max() / 2).min(room.min(GROWN_MAX as usize) as u32 + 1).max(1);
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

    /// `free` under the heap lock, of a block of `class`: the bin was full
    /// (half of it goes back), or the cache over its byte limit
    /// (`shrink`), or a tick was due (the clock is read, the heap decays,
    /// and once per decay period the whole cache goes back), or the cache
    /// was stopped.
    #[cold]
    #[inline(never)]
    fn free_locked(&self, p: *mut u8, class: usize) {
        let mut heap = HEAP.lock();
        self.resume();
        let mut result = Ok(());
        let ticks = self.ticks.load(Relaxed);
        if ticks <= 1 {
            self.ticks.store(TICK_FREES, Relaxed);
            let now = heap.tick();
            if now.saturating_sub(self.scavenged_at.load(Relaxed)) >= config::get().decay_ms as u64 {
                // Every decay period the whole cache goes back: what the
                // thread still needs comes back from the heap's fullest
                // pools, and the pools its old blocks pinned can drain.
                self.scavenged_at.store(now, Relaxed);
                result = result.and(self.flush_all(&mut heap));
            }
            result = result.and((self.on_tick)(&mut heap, now));
        } else {
            self.ticks.store(ticks - 1, Relaxed);
        }
        if self.bytes.load(Relaxed) > self.limit {
            result = result.and(self.shrink(&mut heap, class));
        }
        let bin = self.bin(class);
        let (count, max) = (bin.count.load(Relaxed), bin.max());
        if count >= max {
            if max < bin.grown {
                bin.max.store((max * 2).min(bin.grown), Relaxed);
            } else if depot::park(&heap, class, bin.head.load(Relaxed), count) {
                // The whole bin, as it is, for whichever thread next finds
                // its bin of the class empty.
                bin.head.store(ptr::null_mut(), Relaxed);
                bin.count.store(0, Relaxed);
                self.bytes.store(self.bytes.load(Relaxed) - count as usize * bin.size as usize, Relaxed);
            } else {
                result = result.and(self.flush(&mut heap, class, count - max / 2));
            }
        }
        self.push(p, class);
        drop(heap);
        if let Err(fault) = result {
            crate::fault::fatal("free", fault, ptr::null());
        }
    }

    /// Over the byte limit: gives back half of the bin holding the most
    /// bytes, and halves its bound, until the cache holds half its limit.
    /// `class`, the bin being freed to, goes last: it is the one in use.
    /// Halving every bin instead would move most of the cache through the
    /// lock at once and write the headers of pools other threads read
    /// (`threads churn 2` took 25% longer).
    fn shrink(&self, heap: &mut Heap, class: usize) -> Result<(), Fault> {
        let held = |c: usize| self.bin(c).count.load(Relaxed) as usize * self.bin(c).size as usize;
        while self.bytes.load(Relaxed) > self.limit / 2 {
            let victim = (0..CACHED_CLASSES).filter(|&c| c != class && held(c) > 0).max_by_key(|&c| held(c)).unwrap_or(class);
            let bin = self.bin(victim);
            bin.max.store((bin.max() / 2).max(bin.initial), Relaxed);
            self.flush(heap, victim, bin.count.load(Relaxed).div_ceil(2))?;
        }
        Ok(())
    }

    /// Gives the first `n` blocks of `class`'s bin back to the heap,
    /// which checks each one. A block that fails the check (the link that
    /// led to it was overwritten) is a fault; the rest of that bin is then
    /// abandoned, never followed. Under the heap lock, by the owner or by
    /// a thread that stopped the cache.
    fn flush(&self, heap: &mut Heap, class: usize, n: u32) -> Result<(), Fault> {
        let bin = self.bin(class);
        let count = bin.count.load(Relaxed);
        let size = bin.size as usize;
        let (mut block, mut holder) = (bin.head.load(Relaxed), ptr::null_mut());
        let mut done = 0;
        let mut result = Ok(());
        while done < n.min(count) {
            let Some(pool) = heap.pool_of_cached(block, class) else {
                result = Err(Fault::CorruptFreeList { at: holder, class_size: size });
                break;
            };
            // SAFETY: the heap vouched for the block: a carved block of
            // ours, at least 16 bytes, holding our link until it is freed.
            let next = self.secret.demangle(block, unsafe { block.cast::<usize>().read() });
            // SAFETY: `pool` is the block's pool, as just checked.
            unsafe { heap.free_cached(pool, block) };
            (holder, block) = (block, next);
            done += 1;
        }
        let left = if result.is_ok() { count - done } else { 0 };
        if result.is_ok() && left == 0 && !block.is_null() {
            result = Err(Fault::CorruptFreeList { at: holder, class_size: size });
        }
        bin.head.store(if left == 0 { ptr::null_mut() } else { block }, Relaxed);
        bin.count.store(left, Relaxed);
        self.bytes.store(self.bytes.load(Relaxed).saturating_sub((count - left) as usize * size), Relaxed);
        result
    }

    /// Gives every block back to the heap (as `flush`); every bin starts
    /// again from its initial size.
    pub fn flush_all(&self, heap: &mut Heap) -> Result<(), Fault> {
        let mut result = Ok(());
        for class in 0..CACHED_CLASSES {
            let bin = self.bin(class);
            result = result.and(self.flush(heap, class, bin.count.load(Relaxed)));
            bin.max.store(bin.initial, Relaxed);
        }
        result
    }

    /// Marks the cache stopped, before `lock::barrier_all_threads`; see
    /// the module doc. Under the heap lock, by another thread.
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
    }

    /// After the barrier: waits (a while) for the owner to leave the
    /// operation it may be in. True if it did: until the heap lock is
    /// released, the bins are the caller's to read and change.
    pub fn settle(&self) -> bool {
        for i in 0..SPINS + YIELDS {
            if !self.busy.load(Acquire) {
                return true;
            }
            if i < SPINS {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
        false
    }

    /// Whether `p` is on `class`'s bin. By the owner, or under the heap
    /// lock by a thread that stopped and settled the cache. The walk
    /// follows at most the bin's count, and only links to blocks of the
    /// class that the heap counts as handed out (`pool_of_cached`).
    pub fn contains(&self, heap: &Heap, p: *mut u8, class: usize) -> bool {
        if class >= CACHED_CLASSES {
            return false;
        }
        let bin = self.bin(class);
        let mut block = bin.head.load(Relaxed);
        for _ in 0..bin.count.load(Relaxed).min(bin.max()) {
            if block == p {
                return true;
            }
            if heap.pool_of_cached(block, class).is_none() {
                return false;
            }
            // SAFETY: a cached block of ours (just checked): mapped, two words.
            block = self.secret.demangle(block, unsafe { block.cast::<usize>().read() });
        }
        false
    }

    /// What changes with every operation of the owner, for telling a cache
    /// whose thread has stopped calling: its byte count and its ticks.
    pub fn activity(&self) -> (usize, u32) {
        (self.bytes.load(Relaxed), self.ticks.load(Relaxed))
    }

    /// Blocks in `class`'s bin (read by statistics from any thread).
    pub fn blocks(&self, class: usize) -> usize {
        self.bins.get(class).map_or(0, |bin| bin.count.load(Relaxed) as usize)
    }

    /// Bytes in all bins (read by statistics from any thread).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    /// `pymalloc_check_heap`: each bin holds `count` distinct blocks of its
    /// class, each a carved block of a live pool with its key, linked
    /// without a cycle. By the owner, under the heap lock.
    pub fn check(&self, heap: &Heap) -> Result<(), &'static str> {
        let mut bytes = 0;
        for (class, bin) in self.bins.iter().enumerate() {
            let count = bin.count.load(Relaxed);
            let mut block = bin.head.load(Relaxed);
            let mut seen = 0;
            while !block.is_null() {
                if seen == count {
                    return Err("thread cache: more blocks on a bin's list than its count");
                }
                if !heap.is_cached_block(block, class) {
                    return Err("thread cache: a cached block is not a free block of its class");
                }
                // SAFETY: checked just above: a carved block of ours.
                block = self.secret.demangle(block, unsafe { block.cast::<usize>().read() });
                seen += 1;
            }
            if seen != count || count > bin.max() {
                return Err("thread cache: a bin's count does not match its list");
            }
            bytes += count as usize * bin.size as usize;
        }
        if bytes != self.bytes.load(Relaxed) {
            return Err("thread cache: byte count does not match its bins");
        }
        Ok(())
    }
}

/// A cached block's link demangled to a misaligned address: it was
/// overwritten (a write after free).
#[cold]
fn corrupted(block: *mut u8, size: u32, function: &str) -> ! {
    let fault = Fault::CorruptFreeList { at: block, class_size: size as usize };
    crate::fault::fatal(function, fault, ptr::null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::{CACHE_MAX, class_of};
    use std::collections::HashSet;

    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    /// The caches the tests made, with their threads: the heap searches
    /// the calling thread's (as `front`'s registry does in a process; the
    /// others are in use by their test threads).
    static CACHES: Mutex<Vec<(std::thread::ThreadId, usize)>> = Mutex::new(Vec::new());

    fn search(heap: &Heap, p: *mut u8, class: usize) -> bool {
        let me = std::thread::current().id();
        depot::contains(heap, p, class)
            || CACHES.lock().unwrap().iter().any(|&(thread, c)| {
                // SAFETY: registered test caches live until the process
                // ends (leaked); the calling thread is their only user.
                thread == me && unsafe { (*(c as *const ThreadCache)).contains(heap, p, class) }
            })
    }

    fn new_cache(limit: usize) -> &'static ThreadCache {
        let mut heap = HEAP.lock();
        heap.ensure_secret();
        heap.set_cache_search(search);
        let cache = Box::leak(Box::new(ThreadCache::new(heap.secret(), limit, 0, |_, _| Ok(()))));
        CACHES.lock().unwrap().push((std::thread::current().id(), cache as *const ThreadCache as usize));
        cache
    }

    /// Random mallocs and frees through a cache (on the process's test
    /// heap), against a shadow of the live blocks: no block is handed out
    /// twice, the cache stays within its bounds and consistent, and after
    /// the thread "exits" (flush) every block is back in the heap.
    #[test]
    fn serves_refills_flushes_and_gives_everything_back() {
        let cache = new_cache(64 << 10);
        let mut live: Vec<(*mut u8, usize)> = Vec::new();
        let mut seen = HashSet::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if live.len() < 3000 && (!rng.is_multiple_of(3) || live.is_empty()) {
                let n = 1 + (rng >> 8) as usize % if rng.is_multiple_of(16) { CACHE_MAX } else { 600 };
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
                cache.check(&heap).unwrap();
                heap.check().unwrap();
            }
        }
        for (p, _) in live.drain(..) {
            assert!(cache.free(p));
        }
        let mut heap = HEAP.lock();
        cache.check(&heap).unwrap();
        cache.flush_all(&mut heap).unwrap();
        assert_eq!(cache.bytes.load(Relaxed), 0);
        assert!(cache.bins.iter().all(|b| b.head.load(Relaxed).is_null() && b.count.load(Relaxed) == 0));
        heap.check().unwrap();
    }

    /// A second free of a cached block is refused by the cache and called
    /// a double free by the heap; so are realloc and usable size of it.
    #[test]
    #[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
    fn double_free_of_a_cached_block_is_caught() {
        let cache = new_cache(256 << 10);
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
        let cache = new_cache(256 << 10);
        let class = class_of(64);
        let a = cache.alloc(class, "malloc");
        let b = cache.alloc(class, "malloc");
        assert!(cache.free(a) && cache.free(b));
        // SAFETY: b is a cached block of 64 bytes: a write after free.
        unsafe { b.cast::<usize>().write(0x1234_5670) };
        let mut heap = HEAP.lock();
        assert!(cache.check(&heap).is_err());
        let size = class_info(class).size as usize;
        assert_eq!(cache.flush_all(&mut heap), Err(Fault::CorruptFreeList { at: b, class_size: size }));
        assert!(cache.bins.iter().all(|bin| bin.count.load(Relaxed) == 0), "the rest is abandoned");
    }

    #[test]
    fn bins_are_bounded_and_cover_the_cached_classes() {
        let cache = new_cache(256 << 10);
        assert_eq!(class_info(CACHED_CLASSES - 1).size as usize, CACHE_MAX);
        for bin in &cache.bins {
            assert!((BIN_MIN..=BIN_MAX).contains(&bin.initial));
            assert!(bin.initial as usize * bin.size as usize <= BIN_BYTES.max(BIN_MIN as usize * bin.size as usize));
            assert!((bin.initial..=GROWN_MAX).contains(&bin.grown));
            assert!(bin.grown as usize * bin.size as usize <= GROWN_BYTES.max(bin.initial as usize * bin.size as usize));
            assert_eq!(bin.max(), bin.initial);
        }
    }

    /// A burst of frees of one class beyond a bin's initial bound stays in
    /// the cache (the bin grows, within its grown bound and the thread's
    /// byte limit), and the bound starts again when the cache is given back.
    #[test]
    fn bins_grow_with_bursts_and_shrink_when_given_back() {
        let cache = new_cache(256 << 10);
        let class = class_of(64);
        let bin = cache.bin(class);
        let burst = 3 * bin.initial as usize;
        let blocks: Vec<_> = (0..burst).map(|_| cache.alloc(class, "malloc")).collect();
        for &p in &blocks {
            assert!(cache.free(p));
        }
        assert_eq!(cache.blocks(class), burst, "the whole burst is cached");
        assert!(bin.max() > bin.initial && bin.max() <= bin.grown);
        let again: Vec<_> = (0..burst).map(|_| cache.alloc(class, "malloc")).collect();
        assert_eq!(cache.blocks(class), 0, "and serves the next burst");
        for p in again {
            assert!(cache.free(p));
        }
        let mut heap = HEAP.lock();
        cache.check(&heap).unwrap();
        cache.flush_all(&mut heap).unwrap();
        assert_eq!(bin.max(), bin.initial);
        heap.check().unwrap();
    }

    /// A bin full at its grown bound goes to the depot whole, and another
    /// cache's empty bin of the class takes it back whole: the blocks
    /// pass from thread to thread without going through their pools. A
    /// parked block freed again is a double free.
    #[test]
    #[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
    fn full_bins_park_whole_and_refill_another_cache() {
        let (a, b) = (new_cache(256 << 10), new_cache(256 << 10));
        let class = class_of(2000);
        let grown = a.bin(class).grown as usize;
        let blocks: Vec<_> = (0..2 * grown + 1).map(|_| a.alloc(class, "malloc")).collect();
        a.flush_all(&mut HEAP.lock()).unwrap(); // what the refills left in the bin
        for &p in &blocks {
            assert!(a.free(p));
        }
        assert_eq!(a.blocks(class), 1, "two full bins parked, the last block cached");
        let (cached, parked) = (blocks[2 * grown], blocks[0]);
        let size = class_info(class).size as usize;
        assert_eq!(HEAP.lock().free(parked), Err(Fault::Freed { class_size: size }));
        let taken: Vec<_> = (0..grown).map(|_| b.alloc(class, "malloc")).collect();
        assert!(taken.iter().all(|p| blocks[grown..2 * grown].contains(p)), "b took the list parked last");
        assert_eq!(b.blocks(class), 0);
        {
            let heap = HEAP.lock();
            a.check(&heap).unwrap();
            b.check(&heap).unwrap();
            depot::check(&heap).unwrap();
            heap.check().unwrap();
        }
        assert!(a.contains(&HEAP.lock(), cached, class));
        for p in taken {
            assert!(b.free(p));
        }
        let mut heap = HEAP.lock();
        a.flush_all(&mut heap).unwrap();
        b.flush_all(&mut heap).unwrap();
        depot::expire(&mut heap, u64::MAX).unwrap();
        heap.check().unwrap();
    }

    /// A parked list whose link was overwritten (a write after free) is
    /// found by the heap check and reported when it goes back to its
    /// pools.
    #[test]
    #[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
    fn overwritten_parked_links_are_reported() {
        let cache = new_cache(256 << 10);
        let class = class_of(4000);
        let grown = cache.bin(class).grown as usize;
        let blocks: Vec<_> = (0..grown + 1).map(|_| cache.alloc(class, "malloc")).collect();
        cache.flush_all(&mut HEAP.lock()).unwrap(); // what the refills left in the bin
        for &p in &blocks {
            assert!(cache.free(p));
        }
        assert_eq!(cache.blocks(class), 1, "a full bin parked");
        let mut heap = HEAP.lock();
        let victim = blocks[grown / 2];
        // SAFETY: a parked block of 4 KiB: the write after free under test.
        unsafe { victim.cast::<usize>().write(0x1234_5670) };
        assert!(depot::check(&heap).is_err());
        let size = class_info(class).size as usize;
        assert_eq!(depot::expire(&mut heap, u64::MAX), Err(Fault::CorruptFreeList { at: victim, class_size: size }));
        depot::check(&heap).unwrap();
        cache.flush_all(&mut heap).unwrap();
    }

    /// Over its byte limit a cache gives back from its biggest bins, not
    /// from the one it is freeing to, until it holds half its limit.
    #[test]
    fn a_cache_over_its_limit_gives_back_its_biggest_other_bins() {
        let limit = 64 << 10;
        let cache = new_cache(limit);
        let (big, small, freed) = (class_of(1024), class_of(256), class_of(2048));
        let fill = |class: usize, n: usize| {
            let blocks: Vec<_> = (0..n).map(|_| cache.alloc(class, "malloc")).collect();
            for p in blocks {
                assert!(cache.free(p));
            }
        };
        fill(big, 24); // 24 KiB
        fill(small, 60); // 15 KiB
        let blocks: Vec<_> = (0..16).map(|_| cache.alloc(freed, "malloc")).collect();
        let mut shrunk = false;
        for (i, p) in blocks.into_iter().enumerate() {
            assert!(cache.free(p));
            if cache.bytes() < (24 << 10) + (15 << 10) {
                // The free that found the cache over its limit.
                assert_eq!(cache.blocks(freed), i + 1, "the bin freed to keeps its blocks");
                assert!(cache.bytes() <= limit / 2 + 2048);
                assert!(cache.blocks(big) < 24, "the biggest bin gave blocks back");
                shrunk = true;
                break;
            }
        }
        assert!(shrunk, "16 KiB beyond 39 KiB crosses a 64 KiB limit");
        let mut heap = HEAP.lock();
        cache.check(&heap).unwrap();
        cache.flush_all(&mut heap).unwrap();
        heap.check().unwrap();
    }

    /// Stale keys are no proof: a live block holding a copy of a cached
    /// block's first 16 bytes (glibc's tst-tcfree3), or even its own key
    /// (a program that wrote back bytes it read from its freed block), is
    /// freed like any live block.
    #[test]
    #[cfg_attr(feature = "unchecked", ignore = "the checks are compiled out")]
    fn live_blocks_that_hold_keys_are_live() {
        let cache = new_cache(256 << 10);
        for n in [16, 48, 512, 3000, CACHE_MAX] {
            let class = class_of(n);
            let (p, q) = (cache.alloc(class, "malloc"), cache.alloc(class, "malloc"));
            assert!(cache.free(p));
            // SAFETY: both blocks are mapped and at least 16 bytes (p is
            // cached: reading it is what the program does wrong, not us).
            unsafe { q.copy_from(p, 16) };
            assert!(cache.free(q), "a copied key is no key at another address ({n})");
            let r = cache.alloc(class, "malloc");
            assert_eq!(r, q, "the last block freed comes back first");
            // SAFETY: r is live with at least 16 bytes.
            unsafe { r.cast::<usize>().add(1).write(cache.secret.key_at(r)) };
            assert!(!cache.free(r), "a block with its own key goes to the heap");
            HEAP.lock().free(r).expect("found in no cache and on no free list: live");
            let again = cache.alloc(class, "malloc");
            assert!(cache.free(again));
        }
        cache.flush_all(&mut HEAP.lock()).unwrap();
    }

    /// The stop protocol: while its owner pops and pushes as fast as it
    /// can, another thread stops the cache, waits for it to settle and
    /// gives all of it back, over and over. No block may be handed out
    /// twice or lost, and the heap stays consistent.
    #[test]
    fn a_stopped_cache_is_the_stoppers_until_the_lock_is_released() {
        struct Shared(*const ThreadCache);
        // SAFETY: the stopper touches the cache only through the protocol.
        unsafe impl Send for Shared {}
        // SAFETY: as for Send: shared, the pointer is only read.
        unsafe impl Sync for Shared {}
        static DONE: AtomicBool = AtomicBool::new(false);
        if !crate::lock::barrier_all_threads() {
            return; // no membarrier here: the protocol is off
        }
        let cache = new_cache(64 << 10);
        let shared = Shared(cache);
        let stopper = std::thread::spawn(move || {
            let shared = &shared;
            let (mut flushed, mut busy) = (0, 0);
            while !DONE.load(Relaxed) {
                let mut heap = HEAP.lock();
                // SAFETY: the cache lives for good; only stop, settle and
                // (settled, lock held) its bins are used from here.
                let cache = unsafe { &*shared.0 };
                cache.stop();
                assert!(crate::lock::barrier_all_threads());
                if cache.settle() {
                    cache.flush_all(&mut heap).unwrap();
                    flushed += 1;
                } else {
                    busy += 1;
                }
                drop(heap);
                std::thread::yield_now();
            }
            (flushed, busy)
        });
        let mut live = HashSet::new();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..300_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let class = (rng >> 40) as usize % CACHED_CLASSES.min(8);
            if live.len() < 200 && rng.is_multiple_of(2) {
                let p = cache.alloc(class, "malloc");
                assert!(live.insert(p as usize), "{p:p} handed out twice");
            } else if let Some(&p) = live.iter().next() {
                live.remove(&p);
                assert!(cache.free(p as *mut u8));
            }
        }
        DONE.store(true, Relaxed);
        let (flushed, _) = stopper.join().unwrap();
        assert!(flushed > 0, "the stopper never got the cache");
        for p in live {
            assert!(cache.free(p as *mut u8));
        }
        let mut heap = HEAP.lock();
        cache.check(&heap).unwrap();
        cache.flush_all(&mut heap).unwrap();
        heap.check().unwrap();
    }
}
