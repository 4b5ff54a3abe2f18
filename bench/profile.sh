#!/usr/bin/env bash
# Profiles the servers under the scenarios that miss their targets (see BENCHMARKS.md):
# for each case, `perf stat` counts the server's syscalls, malloc/realloc calls (uprobes on
# libc) and CPU time over the whole bench command, and `perf record` samples where the
# server's CPU goes. Needs Debian's linux-perf, root, and `perf stat -e instructions true`
# to work. Output: OUT (default bench/results/profile) with *.stat, *.jsonl, *.report.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/profile}
SECONDS_PER_CASE=${SECONDS_PER_CASE:-6}
mkdir -p "$OUT"
cargo build --release --locked -p tether -p tether-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
LIBC=$(ldd "$BIN/tether" | awk '/libc.so.6/ {print $3}')
for fn in malloc realloc; do
    perf probe -q -x "$LIBC" "$fn" 2> /dev/null || true
done
start_servers 2000
d=$SECONDS_PER_CASE

# counted NAME PID -- BENCH ARGS: perf stat on PID while tether-bench runs.
counted() {
    local name=$1 pid=$2
    shift 3
    perf stat -x, -o "$OUT/$name.stat" -p "$pid" \
        -e task-clock,raw_syscalls:sys_enter,probe_libc:malloc,probe_libc:realloc,context-switches \
        -- "$BIN/tether-bench" --json-out "$OUT/$name.jsonl" "$@" | grep -v '^{'
}
# sampled NAME PID -- BENCH ARGS: perf record on PID while tether-bench runs, then a report.
sampled() {
    local name=$1 pid=$2
    shift 3
    perf record -q -F 1999 -g --call-graph dwarf,16384 -o "$WORK/$name.data" -p "$pid" \
        -- "$BIN/tether-bench" "$@" > /dev/null
    perf report -i "$WORK/$name.data" --no-children --percent-limit 1.5 --stdio \
        --sort symbol -g none > "$OUT/$name.report" 2> /dev/null
    perf report -i "$WORK/$name.data" --children --percent-limit 4 --stdio \
        --sort symbol -g caller,0.5,callee,function,percent --max-stack 24 \
        > "$OUT/$name.callers" 2> /dev/null
}

for target in "tether $TETHER_ADDR $TETHER_PID" "raw $RAW_ADDR $RAW_PID" "redis $REDIS_ADDR $REDIS_PID"; do
    read -r proto addr pid <<< "$target"
    counted "cmd-50x16-$proto" "$pid" -- cmd --proto "$proto" --addr "$addr" \
        --shapes 50x16 --duration "$d" --warmup 0
done
sampled cmd-50x16-tether "$TETHER_PID" -- cmd --addr "$TETHER_ADDR" --shapes 50x16 \
    --duration "$d" --warmup 0

counted fanout-1000-tether "$TETHER_PID" -- --threads 2 fanout --proto tether \
    --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" --connections 1000 --duration "$d" --publishers 8
counted fanout-1000-redis "$REDIS_PID" -- --threads 2 fanout --proto redis \
    --addr "$REDIS_ADDR" --connections 1000 --duration "$d" --publishers 8
sampled fanout-1000-tether "$TETHER_PID" -- --threads 2 fanout --proto tether \
    --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" --connections 1000 --duration "$d" --publishers 8
echo "profiles in $OUT"
