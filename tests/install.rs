//! `scripts/install`: the installed tree, its soname, the pkg-config file
//! (a C program built with it calls the API and allocates through the
//! library) and the `pymalloc-run` wrapper.

mod common;

use common::{check_binding, clean_env, fresh_dir, library, python_executable, repo_root, run, without_options};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn tool_output(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn installs_a_usable_tree() {
    let prefix = fresh_dir("install");
    let mut install = Command::new(repo_root().join("scripts/install"));
    install.arg("--prefix").arg(&prefix).arg("--library").arg(library());
    tool_output(&mut install, "scripts/install");

    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let lib = prefix.join(format!("lib/libpymalloc.so.{major}"));
    assert!(lib.is_file(), "{} missing", lib.display());
    let link = std::fs::read_link(prefix.join("lib/libpymalloc.so")).expect("lib/libpymalloc.so is a link");
    assert_eq!(link, Path::new(&format!("libpymalloc.so.{major}")));
    let dynamic = tool_output(Command::new("readelf").arg("-d").arg(&lib), "readelf");
    assert!(dynamic.contains(&format!("Library soname: [libpymalloc.so.{major}]")), "{dynamic}");
    assert_eq!(
        std::fs::read(prefix.join("include/pymalloc.h")).unwrap(),
        std::fs::read(repo_root().join("include/pymalloc.h")).unwrap()
    );

    // cc app.c $(pkg-config --cflags --libs pymalloc)
    let pc_path = prefix.join("lib/pkgconfig");
    let flags = tool_output(
        Command::new("pkg-config").env("PKG_CONFIG_PATH", &pc_path).args(["--cflags", "--libs", "pymalloc"]),
        "pkg-config",
    );
    let version = tool_output(
        Command::new("pkg-config").env("PKG_CONFIG_PATH", &pc_path).args(["--modversion", "pymalloc"]),
        "pkg-config --modversion",
    );
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    let app = prefix.join("app");
    let mut cc = Command::new("cc");
    cc.arg(repo_root().join("tests/c/installed_app.c")).arg("-o").arg(&app).args(flags.split_whitespace());
    let r = run(cc, TIMEOUT, "cc installed_app.c $(pkg-config ...)");
    r.assert_success("cc with pkg-config flags");

    let app_command = || {
        let mut cmd = Command::new(&app);
        without_options(clean_env(&mut cmd)).env("LD_LIBRARY_PATH", prefix.join("lib"));
        cmd
    };
    check_binding(app_command(), &lib.canonicalize().unwrap(), &[app.to_str().unwrap()], "installed_app");
    let r = run(app_command(), TIMEOUT, "installed_app");
    r.assert_success("installed_app");
    assert_eq!(r.stdout, format!("{}\n", env!("CARGO_PKG_VERSION")));
    assert!(r.stderr.starts_with("pymalloc ") && r.stderr.contains("\nclass   size   num pools"), "{}", r.stderr);

    // bin/pymalloc-run preloads the installed library.
    let py = python_executable().expect("python3");
    let mut cmd = Command::new(prefix.join("bin/pymalloc-run"));
    without_options(clean_env(&mut cmd)).arg(&py).args(["-c", "print('hi')"]).env("PYMALLOC_VERBOSE", "1");
    let r = run(cmd, TIMEOUT, "pymalloc-run python3");
    r.assert_success("pymalloc-run python3");
    assert_eq!(r.stdout, "hi\n");
    assert!(r.stderr.starts_with("pymalloc ") && r.stderr.contains("PYMALLOC_VERBOSE=1"), "{}", r.stderr);
    std::fs::remove_dir_all(prefix).unwrap();
}
