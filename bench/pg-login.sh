#!/usr/bin/env bash
# Login latency p50/p99 with users in PostgreSQL against the users file, at the same bcrypt
# cost (issue 14). Two servers run side by side, one on a users file of 1,000 users and one
# on a PostgreSQL table with the same 1,000 rows, and `tether-bench churn` (connect, log in,
# wait for the verdict, close; one loop) measures them in turn, ROUNDS times each, so that
# a busy moment of the machine hits both alike; the table then gets 1,000,000 more rows and
# the rounds run again. Printed: the median over the rounds of each figure.
#
# Needs Debian's postgresql and root (initdb runs as the `postgres` user). Uses port 55433
# and four free ones on 127.0.0.1. TETHER_BIN / BENCH_BIN use binaries already built
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
TETHER_BIN=${TETHER_BIN:-$PWD/target/release/tether}
BENCH=${BENCH_BIN:-$PWD/target/release/tether-bench}
TETHER_BENCH=$BENCH TETHER_TLS=0
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
WORK=$(mktemp -d /tmp/pgl.XXXX); chown postgres "$WORK"; chmod 755 "$WORK"
source bench/common.sh
declare -A SERVERS=() PORTS=() ADMINS=()
read -r 'PORTS[file]' 'ADMINS[file]' 'PORTS[database]' 'ADMINS[database]' < <("$BENCH" free-ports 4)
cleanup() {
    stop_servers
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop > /dev/null 2>&1 || true
    [[ -n "${KEEP:-}" ]] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -U tether --auth=trust > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -o "-p 55433 -k $WORK -c listen_addresses=127.0.0.1" -l "$WORK/pg.log" -w start > /dev/null
PSQL="runuser -u postgres -- $PGBIN/psql -h 127.0.0.1 -p 55433 -U tether -d postgres -qAt"

# auth STORE COST: the [auth] body of the server of STORE (the users file or the table) at
# COST; its config is $WORK/STORE.toml (bench/common.sh writes it).
auth() {
    if [[ $1 == file ]]; then
        echo 'users_file = "users.toml"'
    else
        echo 'database = "postgres://tether@127.0.0.1:55433/postgres"'
    fi
    printf 'bcrypt_cost = %s\nwatch = false\nlogin_failures_per_minute = 0\n' "$2"
}

# start STORE COST: starts the server of STORE and waits until it answers.
start() {
    TETHER_AUTH=$(auth "$1" "$2") start_tether "$1" 0 "${PORTS[$1]}" "${ADMINS[$1]}"
    SERVERS[$1]=$STARTED_PID
    until curl -fs "http://$STARTED_ADMIN/healthz" > /dev/null; do sleep 0.05; done
    # Warm up: connections, the store's first lookups.
    "$BENCH" churn --addr "$STARTED_ADDR" --pid "$STARTED_PID" --duration 1 --settle 0 \
        --concurrency "$LOOPS" --users 1000 > /dev/null
}
stop_all() {
    for store in "${!SERVERS[@]}"; do stop_one "${SERVERS[$store]}"; done
    SERVERS=()
}
# rounds LABEL COST: ROUNDS measurements of each server, interleaved.
rounds() {
    for _ in $(seq "$ROUNDS"); do
        for store in file database; do
            local label="users file, 1,000 users"
            [[ $store == database ]] && label="PostgreSQL, $1"
            "$BENCH" --tag "$label|$2" --json-out "$WORK/results.jsonl" churn \
                --addr "127.0.0.1:${PORTS[$store]}" --pid "${SERVERS[$store]}" \
                --duration "$SECONDS_EACH" --settle 0 --concurrency "$LOOPS" --users 1000 > /dev/null
        done
    done
}

# The table's config, for `tether db`: bench/common.sh writes it, start rewrites it alike.
database_config() {
    TETHER_AUTH=$(auth database "$1") tether_config database 0 "${PORTS[database]}" \
        "${ADMINS[database]}"
}
database_config 4
"$TETHER_BIN" db init --config "$WORK/database.toml" > /dev/null
for cost in $COSTS; do
    "$BENCH" make-users 1000 --cost "$cost" > "$WORK/users.toml"
    $PSQL -c "truncate tether_users"
    database_config "$cost"
    "$TETHER_BIN" db import "$WORK/users.toml" --config "$WORK/database.toml" > /dev/null
    start file "$cost"; start database "$cost"
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
python3 - "$WORK/results.jsonl" <<'PY'
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
