//! The differential fuzzer (`tests/c/fuzz_diff.c`): random calls of
//! every allocation function over every size range, each block written
//! only in part, in one thread and in several with blocks handed between
//! them and forks whose children keep allocating. Each run is made under
//! glibc and under the library (preloaded: in the default mode, without
//! thread caches, and in the debug mode), and what glibc defines of the
//! outcomes (the digests the program prints) must be the same; the
//! library's statistics are checked against the program's ledger.
//!
//! Briefly here; longer runs with `PYMALLOC_FUZZ_OPS` (calls per thread,
//! default 100000) and `PYMALLOC_FUZZ_SEEDS` (seeds 1..=N, default 2).

mod common;

use common::{Config, check_binding, clean_env, compile_c, library, run};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(600);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The library's configurations the fuzzer runs under.
const MODES: &[(&str, &[(&str, &str)])] = &[
    ("default", &[]),
    ("no thread caches", &[("PYMALLOC_THREAD_CACHE", "0")]),
    ("debug", &[("PYMALLOC_DEBUG", "1")]),
];

/// Runs `fuzz_diff ops seed threads forks` under glibc and under every
/// mode of the library; the outputs must match.
fn differential(threads: u32, forks: u32) {
    let exe = compile_c("fuzz_diff", Config::Preload);
    let ops = env_number("PYMALLOC_FUZZ_OPS", 100_000) / u64::from(threads).max(1);
    let lib = library();
    for seed in 1..=env_number("PYMALLOC_FUZZ_SEEDS", 2) {
        let args = [ops.to_string(), seed.to_string(), threads.to_string(), forks.to_string()];
        let command = || {
            let mut cmd = Command::new(&exe);
            clean_env(&mut cmd).args(&args);
            cmd
        };
        let what = format!("fuzz_diff {}", args.join(" "));
        let glibc = run(command(), TIMEOUT, &format!("{what} (glibc)"));
        glibc.assert_success(&format!("{what} (glibc)"));
        assert!(glibc.stdout.contains("digest"), "{what}: no digest under glibc:\n{}", glibc.stdout);
        let mut probe = command();
        probe.env("LD_PRELOAD", &lib).env("PYMALLOC_BINDING_PROBE", "1");
        check_binding(probe, &lib, &[&exe.to_string_lossy()], &what);
        for (mode, env) in MODES {
            let mut cmd = command();
            cmd.env("LD_PRELOAD", &lib).envs(env.iter().copied());
            let what = format!("{what} ({mode})");
            let ours = run(cmd, TIMEOUT, &what);
            ours.assert_success(&what);
            assert_eq!(ours.stdout, glibc.stdout, "{what}: outcomes differ from glibc's");
        }
    }
}

#[test]
fn one_thread() {
    differential(1, 0);
}

#[test]
fn threads_handing_blocks_over_and_forking() {
    differential(4, 3);
}

#[test]
fn eight_threads() {
    differential(8, 1);
}
