# Shared by bench/smoke.sh and bench/run-all.sh (sourced): start tether, serve-raw and
# redis-server on free loopback ports with generated configuration, and stop them on exit.
# Expects BIN (the folder with the release binaries) and WORK (a temporary folder).

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

# wait_port PORT: until something listens on 127.0.0.1:PORT (at most 20 s).
wait_port() {
    local i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1 after 20 s" >&2
    return 1
}

# start_servers USERS: users file (USERS at cost 4, plus storm0..storm1 at cost 10),
# tether config, then the three servers. Sets TETHER_ADDR ADMIN_ADDR RAW_ADDR REDIS_ADDR
# and TETHER_PID RAW_PID REDIS_PID.
start_servers() {
    local users=$1 tport aport rport dport
    read -r tport aport rport dport < <("$BIN/tether-bench" free-ports 4)
    "$BIN/tether-bench" make-users "$users" --cost 4 > "$WORK/users.toml"
    "$BIN/tether-bench" make-users 2 --cost 10 --prefix storm >> "$WORK/users.toml"
    cat > "$WORK/server.toml" <<TOML
[server]
listen = "127.0.0.1:$tport"
max_connections = 20000
workers = 0
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
TOML
    # The hard limit is the most a process may open; the servers need ~19,000.
    ulimit -n "$(ulimit -Hn)"
    "$BIN/tether" --config "$WORK/server.toml" 2> "$WORK/tether.log" &
    TETHER_PID=$!
    PIDS+=("$TETHER_PID")
    "$BIN/tether-bench" serve-raw "127.0.0.1:$rport" 2> "$WORK/serve-raw.log" &
    RAW_PID=$!
    PIDS+=("$RAW_PID")
    redis-server --bind 127.0.0.1 --port "$dport" --save '' --appendonly no \
        --protected-mode no --maxclients 19900 --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$tport"
    wait_port "$aport"
    wait_port "$rport"
    wait_port "$dport"
    TETHER_ADDR=127.0.0.1:$tport
    ADMIN_ADDR=127.0.0.1:$aport
    RAW_ADDR=127.0.0.1:$rport
    REDIS_ADDR=127.0.0.1:$dport
}
