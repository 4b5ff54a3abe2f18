#!/usr/bin/env python3
"""The table of bench/cluster-cpu.sh's runs: per setup (target `<setup>-<build>-p<N>`),
the client's deliveries/s and its ratio to the single node of the same build and
publishers (medians over the rounds; each round's ratio in brackets), and from the
`thread-cpu` lines the CPU per delivery of the nodes, the client and Redis, the nodes'
system calls per delivery, and the share of a core the busiest threads took.

    python3 bench/cluster_cpu_table.py OUT.jsonl
"""
import json
import sys
from collections import defaultdict
from statistics import median


def main(path):
    deliveries = defaultdict(dict)
    cpu = defaultdict(dict)
    with open(path) as lines:
        for line in lines:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("scenario") == "fanout":
                deliveries[record["target"]][record.get("tag")] = record["deliveries_per_s"]
            elif record.get("scenario") == "thread-cpu":
                target, tag = record["label"].rsplit(" ", 1)
                cpu[target][tag] = record
    print("| setup | deliveries/s | / 1 node | ns CPU per delivery: nodes, client, Redis "
          "| nodes' syscalls per delivery | busiest threads, % of a core |")
    print("|---|---|---|---|---|---|")
    for target in sorted(deliveries, key=lambda t: (t.split("-")[1], int(t.split("-p")[1]),
                                                    t.split("-")[0])):
        runs = deliveries[target]
        single = deliveries.get("1node-" + target.split("-", 1)[1], {})
        ratios = [runs[tag] / single[tag] for tag in sorted(runs) if single.get(tag)]
        ratio = (f"{median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})"
                 if ratios and not target.startswith("1node") else "")

        def per_delivery(pick):
            values = [sum(used for process, used in r["processes"].items() if pick(process))
                      / r["deliveries"] * 1e9 for r in cpu[target].values() if r["deliveries"]]
            return f"{median(values):,.0f}" if values else "-"

        def is_node(process):
            return process not in ("client", "redis")
        syscalls = [sum(counts.get("raw_syscalls:sys_enter", 0)
                        for process, counts in r.get("perf", {}).items() if is_node(process))
                    / r["deliveries"] for r in cpu[target].values() if r["deliveries"]]
        threads = defaultdict(list)
        for r in cpu[target].values():
            for name, used in r["threads"].items():
                threads[name].append(used / r["seconds"] * 100)
        busiest = sorted(((median(v), name) for name, v in threads.items()), reverse=True)[:6]
        print(f"| {target} | {median(runs.values()):,.0f} | {ratio} | "
              f"{per_delivery(is_node)}, {per_delivery(lambda p: p == 'client')}, "
              f"{per_delivery(lambda p: p == 'redis')} | "
              f"{median(syscalls):.3f} | " if syscalls else "- | ", end="")
        print(", ".join(f"{name} {share:.0f}" for share, name in busiest) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
