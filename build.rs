//! Generates the C header with cbindgen into OUT_DIR; a unit test compares
//! it with the committed `include/pymalloc.h`. Set PYMALLOC_BLESS_HEADER=1
//! to write the committed copy.

use std::env;
use std::fmt::Write;
use std::path::PathBuf;

/// Gives the library its soname, `libpymalloc.so.MAJOR`, so that programs
/// linked with `-lpymalloc` record the name `scripts/install` installs;
/// and makes that name a link to the library in the build's own output
/// directory, so they also run against the build tree (rpath).
fn link_options() {
    let soname = format!("libpymalloc.so.{}", env::var("CARGO_PKG_VERSION_MAJOR").unwrap());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    // Once loaded, never unmapped: the library registers a pthread key
    // destructor and fork handlers with libc, which would otherwise point
    // into unmapped code after a `dlclose` (as other allocators do).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    // OUT_DIR is target/<profile>/build/pymalloc-<hash>/out.
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let link = profile_dir.join(&soname);
        if std::fs::read_link(&link).is_err() {
            let _ = std::os::unix::fs::symlink("libpymalloc.so", &link);
        }
    }
}

/// The counters' names and labels, from the list the crate uses too.
macro_rules! stats_fields {
    ($( $name:ident : $label:literal, )*) => {
        const STATS_FIELDS: &[(&str, &str)] = &[$((stringify!($name), $label)),*];
    };
}
include!("src/stats_fields.rs");

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("pymalloc.h");
    let version = |part: &str| env::var(format!("CARGO_PKG_VERSION_{part}")).unwrap();
    let version_macros = format!(
        "#define PYMALLOC_VERSION_MAJOR {}\n#define PYMALLOC_VERSION_MINOR {}\n#define PYMALLOC_VERSION_PATCH {}\n",
        version("MAJOR"),
        version("MINOR"),
        version("PATCH"),
    );
    let mut stats_struct = String::from(
        "\n/* The heap's statistics, filled by pymalloc_get_stats(): set size to\n \
         * sizeof(pymalloc_stats) first. Fields are only ever appended. */\n\
         typedef struct pymalloc_stats {\n    size_t size; /* bytes filled in */\n",
    );
    for (name, label) in STATS_FIELDS {
        writeln!(stats_struct, "    size_t {name}; /* {label} */").unwrap();
    }
    stats_struct.push_str("} pymalloc_stats;\n");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .with_after_include(version_macros + &stats_struct)
        .generate()
        .expect("cbindgen failed")
        .write_to_file(&out);
    if env::var_os("PYMALLOC_BLESS_HEADER").is_some() {
        std::fs::copy(&out, crate_dir.join("include/pymalloc.h")).expect("writing include/pymalloc.h");
    }
    link_options();
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=PYMALLOC_BLESS_HEADER");
}
