#!/usr/bin/env bash
# Where a TLS handshake storm's server CPU goes, A (base, $A_DIR/tether) against B
# (target/release/tether), side by side, rounds alternating: CPU time of each tether's
# threads by name (utime + stime from /proc/PID/task/*/stat) across `tether-bench tls
# --handshakes-only` (16 loops, full handshakes then resuming ones). CPU time is not
# disturbed by a neighbour's load as latency is: it tells whether the handshakes' work
# left the threads at nice 0 — the event loops (`actix-rt|system`: workers, hub) and the
# main thread (`tether`, the System's loop, which accepted TLS connections before they were
# accepted on the handshake threads) — for `tether-tls` (nice 10); and how often the nice-0
# threads were switched to per handshake (voluntary + involuntary context switches from
# /proc/PID/task/*/status: each wake-up of an idle worker is one).
# Usage: A_DIR=DIR ROUNDS=3 [OUT=FILE] bench/tls-cpu-split.sh  (one JSON line per round to OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-/tmp/tls-cpu-split.jsonl}
BENCH=$PWD/target/release/tether-bench
WORK=$(mktemp -d)
BIN=$PWD/target/release
source bench/common.sh
trap 'stop_servers; rm -rf "$WORK"' EXIT
"$BENCH" make-users 10 --cost 4 > "$WORK/users.toml"
start_base_and_branch
ticks() { # PID: "NAME TICKS SWITCHES" per thread
    python3 - "$1" <<'PY'
import glob, os, sys
for task in glob.glob(f"/proc/{sys.argv[1]}/task/*"):
    try:
        text = open(os.path.join(task, "stat")).read()
        status = open(os.path.join(task, "status")).read()
    except FileNotFoundError:
        continue
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    switches = sum(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
    print(f"{name}\t{int(fields[11]) + int(fields[12])}\t{switches}")
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
        python3 - "$WORK/before" "$WORK/after" "$WORK/hs.jsonl" "$side" "$round" "$OUT" <<'PY'
import collections, json, os, sys
hz = os.sysconf("SC_CLK_TCK")
def read(path):
    ticks, switches = collections.Counter(), collections.Counter()
    for line in open(path):
        name, used, switched = line.rstrip("\n").split("\t")
        ticks[name] += int(used)
        switches[name] += int(switched)
    return ticks, switches
(before, sw_before), (after, sw_after) = read(sys.argv[1]), read(sys.argv[2])
used = {name: (after[name] - before.get(name, 0)) / hz for name in after}
switched = {name: sw_after[name] - sw_before.get(name, 0) for name in sw_after}
hs = json.loads(open(sys.argv[3]).read().splitlines()[-1])
nice0 = lambda name: name.startswith("actix-rt") or name == "tether"
loops = sum(s for name, s in used.items() if nice0(name))
loop_switches = sum(s for name, s in switched.items() if nice0(name))
tls = used.get("tether-tls", 0.0)
total = sum(used.values())
# Both halves ran equally long (4 s each): the handshakes done in all.
done = (hs["full_per_s"] + hs["resuming_per_s"]) * 4
print(f"side {sys.argv[4]} round {sys.argv[5]}: server CPU {total:.2f} s, nice 0 (event loops "
      f"+ main) {loops:.2f} s ({100 * loops / max(total, 1e-9):.0f} %), tether-tls {tls:.2f} s "
      f"({100 * tls / max(total, 1e-9):.0f} %); per handshake: nice-0 CPU "
      f"{1e6 * loops / max(done, 1):.0f} µs, all {1e6 * total / max(done, 1):.0f} µs, nice-0 "
      f"switches {loop_switches / max(done, 1):.2f}; handshakes/s full {hs['full_per_s']:.0f}, "
      f"resuming {hs['resuming_per_s']:.0f}")
print(json.dumps({"scenario": "tls-cpu-split", "side": sys.argv[4], "round": int(sys.argv[5]),
                  "server_cpu_s": total, "nice0_cpu_s": loops, "tls_cpu_s": tls,
                  "nice0_switches": loop_switches, "handshakes": done,
                  "threads": used, "switches": switched}), file=open(sys.argv[6], "a"))
PY
    done
done
