//! C++'s deletes reach the library and are checked (src/cxx.rs): the
//! programs in `tests/cxx/` (built with g++), preloaded and linked, in the
//! default and the debug mode. `deletes.cc` uses every form correctly and
//! must succeed; each case of `delete_misuse.cc` must abort with the
//! library's one-line message, and survive without the library.

#[macro_use]
mod common;

use common::{Config, check_abort, check_symbols_bind, clean_env, compile_cxx, library, run};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

const DEBUG: &[(&str, &str)] = &[("PYMALLOC_DEBUG", "1"), ("PYMALLOC_DEBUG_QUARANTINE", "256K")];

/// `exe` in `config` with the extra environment `env`.
fn command(exe: &Path, config: Config, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(exe);
    clean_env(&mut cmd).envs(env.iter().copied());
    if config == Config::Preload {
        cmd.env("LD_PRELOAD", library());
    }
    cmd
}

fn run_deletes(config: Config, env: &[(&str, &str)]) {
    let Some(exe) = compile_cxx("deletes", config) else { return };
    let r = run(command(&exe, config, env), TIMEOUT, &format!("deletes ({config:?}, {env:?})"));
    r.assert_success(&format!("deletes ({config:?}, {env:?})"));
}

#[test]
fn deletes_preload() {
    run_deletes(Config::Preload, &[]);
}

#[test]
fn deletes_linked() {
    run_deletes(Config::Linked, &[]);
}

#[test]
fn deletes_debug_preload() {
    run_deletes(Config::Preload, DEBUG);
}

#[test]
fn deletes_debug_linked() {
    run_deletes(Config::Linked, DEBUG);
}

/// Every form the program calls binds to the library, preloaded and
/// linked: libstdc++'s own definitions are not used.
#[test]
fn deletes_bind_to_the_library() {
    const FORMS: &[&str] = &[
        "_ZdlPv", "_ZdlPvm", "_ZdlPvSt11align_val_t", "_ZdlPvmSt11align_val_t", "_ZdlPvRKSt9nothrow_t",
        "_ZdlPvSt11align_val_tRKSt9nothrow_t", "_ZdaPv", "_ZdaPvm", "_ZdaPvSt11align_val_t",
        "_ZdaPvmSt11align_val_t", "_ZdaPvRKSt9nothrow_t", "_ZdaPvSt11align_val_tRKSt9nothrow_t",
    ];
    for config in [Config::Preload, Config::Linked] {
        let Some(exe) = compile_cxx("deletes", config) else { return };
        let cmd = command(&exe, config, &[]);
        check_symbols_bind(cmd, &library(), FORMS, &exe.to_string_lossy(), &format!("deletes ({config:?})"));
    }
}

fn run_misuse(case: &str, config: Config, env: &[(&str, &str)]) {
    let Some(exe) = compile_cxx("delete_misuse", config) else { return };
    let mut cmd = command(&exe, config, env);
    cmd.arg(case);
    check_abort(cmd, &format!("delete_misuse {case} ({config:?}, {env:?})"));
}

tests_in_configs! {
    run_misuse, four(DEBUG);
    base_pointer => "base-pointer";
    base_pointer_in_thread => "base-pointer-in-thread";
    aligned_base_pointer_in_thread => "aligned-base-pointer-in-thread";
    base_pointer_array => "base-pointer-array";
    aligned_base_pointer => "aligned-base-pointer";
    aligned_wrong_alignment => "aligned-wrong-alignment";
    sized_aligned_wrong_alignment => "sized-aligned-wrong-alignment";
    aligned_not_power_of_two => "aligned-not-power-of-two";
    double_delete => "double-delete";
    delete_stack => "delete-stack";
}

/// The wrong sizes are caught by the library, not by glibc or libstdc++:
/// without it, the program survives them.
#[test]
fn wrong_sizes_pass_unnoticed_without_the_library() {
    let Some(exe) = compile_cxx("delete_misuse", Config::Preload) else { return };
    for case in ["base-pointer", "base-pointer-array", "aligned-base-pointer"] {
        let mut cmd = Command::new(&exe);
        clean_env(&mut cmd).arg(case);
        run(cmd, TIMEOUT, &format!("delete_misuse {case} (no library)")).assert_success(case);
    }
}
