#!/usr/bin/env python3
"""The cluster table of BENCHMARKS.md (issue 13) from the JSON lines bench/cluster.sh
appends (targets cluster-1node, cluster-3nodes, cluster-redis; scenario cluster-commands).
Ratios are medians of the per-repeat ratios (records of one repeat share a tag).

    python3 bench/cluster_table.py bench/results/run.jsonl
"""
import json
import sys
from collections import defaultdict
from statistics import median


def load(path):
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.startswith("{")]


def per_tag(records, pick, value):
    """{tag: value} of the records `pick` accepts (the last one per tag)."""
    out = {}
    for record in records:
        if pick(record):
            out[record.get("tag")] = value(record)
    return out


def med(values):
    values = [v for v in values if v is not None]
    return median(values) if values else None


def ratio(a, b):
    """Median over the repeats of a[tag] / b[tag]."""
    return med([a[t] / b[t] for t in a if t in b and b[t]])


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fanout(target, connections, users, phase, publishers=None):
    return lambda r: (r.get("scenario") == "fanout" and r.get("target") == target
                      and r.get("connections") == connections and r.get("users") == users
                      and r.get("phase") == phase
                      and (publishers is None or r.get("publishers") == publishers))


def main(path):
    records = load(path)
    cluster = [r for r in records if r.get("target", "").startswith("cluster-")]
    compared = [r for r in cluster if r.get("target") in ("cluster-1node", "cluster-3nodes")]
    if not cluster:
        sys.exit(f"no cluster records in {path}")
    rows = []
    latency = sorted({(r["connections"], r.get("rate")) for r in compared
                      if r.get("scenario") == "fanout" and r.get("users") == r.get("connections")
                      and r.get("phase") == "paced"})
    for conns, rate in latency:
        one = fanout("cluster-1node", conns, conns, "paced")
        three = fanout("cluster-3nodes", conns, conns, "paced")
        for q in ("p50_us", "p99_us"):
            a = per_tag(records, three, lambda r: r[q])
            b = per_tag(records, one, lambda r: r[q])
            target = "≤ 2.0" if q == "p99_us" else ""
            rows.append((f"latency {q[:3]} ms, {conns:,} users, {fmt(rate)} events/s",
                         fmt(med(b.values()) and med(b.values()) / 1000, 2),
                         fmt(med(a.values()) and med(a.values()) / 1000, 2),
                         fmt(ratio(a, b), 2), target))
    fan = sorted({(r["connections"], r.get("publishers")) for r in compared
                  if r.get("scenario") == "fanout" and r.get("users") == 1})
    for conns, publishers in fan:
        for phase, field, label, target in (("max", "deliveries_per_s", "deliveries/s at max", "≥ 0.7"),
                                            ("half", "p99_us", "p99 ms at half", "")):
            a = per_tag(records, fanout("cluster-3nodes", conns, 1, phase, publishers),
                        lambda r: r[field])
            b = per_tag(records, fanout("cluster-1node", conns, 1, phase, publishers),
                        lambda r: r[field])
            if not a and not b:
                continue
            scale = 1000 if field == "p99_us" else 1
            rows.append((f"fan-out {conns:,} connections of 1 user, {publishers} publishers, {label}",
                         fmt(med(b.values()) and med(b.values()) / scale, 1 if scale > 1 else 0),
                         fmt(med(a.values()) and med(a.values()) / scale, 1 if scale > 1 else 0),
                         fmt(ratio(a, b), 2), target))
    lost = sum(r.get("lost", 0) for r in cluster if r.get("scenario") == "fanout")
    rows.append(("deliveries lost (every run of the cluster scenario)", "", fmt(lost), "", "0"))
    repeats = len({r.get("tag") for r in cluster})
    print(f"### Cluster (issue 13): 3 nodes and a Redis against one node (median of {repeats} repeat(s))\n")
    print("| figure | 1 node | 3 nodes | 3 nodes / 1 node | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("| the broker | value |")
    print("|---|---|")
    for subscribers, publishers in sorted({(r["connections"], r.get("publishers")) for r in cluster
                                           if r.get("scenario") == "fanout"
                                           and r.get("target") == "cluster-redis"}):
        pick = fanout("cluster-redis", subscribers, 1, "max", publishers)
        events = med(per_tag(records, pick, lambda r: r["events_per_s"]).values())
        deliveries = med(per_tag(records, pick, lambda r: r["deliveries_per_s"]).values())
        print(f"| Redis pub/sub alone, {subscribers:,} subscriber(s) of 1 channel, "
              f"{publishers} publishers, at max: events/s, deliveries/s | "
              f"{fmt(events)}, {fmt(deliveries)} |")
    commands = defaultdict(list)
    for r in records:
        if r.get("scenario") == "cluster-commands":
            commands[r["case"]].append(r)
    for case, runs in sorted(commands.items()):
        def per_event(name):
            return med([r["by_command"].get(name, 0) / r["events"] for r in runs if r["events"]])
        others = ", ".join(f"{name} {per_event(name):.3f}"
                           for name in sorted({n for r in runs for n in r["by_command"]} - {"evalsha"}))
        print(f"| Redis commands sent per event published, {case} (target 1): EVALSHA per event; "
              f"all commands per event, set-up and heartbeats included ({others}) | "
              f"{fmt(per_event('evalsha'), 3)}; {fmt(med([r['commands_per_event'] for r in runs]), 3)} |")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/run.jsonl")
