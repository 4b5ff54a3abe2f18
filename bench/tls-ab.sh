#!/usr/bin/env bash
# A/B of two tether builds on TLS: A = $A_DIR/tether (the base), B = target/release/tether
# (this branch), both running side by side (idle while the other is measured), the same
# tether-bench (B's) as the client. Per round, in alternating order: cmd 50x16 plaintext and
# over TLS, then handshakes/s (16 loops, full, then resuming).
# Usage: A_DIR=DIR_WITH_BASE_TETHER ROUNDS=4 OUT=FILE [B_FIRST=1] bench/tls-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
OUT=${OUT:-/tmp/tls3-ab.jsonl}
DUR=${DUR:-4}
BENCH=$PWD/target/release/tether-bench
WORK=$(mktemp -d)
BIN=$PWD/target/release
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
"$BENCH" make-users 2000 --cost 4 > "$WORK/users.toml"
start_base_and_branch
echo "A (base) pid $A_PID plain $A_PLAIN tls $A_TLS; B (branch) pid $B_PID plain $B_PLAIN tls $B_TLS"
for round in $(seq 1 "$ROUNDS"); do
    sides=(A B)
    (( round % 2 == 0 )) && sides=(B A)
    for side in "${sides[@]}"; do
        if [[ $side == A ]]; then plain=$A_PLAIN tls=$A_TLS; else plain=$B_PLAIN tls=$B_TLS; fi
        echo "== round $round side $side $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
        "$BENCH" --tag "$side-r$round-plain" --json-out "$OUT" cmd --addr "$plain" \
            --shapes 50x16 --duration "$DUR" --warmup 1 | grep -v '^{' | grep -E '50x16|replies' || true
        "$BENCH" --tag "$side-r$round-tls" --json-out "$OUT" cmd --addr "$tls" \
            --tls-ca "$WORK/tls-ca.pem" --shapes 50x16 --duration "$DUR" --warmup 1 | grep -v '^{' | grep -E '50x16|replies' || true
        "$BENCH" --tag "$side-r$round-hs" --json-out "$OUT" tls --addr "$plain" --tls-addr "$tls" \
            --tls-ca "$WORK/tls-ca.pem" --handshakes-only --duration "$DUR" --warmup 0 | grep -v '^{' | grep handshakes || true
    done
done
