#!/usr/bin/env python3
"""CPU per thread of some processes over a window, from /proc/PID/task/*/stat.

    thread_cpu.py snap NAME=PID ... > before      # a snapshot (CPU ticks per thread)
    thread_cpu.py diff before after SECONDS DELIVERIES LABEL [--json OUT] [--perf DIR]

`diff` prints, per process and per thread name (threads of one name summed), the share of
a core used over the window and the CPU per delivery (ns), and the totals; with `--json`
it appends one JSON line (scenario `thread-cpu`) to OUT. With `--perf DIR`, DIR/NAME is
the `perf stat -x,` output of process NAME over the window (`raw_syscalls:sys_enter` and
`context-switches`): system calls and context switches per delivery are added.

tether's actix threads all call themselves `actix-rt|system`: they are named `arbK` here
in the order they were made. With `server.workers = W` (0 = one per CPU), arb0 … arb(W-1)
are the workers (connections and registry shards), arbW the hub (the event bus), arb(W+1)
the admin API; `tether-redis` is the cluster broker's thread, `tether` the main thread.
"""
import json
import os
import sys
import time
from collections import defaultdict

TICK = os.sysconf("SC_CLK_TCK")


def snap(specs):
    for spec in specs:
        name, pid = spec.split("=", 1)
        tasks = None
        for _ in range(5):
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
                break
            except FileNotFoundError as err:
                failure = err
                time.sleep(0.01)
        if tasks is None:
            print(f"thread_cpu.py: no threads of {name} ({pid}): {failure}", file=sys.stderr)
            continue
        arbiters = 0
        for tid in sorted(tasks, key=int):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                    line = stat.read()
            except FileNotFoundError:
                continue
            comm = line[line.index("(") + 1:line.rindex(")")]
            if comm == "actix-rt|system":
                comm = f"arb{arbiters}"
                arbiters += 1
            fields = line[line.rindex(")") + 2:].split()
            # utime and stime are fields 14 and 15 of stat: 12 and 13 after the comm.
            ticks = int(fields[11]) + int(fields[12])
            print(f"{name}\t{tid}\t{comm.replace(chr(9), ' ')}\t{ticks}")


def load(path):
    out = {}
    with open(path) as lines:
        for line in lines:
            name, tid, comm, ticks = line.rstrip("\n").split("\t")
            out[(name, tid)] = (comm, int(ticks))
    return out


def perf_counts(folder, process):
    """{event: count} of `perf stat -x,` output in folder/process, if any."""
    counts = {}
    try:
        with open(os.path.join(folder, process)) as lines:
            for line in lines:
                fields = line.strip().split(",")
                if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                    counts[fields[2]] = float(fields[0])
    except (FileNotFoundError, TypeError):
        pass
    return counts


def diff(before_path, after_path, seconds, deliveries, label, json_out, perf=None):
    before, after = load(before_path), load(after_path)
    per = defaultdict(float)
    for key, (comm, ticks) in after.items():
        used = (ticks - before.get(key, (comm, 0))[1]) / TICK
        # Workers are numbered alike in every node: sum threads of one name.
        per[(key[0], comm)] += used
    seconds, deliveries = float(seconds), float(deliveries)
    if deliveries <= 0 or seconds <= 0:
        print(f"== {label}: no deliveries counted in the window (it ended after the run?)")
        return
    total = sum(per.values())
    by_process = defaultdict(float)
    per_process_counts = {}
    for (process, _), used in per.items():
        by_process[process] += used
    print(f"== {label}: {deliveries / seconds:,.0f} deliveries/s over {seconds:.1f} s; "
          f"CPU {total / seconds:.2f} cores, {total / deliveries * 1e9:,.0f} ns per delivery")
    for process in sorted(by_process):
        used = by_process[process]
        threads = ", ".join(
            f"{comm} {u / seconds * 100:.0f}%"
            for (p, comm), u in sorted(per.items(), key=lambda kv: -kv[1])
            if p == process and u / seconds >= 0.005)
        counts = perf_counts(perf, process)
        extra = "".join(f", {counts[event] / deliveries:.3f} {short}/delivery"
                        for event, short in (("raw_syscalls:sys_enter", "syscalls"),
                                             ("context-switches", "switches"))
                        if event in counts)
        print(f"  {process:10} {used / seconds * 100:5.0f}% of a core, "
              f"{used / deliveries * 1e9:6,.0f} ns/delivery{extra}: {threads}")
        if counts:
            per_process_counts[process] = counts
    if json_out:
        with open(json_out, "a") as out:
            out.write(json.dumps({
                "scenario": "thread-cpu", "label": label, "seconds": seconds,
                "deliveries": deliveries, "cpu_s": total,
                "ns_per_delivery": total / deliveries * 1e9,
                "processes": {p: u for p, u in by_process.items()},
                "threads": {f"{p}/{c}": u for (p, c), u in per.items()},
                "perf": per_process_counts,
            }) + "\n")


def main(argv):
    if len(argv) >= 2 and argv[1] == "snap":
        snap(argv[2:])
    elif len(argv) >= 7 and argv[1] == "diff":
        json_out = argv[argv.index("--json") + 1] if "--json" in argv else None
        perf = argv[argv.index("--perf") + 1] if "--perf" in argv else None
        diff(*argv[2:7], json_out, perf)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
