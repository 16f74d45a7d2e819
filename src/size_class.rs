//! Size classes: request size <-> class index, and the per-class table.
//!
//! Classes 0..32 are CPython's small classes, 16 bytes apart up to 512.
//! Classes 32..64 are medium, four per power of two (512 < n <= 128 KiB):
//!
//! ```text
//! class   0    1    2   ...  31 | 32   33   34   35   36   ...   63
//! size   16   32   48   ... 512 | 640  768  896 1024 1280  ... 131072
//! ```
//!
//! Each class has a pool tier (`geometry`): the smallest pool holding at
//! least `MIN_BLOCKS_PER_POOL` of its blocks.

use crate::geometry::{
    MEDIUM_MAX, MIN_BLOCKS_PER_POOL, SMALL_MAX, TIER_COUNT, tier_pool_size,
};

pub const SMALL_CLASSES: usize = SMALL_MAX / 16;
pub const MEDIUM_CLASSES: usize = 4 * (MEDIUM_MAX.trailing_zeros() - SMALL_MAX.trailing_zeros()) as usize;
pub const NUM_CLASSES: usize = SMALL_CLASSES + MEDIUM_CLASSES;

/// Largest request served by the thread caches (`thread_cache`); bigger
/// ones go to the heap.
pub const CACHE_MAX: usize = 16 << 10;
/// Classes the thread caches (and the depot between them) serve: every
/// class up to `CACHE_MAX`.
pub const CACHED_CLASSES: usize = class_of(CACHE_MAX) + 1;
const _: () = assert!(CACHED_CLASSES <= NUM_CLASSES);

/// Everything the heap needs to know about one class, precomputed.
#[derive(Clone, Copy)]
pub struct ClassInfo {
    pub size: u32,
    pub tier: u8,
    /// `is_multiple(offset, multiple_magic)` tells whether `size` divides
    /// `offset`: lets `free` reject interior pointers without a division.
    pub multiple_magic: u64,
}

/// Whether the class size `d` whose `multiple_magic` is `magic`
/// (`u64::MAX / d + 1`) divides `n`, for `n` and `d` below 2^32: one
/// multiplication and one comparison (Lemire, Kaser and Kurz, "Faster
/// remainder by direct computation", 2019, section 4).
#[inline(always)]
pub const fn is_multiple(n: u64, magic: u64) -> bool {
    n.wrapping_mul(magic) < magic
}

const fn class_size(class: usize) -> usize {
    if class < SMALL_CLASSES {
        (class + 1) * 16
    } else {
        let m = class - SMALL_CLASSES;
        let base = SMALL_MAX << (m / 4);
        base + (m % 4 + 1) * (base / 4)
    }
}

const fn class_tier(size: usize) -> usize {
    let mut tier = 0;
    while tier + 1 < TIER_COUNT && tier_pool_size(tier) < MIN_BLOCKS_PER_POOL * size {
        tier += 1;
    }
    tier
}

const fn build_table() -> [ClassInfo; NUM_CLASSES] {
    let mut table = [ClassInfo { size: 0, tier: 0, multiple_magic: 0 }; NUM_CLASSES];
    let mut class = 0;
    while class < NUM_CLASSES {
        let size = class_size(class);
        table[class] = ClassInfo {
            size: size as u32,
            tier: class_tier(size) as u8,
            multiple_magic: u64::MAX / size as u64 + 1,
        };
        class += 1;
    }
    table
}

pub static CLASSES: [ClassInfo; NUM_CLASSES] = build_table();

/// The class serving a request of `n` bytes, `n <= MEDIUM_MAX`.
#[inline(always)]
pub const fn class_of(n: usize) -> usize {
    debug_assert!(n <= MEDIUM_MAX);
    if n <= SMALL_MAX {
        n.saturating_sub(1) >> 4
    } else {
        let m = n - 1;
        let log2 = (usize::BITS - 1 - m.leading_zeros()) as usize;
        SMALL_CLASSES + (log2 - SMALL_MAX.trailing_zeros() as usize) * 4 + (m >> (log2 - 2)) - 4
    }
}

/// The table entry of `class`.
#[inline(always)]
pub fn class_info(class: usize) -> &'static ClassInfo {
    debug_assert!(class < NUM_CLASSES);
    // SAFETY: callers pass indices from `class_of`, `class_for_aligned` or
    // a pool's `class`, all < NUM_CLASSES.
    unsafe { CLASSES.get_unchecked(class) }
}

/// The block size of `class`.
#[inline(always)]
pub fn size_of(class: usize) -> usize {
    class_info(class).size as usize
}

/// The smallest class that can hold `n` bytes at an address aligned to
/// `align` (a power of two), or None if only a large mapping can.
pub fn class_for_aligned(n: usize, align: usize) -> Option<usize> {
    let n = n.max(align);
    if n > MEDIUM_MAX {
        return None;
    }
    // A block's alignment is the lowest set bit of its class size
    // (pools are aligned to their size, see geometry), and the
    // power-of-two classes guarantee a hit before MEDIUM_MAX.
    let mut class = class_of(n);
    while class < NUM_CLASSES {
        if size_of(class).is_multiple_of(align) {
            return Some(class);
        }
        class += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{POOL_SHIFT, tier_pool_shift};

    /// The table, pinned: a change to the class layout must change this test.
    #[test]
    fn table_is_pinned() {
        let sizes: Vec<usize> = (0..NUM_CLASSES).map(size_of).collect();
        let mut expected: Vec<usize> = (1..=32).map(|i| i * 16).collect();
        expected.extend([
            640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144,
            7168, 8192, 10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768, 40960, 49152,
            57344, 65536, 81920, 98304, 114688, 131072,
        ]);
        assert_eq!(sizes, expected);
        assert_eq!(NUM_CLASSES, 64);
    }

    #[test]
    fn tiers_are_pinned() {
        // Pool size per class, as a power of two.
        let expected = |size: usize| -> u32 {
            let limits: [usize; 3] = if POOL_SHIFT == 14 { [2048, 8192, 32768] } else { [512, 2048, 8192] };
            let tier = limits.iter().filter(|&&limit| size > limit).count() as u32;
            POOL_SHIFT + 2 * tier
        };
        for (c, info) in CLASSES.iter().enumerate() {
            assert_eq!(tier_pool_shift(info.tier as usize), expected(info.size as usize), "class {c}");
        }
    }

    /// Every request size maps to the smallest class that holds it.
    #[test]
    fn class_of_is_exact_for_every_size() {
        let mut class = 0;
        for n in 0..=MEDIUM_MAX {
            if n > size_of(class) {
                class += 1;
            }
            assert_eq!(class_of(n), class, "size {n}");
            assert!(size_of(class) >= n);
        }
    }

    #[test]
    fn classes_fit_their_pools_and_are_aligned() {
        for (c, info) in CLASSES.iter().enumerate() {
            let size = info.size as usize;
            let pool = tier_pool_size(info.tier as usize);
            assert_eq!(size % 16, 0);
            assert!(pool / size >= 2, "class {c}: {} blocks", pool / size);
            // The block alignment (lowest set bit of the size) divides the pool size.
            assert_eq!(pool % (1 << size.trailing_zeros()), 0);
        }
    }

    #[test]
    fn the_multiple_test_is_exact_within_a_pool() {
        for info in CLASSES {
            let pool = tier_pool_size(info.tier as usize) as u64;
            let size = info.size as u64;
            let near_blocks = (0..pool / size).flat_map(|i| [i * size, i * size + 16, (i * size).saturating_sub(16)]);
            for offset in (0..pool).step_by(7).chain(near_blocks).chain([pool - 1]) {
                let multiple = offset % info.size as u64 == 0;
                assert_eq!(is_multiple(offset, info.multiple_magic), multiple, "{offset} of {}", info.size);
            }
        }
    }

    #[test]
    fn aligned_classes() {
        for shift in 0..=17 {
            let align = 1usize << shift;
            for n in [0, 1, 15, 16, 17, 100, 512, 513, 4096, 65536, MEDIUM_MAX] {
                match class_for_aligned(n, align) {
                    Some(c) => {
                        assert!(size_of(c) >= n && size_of(c).is_multiple_of(align));
                    }
                    None => assert!(n.max(align) > MEDIUM_MAX),
                }
            }
        }
    }
}
