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

# start_cluster NODES [URL]: a redis-server on a free port and NODES tether nodes (`n1`…)
# on it — or on URL (a redis+sentinel:// or redis+cluster:// set-up started elsewhere) —
# waiting until each one's /healthz says "cluster": "connected". Sets CLUSTER_REDIS_PORT,
# CLUSTER_ADDRS (client addresses, n1 first), CLUSTER_ADMIN (n1's admin API),
# CLUSTER_ADMINS (every node's), CLUSTER_PIDS, CLUSTER_REDIS_PID; stop_servers stops them.
# Each node runs `server.workers = ${CLUSTER_WORKERS:-${WORKERS:-0}}`.
start_cluster() {
    local nodes=$1 url=${2:-} port i admin_port tries
    if [[ -z $url ]]; then
        read -r port < <("$BIN/tether-bench" free-ports 1)
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --protected-mode no --maxclients 4000 --logfile "$WORK/cluster-redis.log" &
        CLUSTER_REDIS_PID=$!
        PIDS+=("$CLUSTER_REDIS_PID")
        wait_port "$port" "$CLUSTER_REDIS_PID"
        CLUSTER_REDIS_PORT=$port
        url="redis://127.0.0.1:$port/0"
    fi
    CLUSTER_ADDRS=()
    CLUSTER_ADMINS=()
    CLUSTER_PIDS=()
    for i in $(seq 1 "$nodes"); do
        TETHER_EXTRA_TOML="[cluster]
redis = \"$url\"
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

# start_redis_cluster MASTERS: MASTERS redis-servers with cluster mode on, made one Redis
# Cluster without replicas (`redis-cli --cluster create`). Sets RCLUSTER_PORTS,
# RCLUSTER_PIDS and RCLUSTER_URL (redis+cluster:// listing them all).
start_redis_cluster() {
    local masters=$1 port i hosts=()
    RCLUSTER_PORTS=()
    RCLUSTER_PIDS=()
    for i in $(seq 1 "$masters"); do
        # A cluster node also listens on its port + 10000 (the cluster bus): the port must
        # leave room for it, and a bus port taken makes the server exit: try another.
        for attempt in $(seq 1 20); do
            read -r port < <("$BIN/tether-bench" free-ports 1)
            ((port < 55000)) || continue
            mkdir -p "$WORK/rcluster-$port"
            redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
                --protected-mode no --maxclients 4000 --cluster-enabled yes \
                --cluster-config-file "$WORK/rcluster-$port/nodes.conf" \
                --dir "$WORK/rcluster-$port" --logfile "$WORK/rcluster-$port.log" &
            if wait_port "$port" "$!" 2> /dev/null; then
                RCLUSTER_PIDS+=("$!")
                PIDS+=("$!")
                break
            fi
        done
        RCLUSTER_PORTS+=("$port")
        hosts+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 --cluster-yes > /dev/null
    for i in $(seq 1 200); do
        redis-cli -p "${RCLUSTER_PORTS[0]}" CLUSTER INFO | grep -q 'cluster_state:ok' && break
        sleep 0.1
    done
    RCLUSTER_URL="redis+cluster://$(IFS=,; echo "${hosts[*]}")"
}

# commandstats PORT…: "spublish publish evalsha" calls summed over the Redis on PORT….
commandstats() {
    local port
    for port in "$@"; do
        redis-cli -p "$port" INFO commandstats | tr -d '\r'
    done | awk -F'[:=,]' '
        $1 == "cmdstat_spublish" { s += $3 } $1 == "cmdstat_publish" { p += $3 }
        $1 == "cmdstat_evalsha" { e += $3 }
        END { printf "%d %d %d\n", s, p, e }'
}

# brokers_compare full|smoke (issue 26): the same three nodes, clients and load over one
# Redis (target brokers-1redis) and over a Redis Cluster of three masters
# (brokers-3masters): publish rate at the maximum (64 publishers, 1,000 users, batches of
# 100) and delivery latency at a fixed rate, then a `brokers-commands` line per set-up
# with the SPUBLISH/PUBLISH/EVALSHA counts of INFO commandstats per event published.
brokers_compare() {
    local mode=$1 conns duration rate setup lines events stats ports
    touch "$OUT"
    if [[ $mode == full ]]; then
        conns=1000 duration=8 rate=${CLUSTER_RATE:-2000}
    else
        conns=30 duration=1 rate=100
    fi
    for setup in 1redis 3masters; do
        if [[ $setup == 1redis ]]; then
            start_cluster 3
            ports=("$CLUSTER_REDIS_PORT")
        else
            start_redis_cluster 3
            start_cluster 3 "$RCLUSTER_URL"
            ports=("${RCLUSTER_PORTS[@]}")
        fi
        for port in "${ports[@]}"; do redis-cli -p "$port" CONFIG RESETSTAT > /dev/null; done
        lines=$(wc -l < "$OUT")
        bench --threads 2 --target-name "brokers-$setup" fanout --addr "${CLUSTER_ADDRS[0]}" \
            --spread "${CLUSTER_ADDRS[1]},${CLUSTER_ADDRS[2]}" --admin "$CLUSTER_ADMIN" \
            --connections "$conns" --users "$conns" --duration "$duration" --publishers 64 \
            --batch 100 --drain 10
        bench --threads 2 --target-name "brokers-$setup" fanout --addr "${CLUSTER_ADDRS[0]}" \
            --spread "${CLUSTER_ADDRS[1]},${CLUSTER_ADDRS[2]}" --admin "$CLUSTER_ADMIN" \
            --connections "$conns" --users "$conns" --rate "$rate" --duration "$duration" \
            --publishers 4 --drain 10
        events=$(tail -n +"$((lines + 1))" "$OUT" | grep -o '"events":[0-9]*' | cut -d: -f2 |
            awk '{ s += $1 } END { print s + 0 }')
        read -r spublish publish evalsha < <(commandstats "${ports[@]}")
        printf '{"scenario":"brokers-commands","target":"brokers-%s","tag":"%s","events":%d,"spublish":%d,"publish":%d,"evalsha":%d,"spublish_per_master":[%s]}\n' \
            "$setup" "${CLUSTER_TAG:-}" "$events" "$spublish" "$publish" "$evalsha" \
            "$(for port in "${ports[@]}"; do commandstats "$port" | cut -d' ' -f1; done | paste -sd,)" |
            tee -a "$OUT"
        if [[ $setup == 3masters ]] && ((spublish != events || publish != 0)); then
            echo "Redis Cluster: $spublish SPUBLISH and $publish PUBLISH for $events events" >&2
            return 1
        fi
        for pid in "${CLUSTER_PIDS[@]}" ${CLUSTER_REDIS_PID:+"$CLUSTER_REDIS_PID"} \
            ${RCLUSTER_PIDS[@]+"${RCLUSTER_PIDS[@]}"}; do
            stop_one "$pid"
        done
        CLUSTER_REDIS_PID= RCLUSTER_PIDS=()
    done
}

# http_post PORT PATH BODY: the status of an HTTP/1.0 POST of JSON to 127.0.0.1:PORT.
http_post() {
    local reply
    exec 4<> "/dev/tcp/127.0.0.1/$1" || { echo 000; return; }
    printf 'POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$2" "${#3}" "$3" >&4
    read -r _ reply _ <&4
    exec 4>&-
    echo "${reply:-000}"
}

# now: seconds since 1970 with nanoseconds.
now() { date +%s.%N; }

# sentinel_failover RUNS (issue 26): RUNS times, a master, its replica and three sentinels
# (down after 1 s, quorum 2) and two nodes on them (redis+sentinel://); user u0 listening
# on n2 (`tether client --listen`), an event published on n1 every 20 ms; the master is
# killed (SIGKILL). A `sentinel-failover` JSON line per run: seconds from the kill to the
# promotion (the replica's ROLE says master), and from the kill and from the promotion to
# the first event published after the promotion that reaches n2; publishes refused (503).
sentinel_failover() {
    local runs=$1 run master replica sentinels port i pids kill_at promoted_at first n2_admin
    for run in $(seq 1 "$runs"); do
        read -r master replica < <("$BIN/tether-bench" free-ports 2)
        redis-server --bind 127.0.0.1 --port "$master" --save '' --appendonly no \
            --dir "$WORK" --logfile "$WORK/fo-master.log" &
        local master_pid=$!
        PIDS+=("$master_pid")
        redis-server --bind 127.0.0.1 --port "$replica" --save '' --appendonly no \
            --dir "$WORK" --replicaof 127.0.0.1 "$master" --logfile "$WORK/fo-replica.log" &
        local replica_pid=$!
        PIDS+=("$replica_pid")
        wait_port "$master" "$master_pid"
        wait_port "$replica" "$replica_pid"
        sentinels=() pids=("$master_pid" "$replica_pid")
        for i in 1 2 3; do
            read -r port < <("$BIN/tether-bench" free-ports 1)
            printf 'sentinel monitor m 127.0.0.1 %s 2\nsentinel down-after-milliseconds m 1000\nsentinel failover-timeout m 5000\n' \
                "$master" > "$WORK/fo-sentinel-$i.conf"
            redis-server "$WORK/fo-sentinel-$i.conf" --sentinel --bind 127.0.0.1 --port "$port" \
                --logfile "$WORK/fo-sentinel-$i.log" &
            pids+=("$!")
            PIDS+=("$!")
            wait_port "$port" "$!"
            sentinels+=("127.0.0.1:$port")
        done
        until redis-cli -p "$replica" INFO replication | grep -q master_link_status:up; do
            sleep 0.1
        done
        # The sentinels learn the replica (from the master's INFO, every 10 s) and each
        # other; without both there is no failover.
        for i in $(seq 1 300); do
            local ready=0
            for port in "${sentinels[@]##*:}"; do
                redis-cli -p "$port" SENTINEL master m | tr -d '\r' | paste -sd' ' |
                    grep -q 'num-slaves 1 .*num-other-sentinels 2' && ready=$((ready + 1))
            done
            ((ready == 3)) && break
            sleep 0.1
        done
        start_cluster 2 "redis+sentinel://$(IFS=,; echo "${sentinels[*]}")/m"
        n2_admin=${CLUSTER_ADMINS[1]##*:}
        : > "$WORK/fo-received"
        (echo bench | "$BIN/tether" client --addr "${CLUSTER_ADDRS[1]}" --login u0 \
            --password-stdin --listen --keep-alive 0s 2> /dev/null |
            while read -r line; do echo "$(now) $line"; done >> "$WORK/fo-received") &
        local listener=$!
        PIDS+=("$listener")
        until [[ $(http_get "$n2_admin" /v1/users/u0/connections) == *'"connections":1'* ]]; do
            sleep 0.05
        done
        : > "$WORK/fo-published"
        (i=0; while :; do
            status=$(http_post "${CLUSTER_ADMIN##*:}" /v1/events "{\"user\":\"u0\",\"text\":\"e$i\"}")
            echo "$(now) $i $status" >> "$WORK/fo-published"
            i=$((i + 1)); sleep 0.02
        done) &
        local publisher=$!
        PIDS+=("$publisher")
        sleep 1
        kill_at=$(now)
        kill -9 "$master_pid"
        for i in $(seq 1 1500); do
            [[ $(redis-cli -p "$replica" ROLE 2> /dev/null | head -1) == master ]] && break
            sleep 0.02
        done
        promoted_at=$(now)
        first=
        for i in $(seq 1 300); do
            first=$(awk -v p="$promoted_at" '$1 > p { print $2 }' "$WORK/fo-published" |
                while read -r n; do
                    grep -m1 " e$n\$" "$WORK/fo-received" | cut -d' ' -f1 && break
                done | head -1) || true
            [[ -n $first ]] && break
            sleep 0.1
        done
        stop_one "$publisher"
        awk -v run="$run" -v k="$kill_at" -v p="$promoted_at" -v f="${first:-0}" -v tag="${CLUSTER_TAG:-}" \
            '$3 == 503 { refused++ } END {
                printf "{\"scenario\":\"sentinel-failover\",\"target\":\"brokers-sentinel\",\"tag\":\"%s\",\"run\":%d,", tag, run
                printf "\"kill_to_promotion_s\":%.3f,\"kill_to_first_delivery_s\":%.3f,", p - k, (f > 0 ? f - k : -1)
                printf "\"promotion_to_first_delivery_s\":%.3f,\"refused\":%d}\n", (f > 0 ? f - p : -1), refused }' \
            "$WORK/fo-published" | tee -a "$OUT"
        if [[ -z $first ]]; then
            echo "sentinel failover: no event crossed nodes within 30 s of the promotion" >&2
            return 1
        fi
        for pid in "${CLUSTER_PIDS[@]}" "${pids[@]}" "$listener"; do
            stop_one "$pid"
        done
    done
}
