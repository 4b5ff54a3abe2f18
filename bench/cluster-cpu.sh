#!/usr/bin/env bash
# bench/cluster-cpu.sh OUT BUILD_DIR...: the cluster fan-out of issue 13 — one user's 999
# connections on a single tether against the same spread over 3 nodes and a Redis — for
# each build (a folder holding a release `tether`), ROUNDS rounds (default 3) alternating
# the builds and the two setups in each round, fresh servers for every run. Every run
# appends the client's JSON line to OUT (targets `<setup>-<build index>-p<publishers>`:
# 1node-0-p8, 3nodes-0-p8, 1node-1-p8, …) and a `thread-cpu` line: the CPU each thread of
# every process (nodes, Redis, the client) used over a WINDOW-second window (default 4) in
# the middle of the publishing, per delivery, with each process's system calls and context
# switches per delivery (`perf stat`, if installed; as root or perf_event_paranoid ≤ 1).
# `python3 bench/cluster_cpu_table.py OUT` makes the table of BENCHMARKS.md ("Cluster").
#
# SINGLE_WORKERS / NODE_WORKERS: `server.workers` of the single tether and of each cluster
# node (default 0: one event loop per CPU). PUBLISHERS: concurrent publishers, one run for
# each number of the list (default "8"). DURATION (default 12 s: the window must end
# before the publishing does, and the nodes' admin API answers slowly on a loaded machine).
# SETUPS (default "1node 3nodes"). PERF_RECORD=DIR: also `perf record -g` over the window
# of the single node and of cluster node PERF_NODE (default n2) into DIR/LABEL-rROUND.data.
# BENCH_BIN: the tether-bench to use (default this checkout's target/release/tether-bench).
#
#   PUBLISHERS="8 64" bench/cluster-cpu.sh /tmp/cpu.jsonl target/release
#   bench/cluster-cpu.sh /tmp/ab.jsonl /tmp/old-build target/release   # old against new
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
shift
BUILDS=("$@")
ROUNDS=${ROUNDS:-3}
PUBLISHERS=${PUBLISHERS:-8}
DURATION=${DURATION:-12}
WINDOW=${WINDOW:-4}
SETUPS=${SETUPS:-"1node 3nodes"}
SINGLE_WORKERS=${SINGLE_WORKERS:-0}
NODE_WORKERS=${NODE_WORKERS:-0}
BENCH_BIN=${BENCH_BIN:-$PWD/target/release/tether-bench}
WORK=$(mktemp -d)
source bench/common.sh
source bench/cluster.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"
"$BENCH_BIN" make-users 1000 --cost 4 > "$WORK/users.toml"

# delivered ADMIN…: the sum of tether_events_delivered_total over the nodes.
delivered() {
    local admin total=0 count
    for admin in "$@"; do
        count=$(http_get "${admin##*:}" /metrics |
            awk '$1 == "tether_events_delivered_total" { print $2 }')
        total=$((total + ${count:-0}))
    done
    echo "$total"
}

# measure LABEL "NAME=PID…" "ADMIN…" FANOUT-ARGS…: one fan-out at the maximum, with the
# per-thread CPU of the processes named (and the client) over WINDOW seconds of it, from
# half a second after the nodes (fresh ones) counted their first delivery on; the
# deliveries in the window from the nodes' own count (every ADMIN, read before and after).
measure() {
    local label=$1 procs=$2 admins=$3 admin=${3%% *} client t0 t1 d0 d1 a0 b0 b1 proc perfs
    shift 3
    "$BENCH_BIN" --tag "r$round" --json-out "$OUT" --threads 2 --target-name "$label" \
        fanout --connections 999 --users 1 --duration "$DURATION" \
        --publishers "$publishers" --drain 10 "$@" > "$WORK/bench.out" &
    client=$!
    # Publishing starts once every receiver has logged in: the first publisher connects,
    # then the nodes count deliveries.
    while (($(ss -Htn state established "( dport = :${admin##*:} )" | wc -l) == 0)); do
        kill -0 "$client" 2> /dev/null || break
        sleep 0.05
    done
    # shellcheck disable=SC2086
    while (($(delivered $admins) == 0)); do
        kill -0 "$client" 2> /dev/null || break
        sleep 0.05
    done
    sleep 0.5
    rm -rf "$WORK/perf"
    mkdir -p "$WORK/perf"
    perfs=()
    # shellcheck disable=SC2086
    for proc in $procs "client=$client"; do
        command -v perf > /dev/null || break
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "${proc#*=}" \
            -- sleep "$WINDOW" 2> "$WORK/perf/${proc%%=*}" &
        perfs+=($!)
    done
    if [[ -n ${PERF_RECORD:-} ]]; then
        for proc in $procs; do
            [[ ${proc%%=*} == "${PERF_NODE:-n2}" || ${proc%%=*} == node ]] || continue
            perf record -F 999 -g -o "$PERF_RECORD/$label-r$round.data" -p "${proc#*=}" \
                -- sleep "$WINDOW" 2> /dev/null &
            perfs+=($!)
        done
    fi
    # The counters are read when the busy nodes get round to it: each is dated at the
    # middle of its request, and the deliveries in the window are the rate between them.
    a0=$(date +%s.%N)
    # shellcheck disable=SC2086
    d0=$(delivered $admins)
    b0=$(date +%s.%N)
    # shellcheck disable=SC2086
    python3 bench/thread_cpu.py snap $procs "client=$client" > "$WORK/before"
    t0=$(date +%s.%N)
    sleep "$WINDOW"
    # shellcheck disable=SC2086
    python3 bench/thread_cpu.py snap $procs "client=$client" > "$WORK/after"
    t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    d1=$(delivered $admins)
    b1=$(date +%s.%N)
    wait "$client"
    wait "${perfs[@]}" 2> /dev/null || true
    grep -v '^{' "$WORK/bench.out" | tail -3
    python3 bench/thread_cpu.py diff "$WORK/before" "$WORK/after" "$(echo "$t1 - $t0" | bc)" \
        "$(echo "($d1 - $d0) * ($t1 - $t0) / (($t1 + $b1) / 2 - ($a0 + $b0) / 2)" | bc -l)" \
        "$label r$round" --json "$OUT" --perf "$WORK/perf"
}

for round in $(seq 1 "$ROUNDS"); do
    for index in "${!BUILDS[@]}"; do
        BIN=$WORK/bin-$index
        mkdir -p "$BIN"
        ln -sf "$(realpath "${BUILDS[$index]}")/tether" "$BIN/tether"
        ln -sf "$BENCH_BIN" "$BIN/tether-bench"
        for setup in $SETUPS; do
          for publishers in $PUBLISHERS; do
            case $setup in
            1node)
                start_tether single "$SINGLE_WORKERS"
                measure "1node-$index-p$publishers" "node=$STARTED_PID" "$STARTED_ADMIN" \
                    --addr "$STARTED_ADDR" --admin "$STARTED_ADMIN"
                stop_one "$STARTED_PID" ;;
            3nodes)
                CLUSTER_WORKERS=$NODE_WORKERS start_cluster 3
                measure "3nodes-$index-p$publishers" \
                    "n1=${CLUSTER_PIDS[0]} n2=${CLUSTER_PIDS[1]} n3=${CLUSTER_PIDS[2]} redis=$CLUSTER_REDIS_PID" \
                    "${CLUSTER_ADMINS[*]}" --addr "${CLUSTER_ADDRS[0]}" \
                    --spread "${CLUSTER_ADDRS[1]},${CLUSTER_ADDRS[2]}" --admin "$CLUSTER_ADMIN"
                for pid in "${CLUSTER_PIDS[@]}" "$CLUSTER_REDIS_PID"; do
                    stop_one "$pid"
                done ;;
            esac
          done
        done
    done
done
