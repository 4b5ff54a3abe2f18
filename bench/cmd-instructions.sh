#!/usr/bin/env bash
# User-space instructions per reply of a tether build under cmd 50x16, counted exactly by
# callgrind (valgrind), so independent of the machine's load: the server (WORKERS, default
# 1) runs under callgrind, the counters are zeroed after the warm-up and dumped 10 s later;
# the `prolongate` commands /metrics counted meanwhile divide the total. Prints the total
# and the top functions per reply; the dump is left in OUT_DIR (default /tmp).
# Usage: [WORKERS=1] [BENCH=tether-bench] bench/cmd-instructions.sh NAME TETHER_BINARY
set -euo pipefail
NAME=$1 BIN=$2 WORKERS=${WORKERS:-1} OUT_DIR=${OUT_DIR:-/tmp}
B=${BENCH:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether-bench}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
"$B" make-users 100 --cost 4 > "$W/users.toml"
read -r port admin < <("$B" free-ports 2)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = %s\n[auth]\nusers_file = "%s"\n[admin]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' \
    "$port" "$WORKERS" "$W/users.toml" "$admin" > "$W/c.toml"
rm -f "$OUT_DIR/callgrind.$NAME".*
valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.$NAME.%p" \
    "$BIN" --config "$W/c.toml" > "$W/log" 2>&1 &
PID=$!
for _ in $(seq 600); do (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break; sleep 0.1; done
commands() {
    curl -s "http://127.0.0.1:$admin/metrics" | awk '/^tether_commands_total\{type="prolongate"\}/ {print $2}'
}
"$B" --threads 2 cmd --proto tether --addr "127.0.0.1:$port" --shapes 50x16 --duration 25 \
    --warmup 1 > "$W/bench" 2>&1 &
sleep 6
callgrind_control -z "$PID" > /dev/null 2>&1
c0=$(commands)
sleep 10
replies=$(($(commands) - c0))
callgrind_control -d "$PID" > /dev/null 2>&1
wait %2 || true
dump=$(ls "$OUT_DIR/callgrind.$NAME.$PID".*)
echo "$NAME: $replies replies in the window"
callgrind_annotate --threshold=100 --auto=no "$dump" 2> /dev/null |
    awk -v n="$replies" '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%.1f instructions per reply\n", $1 / n}
        /^ *[0-9,]+ \(/ && shown < 25 && !/PROGRAM|clone|start_thread|thread_start|call_once|begin_short|block_on|enter_runtime/ {
            v = $1; gsub(",", "", v); line = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", line)
            printf "%8.1f %s\n", v / n, substr(line, 1, 150); shown++ }'
