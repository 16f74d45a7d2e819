//! A doubly linked list by age, intrusive: each node holds its own links
//! (`Linked`), so listing a node allocates nothing. Nodes join at the
//! newest end and leave from anywhere; what decays leaves from the oldest
//! end. The empty pools waiting to be decommitted (`purge`), the free
//! arenas (`arena`) and the cached mappings (`large`) are such lists.
//!
//! A listed node must stay live until it is unlinked: its owner unlinks
//! it before reusing or freeing its memory.

use core::ptr;

/// A node of an `AgeList`: its links to the next newer and the next older
/// node (null at the ends).
pub trait Linked: Sized {
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self);
}

pub struct AgeList<T> {
    newest: *mut T,
    oldest: *mut T,
    pub len: usize,
}

impl<T: Linked> AgeList<T> {
    pub const fn new() -> Self {
        AgeList { newest: ptr::null_mut(), oldest: ptr::null_mut(), len: 0 }
    }

    pub fn oldest(&self) -> *mut T {
        self.oldest
    }

    /// Adds `node`, not listed, as the newest.
    pub fn push_newest(&mut self, node: &mut T) {
        let older = self.newest;
        let (newer_link, older_link) = node.links();
        *newer_link = ptr::null_mut();
        *older_link = older;
        let node: *mut T = node;
        // SAFETY: listed nodes are live (see the module doc).
        match unsafe { older.as_mut() } {
            Some(older) => *older.links().0 = node,
            None => self.oldest = node,
        }
        self.newest = node;
        self.len += 1;
    }

    /// Takes listed `node` off the list.
    pub fn unlink(&mut self, node: &mut T) {
        let (newer_link, older_link) = node.links();
        let (newer, older) = (*newer_link, *older_link);
        *newer_link = ptr::null_mut();
        *older_link = ptr::null_mut();
        // SAFETY: listed nodes are live (see the module doc).
        unsafe {
            match newer.as_mut() {
                Some(newer) => *newer.links().1 = older,
                None => self.newest = older,
            }
            match older.as_mut() {
                Some(older) => *older.links().0 = newer,
                None => self.oldest = newer,
            }
        }
        self.len -= 1;
    }

    /// The newest node that `wanted`, or null.
    pub fn find_newest(&self, mut wanted: impl FnMut(&mut T) -> bool) -> *mut T {
        let mut cur = self.newest;
        // SAFETY: listed nodes are live (see the module doc).
        while let Some(node) = unsafe { cur.as_mut() } {
            if wanted(node) {
                return node;
            }
            cur = *node.links().1;
        }
        ptr::null_mut()
    }
}
