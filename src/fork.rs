//! `fork` with the heap lock: a lock held by another thread at `fork`
//! would stay held forever in the child, whose copy of that thread does
//! not exist. So `prepare` takes the lock (the heap is then consistent and
//! nobody is inside it), the parent releases it, the child resets it.

use crate::heap::HEAP;

extern "C" fn prepare() {
    // SAFETY: only the lock is touched, not the heap behind it.
    unsafe { HEAP.raw() }.lock_strict();
}

extern "C" fn parent() {
    // SAFETY: `prepare` took the lock in this thread with lock_strict.
    unsafe { HEAP.raw().unlock_strict() };
}

extern "C" fn child() {
    // SAFETY: the child has one thread, this one, which holds the lock
    // from `prepare`; resetting it is releasing it.
    unsafe { HEAP.raw() }.reset_after_fork();
}

/// Registers the handlers. glibc's `pthread_atfork` allocates (through
/// us), so this must run without the heap lock held: from the constructor.
pub fn install() {
    // SAFETY: the handlers are `extern "C"` functions that live forever.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}
