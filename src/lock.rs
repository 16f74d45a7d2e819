//! The global lock (the "GIL"): a futex mutex behind `parking_lot`'s
//! `lock_api::RawMutex`.
//!
//! Uncontended, `lock` is one compare-and-swap and `unlock` one swap. A
//! contended `lock` spins briefly, then sleeps in `futex(FUTEX_WAIT)`; the
//! unlocker wakes one sleeper when the state says someone may be asleep
//! (Drepper, "Futexes Are Tricky", mutex #3).
//!
//! While the process has a single thread (glibc's `__libc_single_threaded`,
//! which `pthread_create` clears, for good, before the second thread
//! exists) nobody can contend, so `lock` takes nothing and `unlock` releases
//! nothing: no atomic operation at all, as glibc's own malloc does. The
//! guard records which kind of acquisition it was. `fork` handlers use
//! `lock_strict`, which always takes the lock.
//!
//! Why not `parking_lot::RawMutex`: its slow path parks through
//! `parking_lot_core`, which allocates its hash table and uses
//! `thread_local!` storage, i.e. calls `malloc` (this library) and
//! `__tls_get_addr` while we hold this very lock. The path below makes
//! only `futex` system calls and touches no memory but `state`.

use core::ffi::c_char;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use parking_lot::lock_api::RawMutex;

use crate::os::KeepErrno;

const UNLOCKED: u32 = 0;
/// Held, and nobody sleeps on it.
const LOCKED: u32 = 1;
/// Held, and a thread may sleep on it: unlock must wake one.
const CONTENDED: u32 = 2;

/// Spins before sleeping: a heap operation is short, so the holder is
/// usually done within this many pause loops.
const SPIN_LIMIT: u32 = 100;

unsafe extern "C" {
    /// glibc 2.32+: non-zero while the process has never created a thread.
    static __libc_single_threaded: c_char;
}

#[inline(always)]
fn single_threaded() -> bool {
    // SAFETY: a byte of glibc's, written only by the process's only thread
    // (in pthread_create, before the second thread exists), so reading it
    // cannot race with a write that matters to this thread.
    unsafe { ptr::addr_of!(__libc_single_threaded).read() != 0 }
}

pub struct FutexMutex {
    state: AtomicU32,
}

/// How a `lock` was taken: `Held(false)` when it was elided because the
/// process had one thread.
pub struct Held(bool);

impl FutexMutex {
    /// Takes the lock whatever the thread count (for `fork`'s handlers).
    #[inline]
    pub fn lock_strict(&self) {
        if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
    }

    /// Releases a lock taken by `lock_strict`.
    ///
    /// # Safety
    /// The lock must be held through `lock_strict` by this thread.
    #[inline]
    pub unsafe fn unlock_strict(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            self.wake_one();
        }
    }

    /// Out of line, so that the fast paths that unlock stay leaf code.
    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        let _keep = KeepErrno::new();
        futex_wake_one(&self.state);
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..SPIN_LIMIT {
            match self.state.load(Ordering::Relaxed) {
                UNLOCKED => {
                    if self.state.compare_exchange_weak(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                        return;
                    }
                }
                LOCKED => core::hint::spin_loop(),
                _ => break, // others are already asleep: queue up behind them
            }
        }
        // futex sets errno on EAGAIN/EINTR; malloc and free must not.
        let _keep = KeepErrno::new();
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED);
        }
    }

    /// Makes the lock free again in a child process after `fork`: the
    /// thread that held it in the parent does not exist in the child.
    pub fn reset_after_fork(&self) {
        self.state.store(UNLOCKED, Ordering::Relaxed);
    }
}

// SAFETY: with more than one thread, `lock` returns only after moving
// `state` from UNLOCKED to LOCKED/CONTENDED with Acquire ordering, and only
// `unlock` (Release) moves it back, so at most one holder exists at a time.
// With one thread there is at most one holder by construction, and the
// thread that ends that state (pthread_create) does so between calls.
unsafe impl RawMutex for FutexMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: FutexMutex = FutexMutex { state: AtomicU32::new(UNLOCKED) };
    type Guard = Held;

    #[inline(always)]
    fn lock(&self) -> Held {
        if single_threaded() {
            return Held(false);
        }
        self.lock_strict();
        Held(true)
    }

    #[inline]
    fn try_lock(&self) -> Option<Held> {
        if single_threaded() {
            return Some(Held(false));
        }
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Held(true))
    }

    #[inline(always)]
    unsafe fn unlock(&self, guard: Held) {
        if guard.0 {
            // SAFETY: `guard` proves this thread took the lock for real.
            unsafe { self.unlock_strict() };
        }
    }

    fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNLOCKED
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT only reads `word`, a live u32; it returns at once
    // if the word no longer holds `expected` (no lost wake-up).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake_one(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE touches no memory; a stale address wakes nobody.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::lock_api::Mutex;

    #[test]
    fn counts_exactly_under_contention() {
        static COUNTER: Mutex<FutexMutex, u64> = Mutex::from_raw(FutexMutex::INIT, 0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..100_000 {
                        *COUNTER.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*COUNTER.lock(), 400_000);
        assert!(!COUNTER.is_locked());
    }

    #[test]
    fn reset_after_fork_frees_a_held_lock() {
        static M: Mutex<FutexMutex, ()> = Mutex::from_raw(FutexMutex::INIT, ());
        // SAFETY: test-only access to the raw lock.
        let raw = unsafe { M.raw() };
        raw.lock_strict();
        assert!(M.is_locked());
        raw.reset_after_fork();
        assert!(!M.is_locked());
    }

    #[test]
    fn preserves_errno_when_contended() {
        static M: Mutex<FutexMutex, ()> = Mutex::from_raw(FutexMutex::INIT, ());
        let held = M.lock();
        let waiter = std::thread::spawn(|| {
            crate::os::set_errno(12345);
            drop(M.lock());
            // SAFETY: reading this thread's errno.
            unsafe { *libc::__errno_location() }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(held);
        assert_eq!(waiter.join().unwrap(), 12345);
    }
}
