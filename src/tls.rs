//! The library's thread-local words: initial-exec TLS, 16 bytes of
//! `.tbss` (hidden symbols of this library only).
//!
//! Reaching a word is a load of its offset from the GOT and an add of the
//! thread pointer: never `__tls_get_addr` (which may call `malloc` after
//! a `dlopen`), never `thread_local!` (whose lazy registration calls
//! `calloc`), so it is safe on the malloc path and with the heap lock
//! held. A thread's words start as zero. When the library itself is
//! `dlopen`ed, glibc places them in its static TLS reserve.

// The words: the thread's cache or its state (`thread_cache`), and the
// bits its `fork` handlers pass from `prepare` to `parent` or `child`
// (`fork`).
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",%nobits",
    ".p2align 3",
    ".globl pymalloc_thread_cache",
    ".hidden pymalloc_thread_cache",
    ".type pymalloc_thread_cache, %object",
    ".size pymalloc_thread_cache, 8",
    "pymalloc_thread_cache:",
    ".zero 8",
    ".globl pymalloc_fork_state",
    ".hidden pymalloc_fork_state",
    ".type pymalloc_fork_state, %object",
    ".size pymalloc_fork_state, 8",
    "pymalloc_fork_state:",
    ".zero 8",
    ".popsection",
);

/// The address of this thread's copy of the TLS symbol `$sym`.
macro_rules! tls_word {
    ($sym:literal) => {{
        let addr: usize;
        // SAFETY: reads the GOT entry of our own TLS symbol (written by
        // the loader before any code of ours runs) and the thread
        // pointer; no memory is written, no call is made.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::asm!(
                concat!("mov {0}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                "add {0}, qword ptr fs:0",
                out(reg) addr,
                options(nostack, readonly, pure),
            )
        };
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!(
                concat!("adrp {0}, :gottprel:", $sym),
                concat!("ldr {0}, [{0}, #:gottprel_lo12:", $sym, "]"),
                "mrs {1}, tpidr_el0",
                "add {0}, {0}, {1}",
                out(reg) addr,
                out(reg) _,
                options(nostack, readonly, pure),
            )
        };
        addr as *mut usize
    }};
}

/// This thread's cache pointer or state (see `thread_cache`).
#[inline(always)]
pub fn cache_slot() -> *mut usize {
    tls_word!("pymalloc_thread_cache")
}

/// The value of this thread's cache slot: `cache_slot().read()` in one
/// load relative to the thread pointer instead of an add and a load (it
/// is read on every call of a thread with a cache).
#[inline(always)]
pub fn read_cache_slot() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let value: usize;
        // SAFETY: reads the GOT entry of our own TLS symbol (written by
        // the loader before any code of ours runs), then this thread's
        // word at that offset from the thread pointer: the same word
        // `cache_slot` addresses, always mapped. Nothing is written.
        unsafe {
            core::arch::asm!(
                "mov {0}, qword ptr [rip + pymalloc_thread_cache@GOTTPOFF]",
                "mov {0}, qword ptr fs:[{0}]",
                out(reg) value,
                options(nostack, readonly, preserves_flags),
            )
        };
        value
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: this thread's own word, always mapped.
    unsafe {
        cache_slot().read()
    }
}

/// This thread's fork-handler bits (see `fork`).
#[inline(always)]
pub fn fork_state() -> *mut usize {
    tls_word!("pymalloc_fork_state")
}
