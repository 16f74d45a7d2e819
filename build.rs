//! Generates the C header with cbindgen into OUT_DIR; a unit test compares
//! it with the committed `include/pymalloc.h`. Set PYMALLOC_BLESS_HEADER=1
//! to write the committed copy.

use std::env;
use std::path::PathBuf;

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
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .with_after_include(version_macros)
        .generate()
        .expect("cbindgen failed")
        .write_to_file(&out);
    if env::var_os("PYMALLOC_BLESS_HEADER").is_some() {
        std::fs::copy(&out, crate_dir.join("include/pymalloc.h")).expect("writing include/pymalloc.h");
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=PYMALLOC_BLESS_HEADER");
}
