//! Heap misuse: what an operation found wrong (`Fault`), and the one
//! line on stderr that names it before the process aborts (`fatal`).
//! Faults are found under the heap lock and reported after it is
//! released, so that signal handlers run by `abort` can still allocate.

use core::fmt::Write;

use crate::print::{ChunkWriter, write_fd};

/// Heap misuse detected by an operation, reported by `abi` after the lock
/// is released (`fatal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Not the first byte of a block of ours.
    InvalidPointer,
    /// A block that is already free: of a class of `class_size` bytes, or
    /// a large block (`class_size` 0).
    Freed { class_size: usize },
    /// The free-list link held by the free block `at` was overwritten.
    CorruptFreeList { at: *mut u8, class_size: usize },
    /// A size passed to `free_sized` that the block (of `class_size`
    /// bytes, 0 for a large block) cannot have been allocated for.
    WrongSize { size: usize, class_size: usize },
    /// An alignment passed to `free_aligned_sized` that the block does
    /// not have, or that is not a power of two.
    WrongAlignment { align: usize },
    /// Debug mode: a size passed to `free_sized` that is not the one the
    /// block was allocated (or reallocated) for.
    WrongRequestedSize { size: usize, requested: usize },
    /// Debug mode: the guard bytes after a block of `size` bytes were
    /// overwritten; `found` are the 8 bytes at `offset` from its start.
    Overflow { size: usize, offset: usize, found: [u8; 8] },
    /// Debug mode: the guard bytes just before a block were overwritten
    /// (`found`; `size` is what its header says).
    Underflow { size: usize, found: [u8; 8] },
    /// Debug mode: a quarantined `block` of `size` bytes was written after
    /// it was freed: `found` at `offset`.
    WriteAfterFree { block: *mut u8, size: usize, offset: usize, found: [u8; 8] },
}

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
