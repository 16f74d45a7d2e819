//! The shared object's interface: exactly the glibc allocation API,
//! `pymalloc_*` and C++'s `operator delete` family are exported, and no
//! exported function can reach a Rust panic, std, unwinding, thread-local
//! storage or an allocation function (any of which could re-enter the
//! allocator with its lock held).

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::Command;

const EXPORTED: &[&str] = &[
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
    "memalign", "valloc", "pvalloc", "malloc_usable_size", "cfree", "free_sized",
    "free_aligned_sized", "__libc_malloc",
    "__libc_calloc", "__libc_realloc", "__libc_free", "__libc_memalign", "__libc_valloc",
    "__libc_pvalloc", "__posix_memalign", "mallopt", "malloc_trim", "mallinfo", "mallinfo2",
    "malloc_stats", "malloc_info", "pymalloc_version", "pymalloc_check_heap", "pymalloc_print_stats",
    "pymalloc_get_stats", "pymalloc_write_stats",
    // C++'s operator delete family (src/cxx.rs).
    "_ZdlPv", "_ZdlPvm", "_ZdlPvSt11align_val_t", "_ZdlPvmSt11align_val_t", "_ZdlPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t", "_ZdaPv", "_ZdaPvm", "_ZdaPvSt11align_val_t",
    "_ZdaPvmSt11align_val_t", "_ZdaPvRKSt9nothrow_t", "_ZdaPvSt11align_val_tRKSt9nothrow_t",
];

/// Code that must not run inside the allocator.
const FORBIDDEN: &[&str] = &[
    "panic",
    "rust_begin_unwind",
    "std::",
    "_Unwind",
    "__tls_get_addr",
    "__rust_alloc",
    "__rust_realloc",
    "alloc::alloc",
];

/// One of the library's own C++ operators, demangled (`operator
/// delete(void*, std::align_val_t)`): its name says `std::`, its code is
/// ours. A call through the PLT (`...@plt`) is not one of them.
fn is_cxx_export(demangled: &str) -> bool {
    demangled.starts_with("operator delete") && !demangled.contains('@')
}

fn tool_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .arg(common::library())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn exports_exactly_the_allocation_api() {
    let nm = tool_output("nm", &["-D", "--defined-only"]);
    let defined: BTreeSet<&str> = nm.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    let expected: BTreeSet<&str> = EXPORTED.iter().copied().collect();
    assert_eq!(defined, expected, "exported symbols differ (left: exported, right: expected)");
}

/// `crate::fmt` dispatches through trait objects: a call graph from the
/// disassembly cannot follow it into the `Display`/`Write` methods it
/// calls. Every such method in the library is taken as reachable (as it
/// is, from any function that formats), so that a panic inside one is
/// seen (a bounds check in `<report::Grouped as Display>::fmt` once was).
fn reached_through_fmt(name: &str) -> bool {
    name.contains(" as core::fmt::") || name.contains("core::fmt::Display for ") || name.starts_with("core::fmt::Write::")
}

/// Builds the static call graph from the disassembly and walks it from
/// every exported function.
#[test]
fn no_exported_function_can_panic() {
    let dis = tool_output("objdump", &["-d", "--no-show-raw-insn", "-C"]);
    let mut calls: HashMap<String, HashSet<String>> = HashMap::new();
    // Function entry addresses and their names: objdump labels an address
    // with one of its names only (`malloc` and `__libc_malloc` share one).
    let mut at: HashMap<u64, String> = HashMap::new();
    let mut current = String::new();
    for line in dis.lines() {
        if let Some((addr, name)) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            current = name.to_string();
            calls.entry(current.clone()).or_default();
            if let Ok(addr) = u64::from_str_radix(addr.trim(), 16) {
                at.insert(addr, current.clone());
            }
        } else if let Some(target) = line.split_once("call").or_else(|| line.split_once("jmp")).and_then(|(_, rest)| {
            rest.split_once('<').map(|(_, t)| t.trim_end_matches('>').split('+').next().unwrap_or("").to_string())
        }) {
            calls.entry(current.clone()).or_default().insert(target);
        }
    }
    // Every exported name must be a node of the graph (by its address), or
    // the walk would start from nothing and prove nothing.
    let nm = tool_output("nm", &["-D", "--defined-only"]);
    let mut roots: Vec<String> = Vec::new();
    for name in EXPORTED {
        let addr = nm
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
            .unwrap_or_else(|| panic!("{name} is not in `nm -D --defined-only`"));
        let node = at.get(&addr).unwrap_or_else(|| panic!("{name} ({addr:#x}) is not a function in the disassembly"));
        roots.push(node.clone());
    }
    assert!(
        calls.keys().any(|f| f.contains("pymalloc::report::Grouped as core::fmt::Display")),
        "the report's formatting is not in the disassembly: reached_through_fmt looks for nothing"
    );
    roots.extend(calls.keys().filter(|f| reached_through_fmt(f)).cloned());
    let edges: usize = calls.values().map(HashSet::len).sum();
    assert!(edges > 100, "only {edges} calls in the disassembly: it was not read");

    let mut from: HashMap<String, String> = HashMap::new();
    let mut stack: Vec<String> = roots.clone();
    let mut seen: HashSet<String> = stack.iter().cloned().collect();
    let mut reentry = Vec::new();
    while let Some(f) = stack.pop() {
        for g in calls.get(&f).into_iter().flatten() {
            let base = g.split('@').next().unwrap_or("");
            let local_jump = *g == f;
            let exported = EXPORTED.contains(&base) || base.starts_with("operator delete");
            if exported && !base.starts_with("pymalloc_") && !local_jump {
                reentry.push(format!("{f} calls {g}"));
            }
            if seen.insert(g.clone()) {
                from.insert(g.clone(), f.clone());
                stack.push(g.clone());
            }
        }
    }
    let bad: Vec<String> = seen
        .iter()
        .filter(|f| FORBIDDEN.iter().any(|bad| f.contains(bad)) && !is_cxx_export(f))
        .map(|f| {
            let mut chain = vec![f.clone()];
            while let Some(caller) = from.get(chain.last().unwrap()) {
                chain.push(caller.clone());
            }
            chain.join(" <- ")
        })
        .collect();
    assert!(bad.is_empty(), "forbidden code reachable from the C API:\n{}", bad.join("\n"));
    assert!(reentry.is_empty(), "the allocator calls itself:\n{}", reentry.join("\n"));
}

/// The crate is `no_std`, and so is everything linked into it: no std
/// code (panic and backtrace machinery, allocation) in the library.
#[test]
fn links_no_std() {
    let nm = tool_output("nm", &["-C"]);
    let ours = |l: &str| l.split_once(" T ").is_some_and(|(_, name)| is_cxx_export(name));
    let std: Vec<&str> =
        nm.lines().filter(|l| (l.contains("std::") && !ours(l)) || l.contains("backtrace")).take(10).collect();
    assert!(std.is_empty(), "std code in the library:\n{}", std.join("\n"));
}
