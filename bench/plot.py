#!/usr/bin/env python3
"""Turns tether-bench JSON lines into the BENCHMARKS.md tables (medians over repeats,
printed as Markdown) and one figure, bench/benchmarks.png.

    python3 -m venv /tmp/plot && /tmp/plot/bin/pip install matplotlib
    /tmp/plot/bin/python bench/plot.py bench/results/run-2.jsonl [--png bench/benchmarks.png] \
        [--before bench/results/run.jsonl]

Every line of the input that starts with '{' is a result; lines from several runs and
repeats may be mixed: figures are grouped by scenario, target and shape, and the median of
the repeats is shown. Target `tether-w1` is a second tether run with `server.workers = 1`
(cmd only). With --before, a table of the headline figures before → after is printed too.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

TARGETS = ["tether", "serve-raw", "redis"]
CMD_TARGETS = ["tether", "tether-w1", "serve-raw", "redis"]
COLORS = {"tether": "#1f77b4", "tether-w1": "#17becf", "serve-raw": "#7f7f7f", "redis": "#d62728"}


def load(paths):
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for line in file:
                line = line.strip()
                if line.startswith("{"):
                    records.append(json.loads(line))
    return records


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def group(records, scenario, key, filt=lambda r: True):
    """Medians of every numeric field, per key(record)."""
    buckets = defaultdict(list)
    for record in records:
        if record.get("scenario") == scenario and filt(record):
            buckets[key(record)].append(record)
    result = {}
    for k, rows in buckets.items():
        fields = {f for row in rows for f, v in row.items() if isinstance(v, (int, float))}
        result[k] = {f: median([row.get(f) for row in rows]) for f in fields}
        result[k]["repeats"] = len(rows)
    return result


def single(record):
    """A fanout record of one event per request (records before `--batch` have none)."""
    return (record.get("batch") or 1) == 1


def fmt(value, digits=0):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def cmd_tables(records, quiet=False):
    cmd = group(records, "cmd", lambda r: (r["connections"], r["depth"], r["client_threads"], r["target"]),
                lambda r: r.get("rate") is None)
    if quiet:
        return cmd
    shapes = sorted({(c, d) for c, d, _, _ in cmd})
    threads = sorted({t for _, _, t, _ in cmd})
    present = [t for t in CMD_TARGETS if any(k[3] == t for k in cmd)]
    tethers = [t for t in present if t.startswith("tether")]
    print("### cmd — replies/s (median), p99 µs in brackets\n")
    print("| C×D | client threads | " + " | ".join(present) + " | "
          + " | ".join(f"{t} / redis | {t} / serve-raw" for t in tethers) + " |")
    print("|---|---|" + "---|" * (len(present) + 2 * len(tethers)))
    for c, d in shapes:
        for t in threads:
            cells = []
            for target in present:
                row = cmd.get((c, d, t, target))
                cells.append(f"{fmt(row['replies_per_s'])} ({fmt(row['p99_us'])})" if row else "–")
            redis = cmd.get((c, d, t, "redis"), {}).get("replies_per_s")
            raw = cmd.get((c, d, t, "serve-raw"), {}).get("replies_per_s")
            for target in tethers:
                value = cmd.get((c, d, t, target), {}).get("replies_per_s")
                cells += [fmt(ratio(value, redis), 2), fmt(ratio(value, raw), 2)]
            print(f"| {c}×{d} | {t} | " + " | ".join(cells) + " |")
    print()
    return cmd


def hold_tables(records):
    summary = group(records, "hold", lambda r: r["target"], lambda r: r.get("phase") == "summary")
    curve = group(records, "hold", lambda r: (r["target"], r["connections"]), lambda r: r.get("phase") == "open")
    print("### hold — server memory per idle logged-in connection (median)\n")
    print("| target | connections | base RSS MiB | RSS B/conn at N | slope 5k→N B/conn | slope 10k→N B/conn | after 15 s idle B/conn | kernel socket mem B/conn | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for target in TARGETS:
        row = summary.get(target)
        if row:
            print(f"| {target} | {fmt(row['connections'])} | {fmt(row['base_rss_kib'] / 1024, 1)} | "
                  f"{fmt(row['bytes_per_conn'])} | {fmt(row['slope_bytes_per_conn'])} | "
                  f"{fmt(last_segment_slope(records, target))} | "
                  f"{fmt(row['settled_bytes_per_conn'])} | {fmt(row['sock_mem_bytes_per_conn'])} | {fmt(row['lost'])} |")
    print()
    return summary, curve


def fanout_tables(records):
    fan = group(records, "fanout", lambda r: (r["connections"], r["users"], r["target"], r.get("phase")), single)
    print("### fanout — deliveries/s at the maximum; latency p99 at the maximum and at half of it (median)\n")
    print("| case | target | events/s max | deliveries/s max | p99 ms at max | events/s at half | p50 ms at half | p99 ms at half | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (conns, users) in sorted({(c, u) for c, u, _, _ in fan}):
        case = f"{conns} conns, 1 user" if users == 1 else f"{conns} conns, {users} users"
        for target in TARGETS:
            mx = fan.get((conns, users, target, "max"))
            half = fan.get((conns, users, target, "half"))
            if not mx:
                continue
            lost = (mx.get("lost") or 0) + ((half or {}).get("lost") or 0)
            print(f"| {case} | {target} | {fmt(mx['events_per_s'])} | {fmt(mx['deliveries_per_s'])} | "
                  f"{fmt(mx['p99_us'] / 1000, 1)} | {fmt((half or {}).get('events_per_s'))} | "
                  f"{fmt((half or {}).get('p50_us', 0) / 1000, 1)} | {fmt((half or {}).get('p99_us', 0) / 1000, 1)} | {fmt(lost)} |")
    print()
    server = [(k, v) for k, v in fan.items() if v.get("server_p99_us") is not None]
    if server:
        print("### fanout — tether's own delivery latency, `tether_event_delivery_seconds` (median)\n")
        print("| case | phase | server p50 ms | server p99 ms | client p50 ms | client p99 ms | server CPU ns/delivery |")
        print("|---|---|---|---|---|---|---|")
        for (conns, users, target, phase), row in sorted(server, key=lambda kv: (kv[0][0], kv[0][1], kv[0][3] or "")):
            print(f"| {conns} conns, {users} user(s) | {phase} | {fmt(row['server_p50_us'] / 1000, 2)} | "
                  f"{fmt(row['server_p99_us'] / 1000, 2)} | {fmt(row['p50_us'] / 1000, 1)} | {fmt(row['p99_us'] / 1000, 1)} | "
                  f"{fmt(row.get('server_cpu_ns_per_delivery'))} |")
        print()
    batch = group(records, "fanout", lambda r: (r["connections"], r["batch"], r["target"], r.get("phase")),
                  lambda r: not single(r))
    if batch:
        print("### batch — fan-out with N events per request (tether: batch route; Redis: PUBLISH pipelined; median)\n")
        print("| case | target | events/s max | deliveries/s max | p99 ms at max | p50 ms at half | p99 ms at half | lost |")
        print("|---|---|---|---|---|---|---|---|")
        for (conns, size) in sorted({(c, b) for c, b, _, _ in batch}):
            for target in TARGETS:
                mx = batch.get((conns, size, target, "max"))
                half = batch.get((conns, size, target, "half")) or {}
                if not mx:
                    continue
                lost = (mx.get("lost") or 0) + (half.get("lost") or 0)
                print(f"| {conns} users, {size} per request | {target} | {fmt(mx['events_per_s'])} | "
                      f"{fmt(mx['deliveries_per_s'])} | {fmt(mx['p99_us'] / 1000, 1)} | "
                      f"{fmt(half.get('p50_us', 0) / 1000, 1)} | {fmt(half.get('p99_us', 0) / 1000, 1)} | {fmt(lost)} |")
        print()
    return fan


def storm_tables(records):
    storm = group(records, "login-storm", lambda r: r["target"])
    row = storm.get("tether")
    print("### login-storm — prolongate at half its maximum, alone and under a bcrypt-10 login storm (median)\n")
    if row:
        print("| cmd max/s | paced at/s | storm logins/s | login p99 ms | p50 µs alone | p99 µs alone | p50 µs storm | p99 µs storm | p99 ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {fmt(row['max_rate'])} | {fmt(row['cmd_rate'])} | {fmt(row['logins_per_s'], 1)} | "
              f"{fmt(row['login_p99_us'] / 1000, 1)} | {fmt(row['baseline_p50_us'])} | {fmt(row['baseline_p99_us'])} | "
              f"{fmt(row['storm_p50_us'])} | {fmt(row['storm_p99_us'])} | {fmt(row['p99_ratio'], 2)} |")
    print()
    return storm


def churn_tables(records):
    churn = group(records, "churn", lambda r: r["target"])
    print("### churn — connect, log in, drop (median)\n")
    print("| target | connections/s | cycle p99 ms | RSS before MiB | right after | after 5 s | failed |")
    print("|---|---|---|---|---|---|---|")
    for target in TARGETS:
        row = churn.get(target)
        if row:
            print(f"| {target} | {fmt(row['connections_per_s'])} | {fmt(row['cycle_p99_us'] / 1000, 1)} | "
                  f"{fmt(row['rss_before_kib'] / 1024, 1)} | {fmt(row['rss_after_kib'] / 1024, 1)} | "
                  f"{fmt(row['rss_settled_kib'] / 1024, 1)} | {fmt(row['lost'])} |")
    print()
    return churn


def per_tag(records, scenario, pick, value):
    """{tag: best value} over the records of one scenario that `pick` accepts."""
    out = {}
    for record in records:
        if record.get("scenario") == scenario and pick(record):
            tag = record.get("tag", "")
            v = value(record)
            if v is not None:
                out[tag] = max(out.get(tag, v), v)
    return out


def paired(records, scenario, pick_a, pick_b, value):
    """Medians of a, of b, and of the ratio a/b taken within each repeat (same servers,
    same minutes: the noise of this machine cancels best there)."""
    a = per_tag(records, scenario, pick_a, value)
    b = per_tag(records, scenario, pick_b, value)
    tags = sorted(set(a) & set(b))
    ratios = [a[t] / b[t] for t in tags if b[t]]
    return median([a[t] for t in tags]), median([b[t] for t in tags]), median(ratios), len(tags)


def last_segment_slope(records, target):
    """Median over repeats of the hold curve's last segment (10k → N), in bytes per
    connection."""
    rows = [r for r in records
            if r.get("scenario") == "hold" and r.get("target") == target and r.get("phase") == "open"]
    if not rows:
        return None
    n = max(r["connections"] for r in rows)
    return median([r.get("slope_bytes_per_conn") for r in rows if r["connections"] == n])


def tether_bytes_per_conn(row, key, tail_slope):
    """tether's memory per connection: RSS over the start-up base, or the slope of the
    curve's last segment (10k → N) if that is larger. tether frees nothing when idle, so
    the slope is its cost per connection. RSS over base understates it when the base holds
    memory freed at start-up that the allocator purges lazily (mimalloc: RSS falls from 0
    to 5k connections), which distorts the first segments too; with glibc all three agree
    within 1 %."""
    return max(row[key], tail_slope or 0)


def targets_table(records, hold, fan, storm):
    print("### Against the issue's targets (ratios: median of the per-repeat ratios)\n")
    print("| figure | tether | anchor | ratio | target | met | repeats |")
    print("|---|---|---|---|---|---|---|")

    def cmd_pick(target):
        return lambda r: r["target"] == target and (r["connections"], r["depth"]) == (50, 16) and r.get("rate") is None

    def fan_pick(target, conns, phase):
        return lambda r: r["target"] == target and r["connections"] == conns and r.get("phase") == phase and single(r)

    def batch_pick(target):
        return lambda r: r["target"] == target and r.get("phase") == "max" and not single(r)

    rows = []
    for tether, label in (("tether", "tether"), ("tether-w1", "tether `workers = 1`")):
        if not any(r.get("scenario") == "cmd" and r.get("target") == tether for r in records):
            continue
        a, b, q, n = paired(records, "cmd", cmd_pick(tether), cmd_pick("redis"), lambda r: r["replies_per_s"])
        rows.append((f"cmd 50×16 replies/s, {label} vs Redis PING/s (best client config each)", a, b, q, "≥ 1.0",
                     q is not None and q >= 1.0, n))
        a, b, q, n = paired(records, "cmd", cmd_pick(tether), cmd_pick("serve-raw"), lambda r: r["replies_per_s"])
        rows.append((f"cmd 50×16 replies/s, {label} vs serve-raw (best client config each)", a, b, q, "≥ 0.8",
                     q is not None and q >= 0.8, n))
    th, rh = hold[0].get("tether"), hold[0].get("redis")
    tail = last_segment_slope(records, "tether")
    if th:
        b = tether_bytes_per_conn(th, "bytes_per_conn", tail)
        rows.append(("hold B/conn at 19k (larger of: over base, slope 10k→N) vs 4 KiB", b, 4096, b / 4096, "≤ 1.0", b <= 4096, th["repeats"]))
    if th and rh:
        b = tether_bytes_per_conn(th, "settled_bytes_per_conn", tail)
        q = ratio(b, rh["settled_bytes_per_conn"])
        rows.append(("hold settled B/conn (larger of: over base, slope 10k→N) vs Redis settled (aim)", b, rh["settled_bytes_per_conn"], q, "< 1.0 (aim)", q is not None and q < 1.0, th["repeats"]))
    a, b, q, n = paired(records, "fanout", fan_pick("tether", 1000, "max"), fan_pick("redis", 1000, "max"), lambda r: r["deliveries_per_s"])
    rows.append(("fanout 1,000 conns deliveries/s vs Redis pub/sub", a, b, q, "≥ 1.0", q is not None and q >= 1.0, n))
    a, b, q, n = paired(records, "fanout", fan_pick("tether", 10000, "max"), fan_pick("redis", 10000, "max"), lambda r: r["deliveries_per_s"])
    rows.append(("fanout 10,000 users deliveries/s vs Redis (10,000 channels)", a, b, q, "reported", True, n))
    a, b, q, n = paired(records, "fanout", batch_pick("tether"), batch_pick("redis"), lambda r: r["deliveries_per_s"])
    if n:
        rows.append(("fanout 10,000 users in batches vs Redis PUBLISH pipelined", a, b, q, "≥ 1.0", q is not None and q >= 1.0, n))
    row = fan.get((1000, 1, "tether", "half"))
    if row and row.get("server_p99_us") is not None:
        rows.append(("server-side delivery p99 ms at half max (1,000 conns), vs 5 ms", row["server_p99_us"] / 1000, 5,
                     row["server_p99_us"] / 5000, "< 1.0", row["server_p99_us"] < 5000, row["repeats"]))
    for conns, label in ((1000, "1,000 conns"), (10000, "10,000 users")):
        row = fan.get((conns, 1 if conns == 1000 else conns, "tether", "half"))
        anchor = fan.get((conns, 1 if conns == 1000 else conns, "redis", "half"))
        if row:
            rows.append((f"event p99 ms at half max fan-out rate ({label}; anchor: Redis)", row["p99_us"] / 1000,
                         (anchor or {}).get("p99_us", 0) / 1000, row["p99_us"] / 5000, "< 1.0 (vs 5 ms)", row["p99_us"] < 5000, row["repeats"]))
    st = storm.get("tether")
    if st:
        rows.append(("login-storm prolongate p99 µs, storm vs alone", st["storm_p99_us"], st["baseline_p99_us"], st["p99_ratio"], "≤ 2.0", st["p99_ratio"] <= 2.0, st["repeats"]))
    for name, a, b, q, target, met, n in rows:
        print(f"| {name} | {fmt(a, 1 if a is not None and a < 100 else 0)} | {fmt(b, 1 if b is not None and b < 100 else 0)} | "
              f"{fmt(q, 2)} | {target} | {'yes' if met else '**no**'} | {n} |")
    print()


def headline(records):
    """{figure: median over repeats} of the figures the before → after table compares."""
    out = {}
    cmd = cmd_tables(records, quiet=True)
    for (c, d) in ((50, 1), (50, 16), (1000, 1)):
        for target in CMD_TARGETS:
            values = [v["replies_per_s"] for (cc, dd, _, t), v in cmd.items() if (cc, dd, t) == (c, d, target)]
            if values:
                out[f"cmd {c}×{d} replies/s, {target} (best client threads)"] = max(values)
        row = cmd.get((c, d, 1, "tether"))
        if row:
            out[f"cmd {c}×{d} p99 µs, tether (1 client thread)"] = row["p99_us"]

    def pick(scenario, target, **fields):
        return lambda r: r.get("target") == target and r.get("rate") is None and all(
            r.get(k) == v for k, v in fields.items())

    for tether in ("tether", "tether-w1"):
        for anchor in ("serve-raw", "redis"):
            q = paired(records, "cmd", pick("cmd", tether, connections=50, depth=16),
                       pick("cmd", anchor, connections=50, depth=16), lambda r: r["replies_per_s"])[2]
            if q is not None:
                out[f"cmd 50×16 {tether} / {anchor} (per-repeat ratio)"] = q
    q = paired(records, "fanout", pick("fanout", "tether", connections=1000, phase="max"),
               pick("fanout", "redis", connections=1000, phase="max"), lambda r: r["deliveries_per_s"])[2]
    if q is not None:
        out["fanout 1,000 tether / redis (per-repeat ratio)"] = q
    hold = group(records, "hold", lambda r: r["target"], lambda r: r.get("phase") == "summary").get("tether")
    if hold:
        out["hold B/conn at 19k, tether (larger of: over base, slope 10k→N)"] = tether_bytes_per_conn(
            hold, "bytes_per_conn", last_segment_slope(records, "tether"))
    fan = group(records, "fanout", lambda r: (r["connections"], r["target"], r.get("phase")), single)
    for conns in (1000, 10000):
        for target in ("tether", "redis"):
            row = fan.get((conns, target, "max"))
            if row:
                out[f"fanout {conns:,} deliveries/s max, {target}"] = row["deliveries_per_s"]
            row = fan.get((conns, target, "half"))
            if row:
                out[f"fanout {conns:,} p99 ms at half, {target}"] = row["p99_us"] / 1000
    storm = group(records, "login-storm", lambda r: r["target"]).get("tether")
    if storm:
        out["login-storm p99 ratio (storm / alone)"] = storm["p99_ratio"]
        out["login-storm logins/s"] = storm["logins_per_s"]
    churn = group(records, "churn", lambda r: r["target"]).get("tether")
    if churn:
        out["churn connections/s, tether"] = churn["connections_per_s"]
    return out


def before_after(before, after):
    print("### Before → after (medians of repeats; the runs are minutes apart, so anchors move too)\n")
    print("| figure | before | after | change |")
    print("|---|---|---|---|")
    b, a = headline(before), headline(after)
    for name in a:
        old, new = b.get(name), a[name]
        digits = 2 if new < 100 else 0
        change = f"{(new / old - 1) * 100:+.0f} %" if old else "–"
        print(f"| {name} | {fmt(old, digits)} | {fmt(new, digits)} | {change} |")
    print()


def plot(records, cmd, hold, fan, storm, churn, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    shapes = sorted({(c, d) for c, d, _, _ in cmd})
    threads = sorted({t for _, _, t, _ in cmd})
    series = [(target, t) for t in threads for target in CMD_TARGETS if any(k[3] == target for k in cmd)]
    width = 0.8 / max(len(series), 1)
    for panel, field, title, log in ((axes[0][0], "replies_per_s", "cmd: replies/s (closed loop)", False),
                                     (axes[0][1], "p99_us", "cmd: p99 latency, µs (log)", True)):
        for i, (target, t) in enumerate(series):
            xs = [j + (i - len(series) / 2 + 0.5) * width for j in range(len(shapes))]
            ys = [(cmd.get((c, d, t, target)) or {}).get(field) or 0 for c, d in shapes]
            panel.bar(xs, ys, width, color=COLORS[target], alpha=1.0 if t == threads[0] else 0.55,
                      hatch=None if t == threads[0] else "//", label=f"{target}, {t} client thr.")
        panel.set_xticks(range(len(shapes)))
        panel.set_xticklabels([f"C={c} D={d}" for c, d in shapes])
        panel.set_title(title)
        if log:
            panel.set_yscale("log")
        panel.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)

    ax = axes[0][2]
    for target in TARGETS:
        points = sorted((n, v["rss_kib"]) for (t, n), v in hold[1].items() if t == target)
        if points:
            ax.plot([n for n, _ in points], [kib / 1024 for _, kib in points], "o-", color=COLORS[target], label=target)
        summary = hold[0].get(target)
        if summary:
            settled_mib = summary["base_rss_kib"] / 1024 + summary["settled_bytes_per_conn"] * summary["connections"] / 2**20
            ax.plot([summary["connections"]], [settled_mib], "x", markersize=10, color=COLORS[target],
                    label=f"{target} after 15 s idle")
    ax.set_title("hold: server RSS (MiB) vs idle connections")
    ax.set_xlabel("connections")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1][0]
    cases = sorted({(c, u) for c, u, _, _ in fan})
    for i, target in enumerate(["tether", "redis"]):
        ys = [(fan.get((c, u, target, "max")) or {}).get("deliveries_per_s") or 0 for c, u in cases]
        ax.bar([j + (i - 0.5) * 0.4 for j in range(len(cases))], ys, 0.4, color=COLORS[target], label=target)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c} conns / {u} user(s)" for c, u in cases], fontsize=8)
    ax.set_title("fanout: deliveries/s at the maximum")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1][1]
    for target in ["tether", "redis"]:
        for (c, u), marker in zip(cases, ["o", "s"]):
            points = sorted(((v.get("events_per_s") or 0) * (c // u), v["p99_us"] / 1000)
                            for (cc, uu, t, _), v in fan.items() if (cc, uu, t) == (c, u, target))
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], marker + "-", color=COLORS[target],
                        label=f"{target}, {c}/{u}")
    ax.axhline(5, color="black", linestyle=":", linewidth=1, label="target p99 5 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("deliveries/s offered (half max, max)")
    ax.set_title("fanout: event p99 latency (ms) vs rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    ax = axes[1][2]
    labels, values, colors = [], [], []
    row = storm.get("tether")
    if row:
        labels += ["storm:\nalone p99", "storm:\nunder storm p99"]
        values += [row["baseline_p99_us"], row["storm_p99_us"]]
        colors += [COLORS["tether"], COLORS["tether"]]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_ylabel("prolongate p99, µs")
    ax2 = ax.twinx()
    offset = len(values)
    for i, target in enumerate(TARGETS):
        r = churn.get(target)
        if r:
            ax2.bar(offset + i, r["connections_per_s"], color=COLORS[target], alpha=0.6)
            labels.append(f"churn:\n{target}")
    ax2.set_ylabel("churn connections/s")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_title("login-storm p99 (left) · churn conns/s (right)")
    fig.suptitle("tether vs Redis vs serve-raw on this machine (medians of repeats)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    print(f"figure written to {png}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="files of JSON lines from tether-bench --json-out")
    parser.add_argument("--png", default="bench/benchmarks.png")
    parser.add_argument("--before", nargs="*", default=[], help="JSON lines of an earlier run, to compare")
    args = parser.parse_args()
    records = load(args.inputs)
    if args.before:
        before_after(load(args.before), records)
    cmd = cmd_tables(records)
    hold = hold_tables(records)
    fan = fanout_tables(records)
    storm = storm_tables(records)
    churn = churn_tables(records)
    targets_table(records, hold, fan, storm)
    plot(records, cmd, hold, fan, storm, churn, args.png)


if __name__ == "__main__":
    main()
