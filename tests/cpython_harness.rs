//! `scripts/cpython-tests` must never pass without testing. Its parser is
//! checked on saved outputs of every regrtest format by `--self-test`
//! (run by `scripts/test`); here it runs two real CPython test modules
//! under glibc and under a configuration that aborts in one of them, and
//! must report real passes for the one and fail for the other.

mod common;

use common::{clean_env, fresh_dir, library, python_executable, repo_root, run};
use std::process::Command;
use std::time::Duration;

#[test]
fn a_broken_configuration_fails_the_comparison() {
    let Some(py) = python_executable() else { return };
    let dir = fresh_dir("cpython-harness");
    let shim = dir.join("abort_in_module.so");
    let src = repo_root().join("tests/c/abort_in_module.c");
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-shared", "-fPIC", "-o"]).arg(&shim).arg(&src);
    run(gcc, Duration::from_secs(120), "gcc abort_in_module.c").assert_success("gcc abort_in_module.c");

    let harness = |broken: Option<&str>| {
        let mut cmd = Command::new(&py);
        clean_env(&mut cmd)
            .arg(repo_root().join("scripts/cpython-tests"))
            .arg("--python")
            .arg(&py)
            .args(["--configs", "glibc,ours", "--strict", "--require-pass", "-j", "2"])
            .args(["--timeout", "120", "--logdir"])
            .arg(dir.join("logs"))
            .arg("--preload")
            .arg(format!("{}:{}", shim.display(), library().display()))
            .args(["test_bool", "test_int"]);
        if let Some(module) = broken {
            cmd.env("PYMALLOC_BROKEN_ARG", module);
        }
        run(cmd, Duration::from_secs(600), "scripts/cpython-tests")
    };
    // The table's row of one configuration: its count of each state.
    let row = |out: &str, config: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(config) && words.next().is_some_and(|w| w.parse::<u32>().is_ok())
            })
            .unwrap_or_else(|| panic!("no row for {config} in:\n{out}"));
        line.split_whitespace().skip(1).take(8).map(String::from).collect()
    };
    // passed flaky env-changed skipped failed crashed timed-out error
    let both_passed: Vec<String> = ["2", "0", "0", "0", "0", "0", "0", "0"].map(String::from).to_vec();

    let good = harness(None);
    good.assert_success("scripts/cpython-tests, nothing broken");
    assert_eq!(row(&good.stdout, "glibc"), both_passed, "{}", good.stdout);
    assert_eq!(row(&good.stdout, "ours"), both_passed, "{}", good.stdout);

    let bad = harness(Some("test_int"));
    assert_eq!(bad.status.code(), Some(1), "a module crashing under ours must fail the run ({}):\n{}\n{}",
        bad.status_text(), bad.stdout, bad.stderr);
    assert_eq!(row(&bad.stdout, "glibc"), both_passed, "{}", bad.stdout);
    assert_eq!(row(&bad.stdout, "ours"), ["1", "0", "0", "0", "0", "1", "0", "0"].map(String::from).to_vec(),
        "{}", bad.stdout);
    assert!(
        bad.stdout.lines().any(|l| l.starts_with("! test_int") && l.ends_with("crashed")),
        "test_int is not reported as a regression:\n{}",
        bad.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}
