#!/usr/bin/env bash
# The full measurement behind BENCHMARKS.md: every scenario against tether, serve-raw and
# redis-server, REPEATS times (servers restarted for each repeat), JSON lines appended to
# OUT (default bench/results/run.jsonl). Then `python3 bench/plot.py OUT` makes the tables
# (medians) and bench/benchmarks.png, `python3 bench/cluster_table.py OUT` the cluster's.
# Takes about 11.5 minutes per repeat.
#
# tether runs with `server.workers = $WORKERS` (default 0: one event loop per CPU); the
# `cmd` scenario also runs against a second tether with `workers = 1`, reported as target
# `tether-w1`, started for that scenario only.
#
# `tls` (issue 15) compares TLS with plaintext on one tether, A and B alternating over
# TLS_ROUNDS rounds (default 3): `cmd` 50x16, handshakes/s, the handshake storm's
# `prolongate` p99. `tls-hold` holds 10,000 idle logged-in connections on a fresh tether,
# plaintext and TLS alternately (order swapped each repeat), for memory per connection: read
# the slope between 5,000 and 10,000 (a fresh tether's first RSS reading still holds ~18 MiB
# of start-up garbage, returned once connections arrive).
#
#   REPEATS=3 SCENARIOS="hold cmd fanout storm churn" OUT=bench/results/run-2.jsonl bench/run-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-3}
# Number of the first repeat (its tag is r$FIRST_REPEAT): to add repeats to an earlier OUT.
FIRST_REPEAT=${FIRST_REPEAT:-1}
SCENARIOS=${SCENARIOS:-"hold cmd fanout batch storm churn tls tls-hold cluster"}
TLS_ROUNDS=${TLS_ROUNDS:-3}
OUT=${OUT:-bench/results/run.jsonl}
# Events per request in the `batch` scenario (tether's batch route; Redis PUBLISH pipelined).
BATCH=${BATCH:-500}
mkdir -p "$(dirname "$OUT")"
cargo build --release --locked -p tether -p tether-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
source bench/common.sh
source bench/cluster.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT

for repeat in $(seq "$FIRST_REPEAT" $((FIRST_REPEAT + REPEATS - 1))); do
    start_servers 20000
    bench() {
        "$BIN/tether-bench" --tag "r$repeat" --json-out "$OUT" "$@" | grep -v '^{'
    }
    targets=("tether $TETHER_ADDR $TETHER_PID" "raw $RAW_ADDR $RAW_PID" "redis $REDIS_ADDR $REDIS_PID")
    for scenario in $SCENARIOS; do
        case $scenario in
        hold) # first, on fresh servers
            for target in "${targets[@]}"; do
                read -r proto addr pid <<< "$target"
                bench hold --proto "$proto" --addr "$addr" --pid "$pid" --connections 19000
            done ;;
        cmd)
            start_tether tether-w1 1
            w1_pid=$STARTED_PID
            for threads in 1 2; do
                for target in "${targets[@]}" "tether $STARTED_ADDR $w1_pid tether-w1"; do
                    read -r proto addr pid name <<< "$target"
                    bench --threads "$threads" ${name:+--target-name "$name"} cmd \
                        --proto "$proto" --addr "$addr" --shapes 50x1,50x16,1000x1 \
                        --duration 8 --warmup 2
                done
            done
            stop_one "$w1_pid" ;;
        fanout) # two client threads: one cannot read 2 M deliveries/s
            bench --threads 2 fanout --proto tether --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" \
                --connections 1000 --users 1 --duration 8 --then-half --publishers 8 \
                --server-latency --pid "$TETHER_PID"
            bench --threads 2 fanout --proto redis --addr "$REDIS_ADDR" \
                --connections 1000 --users 1 --duration 8 --then-half --publishers 8
            bench --threads 2 fanout --proto tether --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" \
                --connections 10000 --users 10000 --duration 8 --then-half --publishers 16
            bench --threads 2 fanout --proto redis --addr "$REDIS_ADDR" \
                --connections 10000 --users 10000 --duration 8 --then-half --publishers 16 ;;
        batch) # issue 17: 10,000 users, events in batches against PUBLISH pipelined as deep
            for proto in tether redis; do
                addr=$TETHER_ADDR; [ "$proto" = redis ] && addr=$REDIS_ADDR
                bench --threads 2 fanout --proto "$proto" --addr "$addr" --admin "$ADMIN_ADDR" \
                    --connections 10000 --users 10000 --duration 8 --then-half --publishers 4 \
                    --batch "$BATCH"
            done ;;
        storm)
            bench login-storm --addr "$TETHER_ADDR" --duration 8 --warmup 2 ;;
        churn)
            for target in "${targets[@]}"; do
                read -r proto addr pid <<< "$target"
                bench churn --proto "$proto" --addr "$addr" --pid "$pid" --duration 8
            done ;;
        tls)
            bench tls --addr "$TETHER_ADDR" --tls-addr "$TETHER_TLS_ADDR" \
                --tls-ca "$WORK/tls-ca.pem" --rounds "$TLS_ROUNDS" --duration 5 --warmup 1 ;;
        tls-hold) # each on a fresh tether: the first readings of a server are its baseline
            kinds=(plain tls)
            (( repeat % 2 == 0 )) && kinds=(tls plain)
            for kind in "${kinds[@]}"; do
                start_tether "tether-hold-$kind" "${WORKERS:-0}"
                addr=$STARTED_ADDR tls_args=()
                if [[ $kind == tls ]]; then
                    addr=$STARTED_TLS_ADDR tls_args=(--tls-ca "$WORK/tls-ca.pem")
                fi
                bench --target-name "tether-$kind" hold --addr "$addr" "${tls_args[@]}" \
                    --pid "$STARTED_PID" --connections 10000 --checkpoints 5000
                stop_one "$STARTED_PID"
            done ;;
        cluster) # issue 13: three nodes and a Redis against the single node (bench/cluster.sh)
            CLUSTER_TAG="r$repeat" cluster_scenarios full ;;
        brokers) # issue 26: one Redis against a 3-master Redis Cluster; Sentinel failover
            CLUSTER_TAG="r$repeat" brokers_compare full
            CLUSTER_TAG="r$repeat" sentinel_failover "${FAILOVER_RUNS:-5}" ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
        esac
    done
    stop_servers
done
echo "results appended to $OUT"
