//! The modules form layers, and imports only go down: `src/lib.rs`
//! declares every module in order, from the exported functions at the
//! top to the system below, and a module may name (`crate::module`) only
//! modules declared after it. So there is no circle, and `lib.rs`, which
//! a newcomer reads first, is the map of the code.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

/// The modules `lib.rs` declares, in order (top layer first).
fn declared(src: &Path) -> Vec<String> {
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("mod ").and_then(|m| m.strip_suffix(';')))
        .map(str::to_string)
        .collect()
}

/// The modules a source file names as `crate::name`, outside comments.
fn named(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_module_is_declared_in_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: HashSet<String> = declared(&src).into_iter().collect();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        // lib.rs is the root; stats_fields.rs is a list `include!`d twice.
        if path.extension().is_some_and(|e| e == "rs") && stem != "lib" && stem != "stats_fields" {
            assert!(modules.contains(&stem), "src/{stem}.rs is not declared in src/lib.rs");
        }
    }
}

#[test]
fn modules_import_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = declared(&src);
    let mut upward = Vec::new();
    for (i, module) in order.iter().enumerate() {
        let text = fs::read_to_string(src.join(format!("{module}.rs"))).unwrap();
        for name in named(&text) {
            match order.iter().position(|m| *m == name) {
                Some(j) if j > i => {}
                Some(j) if j == i => upward.push(format!("{module} names itself through crate::")),
                Some(_) => upward.push(format!("{module} -> {name}")),
                None => upward.push(format!("{module} names crate::{name}, which lib.rs does not declare")),
            }
        }
    }
    assert!(upward.is_empty(), "imports that run up (or sideways to a module declared above) in src/lib.rs's order:\n{}", upward.join("\n"));
}
