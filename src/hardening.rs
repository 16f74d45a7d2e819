//! Always-on protection of the pools' free lists, cheap enough for every
//! call (see README, "Hardening and debug mode").
//!
//! - **Safe-linking** (glibc's `PROTECT_PTR`, plus a secret): the link a
//!   free block holds in its first word is stored as
//!   `next ^ link address ^ secret` (glibc shifts the address right by 12
//!   to keep only its random bits; with a secret there is no need). A link overwritten by a buffer
//!   overflow or a write after free demangles to a wild address, which
//!   `Pool::alloc` rejects (outside the pool's carved part, or misaligned)
//!   instead of handing out. The thread caches (`thread_cache`), whose
//!   blocks come from any pool, check alignment only; the secret's low 4
//!   bits are never all zero, so a link overwritten with zeros or with
//!   any aligned value (a pointer) is always rejected there too.
//! - **Free-block key** (glibc tcache's `key`): `free` writes a secret
//!   value, bound to the block's address, into its second word, and every
//!   path that hands a block out clears it. A block passed to `free` that
//!   carries its key is probably free already; the key is a hint, never
//!   proof: the block is called a double free only once it is found on
//!   its pool's free list or in a thread cache (`thread_cache`), which
//!   mark their blocks the same way. A key found anywhere else is stale
//!   memory (`realloc` legally copies bytes a program never wrote), and
//!   since it is bound to the address it was written at, a copy moved to
//!   another block is not that block's key.
//!
//! Only the first 16 bytes of a free block are written: CPython's own
//! tests read freed memory.
//!
//! The secret comes from the 16 random bytes the kernel gives every
//! process (`getauxval(AT_RANDOM)`): no system call, no allocation, and
//! available before the first `malloc`. It is set when the heap maps its
//! first arena, so before any block can be freed.
//!
//! The `unchecked` feature turns all of this off, so that a benchmark can
//! measure its cost.

/// A heap's secret and the key derived from it; zero until the heap maps
/// its first arena.
#[derive(Clone, Copy)]
pub struct Secret {
    mask: usize,
    key: usize,
}

impl Secret {
    pub const UNSET: Secret = Secret { mask: 0, key: 0 };

    /// Draws the secret unless already drawn (idempotent).
    #[cold]
    pub fn ensure(&mut self) {
        if self.key == 0 {
            *self = Secret::from_random(process_random());
        }
    }

    fn from_random([a, b]: [u64; 2]) -> Secret {
        // The AT_RANDOM bytes also seed glibc's stack protector and pointer
        // guard: store a one-way mix of them, never the bytes themselves.
        // The low 4 bits are never all zero: a link overwritten with any
        // 16-byte aligned value (zeros, a pointer) then demangles to a
        // misaligned address, which the thread cache's `malloc` rejects.
        let mixed = (mix(a) ^ mix(b).rotate_left(29)) as usize;
        let mask = (mixed & !15) | (1 + mixed % 15);
        let key = (mix(mask as u64 ^ 0x9e37_79b9_7f4a_7c15) as usize) | 1;
        Secret { mask, key }
    }

    /// The value stored at `at` for a link to `next`.
    #[inline(always)]
    pub fn mangle(self, at: *mut u8, next: *mut u8) -> usize {
        if cfg!(feature = "unchecked") {
            return next as usize;
        }
        next as usize ^ at as usize ^ self.mask
    }

    /// Inverse of `mangle`.
    #[inline(always)]
    pub fn demangle(self, at: *mut u8, stored: usize) -> *mut u8 {
        self.mangle(at, stored as *mut u8) as *mut u8
    }

    /// The word a free block at `at` holds after its link. Never zero
    /// (the key is odd, a block address even), so a cleared word is no key.
    #[inline(always)]
    pub fn key_at(self, at: *mut u8) -> usize {
        self.key ^ at as usize
    }
}

/// Finaliser of splitmix64: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The kernel's 16 random bytes for this process.
fn process_random() -> [u64; 2] {
    // SAFETY: getauxval only reads the auxiliary vector saved at start-up.
    let at = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const [u64; 2];
    if at.is_null() {
        // No AT_RANDOM (never on Linux since 2.6.29): fall back on an
        // address that at least varies with ASLR.
        return [&raw const RANDOM_FALLBACK as u64, 0x243f_6a88_85a3_08d3];
    }
    // SAFETY: AT_RANDOM points to 16 bytes that live as long as the process.
    unsafe { at.read_unaligned() }
}

static RANDOM_FALLBACK: u8 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangling_round_trips_and_hides_the_link() {
        let mut s = Secret::UNSET;
        s.ensure();
        assert_ne!(s.key_at(core::ptr::null_mut()), 0, "drawn");
        let at = 0x7f00_1234_5670 as *mut u8;
        let next = 0x7f00_1234_5680 as *mut u8;
        assert_eq!(s.demangle(at, s.mangle(at, next)), next);
        assert_eq!(s.demangle(at, s.mangle(at, core::ptr::null_mut())), core::ptr::null_mut());
        if !cfg!(feature = "unchecked") {
            assert_ne!(s.mangle(at, next), next as usize);
            // A zeroed or aligned link demangles to a misaligned address.
            assert_ne!(s.demangle(at, 0) as usize % 16, 0);
            assert_ne!(s.demangle(at, 0x7f00_0000_1230) as usize % 16, 0);
        }
        let before = s.key_at(at);
        s.ensure();
        assert_eq!(s.key_at(at), before, "ensure is idempotent");
        assert_ne!(s.key_at(at), s.key_at(next), "keys are bound to their block");
        assert_ne!(s.key_at(at), 0);
    }
}
