#!/usr/bin/env bash
# User-space instructions per delivery of a tether build publishing in batches (issue 17),
# counted exactly by callgrind (valgrind), so independent of the machine's load: the
# server (WORKERS, default 1) runs under callgrind with CONNECTIONS (default 2000)
# connections of one user each, 2 publishers post batches of BATCH (500) events; the
# counters are zeroed after the warm-up and dumped 10 s later, and the deliveries in the
# dump (calls of the connection's `Effects::event`, one per event a connection takes;
# /metrics, read beside the slowed server, counts a window off by up to half) divide the
# total. Prints the total and the top functions per delivery; the dump is left in OUT_DIR
# (default /tmp).
# Usage: [WORKERS=1] [BENCH=tether-bench] bench/batch-instructions.sh NAME TETHER_BINARY
set -euo pipefail
NAME=$1 TETHER=$2 WORKERS=${WORKERS:-1} OUT_DIR=${OUT_DIR:-/tmp}
CONNECTIONS=${CONNECTIONS:-2000} BATCH=${BATCH:-500}
B=${BENCH:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether-bench}
WORK=$(mktemp -d)
source "$(dirname "$0")/common.sh"
trap 'kill $(jobs -p) 2>/dev/null; stop_servers; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
"$B" make-users "$CONNECTIONS" --cost 4 > "$WORK/users.toml"
rm -f "$OUT_DIR/callgrind.$NAME".*
TETHER_BIN=$TETHER TETHER_BENCH=$B TETHER_TLS=0 TETHER_WAIT=${TETHER_WAIT:-60} \
    TETHER_PREFIX="valgrind --tool=callgrind --callgrind-out-file=$OUT_DIR/callgrind.$NAME.%p" \
    start_tether c "$WORKERS"
PID=$STARTED_PID ADDR=$STARTED_ADDR ADMIN=$STARTED_ADMIN
events() {
    curl -s "http://$ADMIN/metrics" | awk '/^tether_events_published_total / {print $2}'
}
# Calls of `Outbox as Effects>::event` in a callgrind dump.
deliveries_in() {
    awk '/^cfn=/ { if (match($0, /^cfn=\([0-9]+\)/)) { id = substr($0, 6, RLENGTH - 6) }
                  if (length($0) > RLENGTH) { name[id] = substr($0, RLENGTH + 2) }
                  current = name[id]; next }
         /^fn=/ { if (match($0, /^fn=\([0-9]+\)/) && length($0) > RLENGTH) {
                  name[substr($0, 5, RLENGTH - 5)] = substr($0, RLENGTH + 2) }; next }
         /^calls=/ && current ~ /Outbox as tether_actors::connection::session::Effects>::event/ {
                  split(substr($0, 7), c, " "); n += c[1] }
         END { print n + 0 }' "$1"
}
"$B" --threads 2 fanout --proto tether --addr "$ADDR" --admin "$ADMIN" \
    --connections "$CONNECTIONS" --users "$CONNECTIONS" --publishers 2 --batch "$BATCH" \
    --duration 20 > "$WORK/bench" 2>&1 &
BENCH_PID=$!
# Publishing starts once every connection has logged in.
for _ in $(seq 1200); do [[ $(events) =~ ^[1-9] ]] && break; sleep 0.5; done
sleep 2
callgrind_control -z "$PID" > "$WORK/zero" 2>&1 || cat "$WORK/zero" >&2
sleep 10
callgrind_control -d "$PID" > "$WORK/dump" 2>&1 || cat "$WORK/dump" >&2
wait "$BENCH_PID" || true
dump=$(ls "$OUT_DIR/callgrind.$NAME.$PID".*)
deliveries=$(deliveries_in "$dump")
echo "$NAME: $deliveries deliveries in the window"
callgrind_annotate --threshold=100 --auto=no "$dump" 2> /dev/null |
    awk -v n="$deliveries" '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%.1f instructions per delivery\n", $1 / n}
        /^ *[0-9,]+ \(/ && shown < 40 && !/PROGRAM|clone|start_thread|thread_start|call_once|begin_short|block_on|enter_runtime/ {
            v = $1; gsub(",", "", v); line = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", line)
            printf "%8.1f %s\n", v / n, substr(line, 1, 150); shown++ }'
