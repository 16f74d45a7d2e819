"""Runs every workload under every allocator, interleaved, and reports
medians of wall time and peak RSS as ratios to glibc (see scripts/bench).

Each run is one process; its wall time is measured around it and its
peak RSS (ru_maxrss) comes from wait4 in `peakrss`, a small launcher, so
nothing runs inside the measured program but the workload."""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LIBDIR = "/usr/lib/x86_64-linux-gnu"

# name -> library to preload (None: the C library's own malloc)
ALLOCATORS = {
    "glibc": None,
    "jemalloc": f"{LIBDIR}/libjemalloc.so.2",
    "mimalloc": f"{LIBDIR}/libmimalloc.so.2",
    "tcmalloc": f"{LIBDIR}/libtcmalloc_minimal.so.4",
    "pymalloc-rs": f"{ROOT}/target/release/libpymalloc.so",
}
# CPython's built-in pymalloc: no preload, PYTHONMALLOC left alone.
BUILTIN = "cpython-pymalloc"


def workloads(build, python):
    """(name, group, argv); group is c1 (single thread), cN (N threads), py, oom or memret."""
    single, threads, memret = (os.path.join(build, x) for x in ("single", "threads", "memret"))
    rows = [(f"c1.{m}", "c1", [single, m]) for m in ("random", "lifo", "realloc", "medium", "large", "spread", "huge", "grow")]
    for n in (1, 2, 4):
        rows += [(f"t{n}.{m}", f"c{n}", [threads, m, str(n)]) for m in ("churn", "prodcons", "larson")]
    rows += [(f"py.{m}", "py", [python, os.path.join(HERE, "py.py"), m]) for m in ("churn", "json", "dict", "tree")]
    rows += [(f"oom.{m}", "oom", [os.path.join(build, "impossible"), m]) for m in ("loop", "between")]
    rows.append(("memret", "memret", [memret]))
    # The same burst, but one medium block in 16 lives on among the freed ones.
    rows.append(("memret.survivors", "memret", [memret, "1", "16"]))
    return rows


def run(peakrss, argv, env):
    """One run: (seconds, peak RSS in KiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run([peakrss] + argv, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {err}")
    rss = int(err.splitlines()[-1].removeprefix("peak_rss_kb="))
    return seconds, rss, proc.stdout.decode()


def environment(allocator, group):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("PYTHONMALLOC", None)
    lib = ALLOCATORS.get(allocator)
    if lib:
        env["LD_PRELOAD"] = lib
    if group == "py" and allocator != BUILTIN:
        env["PYTHONMALLOC"] = "malloc"
    return env


def memret_fields(out):
    """rss_kb before=N peak=N freed=N after=N -> dict."""
    line = next(l for l in out.splitlines() if l.startswith("rss_kb"))
    return {k: int(v) for k, v in (f.split("=") for f in line.split()[1:])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated prefixes of workload names")
    ap.add_argument("--allocators", default=",".join(ALLOCATORS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    allocators = args.allocators.split(",")
    for a in allocators:
        if a not in ALLOCATORS:
            sys.exit(f"bench: unknown allocator {a}")
    prefixes = [p for p in args.only.split(",") if p]
    chosen = [w for w in workloads(args.build, args.python) if not prefixes or any(w[0].startswith(p) for p in prefixes)]
    peakrss = os.path.join(args.build, "peakrss")
    if not chosen:
        sys.exit("bench: no workload matches --only")

    runs = []  # dicts, one per run
    for r in range(args.rounds):
        for name, group, argv in chosen:
            names = allocators + ([BUILTIN] if group == "py" else [])
            # Rotate the order each round so no allocator always runs first.
            names = names[r % len(names):] + names[: r % len(names)]
            for alloc in names:
                cmd = argv + [str(args.scale)] if args.scale != 1.0 else argv
                seconds, rss, out = run(peakrss, cmd, environment(alloc, group))
                row = {"round": r, "workload": name, "group": group, "allocator": alloc, "seconds": seconds, "peak_rss_kb": rss}
                if group == "memret":
                    row.update({f"rss_{k}_kb": v for k, v in memret_fields(out).items()})
                runs.append(row)
        print(f"bench: round {r + 1}/{args.rounds} done", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    fields = ["round", "workload", "group", "allocator", "seconds", "peak_rss_kb"] + [
        f"rss_{k}_kb" for k in ("before", "peak", "freed", "after")
    ]
    with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(runs)

    medians = summarise(runs, chosen)
    with open(os.path.join(args.out, "medians.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "allocator", "seconds", "peak_rss_kb", "time_vs_glibc", "rss_vs_glibc", "rss_after_vs_before"])
        for m in medians:
            w.writerow([m["workload"], m["allocator"], f"{m['seconds']:.4f}", m["peak_rss_kb"],
                        f"{m['time_ratio']:.3f}", f"{m['rss_ratio']:.3f}", m.get("after_ratio", "")])
    table = render_table(medians, chosen, allocators)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    chart(medians, chosen, os.path.join(args.out, "bench.png"))
    print(f"bench: wrote {args.out}/runs.csv, medians.csv, table.md, bench.png", file=sys.stderr)


def summarise(runs, chosen):
    out = []
    for name, group, _ in chosen:
        mine = [r for r in runs if r["workload"] == name]
        base = [r for r in mine if r["allocator"] == "glibc"]
        base_t = statistics.median(r["seconds"] for r in base) if base else float("nan")
        base_m = statistics.median(r["peak_rss_kb"] for r in base) if base else float("nan")
        for alloc in dict.fromkeys(r["allocator"] for r in mine):
            rs = [r for r in mine if r["allocator"] == alloc]
            t = statistics.median(r["seconds"] for r in rs)
            m = statistics.median(r["peak_rss_kb"] for r in rs)
            row = {"workload": name, "group": group, "allocator": alloc, "seconds": t, "peak_rss_kb": m,
                   "time_ratio": t / base_t, "rss_ratio": m / base_m}
            if group == "memret":
                for k in ("before", "peak", "freed", "after"):
                    row[k] = statistics.median(r[f"rss_{k}_kb"] for r in rs)
                row["after_ratio"] = f"{row['after'] / row['before']:.3f}"
            out.append(row)
    return out


def render_table(medians, chosen, allocators):
    cols = allocators + ([BUILTIN] if any(g == "py" for _, g, _ in chosen) else [])
    lines = ["Medians as ratios to glibc: time / peak RSS (lower is better).", "",
             "| workload | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, group, _ in chosen:
        cells = []
        for a in cols:
            m = next((x for x in medians if x["workload"] == name and x["allocator"] == a), None)
            cells.append(f"{m['time_ratio']:.2f} / {m['rss_ratio']:.2f}" if m else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ret = [x for x in medians if x["group"] == "memret"]
    if ret:
        lines += ["", "Memory return (RSS in MiB: start, all allocated, just freed, after 1 s of light work):", "",
                  "| workload | allocator | start | peak | freed | after | after / start |",
                  "|---|---|---|---|---|---|---|"]
        for x in ret:
            lines.append(f"| {x['workload']} | {x['allocator']} | {x['before'] / 1024:.1f} | {x['peak'] / 1024:.0f} | "
                         f"{x['freed'] / 1024:.1f} | {x['after'] / 1024:.1f} | {x['after_ratio']} |")
    return "\n".join(lines) + "\n"


def chart(medians, chosen, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no chart", file=sys.stderr)
        return
    names = [n for n, _, _ in chosen]
    allocs = list(dict.fromkeys(m["allocator"] for m in medians))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.75), 8), sharex=True)
    width = 0.8 / len(allocs)
    for i, a in enumerate(allocs):
        xs, ts, ms = [], [], []
        for j, n in enumerate(names):
            m = next((x for x in medians if x["workload"] == n and x["allocator"] == a), None)
            if m:
                xs.append(j + (i - (len(allocs) - 1) / 2) * width)
                ts.append(m["time_ratio"])
                ms.append(m["rss_ratio"])
        axes[0].bar(xs, ts, width, label=a)
        axes[1].bar(xs, ms, width, label=a)
    for ax, title in zip(axes, ("wall time / glibc", "peak RSS / glibc")):
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(title)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(allocs), fontsize=8, loc="upper left")
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=45, ha="right")
    fig.suptitle("Allocators on scripts/bench workloads (medians, lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
