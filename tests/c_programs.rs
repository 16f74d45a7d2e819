//! Runs the C programs in `tests/c/` against the built `libpymalloc.so`,
//! each in two configurations: built plain and run with `LD_PRELOAD`, and
//! linked with `-lpymalloc`. Needs `cargo build --release` (or `cargo build`
//! for a debug run) first: see `common::library`.

mod common;

use common::{Config, check_binding, clean_env, compile_c, library, run};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn run_c_program(name: &str, config: Config) {
    run_c_program_with(name, config, program_env(name), &[]);
}

/// The environment a program needs in every configuration.
fn program_env(name: &str) -> Env {
    match name {
        // It compares the heap before and after each failure: no decay
        // (an hour) may give kept pools back while it runs, however slow
        // the machine.
        "oom_fail_fast" => &[("PYMALLOC_DECAY_MS", "3600000")],
        _ => &[],
    }
}

/// Runs a program with the extra environment `env` and arguments `args`.
fn run_c_program_with(name: &str, config: Config, env: &[(&str, &str)], args: &[&str]) {
    let lib = library();
    let exe = compile_c(name, config);
    let command = || {
        let mut cmd = Command::new(&exe);
        clean_env(&mut cmd).envs(env.iter().copied()).args(args);
        if config == Config::Preload {
            cmd.env("LD_PRELOAD", &lib);
        }
        cmd
    };

    // The program's own malloc must bind to the library under test.
    let mut probe = command();
    probe.env("PYMALLOC_BINDING_PROBE", "1");
    let exe_name = exe.to_string_lossy();
    check_binding(probe, &lib, &[&exe_name], &format!("{name} ({config:?})"));

    let mut cmd = command();
    cmd.env("PYMALLOC_EXPECTED", "1");
    let what = format!("{name} {} ({config:?})", args.join(" "));
    let r = run(cmd, TIMEOUT, &what);
    r.assert_success(&what);
}

/// Extra environment variables of a run.
type Env = &'static [(&'static str, &'static str)];

/// The debug mode (guard bytes, poisoning, a quarantine) must keep every
/// function's semantics: each program runs under it too.
// (A small quarantine, so that blocks leave it while the programs run.)
const DEBUG: Env = &[("PYMALLOC_DEBUG", "1"), ("PYMALLOC_DEBUG_QUARANTINE", "256K")];

macro_rules! c_tests {
    ($($preload:ident, $linked:ident, $debug:ident => $name:literal;)*) => {$(
        #[test]
        fn $preload() {
            run_c_program($name, Config::Preload);
        }
        #[test]
        fn $linked() {
            run_c_program($name, Config::Linked);
        }
        #[test]
        fn $debug() {
            let env = [DEBUG, program_env($name)].concat();
            run_c_program_with($name, Config::Linked, &env, &[]);
        }
    )*};
}

c_tests! {
    api_edge_preload, api_edge_linked, api_edge_debug => "api_edge";
    alignment_preload, alignment_linked, alignment_debug => "alignment";
    realloc_contents_preload, realloc_contents_linked, realloc_contents_debug => "realloc_contents";
    calloc_zero_preload, calloc_zero_linked, calloc_zero_debug => "calloc_zero";
    no_overlap_preload, no_overlap_linked, no_overlap_debug => "no_overlap";
    threads_basic_preload, threads_basic_linked, threads_basic_debug => "threads_basic";
    oom_rlimit_preload, oom_rlimit_linked, oom_rlimit_debug => "oom_rlimit";
    oom_fail_fast_preload, oom_fail_fast_linked, oom_fail_fast_debug => "oom_fail_fast";
    cancel_report_preload, cancel_report_linked, cancel_report_debug => "cancel_report";
    sized_free_preload, sized_free_linked, sized_free_debug => "sized_free";
    fuzz_preload, fuzz_linked, fuzz_debug => "fuzz";
    late_thread_preload, late_thread_linked, late_thread_debug => "late_thread";
    stale_keys_preload, stale_keys_linked, stale_keys_debug => "stale_keys";
}

/// Stale keys are hints on the heap's own path too, with no thread cache
/// to confirm or refute them.
#[test]
fn stale_keys_no_thread_cache() {
    run_c_program_with("stale_keys", Config::Preload, &[("PYMALLOC_THREAD_CACHE", "0")], &[]);
}

/// Programs run once per mode (each mode in a process of its own),
/// preloaded, linked and in the debug mode.
macro_rules! c_tests_with_modes {
    ($($test:ident => $name:literal, [$($mode:literal),*];)*) => {$(
        #[test]
        fn $test() {
            for mode in [$($mode),*] {
                run_c_program_with($name, Config::Preload, &[], &[mode]);
                run_c_program_with($name, Config::Linked, &[], &[mode]);
                run_c_program_with($name, Config::Linked, DEBUG, &[mode]);
            }
        }
    )*};
}

c_tests_with_modes! {
    // Under an address-space limit, what is kept gives way, and regions
    // take address space in proportion to what they serve.
    oom_headroom => "oom_headroom", ["cache", "region"];
    // An idle thread's cache is given back by malloc_trim from another
    // thread, and by the decay driven by another thread's frees.
    idle_thread => "idle_thread", ["trim", "decay"];
}

/// The generated header: only meaningful when compiling against it.
#[test]
fn header_linked() {
    run_c_program("header", Config::Linked);
}

/// A stale pointer to a freed large block faults at once (SIGSEGV): a
/// cached mapping (48 MiB) and one unmapped at once (the cache off), in
/// the default and the debug mode; a span of a region grown by `realloc`
/// beyond the spans' limit; in the debug mode a span of a region (1 MiB)
/// too, and the old address of one `realloc` moved. A live block, and one
/// reused after a free, stay usable.
#[test]
fn freed_large_blocks_fault_when_touched() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let lib = library();
    for config in [Config::Preload, Config::Linked] {
        let exe = compile_c("large_use_after_free", config);
        let cases: &[(&str, &str, Env)] = &[
            ("50331648", "read", &[]),
            ("50331648", "write", &[]),
            ("50331648", "read", &[("PYMALLOC_LARGE_CACHE", "0")]),
            ("3145728", "grown", &[]),
            ("50331648", "read", DEBUG),
            ("1048576", "read", DEBUG),
            ("1048576", "write", DEBUG),
            ("1048576", "moved", DEBUG),
            ("1048576", "live", &[]),
            ("50331648", "live", &[]),
            ("1048576", "live", DEBUG),
        ];
        for (size, how, env) in cases {
            let mut cmd = Command::new(&exe);
            clean_env(&mut cmd).args([size, how]).envs(env.iter().copied());
            if config == Config::Preload {
                cmd.env("LD_PRELOAD", &lib);
            }
            // SAFETY: setrlimit is async-signal-safe; no core dumps for
            // the expected crashes.
            unsafe {
                cmd.pre_exec(|| {
                    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    libc::setrlimit(libc::RLIMIT_CORE, &none);
                    Ok(())
                });
            }
            let what = format!("large_use_after_free {size} {how} ({config:?}, {env:?})");
            let r = run(cmd, TIMEOUT, &what);
            if *how == "live" {
                r.assert_success(&what);
            } else {
                assert_eq!(r.status.signal(), Some(libc::SIGSEGV), "{what}: got {}\n{}", r.status_text(), r.stderr);
            }
        }
    }
}
