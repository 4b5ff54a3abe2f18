#!/usr/bin/env bash
# Where a TLS handshake storm's server CPU goes, A (base, $A_DIR/tether) against B
# (target/release/tether), side by side, rounds alternating: CPU time of each tether's
# threads by name (utime + stime from /proc/PID/task/*/stat) across `tether-bench tls
# --handshakes-only` (16 loops, full handshakes then resuming ones). CPU time is not
# disturbed by a neighbour's load as latency is: it tells whether the handshakes' work
# left the event loops (`actix-rt|system`: workers, hub, accept) for `tether-tls`.
# Usage: A_DIR=DIR ROUNDS=3 bench/tls-cpu-split.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BENCH=$PWD/target/release/tether-bench
WORK=$(mktemp -d)
BIN=$PWD/target/release
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
"$BENCH" make-users 10 --cost 4 > "$WORK/users.toml"
start_base_and_branch
ticks() { # PID: "NAME TICKS" per thread
    python3 - "$1" <<'PY'
import glob, sys
for stat in glob.glob(f"/proc/{sys.argv[1]}/task/*/stat"):
    text = open(stat).read()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    print(name, int(fields[11]) + int(fields[12]))
PY
}
for round in $(seq 1 "$ROUNDS"); do
    sides=(A B)
    (( round % 2 == 0 )) && sides=(B A)
    for side in "${sides[@]}"; do
        if [[ $side == A ]]; then plain=$A_PLAIN tls=$A_TLS pid=$A_PID; else plain=$B_PLAIN tls=$B_TLS pid=$B_PID; fi
        ticks "$pid" > "$WORK/before"
        "$BENCH" --json-out "$WORK/hs.jsonl" tls --addr "$plain" --tls-addr "$tls" \
            --tls-ca "$WORK/tls-ca.pem" --handshakes-only --duration 4 --warmup 0 > /dev/null
        ticks "$pid" > "$WORK/after"
        python3 - "$WORK/before" "$WORK/after" "$WORK/hs.jsonl" "$side" "$round" <<'PY'
import collections, json, os, sys
hz = os.sysconf("SC_CLK_TCK")
def read(path):
    by = collections.Counter()
    for line in open(path):
        name, ticks = line.rsplit(" ", 1)
        by[name] += int(ticks)
    return by
before, after = read(sys.argv[1]), read(sys.argv[2])
used = {name: (after[name] - before.get(name, 0)) / hz for name in after}
hs = json.loads(open(sys.argv[3]).read().splitlines()[-1])
loops = sum(s for name, s in used.items() if name.startswith("actix-rt"))
tls = used.get("tether-tls", 0.0)
total = sum(used.values())
print(f"side {sys.argv[4]} round {sys.argv[5]}: server CPU {total:.2f} s, event loops "
      f"{loops:.2f} s ({100 * loops / max(total, 1e-9):.0f} %), tether-tls {tls:.2f} s "
      f"({100 * tls / max(total, 1e-9):.0f} %); handshakes/s full {hs['full_per_s']:.0f}, "
      f"resuming {hs['resuming_per_s']:.0f}")
PY
    done
done
