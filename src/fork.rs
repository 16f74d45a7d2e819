//! `fork` with the heap lock. A lock held by another thread at `fork`
//! would stay held forever in the child, whose copy of that thread does
//! not exist. So `prepare` takes the lock (the heap is then consistent and
//! nobody is inside it), the parent releases it, the child resets it.
//!
//! # `fork` from a signal handler
//!
//! A handler that interrupted this very thread inside `malloc` may call
//! `fork`. The lock is then held by this thread, and taking it again would
//! wait forever on ourselves. The lock word names its owner exactly (see
//! `lock`), so the cases are:
//!
//! - held by this thread: `prepare` does not take it. No other thread can
//!   enter the heap until the interrupted operation finishes, so nothing
//!   changes under the fork. The parent leaves it held (the interrupted
//!   operation releases it when the handler returns). In the child the
//!   same thread exists with the same thread pointer and the same
//!   interrupted operation on its stack, so the lock stays held by it and
//!   that operation completes and releases it if the handler returns (if
//!   the handler `_exit`s instead, nothing is left to care).
//! - anything else: `prepare` takes it as usual, the parent releases it and
//!   the child, whose only thread is this one, frees it. In a process with
//!   one thread the interrupted operation took nothing (see `lock`), so
//!   this case also covers it; the interrupted operation finishes with the
//!   heap to itself when the handler returns, in parent and child alike.
//!
//! As with any allocator, a handler must not itself allocate while it
//! interrupts an allocation: that is re-entry, not a `fork` problem.
//!
//! # Lock order with glibc's `fork`
//!
//! glibc runs the prepare handlers, then takes its stdio list lock
//! (`_IO_list_lock`), then its own malloc's locks. Stdio allocates while
//! holding a stream's lock (a stream's first write allocates its buffer,
//! `fclose` frees it) and `fflush(NULL)`, `fopen` and `fclose` take the
//! list lock and then stream locks. With the heap lock taken first, three
//! threads deadlock: `fork` holds the heap and waits for the list; a
//! `fflush(NULL)` holds the list and waits for a stream; that stream's
//! holder waits for the heap. So `prepare` takes the list lock before the
//! heap lock, which is glibc's own order for its malloc (the list lock is
//! recursive, so glibc's own `_IO_list_lock` then succeeds). With a single
//! thread nobody can hold it, and it is left alone.
//!
//! glibc's `fork` serialises its handlers (its `atfork_lock` is held from
//! the prepare handlers until the parent or child handlers end), so the
//! flags below are written by one forking thread at a time.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::heap::HEAP;
use crate::lock::single_threaded;

unsafe extern "C" {
    /// glibc's stdio list lock (recursive), exported since 2.2.5.
    fn _IO_list_lock();
    fn _IO_list_unlock();
    fn _IO_list_resetlock();
}

/// Whether `prepare` took the heap lock (false: this thread already held it).
static TOOK_HEAP: AtomicBool = AtomicBool::new(false);
/// Whether `prepare` took glibc's stdio list lock.
static TOOK_IO_LIST: AtomicBool = AtomicBool::new(false);

extern "C" fn prepare() {
    let multi = !single_threaded();
    if multi {
        // SAFETY: a plain (recursive) lock of glibc's; released in
        // `parent`, reset in `child`.
        unsafe { _IO_list_lock() };
    }
    TOOK_IO_LIST.store(multi, Ordering::Relaxed);
    // SAFETY: only the lock is touched, not the heap behind it.
    let raw = unsafe { HEAP.raw() };
    let take = !raw.held_by_me();
    if take {
        raw.lock_strict();
    }
    TOOK_HEAP.store(take, Ordering::Relaxed);
}

extern "C" fn parent() {
    if TOOK_HEAP.load(Ordering::Relaxed) {
        // SAFETY: `prepare` took the lock in this thread with lock_strict.
        unsafe { HEAP.raw().unlock_strict() };
    }
    if TOOK_IO_LIST.load(Ordering::Relaxed) {
        // SAFETY: `prepare` took it in this thread.
        unsafe { _IO_list_unlock() };
    }
}

extern "C" fn child() {
    if TOOK_HEAP.load(Ordering::Relaxed) {
        // SAFETY: `prepare` took the heap lock in this thread: the heap is
        // consistent and ours alone.
        crate::thread_cache::reclaim_after_fork(unsafe { &mut *HEAP.data_ptr() });
    }
    // SAFETY: only the lock is touched. The child's only thread is this
    // one: it keeps the lock iff it held it before `prepare` (an
    // interrupted operation that will release it), else the lock is freed.
    unsafe { HEAP.raw() }.reset_after_fork(!TOOK_HEAP.load(Ordering::Relaxed));
    if TOOK_IO_LIST.load(Ordering::Relaxed) {
        // SAFETY: what glibc itself does in a child of a threaded parent;
        // the only thread left is this one, so nobody else holds it.
        unsafe { _IO_list_resetlock() };
    }
}

/// Registers the handlers. glibc's `pthread_atfork` allocates (through
/// us), so this must run without the heap lock held: from the constructor.
pub fn install() {
    // SAFETY: the handlers are `extern "C"` functions that live forever.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}
