#!/usr/bin/env bash
# Login latency p50/p99 with users in PostgreSQL against the users file, at the same bcrypt
# cost (issue 14). Two servers run side by side, one on a users file of 1,000 users and one
# on a PostgreSQL table with the same 1,000 rows, and `tether-bench churn` (connect, log in,
# wait for the verdict, close; one loop) measures them in turn, ROUNDS times each, so that
# a busy moment of the machine hits both alike; the table then gets 1,000,000 more rows and
# the rounds run again. Printed: the median over the rounds of each figure.
#
# Needs Debian's postgresql and root (initdb runs as the `postgres` user). Uses ports
# 55433 and 57710-57713 on 127.0.0.1. TETHER_BIN / BENCH_BIN use binaries already built
# instead of `cargo build --release`. COSTS (default "4 10"), ROUNDS (5), DURATION (3 s
# per measurement), LOOPS (1: connect-login loops at once).
set -euo pipefail
cd "$(dirname "$0")/.."
COSTS=${COSTS:-"4 10"}
ROUNDS=${ROUNDS:-5}
SECONDS_EACH=${DURATION:-3}
LOOPS=${LOOPS:-1}
if [[ -z "${TETHER_BIN:-}" || -z "${BENCH_BIN:-}" ]]; then
    cargo build --release --locked -p tether -p tether-bench
fi
BIN=${TETHER_BIN:-$PWD/target/release/tether}
BENCH=${BENCH_BIN:-$PWD/target/release/tether-bench}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
W=$(mktemp -d /tmp/pgl.XXXX); chown postgres "$W"; chmod 755 "$W"
declare -A PIDS=() PORTS=([file]=57710 [database]=57712)
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m fast -w stop > /dev/null 2>&1 || true
    [[ -n "${KEEP:-}" ]] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
runuser -u postgres -- "$PGBIN/initdb" -D "$W/data" -U tether --auth=trust > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -o "-p 55433 -k $W -c listen_addresses=127.0.0.1" -l "$W/pg.log" -w start > /dev/null
PSQL="runuser -u postgres -- $PGBIN/psql -h 127.0.0.1 -p 55433 -U tether -d postgres -qAt"

# config STORE COST PORT: server-STORE.toml for the users file or the table, at COST, serving
# clients on PORT and the admin API on PORT+1.
config() {
    local store
    if [[ $1 == file ]]; then
        store="users_file = \"$W/users.toml\""
    else
        store='database = "postgres://tether@127.0.0.1:55433/postgres"'
    fi
    cat > "$W/server-$1.toml" <<TOML
[server]
listen = "127.0.0.1:$3"
[auth]
$store
bcrypt_cost = $2
watch = false
login_failures_per_minute = 0
[admin]
listen = "127.0.0.1:$(($3 + 1))"
[log]
level = "warn"
TOML
}

# start STORE: starts the server of STORE and waits until it answers.
start() {
    "$BIN" --config "$W/server-$1.toml" > "$W/tether-$1.log" 2>&1 &
    PIDS[$1]=$!
    until curl -fs "http://127.0.0.1:$((PORTS[$1] + 1))/healthz" > /dev/null; do sleep 0.05; done
    # Warm up: connections, the store's first lookups.
    "$BENCH" churn --addr "127.0.0.1:${PORTS[$1]}" --pid "${PIDS[$1]}" --duration 1 --settle 0 \
        --concurrency "$LOOPS" --users 1000 > /dev/null
}
stop_all() {
    for store in "${!PIDS[@]}"; do kill "${PIDS[$store]}"; wait "${PIDS[$store]}" || true; done
    PIDS=()
}
# rounds LABEL COST: ROUNDS measurements of each server, interleaved.
rounds() {
    for _ in $(seq "$ROUNDS"); do
        for store in file database; do
            local label="users file, 1,000 users"
            [[ $store == database ]] && label="PostgreSQL, $1"
            "$BENCH" --tag "$label|$2" --json-out "$W/results.jsonl" churn \
                --addr "127.0.0.1:${PORTS[$store]}" --pid "${PIDS[$store]}" \
                --duration "$SECONDS_EACH" --settle 0 --concurrency "$LOOPS" --users 1000 > /dev/null
        done
    done
}

config database 4 57712
"$BIN" db init --config "$W/server-database.toml" > /dev/null
for cost in $COSTS; do
    "$BENCH" make-users 1000 --cost "$cost" > "$W/users.toml"
    $PSQL -c "truncate tether_users"
    config file "$cost" 57710
    config database "$cost" 57712
    "$BIN" db import "$W/users.toml" --config "$W/server-database.toml" > /dev/null
    start file; start database
    rounds "1,000 rows" "$cost"
    HASH=$($PSQL -c "select password_hash from tether_users where name = 'u0'")
    # Without the trigger: its 1,000,000 notifications would keep the node busy meanwhile.
    $PSQL -c "alter table tether_users disable trigger tether_users_notify; insert into tether_users (name, password_hash) select 'x' || g, '$HASH' from generate_series(1, 1000000) g; alter table tether_users enable trigger tether_users_notify"
    $PSQL -c "analyze tether_users"
    rounds "1,001,000 rows" "$cost"
    stop_all
done

echo "median of $ROUNDS rounds of ${SECONDS_EACH} s, $LOOPS loop(s)"
echo "store | cost | logins/s | p50 ms | p99 ms"
python3 - "$W/results.jsonl" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["tag"], []).append(r)
for tag, rs in runs.items():
    label, cost = tag.rsplit("|", 1)
    med = lambda key: statistics.median(r[key] for r in rs)
    print(f'{label} | {cost} | {med("connections_per_s"):.0f} | '
          f'{med("cycle_p50_us") / 1000:.2f} | {med("cycle_p99_us") / 1000:.2f}')
PY
