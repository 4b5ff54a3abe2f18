#!/usr/bin/env bash
# hold over WebSocket for two tether builds (issue 25): A = $A_BIN (an older tether), B =
# this tree's release build; a fresh tether per run, A and B alternating (order swapped
# each round), 10,000 idle logged-in WebSocket connections each (read the slope 5,000 ->
# 10,000: a fresh tether's first reading holds start-up garbage).
#   A_BIN=DIR/tether ROUNDS=2 OUT=FILE bench/ws-hold-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench/results/ws-hold-ab.jsonl}
BIN=${BIN:-$PWD/target/release}
WORK=$(mktemp -d)
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
[[ -x ${A_BIN:-} ]] || { echo "A_BIN must name an older tether binary" >&2; exit 2; }
"$BIN/tether-bench" make-users 20000 --cost 4 > "$WORK/users.toml"
for round in $(seq 1 "$ROUNDS"); do
    sides=(A B)
    (( round % 2 == 0 )) && sides=(B A)
    for side in "${sides[@]}"; do
        bin=$BIN/tether
        [[ $side == A ]] && bin=$A_BIN
        TETHER_BIN=$bin start_tether "hold-$side" "${WORKERS:-0}"
        echo "== hold round $round $side"
        "$BIN/tether-bench" --json-out "$OUT" --websocket / --tag "r$round" \
            --target-name "ws-$side" hold --addr "$STARTED_WS_ADDR" --pid "$STARTED_PID" \
            --connections 10000 --checkpoints 5000 | grep -v '^{'
        stop_one "$STARTED_PID"
    done
done
echo "results appended to $OUT"
