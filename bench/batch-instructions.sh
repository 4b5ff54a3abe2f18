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
NAME=$1 BIN=$2 WORKERS=${WORKERS:-1} OUT_DIR=${OUT_DIR:-/tmp}
CONNECTIONS=${CONNECTIONS:-2000} BATCH=${BATCH:-500}
B=${BENCH:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether-bench}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
ulimit -n "$(ulimit -Hn)"
"$B" make-users "$CONNECTIONS" --cost 4 > "$W/users.toml"
read -r port admin < <("$B" free-ports 2)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = %s\nmax_connections = 20000\n[auth]\nusers_file = "%s"\nbcrypt_cost = 4\nlogin_failures_per_minute = 0\n[events]\ntime_zone = "UTC"\n[admin]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' \
    "$port" "$WORKERS" "$W/users.toml" "$admin" > "$W/c.toml"
rm -f "$OUT_DIR/callgrind.$NAME".*
valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.$NAME.%p" \
    "$BIN" --config "$W/c.toml" > "$W/log" 2>&1 &
PID=$!
for _ in $(seq 600); do (exec 3<> "/dev/tcp/127.0.0.1/$admin") 2> /dev/null && break; sleep 0.1; done
events() {
    curl -s "http://127.0.0.1:$admin/metrics" | awk '/^tether_events_published_total / {print $2}'
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
"$B" --threads 2 fanout --proto tether --addr "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
    --connections "$CONNECTIONS" --users "$CONNECTIONS" --publishers 2 --batch "$BATCH" \
    --duration 20 > "$W/bench" 2>&1 &
# Publishing starts once every connection has logged in.
for _ in $(seq 1200); do [[ $(events) =~ ^[1-9] ]] && break; sleep 0.5; done
sleep 2
callgrind_control -z "$PID" > "$W/zero" 2>&1 || cat "$W/zero" >&2
sleep 10
callgrind_control -d "$PID" > "$W/dump" 2>&1 || cat "$W/dump" >&2
wait %2 || true
dump=$(ls "$OUT_DIR/callgrind.$NAME.$PID".*)
deliveries=$(deliveries_in "$dump")
echo "$NAME: $deliveries deliveries in the window"
callgrind_annotate --threshold=100 --auto=no "$dump" 2> /dev/null |
    awk -v n="$deliveries" '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%.1f instructions per delivery\n", $1 / n}
        /^ *[0-9,]+ \(/ && shown < 40 && !/PROGRAM|clone|start_thread|thread_start|call_once|begin_short|block_on|enter_runtime/ {
            v = $1; gsub(",", "", v); line = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", line)
            printf "%8.1f %s\n", v / n, substr(line, 1, 150); shown++ }'
