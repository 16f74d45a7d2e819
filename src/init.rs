//! Start-up. The heap needs no initialisation: it is a `const` static, so
//! the first `malloc` (from ld.so, libc or another library's constructor,
//! before ours runs) finds it ready; that first allocation also resolves
//! the options (`config`). The constructor resolves them too (for a
//! program that never allocates) and does what must not happen on the
//! first `malloc`: registering the fork handlers, whose registration
//! allocates.

#[cfg(not(test))]
#[ctor::ctor(unsafe)]
fn init() {
    crate::config::ensure();
    crate::fork::install();
    crate::front::enable();
}
