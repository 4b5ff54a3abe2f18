#!/usr/bin/env bash
# cmd 50x16 of several tether builds side by side: each DIR/tether started once (idle while
# another is measured), measured in turn every round (the order rotated each round) with
# the same tether-bench. Per run: replies/s (tether-bench) and the server's CPU time per
# reply (user and system, from /proc/PID/stat over the run, divided by the `prolongate`
# commands /metrics counted meanwhile) — the figure a loaded machine moves least.
# Usage: [ROUNDS=4] [WORKERS=0] [BENCH=tether-bench] bench/cmd-ab.sh OUT.jsonl DIR...
set -euo pipefail
OUT=$1
shift
DIRS=("$@")
ROUNDS=${ROUNDS:-4}
WORKERS=${WORKERS:-0}
B=${BENCH:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tether-bench}
WORK=$(mktemp -d)
source "$(dirname "$0")/common.sh"
trap 'stop_servers; rm -rf "$WORK"' EXIT
"$B" make-users 100 --cost 4 > "$WORK/users.toml"
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
commands() {
    curl -s "http://$1/metrics" | awk '/^tether_commands_total\{type="prolongate"\}/ {print $2}'
}
SERVERS=() ADDRS=() ADMINS=()
for i in "${!DIRS[@]}"; do
    BIN=${DIRS[$i]} TETHER_BENCH=$B TETHER_TLS=0 start_tether "$i" "$WORKERS"
    SERVERS+=("$STARTED_PID") ADDRS+=("$STARTED_ADDR") ADMINS+=("$STARTED_ADMIN")
done
ticks=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for k in "${!DIRS[@]}"; do
        i=$(((k + round) % ${#DIRS[@]}))
        name=$(basename "${DIRS[$i]}")
        read -r u0 s0 < <(cpu "${SERVERS[$i]}")
        c0=$(commands "${ADMINS[$i]}")
        line=$("$B" --tag "r$round" --json-out "$OUT" --threads 2 --target-name "tether-$name" \
            cmd --proto tether --addr "${ADDRS[$i]}" --shapes 50x16 --duration 5 --warmup 1 |
            grep -E '^\s+50x16' | tail -1)
        read -r u1 s1 < <(cpu "${SERVERS[$i]}")
        replies=$(($(commands "${ADMINS[$i]}") - c0))
        printf 'r%s %-8s %s | server CPU ns/reply: user %d sys %d\n' "$round" "$name" "$line" \
            $(((u1 - u0) * 1000000000 / ticks / replies)) $(((s1 - s0) * 1000000000 / ticks / replies))
    done
done
