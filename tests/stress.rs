//! The global lock under load: the stress programs in `tests/c/` (threads,
//! thread churn, fork from a busy parent, fork from a signal handler,
//! dlopen of TLS modules, a constructor that allocates before ours) run
//! preloaded and linked, and python3 runs `tests/python/stress.py`. Each
//! run is bounded: a hang fails with the stacks of the hung processes, and
//! the programs themselves fail on a child that does not finish in 10 s.
//! Each program also runs in the debug mode, and checks the heap with
//! `pymalloc_check_heap()` at its end and in every forked child.

mod common;

use common::{
    Config, check_binding, clean_env, compile_c, library, library_dir, python_executable, repo_root, run, scratch_dir,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `exe args` with the library preloaded or linked (then `exe` was
/// built linked), after checking that its `malloc` binds to the library.
fn run_with(exe: &Path, args: &[&str], config: Config, env: &[(&str, &str)]) -> String {
    let lib = library();
    let command = || {
        let mut cmd = Command::new(exe);
        clean_env(&mut cmd).args(args).envs(env.iter().copied());
        if config == Config::Preload {
            cmd.env("LD_PRELOAD", &lib);
        }
        cmd
    };
    let what = format!("{} {} ({config:?})", exe.display(), args.join(" "));
    let mut probe = command();
    probe.env("PYMALLOC_BINDING_PROBE", "1");
    check_binding(probe, &lib, &[&exe.to_string_lossy()], &what);
    let r = run(command(), TIMEOUT, &what);
    r.assert_success(&what);
    r.stdout
}

fn stress(name: &str, args: &[&str], config: Config) {
    let exe = compile_c(name, config);
    run_with(&exe, args, config, &[]);
}

/// The same, preloaded, in the debug mode (guard bytes checked by every
/// call and by the program's final `pymalloc_check_heap()`).
fn stress_debug(name: &str, args: &[&str]) {
    let exe = compile_c(name, Config::Preload);
    run_with(&exe, args, Config::Preload, &[("PYMALLOC_DEBUG", "1")]);
}

/// Runs gcc with `args`, panicking with its output on failure.
fn gcc(args: &[&str], what: &str) {
    let mut cmd = Command::new("gcc");
    cmd.args(args);
    run(cmd, TIMEOUT, what).assert_success(what);
}

/// Builds `tests/c/<src>.c` as the shared object `dir/<out>`.
fn shared_object(src: &str, dir: &Path, out: &str) -> PathBuf {
    let so = dir.join(out);
    let tmp = dir.join(format!("{out}.tmp{}", std::process::id()));
    let src = repo_root().join("tests/c").join(format!("{src}.c"));
    gcc(
        &["-O2", "-g", "-shared", "-fPIC", "-pthread", "-o", &tmp.to_string_lossy(), &src.to_string_lossy()],
        &format!("gcc -shared {}", src.display()),
    );
    std::fs::rename(&tmp, &so).unwrap();
    so
}

macro_rules! stress_tests {
    ($($preload:ident, $linked:ident, $debug:ident => $name:literal $(, $arg:literal)*;)*) => {$(
        #[test]
        fn $preload() {
            stress($name, &[$($arg),*], Config::Preload);
        }
        #[test]
        fn $linked() {
            stress($name, &[$($arg),*], Config::Linked);
        }
        #[test]
        fn $debug() {
            stress_debug($name, &[$($arg),*]);
        }
    )*};
}

stress_tests! {
    threads_2_preload, threads_2_linked, threads_2_debug => "stress_threads", "2";
    threads_4_preload, threads_4_linked, threads_4_debug => "stress_threads", "4";
    threads_8_preload, threads_8_linked, threads_8_debug => "stress_threads", "8";
    threads_16_preload, threads_16_linked, threads_16_debug => "stress_threads", "16";
    thread_churn_preload, thread_churn_linked, thread_churn_debug => "thread_churn", "2000";
    fork_busy_parent_preload, fork_busy_parent_linked, fork_busy_parent_debug => "fork_stress", "1000";
    fork_in_signal_handler_preload, fork_in_signal_handler_linked, fork_in_signal_handler_debug =>
        "fork_signal", "single", "1000";
    fork_in_signal_handler_threads_preload, fork_in_signal_handler_threads_linked,
        fork_in_signal_handler_threads_debug => "fork_signal", "multi", "1000";
    fork_in_signal_handler_while_forking_preload, fork_in_signal_handler_while_forking_linked,
        fork_in_signal_handler_while_forking_debug => "fork_signal", "forking", "1000";
    thread_cache_exit_preload, thread_cache_exit_linked, thread_cache_exit_debug => "thread_cache", "exit", "2000";
    thread_cache_fork_preload, thread_cache_fork_linked, thread_cache_fork_debug => "thread_cache", "fork", "200";
}

/// The stress programs again with no thread caches: every call takes the
/// heap's lock (`PYMALLOC_THREAD_CACHE=0`).
#[test]
fn without_thread_caches() {
    let off = [("PYMALLOC_THREAD_CACHE", "0")];
    for (name, args) in [
        ("stress_threads", &["8"][..]),
        ("thread_churn", &["500"]),
        ("fork_stress", &["200"]),
        ("fork_signal", &["multi", "200"]),
        ("fork_signal", &["forking", "200"]),
        ("thread_cache", &["exit", "200"]),
        ("thread_cache", &["fork", "50"]),
    ] {
        let exe = compile_c(name, Config::Preload);
        run_with(&exe, args, Config::Preload, &off);
    }
}

/// `config` None: preloaded, in the debug mode.
fn dlopen_tls(config: Option<Config>) {
    // A directory per test: copying over a module that a test running at
    // the same time has mapped would kill it (SIGBUS).
    let name = match config {
        Some(Config::Preload) => "tls-modules-preload",
        Some(Config::Linked) => "tls-modules-linked",
        None => "tls-modules-debug",
    };
    let dir = scratch_dir("stress", name);
    let so = shared_object("tls_module", &dir, "tls0.so");
    for i in 1..4 {
        std::fs::copy(&so, dir.join(format!("tls{i}.so"))).unwrap();
    }
    match config {
        Some(config) => stress("dlopen_tls", &[&dir.to_string_lossy(), "200"], config),
        None => stress_debug("dlopen_tls", &[&dir.to_string_lossy(), "200"]),
    }
}

#[test]
fn dlopen_tls_modules_preload() {
    dlopen_tls(Some(Config::Preload));
}

#[test]
fn dlopen_tls_modules_linked() {
    dlopen_tls(Some(Config::Linked));
}

#[test]
fn dlopen_tls_modules_debug() {
    dlopen_tls(None);
}

/// The order in which the dynamic linker runs `libearly.so`'s and our
/// initialisers, from `LD_DEBUG=files`: true if libearly's runs first.
fn early_initialised_first(cmd: &mut Command) -> bool {
    cmd.env("LD_DEBUG", "files");
    let r = run(std::mem::replace(cmd, Command::new("true")), TIMEOUT, "LD_DEBUG=files probe");
    let inits: Vec<&str> = r.stderr.lines().filter_map(|l| l.split_once("calling init: ").map(|(_, f)| f)).collect();
    // By file name: the library may be loaded as `libpymalloc.so.0`.
    let pos = |name: &str| inits.iter().position(|f| f.rsplit('/').next().is_some_and(|n| n.starts_with(name)));
    match (pos("libearly.so"), pos("libpymalloc.so")) {
        (Some(e), Some(p)) => e < p,
        _ => panic!("no init lines for both libraries in LD_DEBUG=files output:\n{}", r.stderr),
    }
}

/// A library whose constructor allocates (and starts a thread), in four
/// load orders; in two of them its constructor runs before ours, which
/// is checked, so the test keeps testing what it says.
#[test]
fn constructor_allocates_before_ours() {
    let dir = scratch_dir("stress", "early");
    shared_object("early_ctor_lib", &dir, "libearly.so");
    let (d, lib_dir) = (dir.to_string_lossy().into_owned(), library_dir().to_string_lossy().into_owned());
    let src = repo_root().join("tests/c/early_ctor.c").to_string_lossy().into_owned();
    let exe = |name: &str, libs: &[&str]| {
        let out = dir.join(name);
        let mut args = vec!["-O2", "-g", "-pthread", "-fno-builtin", "-o"];
        let (o, rpath) = (out.to_string_lossy().into_owned(), format!("-Wl,-rpath,{d}:{lib_dir}"));
        let (ld, ll) = (format!("-L{d}"), format!("-L{lib_dir}"));
        args.extend([o.as_str(), src.as_str(), ld.as_str(), ll.as_str()]);
        args.extend(libs);
        args.push(&rpath);
        gcc(&args, &format!("gcc {name}"));
        out
    };
    let lib = library();
    let early = dir.join("libearly.so");
    let preload_both = format!("{}:{}", lib.display(), early.display());
    let only_early = exe("early_only", &["-learly"]);
    // (executable, LD_PRELOAD, whether libearly's constructor runs first)
    let cases = [
        (exe("early_then_ours", &["-learly", "-lpymalloc"]), None, false),
        (exe("ours_then_early", &["-lpymalloc", "-learly"]), None, true),
        (only_early.clone(), Some(lib.to_string_lossy().into_owned()), true),
        (only_early, Some(preload_both), true),
    ];
    for (exe, preload, early_first) in cases {
        let command = || {
            let mut cmd = Command::new(&exe);
            clean_env(&mut cmd);
            if let Some(p) = &preload {
                cmd.env("LD_PRELOAD", p);
            }
            cmd
        };
        let what = format!("{} (LD_PRELOAD={preload:?})", exe.display());
        assert_eq!(early_initialised_first(&mut command()), early_first, "{what}: initialisation order changed");
        run(command(), TIMEOUT, &what).assert_success(&what);
    }
}

/// python3 with every object from the library: threads allocating,
/// `os.fork` in a loop, a `multiprocessing` fork pool and imports of
/// extension modules, all at once.
#[test]
fn python_threads_fork_and_imports() {
    let Some(py) = python_executable() else { return };
    let lib = library();
    let command = || {
        let mut cmd = Command::new(&py);
        clean_env(&mut cmd)
            .env("LD_PRELOAD", &lib)
            .env("PYTHONMALLOC", "malloc")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    };
    let mut probe = command();
    probe.args(["-c", "pass"]);
    check_binding(probe, &lib, &[&py.to_string_lossy()], "python3 -c pass");
    let script = repo_root().join("tests/python/stress.py");
    let mut cmd = command();
    cmd.arg(&script);
    let r = run(cmd, TIMEOUT, "python3 tests/python/stress.py");
    r.assert_success("python3 tests/python/stress.py");
    assert!(r.stdout.contains("stress done"), "unexpected output: {}", r.stdout);
}

/// The library `dlopen`ed into a process whose malloc stays glibc's: its
/// initial-exec TLS (the thread caches' slot) comes from glibc's static
/// TLS reserve, and its functions work from several threads.
#[test]
fn dlopen_of_the_library() {
    let exe = scratch_dir("stress", "dlopen-library").join("dlopen_library");
    let src = repo_root().join("tests/c/dlopen_library.c");
    gcc(
        &["-O2", "-g", "-pthread", "-o", &exe.to_string_lossy(), &src.to_string_lossy(), "-ldl"],
        "gcc dlopen_library.c",
    );
    let mut cmd = Command::new(&exe);
    clean_env(&mut cmd).arg(library());
    let r = run(cmd, TIMEOUT, "dlopen_library");
    r.assert_success("dlopen_library");
    assert_eq!(r.stdout, "ok\n");
}
