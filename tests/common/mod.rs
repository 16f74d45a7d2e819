//! Helpers shared by the process-level tests (`c_programs.rs`,
//! `real_programs.rs`): find the built library, compile the C programs, run
//! processes with a timeout, and prove with `LD_DEBUG=bindings` that a
//! process's `malloc` really is ours.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`, from this test binary's path `target/<profile>/deps/<name>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
        .to_path_buf()
}

fn profile_name() -> String {
    profile_dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Absolute, canonical path of `target/<profile>/libpymalloc.so`.
pub fn library() -> PathBuf {
    let lib = profile_dir().join("libpymalloc.so");
    if !lib.is_file() {
        let flag = if profile_name() == "release" {
            " --release"
        } else {
            ""
        };
        panic!(
            "{} does not exist: build the library first with `cargo build{flag}` \
             (these tests load the cdylib into other processes)",
            lib.display()
        );
    }
    lib.canonicalize().expect("canonicalize library path")
}

/// The directory holding the library (for `-L` and `-rpath`).
pub fn library_dir() -> PathBuf {
    library().parent().unwrap().to_path_buf()
}

/// A scratch directory `target/<what>/<profile>/<sub>`, created on demand.
pub fn scratch_dir(what: &str, sub: &str) -> PathBuf {
    let dir = profile_dir()
        .parent()
        .unwrap()
        .join(what)
        .join(profile_name())
        .join(sub);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A fresh, empty scratch directory for one test run (removed by the caller).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch_dir("real-tests", &format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How a C test program gets the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Built against glibc alone, run with `LD_PRELOAD=libpymalloc.so`.
    Preload,
    /// Linked with `-lpymalloc` (and `-rpath` to the library's directory).
    Linked,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Preload => "preload",
            Config::Linked => "linked",
        }
    }
}

/// Compiles `tests/c/<name>.c` for `config`; returns the executable's path.
pub fn compile_c(name: &str, config: Config) -> PathBuf {
    let src = repo_root().join("tests/c").join(format!("{name}.c"));
    // -fno-builtin: every allocator call in the source is a real call.
    compile("gcc", &src, &["-fno-builtin"], scratch_dir("c-tests", config.name()).join(name), config)
}

/// Compiles `tests/cxx/<name>.cc` with g++ (C++17: sized and aligned
/// deletes) for `config`; None if g++ is missing and the tests may skip
/// it (`require_tool`).
pub fn compile_cxx(name: &str, config: Config) -> Option<PathBuf> {
    require_tool("g++")?;
    let src = repo_root().join("tests/cxx").join(format!("{name}.cc"));
    Some(compile("g++", &src, &["-std=c++17"], scratch_dir("cxx-tests", config.name()).join(name), config))
}

/// Compiles `src` with `compiler` into `out`, linked with the library
/// for `Config::Linked`.
fn compile(compiler: &str, src: &Path, flags: &[&str], out: PathBuf, config: Config) -> PathBuf {
    // Built under a private name, then renamed: another test run using the
    // same target directory, or another test thread of this one, may be
    // executing the previous binary or building the same program.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp{}-{build}", std::process::id()));
    let mut cmd = Command::new(compiler);
    cmd.args(["-O2", "-g", "-pthread", "-Wall"]).args(flags).arg("-o").arg(&tmp).arg(src);
    if config == Config::Linked {
        let dir = library_dir();
        cmd.arg(format!("-I{}", repo_root().join("include").display()))
            .arg(format!("-L{}", dir.display()))
            .arg("-lpymalloc")
            .arg(format!("-Wl,-rpath,{}", dir.display()));
    }
    let r = run(
        cmd,
        Duration::from_secs(120),
        &format!("{compiler} {}", src.display()),
    );
    assert!(
        r.status.success(),
        "compiling {} ({}) failed: {}\n{}",
        src.display(),
        config.name(),
        r.status_text(),
        r.stderr
    );
    std::fs::rename(&tmp, &out)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), out.display()));
    out
}

/// For each `name => case`, a module `name` of tests, one per
/// configuration `test: config, env;`, each calling `run(case, config, env)`.
/// `four(debug)` stands for the usual configurations: preloaded and linked,
/// each in the default mode (no extra environment) and with `debug`.
#[allow(unused_macros)]
macro_rules! tests_in_configs {
    (@module $run:ident, $name:ident, $case:literal, { $($test:ident: $config:expr, $env:expr;)* }) => {
        mod $name {
            use super::*;
            $(
                #[test]
                fn $test() {
                    $run($case, $config, $env);
                }
            )*
        }
    };
    ($run:ident, four($debug:expr); $($cases:tt)*) => {
        tests_in_configs! {
            $run, {
                preload: Config::Preload, &[];
                linked: Config::Linked, &[];
                debug_preload: Config::Preload, $debug;
                debug_linked: Config::Linked, $debug;
            };
            $($cases)*
        }
    };
    // The configurations go to the helper arm as one token tree: macro_rules
    // cannot nest their repetition in the cases' (it would pair them up).
    ($run:ident, $configs:tt; $($name:ident => $case:literal;)*) => {$(
        tests_in_configs!(@module $run, $name, $case, $configs);
    )*};
}

/// Runs a misuse program (`tests/c/misuse.c`, `tests/cxx/delete_misuse.cc`)
/// that prints "expect LINE" on stdout and then misuses the heap: it must
/// abort (SIGABRT, exit status 134) after writing exactly LINE on stderr.
pub fn check_abort(mut cmd: Command, what: &str) {
    // SAFETY: setrlimit is async-signal-safe; no core dumps for expected aborts.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let r = run(cmd, Duration::from_secs(60), what);
    let expected = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("expect "))
        .unwrap_or_else(|| panic!("{what}: no expected message on stdout\n{}\n{}", r.stdout, r.stderr));
    assert_eq!(
        r.status.signal(),
        Some(libc::SIGABRT),
        "{what}: expected abort (exit status 134), got {}\n--- stderr ---\n{}",
        r.status_text(),
        r.stderr
    );
    assert_eq!(r.stderr.trim_end(), expected, "{what}: wrong message on stderr");
}

/// The result of one finished process.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// "exit status N" or "killed by signal N".
    pub fn status_text(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!(
                "killed by signal {s}{}",
                if self.status.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            _ => format!("{:?}", self.status),
        }
    }

    /// Panics with the process's output unless it exited with status 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.status_text(),
            tail(&self.stderr, 20_000),
            tail(&self.stdout, 5_000)
        );
    }
}

/// The last `max` bytes of `s` (long outputs make unreadable failures).
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &s[start..])
}

/// Runs `cmd` (stdin from /dev/null, output captured) in its own process
/// group; on timeout kills the whole group and panics.
pub fn run(mut cmd: Command, timeout: Duration, what: &str) -> Run {
    run_with_input(cmd.stdin(Stdio::null()), None, timeout, what)
}

/// As `run`, feeding `input` to the process's stdin.
pub fn run_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
    what: &str,
) -> Run {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pgid = child.id();
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        let _ = tx.send((true, v));
    });
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        let _ = tx2.send((false, v));
    });
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        });
    }
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > timeout {
            let stacks = backtraces(pgid);
            kill_group();
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            while let Ok((is_out, v)) = rx.recv_timeout(Duration::from_secs(2)) {
                if !is_out {
                    stderr = String::from_utf8_lossy(&v).into_owned();
                }
            }
            panic!(
                "{what} did not finish within {timeout:?} and was killed (hang?)\n--- stderr ---\n{}\n{stacks}",
                tail(&stderr, 20_000)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Both pipes close when every process holding them has exited.
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(5));
        match rx.recv_timeout(left) {
            Ok((true, v)) => stdout = Some(v),
            Ok((false, v)) => stderr = Some(v),
            Err(_) => {
                kill_group();
                panic!("{what} exited ({status:?}) but a process it started kept its output open");
            }
        }
    }
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout.unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.unwrap()).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// The stacks of every thread of every process in the hung process group
/// (at most 5 processes), if gdb is installed.
fn backtraces(pgid: u32) -> String {
    if find_tool("gdb").is_none() {
        return String::from("(install gdb to get the hung process's stacks here)");
    }
    let mut pids = vec![pgid.to_string()];
    if let Ok(out) = Command::new("pgrep")
        .args(["-g", &pgid.to_string()])
        .output()
    {
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from),
        );
    }
    pids.dedup();
    let mut report = String::new();
    for pid in pids.iter().take(5) {
        let mut gdb = Command::new("gdb");
        clean_env(&mut gdb).args(["-p", pid, "-batch", "-nx", "-ex", "thread apply all bt"]);
        let r = run(gdb, Duration::from_secs(60), "gdb");
        report += &format!(
            "--- stacks of hung process {pid} (gdb) ---\n{}\n",
            tail(&r.stdout, 30_000)
        );
    }
    report
}

/// Removes variables that would change how the dynamic linker or the
/// allocator behave, so runs start from a known state.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for v in [
        "LD_PRELOAD",
        "LD_DEBUG",
        "LD_DEBUG_OUTPUT",
        "LD_LIBRARY_PATH",
        "PYMALLOC_BINDING_PROBE",
        "MALLOC_CHECK_",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Removes every `PYMALLOC_*` variable (the allocator's options), so a
/// test sets exactly the ones it means.
pub fn without_options(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PYMALLOC_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// One line of `LD_DEBUG=bindings` output.
struct Binding<'a> {
    pid: &'a str,
    from: &'a str,
    to: &'a str,
    symbol: &'a str,
}

/// Parses "PID: binding file FROM [0] to TO [0]: normal symbol `SYM' [VER]".
fn parse_binding(line: &str) -> Option<Binding<'_>> {
    let pid = line.split(':').next()?.trim();
    let rest = &line[line.find("binding file ")? + "binding file ".len()..];
    let (from, rest) = rest.split_once(" [")?;
    let rest = &rest[rest.find("] to ")? + "] to ".len()..];
    let (to, rest) = rest.split_once(" [")?;
    let rest = &rest[rest.find("]: normal symbol `")? + "]: normal symbol `".len()..];
    let (symbol, _) = rest.split_once('\'')?;
    Some(Binding {
        pid,
        from,
        to,
        symbol,
    })
}

const ALLOCATOR_SYMBOLS: &[&str] = &["malloc", "free", "calloc", "realloc"];

/// Runs `cmd` once with `LD_DEBUG=bindings` and checks that each of
/// `symbols`, referenced from the file `from` (its full path), binds to
/// `lib`.
pub fn check_symbols_bind(mut cmd: Command, lib: &Path, symbols: &[&str], from: &str, what: &str) {
    cmd.env("LD_DEBUG", "bindings").env_remove("LD_DEBUG_OUTPUT");
    let r = run(cmd, Duration::from_secs(120), &format!("{what} (LD_DEBUG=bindings probe)"));
    let is_lib = |to: &str| Path::new(to).canonicalize().is_ok_and(|p| p == lib);
    for symbol in symbols {
        let targets: Vec<&str> = r
            .stderr
            .lines()
            .filter_map(parse_binding)
            .filter(|b| b.symbol == *symbol && b.from == from)
            .map(|b| b.to)
            .collect();
        assert!(
            !targets.is_empty() && targets.iter().all(|to| is_lib(to)),
            "{what}: `{symbol}' from {from} binds to {targets:?}, not only to {} ({})",
            lib.display(),
            r.status_text()
        );
    }
}

/// Runs `cmd` once with `LD_DEBUG=bindings` and checks that `malloc` binds
/// to `lib`: from each file in `required_from` (matched by its full path or
/// its file name), or from at least one file if that is empty; and that no
/// file binds malloc/free/calloc/realloc anywhere else. A preload that
/// silently failed (the dynamic linker only warns) fails here.
pub fn check_binding(mut cmd: Command, lib: &Path, required_from: &[&str], what: &str) {
    cmd.env("LD_DEBUG", "bindings")
        .env_remove("LD_DEBUG_OUTPUT");
    let r = run(
        cmd,
        Duration::from_secs(120),
        &format!("{what} (LD_DEBUG=bindings probe)"),
    );
    // A linked program loads the library by its soname, a link to it.
    let is_lib = |to: &str| Path::new(to).canonicalize().is_ok_and(|p| p == lib);
    let lib = lib.to_string_lossy();
    let bindings: Vec<(Binding, &str)> = r
        .stderr
        .lines()
        .filter_map(|l| parse_binding(l).map(|b| (b, l.trim())))
        .filter(|(b, _)| ALLOCATOR_SYMBOLS.contains(&b.symbol))
        .collect();
    // (pid, file, symbol) whose own reference binds to the library.
    let to_lib: std::collections::HashSet<(&str, &str, &str)> = bindings
        .iter()
        .filter(|(b, _)| is_lib(b.to))
        .map(|(b, _)| (b.pid, b.from, b.symbol))
        .collect();
    let ours: Vec<&str> = bindings
        .iter()
        .filter(|(b, _)| is_lib(b.to) && b.symbol == "malloc")
        .map(|(b, _)| b.from)
        .collect();
    // A binding to another file is fine only when that file is a non-PIE
    // executable whose PLT entry is the symbol's canonical address: then that
    // file's own reference must bind to the library.
    let foreign: Vec<&str> = bindings
        .iter()
        .filter(|(b, _)| !is_lib(b.to) && !to_lib.contains(&(b.pid, b.to, b.symbol)))
        .map(|(_, l)| *l)
        .collect();
    let preload_errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("cannot be preloaded"))
        .collect();
    assert!(
        foreign.is_empty(),
        "{what}: allocator symbols bound to something other than {lib}:\n{}\n{}",
        foreign
            .iter()
            .take(20)
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
        preload_errors.join("\n")
    );
    let matches = |from: &str, req: &str| {
        from == req || Path::new(from).file_name().is_some_and(|n| n == req)
    };
    if required_from.is_empty() {
        assert!(
            !ours.is_empty(),
            "{what}: no `malloc' binding to {lib} in the LD_DEBUG=bindings output ({}, {} bytes of stderr)\n{}",
            r.status_text(),
            r.stderr.len(),
            preload_errors.join("\n")
        );
    }
    for req in required_from {
        assert!(
            ours.iter().any(|f| matches(f, req)),
            "{what}: no line \"binding file {req} [0] to {lib} [0]: normal symbol `malloc'\" in the \
             LD_DEBUG=bindings output ({}); malloc was bound to {lib} from: {:?}\n{}",
            r.status_text(),
            ours,
            preload_errors.join("\n")
        );
    }
}

/// The python the tests run: `$PYMALLOC_TEST_PYTHON` (a path or a name on
/// PATH; `scripts/test --python` sets it), else `python3` on PATH. Returns
/// the executable itself (not a wrapper such as a pyenv shim, whose shell
/// processes would run preloaded too). Panics when there is none, unless
/// the tool opt-out (`require_tool`) names python3.
pub fn python_executable() -> Option<PathBuf> {
    let configured = std::env::var_os("PYMALLOC_TEST_PYTHON").map(PathBuf::from);
    let py = match configured {
        Some(p) if p.components().count() > 1 => Some(p),
        Some(p) => Some(require_tool(&p.to_string_lossy()).unwrap_or_else(|| {
            panic!("PYMALLOC_TEST_PYTHON={} is not on PATH", p.display())
        })),
        None => require_tool("python3"),
    }?;
    let mut cmd = Command::new(&py);
    clean_env(&mut cmd).args(["-c", "import sys; print(sys.executable)"]);
    let r = run(cmd, Duration::from_secs(60), "python -c sys.executable");
    r.assert_success(&format!("{} -c sys.executable", py.display()));
    Some(PathBuf::from(r.stdout.trim()))
}

/// A program a test needs, found on PATH. A missing one fails the test
/// with its name, unless `PYMALLOC_TESTS_ALLOW_MISSING` names it (a comma-
/// separated list, or `all`): then the test says it skipped and passes.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(found) = find_tool(name) {
        return Some(found);
    }
    let allowed = std::env::var("PYMALLOC_TESTS_ALLOW_MISSING").unwrap_or_default();
    if allowed.split(',').any(|t| t.trim() == name || t.trim() == "all") {
        eprintln!("SKIPPED: `{name}` is not installed (PYMALLOC_TESTS_ALLOW_MISSING)");
        return None;
    }
    panic!(
        "`{name}` is not installed: install it (.ci/run does), or set \
         PYMALLOC_TESTS_ALLOW_MISSING={name} to skip the tests that need it"
    );
}

/// Finds an executable on PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
