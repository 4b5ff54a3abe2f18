#!/usr/bin/env bash
# WebSocket against TCP on one tether (issue 25, SPEC §11), side by side in one run, A and B
# alternating (order swapped each round) so that a neighbour's load lands on both:
#   cmd     50x16 closed loop over server.listen (tcp) and server.websocket.listen (ws);
#   fanout  1,000 connections of one user, events through the admin API, tcp and ws, with
#           the server's CPU time per delivery (what the client's decoding does not blur);
#   hold    10,000 idle logged-in connections on a fresh tether each, tcp and ws (read the
#           slope 5,000 -> 10,000: a fresh tether's first reading holds start-up garbage);
#   storm   on a tether whose WebSocket listener is wss: `tls --skip-cmd` with every
#           connection a wss one — handshakes/s, and the p99 of open wss connections during
#           a wss handshake storm against quiet, ROUNDS rounds in one run (STORM_ARGS: more
#           `tls` options, e.g. "--storm-nice 19").
# JSON lines are appended to OUT (default bench/results/ws.jsonl); tags say the round.
#   ROUNDS=3 DUR=5 SCENARIOS="cmd fanout hold storm" [STORM_ARGS=...] bench/ws.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5}
OUT=${OUT:-bench/results/ws.jsonl}
SCENARIOS=${SCENARIOS:-"cmd fanout hold storm"}
BIN=${BIN:-$PWD/target/release}
WORK=$(mktemp -d)
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
[[ -x $BIN/tether && -x $BIN/tether-bench ]] \
    || cargo build --release --locked -p tether -p tether-bench
bench() {
    "$BIN/tether-bench" --json-out "$OUT" "$@" | grep -v '^{'
}
start_servers 20000
echo "tether pid $TETHER_PID tcp $TETHER_ADDR ws $TETHER_WS_ADDR admin $ADMIN_ADDR"
for scenario in $SCENARIOS; do
    for round in $(seq 1 "$ROUNDS"); do
        sides=(tcp ws)
        (( round % 2 == 0 )) && sides=(ws tcp)
        for side in "${sides[@]}"; do
            addr=$TETHER_ADDR ws_args=()
            if [[ $side == ws ]]; then
                addr=$TETHER_WS_ADDR ws_args=(--websocket /)
            fi
            echo "== $scenario round $round $side $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
            case $scenario in
            cmd)
                bench "${ws_args[@]}" --tag "r$round" --target-name "tether-$side" cmd \
                    --addr "$addr" --shapes 50x16 --duration "$DUR" --warmup 1 ;;
            fanout)
                bench "${ws_args[@]}" --threads 2 --tag "r$round" --target-name "tether-$side" \
                    fanout --addr "$addr" --admin "$ADMIN_ADDR" --connections 1000 --users 1 \
                    --duration "$DUR" --publishers 8 --server-latency --pid "$TETHER_PID" ;;
            hold)
                start_tether "tether-hold-$side" "${WORKERS:-0}"
                addr=$STARTED_ADDR
                [[ $side == ws ]] && addr=$STARTED_WS_ADDR
                bench "${ws_args[@]}" --tag "r$round" --target-name "tether-$side" hold \
                    --addr "$addr" --pid "$STARTED_PID" --connections 10000 --checkpoints 5000
                stop_one "$STARTED_PID" ;;
            storm)
                # One run on one wss tether, its own ROUNDS rounds of quiet and storm in
                # alternating order; STORM_ARGS adds `tls` options (`--storm-nice 19`,
                # `--storm-cmd-rate N`).
                [[ $side == ws && $round == 1 ]] || continue
                TETHER_WS_TLS=true start_tether tether-wss "${WORKERS:-0}"
                read -ra storm_args <<< "${STORM_ARGS:-}"
                bench --websocket / --tag "storm" --target-name tether-wss tls --skip-cmd \
                    --addr "$STARTED_ADDR" --tls-addr "$STARTED_WS_ADDR" \
                    --tls-ca "$WORK/tls-ca.pem" --rounds "$ROUNDS" --duration "$DUR" --warmup 1 \
                    "${storm_args[@]}"
                stop_one "$STARTED_PID" ;;
            *) echo "unknown scenario $scenario" >&2; exit 2 ;;
            esac
        done
    done
done
echo "results appended to $OUT"
