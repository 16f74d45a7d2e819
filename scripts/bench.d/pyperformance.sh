#!/bin/sh
# pyperformance (CPython's benchmark suite) under CPython's own allocator
# (pymalloc, no preload) and with PYTHONMALLOC=malloc under glibc, this
# library and mimalloc (if its Debian library is installed); prints
# pyperf's table of each benchmark's mean against pymalloc's, with the
# geometric mean on its last row.
#   scripts/bench.d/pyperformance.sh [--rounds N] [-b BENCHMARKS] [--only NAMES]
# BENCHMARKS: pyperformance's -b list (default: its default group, 88
# benchmarks, about 50 minutes per allocator with --fast on 2 cores).
# NAMES: the allocators, of "pymalloc glibc pymalloc-rs mimalloc" (the
# default), in quotes.
# The rounds run the allocators interleaved (pymalloc, glibc, ours,
# mimalloc, then again), so that a machine whose speed drifts over an
# hour does not favour one of them; each allocator's rounds are appended
# to one file. Results go to target/pyperformance/.
# pyperformance comes from PyPI into a venv of its own there, and makes
# another beside it for the benchmarks, with their requirements.
# PYTHON (default python3) is the interpreter measured, LIB (default
# target/release/libpymalloc.so) the library. Wall time: run it on a quiet
# machine, and read pyperf's spread of each benchmark beside its mean.
set -eu
cd "$(dirname "$0")/../.."
rounds=1 benchmarks=default names="pymalloc glibc pymalloc-rs mimalloc"
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
    -b) benchmarks=${2:?-b needs a value}; shift 2 ;;
    --only) names=${2:?--only needs a value}; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [-b BENCHMARKS] [--only NAMES]" >&2; exit 2 ;;
    esac
done
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
[ -n "${LIB-}" ] || [ -f target/release/libpymalloc.so ] || cargo build --release
ours=$(realpath "${LIB:-target/release/libpymalloc.so}")
mimalloc=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
mkdir -p target/pyperformance
cd target/pyperformance
out=$PWD
[ -x venv/bin/pyperformance ] || {
    "$python" -m venv venv
    venv/bin/pip install --quiet pyperformance==1.14.0
}
for name in $names; do rm -f "$name.json"; done
for round in $(seq "$rounds"); do
    for name in $names; do
        case $name in
        pymalloc) set -- env ;;
        glibc) set -- env PYTHONMALLOC=malloc ;;
        pymalloc-rs) set -- env PYTHONMALLOC=malloc LD_PRELOAD="$ours" ;;
        mimalloc) [ -f "$mimalloc" ] || continue; set -- env PYTHONMALLOC=malloc LD_PRELOAD="$mimalloc" ;;
        *) echo "unknown allocator $name" >&2; exit 2 ;;
        esac
        echo "round $round: $name" >&2
        "$@" venv/bin/pyperformance run --fast --python "$python" -b "$benchmarks" \
            --inherit-environ PYTHONMALLOC,LD_PRELOAD --append "$out/$name.json" >"$name.$round.log" 2>&1 ||
            echo "  (some benchmarks failed: see $out/$name.$round.log)" >&2
    done
done
files=""
for name in $names; do [ -f "$name.json" ] && files="$files $name.json"; done
# shellcheck disable=SC2086 # one argument per allocator's file
venv/bin/python -m pyperf compare_to --table $files | tee table.txt
