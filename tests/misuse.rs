//! Heap misuse is stopped: each case of `tests/c/misuse.c` must abort
//! (exit status 134, SIGABRT) after writing exactly the expected line on
//! stderr, preloaded and linked, in the default mode and in the debug
//! mode (`PYMALLOC_DEBUG=1`, with a quarantine).

#[macro_use]
mod common;

use common::{Config, check_abort, clean_env, compile_c, library};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The program, compiled once per configuration for all the tests (which
/// run in parallel threads).
fn program(config: Config) -> &'static PathBuf {
    static PRELOAD: OnceLock<PathBuf> = OnceLock::new();
    static LINKED: OnceLock<PathBuf> = OnceLock::new();
    let cell = if config == Config::Preload { &PRELOAD } else { &LINKED };
    cell.get_or_init(|| compile_c("misuse", config))
}

/// Runs one case with the extra environment `env`; checks the abort and
/// the message.
fn run_case(case: &str, config: Config, env: &[(&str, &str)]) {
    let exe = program(config);
    let mut cmd = Command::new(exe);
    clean_env(&mut cmd).arg(case).envs(env.iter().copied());
    if config == Config::Preload {
        cmd.env("LD_PRELOAD", library());
    }
    check_abort(cmd, &format!("misuse {case} ({config:?}, {env:?})"));
}

const DEBUG: &[(&str, &str)] = &[("PYMALLOC_DEBUG", "1"), ("PYMALLOC_DEBUG_QUARANTINE", "1M")];
const NO_QUARANTINE: &[(&str, &str)] = &[("PYMALLOC_DEBUG", "1"), ("PYMALLOC_DEBUG_QUARANTINE", "0")];

// Misuse only the debug mode sees.
tests_in_configs! {
    run_case, {
        debug_preload: Config::Preload, DEBUG;
        debug_linked: Config::Linked, DEBUG;
        debug_default_quarantine: Config::Preload, &[("PYMALLOC_DEBUG", "1")];
    };
    overflow => "overflow";
    overflow_far => "overflow-far";
    underflow => "underflow";
    check_heap_overflow => "check-heap-overflow";
}

// Writes after free: seen when the quarantine lets the block go.
tests_in_configs! {
    run_case, {
        debug_preload: Config::Preload, DEBUG;
        debug_linked: Config::Linked, DEBUG;
        debug_default_quarantine: Config::Preload, &[("PYMALLOC_DEBUG", "1")];
    };
    write_after_free => "write-after-free";
    write_after_free_small => "write-after-free-small";
    write_after_free_small_reuse => "write-after-free-small-reuse";
    check_heap_write_after_free => "check-heap-write-after-free";
}

// With no quarantine: seen when the heap hands the block out again.
tests_in_configs! {
    run_case, {
        debug_preload: Config::Preload, NO_QUARANTINE;
        debug_linked: Config::Linked, NO_QUARANTINE;
    };
    write_after_free_reused => "write-after-free-reused";
}

tests_in_configs! {
    run_case, four(DEBUG);
    double_free_small => "double-free-small";
    double_free_medium => "double-free-medium";
    double_free_other_thread_small => "double-free-other-thread-small";
    double_free_other_thread_medium => "double-free-other-thread-medium";
    double_free_parked_small => "double-free-parked-small";
    double_free_parked_medium => "double-free-parked-medium";
    double_free_large => "double-free-large";
    double_free_large_unmapped => "double-free-large-unmapped";
    double_free_last_in_pool => "double-free-last-in-pool";
    double_free_after_realloc => "double-free-after-realloc";
    free_stack => "free-stack";
    free_data_segment => "free-data-segment";
    free_interior => "free-interior";
    free_interior_large => "free-interior-large";
    free_never_handed_out => "free-never-handed-out";
    free_into_freed_large => "free-into-freed-large";
    realloc_stack => "realloc-stack";
    realloc_interior => "realloc-interior";
    realloc_freed => "realloc-freed";
    realloc_freed_large => "realloc-freed-large";
    usable_size_stack => "usable-size-stack";
    usable_size_freed => "usable-size-freed";
    corrupt_free_list => "corrupt-free-list";
    corrupt_free_list_zeroed => "corrupt-free-list-zeroed";
    free_sized_too_big => "free-sized-too-big";
    free_sized_smaller_class => "free-sized-smaller-class";
    free_sized_large => "free-sized-large";
    free_sized_double => "free-sized-double";
    free_sized_stack => "free-sized-stack";
    free_aligned_sized_not_power_of_two => "free-aligned-sized-not-power-of-two";
    free_aligned_sized_misaligned => "free-aligned-sized-misaligned";
    free_aligned_sized_wrong_size => "free-aligned-sized-wrong-size";
}

/// Random misuse after random allocations (`random-SEED` in misuse.c):
/// seeds 1..=N, N from PYMALLOC_FUZZ_SEEDS (default 25), in both modes.
#[test]
fn random_misuse() {
    let seeds: u64 = std::env::var("PYMALLOC_FUZZ_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    for seed in 1..=seeds {
        let case = format!("random-{seed}");
        let config = if seed % 2 == 0 { Config::Preload } else { Config::Linked };
        run_case(&case, config, &[]);
        run_case(&case, config, DEBUG);
    }
}
