#!/usr/bin/env python3
"""Turns the JSON lines of bench/loadgen into the one table of bench/run.sh.

ratio = coffer / openbao for every metric: above 1 is better for rates, below 1 is better for
times and memory. The target column repeats issue 5's targets; it is information, never a
failure (timings on a shared 2-core machine are not something to assert on).
"""
import argparse
import json
import statistics
import sys

SKIPPED = "skipped"


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def fmt(v, unit):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit == "int":
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(c, b):
    if not isinstance(c, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return "-"
    r = c / b
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def check(target, c, b):
    """target: (kind, bound) where kind is ratio>=, ratio<= or abs<=."""
    if target is None:
        return ""
    kind, bound = target
    label = {"ratio>=": f"ratio >= {bound}", "ratio<=": f"ratio <= {bound:.2f}",
             "abs<=": f"coffer <= {bound}"}[kind]
    if not isinstance(c, (int, float)) or (kind != "abs<=" and not isinstance(b, (int, float))):
        return label
    if kind == "ratio>=":
        met = b > 0 and c / b >= bound
    elif kind == "ratio<=":
        met = b > 0 and c / b <= bound
    else:
        met = c <= bound
    return f"{label}: {'met' if met else 'MISSED'}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--apps", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--store", default="sqlite", choices=("sqlite", "postgres"))
    a = ap.parse_args()
    rows = load(a.results)

    bulk = {r["system"]: r for r in rows if r.get("kind") == "bulk_load"}
    # Several rounds of a (workload, connections, system) cell: the median of each figure.
    grouped = {}
    for r in rows:
        if r.get("kind") == "workload":
            grouped.setdefault((r["workload"], r["conns"], r["system"]), []).append(r)
    runs = {k: median_row(v) for k, v in grouped.items()}
    conns_list = sorted({k[1] for k in runs})

    table = []  # (workload, conns, metric, coffer, openbao, ratio, target)

    def add(workload, conns, metric, c, b, unit="", target=None, show_ratio=True):
        table.append((workload, str(conns), metric, fmt(c, unit), fmt(b, unit),
                      ratio(c, b) if show_ratio else "-", check(target, c, b)))

    c, b = bulk.get("coffer", {}), bulk.get("openbao", {})
    pc = c.get("conns", b.get("conns", "-"))
    add("bulk load", pc, "wall time (s)", c.get("seconds"), b.get("seconds"),
        target=("ratio<=", 1 / 3))
    add("bulk load", pc, "secrets/s", ratio_rate(c), ratio_rate(b), unit="int")
    mib = lambda r: r.get("rss_kib") / 1024 if r.get("rss_kib") else None
    add("bulk load", pc, "server RSS after (MiB)", mib(c), mib(b), target=("ratio<=", 1 / 3))
    add("bulk load", pc, "server CPU (s)", c.get("server_cpu_s"), b.get("server_cpu_s"))
    if a.store == "postgres":
        add("bulk load", pc, "server + PostgreSQL CPU (s)", with_store_cpu(c), b.get("server_cpu_s"))

    for workload, title in (("list", "list"), ("write", "write"), ("boot-decrypt", "boot decrypt")):
        for conns in conns_list:
            c = runs.get((workload, conns, "coffer"), {})
            b = runs.get((workload, conns, "openbao"), {})
            if not c and not b:
                continue
            cv = lambda k: SKIPPED if "skipped" in c else c.get(k)
            bv = lambda k: b.get(k)
            add(title, conns, "requests/s", cv("rps"), bv("rps"), unit="int",
                target={"write": ("ratio>=", 5), "boot-decrypt": ("ratio>=", 3)}.get(workload))
            if workload == "boot-decrypt":
                add(title, conns, "secrets/s", cv("items_per_s"), bv("items_per_s"), unit="int")
            add(title, conns, "p50 (ms)", cv("p50_ms"), bv("p50_ms"))
            add(title, conns, "p99 (ms)", cv("p99_ms"), bv("p99_ms"),
                target=("abs<=", 2) if workload == "list" else None)
            add(title, conns, "server CPU / request (us)", cv("server_cpu_us_per_req"),
                bv("server_cpu_us_per_req"))
            if a.store == "postgres" and "skipped" not in c:
                total = with_store_cpu(c)
                per_req = total / c["requests"] * 1e6 if total and c.get("requests") else None
                add(title, conns, "server + PostgreSQL CPU / request (us)", per_req,
                    bv("server_cpu_us_per_req"))
    # Machine boot latency, coffer only (bench/bootlat: `machines start` to the workload's
    # first instruction, against a plain spawn of the same process).
    boots = [r for r in rows if r.get("kind") in ("machine-start", "plain-spawn")]
    for kind, secrets, metric in (("machine-start", 10, "start -> first instruction, 10 secrets"),
                                  ("machine-start", 100, "start -> first instruction, 100 secrets"),
                                  ("plain-spawn", None, "plain spawn of the same process")):
        found = [r for r in boots if r["kind"] == kind and secrets in (None, r.get("secrets"))]
        for q in ("p50", "p99"):
            v = statistics.median(r[f"{q}_ms"] for r in found) if found else None
            table.append(("machine boot", "-", f"{metric}, {q} (ms)", fmt(v, None),
                          "n/a (coffer only)", "-", ""))

    head = ("workload", "connections", "metric", "coffer", "openbao", "ratio", "target")
    widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"
    rounds = f", median of {a.rounds} rounds" if a.rounds > 1 else ""
    store = "" if a.store == "sqlite" else ", coffer on PostgreSQL"
    print(f"coffer vs OpenBao ({a.mode} run, {a.apps:,} apps x 10 secrets preloaded{rounds}"
          f"{store}; ratio = coffer / openbao)")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print(line(r))

    notes = []
    others = []
    for r in rows:
        if r.get("errors"):
            notes.append(f"{r['system']} {r.get('workload', 'bulk load')} "
                         f"({r.get('conns')} conns): {r['errors']} errors: "
                         f"{json.dumps(r.get('error_kinds'))[:400]}")
        other, secs = r.get("other_cpu_s"), r.get("seconds")
        if other is not None and secs:
            others.append(other / secs)
        cpu = r.get("client_cpu_s")
        if r.get("kind") == "workload" and cpu and secs and cpu / secs > 0.85:
            notes.append(f"loadgen used {cpu / secs:.0%} of a core during {r['system']} "
                         f"{r['workload']} ({r['conns']} conns): the client may be limiting")
    if others and max(others) > 0.1:
        prio = (f"; they ran at lower priority than the benchmark (nice {a.nice}), so mostly in "
                "its idle time" if a.nice < 0 else "")
        notes.append(f"other processes on the machine used {min(others):.2f} to "
                     f"{max(others):.2f} cores (median {statistics.median(others):.2f}) during "
                     f"the measured windows{prio}")
    if a.store == "postgres":
        notes.append("coffer's store is a PostgreSQL server: 'server' figures are cofferd's "
                     "alone; PostgreSQL's CPU is the machine's busy CPU outside the measured server "
                     "and the load generator (so it includes the idle other system and any other "
                     "process), and its memory is not in the RSS row")
    for n in notes:
        print("note: " + n)
    return 0


def with_store_cpu(r):
    """cofferd's CPU plus the rest of the machine's (PostgreSQL's, when it is coffer's store)."""
    server, other = r.get("server_cpu_s"), r.get("other_cpu_s")
    if not isinstance(server, (int, float)) or not isinstance(other, (int, float)):
        return None
    return server + other


def median_row(runs):
    if len(runs) == 1 or any("skipped" in r for r in runs):
        return runs[0]
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            out[k] = statistics.median(vals)
    return out


def ratio_rate(r):
    if r.get("seconds") and r.get("secrets"):
        return r["secrets"] / r["seconds"]
    return None


if __name__ == "__main__":
    sys.exit(main())
