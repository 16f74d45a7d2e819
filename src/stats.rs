//! Statistics: a snapshot counted by walking the heap under the lock, and
//! the glibc reports built from it (`mallinfo`, `mallinfo2`,
//! `malloc_stats`, `malloc_info`), formatted without allocating.

use core::fmt::{self, Write};

use crate::geometry::ARENA_SIZE;
use crate::heap::Heap;
use crate::size_class::{NUM_CLASSES, size_of};

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
    /// Bytes of arena memory (including the spare).
    pub arena_bytes: usize,
    /// Bytes of live small and medium blocks.
    pub block_bytes: usize,
    /// Pools that are empty or unborn, and their bytes.
    pub free_pools: usize,
    pub free_pool_bytes: usize,
    pub large_blocks: usize,
    pub large_bytes: usize,
    pub cached_bytes: usize,
    pub spare_bytes: usize,
}

impl Snapshot {
    pub fn of(heap: &Heap) -> Snapshot {
        let mut s = Snapshot {
            classes: [ClassStats::default(); NUM_CLASSES],
            arena_bytes: heap.counters.arenas * ARENA_SIZE,
            block_bytes: 0,
            free_pools: 0,
            free_pool_bytes: 0,
            large_blocks: heap.counters.large_blocks,
            large_bytes: heap.counters.large_bytes,
            cached_bytes: heap.large_cache().bytes,
            spare_bytes: 0,
        };
        heap.for_each_arena(|arena| {
            if heap.is_spare(arena) {
                s.spare_bytes = ARENA_SIZE;
                return;
            }
            s.free_pools += arena.nfreepools as usize;
            s.free_pool_bytes += arena.nfreepools as usize * arena.pool_size();
            for pool in arena.pools.iter().take(arena.next_unused as usize) {
                let Some(class) = s.classes.get_mut(pool.class as usize) else { continue };
                if pool.ref_count == 0 {
                    continue;
                }
                class.pools += 1;
                class.blocks_in_use += pool.ref_count as usize;
                class.blocks_free += (pool.capacity() - pool.ref_count) as usize;
                s.block_bytes += pool.ref_count as usize * pool.block_size as usize;
            }
        });
        s
    }

    /// Bytes handed out and not freed (usable sizes).
    pub fn bytes_in_use(&self) -> usize {
        self.block_bytes + self.large_bytes
    }

    pub fn mallinfo2(&self) -> libc::mallinfo2 {
        let free_blocks: usize = self.classes.iter().map(|c| c.blocks_free).sum();
        libc::mallinfo2 {
            arena: self.arena_bytes,
            ordblks: free_blocks + self.free_pools,
            smblks: 0,
            hblks: self.large_blocks,
            hblkhd: self.large_bytes,
            usmblks: 0,
            fsmblks: 0,
            uordblks: self.block_bytes,
            fordblks: self.arena_bytes - self.block_bytes,
            keepcost: self.spare_bytes + self.cached_bytes,
        }
    }

    /// glibc's `malloc_stats` layout, one arena.
    pub fn write_malloc_stats(&self, out: &mut impl Write) -> fmt::Result {
        let system = self.arena_bytes + self.large_bytes + self.cached_bytes;
        writeln!(out, "Arena 0:")?;
        writeln!(out, "system bytes     = {:>10}", self.arena_bytes)?;
        writeln!(out, "in use bytes     = {:>10}", self.block_bytes)?;
        writeln!(out, "Total (incl. mmap):")?;
        writeln!(out, "system bytes     = {:>10}", system)?;
        writeln!(out, "in use bytes     = {:>10}", self.bytes_in_use())?;
        writeln!(out, "max mmap regions = {:>10}", self.large_blocks)?;
        writeln!(out, "max mmap bytes   = {:>10}", self.large_bytes)
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
        let free_bytes = self.arena_bytes - self.block_bytes;
        writeln!(out, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(out, "<total type=\"rest\" count=\"{}\" size=\"{}\"/>", self.free_pools, free_bytes)?;
        writeln!(out, "<system type=\"current\" size=\"{}\"/>", self.arena_bytes)?;
        writeln!(out, "<aspace type=\"total\" size=\"{}\"/>", self.arena_bytes)?;
        writeln!(out, "</heap>")?;
        writeln!(out, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(out, "<total type=\"rest\" count=\"{}\" size=\"{}\"/>", self.free_pools, free_bytes)?;
        writeln!(out, "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>", self.large_blocks, self.large_bytes)?;
        writeln!(out, "<system type=\"current\" size=\"{}\"/>", self.arena_bytes + self.large_bytes)?;
        writeln!(out, "<aspace type=\"total\" size=\"{}\"/>", self.arena_bytes + self.large_bytes)?;
        writeln!(out, "</malloc>")
    }
}

/// A `fmt::Write` into a fixed buffer that hands full chunks to a sink
/// (a file descriptor or a `FILE`), so reports of any length need no heap.
pub struct ChunkWriter<F: FnMut(&[u8])> {
    buf: [u8; 512],
    len: usize,
    sink: F,
}

impl<F: FnMut(&[u8])> ChunkWriter<F> {
    pub fn new(sink: F) -> Self {
        ChunkWriter { buf: [0; 512], len: 0, sink }
    }

    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(self.buf.get(..self.len).unwrap_or_default());
            self.len = 0;
        }
    }
}

impl<F: FnMut(&[u8])> Write for ChunkWriter<F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &byte in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl<F: FnMut(&[u8])> Drop for ChunkWriter<F> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes all of `bytes` to a file descriptor with raw `write(2)`.
pub fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice; no allocation.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = bytes.get(n as usize..).unwrap_or_default();
    }
}
