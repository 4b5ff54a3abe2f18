#!/usr/bin/env bash
# A/B of two tether builds under a TLS handshake storm (issue 15): A = $A_DIR/tether (the
# base), B = target/release/tether (this branch), side by side (idle while the other is
# measured), the same tether-bench (B's) as the client. Per round, in alternating order,
# on each side: handshakes/s (16 loops, full, then resuming), then the `prolongate` p99 of
# TLS cmd 50x1 paced at half its maximum, quiet and during a storm of 16 handshake loops:
#   full  - as fast as the loops go;
#   rate  - at $STORM_RATE new connections/s in all (default 1000);
#   nice  - as fast as they go, the loops' thread at nice 19 (so that the storm takes only
#           CPU nothing else wants: what is left of the delay is the server's own);
#   pinned - the server measured on CPU 0 alone (`taskset -a -p`, for this variant only),
#           the whole client (timed load and storm) on CPU 1, the loops' thread at nice 19
#           there: the generator is an attacker on another machine, taking only what the
#           timed client leaves of its core, and what the storm adds on CPU 0 is the
#           server's own work (its handshakes, the new connections' hand-over and traffic).
# CMD_RATE=N paces the cmd load at N replies/s instead of half its measured maximum (on a
# loaded machine, a rate well below it keeps the quiet runs from queueing).
# Prints the median of each figure per side and variant at the end, and every round.
# Usage: A_DIR=DIR_WITH_BASE_TETHER ROUNDS=3 OUT=FILE [STORM_RATE=N] [CMD_RATE=N] [DUR=S] \
#        [VARIANTS="full rate nice"] [B_FIRST=1] bench/tls-storm-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/tls-storm-ab.jsonl}
DUR=${DUR:-4}
STORM_RATE=${STORM_RATE:-1000}
CMD_RATE=${CMD_RATE:-0}
VARIANTS=${VARIANTS:-"full rate nice"}
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
        if [[ $side == A ]]; then plain=$A_PLAIN tls=$A_TLS pid=$A_PID; else plain=$B_PLAIN tls=$B_TLS pid=$B_PID; fi
        for variant in $VARIANTS; do
            client=()
            case $variant in
                full) extra=() ;;
                rate) extra=(--storm-rate "$STORM_RATE") ;;
                nice) extra=(--storm-nice 19) ;;
                pinned)
                    extra=(--storm-nice 19)
                    client=(taskset -c 1)
                    taskset -a -p -c 0 "$pid" > /dev/null
                    ;;
            esac
            echo "== round $round side $side $variant $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
            "${client[@]}" "$BENCH" --tag "$side-$variant-r$round" --json-out "$OUT" tls --addr "$plain" \
                --tls-addr "$tls" --tls-ca "$WORK/tls-ca.pem" --skip-cmd --rounds 1 \
                --storm-cmd-rate "$CMD_RATE" --duration "$DUR" --warmup 1 "${extra[@]}" | grep -v '^{' \
                | grep -E 'handshakes/s|storm/quiet|^ *1 ' || true
            [[ $variant == pinned ]] && taskset -a -p -c "0-$(($(nproc) - 1))" "$pid" > /dev/null
        done
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def median(values):
    return statistics.median(values) if values else float("nan")
print(f"{'side':4} {'storm':6} {'quiet p99 ms':>12} {'storm p99 ms':>12} {'storm/quiet':>11} {'storm hs/s':>10} {'full hs/s':>9} {'resumed hs/s':>12}")
for side in ("A", "B"):
    for variant in ("full", "rate", "nice", "pinned"):
        tagged = [r for r in rows if r.get("tag", "").startswith(f"{side}-{variant}-")]
        storm = [r for r in tagged if r.get("scenario") == "tls-storm"]
        hs = [r for r in tagged if r.get("scenario") == "tls-handshakes"]
        if not storm:
            continue
        print(f"{side:4} {variant:6} {median([r['quiet_p99_us'] for r in storm]) / 1000:12.2f} "
              f"{median([r['storm_p99_us'] for r in storm]) / 1000:12.2f} "
              f"{median([r['p99_ratio'] for r in storm]):11.2f} "
              f"{median([r['handshakes_per_s'] for r in storm]):10.0f} "
              f"{median([r['full_per_s'] for r in hs]):9.0f} {median([r['resuming_per_s'] for r in hs]):12.0f}"
              f"   ({len(storm)} rounds)")
        by_round = sorted(storm, key=lambda r: int(r["tag"].rsplit("-r", 1)[1]))
        print("       per round, quiet -> storm p99 ms (ratio): " + ", ".join(
            f"{r['quiet_p99_us'] / 1000:.2f} -> {r['storm_p99_us'] / 1000:.2f} ({r['p99_ratio']:.2f})"
            for r in by_round))
PY
