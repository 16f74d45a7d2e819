//! The debug mode (`PYMALLOC_DEBUG=1`, the idea of CPython's
//! `PYTHONMALLOC=debug` hooks): a layer between `abi` and the heap that
//! wraps every block in guard bytes and poisons memory.
//!
//! ```text
//!  heap block: base                              p = base + front
//!  ┌──────────┬───────────┬───────┬─────────────┬───────────────┬───────────────┐
//!  │ p, 0     │ (padding) │ size  │ 8 x 0xFD    │ n bytes       │ 0xFD ... 0xFD │
//!  └──────────┴───────────┴───────┴─────────────┴───────────────┴───────────────┘
//!   16 bytes                p-16    p-8           the caller's    at least 16, up
//!   (heap's link and key                          block           to the heap
//!   once freed)                                                   block's end
//! ```
//!
//! - `front` is `max(32, alignment)`, a power of two, so `p` keeps the
//!   requested alignment and `base` is the first block start found
//!   scanning back from `p` by powers of two (`locate`): no lookup table.
//! - Fresh memory is filled with `0xCD` (calloc's with zeros), freed
//!   memory with `0xDD`; the guard bytes are `0xFD`. `free`, `realloc`,
//!   `malloc_usable_size` and `pymalloc_check_heap` check them and report
//!   an overflow or underflow with the block's address, requested size
//!   and the bytes found.
//! - `malloc_usable_size` is the requested size: writing beyond it is an
//!   overflow. `realloc` always moves the block, so stale pointers to the
//!   old one point at poisoned memory.
//! - Freed pool blocks wait in a quarantine, still poisoned (and their
//!   header guards turned to `0xDD`), until `PYMALLOC_DEBUG_QUARANTINE`
//!   bytes (1 MiB by default) of newer frees push them out (a freed large
//!   block is made inaccessible at once, which catches reads too); a
//!   block leaving the quarantine is checked for writes after free. A
//!   second free of a block found in the quarantine is a double free. A
//!   pool block the heap hands out again is checked too, if it still
//!   holds the poisoned debug block it was (with no quarantine, that is
//!   where a write after free shows).
//!
//! Everything runs with the heap lock held (`locked` takes it), as the
//! heap does; the quarantine is this layer's own, guarded by the same
//! lock. The mode is fixed before the first block is served (`config`).

use core::cell::UnsafeCell;

use crate::config;
use crate::fault::Fault;
use crate::geometry::{ARENA_SIZE, MAX_REQUEST};
use crate::heap::{HEAP, Heap};

pub const GUARD: u8 = 0xFD;
pub const FRESH: u8 = 0xCD;
pub const DEAD: u8 = 0xDD;

/// Size word and guard before the block; guard bytes after it, at least.
const HEADER: usize = 16;
const TAIL: usize = 16;
const MIN_FRONT: usize = 32;

/// Freed blocks waiting before their memory is reused.
pub struct Quarantine {
    /// A ring of (base, p) pairs, oldest at `head`.
    entries: [(usize, usize); QUARANTINE_ENTRIES],
    head: usize,
    len: usize,
    bytes: usize,
}

const QUARANTINE_ENTRIES: usize = 4096;

impl Quarantine {
    pub const fn new() -> Self {
        Quarantine { entries: [(0, 0); QUARANTINE_ENTRIES], head: 0, len: 0, bytes: 0 }
    }

    fn push(&mut self, base: usize, p: usize, bytes: usize) {
        self.entries[(self.head + self.len) % QUARANTINE_ENTRIES] = (base, p);
        self.len += 1;
        self.bytes += bytes;
    }

    /// Calls `f(base)` with the heap block of every quarantined block.
    pub fn for_each(&self, mut f: impl FnMut(*mut u8)) {
        for i in 0..self.len {
            f(self.entries[(self.head + i) % QUARANTINE_ENTRIES].0 as *mut u8);
        }
    }

    /// Whether the debug block `p` is quarantined.
    fn contains(&self, p: *mut u8) -> bool {
        (0..self.len).any(|i| self.entries[(self.head + i) % QUARANTINE_ENTRIES].1 == p as usize)
    }

    fn pop(&mut self) -> Option<(usize, usize)> {
        if self.len == 0 {
            return None;
        }
        let entry = self.entries[self.head % QUARANTINE_ENTRIES];
        self.head = (self.head + 1) % QUARANTINE_ENTRIES;
        self.len -= 1;
        Some(entry)
    }
}

/// The process's quarantine: not part of the heap, but guarded by its
/// lock, and reached only through `locked`.
struct Guarded(UnsafeCell<Quarantine>);

// SAFETY: the quarantine is reached only through `locked`, with the heap
// lock held.
unsafe impl Sync for Guarded {}

static QUARANTINE: Guarded = Guarded(UnsafeCell::new(Quarantine::new()));

/// Runs `f` on the heap and the quarantine, under the heap lock.
pub fn locked<R>(f: impl FnOnce(&mut Heap, &mut Quarantine) -> R) -> R {
    let mut heap = HEAP.lock();
    // SAFETY: this is the only place that reaches the quarantine, and the
    // heap lock is held until `f` returns: no other reference exists.
    let quarantine = unsafe { &mut *QUARANTINE.0.get() };
    f(&mut heap, quarantine)
}

/// A live block of the debug layer.
struct Live {
    base: *mut u8,
    /// The heap block's usable size.
    usable: usize,
    /// The caller's pointer and requested size.
    p: *mut u8,
    size: usize,
    /// A large block (a span or a mapping), not a pool block.
    large: bool,
}

/// A block of `n` bytes aligned to `align` (a power of two): fresh bytes
/// are 0xCD, or zero if `zero`. Null when out of memory.
pub fn alloc(heap: &mut Heap, n: usize, align: usize, zero: bool) -> Result<*mut u8, Fault> {
    let front = align.max(MIN_FRONT);
    // Room for one byte at least, so that realloc(malloc(0), 1) stays put.
    let Some(total) = n.max(1).checked_add(front + TAIL).filter(|&t| t <= MAX_REQUEST) else {
        return Ok(core::ptr::null_mut());
    };
    let block = heap.alloc_aligned(align, total);
    if block.ptr.is_null() {
        return heap.take_fault().map_or(Ok(core::ptr::null_mut()), Err);
    }
    let base = block.ptr;
    let (usable, class_size) = heap.block_info(base)?;
    // A large block's pages are closed when it is freed, so a write after
    // free faults at once; and a later span may start inside it, leaving
    // a header that is not the last tenant's.
    if !block.zeroed && class_size != 0 {
        check_reused(base.wrapping_add(front), usable - front - TAIL)?;
    }
    // SAFETY: the heap block holds `usable >= front + n + TAIL` bytes.
    unsafe {
        let p = base.add(front);
        base.cast::<usize>().write(p as usize);
        base.cast::<usize>().add(1).write(0); // never the heap's free-block key
        // The padding holds no header: a freed block's there is stale (see
        // `check_reused`).
        base.add(16).write_bytes(0, front - MIN_FRONT);
        p.sub(HEADER).cast::<usize>().write(n);
        p.sub(8).write_bytes(GUARD, 8);
        if !zero {
            p.write_bytes(FRESH, n);
        } else if !block.zeroed {
            p.write_bytes(0, n); // memory fresh from the OS is left untouched
        }
        p.add(n).write_bytes(GUARD, usable - front - n);
        Ok(p)
    }
}

/// A pool block handed out again, whose bytes at `p` (where the new
/// debug block goes, with `room` bytes at most) may still be the freed
/// debug block that was there: if its guard and size say so, its poison
/// must be intact. Only the last tenant's header can say so: the heap
/// writes only the first 16 bytes of a free block, below `p - 16`; a
/// block at a smaller offset covered this header with its bytes (`0xCD`,
/// zeros or guards: a size far beyond any room), one at a greater offset
/// with the zeros of its padding.
fn check_reused(p: *mut u8, room: usize) -> Result<(), Fault> {
    // SAFETY: front >= MIN_FRONT, so the header lies inside the block.
    let (size, guard) = unsafe { (p.sub(HEADER).cast::<usize>().read(), p.sub(8).cast::<[u8; 8]>().read()) };
    if guard == [DEAD; 8] && size <= room { check_poison(p) } else { Ok(()) }
}

/// Frees the debug block `p`; with `sized`, the (size, alignment) that
/// `free_sized` or `free_aligned_sized` were given.
pub fn free(heap: &mut Heap, quarantine: &mut Quarantine, p: *mut u8, sized: Option<(usize, usize)>) -> Result<(), Fault> {
    let live = locate(heap, quarantine, p)?;
    if let Some((size, align)) = sized {
        if !align.is_power_of_two() || !(p as usize).is_multiple_of(align) {
            return Err(Fault::WrongAlignment { align });
        }
        if size != live.size {
            return Err(Fault::WrongRequestedSize { size, requested: live.size });
        }
    }
    // SAFETY: `locate` vouched for the header and the block's extent.
    unsafe {
        live.p.write_bytes(DEAD, live.size);
        live.p.sub(8).write_bytes(DEAD, 8);
    }
    // A large block is made inaccessible at once instead (a freed span
    // is closed, a mapping unmapped or moved away): a stale read faults.
    let limit = config::get().debug_quarantine;
    if limit == 0 || live.large {
        return heap.free(live.base);
    }
    quarantine.push(live.base as usize, p as usize, live.usable);
    while quarantine.bytes > limit || quarantine.len == QUARANTINE_ENTRIES {
        let Some((base, q)) = quarantine.pop() else { break };
        let usable = heap.usable_size(base as *mut u8)?;
        quarantine.bytes -= usable;
        check_poison(q as *mut u8)?;
        heap.free(base as *mut u8)?;
    }
    Ok(())
}

/// Gives every quarantined block back to the heap (for `malloc_trim`),
/// checking it for writes after free.
pub fn flush(heap: &mut Heap, quarantine: &mut Quarantine) -> Result<(), Fault> {
    while let Some((base, q)) = quarantine.pop() {
        quarantine.bytes = quarantine.bytes.saturating_sub(heap.usable_size(base as *mut u8)?);
        check_poison(q as *mut u8)?;
        heap.free(base as *mut u8)?;
    }
    Ok(())
}

/// The requested size of the debug block `p`.
pub fn usable_size(heap: &Heap, quarantine: &Quarantine, p: *mut u8) -> Result<usize, Fault> {
    Ok(locate(heap, quarantine, p)?.size)
}

/// `realloc` of the debug block `p` to `n > 0` bytes: in place while the
/// heap block has room (new bytes 0xCD, guards moved), else a new block
/// (null when out of memory, the old one then intact).
pub fn realloc(heap: &mut Heap, quarantine: &mut Quarantine, p: *mut u8, n: usize) -> Result<*mut u8, Fault> {
    let old = locate(heap, quarantine, p)?;
    let front = p as usize - old.base as usize;
    if n <= old.usable - front - TAIL {
        // SAFETY: p .. p + n + TAIL lies in the heap block.
        unsafe {
            p.sub(HEADER).cast::<usize>().write(n);
            if n > old.size {
                p.add(old.size).write_bytes(FRESH, n - old.size);
            }
            p.add(n).write_bytes(GUARD, old.usable - front - n);
        }
        return Ok(p);
    }
    // realloc promises the fundamental alignment only, as glibc's.
    let q = alloc(heap, n, 1, false)?;
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct; each holds its size.
        unsafe { core::ptr::copy_nonoverlapping(p, q, n.min(old.size)) };
        free(heap, quarantine, p, None)?;
    }
    Ok(q)
}

/// Checks every live block's guards and every quarantined block's poison.
/// Returns the first fault and the block it concerns.
pub fn check(heap: &Heap) -> Result<(), (Fault, *mut u8)> {
    let mut result = Ok(());
    heap.for_each_live_block(|base, usable, class_size| {
        if result.is_err() {
            return;
        }
        // SAFETY: a live heap block, whose first word the debug layer set
        // to its pointer (checked before use).
        let p = unsafe { base.cast::<usize>().read() } as *mut u8;
        let front = (p as usize).wrapping_sub(base as usize);
        if !front.is_power_of_two() || front < MIN_FRONT || front + TAIL > usable {
            // The block's first word, written by `alloc`, was overwritten.
            // SAFETY: a live heap block holds at least 16 bytes.
            let found = unsafe { base.cast::<[u8; 8]>().read() };
            result = Err((Fault::Underflow { size: 0, found }, base));
            return;
        }
        // SAFETY: p lies inside the block (checked above).
        let guard = unsafe { p.sub(8).cast::<[u8; 8]>().read() };
        let checked =
            if guard == [DEAD; 8] { check_poison(p) } else { check_guards(base, (usable, class_size), p).map(|_| ()) };
        if let Err(fault) = checked {
            result = Err((fault, p));
        }
    });
    result
}

/// The live debug block at `p`, its guards checked. A block whose guard
/// says freed is a double free only if it is found in the quarantine (or
/// the heap finds its heap block freed); otherwise its guard was
/// overwritten.
fn locate(heap: &Heap, quarantine: &Quarantine, p: *mut u8) -> Result<Live, Fault> {
    let addr = p as usize;
    if !addr.is_multiple_of(16) {
        return Err(Fault::InvalidPointer);
    }
    // The heap block starts `front` bytes before p: 32, or the requested
    // alignment, which p then has. No other block starts in between (it
    // is all one block), so the first block start found is the one.
    // A large block freed lately only says so much (its memory may be
    // mapped again), so the scan goes on past one.
    let min_shift = MIN_FRONT.trailing_zeros();
    let mut verdict = Fault::InvalidPointer;
    for shift in min_shift..=addr.trailing_zeros().clamp(min_shift, 47) {
        let base = addr.wrapping_sub(1 << shift) as *mut u8;
        match heap.block_info(base) {
            Ok(info) => {
                // SAFETY: a live heap block holds at least 16 bytes; its
                // first word names the debug block `alloc` put in it.
                if unsafe { base.cast::<usize>().read() } != addr {
                    return Err(Fault::InvalidPointer);
                }
                let size = match check_guards(base, info, p) {
                    Err(Fault::Freed { .. }) if !quarantine.contains(p) => {
                        // SAFETY: p - 16 lies in the block (check_guards read it).
                        let size = unsafe { p.sub(HEADER).cast::<usize>().read() };
                        return Err(Fault::Underflow { size, found: [DEAD; 8] });
                    }
                    checked => checked?,
                };
                return Ok(Live { base, usable: info.0, p, size, large: info.1 == 0 });
            }
            Err(Fault::InvalidPointer) => {}
            Err(freed @ Fault::Freed { class_size: 0 }) => verdict = freed,
            // A freed pool block: p was its debug block if the guard that
            // `free` turned to 0xDD is still there (the heap only writes
            // the block's first 16 bytes). Read only within base's arena,
            // which is mapped whole.
            Err(freed @ Fault::Freed { .. }) => {
                let same_arena = (addr - 8) / ARENA_SIZE == base as usize / ARENA_SIZE;
                // SAFETY: p - 8 lies in the arena holding `base` (checked).
                let dead = same_arena && unsafe { p.sub(8).cast::<[u8; 8]>().read() } == [DEAD; 8];
                return Err(if dead { freed } else { Fault::InvalidPointer });
            }
            Err(fault) => return Err(fault),
        }
    }
    Err(verdict)
}

/// Checks the header and trailing guards of the debug block `p` in the
/// heap block `base` (live, of `usable` bytes and `class_size`); returns
/// the requested size.
fn check_guards(base: *mut u8, (usable, class_size): (usize, usize), p: *mut u8) -> Result<usize, Fault> {
    let front = p as usize - base as usize;
    if front + TAIL > usable {
        return Err(Fault::InvalidPointer);
    }
    // SAFETY: front >= MIN_FRONT, so the header lies inside the block.
    let (size, guard) = unsafe { (p.sub(HEADER).cast::<usize>().read(), p.sub(8).cast::<[u8; 8]>().read()) };
    if guard == [DEAD; 8] {
        return Err(Fault::Freed { class_size });
    }
    let room = usable - front - TAIL;
    if guard != [GUARD; 8] || size > room {
        return Err(Fault::Underflow { size, found: guard });
    }
    // SAFETY: p + size .. base + usable lies inside the block.
    let tail = unsafe { core::slice::from_raw_parts(p.add(size), usable - front - size) };
    if let Some(bad) = first_other_than(tail, GUARD) {
        let start = bad - bad % 8;
        return Err(Fault::Overflow { size, offset: size + start, found: eight(tail, start, GUARD) });
    }
    Ok(size)
}

/// The offset of the first byte of `bytes` that is not `value`, eight
/// bytes at a time (blocks are checked whole, megabytes of them).
fn first_other_than(bytes: &[u8], value: u8) -> Option<usize> {
    let word = u64::from_ne_bytes([value; 8]);
    let (words, _) = bytes.as_chunks::<8>();
    let mismatch = words.iter().position(|w| u64::from_ne_bytes(*w) != word).map_or(words.len() * 8, |i| i * 8);
    bytes.get(mismatch..).unwrap_or_default().iter().position(|&b| b != value).map(|i| mismatch + i)
}

/// Eight bytes of `bytes` from `start` (`pad` beyond its end).
fn eight(bytes: &[u8], start: usize, pad: u8) -> [u8; 8] {
    let mut found = [pad; 8];
    for (slot, &b) in found.iter_mut().zip(bytes.get(start..).unwrap_or_default()) {
        *slot = b;
    }
    found
}

/// Checks that the quarantined block `p` is still all 0xDD.
fn check_poison(p: *mut u8) -> Result<(), Fault> {
    // SAFETY: quarantined blocks keep their header and bytes until freed.
    let size = unsafe { p.sub(HEADER).cast::<usize>().read() };
    // SAFETY: as above.
    let bytes = unsafe { core::slice::from_raw_parts(p, size) };
    if let Some(bad) = first_other_than(bytes, DEAD) {
        let start = bad - bad % 8;
        return Err(Fault::WriteAfterFree { block: p, size, offset: start, found: eight(bytes, start, DEAD) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap() -> Box<Heap> {
        Box::new(Heap::new())
    }

    #[test]
    fn blocks_keep_alignment_size_and_fill() {
        let mut heap = heap();
        for align in [1, 16, 32, 64, 4096, 1 << 17, 1 << 20] {
            for n in [0, 1, 48, 511, 4000, 200_000] {
                let p = alloc(&mut heap, n, align, false).unwrap();
                assert_eq!(p as usize % align.max(16), 0, "{n} aligned {align}");
                assert_eq!(usable_size(&heap, &Quarantine::new(), p).unwrap(), n);
                // SAFETY: a live debug block of n bytes.
                let bytes = unsafe { core::slice::from_raw_parts(p, n) };
                assert!(bytes.iter().all(|&b| b == FRESH));
                let z = alloc(&mut heap, n, align, true).unwrap();
                // SAFETY: as above.
                assert!(unsafe { core::slice::from_raw_parts(z, n) }.iter().all(|&b| b == 0));
                check(&heap).unwrap();
                free(&mut heap, &mut Quarantine::new(), p, Some((n, align))).unwrap();
                free(&mut heap, &mut Quarantine::new(), z, None).unwrap();
            }
        }
        heap.check().unwrap();
    }

    #[test]
    fn a_large_block_placed_inside_one_freed_earlier_is_no_write_after_free() {
        let mut heap = heap();
        let mut quarantine = Box::new(Quarantine::new());
        // A clean span, then the freed block `a` after it, as one free span.
        let x = alloc(&mut heap, 160_000, 1, false).unwrap();
        let a = alloc(&mut heap, 300_000, 1, false).unwrap();
        free(&mut heap, &mut quarantine, x, None).unwrap();
        heap.trim();
        free(&mut heap, &mut quarantine, a, None).unwrap();
        // `y` reuses the end of `a`'s pages, leaving `a`'s stale header.
        let y = alloc(&mut heap, 140_000, 1, false).unwrap();
        assert!(y > a.wrapping_add(4096) && y < a.wrapping_add(300_000), "the premise: y lies inside a");
        free(&mut heap, &mut quarantine, y, None).unwrap();
        // Back where `a` was: its stale header is not the last tenant's.
        let z = alloc(&mut heap, 300_000, 1, false).unwrap();
        assert_eq!(z, a, "the premise: z takes a's place");
        free(&mut heap, &mut quarantine, z, None).unwrap();
        heap.check().unwrap();
    }

    #[test]
    fn finds_the_first_byte_that_differs() {
        let mut bytes = vec![DEAD; 100];
        assert_eq!(first_other_than(&bytes, DEAD), None);
        for at in [0, 7, 8, 63, 95, 96, 99] {
            bytes[at] = 1;
            assert_eq!(first_other_than(&bytes, DEAD), Some(at));
            assert_eq!(first_other_than(&bytes[..at], DEAD), None);
            bytes[at] = DEAD;
        }
    }

    #[test]
    fn guards_catch_overflow_underflow_and_double_free() {
        let mut heap = heap();
        let p = alloc(&mut heap, 40, 1, false).unwrap();
        // SAFETY: one byte past the block: the guard, ours to corrupt here.
        unsafe { p.add(40).write(0x41) };
        let overflow = Fault::Overflow { size: 40, offset: 40, found: [0x41, GUARD, GUARD, GUARD, GUARD, GUARD, GUARD, GUARD] };
        assert_eq!(check(&heap), Err((overflow, p)));
        assert_eq!(free(&mut heap, &mut Quarantine::new(), p, None), Err(overflow));
        // SAFETY: as above.
        unsafe { p.add(40).write(GUARD) };
        // SAFETY: the byte before the block.
        unsafe { p.sub(1).write(0x42) };
        let underflow = Fault::Underflow { size: 40, found: [GUARD, GUARD, GUARD, GUARD, GUARD, GUARD, GUARD, 0x42] };
        assert_eq!(realloc(&mut heap, &mut Quarantine::new(), p, 100), Err(underflow));
        // SAFETY: as above.
        unsafe { p.sub(1).write(GUARD) };
        let q = realloc(&mut heap, &mut Quarantine::new(), p, 30).unwrap();
        assert_eq!(q, p, "shrinking stays in place");
        let mut quarantine = Box::new(Quarantine::new());
        free(&mut heap, &mut quarantine, q, None).unwrap();
        assert!(matches!(free(&mut heap, &mut quarantine, q, None), Err(Fault::Freed { .. })));
        assert_eq!(free(&mut heap, &mut quarantine, q.wrapping_add(16), None), Err(Fault::InvalidPointer));
        // A guard that reads as freed, of a block in no quarantine (and
        // live in the heap): overwritten, not freed.
        let r = alloc(&mut heap, 40, 1, false).unwrap();
        // SAFETY: the 8 guard bytes before the block, ours to corrupt here.
        unsafe { r.sub(8).write_bytes(DEAD, 8) };
        assert_eq!(free(&mut heap, &mut quarantine, r, None), Err(Fault::Underflow { size: 40, found: [DEAD; 8] }));
        heap.check().unwrap();
    }
}
