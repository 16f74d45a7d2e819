//! The heap's invariant walk (`pymalloc_check_heap`, and the tests).

use core::ptr;

use crate::arena::Arena;
use crate::arena_map::Owner;
use crate::geometry::{ARENA_SIZE, TIER_COUNT};
use crate::hardening::Secret;
use crate::heap::Heap;
use crate::pool::Pool;
use crate::size_class::{NUM_CLASSES, class_info};

impl Heap {
    /// Walks the whole heap and returns the first broken invariant, if any.
    /// Costs a pass over every pool: for tests and explicit checks.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut result = Ok(());
        self.arenas().for_each(|arena| {
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
        self.large().regions().check()?;
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
        if !base.is_multiple_of(ARENA_SIZE) {
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
            if pool.ref_count.get() != 0 || (pool.base as usize).wrapping_sub(arena.base as usize) >= ARENA_SIZE {
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
    let exact = pool
        .free_list_is_exact(secret)
        .map_err(|_| "free list link corrupted (outside its pool, or a cycle)")?;
    if !exact {
        return Err("ref_count + free blocks != carved blocks");
    }
    Ok(())
}
