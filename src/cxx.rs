//! C++'s `operator delete` family, exported under its Itanium-mangled
//! names so that a C++ program's deletes reach the heap with the size and
//! alignment the compiler knows, and are checked as `free_sized` and
//! `free_aligned_sized` are: a delete through a base-class pointer
//! without a virtual destructor (the wrong size) aborts with a message.
//!
//! Only the deletes: libstdc++'s `operator new` stays libstdc++'s. It calls
//! our `malloc` (`new`, `new[]`: the size, 0 made 1) or `aligned_alloc`
//! (the aligned forms: the size, 0 made 1, rounded up to a multiple of
//! the alignment, libsupc++/new_opa.cc), so the failure path, new-handler
//! and `bad_alloc` stay in C++ and no exception ever crosses our code.
//! Each delete is a thin wrapper over `abi`'s paths (thread cache
//! included); the sizes are turned into those requests first. These are
//! C functions in the C ABI (x86-64: a pointer, a `size_t`, the
//! `std::align_val_t` enum as a `size_t`, `const std::nothrow_t&` as a
//! pointer), kept out of the C header (cbindgen.toml).

use core::ffi::c_void;

use crate::abi::{free_fast, release_aligned, release_sized};

/// What `operator new(size)` asked `malloc` for.
#[inline(always)]
fn requested(size: usize) -> usize {
    size.max(1)
}

/// What `operator new(size, align)` asked `aligned_alloc` for; an
/// alignment that is not a power of two is left to `release_sized` to
/// report.
#[inline(always)]
fn requested_aligned(size: usize, align: usize) -> usize {
    match align.is_power_of_two() {
        true => size.max(1).checked_next_multiple_of(align).unwrap_or(size),
        false => size,
    }
}

/// A `const std::nothrow_t&`: never read.
type Nothrow = *const c_void;

/// `operator delete(void*)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdlPv"))]
pub extern "C" fn operator_delete(p: *mut c_void) {
    free_fast(p, "operator delete(void*)")
}

/// `operator delete[](void*)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdaPv"))]
pub extern "C" fn operator_delete_array(p: *mut c_void) {
    free_fast(p, "operator delete[](void*)")
}

/// `operator delete(void*, size_t)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdlPvm"))]
pub extern "C" fn operator_delete_sized(p: *mut c_void, size: usize) {
    release_sized(p, requested(size), 1, "operator delete(void*, size_t)")
}

/// `operator delete[](void*, size_t)`: the size includes the array
/// cookie, as `operator new[]` was asked for it.
#[cfg_attr(not(test), unsafe(export_name = "_ZdaPvm"))]
pub extern "C" fn operator_delete_array_sized(p: *mut c_void, size: usize) {
    release_sized(p, requested(size), 1, "operator delete[](void*, size_t)")
}

/// `operator delete(void*, std::align_val_t)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdlPvSt11align_val_t"))]
pub extern "C" fn operator_delete_aligned(p: *mut c_void, align: usize) {
    release_aligned(p, align, "operator delete(void*, std::align_val_t)")
}

/// `operator delete[](void*, std::align_val_t)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdaPvSt11align_val_t"))]
pub extern "C" fn operator_delete_array_aligned(p: *mut c_void, align: usize) {
    release_aligned(p, align, "operator delete[](void*, std::align_val_t)")
}

/// `operator delete(void*, size_t, std::align_val_t)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdlPvmSt11align_val_t"))]
pub extern "C" fn operator_delete_sized_aligned(p: *mut c_void, size: usize, align: usize) {
    release_sized(p, requested_aligned(size, align), align, "operator delete(void*, size_t, std::align_val_t)")
}

/// `operator delete[](void*, size_t, std::align_val_t)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdaPvmSt11align_val_t"))]
pub extern "C" fn operator_delete_array_sized_aligned(p: *mut c_void, size: usize, align: usize) {
    release_sized(p, requested_aligned(size, align), align, "operator delete[](void*, size_t, std::align_val_t)")
}

/// `operator delete(void*, const std::nothrow_t&)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdlPvRKSt9nothrow_t"))]
pub extern "C" fn operator_delete_nothrow(p: *mut c_void, _: Nothrow) {
    free_fast(p, "operator delete(void*, const std::nothrow_t&)")
}

/// `operator delete[](void*, const std::nothrow_t&)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdaPvRKSt9nothrow_t"))]
pub extern "C" fn operator_delete_array_nothrow(p: *mut c_void, _: Nothrow) {
    free_fast(p, "operator delete[](void*, const std::nothrow_t&)")
}

/// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdlPvSt11align_val_tRKSt9nothrow_t"))]
pub extern "C" fn operator_delete_aligned_nothrow(p: *mut c_void, align: usize, _: Nothrow) {
    release_aligned(p, align, "operator delete(void*, std::align_val_t, const std::nothrow_t&)")
}

/// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
#[cfg_attr(not(test), unsafe(export_name = "_ZdaPvSt11align_val_tRKSt9nothrow_t"))]
pub extern "C" fn operator_delete_array_aligned_nothrow(p: *mut c_void, align: usize, _: Nothrow) {
    release_aligned(p, align, "operator delete[](void*, std::align_val_t, const std::nothrow_t&)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes libstdc++'s `operator new` asks for (new_op.cc, new_opa.cc).
    #[test]
    fn requests_are_libstdcxx_s() {
        assert_eq!(requested(0), 1);
        assert_eq!(requested(24), 24);
        assert_eq!(requested_aligned(0, 64), 64);
        assert_eq!(requested_aligned(1, 64), 64);
        assert_eq!(requested_aligned(64, 64), 64);
        assert_eq!(requested_aligned(65, 64), 128);
        assert_eq!(requested_aligned(100, 4096), 4096);
        assert_eq!(requested_aligned(usize::MAX, 64), usize::MAX);
        assert_eq!(requested_aligned(100, 48), 100);
    }
}
