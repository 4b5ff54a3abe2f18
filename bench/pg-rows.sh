#!/usr/bin/env bash
# Start-up time and RSS of tether against an empty users table and one with 1,000,000 rows
# (issue 14: neither may grow with the rows). Needs Debian's postgresql and root (initdb
# runs as the `postgres` user). Uses ports 55432, 57700 and 57701 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p tether
BIN=$PWD/target/release/tether
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
W=$(mktemp -d /tmp/pgb.XXXX); chown postgres "$W"; chmod 755 "$W"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/data" -U tether --auth=trust > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -o "-p 55432 -k $W -c listen_addresses=127.0.0.1" -l "$W/pg.log" -w start > /dev/null
PSQL="runuser -u postgres -- $PGBIN/psql -h 127.0.0.1 -p 55432 -U tether -d postgres -qAt"
cat > "$W/server.toml" <<TOML
[server]
listen = "127.0.0.1:57700"
[auth]
database = "postgres://tether@127.0.0.1:55432/postgres"
bcrypt_cost = 4
[admin]
listen = "127.0.0.1:57701"
TOML
"$BIN" db init --config "$W/server.toml" > /dev/null
measure() {
    local start=$(date +%s.%N)
    "$BIN" --config "$W/server.toml" > "$W/tether.log" 2>&1 &
    local pid=$!
    until grep -q 'listening on' "$W/tether.log" 2>/dev/null; do sleep 0.01; done
    local ready=$(date +%s.%N)
    sleep 1
    local rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    echo "$1: start-up $(echo "$ready - $start" | bc) s, RSS ${rss} KiB"
    kill $pid; wait $pid || true
}
measure "empty table"
HASH=$($PSQL -c "select 1" > /dev/null; printf 'x\n' | "$BIN" passwd probe --config "$W/server.toml" > /dev/null 2>&1; $PSQL -c "select password_hash from tether_users where name='probe'")
$PSQL -c "insert into tether_users (name, password_hash) select 'user' || g, '$HASH' from generate_series(1, 1000000) g"
echo "rows: $($PSQL -c 'select count(*) from tether_users')"
measure "1,000,000 rows"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m fast stop > /dev/null
rm -rf "$W"
