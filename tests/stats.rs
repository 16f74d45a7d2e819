//! Statistics in whole processes: the C API, the reports printed at exit
//! (text and JSON, to stderr or a file per process), through fork and
//! with threads still running.

mod common;

use common::{Config, clean_env, compile_c, fresh_dir, library, python_executable, run, without_options};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn command(program: &Path, preload: bool, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    without_options(clean_env(&mut cmd));
    if preload {
        cmd.env("LD_PRELOAD", library()).env("PYTHONMALLOC", "malloc");
    }
    cmd.envs(vars.iter().copied());
    cmd
}

/// Checks the text report's layout; returns its summary rows by label.
fn check_text_report(text: &str) -> Vec<(String, u64)> {
    let start = text.find("pymalloc ").unwrap_or_else(|| panic!("no report in:\n{text}"));
    let report = &text[start..];
    assert!(report.contains("\nclass   size   num pools   blocks in use  avail blocks\n"), "{report}");
    assert!(report.contains("\n-----   ----   ---------   -------------  ------------\n"), "{report}");
    assert!(report.contains("\nlarge   mmap "), "no large row:\n{report}");
    let class_rows = report
        .lines()
        .filter(|l| l.split_whitespace().count() == 5 && l.split_whitespace().all(|w| w.parse::<u64>().is_ok()))
        .count();
    assert!(class_rows > 0, "no class rows:\n{report}");
    let rows: Vec<(String, u64)> = report
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(|l| {
            let (label, value) = l.split_once('=').unwrap();
            (label.trim().to_string(), value.trim().replace(',', "").parse().unwrap())
        })
        .collect();
    for label in [
        "arenas allocated total",
        "arenas allocated current",
        "bytes in small blocks",
        "bytes in medium blocks",
        "bytes in large blocks",
        "bytes mapped",
        "bytes returned to the OS",
    ] {
        assert!(rows.iter().any(|(l, _)| l == label), "no row `# {label}` in:\n{report}");
    }
    rows
}

#[test]
fn c_api_follows_allocations() {
    let exe = compile_c("stats_api", Config::Linked);
    let r = run(command(&exe, false, &[]), TIMEOUT, "stats_api");
    r.assert_success("stats_api");
    check_text_report(&r.stderr);
}

/// The debug mode's quarantined blocks count apart, not as in use.
#[test]
fn quarantine_is_not_in_use() {
    let exe = compile_c("quarantine_stats", Config::Linked);
    let vars = [("PYMALLOC_DEBUG", "1"), ("PYMALLOC_DEBUG_QUARANTINE", "64M")];
    let r = run(command(&exe, false, &vars), TIMEOUT, "quarantine_stats");
    r.assert_success("quarantine_stats");
    let line = r.stderr.lines().find(|l| l.starts_with("quarantined bytes="));
    assert_eq!(line.map(|l| l.split('=').nth(1).unwrap().trim()), Some("0"), "malloc_stats:\n{}", r.stderr);
}

#[test]
fn text_report_at_exit() {
    let py = python_executable().expect("python3");
    let script = "d = {i: str(i) * 50 for i in range(30000)}; b = bytearray(1 << 20); print(len(d))";
    let mut cmd = command(&py, true, &[("PYMALLOC_SHOW_STATS", "1")]);
    cmd.args(["-c", script]);
    let r = run(cmd, TIMEOUT, "python3 with PYMALLOC_SHOW_STATS=1");
    r.assert_success("python3");
    assert_eq!(r.stdout, "30000\n");
    assert!(r.stderr.starts_with("pymalloc "), "report not alone on stderr:\n{}", r.stderr);
    let rows = check_text_report(&r.stderr);
    let get = |label: &str| rows.iter().find(|(l, _)| l == label).unwrap().1;
    // At exit python has freed most objects; the peaks remain.
    assert!(get("arenas highwater mark") >= 5, "30000 strings of ~250 bytes need arenas");
    assert!(get("bytes mapped, peak") >= 5 << 20);
    assert!(get("blocks in use, all sizes") > 0);
    assert_eq!(
        get("bytes in arenas"),
        get("bytes in small blocks")
            + get("bytes in medium blocks")
            + get("bytes in available blocks")
            + get("bytes in unused pools")
            + get("bytes lost to quantization")
            + get("bytes in free arenas"),
        "arena bytes do not add up"
    );
}

/// Validates a JSON report with python3's json module, checking that its
/// parts agree; prints "ok".
const CHECK_JSON: &str = r#"
import json, sys
for path in sys.argv[1:]:
    with open(path) as f:
        s = json.load(f)
    t = s["totals"]
    assert len(s["classes"]) == 64, len(s["classes"])
    assert sum(c["blocks_in_use"] for c in s["classes"]) == t["small_blocks"] + t["medium_blocks"]
    assert sum(c["num_pools"] for c in s["classes"]) == t["pools_in_use"]
    assert len(s["arenas"]) == t["arenas"] and not s["arenas_truncated"]
    states = s["pool_states"]
    pools = [p for a in s["arenas"] for p in a["pools"]]
    live = [p for p in pools if states[p[0]] in ("used", "full")]
    assert len(live) == t["pools_in_use"]
    # A pool counts the blocks it handed out, thread caches' included.
    cached = t["thread_cache_blocks"]
    assert sum(p[2] for p in live) == t["small_blocks"] + t["medium_blocks"] + cached
    assert sum(c["avail_blocks"] for c in s["classes"]) >= cached
    assert all(0 < p[2] <= p[3] for p in live)
    assert all(p[2] == p[3] for p in pools if states[p[0]] == "full")
print("ok")
"#;

fn check_json(files: &[&Path]) {
    let py = python_executable().expect("python3");
    let mut cmd = command(&py, false, &[]);
    cmd.args(["-c", CHECK_JSON]).args(files);
    let r = run(cmd, TIMEOUT, "json check");
    r.assert_success(&format!("the JSON reports {files:?}"));
    assert_eq!(r.stdout, "ok\n");
}

#[test]
fn json_report_parses() {
    let dir = fresh_dir("json-report");
    let file = dir.join("stats.json");
    let py = python_executable().expect("python3");
    let vars = [("PYMALLOC_SHOW_STATS", "json"), ("PYMALLOC_STATS_FILE", file.to_str().unwrap())];
    let mut cmd = command(&py, true, &vars);
    cmd.args(["-c", "x = [str(i) * (i % 300) for i in range(50000)]; del x[::3]"]);
    let r = run(cmd, TIMEOUT, "python3 with PYMALLOC_SHOW_STATS=json");
    r.assert_success("python3");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""), "the report goes to the file only");
    check_json(&[&file]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Each process reports at exit (the forked child too), with threads
/// still allocating; without the option, nothing at all.
#[test]
fn exit_reports_through_fork_and_threads() {
    for config in [Config::Preload, Config::Linked] {
        let exe = compile_c("stats_exit", config);
        let preload = config == Config::Preload;
        let r = run(command(&exe, preload, &[]), TIMEOUT, "stats_exit");
        r.assert_success("stats_exit");
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""), "{config:?}: printed without being asked");

        for format in ["text", "json"] {
            let dir = fresh_dir(&format!("exit-{format}"));
            let pattern = dir.join("stats.%p");
            let vars = [("PYMALLOC_SHOW_STATS", format), ("PYMALLOC_STATS_FILE", pattern.to_str().unwrap())];
            let r = run(command(&exe, preload, &vars), TIMEOUT, "stats_exit");
            r.assert_success("stats_exit");
            assert_eq!(r.stderr, "");
            let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
            assert_eq!(files.len(), 2, "{config:?} {format}: want a report from parent and child, got {files:?}");
            if format == "json" {
                check_json(&files.iter().map(|p| p.as_path()).collect::<Vec<_>>());
            } else {
                for f in &files {
                    check_text_report(&std::fs::read_to_string(f).unwrap());
                }
            }
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

/// A heap written mid-run by `pymalloc_write_stats` (through ctypes), and
/// drawn by `scripts/heapmap`.
#[test]
fn heapmap_draws_a_json_report() {
    let dir = fresh_dir("heapmap");
    let (json, png) = (dir.join("stats.json"), dir.join("heap.png"));
    let py = python_executable().expect("python3");
    let mut cmd = command(&py, true, &[]);
    cmd.arg(common::repo_root().join("scripts/bench.d/heapdemo.py")).arg(&json);
    run(cmd, TIMEOUT, "heapdemo.py").assert_success("heapdemo.py");
    check_json(&[&json]);

    let mut cmd = command(&py, false, &[]);
    cmd.arg(common::repo_root().join("scripts/heapmap")).arg(&json).arg("-o").arg(&png);
    run(cmd, TIMEOUT, "scripts/heapmap").assert_success("scripts/heapmap (needs matplotlib: pip install matplotlib)");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000, "not a picture: {} bytes", bytes.len());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A stats file that cannot be created: one line says so, and the report
/// goes to stderr instead.
#[test]
fn unwritable_stats_file_falls_back_to_stderr() {
    let exe = compile_c("stats_exit", Config::Preload);
    let vars = [("PYMALLOC_SHOW_STATS", "text"), ("PYMALLOC_STATS_FILE", "/nonexistent-dir/stats")];
    let r = run(command(&exe, true, &vars), TIMEOUT, "stats_exit");
    r.assert_success("stats_exit");
    let warning = "pymalloc: cannot open PYMALLOC_STATS_FILE, statistics go to stderr\n";
    assert_eq!(r.stderr.matches(warning).count(), 2, "parent and child each warn once:\n{}", r.stderr);
    assert_eq!(r.stderr.matches("\nclass   size   num pools").count(), 2, "{}", r.stderr);
}
