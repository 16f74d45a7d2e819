#!/bin/sh
# Instructions executed inside the allocation functions, counted by
# callgrind (exact and repeatable where wall time is noisy), for one or
# more builds of the library: compare a change against the commit before.
#   scripts/bench.d/callgrind.sh [LIB ...]    (default target/release/libpymalloc.so)
# Only instructions inside malloc, free, realloc and calloc (and what they
# call) are counted. For `lock_threads`, which makes OPS malloc/free pairs,
# the count is also given per pair: 0 threads is the direct path of a
# single-threaded process, 1 thread the thread cache.
set -eu
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { [ -f target/release/libpymalloc.so ] || cargo build --release; set -- "$PWD/target/release/libpymalloc.so"; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -O2 -pthread scripts/bench.d/lock_threads.c -o "$out/lock_threads"
cc -O2 scripts/bench.d/single.c -o "$out/single"
ops=1000000
count() { # LIB PROGRAM ARGS...: instructions inside the allocation functions
    lib=$1
    shift
    env LD_PRELOAD="$lib" valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
        --toggle-collect=malloc --toggle-collect=free --toggle-collect=realloc \
        --toggle-collect=calloc "$@" >/dev/null 2>"$out/log" || { cat "$out/log" >&2; exit 1; }
    awk '/^summary:/ { print $2 }' "$out/cg"
}
printf '%-24s %-44s %14s %10s\n' workload library instructions per-pair
for lib in "$@"; do
    for w in "lock_threads 0 $ops" "lock_threads 1 $ops" "single random 0.05" "single realloc 0.05" \
        "single medium 0.5" "single large 0.5"; do
        # shellcheck disable=SC2086 # the workload is a program and its arguments
        n=$(count "$lib" "$out/"$w)
        case $w in lock_threads*) pair=$(awk -v n="$n" -v o="$ops" 'BEGIN { printf "%.1f", n / o }') ;; *) pair=- ;; esac
        printf '%-24s %-44s %14s %10s\n' "$w" "$lib" "$n" "$pair"
    done
done
