//! Printing without allocating: a `fmt::Write` over a fixed buffer that
//! hands full chunks to a sink (`ChunkWriter`), raw `write(2)` to a file
//! descriptor, and thread cancellation held off while a report is being
//! written. Below everything that prints: options' warnings, fault
//! reports, statistics.

use core::ffi::c_int;
use core::fmt::{self, Write};

unsafe extern "C" {
    fn pthread_setcancelstate(state: c_int, oldstate: *mut c_int) -> c_int;
}

/// glibc's `PTHREAD_CANCEL_DISABLE` (the libc crate lacks it).
const PTHREAD_CANCEL_DISABLE: c_int = 1;

/// Holds off thread cancellation until dropped, then restores the
/// caller's state. Everything the library writes (`write`, `open`,
/// `close`, stdio) is a cancellation point: without this, a thread with a
/// pending cancellation would be cancelled inside the library, its output
/// cut short (glibc's `malloc_stats` disables cancellation too).
pub struct NoCancel(c_int);

impl NoCancel {
    pub fn new() -> Self {
        let mut old = 0;
        // SAFETY: sets this thread's cancellation state; `old` is a valid
        // out-parameter. No allocation, no TLS beyond the thread's own
        // descriptor, never a cancellation point itself.
        unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
        NoCancel(old)
    }
}

impl Drop for NoCancel {
    fn drop(&mut self) {
        let mut ignored = 0;
        // SAFETY: as in `new`; restores the state `new` found.
        unsafe { pthread_setcancelstate(self.0, &mut ignored) };
    }
}

/// A `fmt::Write` into a fixed buffer that hands full chunks to a sink
/// (a file descriptor or a `FILE`), so reports of any length need no heap.
/// Thread cancellation is held off while it lives, so that what it writes
/// arrives whole.
pub struct ChunkWriter<F: FnMut(&[u8])> {
    buf: [u8; 512],
    len: usize,
    sink: F,
    /// Dropped after the last chunk is flushed (`Drop` runs first).
    _no_cancel: NoCancel,
}

impl<F: FnMut(&[u8])> ChunkWriter<F> {
    pub fn new(sink: F) -> Self {
        ChunkWriter { buf: [0; 512], len: 0, sink, _no_cancel: NoCancel::new() }
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
