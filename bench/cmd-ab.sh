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
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
"$B" make-users 100 --cost 4 > "$W/users.toml"
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
commands() {
    curl -s "http://$1/metrics" | awk '/^tether_commands_total\{type="prolongate"\}/ {print $2}'
}
PIDS=() ADDRS=() ADMINS=()
for i in "${!DIRS[@]}"; do
    read -r port admin < <("$B" free-ports 2)
    printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = %s\n[auth]\nusers_file = "%s"\n[admin]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' \
        "$port" "$WORKERS" "$W/users.toml" "$admin" > "$W/$i.toml"
    "${DIRS[$i]}/tether" --config "$W/$i.toml" > "$W/$i.log" 2>&1 &
    PIDS+=($!) ADDRS+=("127.0.0.1:$port") ADMINS+=("127.0.0.1:$admin")
    for _ in $(seq 100); do (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break; sleep 0.1; done
done
ticks=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for k in "${!DIRS[@]}"; do
        i=$(((k + round) % ${#DIRS[@]}))
        name=$(basename "${DIRS[$i]}")
        read -r u0 s0 < <(cpu "${PIDS[$i]}")
        c0=$(commands "${ADMINS[$i]}")
        line=$("$B" --tag "r$round" --json-out "$OUT" --threads 2 --target-name "tether-$name" \
            cmd --proto tether --addr "${ADDRS[$i]}" --shapes 50x16 --duration 5 --warmup 1 |
            grep -E '^\s+50x16' | tail -1)
        read -r u1 s1 < <(cpu "${PIDS[$i]}")
        replies=$(($(commands "${ADMINS[$i]}") - c0))
        printf 'r%s %-8s %s | server CPU ns/reply: user %d sys %d\n' "$round" "$name" "$line" \
            $(((u1 - u0) * 1000000000 / ticks / replies)) $(((s1 - s0) * 1000000000 / ticks / replies))
    done
done
