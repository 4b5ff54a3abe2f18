#!/usr/bin/env bash
# ab-publish.sh OLD_BIN_DIR NEW_BIN_DIR BENCH_BIN OUT: the publish path of two tether builds
# side by side (issue 17), same tether-bench, ROUNDS rounds (default 3), the builds
# alternating in each round, and Redis in the same rounds for the batch figure. One server
# of each build (and one Redis) for the whole run, `workers = 0`, as bench/run-all.sh
# configures tether. JSON lines go to OUT (targets tether-old, tether-new, redis).
#   batch:   10,000 users, one connection each, BATCH (500) events per request, maximum rate
#            (`--pid`: server CPU per delivery; tether also its delivery histogram).
#   fan1000: 1,000 connections of one user, 8 publishers, maximum then half of it
#            (`--then-half --server-latency`: p50/p99 of tether_event_delivery_seconds).
# PIN=1 gives servers and client a core each, as if the client ran elsewhere: every server
# (tether and Redis alike) runs on CPU 0 only, the client on CPU 1 only (`taskset`).
#   SCENARIOS="batch fan1000" ROUNDS=3 bench/ab-publish.sh /tmp/old target/release \
#       target/release/tether-bench /tmp/ab-publish.jsonl
set -euo pipefail
OLD=$1 NEW=$2 B=$3 OUT=$4
ROUNDS=${ROUNDS:-3} BATCH=${BATCH:-500} SCENARIOS=${SCENARIOS:-"batch fan1000"}
SERVER_CPU=() CLIENT_CPU=()
if [[ ${PIN:-0} == 1 ]]; then SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1); fi
WORK=$(mktemp -d)
source "$(dirname "$0")/common.sh"
trap 'stop_servers; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
"$B" make-users 10000 --cost 4 > "$WORK/users.toml"
# start NAME BIN_DIR -> sets ADDR ADMIN PID (no TLS listener: plaintext only, as measured)
start() {
    BIN=$2 TETHER_BENCH=$B TETHER_TLS=0 TETHER_PREFIX="${SERVER_CPU[*]}" start_tether "$1" 0
    ADDR=$STARTED_ADDR ADMIN=$STARTED_ADMIN PID=$STARTED_PID
}
start old "$OLD"; OLD_ADDR=$ADDR OLD_ADMIN=$ADMIN OLD_PID=$PID
start new "$NEW"; NEW_ADDR=$ADDR NEW_ADMIN=$ADMIN NEW_PID=$PID
read -r rport < <("$B" free-ports 1)
"${SERVER_CPU[@]}" redis-server --bind 127.0.0.1 --port "$rport" --save '' --appendonly no \
    --protected-mode no --maxclients 19900 --logfile "$WORK/redis.log" &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
wait_port "$rport" "$REDIS_PID"
bench() { "${CLIENT_CPU[@]}" "$B" --tag "r$round" --json-out "$OUT" "$@" | grep -v '^{' | tail -4; }
for round in $(seq "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        case $scenario in
        batch)
            for target in "old $OLD_ADDR $OLD_ADMIN $OLD_PID" "new $NEW_ADDR $NEW_ADMIN $NEW_PID" \
                "redis 127.0.0.1:$rport - $REDIS_PID"; do
                read -r name addr admin pid <<< "$target"
                if [[ $name == redis ]]; then
                    args=(--proto redis --addr "$addr") tname=redis
                else
                    args=(--proto tether --addr "$addr" --admin "$admin" --server-latency)
                    tname=tether-$name
                fi
                bench --threads 2 --target-name "$tname" fanout "${args[@]}" \
                    --connections 10000 --users 10000 --duration 8 --publishers 4 \
                    --batch "$BATCH" --pid "$pid"
            done ;;
        fan1000)
            for target in "old $OLD_ADDR $OLD_ADMIN $OLD_PID" "new $NEW_ADDR $NEW_ADMIN $NEW_PID"; do
                read -r name addr admin pid <<< "$target"
                bench --threads 2 --target-name "tether-$name" fanout --proto tether \
                    --addr "$addr" --admin "$admin" --connections 1000 --users 1 --duration 8 \
                    --then-half --publishers 8 --server-latency --pid "$pid"
            done ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
        esac
    done
done
