//! The global lock (the "GIL"): a futex mutex behind `parking_lot`'s
//! `lock_api::RawMutex`, whose lock word names its owner.
//!
//! # The word
//!
//! ```text
//!  state: usize = 0                  unlocked
//!               = tp                 held by the thread whose thread pointer is tp
//!               = tp | CONTENDED     held, and a thread may sleep on it
//! ```
//!
//! `tp` is the thread pointer (`%fs:0` on x86_64, `tpidr_el0` on
//! aarch64): the ABI guarantees it is set before any user code runs,
//! unique among live threads, constant for the thread's life and at least
//! 16-byte aligned, so bit 0 is free for the flag. Reading it is one
//! instruction: no libc call, no thread-local storage.
//!
//! Uncontended, `lock` is one compare-and-swap (0 -> tp) and `unlock` one
//! swap (-> 0). Because the owner is written by the very instruction that
//! takes the lock, "is this thread the holder?" has an exact answer at
//! every instant, even from a signal handler that interrupted the holder
//! between two instructions. `fork` relies on this (see `fork`).
//!
//! # Contention, and why no wake-up is lost
//!
//! A contended `lock` spins briefly, then sets `CONTENDED` in the word
//! and sleeps in `futex(FUTEX_WAIT)` on its low 32 bits (the futex word;
//! the target is little-endian), expecting them to still read
//! `low32(owner | CONTENDED)`. The kernel compares and enqueues
//! atomically, so the sleeper either sees a different value and retries,
//! or is queued while the word has `CONTENDED` set. A word with the flag
//! set belongs to a holder whose `unlock` will see the flag and wake one
//! sleeper; truncating to 32 bits only matters if another owner with the
//! same low bits holds the word with the flag set, and that owner wakes
//! on unlock just the same. A thread that slept acquires with `CONTENDED`
//! set (it cannot know whether others still sleep), so each woken thread
//! passes the wake-up on (Drepper, "Futexes Are Tricky", mutex #3).
//!
//! # Single thread
//!
//! While the process has a single thread (glibc's `__libc_single_threaded`,
//! which `pthread_create` clears, for good, before the second thread
//! exists) nobody can contend, so `lock` takes nothing and `unlock`
//! releases nothing: no atomic operation at all, as glibc's own malloc
//! does. The guard records which kind of acquisition it was. `fork`'s
//! handlers use `lock_strict`, which always takes the lock.
//!
//! # Why not `parking_lot::RawMutex`
//!
//! Its slow path parks through `parking_lot_core`, which allocates its
//! hash table and uses `thread_local!` storage, i.e. calls `malloc` (this
//! library) and `__tls_get_addr` while we hold this very lock. The path
//! below makes only `futex` system calls through `syscall(2)` (which
//! touches nothing but `errno`, saved and restored around it), and
//! touches no memory but `state` and the stack.

use core::ffi::{c_char, c_int};
use core::ptr;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

use lock_api::RawMutex;

use crate::os::KeepErrno;

const UNLOCKED: usize = 0;
/// Set in a held word when a thread may sleep on it: unlock must wake one.
const CONTENDED: usize = 1;

/// Spins before sleeping: a heap operation is short, so the holder is
/// usually done within this many pause loops.
const SPIN_LIMIT: u32 = 100;

unsafe extern "C" {
    /// glibc 2.32+: non-zero while the process has never created a thread.
    static __libc_single_threaded: c_char;
}

#[inline(always)]
pub fn single_threaded() -> bool {
    // SAFETY: a byte of glibc's, written only by the process's only thread
    // (in pthread_create, before the second thread exists), so reading it
    // cannot race with a write that matters to this thread.
    unsafe { ptr::addr_of!(__libc_single_threaded).read() != 0 }
}

/// This thread's thread pointer: non-zero, 16-byte aligned, distinct from
/// every other live thread's.
#[inline(always)]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads the thread pointer register (the TCB's self pointer at
    // %fs:0 on x86_64, which the TLS ABI guarantees); no memory is written.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: reads a system register, no memory access.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags))
    };
    tp
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the lock needs the thread pointer: add this architecture to `thread_pointer`");

pub struct FutexMutex {
    state: AtomicUsize,
}

/// How a `lock` was taken: `Held(false)` when it was elided because the
/// process had one thread.
pub struct Held(bool);

impl FutexMutex {
    /// Takes the lock whatever the thread count (for `fork`'s handlers).
    #[inline]
    pub fn lock_strict(&self) {
        let tp = thread_pointer();
        if self.state.compare_exchange(UNLOCKED, tp, Ordering::Acquire, Ordering::Relaxed).is_err() {
            self.lock_contended(tp);
        }
    }

    /// Takes the lock if it is free, whatever the thread count; true if
    /// taken (release it with `unlock_strict`).
    #[inline]
    pub fn try_lock_strict(&self) -> bool {
        self.state.compare_exchange(UNLOCKED, thread_pointer(), Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Releases a lock taken by `lock_strict`.
    ///
    /// # Safety
    /// The lock must be held through `lock_strict` by this thread.
    #[inline]
    pub unsafe fn unlock_strict(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) & CONTENDED != 0 {
            self.wake_one();
        }
    }

    /// Out of line, so that the fast paths that unlock stay leaf code.
    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        let _keep = KeepErrno::new();
        futex_wake_one(self.futex_word());
    }

    /// Whether this thread holds the lock (taken strictly). Exact: only
    /// this thread ever writes its own thread pointer into the word.
    #[inline]
    pub fn held_by_me(&self) -> bool {
        self.state.load(Ordering::Relaxed) & !CONTENDED == thread_pointer()
    }

    #[cold]
    fn lock_contended(&self, tp: usize) {
        for _ in 0..SPIN_LIMIT {
            match self.state.load(Ordering::Relaxed) {
                UNLOCKED => {
                    if self.state.compare_exchange_weak(UNLOCKED, tp, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                        return;
                    }
                }
                s if s & CONTENDED == 0 => core::hint::spin_loop(),
                _ => break, // others are already asleep: queue up behind them
            }
        }
        // futex sets errno on EAGAIN/EINTR; malloc and free must not.
        let _keep = KeepErrno::new();
        let mut seen = self.state.load(Ordering::Relaxed);
        loop {
            if seen == UNLOCKED {
                // Taken with the flag: others may still sleep (see the
                // module docs), so our unlock must wake one.
                match self.state.compare_exchange(UNLOCKED, tp | CONTENDED, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(now) => seen = now,
                }
                continue;
            }
            if seen & CONTENDED == 0 {
                if let Err(now) =
                    self.state.compare_exchange(seen, seen | CONTENDED, Ordering::Relaxed, Ordering::Relaxed)
                {
                    seen = now;
                    continue;
                }
            }
            futex_wait(self.futex_word(), (seen | CONTENDED) as u32);
            seen = self.state.load(Ordering::Relaxed);
        }
    }

    /// The futex word: the low 32 bits of `state`.
    fn futex_word(&self) -> *const AtomicU32 {
        const { assert!(cfg!(target_endian = "little")) };
        self.state.as_ptr().cast::<AtomicU32>()
    }

    /// In a child process after `fork`: the lock stays held if this thread
    /// (the child's only one) held it, else it is made free, since the
    /// thread that held it in the parent does not exist here. The flag is
    /// dropped: nobody sleeps on the child's copy of the word.
    pub fn reset_after_fork(&self, keep_mine: bool) {
        let value = if keep_mine { thread_pointer() } else { UNLOCKED };
        self.state.store(value, Ordering::Relaxed);
    }
}

// SAFETY: with more than one thread, `lock` returns only after moving
// `state` from UNLOCKED to the caller's non-zero thread pointer (possibly
// with the flag) with Acquire ordering, and only `unlock` (Release) moves
// it back, so at most one holder exists at a time. With one thread there
// is at most one holder by construction, and the thread that ends that
// state (pthread_create) does so between calls.
unsafe impl RawMutex for FutexMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: FutexMutex = FutexMutex { state: AtomicUsize::new(UNLOCKED) };
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
        self.try_lock_strict().then_some(Held(true))
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

/// Which `membarrier` command serves `barrier_all_threads` here.
static BARRIER: AtomicU8 = AtomicU8::new(BARRIER_UNKNOWN);
const BARRIER_UNKNOWN: u8 = 0;
const BARRIER_EXPEDITED: u8 = 1;
const BARRIER_GLOBAL: u8 = 2;
const BARRIER_NONE: u8 = 3;

// membarrier(2) commands.
const MEMBARRIER_CMD_QUERY: c_int = 0;
const MEMBARRIER_CMD_GLOBAL: c_int = 1;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: c_int = 1 << 4;

fn membarrier(cmd: c_int) -> i64 {
    // SAFETY: membarrier touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Makes every running thread of the process execute a full memory
/// barrier before this returns: the other half of a fence that a thread's
/// own fast path leaves out, paid only when asked (see `thread_cache`).
/// One `membarrier` system call: the expedited kind (Linux 4.14, IPIs to
/// the CPUs running our threads), registered on first use, else the
/// global kind (an RCU grace period, milliseconds). False where the kernel
/// offers neither (or a seccomp filter refuses them): the caller then
/// goes without. Leaves errno alone.
pub fn barrier_all_threads() -> bool {
    let _keep = KeepErrno::new();
    loop {
        match BARRIER.load(Ordering::Relaxed) {
            BARRIER_EXPEDITED => return membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0,
            BARRIER_GLOBAL => return membarrier(MEMBARRIER_CMD_GLOBAL) == 0,
            BARRIER_NONE => return false,
            _ => {
                let mode = if membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0 {
                    BARRIER_EXPEDITED
                } else if membarrier(MEMBARRIER_CMD_QUERY).max(0) & MEMBARRIER_CMD_GLOBAL as i64 != 0 {
                    BARRIER_GLOBAL
                } else {
                    BARRIER_NONE
                };
                BARRIER.store(mode, Ordering::Relaxed);
            }
        }
    }
}

fn futex_wait(word: *const AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT only reads `word`, the live low half of `state`;
    // it returns at once if the word no longer holds `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake_one(word: *const AtomicU32) {
    // SAFETY: FUTEX_WAKE touches no memory; a stale address wakes nobody.
    unsafe {
        libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_api::Mutex;

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
    fn thread_pointers_are_distinct_and_aligned() {
        let mine = thread_pointer();
        let other = std::thread::spawn(thread_pointer).join().unwrap();
        assert_ne!(mine, 0);
        assert_eq!(mine & 15, 0);
        assert_ne!(mine, other);
        assert_eq!(mine, thread_pointer());
    }

    #[test]
    fn knows_its_owner() {
        static M: Mutex<FutexMutex, ()> = Mutex::from_raw(FutexMutex::INIT, ());
        // SAFETY: test-only access to the raw lock.
        let raw = unsafe { M.raw() };
        assert!(!raw.held_by_me());
        raw.lock_strict();
        assert!(raw.held_by_me());
        // SAFETY: as above; another thread only asks who holds it.
        assert!(!std::thread::spawn(|| unsafe { M.raw() }.held_by_me()).join().unwrap());
        // SAFETY: taken above by this thread.
        unsafe { raw.unlock_strict() };
        assert!(!raw.held_by_me());
    }

    #[test]
    fn reset_after_fork_frees_or_keeps() {
        static M: Mutex<FutexMutex, ()> = Mutex::from_raw(FutexMutex::INIT, ());
        // SAFETY: test-only access to the raw lock.
        let raw = unsafe { M.raw() };
        raw.lock_strict();
        raw.reset_after_fork(false);
        assert!(!M.is_locked());
        raw.reset_after_fork(true);
        assert!(raw.held_by_me());
        // SAFETY: held by this thread, as just asserted.
        unsafe { raw.unlock_strict() };
        assert!(!M.is_locked());
    }

    #[test]
    fn preserves_errno_when_contended() {
        use std::sync::atomic::AtomicBool;
        static M: Mutex<FutexMutex, ()> = Mutex::from_raw(FutexMutex::INIT, ());
        static ACQUIRED: AtomicBool = AtomicBool::new(false);
        let held = M.lock();
        let waiter = std::thread::spawn(|| {
            crate::os::set_errno(12345);
            let guard = M.lock();
            ACQUIRED.store(true, Ordering::SeqCst);
            drop(guard);
            // SAFETY: reading this thread's errno.
            unsafe { *libc::__errno_location() }
        });
        // Contended for sure: the waiter has gone past spinning and set the
        // flag that says it sleeps (or is about to) in futex_wait.
        // SAFETY: test-only access to the raw lock.
        let raw = unsafe { M.raw() };
        let start = std::time::Instant::now();
        while raw.state.load(Ordering::SeqCst) & CONTENDED == 0 {
            assert!(start.elapsed().as_secs() < 10, "the waiter never marked the lock contended");
            std::thread::yield_now();
        }
        assert!(!ACQUIRED.load(Ordering::SeqCst), "the waiter got a lock that is held");
        drop(held);
        assert_eq!(waiter.join().unwrap(), 12345);
        assert!(ACQUIRED.load(Ordering::SeqCst));
    }
}
