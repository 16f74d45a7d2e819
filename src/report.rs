//! The statistics reports: text, in the layout of CPython's
//! `sys._debugmallocstats()` (a row per size class, then the totals)
//! extended with medium and large blocks and what the OS holds; and the
//! same as JSON, with every arena's pools for `scripts/heapmap`. Printed
//! by `pymalloc_print_stats`, and at exit when `PYMALLOC_SHOW_STATS` asks.
//!
//! The heap is copied under its lock (`Snapshot`, and the per-pool detail
//! into a scratch mapping sized beforehand); the writing happens after
//! the lock is released, through raw `write(2)`, without allocating.

use core::fmt::{self, Write};

use crate::config::{self, ShowStats};
use crate::geometry::{ARENA_SIZE, MEDIUM_MAX, PAGE_SIZE, SMALL_MAX};
use crate::debug_mode;
use crate::heap::HEAP;
use crate::os;
use crate::size_class::{MEDIUM_CLASSES, NUM_CLASSES, SMALL_CLASSES, class_info, size_of};
use crate::print::{ChunkWriter, NoCancel, write_fd};
use crate::stats::{ArenaDetail, PoolState, Snapshot, collect_detail};

/// `n` with thousands separators, as CPython prints its totals.
struct Grouped(usize);

impl fmt::Display for Grouped {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut buf = [0u8; 32];
        f.pad(core::str::from_utf8(decimal(self.0, true, &mut buf)).unwrap_or("?"))
    }
}

/// `n` in decimal, with a comma between groups of three digits if
/// `grouped`, written at the end of `buf` (26 bytes hold any `usize`).
/// Free of indexing and arithmetic that could panic, by construction:
/// this runs inside `core::fmt`, where tests/exports.rs cannot follow
/// the calls.
fn decimal(mut n: usize, grouped: bool, buf: &mut [u8; 32]) -> &[u8] {
    let mut used = 0;
    let mut in_group = 0;
    for slot in buf.iter_mut().rev() {
        if grouped && in_group == 3 {
            *slot = b',';
            in_group = 0;
        } else {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
            in_group += 1;
        }
        used += 1;
        if n == 0 && in_group > 0 {
            break;
        }
    }
    buf.get(buf.len().saturating_sub(used)..).unwrap_or_default()
}

pub fn write_text(s: &Snapshot, out: &mut impl Write) -> fmt::Result {
    let t = &s.totals;
    writeln!(out, "pymalloc {} statistics (pid {})", env!("CARGO_PKG_VERSION"), process_id())?;
    writeln!(
        out,
        "Small block threshold = {SMALL_MAX}, in {SMALL_CLASSES} size classes; \
         medium up to {MEDIUM_MAX}, in {MEDIUM_CLASSES} more; larger blocks are mappings.\n"
    )?;
    writeln!(out, "class   size   num pools   blocks in use  avail blocks")?;
    writeln!(out, "-----   ----   ---------   -------------  ------------")?;
    for (class, c) in s.classes.iter().enumerate() {
        if c.pools > 0 {
            writeln!(out, "{:5} {:6} {:11} {:15} {:13}", class, size_of(class), c.pools, c.blocks_in_use, c.blocks_free)?;
        }
    }
    // Large blocks: "avail" are cached mappings, ready for reuse.
    writeln!(out, "large   mmap {:>11} {:15} {:13}", "-", t.large_blocks, t.cached_mappings)?;
    // Thread caches: their blocks are free, held for their threads.
    writeln!(out, "thread caches {:>5} {:>15} {:13}", t.thread_caches, "-", t.thread_cache_blocks)?;
    writeln!(out)?;
    let mut result = Ok(());
    t.for_each(|_, label, value| {
        if result.is_ok() {
            result = writeln!(out, "# {label:<33}= {:>21}", Grouped(value));
        }
    });
    result
}

pub fn write_json(s: &Snapshot, arenas: &[ArenaDetail], truncated: bool, out: &mut impl Write) -> fmt::Result {
    writeln!(out, "{{\"pymalloc\": \"{}\", \"pid\": {},", env!("CARGO_PKG_VERSION"), process_id())?;
    writeln!(
        out,
        " \"geometry\": {{\"arena_size\": {ARENA_SIZE}, \"page_size\": {PAGE_SIZE}, \
         \"small_max\": {SMALL_MAX}, \"medium_max\": {MEDIUM_MAX}}},"
    )?;
    out.write_str(" \"totals\": {")?;
    let mut result = Ok(());
    let mut first = true;
    s.totals.for_each(|name, _, value| {
        if result.is_ok() {
            result = write!(out, "{}\"{name}\": {value}", if first { "" } else { ", " });
            first = false;
        }
    });
    result?;
    writeln!(out, "}},")?;
    writeln!(out, " \"classes\": [")?;
    for (class, c) in s.classes.iter().enumerate() {
        writeln!(
            out,
            "  {{\"class\": {class}, \"size\": {}, \"pool_size\": {}, \"num_pools\": {}, \
             \"blocks_in_use\": {}, \"avail_blocks\": {}}}{}",
            size_of(class),
            crate::geometry::tier_pool_size(class_info(class).tier as usize),
            c.pools,
            c.blocks_in_use,
            c.blocks_free,
            if class + 1 < NUM_CLASSES { "," } else { "" }
        )?;
    }
    writeln!(out, " ],")?;
    out.write_str(" \"pool_states\": [")?;
    for (i, name) in PoolState::NAMES.iter().enumerate() {
        write!(out, "{}\"{name}\"", if i > 0 { ", " } else { "" })?;
    }
    writeln!(out, "],")?;
    writeln!(out, " \"arenas\": [")?;
    for (i, a) in arenas.iter().enumerate() {
        write!(out, "  {{\"base\": \"{:#x}\", \"pool_size\": {}, \"free\": {}, \"pools\": [", a.base, a.pool_size, a.free)?;
        for (j, p) in a.pools.iter().take(a.npools as usize).enumerate() {
            let class = if matches!(p.state, PoolState::Used | PoolState::Full) { p.class as i32 } else { -1 };
            write!(out, "{}[{}, {class}, {}, {}]", if j > 0 { "," } else { "" }, p.state as u8, p.in_use, p.capacity)?;
        }
        writeln!(out, "]}}{}", if i + 1 < arenas.len() { "," } else { "" })?;
    }
    writeln!(out, " ],")?;
    writeln!(out, " \"arenas_truncated\": {truncated}}}")
}

fn process_id() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Writes the text report to `fd`.
pub fn print_text(fd: i32) {
    let snapshot = debug_mode::locked(|heap, quarantine| Snapshot::of(heap, quarantine));
    let mut out = ChunkWriter::new(|bytes| write_fd(fd, bytes));
    let _ = write_text(&snapshot, &mut out);
}

/// Writes the JSON report to `fd`, with as many arenas as a scratch
/// mapping sized just before taking the lock can hold.
pub fn print_json(fd: i32) {
    let room = HEAP.lock().arenas().counters.arenas + 8;
    let len = os::page_round_up(room * core::mem::size_of::<ArenaDetail>());
    let buf = os::map_scratch(len).cast::<ArenaDetail>();
    let details: &mut [ArenaDetail] = if buf.is_null() {
        &mut []
    } else {
        // SAFETY: a fresh zeroed mapping of `room` entries, each valid
        // when all-zero (see `ArenaDetail`), owned here until unmapped.
        unsafe { core::slice::from_raw_parts_mut(buf, room) }
    };
    let (snapshot, n, truncated) = debug_mode::locked(|heap, quarantine| {
        let (n, truncated) = collect_detail(heap, details);
        (Snapshot::of(heap, quarantine), n, truncated)
    });
    {
        let mut out = ChunkWriter::new(|bytes| write_fd(fd, bytes));
        let _ = write_json(&snapshot, details.get(..n).unwrap_or_default(), truncated, &mut out);
    }
    if !buf.is_null() {
        // SAFETY: mapped above, no longer referenced.
        unsafe { os::unmap_scratch(buf.cast(), len) };
    }
}

/// The exit report, if `PYMALLOC_SHOW_STATS` asks for one: run from the
/// library's destructor (`.fini_array`), after the program's `atexit`
/// handlers, in every process that exits through `exit` (forked children
/// too; other threads may still be running: they just wait for the lock).
extern "C" fn at_exit() {
    let options = config::get();
    if options.show_stats == ShowStats::Off {
        return;
    }
    // `open` and `close` are cancellation points too.
    let _no_cancel = NoCancel::new();
    let fd = open_stats_file(&options.stats_file);
    match options.show_stats {
        ShowStats::Off => {}
        ShowStats::Text => print_text(fd),
        ShowStats::Json => print_json(fd),
    }
    if fd != 2 {
        // SAFETY: a descriptor opened by open_stats_file.
        unsafe { libc::close(fd) };
    }
}

#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".fini_array")]
static AT_EXIT: extern "C" fn() = at_exit;

/// Opens `PYMALLOC_STATS_FILE` (`%p` replaced by the process id), or
/// returns 2 (stderr) if none is set or it cannot be opened.
fn open_stats_file(path: &config::Path) -> i32 {
    if path.as_bytes().is_empty() {
        return 2;
    }
    let mut name = [0u8; 320];
    let mut len = 0;
    {
        let mut push = |bytes: &[u8]| {
            for &b in bytes {
                if let Some(slot) = name.get_mut(len) {
                    *slot = b;
                    len += 1;
                }
            }
        };
        let mut rest = path.as_bytes();
        while let Some(at) = rest.windows(2).position(|w| w == b"%p") {
            push(rest.get(..at).unwrap_or_default());
            let mut digits = [0u8; 32];
            push(decimal(process_id().unsigned_abs() as usize, false, &mut digits));
            rest = rest.get(at + 2..).unwrap_or_default();
        }
        push(rest);
    }
    if len >= name.len() {
        return 2; // too long once expanded; name[len] must stay NUL
    }
    // SAFETY: `name` is NUL-terminated (zero-filled past `len`).
    let fd = unsafe {
        libc::open(name.as_ptr().cast(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o644)
    };
    if fd < 0 {
        let mut out = ChunkWriter::new(|bytes| write_fd(2, bytes));
        let _ = out.write_str("pymalloc: cannot open PYMALLOC_STATS_FILE, statistics go to stderr\n");
        return 2;
    }
    fd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debug_mode::Quarantine;
    use crate::heap::Heap;

    #[test]
    fn grouped_digits() {
        assert_eq!(format!("{}", Grouped(0)), "0");
        assert_eq!(format!("{}", Grouped(999)), "999");
        assert_eq!(format!("{}", Grouped(1000)), "1,000");
        assert_eq!(format!("{:>10}", Grouped(14680064)), "14,680,064");
        assert_eq!(format!("{}", Grouped(usize::MAX)), "18,446,744,073,709,551,615");
        let mut buf = [0u8; 32];
        assert_eq!(decimal(0, false, &mut buf), b"0");
        assert_eq!(decimal(1_234_567, false, &mut buf), b"1234567");
        assert_eq!(decimal(usize::MAX, false, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn text_report_has_a_row_per_class_in_use() {
        let mut heap = Heap::new();
        let blocks: Vec<_> = [16, 16, 500, 1000, 200_000].iter().map(|&n| heap.alloc(n).ptr).collect();
        let mut text = String::new();
        write_text(&Snapshot::of(&heap, &Quarantine::new()), &mut text).unwrap();
        assert!(text.contains("\n    0     16           1               2 "), "{text}");
        assert!(text.contains("\n   31    512           1               1 "), "{text}");
        assert!(text.contains("\nlarge   mmap           -               1 "), "{text}");
        assert!(text.contains("# arenas allocated current         =                     "), "{text}");
        assert!(text.contains("# bytes in large blocks"), "{text}");
        for p in blocks {
            heap.free(p).unwrap();
        }
    }
}
