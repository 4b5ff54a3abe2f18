#!/usr/bin/env bash
# Re-admission storms (issue 27, SPEC §5 "Admission after a restart"): USERS users (default
# 1,000) at bcrypt COST (default 12) log in at once, each on a connection of its own, to a
# node with `auth.verifier_key_file`:
#   1. the first storm (no verifiers yet: exactly the work of a node without them),
#   2. after a restart (SIGTERM, start again): admitted by the saved verifiers,
#   3. the cost of one login in a row: cost-4 bcrypt against the verifier fast path,
#   4. the memory of a kept verifier (a node started on a file of MEM_VERIFIERS of them
#      against an empty one),
#   5. two nodes of a cluster over Redis: the first storm on A, the same users on B, then
#      A restarted (a rolling deploy) and the storm on A again.
# Printed: one table per run (seconds, logins/s, bcrypt checks, checks saved, server CPU).
# Default password_threads (one per CPU but one). TETHER_BIN / BENCH_BIN use binaries
# already built instead of `cargo build --release`. SKIP_CLUSTER=1 leaves 5 out.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000}
COST=${COST:-12}
MEM_VERIFIERS=${MEM_VERIFIERS:-200000}
if [[ -z "${TETHER_BIN:-}" || -z "${BENCH_BIN:-}" ]]; then
    cargo build --release --locked -p tether -p tether-bench
fi
BIN=${TETHER_BIN:-$PWD/target/release/tether}
BENCH=${BENCH_BIN:-$PWD/target/release/tether-bench}
W=$(mktemp -d /tmp/readmit.XXXX)
declare -A PID=() PORT=() ADMIN=()
REDIS_PID=
cleanup() {
    for pid in "${PID[@]}" $REDIS_PID; do kill "$pid" 2> /dev/null || true; done
    [[ -n "${KEEP:-}" ]] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
"$BENCH" make-users "$USERS" --cost "$COST" > "$W/users.toml"
"$BENCH" make-users 2000 --cost 4 --prefix c >> "$W/users.toml"
"$BIN" keygen "$W/verifier.key" > /dev/null

# config NAME [EXTRA]: $W/NAME.toml, its own ports and verifier file, the shared users and key.
config() {
    local tport aport
    read -r tport aport < <("$BENCH" free-ports 2)
    PORT[$1]=$tport ADMIN[$1]=$aport
    cat > "$W/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$tport"
max_connections = 20000
[auth]
users_file = "users.toml"
bcrypt_cost = $COST
login_failures_per_minute = 0
verifier_key_file = "verifier.key"
verifier_file = "$1.verifiers"
[admin]
listen = "127.0.0.1:$aport"
[log]
level = "warn"
${2:-}
TOML
}
# start NAME: runs it and waits for its admin API.
start() {
    "$BIN" --config "$W/$1.toml" 2>> "$W/$1.log" &
    PID[$1]=$!
    until curl -fs "http://127.0.0.1:${ADMIN[$1]}/healthz" > /dev/null; do
        kill -0 "${PID[$1]}" || { cat "$W/$1.log"; exit 1; }
        sleep 0.05
    done
}
# stop NAME: SIGTERM, and waits for the exit.
stop() {
    kill "${PID[$1]}"
    wait "${PID[$1]}" || true
    unset "PID[$1]"
}
# storm NAME LABEL [ARGS...]: tether-bench readmit against NAME (USERS users unless ARGS say).
storm() {
    local name=$1 label=$2
    shift 2
    "$BENCH" --json-out "$W/results.jsonl" readmit --addr "127.0.0.1:${PORT[$name]}" \
        --admin "127.0.0.1:${ADMIN[$name]}" --pid "${PID[$name]}" --label "$label" "$@"
}
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

echo "== one node: $USERS users at cost $COST, $(nproc) CPUs, default password_threads"
config one
start one
storm one "first storm (no verifiers yet = without verifiers)" --users "$USERS"
stop one
start one
storm one "after a restart, with verifiers" --users "$USERS"
storm one "cost-4 bcrypt, 2,000 logins in a row" --prefix c --users 2000 --sequential 2000
storm one "verifier fast path, 2,000 logins in a row" --prefix c --users 2000 --sequential 2000
stop one

echo "== memory: a node on $MEM_VERIFIERS verifiers against one on none"
KEY_ID=$(python3 - "$W/verifier.key" <<'PY'
import hashlib, hmac, sys
key = open(sys.argv[1], 'rb').read().rstrip(b'\n')
print(hmac.new(key, b"tether verifier key id v1\0", hashlib.sha256).hexdigest()[:16])
PY
)
python3 - "$W/mem.verifiers" "$KEY_ID" "$MEM_VERIFIERS" <<'PY'
import os, sys, time
path, key_id, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
now = int(time.time())
with open(path, 'w') as out:
    out.write(f"tether-verifiers 1 {key_id}\n")
    for n in range(count):
        out.write(f"{f'user-{n:06d}'.encode().hex()} {os.urandom(32).hex()} {now}\n")
os.chmod(path, 0o600)
PY
config empty
start empty
config mem
start mem
EMPTY=$(rss_kib "${PID[empty]}")
FULL=$(rss_kib "${PID[mem]}")
echo "RSS: $EMPTY KiB with none, $FULL KiB with $MEM_VERIFIERS: $(( (FULL - EMPTY) * 1024 / MEM_VERIFIERS )) bytes per verifier"
stop empty
stop mem

if [[ -n "${SKIP_CLUSTER:-}" ]]; then exit 0; fi
echo "== two nodes of a cluster over Redis"
read -r RPORT < <("$BENCH" free-ports 1)
redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no \
    --protected-mode no --logfile "$W/redis.log" &
REDIS_PID=$!
until redis-cli -p "$RPORT" ping > /dev/null 2>&1; do sleep 0.05; done
for node in a b; do
    config "$node" "[cluster]
redis = \"redis://127.0.0.1:$RPORT/0\"
node = \"$node\"
prefix = \"bench\""
    start "$node"
done
storm a "cluster, node A: first storm (no verifiers yet)" --users "$USERS"
echo "Redis: $(redis-cli -p "$RPORT" memory usage 'bench:verifier:{7530}') bytes for one verifier key (MEMORY USAGE)"
storm b "cluster, node B: the same users, other node" --users "$USERS"
stop a
start a
storm a "cluster, node A restarted (rolling deploy)" --users "$USERS"
