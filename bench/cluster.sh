# A tether cluster for the benchmarks (issue 13, SPEC §8), sourced by bench/run-all.sh and
# bench/smoke.sh after bench/common.sh: a redis-server of its own and three tether nodes
# on it, measured against the single (not clustered) tether start_servers runs, and
# against Redis pub/sub alone. Every result is a JSON line in $OUT with a target of its
# own (cluster-1node, cluster-3nodes, cluster-redis…), so plot.py's other tables ignore
# them; `python3 bench/cluster_table.py OUT` makes the cluster table.

# http_get PORT PATH: the body of an HTTP/1.0 GET on 127.0.0.1:PORT (bash only: no curl).
http_get() {
    local reply
    exec 3<> "/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    reply=$(cat <&3)
    exec 3>&-
    printf '%s\n' "${reply#*$'\r\n\r\n'}"
}

# start_cluster NODES: a redis-server on a free port and NODES tether nodes (`n1`…) on it,
# waiting until each one's /healthz says "cluster": "connected". Sets CLUSTER_REDIS_PORT,
# CLUSTER_ADDRS (client addresses, n1 first), CLUSTER_ADMIN (n1's admin API),
# CLUSTER_ADMINS (every node's), CLUSTER_PIDS, CLUSTER_REDIS_PID; stop_servers stops them.
# Each node runs `server.workers = ${CLUSTER_WORKERS:-${WORKERS:-0}}`.
start_cluster() {
    local nodes=$1 port i admin_port tries
    read -r port < <("$BIN/tether-bench" free-ports 1)
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --protected-mode no --maxclients 4000 --logfile "$WORK/cluster-redis.log" &
    CLUSTER_REDIS_PID=$!
    PIDS+=("$CLUSTER_REDIS_PID")
    wait_port "$port" "$CLUSTER_REDIS_PID"
    CLUSTER_REDIS_PORT=$port
    CLUSTER_ADDRS=()
    CLUSTER_ADMINS=()
    CLUSTER_PIDS=()
    for i in $(seq 1 "$nodes"); do
        TETHER_EXTRA_TOML="[cluster]
redis = \"redis://127.0.0.1:$port/0\"
node = \"n$i\"" start_tether "cluster-n$i" "${CLUSTER_WORKERS:-${WORKERS:-0}}"
        CLUSTER_ADDRS+=("$STARTED_ADDR")
        CLUSTER_ADMINS+=("$STARTED_ADMIN")
        CLUSTER_PIDS+=("$STARTED_PID")
        [[ $i == 1 ]] && CLUSTER_ADMIN=$STARTED_ADMIN
        admin_port=${STARTED_ADMIN##*:}
        for tries in $(seq 1 100); do
            http_get "$admin_port" /healthz | grep -q '"cluster":"connected"' && break
            if [[ $tries == 100 ]]; then
                echo "cluster node n$i did not say \"cluster\": \"connected\" within 10 s" >&2
                cat "$WORK/cluster-n$i.log" >&2
                return 1
            fi
            sleep 0.1
        done
    done
}

# counted CASE -- BENCH-ARGS…: runs `bench BENCH-ARGS…` against the cluster while
# `redis-cli MONITOR` records every command Redis runs, and appends a `cluster-commands`
# JSON line to $OUT: the commands the nodes sent per event published (the events of the
# JSON lines that run appended), by name. Commands a script runs (MONITOR marks them
# `lua`) are not sent by anyone: the one EVALSHA that ran them counts. INFO commandstats
# cannot tell them apart, hence MONITOR, which costs Redis time: this is a run of its own.
counted() {
    local case=$1 lines events monitor
    shift 2
    lines=$(wc -l < "$OUT")
    redis-cli -p "$CLUSTER_REDIS_PORT" MONITOR > "$WORK/monitor" &
    monitor=$!
    for _ in $(seq 1 100); do # until its "OK"
        [[ -s $WORK/monitor ]] && break
        sleep 0.05
    done
    bench "$@"
    sleep 0.5 # the last commands reach the monitor
    kill "$monitor"
    wait "$monitor" 2> /dev/null || true
    events=$(tail -n +"$((lines + 1))" "$OUT" | grep -o '"events":[0-9]*' | cut -d: -f2 |
        awk '{ s += $1 } END { print s + 0 }')
    tr -d '\r' < "$WORK/monitor" | awk -v case="$case" -v tag="${CLUSTER_TAG:-}" -v events="$events" '
        $2 == "[0" && $3 != "lua]" { name = tolower($4); gsub(/"/, "", name); by[name]++; total++ }
        $2 == "[0" && $3 == "lua]" { inside++ }
        END {
            printf "{\"scenario\":\"cluster-commands\",\"target\":\"cluster-redis\",\"case\":\"%s\",", case
            if (tag != "") printf "\"tag\":\"%s\",", tag
            printf "\"events\":%d,\"commands\":%d,\"in_scripts\":%d,", events, total, inside
            printf "\"commands_per_event\":%.4f,\"by_command\":{", events ? total / events : 0
            sep = ""
            for (name in by) { printf "%s\"%s\":%d", sep, name, by[name]; sep = "," }
            printf "}}\n"
        }' | tee -a "$OUT"
}

# cluster_scenarios full|smoke: the cluster measurements (issue 13), against the single
# tether at $TETHER_ADDR/$ADMIN_ADDR that start_servers started. `full`: about 2 minutes;
# `smoke`: tiny numbers, asserting only that everything ran and nothing was lost.
cluster_scenarios() {
    local mode=$1 spread rate duration conns half counted_conns counted_rate counted_duration
    local fanout_publishers
    start_cluster 3
    spread="${CLUSTER_ADDRS[1]},${CLUSTER_ADDRS[2]}"
    if [[ $mode == full ]]; then
        rate=${CLUSTER_RATE:-2000} duration=8 conns=1000 half=(--then-half)
        counted_conns=300 counted_rate=1000 counted_duration=2
        fanout_publishers=${CLUSTER_PUBLISHERS:-8 64}
    else
        rate=100 duration=1 conns=30 half=(--rate 300)
        counted_conns=30 counted_rate=300 counted_duration=1
        fanout_publishers=8
    fi
    # Cross-node latency: 1,000 users, one connection each, spread over the nodes; events
    # through n1 at a fixed moderate rate; the same on the single node.
    bench --threads 2 --target-name cluster-1node fanout --addr "$TETHER_ADDR" \
        --admin "$ADMIN_ADDR" --connections "$conns" --users "$conns" --rate "$rate" \
        --duration "$duration" --publishers 4 --drain 10
    bench --threads 2 --target-name cluster-3nodes fanout \
        --addr "${CLUSTER_ADDRS[0]}" --spread "$spread" --admin "$CLUSTER_ADMIN" \
        --connections "$conns" --users "$conns" --rate "$rate" --duration "$duration" \
        --publishers 4 --drain 10
    # Fan-out: one user, 999 connections (333 per node), at the maximum and at half of
    # it; the same on the single node; Redis alone with 999 and with 3 subscribers (one
    # per node: the broker's own ceiling in events/s). Each with 8 publishers and with 64
    # (CLUSTER_PUBLISHERS): a publish in the cluster is answered once Redis has taken it
    # (SPEC §8), a round trip more than on one node, so 8 closed-loop publishers keep
    # fewer events in flight there than the single node's 64 (EVENTS_IN_FLIGHT) — 64
    # publishers offer both the same depth (BENCHMARKS.md, "Cluster").
    conns=$((conns - 1))
    for publishers in $fanout_publishers; do
        bench --threads 2 --target-name cluster-1node fanout --addr "$TETHER_ADDR" \
            --admin "$ADMIN_ADDR" --connections "$conns" --users 1 --duration "$duration" \
            "${half[@]}" --publishers "$publishers" --drain 10
        bench --threads 2 --target-name cluster-3nodes fanout \
            --addr "${CLUSTER_ADDRS[0]}" --spread "$spread" --admin "$CLUSTER_ADMIN" \
            --connections "$conns" --users 1 --duration "$duration" "${half[@]}" \
            --publishers "$publishers" --drain 10
        for subscribers in "$conns" 3; do
            bench --threads 2 --target-name cluster-redis fanout --proto redis \
                --addr "127.0.0.1:$CLUSTER_REDIS_PORT" --connections "$subscribers" --users 1 \
                --duration "$duration" "${half[@]}" --publishers "$publishers" --drain 10
        done
    done
    # Redis commands per event: one user on the three nodes, then many users over them.
    for users in 1 "$counted_conns"; do
        counted "$users user(s) over 3 nodes" -- --target-name cluster-commands fanout \
            --addr "${CLUSTER_ADDRS[0]}" --spread "$spread" --admin "$CLUSTER_ADMIN" \
            --connections "$counted_conns" --users "$users" --rate "$counted_rate" \
            --duration "$counted_duration" --publishers 4 --drain 10
    done
    for pid in "${CLUSTER_PIDS[@]}" "$CLUSTER_REDIS_PID"; do
        stop_one "$pid"
    done
}
