//! The front: which thread has which cache (`thread_cache`), from the
//! cache's making to its giving back, and the registry through which a
//! thread holding the heap lock reaches every cache.
//!
//! # Finding a thread's cache
//!
//! One pointer per thread, in initial-exec TLS (`tls`): reaching it is a
//! load of its offset from the GOT and a load relative to the thread
//! pointer, never `__tls_get_addr`, so it cannot allocate. The pointer
//! also encodes the thread's state: `NONE` before its first call, `OFF`
//! after it exited (or with the caches disabled), `CREATING` while its
//! cache is being made.
//!
//! # Life
//!
//! A cache is made on a thread's first call after the library's
//! constructor has run and once the process has a second thread (earlier
//! calls use the heap directly: with one thread the heap's lock is elided
//! and the pools serve a call with less work than a cache's bookkeeping),
//! from a slab under the heap lock. The debug mode never makes one. A
//! pthread key's destructor gives it back when the thread exits; after
//! that the thread's calls use the heap directly, so destructors that run
//! after ours still work.
//!
//! glibc runs key destructors in at most four rounds: a thread whose first
//! call comes in the last round (from another key's destructor) makes a
//! cache whose destructor never runs. So each cache also holds a robust
//! mutex that its thread locks for life: once the thread is gone, the
//! kernel marks the mutex (it walks the dead thread's robust list), and
//! the next thread to make a cache, or to look at the others on a tick,
//! gives that cache back.
//!
//! # Reaching the other caches
//!
//! With the heap lock held, a thread can stop every other cache and use
//! its bins (see `thread_cache`): to look for a block that holds its
//! free-block key before the heap calls its free a double free
//! (`in_some_cache`, the heap's `CacheSearch`), to give back the caches of
//! threads that stopped calling (`on_tick`: a cache whose activity did not
//! change over a decay period is idle), and for `malloc_trim` from any
//! thread (`trim_all`). After `fork` the child's thread keeps its cache and
//! the caches of threads that do not exist in the child are given back
//! (`reclaim_after_fork`).

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::config;
use crate::depot;
use crate::fault::Fault;
use crate::heap::{HEAP, Heap};
use crate::lock::{barrier_all_threads, single_threaded, thread_pointer};
use crate::purge;
use crate::size_class::CACHED_CLASSES;
use crate::slab::Slab;
use crate::thread_cache::ThreadCache;
use crate::tls;

/// Thread states stored in the TLS slot in place of a cache pointer.
const NONE: usize = 0;
const OFF: usize = 1;
const CREATING: usize = 2;
/// Any slot value above this is a cache.
const LAST_STATE: usize = 4095;

/// This thread's slot: its cache record or state.
#[inline(always)]
fn slot() -> *mut usize {
    tls::cache_slot()
}

/// The calling thread's cache, made on its first call once the process
/// has a second thread; None when the thread has none: the process has
/// one thread (the heap's lock is then elided, and the pools serve each
/// call directly at less cost than a cache's bookkeeping), or the caches
/// are disabled, the debug mode is on, the thread exited, start-up is not
/// over, or there was no memory for it.
#[inline(always)]
pub fn current() -> Option<&'static ThreadCache> {
    // First, so that a single-threaded call pays one load for the cache
    // (glibc never sets the flag again once a thread was created, so no
    // cache exists while it is set).
    if single_threaded() {
        return None;
    }
    let value = tls::read_cache_slot();
    if value > LAST_STATE {
        // SAFETY: a record in the slot is this thread's live record; its
        // cache is used only by this thread (and by others only through
        // the stop protocol of `thread_cache`).
        return Some(unsafe { &(*(value as *const Record)).cache });
    }
    if value == NONE { create() } else { None }
}

/// The calling thread's cache if it has one already: `current` for a
/// caller that has seen the process has threads, and that makes no cache
/// (its slow path calls `current`, which does).
#[inline(always)]
pub fn made() -> Option<&'static ThreadCache> {
    let value = tls::read_cache_slot();
    // SAFETY: as in `current`.
    (value > LAST_STATE).then(|| unsafe { &(*(value as *const Record)).cache })
}

/// The calling thread's record, if it has a cache.
fn mine() -> *mut Record {
    let value = tls::read_cache_slot();
    if value > LAST_STATE { value as *mut Record } else { ptr::null_mut() }
}

/// Set by the library's constructor: caches are made only after it, when
/// the options are read and libc is fully initialised.
static READY: AtomicU32 = AtomicU32::new(0);

pub fn enable() {
    READY.store(1, Relaxed);
}

/// The pthread key whose destructor gives a cache back at thread exit.
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

/// A cache and what the registry knows of it.
#[repr(C)] // the cache first: the TLS slot's pointer is the cache's too
struct Record {
    cache: ThreadCache,
    next: *mut Record,
    prev: *mut Record,
    /// The owner's thread pointer: the record a `fork` child keeps.
    owner: usize,
    /// Locked by the owner for its life; robust, so that the kernel marks
    /// it when the owner is gone (see "Life").
    alive: libc::pthread_mutex_t,
    /// The cache's activity at the last look (`on_tick`).
    seen: (usize, u32),
    /// Stopped and settled by the current holder of the heap lock.
    reachable: bool,
}

#[cold]
#[inline(never)]
fn create() -> Option<&'static ThreadCache> {
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
    let record = register(limit);
    // With a key above 31, glibc may allocate here: that call sees
    // CREATING and uses the heap directly.
    // SAFETY: the key is ours; `record` is null or live.
    if record.is_null() || unsafe { libc::pthread_setspecific(key, record.cast()) } != 0 {
        if !record.is_null() {
            // SAFETY: registered above, in no thread's slot.
            unsafe { destroy(record) };
        }
        // SAFETY: as above.
        unsafe { slot.write(OFF) };
        return None;
    }
    // A fork (from a signal handler) between `register` and here gives the
    // child a record owned by its only thread: the child keeps it (see
    // `reclaim_after_fork`), and this thread goes on to use it there too.
    // SAFETY: as above; the record is live and this thread's.
    unsafe {
        slot.write(record as usize);
        Some(&(*record).cache)
    }
}

/// Makes and registers this thread's record, first giving back the
/// caches of threads that are gone; null when out of memory.
fn register(limit: usize) -> *mut Record {
    let mut heap = HEAP.lock();
    // SAFETY: the heap lock is held.
    let registry = unsafe { Registry::get(&heap) };
    registry.reclaim_dead(&mut heap);
    let record = registry.records.alloc();
    if record.is_null() {
        return record;
    }
    heap.ensure_secret();
    heap.set_cache_search(in_some_cache);
    // SAFETY: a fresh slot of the right size, ours alone; the mutex is
    // initialised in place (it must not move once locked: robust mutexes
    // are linked into their owner's robust list) and locked by its owner,
    // this thread. None of these calls allocates.
    unsafe {
        record.write(Record {
            cache: ThreadCache::new(heap.secret(), limit, purge::now_ms(), on_tick),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            owner: thread_pointer(),
            alive: core::mem::zeroed(),
            seen: (0, 0),
            reachable: false,
        });
        let mut attr: libc::pthread_mutexattr_t = core::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(&raw mut (*record).alive, &attr);
        libc::pthread_mutexattr_destroy(&mut attr);
        libc::pthread_mutex_lock(&raw mut (*record).alive);
    }
    // The owner is written before the record is linked, under the lock:
    // a fork at any later point finds it (see `reclaim_after_fork`).
    registry.link(record);
    record
}

/// The key's destructor: the thread is exiting.
extern "C" fn thread_exit(record: *mut c_void) {
    let slot = slot();
    // SAFETY: this thread's own slot; later calls use the heap directly.
    unsafe {
        if slot.read() != record as usize {
            return; // not ours: nothing to do (cannot happen)
        }
        slot.write(OFF);
        destroy(record.cast());
    }
}

/// Gives back the cache of the calling thread, which is exiting (or
/// failed to finish making it), and frees its record.
///
/// # Safety
/// `record` is the calling thread's live record, which it will not use again.
unsafe fn destroy(record: *mut Record) {
    let mut heap = HEAP.lock();
    // SAFETY: the caller gives the record up; the heap lock is held.
    let result = unsafe { (*record).cache.flush_all(&mut heap) };
    // SAFETY: as above. Unlocking takes the mutex off this thread's robust
    // list before its memory is reused.
    unsafe {
        libc::pthread_mutex_unlock(&raw mut (*record).alive);
        let registry = Registry::get(&heap);
        registry.unlink(record);
        registry.records.free(record);
    }
    drop(heap);
    if let Err(fault) = result {
        crate::fault::fatal("free", fault, ptr::null());
    }
}

/// Every cache: guarded by the heap lock.
struct Registry {
    first: *mut Record,
    records: Slab<Record>,
    /// The clock (ms) at the last look for idle caches.
    looked_at: u64,
}

struct RegistryCell(core::cell::UnsafeCell<Registry>);

// SAFETY: only reached through `Registry::get`, with the heap lock held.
unsafe impl Sync for RegistryCell {}

static REGISTRY: RegistryCell =
    RegistryCell(core::cell::UnsafeCell::new(Registry { first: ptr::null_mut(), records: Slab::new(), looked_at: 0 }));

impl Registry {
    /// # Safety
    /// The caller holds the heap lock (`_locked` is its guard's heap) and
    /// drops the result before releasing it.
    unsafe fn get(_locked: &Heap) -> &'static mut Registry {
        // SAFETY: the heap lock serialises every use.
        unsafe { &mut *REGISTRY.0.get() }
    }

    fn link(&mut self, record: *mut Record) {
        // SAFETY: `record` and the list's records are live.
        unsafe {
            (*record).prev = ptr::null_mut();
            (*record).next = self.first;
            if let Some(next) = self.first.as_mut() {
                next.prev = record;
            }
        }
        self.first = record;
    }

    fn unlink(&mut self, record: *mut Record) {
        // SAFETY: `record` is on the list; its neighbours are live records.
        unsafe {
            let r = &mut *record;
            match r.prev.as_mut() {
                Some(prev) => prev.next = r.next,
                None => self.first = r.next,
            }
            if let Some(next) = r.next.as_mut() {
                next.prev = r.prev;
            }
        }
    }

    /// Calls `f` on every record; `f` may unlink and free the record it
    /// is given (and only that one).
    fn for_each(&mut self, mut f: impl FnMut(&mut Self, *mut Record)) {
        let mut record = self.first;
        while !record.is_null() {
            // SAFETY: registered records are live; read before `f` may free it.
            let next = unsafe { (*record).next };
            f(self, record);
            record = next;
        }
    }

    /// Stops every cache but the caller's and waits for each owner to
    /// leave its operation (see `thread_cache`), marking the records whose
    /// bins the caller may now use (`reachable`) until it releases the
    /// heap lock. Without a process-wide barrier, none is reachable.
    fn stop_others(&mut self) {
        let me = mine();
        self.for_each(|_, r| {
            // SAFETY: registered records are live.
            unsafe {
                (*r).reachable = false;
                if r != me {
                    (*r).cache.stop();
                }
            }
        });
        if !barrier_all_threads() {
            return;
        }
        // SAFETY: as above.
        self.for_each(|_, r| unsafe { (*r).reachable = r != me && (*r).cache.settle() });
    }

    /// Gives back the caches of threads that are gone (see "Life"), their
    /// bins followed only while their blocks check out.
    fn reclaim_dead(&mut self, heap: &mut Heap) {
        let me = mine();
        self.for_each(|registry, r| {
            // SAFETY: registered records are live; only a gone owner's
            // mutex reads as dead, and its cache is used by nobody.
            unsafe {
                if r == me || !owner_is_gone(r) {
                    return;
                }
                let _ = (*r).cache.flush_all(heap);
                registry.unlink(r);
                registry.records.free(r);
            }
        });
    }
}

/// Whether the owner of `record` has exited: its robust mutex is marked.
///
/// # Safety
/// `record` is live, and not the calling thread's.
unsafe fn owner_is_gone(record: *mut Record) -> bool {
    // SAFETY: the mutex was initialised in place and never moved.
    unsafe {
        let mutex = &raw mut (*record).alive;
        match libc::pthread_mutex_trylock(mutex) {
            libc::EBUSY => false,
            // EOWNERDEAD (the lock is now ours: let it go, off our robust
            // list), or free (never locked for good): gone either way.
            0 | libc::EOWNERDEAD => {
                libc::pthread_mutex_unlock(mutex);
                true
            }
            _ => true,
        }
    }
}

/// The heap's `CacheSearch`: whether the pool block `p` of `class` is in
/// a thread cache, this thread's or, once they are stopped, another's.
fn in_some_cache(heap: &Heap, p: *mut u8, class: usize) -> bool {
    if class >= CACHED_CLASSES {
        return false;
    }
    let me = mine();
    // SAFETY: this thread's own record, not in an operation (it is in the
    // heap, with the lock held).
    if !me.is_null() && unsafe { (*me).cache.contains(heap, p, class) } {
        return true;
    }
    if depot::contains(heap, p, class) {
        return true;
    }
    // SAFETY: the heap lock is held (the heap asks with it held).
    let registry = unsafe { Registry::get(heap) };
    registry.stop_others();
    let mut found = false;
    registry.for_each(|_, r| {
        // SAFETY: registered records are live; reachable ones stopped.
        found |= unsafe { (*r).reachable && (*r).cache.contains(heap, p, class) };
    });
    found
}

/// The cache's tick (see `thread_cache`): once per decay period, gives
/// back the caches of threads that are gone, and of those whose activity
/// has not changed since the last look (they stopped calling: what they
/// hold would pin their pools for good), and the depot's lists parked
/// for a decay period; a corrupted parked list is the fault returned.
fn on_tick(heap: &mut Heap, now: u64) -> Result<(), Fault> {
    // SAFETY: the heap lock is held (the cache ticks with it held).
    let registry = unsafe { Registry::get(heap) };
    let decay_ms = config::get().decay_ms as u64;
    if now.saturating_sub(registry.looked_at) < decay_ms {
        return Ok(());
    }
    registry.looked_at = now;
    registry.reclaim_dead(heap);
    let result = depot::expire(heap, now.saturating_sub(decay_ms));
    let me = mine();
    let mut idle = false;
    registry.for_each(|_, r| {
        // SAFETY: registered records are live; `seen` is the registry's.
        unsafe {
            let activity = (*r).cache.activity();
            let unchanged = activity == (*r).seen;
            (*r).seen = activity;
            idle |= r != me && unchanged && activity.0 > 0;
        }
    });
    if idle {
        registry.stop_others();
        registry.for_each(|_, r| {
            // SAFETY: as above; reachable caches are the caller's to use.
            unsafe {
                if (*r).reachable && (*r).seen == (*r).cache.activity() && (*r).seen.0 > 0 {
                    // A corrupted bin is reported by its owner's next flush.
                    let _ = (*r).cache.flush_all(heap);
                    (*r).seen = (*r).cache.activity();
                }
            }
        });
    }
    result
}

/// `malloc_trim`: gives back the calling thread's cache, the depot, the
/// caches of threads that are gone, and every other cache it can stop.
pub fn trim_all(heap: &mut Heap) -> Result<(), Fault> {
    let me = mine();
    // SAFETY: this thread's live record.
    let result = if me.is_null() { Ok(()) } else { unsafe { (*me).cache.flush_all(heap) } };
    let result = result.and(depot::expire(heap, u64::MAX));
    // SAFETY: the heap lock is held (the caller's heap is behind it).
    let registry = unsafe { Registry::get(heap) };
    registry.reclaim_dead(heap);
    registry.stop_others();
    registry.for_each(|_, r| {
        // SAFETY: registered records are live; reachable ones stopped.
        unsafe {
            if (*r).reachable {
                // A corrupted bin is reported by its owner's next flush.
                let _ = (*r).cache.flush_all(heap);
            }
        }
    });
    result
}

/// In a `fork` child, with the heap lock held and the heap consistent:
/// the caches of the threads that do not exist here go back to the heap.
/// The child's only thread keeps every record it owns, the one it is still
/// making included (its owner is written before it is registered). Other
/// owners may have been stopped inside a push or a pop, so each list is
/// followed only while its blocks check out exactly (`Heap::free_cached`);
/// what does not (at most the block being pushed or popped, and what
/// follows it) stays lost.
pub fn reclaim_after_fork(heap: &mut Heap) {
    let me = thread_pointer();
    // SAFETY: the heap lock is held.
    let registry = unsafe { Registry::get(heap) };
    registry.for_each(|registry, r| {
        // SAFETY: registered records are live; the owner of this one does
        // not exist in this process, and its mutex is not on our robust list.
        unsafe {
            if (*r).owner != me {
                let _ = (*r).cache.flush_all(heap);
                registry.unlink(r);
                registry.records.free(r);
            }
        }
    });
}

/// What all caches and the depot hold, for statistics: blocks per class,
/// their bytes, and the number of caches. Read without the caches'
/// owners' cooperation, so only approximately consistent while threads run.
pub struct Holdings {
    pub blocks: [usize; CACHED_CLASSES],
    pub bytes: usize,
    pub threads: usize,
}

pub fn holdings(heap: &Heap) -> Holdings {
    let mut h = Holdings { blocks: [0; CACHED_CLASSES], bytes: 0, threads: 0 };
    // SAFETY: the heap lock is held (the caller's heap is behind it).
    let registry = unsafe { Registry::get(heap) };
    registry.for_each(|_, r| {
        // SAFETY: registered records are live; the counts read are atomics.
        let cache = unsafe { &(*r).cache };
        for (class, total) in h.blocks.iter_mut().enumerate() {
            *total += cache.blocks(class);
        }
        h.bytes += cache.bytes();
        h.threads += 1;
    });
    h.bytes += depot::holdings(heap, &mut h.blocks);
    h
}

/// `pymalloc_check_heap`: the calling thread's cache (see
/// `ThreadCache::check`) and the depot.
pub fn check_current(heap: &Heap) -> Result<(), &'static str> {
    let me = mine();
    if !me.is_null() {
        // SAFETY: this thread's live record, not in use during this call.
        unsafe { (*me).cache.check(heap) }?;
    }
    depot::check(heap)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registered records.
    fn registered() -> Vec<*mut Record> {
        let heap = HEAP.lock();
        // SAFETY: the heap lock is held.
        let registry = unsafe { Registry::get(&heap) };
        let mut all = Vec::new();
        registry.for_each(|_, r| all.push(r));
        all
    }

    fn owner(record: *mut Record) -> usize {
        // SAFETY: a registered record is live.
        unsafe { (*record).owner }
    }

    /// The registry's view of threads coming and going (the only test
    /// that uses it: `reclaim_after_fork` gives back every record whose
    /// owner is not the calling thread).
    #[test]
    fn records_follow_their_threads_through_exits_and_forks() {
        // A thread that registers and exits without its destructor (as
        // one whose first call came in the last round of destructors):
        // found gone when the next cache is made.
        let gone = std::thread::spawn(|| owner(register(64 << 10))).join().unwrap();
        assert_eq!(registered().iter().map(|&r| owner(r)).collect::<Vec<_>>(), [gone]);
        let mine = register(64 << 10);
        assert_eq!(registered(), [mine], "the record of a thread that is gone is given back");
        // A record being made when a signal handler forks: registered,
        // not yet in this thread's TLS slot. The child keeps it.
        std::thread::spawn(|| owner(register(64 << 10))).join().unwrap();
        assert_eq!(registered().len(), 2);
        reclaim_after_fork(&mut HEAP.lock());
        assert_eq!(registered(), [mine], "the child keeps its own record, made but not yet in its slot, and no other");
        // SAFETY: this thread's record, unused from here on.
        unsafe { destroy(mine) };
        assert!(registered().is_empty());
        HEAP.lock().check().unwrap();
    }
}
