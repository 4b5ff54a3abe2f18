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
# sampled NAME PID -- BENCH ARGS: perf record on PID for the middle of the bench run (after
# the connections are set up, so their logins do not show), then reports.
sampled() {
    local name=$1 pid=$2
    shift 3
    "$BIN/tether-bench" "$@" > /dev/null &
    local bench=$!
    sleep 2
    perf record -q -F 1999 -g --call-graph dwarf,16384 -o "$WORK/$name.data" -p "$pid" \
        -- sleep $((d - 3))
    wait "$bench"
    perf report -i "$WORK/$name.data" --no-children --percent-limit 0.8 --stdio \
        --sort symbol -g none 2> /dev/null | sed 's/ *$//' > "$OUT/$name.report"
    perf report -i "$WORK/$name.data" --children --percent-limit 4 --stdio \
        --sort symbol -g caller,0.5,callee,function,percent --max-stack 24 \
        2> /dev/null | sed 's/ *$//' > "$OUT/$name.callers"
}
# plain NAME PID -- BENCH ARGS: CPU time and syscalls only (uprobes on malloc slow the
# server down several times, so CPU per message is taken from this run).
plain() {
    local name=$1 pid=$2
    shift 3
    perf stat -x, -o "$OUT/$name.stat" -p "$pid" -e task-clock,raw_syscalls:sys_enter,context-switches \
        -- "$BIN/tether-bench" --json-out "$OUT/$name.jsonl" "$@" | grep -v '^{'
}

for target in "tether $TETHER_ADDR $TETHER_PID" "raw $RAW_ADDR $RAW_PID" "redis $REDIS_ADDR $REDIS_PID"; do
    read -r proto addr pid <<< "$target"
    counted "cmd-50x16-$proto" "$pid" -- cmd --proto "$proto" --addr "$addr" \
        --shapes 50x16 --duration "$d" --warmup 0
done
for target in "tether $TETHER_ADDR $TETHER_PID" "raw $RAW_ADDR $RAW_PID" "redis $REDIS_ADDR $REDIS_PID"; do
    read -r proto addr pid <<< "$target"
    plain "cmd-50x16-$proto-plain" "$pid" -- cmd --proto "$proto" --addr "$addr" \
        --shapes 50x16 --duration "$d" --warmup 0
done
sampled cmd-50x16-tether "$TETHER_PID" -- cmd --addr "$TETHER_ADDR" --shapes 50x16 \
    --duration "$d" --warmup 0

counted fanout-1000-tether "$TETHER_PID" -- --threads 2 fanout --proto tether \
    --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" --connections 1000 --duration "$d" --publishers 8
counted fanout-1000-redis "$REDIS_PID" -- --threads 2 fanout --proto redis \
    --addr "$REDIS_ADDR" --connections 1000 --duration "$d" --publishers 8
plain fanout-1000-tether-plain "$TETHER_PID" -- --threads 2 fanout --proto tether \
    --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" --connections 1000 --duration "$d" --publishers 8
plain fanout-1000-redis-plain "$REDIS_PID" -- --threads 2 fanout --proto redis \
    --addr "$REDIS_ADDR" --connections 1000 --duration "$d" --publishers 8
sampled fanout-1000-tether "$TETHER_PID" -- --threads 2 fanout --proto tether \
    --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" --connections 1000 --duration "$d" --publishers 8

# The login storm, as it is and then with the bcrypt threads at nice 19: what a pool that
# yields to the event loops would give (an experiment on the running process, no code change).
"$BIN/tether-bench" --json-out "$OUT/storm-as-is.jsonl" login-storm --addr "$TETHER_ADDR" \
    --duration "$d" --warmup 1 | grep -v '^{'
for comm in /proc/"$TETHER_PID"/task/*/comm; do
    if grep -q tether-bcrypt "$comm"; then
        tid=$(basename "$(dirname "$comm")")
        renice -n 19 -p "$tid" > /dev/null
    fi
done
"$BIN/tether-bench" --json-out "$OUT/storm-bcrypt-nice19.jsonl" login-storm --addr "$TETHER_ADDR" \
    --duration "$d" --warmup 1 | grep -v '^{'
echo "profiles in $OUT"
