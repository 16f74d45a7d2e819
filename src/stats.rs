//! Statistics: the counters, defined once (`stats_fields.rs`); a
//! snapshot of the heap taken under the lock; the per-pool detail behind
//! the JSON report's picture; and the glibc reports (`mallinfo`,
//! `mallinfo2`, `malloc_stats`, `malloc_info`) built from the same
//! numbers. Formatting (here and in `report`) never allocates, and
//! happens after the lock is released.

use core::fmt::{self, Write};

use crate::config;
use crate::debug_mode::Quarantine;
use crate::geometry::{ARENA_SIZE, MAX_POOLS_PER_ARENA};
use crate::heap::Heap;
use crate::os::OS_TOTALS;
use crate::pool::Pool;
use crate::size_class::{NUM_CLASSES, SMALL_CLASSES, class_of, size_of};
use crate::front;

macro_rules! stats_fields {
    ($( $name:ident : $label:literal, )*) => {
        /// The heap's totals; laid out as the C `struct pymalloc_stats`
        /// after its `size` field (every field a `size_t`).
        #[repr(C)]
        #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
        pub struct Totals {
            $( #[doc = $label] pub $name: usize, )*
        }

        impl Totals {
            /// Calls `f(name, label, value)` for every field, in order.
            pub fn for_each(&self, mut f: impl FnMut(&'static str, &'static str, usize)) {
                $( f(stringify!($name), $label, self.$name); )*
            }
        }
    };
}

include!("stats_fields.rs");

#[derive(Clone, Copy, Default)]
pub struct ClassStats {
    pub pools: usize,
    pub blocks_in_use: usize,
    pub blocks_free: usize,
}

/// The heap at one moment.
#[derive(Clone, Copy)]
pub struct Snapshot {
    pub classes: [ClassStats; NUM_CLASSES],
    pub totals: Totals,
    /// Pools that are empty or unborn, in every tier.
    pub free_pools: usize,
}

impl Snapshot {
    pub fn of(heap: &Heap, quarantine: &Quarantine) -> Snapshot {
        let c = &heap.arenas().counters;
        let large = heap.large();
        let (cache, regions) = (large.cache(), large.regions());
        let mut t = Totals {
            arenas_allocated: c.arenas_allocated,
            arenas_reclaimed: c.arenas_reclaimed,
            arenas_highwater: c.arenas_highwater,
            arenas: c.arenas,
            arena_bytes: c.arenas * ARENA_SIZE,
            large_blocks: large.blocks,
            large_bytes: large.bytes,
            cached_mappings: cache.entries() + regions.dirty_spans,
            cached_bytes: cache.bytes + regions.dirty_bytes,
            bytes_mapped: OS_TOTALS.mapped(),
            bytes_mapped_peak: OS_TOTALS.peak(),
            bytes_returned: OS_TOTALS.returned(),
            ..Totals::default()
        };
        let mut classes = [ClassStats::default(); NUM_CLASSES];
        let mut free_pools = 0;
        heap.arenas().for_each(|arena| {
            if arena.retired {
                t.free_arena_bytes += ARENA_SIZE;
                return;
            }
            free_pools += arena.nfreepools as usize;
            t.free_pool_bytes += arena.nfreepools as usize * arena.pool_size();
            for pool in arena.pools.iter().take(arena.next_unused.get() as usize) {
                let Some(class) = classes.get_mut(pool.class as usize) else { continue };
                if pool.ref_count.get() == 0 {
                    // A kept empty pool is free memory held, as a free pool.
                    if heap.is_kept(pool) {
                        free_pools += 1;
                        t.free_pool_bytes += arena.pool_size();
                    }
                    continue;
                }
                let (used, capacity, size) =
                    (pool.ref_count.get() as usize, pool.capacity() as usize, pool.block_size as usize);
                class.pools += 1;
                class.blocks_in_use += used;
                class.blocks_free += capacity - used;
                if (pool.class as usize) < SMALL_CLASSES {
                    t.small_blocks += used;
                    t.small_bytes += used * size;
                } else {
                    t.medium_blocks += used;
                    t.medium_bytes += used * size;
                }
                t.pools_in_use += 1;
                t.avail_bytes += (capacity - used) * size;
                t.quantization_bytes += arena.pool_size() - capacity * size;
            }
        });
        // Blocks in thread caches are free, though their pools count them.
        let cached = front::holdings(heap);
        for (class, &blocks) in cached.blocks.iter().enumerate() {
            let (Some(c), size) = (classes.get_mut(class), size_of(class)) else { continue };
            let blocks = not_in_use(&mut t, c, class, blocks);
            c.blocks_free += blocks;
            t.avail_bytes += blocks * size;
            t.thread_cache_blocks += blocks;
            t.thread_cache_bytes += blocks * size;
        }
        t.thread_caches = cached.threads;
        // Quarantined blocks (the debug mode) are freed: not in use, but
        // not free for reuse either, a row of their own.
        quarantine.for_each(|base| {
            let Ok((usable, class_size)) = heap.block_info(base) else { return };
            t.quarantined_blocks += 1;
            if class_size == 0 {
                t.large_blocks = t.large_blocks.saturating_sub(1);
                t.large_bytes = t.large_bytes.saturating_sub(usable);
                t.quarantined_bytes += usable;
                return;
            }
            let class = class_of(class_size);
            let Some(c) = classes.get_mut(class) else { return };
            t.quarantined_bytes += not_in_use(&mut t, c, class, 1) * class_size;
        });
        t.blocks_in_use = t.small_blocks + t.medium_blocks + t.large_blocks;
        t.bytes_in_use = t.small_bytes + t.medium_bytes + t.large_bytes;
        Snapshot { classes, totals: t, free_pools }
    }

    fn free_blocks(&self) -> usize {
        self.classes.iter().map(|c| c.blocks_free).sum()
    }

    /// Bytes of live small and medium blocks (glibc's "in use" for its
    /// arenas, where large mappings are counted apart).
    fn arena_bytes_in_use(&self) -> usize {
        self.totals.small_bytes + self.totals.medium_bytes
    }

    /// Free stretches: free blocks of used pools, and pools wholly free.
    fn free_chunks(&self) -> usize {
        self.free_blocks() + self.free_pools
    }

    pub fn mallinfo2(&self) -> libc::mallinfo2 {
        let t = &self.totals;
        libc::mallinfo2 {
            arena: t.arena_bytes,
            ordblks: self.free_chunks(),
            // Quarantined blocks are freed but held back, as glibc's
            // fastbin blocks are: counted there, and in the free bytes.
            smblks: t.quarantined_blocks,
            hblks: t.large_blocks,
            hblkhd: t.large_bytes,
            usmblks: 0,
            fsmblks: t.quarantined_bytes,
            uordblks: self.arena_bytes_in_use(),
            fordblks: t.arena_bytes - self.arena_bytes_in_use(),
            keepcost: t.free_arena_bytes + t.cached_bytes,
        }
    }

    /// glibc's `malloc_stats` layout, one arena.
    pub fn write_malloc_stats(&self, out: &mut impl Write) -> fmt::Result {
        let t = &self.totals;
        let system = t.arena_bytes + t.large_bytes + t.cached_bytes;
        writeln!(out, "Arena 0:")?;
        writeln!(out, "system bytes     = {:>10}", t.arena_bytes)?;
        writeln!(out, "in use bytes     = {:>10}", self.arena_bytes_in_use())?;
        writeln!(out, "Total (incl. mmap):")?;
        writeln!(out, "system bytes     = {:>10}", system)?;
        writeln!(out, "in use bytes     = {:>10}", t.bytes_in_use)?;
        writeln!(out, "max mmap regions = {:>10}", t.large_blocks)?;
        writeln!(out, "max mmap bytes   = {:>10}", t.large_bytes)?;
        if config::get().debug && config::get().debug_quarantine > 0 {
            // Freed, not in use: the debug mode's quarantine, apart.
            writeln!(out, "quarantined bytes= {:>10}", t.quarantined_bytes)?;
        }
        Ok(())
    }

    /// glibc's `malloc_info` XML: one heap with a size element per class.
    pub fn write_malloc_info(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "<malloc version=\"1\">")?;
        writeln!(out, "<heap nr=\"0\">")?;
        writeln!(out, "<sizes>")?;
        for (class, c) in self.classes.iter().enumerate() {
            if c.blocks_free > 0 {
                let size = size_of(class);
                writeln!(out, "  <size from=\"{}\" to=\"{}\" total=\"{}\" count=\"{}\"/>",
                    size, size, c.blocks_free * size, c.blocks_free)?;
            }
        }
        writeln!(out, "</sizes>")?;
        let t = &self.totals;
        let free_bytes = t.arena_bytes - self.arena_bytes_in_use();
        let free_chunks = self.free_chunks();
        writeln!(out, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(out, "<total type=\"rest\" count=\"{}\" size=\"{}\"/>", free_chunks, free_bytes)?;
        writeln!(out, "<system type=\"current\" size=\"{}\"/>", t.arena_bytes)?;
        writeln!(out, "<aspace type=\"total\" size=\"{}\"/>", t.arena_bytes)?;
        writeln!(out, "</heap>")?;
        writeln!(out, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(out, "<total type=\"rest\" count=\"{}\" size=\"{}\"/>", free_chunks, free_bytes)?;
        writeln!(out, "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>", t.large_blocks, t.large_bytes)?;
        writeln!(out, "<system type=\"current\" size=\"{}\"/>", t.arena_bytes + t.large_bytes)?;
        writeln!(out, "<aspace type=\"total\" size=\"{}\"/>", t.arena_bytes + t.large_bytes)?;
        writeln!(out, "</malloc>")
    }
}

/// Takes `blocks` blocks of `class` (whose counts are `c`) out of the
/// in-use counts, no more than were counted there; returns how many.
fn not_in_use(t: &mut Totals, c: &mut ClassStats, class: usize, blocks: usize) -> usize {
    let blocks = blocks.min(c.blocks_in_use);
    c.blocks_in_use -= blocks;
    let (count, bytes) =
        if class < SMALL_CLASSES { (&mut t.small_blocks, &mut t.small_bytes) } else { (&mut t.medium_blocks, &mut t.medium_bytes) };
    *count = count.saturating_sub(blocks);
    *bytes = bytes.saturating_sub(blocks * size_of(class));
    blocks
}

/// What a pool is doing, for the picture (`pool_states` in the JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum PoolState {
    /// Never carved since its arena was mapped.
    #[default]
    Unborn,
    /// No live block; its pages may hold old data.
    Empty,
    /// No live block, pages given back to the OS.
    Released,
    /// Some blocks live, some free.
    Used,
    /// Every block live.
    Full,
}

impl PoolState {
    pub const NAMES: [&'static str; 5] = ["unborn", "empty", "released", "used", "full"];
}

/// One pool, as the picture needs it.
#[derive(Clone, Copy, Default)]
pub struct PoolDetail {
    pub state: PoolState,
    /// The class served (meaningful while used or full).
    pub class: u8,
    pub in_use: u32,
    pub capacity: u32,
}

/// One arena and its pools. The all-zero bit pattern is a valid value
/// (fresh `mmap` memory can be used as an array of these).
#[derive(Clone, Copy)]
pub struct ArenaDetail {
    pub base: usize,
    pub pool_size: usize,
    pub npools: u32,
    pub free: bool,
    pub pools: [PoolDetail; MAX_POOLS_PER_ARENA],
}

impl PoolDetail {
    fn of(pool: &Pool) -> PoolDetail {
        let state = match pool.ref_count.get() {
            0 if pool.dirty_end == 0 => PoolState::Released,
            0 => PoolState::Empty,
            _ if pool.is_full() => PoolState::Full,
            _ => PoolState::Used,
        };
        let capacity = if pool.ref_count.get() == 0 { 0 } else { pool.capacity() };
        PoolDetail { state, class: pool.class, in_use: pool.ref_count.get(), capacity }
    }
}

/// Fills `out` with every arena's pools (the heap's lock held); returns
/// how many were written and whether some did not fit.
pub fn collect_detail(heap: &Heap, out: &mut [ArenaDetail]) -> (usize, bool) {
    let mut n = 0;
    let mut truncated = false;
    heap.arenas().for_each(|arena| {
        let Some(slot) = out.get_mut(n) else {
            truncated = true;
            return;
        };
        slot.base = arena.base as usize;
        slot.pool_size = arena.pool_size();
        slot.npools = arena.ntotalpools;
        slot.free = arena.retired;
        for (i, detail) in slot.pools.iter_mut().enumerate() {
            *detail = match arena.pools.get(i) {
                Some(pool) if i < arena.next_unused.get() as usize => PoolDetail::of(pool),
                _ => PoolDetail::default(),
            };
        }
        n += 1;
    });
    (n, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adds_up(t: &Totals) {
        let parts = t.small_bytes
            + t.medium_bytes
            + t.avail_bytes
            + t.free_pool_bytes
            + t.quantization_bytes
            + t.free_arena_bytes;
        assert_eq!(t.arena_bytes, parts, "{t:?}");
        assert_eq!(t.bytes_in_use, t.small_bytes + t.medium_bytes + t.large_bytes);
    }

    #[test]
    fn totals_follow_the_heap() {
        let mut heap = Heap::new();
        let mut live = Vec::new();
        for i in 0..3000usize {
            live.push(heap.alloc(1 + (i * 7919) % 20000).ptr);
        }
        live.push(heap.alloc(300_000).ptr);
        let s = Snapshot::of(&heap, &Quarantine::new());
        adds_up(&s.totals);
        assert_eq!(s.totals.large_blocks, 1);
        assert_eq!(s.totals.blocks_in_use, live.len());
        let detail_room = heap.arenas().counters.arenas;
        let mut detail = vec![
            ArenaDetail { base: 0, pool_size: 0, npools: 0, free: false, pools: [PoolDetail::default(); MAX_POOLS_PER_ARENA] };
            detail_room
        ];
        assert_eq!(collect_detail(&heap, &mut detail), (detail_room, false));
        let in_pools: u32 = detail.iter().flat_map(|a| a.pools.iter()).map(|p| p.in_use).sum();
        assert_eq!(in_pools as usize, s.totals.small_blocks + s.totals.medium_blocks);
        assert_eq!(collect_detail(&heap, &mut detail[..1]), (1, detail_room > 1));

        for p in live.iter().step_by(2) {
            heap.free(*p).unwrap();
        }
        adds_up(&Snapshot::of(&heap, &Quarantine::new()).totals);
        for p in live.iter().skip(1).step_by(2) {
            heap.free(*p).unwrap();
        }
        let t = Snapshot::of(&heap, &Quarantine::new()).totals;
        adds_up(&t);
        assert_eq!((t.blocks_in_use, t.bytes_in_use), (0, 0));
        assert!(t.arenas_allocated >= t.arenas_highwater && t.arenas_highwater >= 2);
        assert_eq!(t.arenas_allocated - t.arenas_reclaimed, t.arenas);
    }
}
