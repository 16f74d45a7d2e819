#!/bin/sh
# Instructions of a whole python3 process (callgrind: exact and repeatable
# where wall time swings from run to run) running py.py's workloads with
# PYTHONMALLOC=malloc under each allocator, as ratios to CPython's own
# allocator (pymalloc, no preload).
#   scripts/bench.d/pycallgrind.sh [--threaded] [--scale S] [WORKLOAD ...]
# WORKLOAD: churn json dict tree (default all four); S: py.py's scale
# (default 0.05; start-up is part of every count). --threaded starts (and
# joins) one thread first, so that the thread caches are on. Allocators
# whose Debian library is missing (jemalloc, mimalloc, tcmalloc) are
# left out. PYTHON (default python3) is the interpreter, LIB (default
# target/release/libpymalloc.so) the library measured.
# Under callgrind a program runs about 50 times slower, so a decay timed
# in milliseconds would give memory back (and ours would empty its thread
# caches) 50 times as often per instruction as outside it: PYMALLOC_DECAY_MS
# is scaled to match (12500 for the default 250 ms) unless set.
# PYTHONHASHSEED is fixed (0 unless set): with random string hashes the
# same run's count moved by 0.5-2% here, more than most changes measured.
set -eu
export PYTHONHASHSEED="${PYTHONHASHSEED:-0}"
cd "$(dirname "$0")/../.."
threaded=0 scale=0.05
while [ $# -gt 0 ]; do
    case $1 in
    --threaded) threaded=1; shift ;;
    --scale) scale=${2:?--scale needs a value}; shift 2 ;;
    -*) echo "usage: $0 [--threaded] [--scale S] [WORKLOAD ...]" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || set -- churn json dict tree
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
[ -n "${LIB-}" ] || [ -f target/release/libpymalloc.so ] || cargo build --release
ours=${LIB:-$PWD/target/release/libpymalloc.so}
libdir=/usr/lib/x86_64-linux-gnu
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cat >"$out/run.py" <<EOF
import runpy, sys, threading
if $threaded:
    t = threading.Thread(target=len, args=((),))
    t.start()
    t.join()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
EOF
count() { # NAME WORKLOAD: instructions of the whole process
    case $1 in
    cpython-pymalloc) set -- env ;;
    glibc) set -- env PYTHONMALLOC=malloc ;;
    pymalloc-rs) set -- env PYTHONMALLOC=malloc LD_PRELOAD="$ours" PYMALLOC_DECAY_MS="${PYMALLOC_DECAY_MS:-12500}" ;;
    *) set -- env PYTHONMALLOC=malloc LD_PRELOAD="$2" ;;
    esac
    "$@" valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$python" "$out/run.py" \
        scripts/bench.d/py.py "$workload" "$scale" >/dev/null 2>"$out/log" || { cat "$out/log" >&2; exit 1; }
    awk '/^summary:/ { print $2 }' "$out/cg"
}
printf '%-8s %-18s %14s %8s\n' workload allocator instructions ratio
for workload in "$@"; do
    base=$(count cpython-pymalloc)
    printf '%-8s %-18s %14s %8s\n' "$workload" cpython-pymalloc "$base" 1.000
    for name in glibc jemalloc:libjemalloc.so.2 mimalloc:libmimalloc.so.2 tcmalloc:libtcmalloc_minimal.so.4 pymalloc-rs; do
        lib=$libdir/${name#*:}
        case $name in *:*) [ -f "$lib" ] || continue ;; esac
        n=$(count "${name%%:*}" "$lib")
        printf '%-8s %-18s %14s %8s\n' "$workload" "${name%%:*}" "$n" "$(awk -v n="$n" -v b="$base" 'BEGIN { printf "%.3f", n / b }')"
    done
done
