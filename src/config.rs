//! `PYMALLOC_*` options: defined once in `options!` below (name, kind,
//! default, doc), read once from the environment without allocating, and
//! then fixed for the life of the process (`get`).
//!
//! # When the options are read
//!
//! `malloc` is called before any constructor of ours: by other libraries'
//! constructors (libstdc++'s emergency pool), and by a program's
//! `.preinit_array` (sanitizers), which runs before even libc's own
//! initialisation. Some options (the debug mode changes the block layout)
//! must be fixed before the first block is served, so they are resolved
//! lazily by the first allocation (`abi` calls `get` before it takes the
//! heap lock), or by our constructor, whichever comes first.
//!
//! Where the environment is at that moment was settled by experiment
//! (gdb, breakpoint on the library's first `malloc`, glibc 2.36, both
//! `LD_PRELOAD` and linked with `-lpymalloc`): from a library
//! constructor or from `main`, libc's `environ` is valid (libc is
//! initialised before any library that depends on it); from a
//! `.preinit_array` function it is still NULL. The process's initial
//! stack is always there: `__libc_stack_end` (exported by ld.so, set
//! before anything else runs) points at `argc`, followed by `argv`, a
//! NULL, and the initial `envp`. So `environ` is used when it is set
//! (it also reflects a program that replaced its environment before its
//! first allocation), and the initial `envp` otherwise. Neither needs a
//! system call or `/proc`.
//!
//! Resolution is idempotent and race-free: one caller wins a
//! compare-and-swap, parses into the static `OPTIONS`, and publishes it
//! with a release store; any other caller waits for that (microseconds,
//! and only ever at start-up). A bad value prints one warning line (raw
//! `write(2)`) and keeps the default; unknown `PYMALLOC_*` names are
//! ignored (the tests themselves use a few). With no option set, nothing
//! is ever printed.

use core::cell::UnsafeCell;
use core::ffi::c_char;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::geometry::MEDIUM_MAX;
use crate::print::{ChunkWriter, write_fd};

/// What `PYMALLOC_SHOW_STATS` asks for at exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowStats {
    Off,
    Text,
    Json,
}

/// A file name, copied out of the environment (whose strings the program
/// may later free) into static memory.
#[derive(Clone, Copy)]
pub struct Path {
    bytes: [u8; PATH_CAPACITY],
    len: usize,
}

const PATH_CAPACITY: usize = 256;

impl Path {
    pub const NONE: Path = Path { bytes: [0; PATH_CAPACITY], len: 0 };

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// A kind of option value: how it is parsed and printed.
pub trait Value: Sized {
    /// What a valid value looks like, for the warning.
    const EXPECTED: &'static str;
    fn parse(text: &[u8]) -> Option<Self>;
    fn show(&self, out: &mut impl Write) -> fmt::Result;
}

impl Value for bool {
    const EXPECTED: &'static str = "1/0, yes/no, on/off or true/false";
    fn parse(text: &[u8]) -> Option<bool> {
        const TRUE: &[&[u8]] = &[b"1", b"yes", b"on", b"true", b"y"];
        const FALSE: &[&[u8]] = &[b"0", b"no", b"off", b"false", b"n", b""];
        if TRUE.iter().any(|t| t.eq_ignore_ascii_case(text)) {
            Some(true)
        } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(text)) {
            Some(false)
        } else {
            None
        }
    }
    fn show(&self, out: &mut impl Write) -> fmt::Result {
        out.write_str(if *self { "1" } else { "0" })
    }
}

/// A byte count: digits with an optional K, M or G (powers of 1024),
/// optionally followed by `B` or `iB`.
impl Value for usize {
    const EXPECTED: &'static str = "a size such as 4096, 64K, 16M or 1G";
    fn parse(text: &[u8]) -> Option<usize> {
        let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
        let (number, suffix) = text.split_at_checked(digits)?;
        if number.is_empty() {
            return None;
        }
        let mut n: usize = 0;
        for &d in number {
            n = n.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
        }
        let unit = strip_suffix(suffix, b"ib").or_else(|| strip_suffix(suffix, b"b")).unwrap_or(suffix);
        let shift = match unit {
            b"" => 0,
            b"k" | b"K" => 10,
            b"m" | b"M" => 20,
            b"g" | b"G" => 30,
            _ => return None,
        };
        n.checked_mul(1 << shift)
    }
    fn show(&self, out: &mut impl Write) -> fmt::Result {
        write!(out, "{self}")
    }
}

/// `text` without the ASCII-case-insensitive `suffix`, if it ends so.
fn strip_suffix<'a>(text: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    let cut = text.len().checked_sub(suffix.len())?;
    let (head, tail) = text.split_at_checked(cut)?;
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

impl Value for ShowStats {
    const EXPECTED: &'static str = "0/off, 1/text or json";
    fn parse(text: &[u8]) -> Option<ShowStats> {
        if text.eq_ignore_ascii_case(b"json") {
            Some(ShowStats::Json)
        } else if text.eq_ignore_ascii_case(b"text") {
            Some(ShowStats::Text)
        } else {
            bool::parse(text).map(|on| if on { ShowStats::Text } else { ShowStats::Off })
        }
    }
    fn show(&self, out: &mut impl Write) -> fmt::Result {
        out.write_str(match self {
            ShowStats::Off => "0",
            ShowStats::Text => "text",
            ShowStats::Json => "json",
        })
    }
}

impl Value for Path {
    const EXPECTED: &'static str = "a file name shorter than 256 bytes";
    fn parse(text: &[u8]) -> Option<Path> {
        let mut path = Path::NONE;
        path.bytes.get_mut(..text.len())?.copy_from_slice(text);
        path.len = text.len();
        // The last byte stays NUL, so the name can be passed to open(2).
        (text.len() < PATH_CAPACITY).then_some(path)
    }
    fn show(&self, out: &mut impl Write) -> fmt::Result {
        write_printable(self.as_bytes(), out)
    }
}

/// Writes `bytes` with anything but printable ASCII shown as `?`.
fn write_printable(bytes: &[u8], out: &mut impl Write) -> fmt::Result {
    for &b in bytes {
        out.write_char(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' })?;
    }
    Ok(())
}

/// Defines `Options` (one field per option), its defaults, the table of
/// names and docs, and the per-option parse and print dispatch.
macro_rules! options {
    ($( $(#[doc = $doc:literal])+ $field:ident : $kind:ty = $default:expr, $name:literal; )*) => {
        /// The resolved options.
        #[derive(Clone, Copy)]
        pub struct Options {
            $( $(#[doc = $doc])+ pub $field: $kind, )*
        }

        impl Options {
            pub const DEFAULT: Options = Options { $( $field: $default, )* };

            /// Every option's name, in table order (the README test reads it).
            #[cfg_attr(not(test), allow(dead_code))]
            pub const NAMES: &'static [&'static str] = &[ $( $name, )* ];

            /// Sets the option called `name` from `text`; `None` if there
            /// is no such option, `Some(Err(expected))` for a bad value.
            fn set(&mut self, name: &[u8], text: &[u8]) -> Option<Result<(), &'static str>> {
                $(
                    if name == $name.as_bytes() {
                        return Some(match <$kind as Value>::parse(text) {
                            Some(v) => { self.$field = v; Ok(()) }
                            None => Err(<$kind as Value>::EXPECTED),
                        });
                    }
                )*
                None
            }

            /// Writes `NAME=value` for every option, a line each, each line
            /// after `prefix`.
            fn show(&self, prefix: &str, out: &mut impl Write) -> fmt::Result {
                $(
                    write!(out, "{prefix}{}=", $name)?;
                    self.$field.show(out)?;
                    out.write_char('\n')?;
                )*
                Ok(())
            }
        }
    };
}

options! {
    /// Print statistics when the process exits: `0`/`off` (default),
    /// `1`/`text` (the text report) or `json`.
    show_stats: ShowStats = ShowStats::Off, "PYMALLOC_SHOW_STATS";
    /// Where `PYMALLOC_SHOW_STATS` writes: a file name, `%p` replaced by
    /// the process id (default: standard error).
    stats_file: Path = Path::NONE, "PYMALLOC_STATS_FILE";
    /// Print the resolved options once, at start-up, on standard error.
    verbose: bool = false, "PYMALLOC_VERBOSE";
    /// The debug mode: guard bytes, freed-memory poisoning and checks
    /// on every call (fixed before the first block is served).
    debug: bool = false, "PYMALLOC_DEBUG";
    /// Debug mode: keep up to this many bytes of freed blocks poisoned and
    /// unused, to catch writes after free (`0`: none).
    debug_quarantine: usize = 1 << 20, "PYMALLOC_DEBUG_QUARANTINE";
    /// Freed memory that stays unused this many milliseconds goes back
    /// to the OS (empty pools, free arenas, cached large mappings).
    decay_ms: usize = 250, "PYMALLOC_DECAY_MS";
    /// Most bytes of freed large mappings kept for reuse.
    large_cache: usize = 64 << 20, "PYMALLOC_LARGE_CACHE";
    /// Most bytes of free blocks each thread keeps in its cache in front
    /// of the heap's lock (`0`: no thread caches).
    thread_cache: usize = 512 << 10, "PYMALLOC_THREAD_CACHE";
}

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const RESOLVED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// Set with RESOLVED: requests below this may take `malloc`'s fast paths,
/// `MEDIUM_MAX + 1` when the debug mode is off, else 0 (none), so that one
/// comparison tests the size and the mode; the other calls test it for
/// zero (`fast_paths`). (`free`'s direct path has its own: the heap's
/// clock counter, which stays at zero without the fast paths, see
/// `Heap::tick`.)
static FAST_BELOW: AtomicUsize = AtomicUsize::new(0);

struct Cell(UnsafeCell<Options>);

// SAFETY: written once, by the thread that moved STATE to RESOLVING, and
// read only after STATE is RESOLVED (release/acquire).
unsafe impl Sync for Cell {}

static OPTIONS: Cell = Cell(UnsafeCell::new(Options::DEFAULT));

/// Whether `malloc` and `free` may take their fast paths: the options
/// are resolved and the debug mode (another block layout) is off.
#[inline(always)]
pub fn fast_paths() -> bool {
    fast_size_below() != 0
}

/// Requests of fewer bytes than this may take `malloc`'s fast paths
/// (see `FAST_BELOW`); each of them is at most `MEDIUM_MAX`.
#[inline(always)]
pub fn fast_size_below() -> usize {
    // Relaxed: the fast paths read no option (the general path reads
    // them through `get`), so that loads after this one stay free to merge.
    FAST_BELOW.load(Ordering::Relaxed)
}

/// Resolves the options if that has not happened yet.
#[inline(always)]
#[cfg_attr(test, allow(dead_code))] // called by the constructor
pub fn ensure() {
    get();
}

/// The options, resolved on the first call. Cheap once resolved: one
/// load and a branch. Never allocates; may print (a warning, or the
/// `PYMALLOC_VERBOSE` listing) on the first call, so call it without the
/// heap lock held until start-up is over (`abi` does so on every
/// allocation).
#[inline(always)]
pub fn get() -> &'static Options {
    if STATE.load(Ordering::Acquire) != RESOLVED {
        resolve();
    }
    // SAFETY: RESOLVED was published after the last write (see `Cell`).
    unsafe { &*OPTIONS.0.get() }
}

#[cold]
#[inline(never)]
fn resolve() {
    match STATE.compare_exchange(UNRESOLVED, RESOLVING, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {
            let mut options = Options::DEFAULT;
            for_each_variable(|entry| apply(&mut options, entry));
            // SAFETY: we won the race to RESOLVING; nobody reads before RESOLVED.
            unsafe { *OPTIONS.0.get() = options };
            STATE.store(RESOLVED, Ordering::Release);
            FAST_BELOW.store(if options.debug { 0 } else { MEDIUM_MAX + 1 }, Ordering::Release);
            if options.verbose {
                print_options(&options);
            }
        }
        Err(_) => {
            while STATE.load(Ordering::Acquire) != RESOLVED {
                core::hint::spin_loop();
            }
        }
    }
}

/// Applies one `NAME=value` entry of the environment if it is an option,
/// warning about a bad value.
fn apply(options: &mut Options, entry: &[u8]) {
    if !entry.starts_with(b"PYMALLOC_") {
        return;
    }
    let Some(eq) = entry.iter().position(|&b| b == b'=') else { return };
    let (name, value) = (entry.get(..eq).unwrap_or_default(), entry.get(eq + 1..).unwrap_or_default());
    if let Some(Err(expected)) = options.set(name, value.trim_ascii()) {
        let mut out = ChunkWriter::new(|bytes| write_fd(2, bytes));
        let _ = out.write_str("pymalloc: ignoring ");
        let _ = write_printable(entry, &mut out);
        let _ = writeln!(out, ": expected {expected}");
    }
}

fn print_options(options: &Options) {
    let mut out = ChunkWriter::new(|bytes| write_fd(2, bytes));
    let _ = writeln!(out, "pymalloc {}: options", env!("CARGO_PKG_VERSION"));
    let _ = options.show("pymalloc:   ", &mut out);
}

unsafe extern "C" {
    /// libc's environment; NULL until libc has initialised itself.
    static environ: *const *const c_char;
    /// ld.so's: the initial stack, where `argc` is (then argv, NULL, envp).
    static __libc_stack_end: *const usize;
}

/// Calls `f` on every `NAME=value` string of the environment.
fn for_each_variable(mut f: impl FnMut(&[u8])) {
    // SAFETY: both statics are written before any code of ours can run
    // (environ possibly only later, by libc's initialisation, which is
    // why it is checked for NULL); reading a pointer is enough here.
    let (env, stack_end) = unsafe { (core::ptr::addr_of!(environ).read(), core::ptr::addr_of!(__libc_stack_end).read()) };
    let mut cur = if !env.is_null() {
        env
    } else if !stack_end.is_null() {
        // SAFETY: the initial stack holds argc, argv[0..argc], NULL, envp...
        unsafe {
            let argc = stack_end.read();
            let argv = stack_end.add(1).cast::<*const c_char>();
            if !argv.add(argc).read().is_null() {
                return; // not the layout we know: use the defaults
            }
            argv.add(argc + 1)
        }
    } else {
        return;
    };
    // SAFETY: an environment is a NULL-terminated array of NUL-terminated
    // strings that live for the whole process (or until the program
    // changes them, which it cannot do while it is inside malloc).
    unsafe {
        while !(*cur).is_null() {
            f(core::ffi::CStr::from_ptr(*cur).to_bytes());
            cur = cur.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_tolerant() {
        for t in ["1", "yes", "YES", "on", "true", "True", "y"] {
            assert_eq!(bool::parse(t.as_bytes()), Some(true), "{t}");
        }
        for f in ["0", "no", "off", "false", "FALSE", "n", ""] {
            assert_eq!(bool::parse(f.as_bytes()), Some(false), "{f}");
        }
        for bad in ["2", "yess", "enable", " 1"] {
            assert_eq!(bool::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn sizes_take_suffixes() {
        let cases = [
            ("0", 0), ("4096", 4096), ("64K", 64 << 10), ("64k", 64 << 10), ("64KB", 64 << 10),
            ("64KiB", 64 << 10), ("16M", 16 << 20), ("1G", 1 << 30), ("1g", 1 << 30), ("7B", 7),
        ];
        for (text, want) in cases {
            assert_eq!(usize::parse(text.as_bytes()), Some(want), "{text}");
        }
        for bad in ["", "K", "12X", "1.5M", "-1", "99999999999999999999", "18446744073709551615G", "1KiBB"] {
            assert_eq!(usize::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn show_stats_values() {
        assert_eq!(ShowStats::parse(b"json"), Some(ShowStats::Json));
        assert_eq!(ShowStats::parse(b"JSON"), Some(ShowStats::Json));
        assert_eq!(ShowStats::parse(b"1"), Some(ShowStats::Text));
        assert_eq!(ShowStats::parse(b"text"), Some(ShowStats::Text));
        assert_eq!(ShowStats::parse(b"off"), Some(ShowStats::Off));
        assert_eq!(ShowStats::parse(b"xml"), None);
    }

    #[test]
    fn paths_are_copied_and_bounded() {
        let p = Path::parse(b"/tmp/stats.json").unwrap();
        assert_eq!(p.as_bytes(), b"/tmp/stats.json");
        assert!(Path::parse(&[b'a'; PATH_CAPACITY]).is_none());
        assert!(Path::parse(&[b'a'; PATH_CAPACITY - 1]).is_some());
    }

    #[test]
    fn entries_set_only_known_options() {
        let mut o = Options::DEFAULT;
        apply(&mut o, b"PYMALLOC_DEBUG=on");
        apply(&mut o, b"PYMALLOC_SHOW_STATS= json ");
        apply(&mut o, b"PYMALLOC_UNKNOWN=1");
        apply(&mut o, b"PYMALLOC_VERBOSE=maybe"); // warns, keeps the default
        apply(&mut o, b"HOME=/root");
        assert!(o.debug);
        assert_eq!(o.show_stats, ShowStats::Json);
        assert!(!o.verbose);
    }

    #[test]
    fn table_lists_every_option_once() {
        let mut names = Options::NAMES.to_vec();
        assert!(names.iter().all(|n| n.starts_with("PYMALLOC_")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Options::NAMES.len());
        let mut text = String::new();
        Options::DEFAULT.show("", &mut text).unwrap();
        assert_eq!(
            text,
            "PYMALLOC_SHOW_STATS=0\nPYMALLOC_STATS_FILE=\nPYMALLOC_VERBOSE=0\nPYMALLOC_DEBUG=0\n\
             PYMALLOC_DEBUG_QUARANTINE=1048576\nPYMALLOC_DECAY_MS=250\nPYMALLOC_LARGE_CACHE=67108864\n\
             PYMALLOC_THREAD_CACHE=524288\n"
        );
    }

    #[test]
    fn readme_documents_every_option() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for name in Options::NAMES {
            assert!(readme.contains(&format!("| `{name}`")), "README's options table lacks {name}");
        }
    }

    #[test]
    fn reads_this_process_environment() {
        let mut n = 0;
        for_each_variable(|_| n += 1);
        assert_eq!(n, std::env::vars_os().count());
    }
}
