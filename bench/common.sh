# Shared by bench/smoke.sh and bench/run-all.sh (sourced): start tether, serve-raw and
# redis-server on free loopback ports with generated configuration, and stop them on exit.
# Expects BIN (the folder with the release binaries) and WORK (a temporary folder).
# WORKERS (default 0: one event loop per CPU) is tether's `server.workers`.
# Every tether also listens for TLS (`server.tls.listen`) with a certificate for localhost
# signed by a CA made here with `openssl` ($WORK/tls-ca.pem, what `--tls-ca` trusts), and
# for WebSocket (`server.websocket.listen`, path "/"; `wss` with TETHER_WS_TLS=true).

PIDS=()
stop_servers() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# wait_port PORT [PID]: until something listens on 127.0.0.1:PORT (at most 20 s; fails at
# once if process PID has exited).
wait_port() {
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then
            echo "the server meant to listen on 127.0.0.1:$1 has exited" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after 20 s" >&2
    return 1
}

# make_tls_pair: once per $WORK, a P-256 CA ($WORK/tls-ca.pem) and a certificate for
# localhost and 127.0.0.1 signed by it ($WORK/tls.pem, key $WORK/tls.key).
make_tls_pair() {
    [[ -f $WORK/tls.pem ]] && return 0
    command -v openssl > /dev/null || {
        echo "bench: openssl is not installed (apt-get install -y openssl)" >&2
        return 1
    }
    (
        cd "$WORK"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=bench CA" -keyout tls-ca.key -out tls-ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
            -keyout tls.key -out tls.csr
        echo "subjectAltName=DNS:localhost,IP:127.0.0.1" > tls-san.ext
        openssl x509 -req -in tls.csr -CA tls-ca.pem -CAkey tls-ca.key -CAcreateserial \
            -days 2 -extfile tls-san.ext -out tls.pem
    ) 2>> "$WORK/openssl.log"
}

# start_servers USERS: users file (USERS at cost 4, plus storm0..storm1 at cost 10),
# tether config (`workers = $WORKERS`), then the three servers. Sets TETHER_ADDR
# TETHER_TLS_ADDR TETHER_WS_ADDR ADMIN_ADDR RAW_ADDR REDIS_ADDR and TETHER_PID RAW_PID
# REDIS_PID.
start_servers() {
    local users=$1 tport aport sport rport dport
    # All ports first, before any connection: a port picked later can still be the local
    # end of a closing client connection and fail to listen.
    read -r tport aport sport rport dport < <("$BIN/tether-bench" free-ports 5)
    "$BIN/tether-bench" make-users "$users" --cost 4 > "$WORK/users.toml"
    "$BIN/tether-bench" make-users 2 --cost 10 --prefix storm >> "$WORK/users.toml"
    # The hard limit is the most a process may open; the servers need ~19,000.
    ulimit -n "$(ulimit -Hn)"
    "$BIN/tether-bench" serve-raw "127.0.0.1:$rport" 2> "$WORK/serve-raw.log" &
    RAW_PID=$!
    PIDS+=("$RAW_PID")
    redis-server --bind 127.0.0.1 --port "$dport" --save '' --appendonly no \
        --protected-mode no --maxclients 19900 --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$rport" "$RAW_PID"
    wait_port "$dport" "$REDIS_PID"
    start_tether tether "${WORKERS:-0}" "$tport" "$aport" "$sport"
    TETHER_ADDR=$STARTED_ADDR
    TETHER_TLS_ADDR=$STARTED_TLS_ADDR
    TETHER_WS_ADDR=$STARTED_WS_ADDR
    ADMIN_ADDR=$STARTED_ADMIN
    TETHER_PID=$STARTED_PID
    RAW_ADDR=127.0.0.1:$rport
    REDIS_ADDR=127.0.0.1:$dport
}

# For A/B scripts: starts the base build ($A_DIR) as "base" and this tree's release build as
# "branch" (B_FIRST=1 starts the branch first), with TLS; sets A_PLAIN A_TLS A_PID and
# B_PLAIN B_TLS B_PID.
start_base_and_branch() {
    local side
    local order=(A B)
    [[ -n ${B_FIRST:-} ]] && order=(B A)
    for side in "${order[@]}"; do
        if [[ $side == A ]]; then
            BIN=$A_DIR start_tether base 0
            A_PLAIN=$STARTED_ADDR A_TLS=$STARTED_TLS_ADDR A_PID=$STARTED_PID
        else
            BIN=$PWD/target/release start_tether branch 0
            B_PLAIN=$STARTED_ADDR B_TLS=$STARTED_TLS_ADDR B_PID=$STARTED_PID
        fi
    done
}

# start_tether NAME WORKERS [PORT ADMIN_PORT TLS_PORT]: a tether with `server.workers =
# WORKERS`, config $WORK/NAME.toml (ending with $TETHER_EXTRA_TOML, such as a [cluster]
# section), sharing $WORK/users.toml (start_servers writes it); ports picked here when not
# given (the WebSocket port always picked here; all picked again, up to 3 times, if they
# turn out taken). Sets STARTED_ADDR STARTED_TLS_ADDR STARTED_WS_ADDR STARTED_ADMIN
# STARTED_PID; stop_servers stops it with the rest, stop_one PID before.
start_tether() {
    local name=$1 workers=$2 tport=${3:-} aport=${4:-} sport=${5:-} wport attempt
    make_tls_pair
    for attempt in 1 2 3; do
        if [[ -z ${3:-} ]]; then
            read -r tport aport sport < <("$BIN/tether-bench" free-ports 3)
        fi
        read -r wport < <("$BIN/tether-bench" free-ports 1)
        cat > "$WORK/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$tport"
max_connections = 20000
workers = $workers
[server.tls]
listen = "127.0.0.1:$sport"
cert_file = "tls.pem"
key_file = "tls.key"
[server.websocket]
listen = "127.0.0.1:$wport"
tls = ${TETHER_WS_TLS:-false}
[auth]
users_file = "users.toml"
bcrypt_cost = 4
login_failures_per_minute = 0
[events]
time_zone = "UTC"
[admin]
listen = "127.0.0.1:$aport"
[log]
level = "warn"
${TETHER_EXTRA_TOML:-}
TOML
        "$BIN/tether" --config "$WORK/$name.toml" 2>> "$WORK/$name.log" &
        STARTED_PID=$!
        PIDS+=("$STARTED_PID")
        if wait_port "$tport" "$STARTED_PID" && wait_port "$aport" "$STARTED_PID" \
            && wait_port "$sport" "$STARTED_PID" && wait_port "$wport" "$STARTED_PID"; then
            STARTED_ADDR=127.0.0.1:$tport
            STARTED_TLS_ADDR=127.0.0.1:$sport
            STARTED_WS_ADDR=127.0.0.1:$wport
            STARTED_ADMIN=127.0.0.1:$aport
            return 0
        fi
        stop_one "$STARTED_PID"
        [[ -z ${3:-} ]] || break
        echo "retrying $name on other ports" >&2
    done
    cat "$WORK/$name.log" >&2
    return 1
}

# stop_one PID: stop one of the servers started here (and forget it).
stop_one() {
    local pid=$1 kept=() other
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for other in "${PIDS[@]}"; do
        [[ $other == "$pid" ]] || kept+=("$other")
    done
    PIDS=("${kept[@]}")
}
