#!/usr/bin/env bash
# User-space instructions per reply of a tether build under cmd 50x16, counted exactly by
# callgrind (valgrind), so independent of the machine's load: the server (WORKERS, default
# 1) runs under callgrind, the counters are zeroed after the warm-up and dumped 10 s later;
# the `prolongate` commands /metrics counted meanwhile divide the total. Prints the total
# and the top functions per reply; the dump is left in OUT_DIR (default /tmp).
# Usage: [WORKERS=1] [BENCH=tether-bench] bench/cmd-instructions.sh NAME TETHER_BINARY
set -euo pipefail
NAME=$1 TETHER=$2 WORKERS=${WORKERS:-1} OUT_DIR=${OUT_DIR:-/tmp}
B=${BENCH:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether-bench}
WORK=$(mktemp -d)
source "$(dirname "$0")/common.sh"
trap 'kill $(jobs -p) 2>/dev/null; stop_servers; rm -rf "$WORK"' EXIT
"$B" make-users 100 --cost 4 > "$WORK/users.toml"
rm -f "$OUT_DIR/callgrind.$NAME".*
TETHER_BIN=$TETHER TETHER_BENCH=$B TETHER_TLS=0 TETHER_WAIT=${TETHER_WAIT:-60} \
    TETHER_PREFIX="valgrind --tool=callgrind --callgrind-out-file=$OUT_DIR/callgrind.$NAME.%p" \
    start_tether c "$WORKERS"
PID=$STARTED_PID ADDR=$STARTED_ADDR ADMIN=$STARTED_ADMIN
commands() {
    curl -s "http://$ADMIN/metrics" | awk '/^tether_commands_total\{type="prolongate"\}/ {print $2}'
}
"$B" --threads 2 cmd --proto tether --addr "$ADDR" --shapes 50x16 --duration 25 \
    --warmup 1 > "$WORK/bench" 2>&1 &
BENCH_PID=$!
sleep 6
callgrind_control -z "$PID" > /dev/null 2>&1
c0=$(commands)
sleep 10
replies=$(($(commands) - c0))
callgrind_control -d "$PID" > /dev/null 2>&1
wait "$BENCH_PID" || true
dump=$(ls "$OUT_DIR/callgrind.$NAME.$PID".*)
echo "$NAME: $replies replies in the window"
callgrind_annotate --threshold=100 --auto=no "$dump" 2> /dev/null |
    awk -v n="$replies" '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%.1f instructions per reply\n", $1 / n}
        /^ *[0-9,]+ \(/ && shown < 25 && !/PROGRAM|clone|start_thread|thread_start|call_once|begin_short|block_on|enter_runtime/ {
            v = $1; gsub(",", "", v); line = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", line)
            printf "%8.1f %s\n", v / n, substr(line, 1, 150); shown++ }'
