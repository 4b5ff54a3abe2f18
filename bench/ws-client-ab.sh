#!/usr/bin/env bash
# Fan-out over WebSocket with two bench clients against one tether (issue 25): A = an older
# tether-bench (OLD_BENCH, e.g. built at 9ab95d9, whose WebSocket client was
# tokio-tungstenite's Message stream), B = this tree's; TCP (this tree's) as the anchor.
# The three alternate, order rotated each round; the server's CPU per delivery is in each
# JSON line (`server_cpu_ns_per_delivery`): what the client's cost does to the server.
#   OLD_BENCH=/path/tether-bench ROUNDS=3 OUT=FILE bench/ws-client-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5}
OUT=${OUT:-bench/results/ws-client-ab.jsonl}
BIN=${BIN:-$PWD/target/release}
WORK=$(mktemp -d)
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
[[ -x ${OLD_BENCH:-} ]] || { echo "OLD_BENCH must name an older tether-bench" >&2; exit 2; }
start_servers 20000
echo "tether pid $TETHER_PID tcp $TETHER_ADDR ws $TETHER_WS_ADDR admin $ADMIN_ADDR"
for round in $(seq 1 "$ROUNDS"); do
    sides=(ws-old ws-new tcp)
    (( round % 3 == 2 )) && sides=(ws-new tcp ws-old)
    (( round % 3 == 0 )) && sides=(tcp ws-old ws-new)
    for side in "${sides[@]}"; do
        bench=$BIN/tether-bench addr=$TETHER_WS_ADDR ws_args=(--websocket /)
        [[ $side == ws-old ]] && bench=$OLD_BENCH
        [[ $side == tcp ]] && addr=$TETHER_ADDR ws_args=()
        echo "== fanout round $round $side $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
        "$bench" --json-out "$OUT" "${ws_args[@]}" --threads 2 --tag "r$round" \
            --target-name "tether-$side" fanout --addr "$addr" --admin "$ADMIN_ADDR" \
            --connections 1000 --users 1 --duration "$DUR" --publishers 8 --server-latency \
            --pid "$TETHER_PID" | grep -v '^{'
    done
done
echo "results appended to $OUT"
