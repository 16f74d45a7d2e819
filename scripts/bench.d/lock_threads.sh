#!/bin/sh
# Small-block alloc/free throughput with 1, 2 and 4 threads, glibc against
# pymalloc, as ratios from one hyperfine run each (see lock_threads.c).
#   scripts/bench.d/lock_threads.sh [OPS_PER_THREAD]
# Builds the release library if needed. Each thread does the same number
# of operations, so with N threads there is N times the work: compare the
# columns, not the rows.
set -eu
cd "$(dirname "$0")/../.."
ops=${1:-2000000}
lib=$PWD/target/release/libpymalloc.so
[ -f "$lib" ] || cargo build --release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -O2 -pthread scripts/bench.d/lock_threads.c -o "$out/threads"
for n in 1 2 4; do
    hyperfine -N -w 1 -r 5 --export-json "$out/$n.json" \
        -n glibc "$out/threads $n $ops" \
        -n pymalloc "env LD_PRELOAD=$lib $out/threads $n $ops" >/dev/null
done
python3 - "$out" "$ops" <<'PY'
import json, sys
out, ops = sys.argv[1], int(sys.argv[2])
print(f"threads  ops/thread  glibc median  pymalloc median  pymalloc/glibc")
for n in (1, 2, 4):
    r = {x["command"]: x for x in json.load(open(f"{out}/{n}.json"))["results"]}
    g, p = r["glibc"]["median"], r["pymalloc"]["median"]
    print(f"{n:7}  {ops:10}  {g * 1000:9.0f} ms  {p * 1000:12.0f} ms  {p / g:14.2f}")
PY
