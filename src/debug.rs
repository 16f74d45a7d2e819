//! Fatal error reports and the heap's invariant walk.

use core::fmt::Write;
use core::ptr;

use crate::arena::Arena;
use crate::arena_map::Owner;
use crate::geometry::{ARENA_SIZE, TIER_COUNT};
use crate::hardening::Secret;
use crate::heap::{Fault, Heap};
use crate::pool::Pool;
use crate::size_class::{NUM_CLASSES, class_info};
use crate::stats::{ChunkWriter, write_fd};

/// Reports heap misuse by `function` with the pointer `addr` it was given
/// (null for allocating functions) in one line on stderr, and aborts.
/// Called with the heap lock released, so that signal handlers run by
/// `abort` can still allocate.
#[cold]
pub fn fatal(function: &str, fault: Fault, addr: *const u8) -> ! {
    report(function, fault, addr);
    // SAFETY: abort never returns and is async-signal-safe.
    unsafe { libc::abort() }
}

/// Writes the line `fatal` writes, without aborting.
#[cold]
pub fn report(function: &str, fault: Fault, addr: *const u8) {
    {
        let mut out = ChunkWriter::new(|bytes| write_fd(2, bytes));
        // C++ operators are named with their parameters already.
        let parens = if function.ends_with(')') { "" } else { "()" };
        let _ = write!(out, "pymalloc: {function}{parens}: ");
        let _ = match fault {
            Fault::InvalidPointer => write!(out, "invalid pointer {addr:p}"),
            Fault::Freed { class_size } => {
                let frees = matches!(function, "free" | "free_sized" | "free_aligned_sized")
                    || function.starts_with("operator delete");
                let what = if frees { "double free of" } else { "pointer to a freed block" };
                write!(out, "{what} {addr:p}, ")
                    .and_then(|()| write_class(&mut out, class_size))
            }
            Fault::CorruptFreeList { at, class_size } => {
                write!(out, "corrupted free list: link in free block {at:p} overwritten, ")
                    .and_then(|()| write_class(&mut out, class_size))
            }
            Fault::WrongSize { size, class_size } => write!(out, "wrong size {size} for block {addr:p}, ")
                .and_then(|()| write_class(&mut out, class_size)),
            Fault::WrongAlignment { align } => write!(out, "wrong alignment {align} for block {addr:p}"),
            Fault::WrongRequestedSize { size, requested } => {
                write!(out, "wrong size {size} for block {addr:p} of {requested} bytes")
            }
            Fault::Overflow { size, offset, found } => {
                write!(out, "buffer overflow after block {addr:p} of {size} bytes: at offset {offset}: ")
                    .and_then(|()| write_bytes(&mut out, found))
            }
            Fault::Underflow { size, found } => {
                write!(out, "buffer underflow before block {addr:p} of {size} bytes: the 8 bytes before it: ")
                    .and_then(|()| write_bytes(&mut out, found))
            }
            Fault::WriteAfterFree { block, size, offset, found } => {
                write!(out, "write after free in block {block:p} of {size} bytes: at offset {offset}: ")
                    .and_then(|()| write_bytes(&mut out, found))
            }
        };
        let _ = out.write_str("\n");
    }
}

fn write_bytes(out: &mut impl Write, bytes: [u8; 8]) -> core::fmt::Result {
    for (i, b) in bytes.iter().enumerate() {
        write!(out, "{}{b:02x}", if i == 0 { "" } else { " " })?;
    }
    Ok(())
}

fn write_class(out: &mut impl Write, class_size: usize) -> core::fmt::Result {
    match class_size {
        0 => write!(out, "large block"),
        n => write!(out, "size class {n}"),
    }
}

impl Heap {
    /// Walks the whole heap and returns the first broken invariant, if any.
    /// Costs a pass over every pool: for tests and explicit checks.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut result = Ok(());
        self.for_each_arena(|arena| {
            if result.is_ok() {
                result = self.check_arena(arena);
            }
        });
        result?;
        for class in 0..NUM_CLASSES {
            self.check_used_list(class)?;
        }
        for tier in 0..TIER_COUNT {
            self.check_tier(tier)?;
        }
        self.regions().check()?;
        let mut result = Ok(());
        self.map().for_each_large(|block| {
            // SAFETY: the map only names live large descriptors, and a
            // span's neighbours are live descriptors of its region.
            let (b, left, right) = unsafe { (&*block, (*block).left.as_ref(), (*block).right.as_ref()) };
            if result.is_ok()
                && (b.free
                    || left.is_some_and(|l| !ptr::eq(l.right, b) || l.base.wrapping_add(l.len) != b.base)
                    || right.is_some_and(|r| !ptr::eq(r.left, b) || b.base.wrapping_add(b.len) != r.base))
            {
                result = Err("a live large block is marked free or not linked to its neighbours");
            }
        });
        result
    }

    fn check_arena(&self, arena: &Arena) -> Result<(), &'static str> {
        let base = arena.base as usize;
        if base % ARENA_SIZE != 0 {
            return Err("arena not aligned to its size");
        }
        for granule in (base..base + ARENA_SIZE).step_by(crate::geometry::GRANULE_SIZE) {
            if self.map().get(granule) != Some(Owner::Arena(arena as *const Arena as *mut Arena)) {
                return Err("arena map does not name the arena");
            }
        }
        if arena.retired {
            return Ok(());
        }
        if arena.next_unused.get() > arena.ntotalpools || arena.nfreepools > arena.ntotalpools {
            return Err("arena pool counts out of range");
        }
        let mut on_free_list = 0;
        let mut cur = arena.freepools;
        // SAFETY: free-pool lists hold pools of this arena's descriptor.
        while let Some(pool) = unsafe { cur.as_ref() } {
            if pool.ref_count.get() != 0 || !core::ptr::eq(pool.arena, arena) {
                return Err("free-pool list holds a pool in use or of another arena");
            }
            on_free_list += 1;
            if on_free_list > arena.ntotalpools {
                return Err("free-pool list has a cycle");
            }
            cur = pool.nextpool;
        }
        let unborn = arena.ntotalpools - arena.next_unused.get();
        if on_free_list + unborn != arena.nfreepools {
            return Err("nfreepools disagrees with the free-pool list");
        }
        for pool in arena.pools.iter().take(arena.next_unused.get() as usize) {
            if pool.ref_count.get() > 0 || self.is_kept(pool) {
                check_pool(pool, arena, self.secret())?;
            }
        }
        Ok(())
    }

    fn check_used_list(&self, class: usize) -> Result<(), &'static str> {
        let mut prev: *mut Pool = core::ptr::null_mut();
        let mut cur = self.used_list(class);
        let mut n = 0usize;
        let mut kept_seen = false;
        // SAFETY: used lists hold live pools.
        while let Some(pool) = unsafe { cur.as_ref() } {
            let empty_ok = self.is_kept(pool);
            kept_seen |= empty_ok;
            if pool.class as usize != class || (pool.ref_count.get() == 0 && !empty_ok) || pool.is_full() {
                return Err("used list holds a pool of another class, empty (not kept) or full");
            }
            if pool.prevpool != prev {
                return Err("used list back link broken");
            }
            n += 1;
            if n > 1 << 30 {
                return Err("used list has a cycle");
            }
            prev = cur;
            cur = pool.nextpool;
        }
        // SAFETY: a kept pool is a live pool.
        if let Some(kept) = unsafe { self.kept_pool(class).as_ref() } {
            if kept.class as usize != class || (kept.ref_count.get() == 0 && !kept_seen) {
                return Err("kept pool of another class, or empty and not on the used list");
            }
        }
        Ok(())
    }

    fn check_tier(&self, tier: usize) -> Result<(), &'static str> {
        let t = self.tier(tier);
        let mut prev: *mut Arena = core::ptr::null_mut();
        let mut cur = t.usable;
        // SAFETY: usable lists hold live arenas.
        while let Some(arena) = unsafe { cur.as_ref() } {
            let nf = arena.nfreepools as usize;
            if arena.tier as usize != tier || nf == 0 || nf >= arena.ntotalpools as usize {
                return Err("usable arena of another tier, full or entirely free");
            }
            if arena.prevarena != prev {
                return Err("usable list back link broken");
            }
            // SAFETY: as above.
            let next = unsafe { arena.nextarena.as_ref() };
            if let Some(next) = next {
                if (next.nfreepools as usize) < nf {
                    return Err("usable arenas not sorted by free pools");
                }
            }
            let is_last = next.is_none_or(|next| next.nfreepools as usize != nf);
            if is_last != (t.last_with(nf) == cur) {
                return Err("last_with does not name the last arena with its count");
            }
            prev = cur;
            cur = arena.nextarena;
        }
        Ok(())
    }
}

fn check_pool(pool: &Pool, arena: &Arena, secret: Secret) -> Result<(), &'static str> {
    if (pool.class as usize) >= NUM_CLASSES || class_info(pool.class as usize).tier != arena.tier {
        return Err("pool serves a class of another tier");
    }
    if pool.ref_count.get() > pool.capacity() || pool.nextoffset.get() > pool.maxnextoffset + pool.block_size {
        return Err("pool counts out of range");
    }
    if !pool.freeblock.is_null() && !pool.is_carved_block(pool.freeblock as usize) {
        return Err("free list head outside its pool");
    }
    let free = pool
        .walk_free_list(secret, |_| {})
        .map_err(|_| "free list link corrupted (outside its pool, or a cycle)")?;
    if Some(pool.ref_count.get() + free) != pool.nextoffset.get().checked_div(pool.block_size) {
        return Err("ref_count + free blocks != carved blocks");
    }
    Ok(())
}
