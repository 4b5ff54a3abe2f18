#!/usr/bin/env bash
# CI smoke pass of tether-bench: builds the binaries (release, or the profile named by
# SMOKE_PROFILE: CI uses `debug`, which its test build has mostly compiled), starts tether,
# serve-raw and redis-server on free loopback ports, and runs every scenario with tiny numbers. It asserts
# only that each scenario ran and lost nothing (tether-bench exits non-zero otherwise),
# never a timing. Needs redis-server and openssl (Debian: apt-get install -y redis-server
# openssl).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server > /dev/null && command -v redis-cli > /dev/null || {
    echo "bench/smoke.sh: redis-server is not installed (apt-get install -y redis-server)" >&2
    exit 1
}
profile=${SMOKE_PROFILE:-release}
if [[ $profile == debug ]]; then
    cargo build --locked -p tether -p tether-bench
else
    cargo build --profile "$profile" --locked -p tether -p tether-bench
fi
BIN=$PWD/target/$profile
WORK=$(mktemp -d)
source bench/common.sh
source bench/cluster.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
start_servers 1000

bench() {
    echo "== tether-bench $*"
    "$BIN/tether-bench" --json-out "$WORK/smoke.jsonl" "$@"
}

for target in "tether $TETHER_ADDR" "raw $RAW_ADDR" "redis $REDIS_ADDR"; do
    read -r proto addr <<< "$target"
    bench cmd --proto "$proto" --addr "$addr" --shapes 10x1,10x8 --duration 1 --warmup 0.2
done
start_tether tether-w1 1
bench --target-name tether-w1 cmd --addr "$STARTED_ADDR" --shapes 10x1,10x8 --duration 1 \
    --warmup 0.2
stop_one "$STARTED_PID"
bench hold --proto tether --addr "$TETHER_ADDR" --pid "$TETHER_PID" --connections 400 \
    --checkpoints 200 --users 1000 --pause 0.2 --settle 0.5
bench hold --proto raw --addr "$RAW_ADDR" --pid "$RAW_PID" --connections 400 \
    --checkpoints 200 --pause 0.2 --settle 0.5
bench hold --proto redis --addr "$REDIS_ADDR" --pid "$REDIS_PID" --connections 400 \
    --checkpoints 200 --pause 0.2 --settle 0.5
bench fanout --proto tether --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" \
    --connections 100 --users 1 --rate 200 --duration 1 --drain 10
bench fanout --proto tether --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" \
    --connections 500 --users 500 --rate 500 --duration 1 --drain 10
bench fanout --proto redis --addr "$REDIS_ADDR" --connections 100 --users 1 --rate 200 \
    --duration 1 --drain 10
# Batches (issue 17): the batch route against pipelined PUBLISH, and the server's own latency.
bench fanout --proto tether --addr "$TETHER_ADDR" --admin "$ADMIN_ADDR" \
    --connections 500 --users 500 --rate 2000 --duration 1 --drain 10 --batch 50 --server-latency \
    --pid "$TETHER_PID"
bench fanout --proto redis --addr "$REDIS_ADDR" --connections 500 --users 500 --rate 2000 \
    --duration 1 --drain 10 --batch 50
bench login-storm --addr "$TETHER_ADDR" --connections 10 --duration 1 --warmup 0.2 \
    --storm-rate 4 --storm-connections 2
for target in "tether $TETHER_ADDR $TETHER_PID" "raw $RAW_ADDR $RAW_PID" "redis $REDIS_ADDR $REDIS_PID"; do
    read -r proto addr pid <<< "$target"
    bench churn --proto "$proto" --addr "$addr" --pid "$pid" --duration 1 --concurrency 8 \
        --settle 0.2
done
# TLS (issue 15): against plaintext on the same tether, and idle TLS connections.
bench tls --addr "$TETHER_ADDR" --tls-addr "$TETHER_TLS_ADDR" --tls-ca "$WORK/tls-ca.pem" \
    --rounds 2 --shape 10x8 --storm-shape 10x1 --duration 1 --warmup 0.2 --storm-concurrency 2
bench --target-name tether-tls hold --addr "$TETHER_TLS_ADDR" --tls-ca "$WORK/tls-ca.pem" \
    --pid "$TETHER_PID" --connections 400 --checkpoints 200 --users 1000 --pause 0.2 --settle 0.5
# WebSocket (issue 25): the same scenarios over the tether's ws listener.
bench --websocket / --target-name tether-ws cmd --addr "$TETHER_WS_ADDR" --shapes 10x8 \
    --duration 1 --warmup 0.2
bench --websocket / --target-name tether-ws fanout --addr "$TETHER_WS_ADDR" \
    --admin "$ADMIN_ADDR" --connections 100 --users 1 --rate 200 --duration 1 --drain 10
bench --websocket / --target-name tether-ws hold --addr "$TETHER_WS_ADDR" --pid "$TETHER_PID" \
    --connections 400 --checkpoints 200 --users 1000 --pause 0.2 --settle 0.5
# A cluster of three nodes and a Redis (issue 13): latency, fan-out, commands per event.
OUT=$WORK/smoke.jsonl cluster_scenarios smoke
# Redis Cluster against one Redis, and one Sentinel failover (issue 26).
OUT=$WORK/smoke.jsonl brokers_compare smoke
OUT=$WORK/smoke.jsonl sentinel_failover 1
results=$(wc -l < "$WORK/smoke.jsonl")
echo "bench smoke: every scenario ran and lost nothing ($results results)"
