//! `PYMALLOC_*` options in whole processes: silence by default, one
//! warning for a bad value, `PYMALLOC_VERBOSE`, and options honoured when
//! the first allocation comes before libc has initialised itself; memory
//! returned by `malloc_trim` and as `PYMALLOC_DECAY_MS` and
//! `PYMALLOC_LARGE_CACHE` say.

mod common;

use common::{Config, clean_env, compile_c, library, python_executable, run, without_options};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A command with every `PYMALLOC_*` variable removed, then `vars` set.
fn command(program: &str, args: &[&str], preload: bool, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    without_options(clean_env(&mut cmd)).args(args);
    if preload {
        cmd.env("LD_PRELOAD", library()).env("PYTHONMALLOC", "malloc");
    }
    cmd.envs(vars.iter().copied());
    cmd
}

fn output(cmd: Command, what: &str) -> (String, String) {
    let r = run(cmd, TIMEOUT, what);
    r.assert_success(what);
    (r.stdout, r.stderr)
}

fn python() -> String {
    python_executable().expect("python3 is needed").to_string_lossy().into_owned()
}

const PYTHON_SCRIPT: &str = "import json, sys; d = {str(i): [i] * 10 for i in range(20000)}; \
                             print(len(json.dumps(d))); print('to stderr', file=sys.stderr)";

#[test]
fn silent_by_default() {
    let py = python();
    let python = |preload| output(command(&py, &["-c", PYTHON_SCRIPT], preload, &[]), "python3");
    assert_eq!(python(true), python(false), "python3's output differs under the allocator");
    let exe = compile_c("api_edge", Config::Preload);
    let exe = exe.to_str().unwrap();
    let c = |preload| output(command(exe, &[], preload, &[]), "api_edge");
    assert_eq!(c(true), c(false), "a C program's output differs under the allocator");
}

#[test]
fn bad_value_warns_once_and_keeps_the_default() {
    let vars = [("PYMALLOC_SHOW_STATS", "sometimes"), ("PYMALLOC_DEBUG", "2")];
    let (stdout, stderr) = output(command(&python(), &["-c", PYTHON_SCRIPT], true, &vars), "python3");
    assert_eq!(stdout.lines().count(), 1);
    let mut lines: Vec<&str> = stderr.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "pymalloc: ignoring PYMALLOC_DEBUG=2: expected 1/0, yes/no, on/off or true/false",
            "pymalloc: ignoring PYMALLOC_SHOW_STATS=sometimes: expected 0/off, 1/text or json",
            "to stderr",
        ],
        "each bad value must be reported exactly once"
    );
}

fn verbose_listing(show_stats: &str, debug: &str) -> String {
    format!(
        "pymalloc {}: options\npymalloc:   PYMALLOC_SHOW_STATS={show_stats}\n\
         pymalloc:   PYMALLOC_STATS_FILE=\n\
         pymalloc:   PYMALLOC_VERBOSE=1\npymalloc:   PYMALLOC_DEBUG={debug}\n\
         pymalloc:   PYMALLOC_DEBUG_QUARANTINE=1048576\n\
         pymalloc:   PYMALLOC_DECAY_MS=250\npymalloc:   PYMALLOC_LARGE_CACHE=67108864\n\
         pymalloc:   PYMALLOC_THREAD_CACHE=524288\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[test]
fn verbose_prints_the_resolved_options_once() {
    let vars = [("PYMALLOC_VERBOSE", "yes"), ("PYMALLOC_DEBUG", " off ")];
    let (_, stderr) = output(command(&python(), &["-c", PYTHON_SCRIPT], true, &vars), "python3");
    assert_eq!(stderr, verbose_listing("0", "0") + "to stderr\n");
}

/// A `.preinit_array` function runs before libc sets `environ`: the first
/// allocation must still see the options (from the initial stack).
#[test]
fn options_are_read_before_libc_is_initialised() {
    let vars = [("PYMALLOC_VERBOSE", "on"), ("PYMALLOC_DEBUG", "true")];
    for config in [Config::Preload, Config::Linked] {
        let exe = compile_c("preinit_alloc", config);
        let (stdout, stderr) = output(
            command(exe.to_str().unwrap(), &[], config == Config::Preload, &vars),
            &format!("preinit_alloc ({config:?})"),
        );
        assert_eq!(stdout, "");
        assert_eq!(stderr, verbose_listing("0", "1"), "{config:?}");
    }
}

/// `malloc_trim`, `PYMALLOC_DECAY_MS` and `PYMALLOC_LARGE_CACHE` in a real
/// process, for the heap, large blocks and the depot, and the footprint
/// pools and free spans share
/// (`tests/c/memory_return.c` checks the statistics).
#[test]
fn memory_goes_back_to_the_os_as_the_options_say() {
    let exe = compile_c("memory_return", Config::Linked);
    let exe = exe.to_str().unwrap();
    type Env = &'static [(&'static str, &'static str)];
    let cases: &[(&[&str], Env)] = &[
        (&["trim"], &[]),
        (&["trim", "blocks"], &[]),
        (&["decay", "blocks", "released"], &[("PYMALLOC_DECAY_MS", "50")]),
        (&["decay", "blocks", "kept"], &[("PYMALLOC_DECAY_MS", "60000")]),
        (&["decay", "released"], &[("PYMALLOC_DECAY_MS", "50")]),
        (&["decay", "kept"], &[("PYMALLOC_DECAY_MS", "60000")]),
        (&["cache", "1"], &[]),
        (&["cache", "2"], &[("PYMALLOC_LARGE_CACHE", "100M")]),
        (&["cache", "0"], &[("PYMALLOC_LARGE_CACHE", "0")]),
        (&["cache", "1"], &[("PYMALLOC_LARGE_CACHE", "40M")]),
        (&["cache", "0"], &[("PYMALLOC_LARGE_CACHE", "39M")]),
        (&["depot", "trim"], &[]),
        (&["depot", "released"], &[("PYMALLOC_DECAY_MS", "50")]),
        (&["depot", "kept"], &[("PYMALLOC_DECAY_MS", "60000")]),
        (&["depot", "fork"], &[("PYMALLOC_DECAY_MS", "60000")]),
        (&["shared"], &[("PYMALLOC_DECAY_MS", "60000")]),
        (&["shared", "pools"], &[("PYMALLOC_DECAY_MS", "60000")]),
        (&["shared", "kept"], &[("PYMALLOC_DECAY_MS", "60000")]),
    ];
    for (args, vars) in cases {
        let what = format!("memory_return {} {vars:?}", args.join(" "));
        let (stdout, stderr) = output(command(exe, args, false, vars), &what);
        assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""), "{what}");
    }
}
