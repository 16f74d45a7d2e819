#!/usr/bin/env python3
"""Times one command under several builds of the library, taking turns
(one run of each per round), so that a busy machine's drift hits them all
alike. Prints the median wall and CPU (user+sys) time of each, relative to
the first. Used to measure the hardening's cost (README, "Hardening and
debug mode"):

    cargo build --release --features unchecked && cp target/release/libpymalloc.so /tmp/unchecked.so
    cargo build --release && cp target/release/libpymalloc.so /tmp/checked.so
    gcc -O2 -o /tmp/churn scripts/bench.d/churn.c
    scripts/bench.d/interleave.py 15 /tmp/unchecked.so /tmp/checked.so -- /tmp/churn small
"""
import os
import resource
import statistics
import subprocess
import sys
import time

split = sys.argv.index("--")
rounds, libs, command = int(sys.argv[1]), sys.argv[2:split], sys.argv[split + 1:]
wall = {lib: [] for lib in libs}
cpu = {lib: [] for lib in libs}
for _ in range(rounds):
    for lib in libs:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=dict(os.environ, LD_PRELOAD=lib), stdout=subprocess.DEVNULL, check=True)
        wall[lib].append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[lib].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
base_wall, base_cpu = statistics.median(wall[libs[0]]), statistics.median(cpu[libs[0]])
for lib in libs:
    w, c = statistics.median(wall[lib]), statistics.median(cpu[lib])
    print(f"{lib}: wall {w * 1000:.0f} ms ({(w / base_wall - 1) * 100:+.1f}%), "
          f"cpu {c * 1000:.0f} ms ({(c / base_cpu - 1) * 100:+.1f}%)")
