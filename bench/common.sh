# Shared by bench/smoke.sh and bench/run-all.sh (sourced): start tether, serve-raw and
# redis-server on free loopback ports with generated configuration, and stop them on exit.
# Expects BIN (the folder with the release binaries) and WORK (a temporary folder).
# WORKERS (default 0: one event loop per CPU) is tether's `server.workers`.
# Every tether also listens for TLS (`server.tls.listen`; not with TETHER_TLS=0) with a
# certificate for localhost signed by a CA made here with `openssl` ($WORK/tls-ca.pem, what
# `--tls-ca` trusts), and for WebSocket (`server.websocket.listen`, path "/"; `wss` with
# TETHER_WS_TLS=true; not with TETHER_WS=0). Every bench script starts tether through start_tether (its knobs:
# launch prefix, binary, [auth] body, TLS, waiting) and writes no tether config of its own.

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

# wait_port PORT [PID [SECONDS]]: until something listens on 127.0.0.1:PORT (at most
# SECONDS, default 20; fails at once if process PID has exited).
wait_port() {
    local i
    for i in $(seq 1 $((${3:-20} * 10))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then
            echo "the server meant to listen on 127.0.0.1:$1 has exited" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after ${3:-20} s" >&2
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
# TETHER_TLS_ADDR TETHER_WS_ADDR ADMIN_ADDR RAW_ADDR REDIS_ADDR and TETHER_PID RAW_PID REDIS_PID.
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

# For A/B scripts: starts the base build ($A_DIR/tether) as "base" and this tree's release
# build as "branch" (B_FIRST=1 starts the branch first), with TLS, ports picked by this
# tree's tether-bench; sets A_PLAIN A_TLS A_PID and B_PLAIN B_TLS B_PID.
start_base_and_branch() {
    local side
    local order=(A B)
    [[ -n ${B_FIRST:-} ]] && order=(B A)
    for side in "${order[@]}"; do
        if [[ $side == A ]]; then
            BIN=$A_DIR TETHER_BENCH=$PWD/target/release/tether-bench start_tether base 0
            A_PLAIN=$STARTED_ADDR A_TLS=$STARTED_TLS_ADDR A_PID=$STARTED_PID
        else
            BIN=$PWD/target/release start_tether branch 0
            B_PLAIN=$STARTED_ADDR B_TLS=$STARTED_TLS_ADDR B_PID=$STARTED_PID
        fi
    done
}

# start_tether NAME WORKERS [PORT ADMIN_PORT [TLS_PORT]]: a tether with `server.workers =
# WORKERS`, its config $WORK/NAME.toml written by tether_config (below), its log (stderr)
# appended to $WORK/NAME.log; ports picked here when not given (and picked again, up to 3
# times, if they turn out taken; the WebSocket port is always picked here). Waits until
# every port listens. Sets STARTED_ADDR STARTED_TLS_ADDR (empty without TLS) STARTED_WS_ADDR
# (empty without WebSocket) STARTED_ADMIN STARTED_PID; stop_servers stops it
# with the rest, stop_one PID before. Knobs, read at each call (so `KNOB=value start_tether
# …` sets one for that call only; every bench script starts tether here, never by itself):
#   BIN            the folder with `tether` and `tether-bench` (the default of the next two)
#   TETHER_BIN     the tether binary (default $BIN/tether)
#   TETHER_BENCH   the tether-bench that picks free ports (default $BIN/tether-bench)
#   TETHER_PREFIX  words run before the binary, split at spaces: `taskset -c 0`,
#                  `valgrind --tool=callgrind --callgrind-out-file=DIR/callgrind.%p` (these
#                  exec the binary: STARTED_PID is still tether's process)
#   TETHER_WAIT    seconds to wait for each port (default 20; 60 suits valgrind); 0: do not
#                  wait (the caller waits, e.g. for `listening on` in the log; no retry)
#   TETHER_TLS     1 (default): also a TLS listener; 0: no TLS listener
#   TETHER_WS      1 (default): also a WebSocket listener (TETHER_WS_TLS=true: wss); 0: none
#   TETHER_AUTH    the body of [auth] (default: $WORK/users.toml at bcrypt cost 4, no
#                  login-failure limit); e.g. a PostgreSQL `database = "postgres://…"`,
#                  `watch = false`, another `bcrypt_cost`
#   TETHER_LOG_LEVEL  `log.level` (default warn; info logs `listening on`)
#   TETHER_EXTRA_TOML appended to the config, such as a [cluster] section
start_tether() {
    local name=$1 workers=$2 tport=${3:-} aport=${4:-} sport=${5:-} wport attempt prefix wait
    local tls=${TETHER_TLS:-1}
    read -ra prefix <<< "${TETHER_PREFIX:-}"
    wait=${TETHER_WAIT:-20}
    for attempt in 1 2 3; do
        if [[ -z ${3:-} ]]; then
            read -r tport aport sport < <("${TETHER_BENCH:-$BIN/tether-bench}" free-ports 3)
        fi
        wport=
        [[ ${TETHER_WS:-1} == 0 ]] || read -r wport < <("${TETHER_BENCH:-$BIN/tether-bench}" free-ports 1)
        tether_config "$name" "$workers" "$tport" "$aport" "$sport" "$wport"
        "${prefix[@]}" "${TETHER_BIN:-$BIN/tether}" --config "$WORK/$name.toml" \
            2>> "$WORK/$name.log" &
        STARTED_PID=$!
        PIDS+=("$STARTED_PID")
        STARTED_ADDR=127.0.0.1:$tport
        STARTED_TLS_ADDR=
        [[ $tls == 0 ]] || STARTED_TLS_ADDR=127.0.0.1:$sport
        STARTED_WS_ADDR=
        [[ -z $wport ]] || STARTED_WS_ADDR=127.0.0.1:$wport
        STARTED_ADMIN=127.0.0.1:$aport
        [[ $wait == 0 ]] && return 0
        if wait_port "$tport" "$STARTED_PID" "$wait" && wait_port "$aport" "$STARTED_PID" "$wait" \
            && { [[ $tls == 0 ]] || wait_port "$sport" "$STARTED_PID" "$wait"; } \
            && { [[ -z $wport ]] || wait_port "$wport" "$STARTED_PID" "$wait"; }; then
            return 0
        fi
        stop_one "$STARTED_PID"
        [[ -z ${3:-} ]] || break
        echo "retrying $name on other ports" >&2
    done
    cat "$WORK/$name.log" >&2
    return 1
}

# tether_config NAME WORKERS PORT ADMIN_PORT [TLS_PORT [WS_PORT]]: writes $WORK/NAME.toml as
# start_tether would, with the same knobs (TETHER_TLS, TETHER_AUTH, TETHER_LOG_LEVEL,
# TETHER_EXTRA_TOML); alone, for the `tether db …`/`tether passwd` commands a script runs
# before starting the server. Relative paths in it (users.toml, the TLS pair) are $WORK's.
tether_config() {
    local name=$1 workers=$2 tport=$3 aport=$4 sport=${5:-} wport=${6:-} tls="" ws="" auth
    auth=${TETHER_AUTH:-'users_file = "users.toml"
bcrypt_cost = 4
login_failures_per_minute = 0'}
    if [[ ${TETHER_TLS:-1} != 0 ]]; then
        make_tls_pair
        tls="[server.tls]
listen = \"127.0.0.1:$sport\"
cert_file = \"tls.pem\"
key_file = \"tls.key\""
    fi
    if [[ -n $wport ]]; then
        ws="[server.websocket]
listen = \"127.0.0.1:$wport\"
tls = ${TETHER_WS_TLS:-false}"
    fi
    cat > "$WORK/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$tport"
max_connections = 20000
workers = $workers
$tls
$ws
[auth]
$auth
[events]
time_zone = "UTC"
[admin]
listen = "127.0.0.1:$aport"
[log]
level = "${TETHER_LOG_LEVEL:-warn}"
${TETHER_EXTRA_TOML:-}
TOML
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
