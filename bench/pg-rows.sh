#!/usr/bin/env bash
# Start-up time and RSS of tether against an empty users table and one with 1,000,000 rows
# (issue 14: neither may grow with the rows). Needs Debian's postgresql and root (initdb
# runs as the `postgres` user). Uses port 55432 and two free ones on 127.0.0.1. TETHER_BIN /
# BENCH_BIN use binaries already built instead of `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${TETHER_BIN:-}" || -z "${BENCH_BIN:-}" ]]; then
    cargo build --release --locked -p tether -p tether-bench
fi
TETHER_BIN=${TETHER_BIN:-$PWD/target/release/tether}
TETHER_BENCH=${BENCH_BIN:-$PWD/target/release/tether-bench}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
WORK=$(mktemp -d /tmp/pgb.XXXX); chown postgres "$WORK"; chmod 755 "$WORK"
source bench/common.sh
# The servers' config (bench/common.sh writes it): the table, `listening on` in the log.
TETHER_TLS=0 TETHER_LOG_LEVEL=info
TETHER_AUTH='database = "postgres://tether@127.0.0.1:55432/postgres"
bcrypt_cost = 4'
trap 'stop_servers; runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop > /dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -U tether --auth=trust > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -o "-p 55432 -k $WORK -c listen_addresses=127.0.0.1" -l "$WORK/pg.log" -w start > /dev/null
PSQL="runuser -u postgres -- $PGBIN/psql -h 127.0.0.1 -p 55432 -U tether -d postgres -qAt"
read -r PORT ADMIN < <("$TETHER_BENCH" free-ports 2)
tether_config server 0 "$PORT" "$ADMIN"
"$TETHER_BIN" db init --config "$WORK/server.toml" > /dev/null
# measure LABEL NAME: starts a server (log $WORK/NAME.log), times it to its first
# `listening on` (start_tether does not wait: its port polling is coarser), RSS 1 s later.
measure() {
    local start=$(date +%s.%N)
    TETHER_WAIT=0 start_tether "$2" 0 "$PORT" "$ADMIN"
    local pid=$STARTED_PID
    until grep -q 'listening on' "$WORK/$2.log" 2>/dev/null; do
        kill -0 "$pid" 2> /dev/null || { cat "$WORK/$2.log" >&2; exit 1; }
        sleep 0.01
    done
    local ready=$(date +%s.%N)
    sleep 1
    local rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    echo "$1: start-up $(echo "$ready - $start" | bc) s, RSS ${rss} KiB"
    stop_one "$pid"
}
measure "empty table" empty
HASH=$($PSQL -c "select 1" > /dev/null; printf 'x\n' | "$TETHER_BIN" passwd probe --config "$WORK/server.toml" > /dev/null 2>&1; $PSQL -c "select password_hash from tether_users where name='probe'")
$PSQL -c "insert into tether_users (name, password_hash) select 'user' || g, '$HASH' from generate_series(1, 1000000) g"
echo "rows: $($PSQL -c 'select count(*) from tether_users')"
measure "1,000,000 rows" rows
