//! Real programs under `LD_PRELOAD=libpymalloc.so`: python3 (with
//! `PYTHONMALLOC=malloc`), sqlite3, gcc, git and bash. Each checks its real
//! output, usually against the same run under glibc. A program that is not
//! installed fails its test, unless `PYMALLOC_TESTS_ALLOW_MISSING` names it.

mod common;

use common::{
    check_binding, clean_env, python_executable, require_tool, fresh_dir, library, repo_root, run, run_with_input,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

/// A command for `prog` with a clean environment, preloading the library
/// when `preload` is set.
fn command(prog: &Path, preload: bool) -> Command {
    let mut cmd = Command::new(prog);
    clean_env(&mut cmd);
    if preload {
        cmd.env("LD_PRELOAD", library());
    }
    cmd
}

/// The python the tests run (`PYMALLOC_TEST_PYTHON`, else python3), the
/// executable itself, so that the binding check looks at the right process.
fn python() -> Option<PathBuf> {
    python_executable()
}

#[test]
fn python_workload() {
    let Some(py) = python() else { return };
    let lib = library();
    let mut probe = command(&py, true);
    probe.env("PYTHONMALLOC", "malloc").args(["-c", "pass"]);
    check_binding(probe, &lib, &[], "python3");

    let script = repo_root().join("tests/python/workload.py");
    let go = |preload: bool| {
        let mut cmd = command(&py, preload);
        cmd.env("PYTHONMALLOC", "malloc")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(&script);
        let what = format!(
            "python3 workload.py ({})",
            if preload { "LD_PRELOAD" } else { "glibc" }
        );
        let r = run(cmd, TIMEOUT, &what);
        r.assert_success(&what);
        r.stdout
    };
    let glibc = go(false);
    let ours = go(true);
    assert!(
        glibc.starts_with("ok ") && glibc.lines().count() == 1,
        "unexpected glibc output: {glibc:?}"
    );
    assert_eq!(
        ours, glibc,
        "python3 workload output differs from the glibc run"
    );
}

const SQL: &str = "
CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)
  INSERT INTO t SELECT x, x % 1000, printf('row-%06d-%s', x, hex(x * x)) FROM c;
CREATE INDEX t_k ON t (k);
SELECT count(*), sum(id), sum(length(v)) FROM t;
SELECT k, count(*), sum(id) FROM t WHERE k IN (0, 1, 999) GROUP BY k ORDER BY k;
SELECT count(DISTINCT v) FROM t;
SELECT sum(id) FROM (SELECT id FROM t ORDER BY v DESC LIMIT 50000);
SELECT v FROM t ORDER BY hex(v) DESC LIMIT 1;
";

#[test]
fn sqlite3_cli() {
    let Some(sqlite) = require_tool("sqlite3") else {
        return;
    };
    let lib = library();
    let mut probe = command(&sqlite, true);
    probe.args([":memory:", "SELECT 1;"]);
    check_binding(probe, &lib, &[], "sqlite3");

    let go = |preload: bool| {
        let mut cmd = command(&sqlite, preload);
        cmd.arg(":memory:");
        let what = format!("sqlite3 ({})", if preload { "LD_PRELOAD" } else { "glibc" });
        let r = run_with_input(&mut cmd, Some(SQL.as_bytes()), TIMEOUT, &what);
        r.assert_success(&what);
        assert!(r.stderr.is_empty(), "{what} wrote to stderr:\n{}", r.stderr);
        r.stdout
    };
    let glibc = go(false);
    let ours = go(true);
    let lines: Vec<&str> = ours.lines().collect();
    assert!(lines.len() == 7, "unexpected sqlite3 output:\n{ours}");
    assert!(
        lines[0].starts_with("100000|5000050000|"),
        "count/sum wrong: {}",
        lines[0]
    );
    assert_eq!(
        &lines[1..4],
        &["0|100|5050000", "1|100|4950100", "999|100|5049900"]
    );
    assert_eq!(lines[4], "100000");
    assert_eq!(ours, glibc, "sqlite3 output differs from the glibc run");
}

#[test]
fn gcc_compiles() {
    let Some(gcc) = require_tool("gcc") else { return };
    let lib = library();
    let dir = fresh_dir("gcc");
    let src = repo_root().join("tests/c/realloc_contents.c");
    // cc1, as and ld all run under the preload; cc1 is where the work is.
    let mut probe = command(&gcc, true);
    probe
        .env("TMPDIR", &dir)
        .args(["-O2", "-c", "-o"])
        .arg(dir.join("probe.o"))
        .arg(&src);
    check_binding(probe, &lib, &["gcc", "cc1"], "gcc");

    let compile = |preload: bool, obj: &str| {
        let mut cmd = command(&gcc, preload);
        cmd.env("TMPDIR", &dir)
            .args(["-O2", "-g", "-Wall", "-c", "-o"])
            .arg(dir.join(obj))
            .arg(&src);
        let what = format!("gcc -c ({})", if preload { "LD_PRELOAD" } else { "glibc" });
        let r = run(cmd, TIMEOUT, &what);
        r.assert_success(&what);
        assert!(
            r.stderr.is_empty(),
            "{what} printed diagnostics:\n{}",
            r.stderr
        );
        std::fs::read(dir.join(obj)).unwrap()
    };
    let ours = compile(true, "ours.o");
    let glibc = compile(false, "glibc.o");
    assert!(
        ours == glibc,
        "the object file compiled under the preload differs from the glibc one"
    );

    let exe = dir.join("realloc_contents");
    let mut link = command(&gcc, true);
    link.env("TMPDIR", &dir)
        .args(["-pthread", "-o"])
        .arg(&exe)
        .arg(dir.join("ours.o"));
    run(link, TIMEOUT, "gcc (link)").assert_success("gcc (link)");
    // The produced program runs (on glibc: this checks the compiler's output).
    run(command(&exe, false), TIMEOUT, "the program gcc built")
        .assert_success("the program gcc built");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A git session in a fresh repository: init, a few hundred files, two
/// commits, log, gc, fsck. Returns what it saw.
fn git_session(git: &Path, preload: bool) -> String {
    let label = if preload { "preload" } else { "glibc" };
    let dir = fresh_dir(&format!("git-{label}"));
    let home = dir.join("home");
    let repo = dir.join("repo");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(repo.join("src/deep/er")).unwrap();
    let git_cmd = |args: &[&str]| {
        let mut cmd = command(git, preload);
        cmd.current_dir(&repo)
            .env("HOME", &home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.com")
            .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .args(["-c", "gc.autoDetach=false", "-c", "core.autocrlf=false"])
            .args(args);
        let what = format!("git {} ({label})", args.join(" "));
        let r = run(cmd, TIMEOUT, &what);
        r.assert_success(&what);
        r.stdout
    };
    git_cmd(&["init", "-q", "-b", "main", "."]);
    let write_files = |round: usize| {
        for i in 0..300 {
            let sub = ["", "src/", "src/deep/", "src/deep/er/"][i % 4];
            let body: String = (0..(i % 40 + 1))
                .map(|l| {
                    format!(
                        "file {i} line {l} round {}\n",
                        if i % 3 == 0 { round } else { 0 }
                    )
                })
                .collect();
            std::fs::write(repo.join(format!("{sub}f{i:03}.txt")), body).unwrap();
        }
    };
    write_files(1);
    git_cmd(&["add", "."]);
    git_cmd(&["commit", "-q", "-m", "first commit"]);
    write_files(2);
    git_cmd(&["add", "-A"]);
    git_cmd(&["commit", "-q", "-m", "second commit"]);
    let log = git_cmd(&["log", "--format=%H %s"]);
    let stat = git_cmd(&["diff", "--shortstat", "HEAD~1", "HEAD"]);
    let files = git_cmd(&["ls-files"]);
    git_cmd(&["gc", "-q", "--aggressive"]);
    git_cmd(&["fsck", "--strict", "--no-progress"]);
    let objects = git_cmd(&["count-objects", "-v"]);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(log.lines().count(), 2, "git log ({label}):\n{log}");
    assert!(
        log.lines().next().unwrap().ends_with(" second commit"),
        "git log ({label}):\n{log}"
    );
    assert_eq!(
        files.lines().count(),
        300,
        "git ls-files ({label}) listed {} files",
        files.lines().count()
    );
    assert!(
        stat.contains("100 files changed"),
        "git diff --shortstat ({label}): {stat}"
    );
    assert!(
        objects.lines().any(|l| l == "count: 0"),
        "loose objects after gc ({label}):\n{objects}"
    );
    let in_pack = objects
        .lines()
        .find(|l| l.starts_with("in-pack: "))
        .unwrap_or("in-pack: ?")
        .to_string();
    // 300 files x 2 versions (100 changed) + trees + commits
    format!("{log}{stat}{in_pack}")
}

#[test]
fn git_repository() {
    let Some(git) = require_tool("git") else { return };
    let lib = library();
    let mut probe = command(&git, true);
    probe.arg("--version");
    check_binding(probe, &lib, &[], "git");
    let ours = git_session(&git, true);
    let glibc = git_session(&git, false);
    assert_eq!(
        ours, glibc,
        "git produced different history/objects under the preload"
    );
}

const BASH_SCRIPT: &str = r#"
a=()
for ((i = 0; i < 100000; i++)); do a+=("item$(( i * 7919 % 100003 ))"); done
echo "${#a[@]}"
s=0
for x in "${a[@]}"; do s=$(( s + ${x#item} )); done
echo "$s"
declare -A m
for ((i = 0; i < 20000; i++)); do m["k$i"]=$(( i * i )); done
echo "${#m[@]}"
t=0
for k in "${!m[@]}"; do t=$(( t + ${m[$k]} )); done
echo "$t"
str=""
for ((i = 0; i < 20000; i++)); do str+="x$i"; done
echo "${#str}"
"#;

#[test]
fn bash_arrays() {
    let Some(bash) = require_tool("bash") else { return };
    let lib = library();
    let mut probe = command(&bash, true);
    probe.args(["-c", "a=(1 2 3); echo ${#a[@]}"]);
    check_binding(probe, &lib, &[], "bash");

    let go = |preload: bool| {
        let mut cmd = command(&bash, preload);
        cmd.args(["--norc", "--noprofile", "-c", BASH_SCRIPT]);
        let what = format!("bash ({})", if preload { "LD_PRELOAD" } else { "glibc" });
        let r = run(cmd, TIMEOUT, &what);
        r.assert_success(&what);
        r.stdout
    };
    let sum: u64 = (0..100_000u64).map(|i| i * 7919 % 100_003).sum();
    let squares: u64 = (0..20_000u64).map(|i| i * i).sum();
    let str_len: usize = (0..20_000).map(|i: u32| 1 + i.to_string().len()).sum();
    let expected = format!("100000\n{sum}\n20000\n{squares}\n{str_len}\n");
    let ours = go(true);
    assert_eq!(ours, expected, "bash output under the preload");
    assert_eq!(go(false), expected, "bash output under glibc");
}
