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
//! # Several forks at once
//!
//! glibc (2.34 and later) runs the prepare handlers of different forking
//! threads at the same time: it releases its `atfork_lock` around each
//! handler. So what `prepare` took is kept per thread (a TLS word, see
//! `tls`), and `prepare` never waits for the heap lock while it holds the
//! stdio list lock: the heap lock's holder may be a thread whose signal
//! handler is forking, waiting for the list lock in its own `prepare`
//! (or in glibc's `fork` right after it). `prepare` takes the list lock,
//! tries the heap lock for a while, and if it stays held, lets the list
//! go, sleeps until the heap lock is free and starts again. A thread that
//! already holds the heap lock takes neither (glibc's `fork` then takes
//! the list lock itself).

use crate::heap::HEAP;
use crate::lock::{FutexMutex, single_threaded};
use crate::tls;

unsafe extern "C" {
    /// glibc's stdio list lock (recursive), exported since 2.2.5.
    fn _IO_list_lock();
    fn _IO_list_unlock();
    fn _IO_list_resetlock();
}

/// What a `prepare` took, two bits of this thread's fork word (pushed by
/// `prepare`, popped by `parent` or `child`, so that a handler that forks
/// while its thread is between `prepare` and `parent` keeps both apart).
const TOOK_HEAP: usize = 1;
const TOOK_IO_LIST: usize = 2;
const BITS: u32 = 2;

/// Attempts at the heap lock while holding the stdio list lock, before
/// letting the list go.
const TRIES: u32 = 1000;

extern "C" fn prepare() {
    // SAFETY: only the lock is touched, not the heap behind it.
    let raw = unsafe { HEAP.raw() };
    let took = if raw.held_by_me() {
        0
    } else if single_threaded() {
        // Nobody else can hold the list lock, nor the heap lock.
        raw.lock_strict();
        TOOK_HEAP
    } else {
        loop {
            // SAFETY: a plain (recursive) lock of glibc's; released below,
            // in `parent`, or reset in `child`.
            unsafe { _IO_list_lock() };
            if try_for_a_while(raw) {
                break TOOK_HEAP | TOOK_IO_LIST;
            }
            // SAFETY: taken just above by this thread.
            unsafe { _IO_list_unlock() };
            // Sleep until the heap lock is free, without the list lock.
            raw.lock_strict();
            // SAFETY: taken just above by this thread.
            unsafe { raw.unlock_strict() };
        }
    };
    // SAFETY: this thread's own word.
    unsafe {
        let state = tls::fork_state();
        state.write(state.read() << BITS | took);
    }
}

/// Takes the heap lock if it comes free within `TRIES` attempts.
fn try_for_a_while(raw: &FutexMutex) -> bool {
    for _ in 0..TRIES {
        if raw.try_lock_strict() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// What this thread's last `prepare` took, forgotten.
fn took() -> usize {
    // SAFETY: this thread's own word (the child's copy in a child).
    unsafe {
        let state = tls::fork_state();
        let value = state.read();
        state.write(value >> BITS);
        value & ((1 << BITS) - 1)
    }
}

extern "C" fn parent() {
    let took = took();
    if took & TOOK_HEAP != 0 {
        // SAFETY: `prepare` took the lock in this thread with lock_strict.
        unsafe { HEAP.raw().unlock_strict() };
    }
    if took & TOOK_IO_LIST != 0 {
        // SAFETY: `prepare` took it in this thread.
        unsafe { _IO_list_unlock() };
    }
}

extern "C" fn child() {
    let took = took();
    let took_heap = took & TOOK_HEAP != 0;
    if took_heap {
        // SAFETY: `prepare` took the heap lock in this thread: the heap is
        // consistent and ours alone.
        crate::front::reclaim_after_fork(unsafe { &mut *HEAP.data_ptr() });
    }
    // SAFETY: only the lock is touched. The child's only thread is this
    // one: it keeps the lock iff it held it before `prepare` (an
    // interrupted operation that will release it), else the lock is freed.
    unsafe { HEAP.raw() }.reset_after_fork(!took_heap);
    if took & TOOK_IO_LIST != 0 {
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
