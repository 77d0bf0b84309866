#!/usr/bin/env python3
"""Write BENCHMARKS.md and the TPS chart from the results of bench/compare.sh.

  report.py --run RUN.json --extra EXTRA.json [--md BENCHMARKS.md] [--png bench/tps.png] [--profile bench/PROFILE.md]

RUN.json is what ../shared/bench/run.py --json writes (per workload: median_tps and every run per
target); EXTRA.json is compare.sh's memory, latency, CPU, machine and settings figures. The targets
are the ones present in RUN.json: older runs have no TCP passthrough and no CPU figures.
"""
import argparse, json, os, statistics

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["direct", "pgbouncer", "pgmoat", "passthrough"]   # the order of tables and bars
LABEL = {"direct": "PostgreSQL direct", "pgbouncer": "PgBouncer", "pgmoat": "pgmoat",
         "passthrough": "TCP passthrough (HAProxy)"}
SHORT = {"direct": "direct", "pgbouncer": "PgBouncer", "pgmoat": "pgmoat", "passthrough": "passthrough"}
COLOR = {"direct": "#8c8c8c", "pgbouncer": "#4c72b0", "pgmoat": "#dd8452", "passthrough": "#8fab8c"}
WORKLOAD = {  # what run.py runs; every one over TLS except select1-plain
    "select1": "pgbench -S, 32 clients, sslmode=require",
    "select1-mtls": "pgbench -S, 32 clients, sslmode=verify-full with a client certificate",
    "select1-plain": "pgbench -S, 32 clients, no TLS",
    "extended": "pgbench -S -M extended, 32 clients",
    "prepared": "pgbench -S -M prepared, 32 clients",
    "tpcb": "pgbench TPC-B-like, 16 clients",
    "connect": "pgbench -S -C, 8 clients: a new TLS connection and SCRAM login per transaction",
}
DEFAULTS = {"rounds": 3, "seconds": 10, "idle": 2000, "idle_max": 10000,
            "workloads": "select1,select1-mtls,extended,prepared,tpcb,connect"}


def stats(run, targets):
    """Per target: median, min, max of the successful runs, or the first error."""
    s = {}
    for t in targets:
        runs = run["runs"].get(t, [])
        ok = [r["tps"] for r in runs if r["ok"]]
        errors = [r["error"] for r in runs if not r["ok"]]
        s[t] = {"n": len(runs), "ok": ok, "error": errors[0] if errors else None,
                "failed_runs": len(errors),
                "median": statistics.median(ok) if ok and not errors else None,
                "min": min(ok) if ok else None, "max": max(ok) if ok else None}
    return s


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}"


def fmt_tps(st):
    if st["median"] is None:
        err = (st["error"] or "no runs").strip().replace("|", "\\|")
        return f"fails ({st['failed_runs']}/{st['n']} runs): {err[:70]}"
    if len(st["ok"]) == 1:
        return f"{st['median']:.0f}"
    return f"{st['median']:.0f} ({st['min']:.0f}-{st['max']:.0f})"


def command(cfg):
    args = []
    for key, flag in (("rounds", "--rounds"), ("seconds", "--seconds"), ("workloads", "--workloads"),
                      ("idle", "--idle"), ("idle_max", "--idle-max")):
        if cfg.get(key) != DEFAULTS[key]:
            args += [flag, str(cfg.get(key))]
    return " ".join(["bench/compare.sh", *args])


def floor_note(s):
    """For a target not met: what a plain TCP passthrough reaches in the same run, when that is
    itself below 0.90 x direct or 1.25 x PgBouncer (so the reader sees the floor)."""
    if "passthrough" not in s:
        return ""
    pd = ratio(s["passthrough"]["median"], s["direct"]["median"])
    pb = ratio(s["passthrough"]["median"], s["pgbouncer"]["median"])
    if pd is None or pb is None or (pd >= 0.90 and pb >= 1.25):
        return ""
    return f" (a TCP passthrough reaches {pd:.2f} x direct and {pb:.2f} x PgBouncer in this run)"


def targets_table(S, extra):
    """Rows of (target, required, measured, status) for the targets of issue 6."""
    rows = []
    cfg = extra["config"]
    for wl in ("select1", "select1-mtls", "extended", "tpcb"):
        req = "pgmoat >= 1.25 x PgBouncer and >= 0.90 x direct"
        if wl not in S:
            rows.append((wl, req, "not run", "not measured"))
            continue
        vb = ratio(S[wl]["pgmoat"]["median"], S[wl]["pgbouncer"]["median"])
        vd = ratio(S[wl]["pgmoat"]["median"], S[wl]["direct"]["median"])
        if vb is None or vd is None:
            rows.append((wl, req, "a target failed: see the table above", "not measured"))
            continue
        met = vb >= 1.25 and vd >= 0.90
        rows.append((wl, req, f"{vb:.3f} x PgBouncer, {vd:.3f} x direct",
                     "met" if met else "not met" + floor_note(S[wl])))

    req = "works through transaction pooling, and >= 1.5 x PgBouncer's extended"
    if "prepared" not in S:
        rows.append(("prepared", req, "not run", "not measured"))
    else:
        p = S["prepared"]["pgmoat"]
        works = p["median"] is not None and p["failed_runs"] == 0
        failed_tx = sum(r.get("failed", 0) for r in S["prepared"]["_runs"]["pgmoat"] if r["ok"])
        works = works and failed_tx == 0
        ext = S.get("extended", {}).get("pgbouncer", {}).get("median")
        v = ratio(p["median"], ext)
        if not works:
            rows.append(("prepared", req, f"fails: {p['error'] or f'{failed_tx} failed transactions'}", "not met"))
        elif v is None:
            rows.append(("prepared", req, f"works ({p['median']:.0f} tps); PgBouncer's extended not measured in this run",
                         "not measured"))
        else:
            rows.append(("prepared", req, f"works, {v:.3f} x PgBouncer's extended",
                         "met" if v >= 1.5 else "not met"))

    req = "pgmoat >= 1.1 x PgBouncer"
    if "connect" not in S:
        rows.append(("connect", req, "not run", "not measured"))
    else:
        v = ratio(S["connect"]["pgmoat"]["median"], S["connect"]["pgbouncer"]["median"])
        rows.append(("connect", req, "a target failed" if v is None else f"{v:.3f} x PgBouncer",
                     "not measured" if v is None else ("met" if v >= 1.1 else "not met")))

    m = extra["idle"]["pgmoat"]
    req = "<= 8 KiB per idle TLS client at 2000 clients, by heap accounting and by RSS"
    heap = m.get("heap_kib_per_idle_conn")
    status = "met" if (m["kib_per_idle_conn"] <= 8 and heap is not None and heap <= 8
                       and m["tls_in_use"] == m["connections"]) else "not met"
    if m["connections"] != 2000:
        status += f" (at {m['connections']} clients, not 2000)"
    heap_text = "not measured" if heap is None else f"{heap:.2f} KiB"
    rows.append(("memory per idle client", req,
                 f"heap {heap_text}, RSS {m['kib_per_idle_conn']:.1f} KiB "
                 f"({m['tls_in_use']}/{m['connections']} on TLS)", status))

    m = extra["idle_max"]["pgmoat"]
    req = "10 000 idle TLS clients held with a pool of 20"
    all_tls = m["tls_in_use"] == m["connections"]
    status = "met" if all_tls and m["connections"] >= 10000 and cfg["pool_size"] == 20 else "not met"
    if m["connections"] < 10000:
        status += f" (at {m['connections']} clients, not 10 000)"
    rows.append(("idle clients", req,
                 f"{m['tls_in_use']} of {m['connections']} on TLS, pool {cfg['pool_size']}, "
                 f"RSS {m['rss_after_kib'] / 1024:.0f} MiB", status))

    lat = extra["latency"]
    req = f"p99 latency added by pgmoat at {cfg['latency_clients']} clients, reported"
    add = {t: lat[t]["p99_ms"] - lat["direct"]["p99_ms"] for t in lat}
    others = f"PgBouncer {add['pgbouncer']:+.2f} ms"
    if "passthrough" in add:
        others += f", TCP passthrough {add['passthrough']:+.2f} ms"
    rows.append(("p99 added latency", req, f"pgmoat {add['pgmoat']:+.2f} ms ({others})", "reported"))
    return rows


CPU_WORKLOADS = ("select1", "select1-mtls", "extended", "prepared", "tpcb")


def issue16_rows(extra):
    """Rows of (target, required, measured, status) for the targets of issue 16, from the
    latency / CPU runs (bench/latency.py) and the memory step."""
    perf = extra.get("perf")
    if not perf:
        return [("all", "the latency / CPU step", "not run", "not measured")]
    W, rows = perf["workloads"], []
    for wl in CPU_WORKLOADS:
        req = "CPU per transaction of the proxy process <= 0.7 x PgBouncer's"
        m = W.get(wl, {}).get("pgmoat", {}).get("proxy_total_us")
        b = W.get(wl, {}).get("pgbouncer", {}).get("proxy_total_us")
        against = "PgBouncer's"
        if m is not None and not b and "error" in W.get(wl, {}).get("pgbouncer", {}):
            # PgBouncer 1.18 cannot run protocol-level prepared statements in transaction
            # mode: its nearest workload, extended, is the yardstick.
            b = W.get("extended", {}).get("pgbouncer", {}).get("proxy_total_us")
            against = "PgBouncer's extended (it cannot run this one)"
        if m is None or not b:
            rows.append((f"CPU, {wl}", req, "not run", "not measured"))
            continue
        rows.append((f"CPU, {wl}", req, f"{m:.1f} µs = {m / b:.2f} x {against} {b:.1f} µs",
                     "met" if m / b <= 0.7 else "not met"))
    for wl in ("select1", "extended"):
        for key, label in (("p99_ms", "p99"), ("p999_ms", "p99.9")):
            req = f"{label} at 32 clients: median <= PgBouncer's over >= 5 runs, lower in all but one"
            if wl not in W:
                rows.append((f"{label}, {wl}", req, "not run", "not measured"))
                continue
            if "error" in W[wl]["pgmoat"] or "error" in W[wl]["pgbouncer"]:
                rows.append((f"{label}, {wl}", req, "a target failed", "not measured"))
                continue
            mine = [r[key] for r in W[wl]["pgmoat"]["runs"]]
            theirs = [r[key] for r in W[wl]["pgbouncer"]["runs"]]
            lower = sum(1 for a, b in zip(mine, theirs) if a < b)
            med_m, med_b = statistics.median(mine), statistics.median(theirs)
            met = len(mine) >= 5 and med_m <= med_b and lower >= len(mine) - 1
            rows.append((f"{label}, {wl}", req,
                         f"{med_m:.2f} ms against {med_b:.2f} ms; lower in {lower} of {len(mine)} runs",
                         "met" if met else "not met"))
    m = extra["idle"]["pgmoat"]
    heap = m.get("heap_kib_per_idle_conn")
    req = "<= 8 KiB per idle TLS client at 2000 clients, by heap accounting and by RSS"
    met = heap is not None and heap <= 8 and m["kib_per_idle_conn"] <= 8 and m["connections"] >= 2000
    rows.append(("memory per idle client", req,
                 f"heap {'-' if heap is None else f'{heap:.2f} KiB'}, RSS {m['kib_per_idle_conn']:.1f} KiB "
                 f"at {m['connections']} clients", "met" if met else "not met"))
    counts = sorted(int(k) for k in perf.get("scaling", {}) if k.isdigit())
    if len(counts) >= 2:
        lo, hi, S = str(counts[0]), str(counts[-1]), perf["scaling"]
        for key, label in (("proxy_total_us", "CPU per transaction"), ("p99_ms", "p99")):
            grow = {t: S[hi][t][key] / S[lo][t][key] for t in ("pgmoat", "pgbouncer")
                    if S[lo].get(t, {}).get(key) and S[hi].get(t, {}).get(key) is not None}
            req = f"{label} grows from {lo} to {hi} clients no faster than PgBouncer's"
            if len(grow) < 2:
                rows.append((f"scaling, {label}", req, "not measured", "not measured"))
                continue
            rows.append((f"scaling, {label}", req,
                         f"pgmoat x {grow['pgmoat']:.2f}, PgBouncer x {grow['pgbouncer']:.2f}",
                         "met" if grow["pgmoat"] <= grow["pgbouncer"] else "not met"))
    else:
        rows.append(("scaling", "CPU and p99 grow no faster than PgBouncer's", "not run", "not measured"))
    return rows


def perf_sections(w, extra):
    """CPU per transaction by workload, latency of every run, and the scaling table."""
    perf = extra.get("perf")
    if not perf:
        return
    W = perf["workloads"]
    us = lambda x: "-" if x is None else f"{x:.1f}"
    w("## CPU per transaction by workload\n")
    w(f"The proxy process's user + system CPU per transaction (all threads), median of "
      f"{perf['rounds']} alternating runs of {perf['seconds']} s per workload (the throughput "
      "table's pgbench arguments, with `-l`).\n")
    present = [t for t in TARGETS if any(t in W[wl] for wl in W)]
    proxies = [t for t in present if t != "direct"]
    w("| workload | " + " | ".join(f"{SHORT[t]} user + sys (µs)" for t in proxies) +
      " | pgmoat / PgBouncer |\n|---|" + "---|" * (len(proxies) + 1))
    for wl, per in W.items():
        cells = ["fails" if "error" in per.get(t, {}) else
                 f"{us(per[t].get('proxy_user_us'))} + {us(per[t].get('proxy_sys_us'))} = "
                 f"{us(per[t].get('proxy_total_us'))}" if t in per else "-" for t in proxies]
        m, b = per.get("pgmoat", {}).get("proxy_total_us"), per.get("pgbouncer", {}).get("proxy_total_us")
        w(f"| {wl} | " + " | ".join(cells) + f" | {'-' if not (m and b) else f'{m / b:.2f}'} |")
    w("")
    w("## Latency of every run\n")
    w("p99 / p99.9 in ms of each alternating run (rounds in the order they ran); \"PG n, max m\" "
      "marks a run during which PostgreSQL itself logged n statements over 5 ms "
      "(log_min_duration_statement), the longest m ms: that run's tail is at least partly "
      "PostgreSQL's.\n")
    for wl in [wl for wl in ("select1", "extended") if wl in W]:
        runs = {t: W[wl][t]["runs"] for t in present if t in W[wl]}
        w(f"**{wl}**\n")
        w("| run | " + " | ".join(SHORT[t] for t in runs) + " |\n|---|" + "---|" * len(runs))
        for i in range(max(len(r) for r in runs.values())):
            w(f"| {i + 1} | " + " | ".join(
                f"{r[i]['p99_ms']:.2f} / {r[i]['p999_ms']:.2f}{pg_mark(r[i])}" if i < len(r) and r[i]["ok"]
                else "fails"
                for r in runs.values()) + " |")
        w("")
    if perf.get("scaling"):
        w("## Scaling\n")
        w("select1 on the poolers by number of clients (pool of 20), median of the alternating runs.\n")
        w("| clients | pooler | tps | CPU per transaction (µs) | p99 (ms) | p99.9 (ms) |\n|---|---|---|---|---|---|")
        for clients, per in perf["scaling"].items():
            for t, v in per.items():
                if "error" in v:
                    w(f"| {clients} | {SHORT.get(t, t)} | fails: {v['error'][:60]} | - | - | - |")
                    continue
                w(f"| {clients} | {SHORT.get(t, t)} | {v['tps']:.0f} | {us(v.get('proxy_total_us'))} | "
                  f"{v['p99_ms']:.2f} | {v['p999_ms']:.2f} |")
        w("")


def pg_mark(run):
    """A run's PostgreSQL slow statements, if it had any (see latency.py --pg-log)."""
    slow = run.get("pg_slow")
    if not slow or not slow["count"]:
        return ""
    return f" (PG {slow['count']}, max {slow['max_ms']:.0f} ms)"


def chart(S, targets, nproc, png):
    wls = list(S)
    main = [w for w in wls if w != "connect"]
    side = [w for w in wls if w == "connect"]
    ratios = [max(len(main), 1)] + ([1.4] if side else [])
    per_group = 1.6 + 0.1 * len(targets)    # inches per workload: 1.9 for three bars, 2.0 for four
    figwidth = max(per_group * len(main) + (per_group + 0.7 if side else 0) + 1.5, 5.5)   # room for the title
    fig, axes = plt.subplots(1, len(ratios), figsize=(figwidth, 4.8),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False)
    width = 0.82 / len(targets)
    for ax, group in zip(axes[0], [main, side] if side else [main]):
        top = max([S[w][t]["max"] or 0 for w in group for t in targets] + [1])
        for i, t in enumerate(targets):
            xs = [k + (i - (len(targets) - 1) / 2) * width for k in range(len(group))]
            med = [S[w][t]["median"] or 0 for w in group]
            lo = [m - (S[w][t]["min"] or m) for w, m in zip(group, med)]
            hi = [(S[w][t]["max"] or m) - m for w, m in zip(group, med)]
            ax.bar(xs, med, width, label=LABEL[t], color=COLOR[t],
                          yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
            for x, w, m in zip(xs, group, med):   # above the whisker, so the two never overlap
                text = f"{m:.0f}" if S[w][t]["median"] is not None else "fails"
                ax.text(x, (S[w][t]["max"] or m) + top * 0.015, text, ha="center", va="bottom",
                        fontsize=7, rotation=90)
        ax.set_xticks(range(len(group)), group)
        ax.set_ylim(0, top * 1.25)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("transactions per second (median; whiskers: min-max)")
    if side:
        axes[0][1].set_title("connect (own scale)", fontsize=9)
    fig.suptitle(f"pgbench TPS by workload, all over TLS, one {nproc}-core machine", fontsize=11)
    # Under the title, clear of the bars whatever their heights: one row, or two on a narrow figure.
    ncol = len(targets) if figwidth >= 7 else 2
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.945),
               ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92 if ncol == len(targets) else 0.87))
    fig.savefig(png, dpi=120)
    plt.close(fig)


def cpu_section(w, extra):
    cpu, cfg, nproc = extra["cpu"], extra["config"], extra["machine"]["nproc"]
    us = lambda x: "-" if x is None else f"{x:.1f} µs"
    w("## CPU per transaction\n")
    w(f"select1 (`pgbench -S`, {cfg['latency_clients']} clients, TLS), from the latency runs: CPU time "
      "per transaction of the process between client and PostgreSQL (all its threads), and of the "
      "whole machine. Median over rounds.\n")
    w("| target | proxy user | proxy system | proxy total | machine | machine busy |\n|---|---|---|---|---|---|")
    for t in [t for t in TARGETS if t in cpu]:
        c = cpu[t]
        w(f"| {LABEL[t]} | {us(c['proxy_user_us'])} | {us(c['proxy_sys_us'])} | {us(c['proxy_total_us'])} | "
          f"{us(c['machine_us'])} | {c['machine_busy_pct']:.0f} % of {nproc} cores |")
    w("")
    text = []
    m, b = cpu.get("pgmoat", {}).get("proxy_total_us"), cpu.get("pgbouncer", {}).get("proxy_total_us")
    if m is not None and b:
        text.append(f"pgmoat's process uses {m:.1f} µs of CPU per transaction and PgBouncer's {b:.1f} µs: "
                    f"{m / b:.2f} x PgBouncer's.")
    p = cpu.get("passthrough", {}).get("proxy_total_us")
    if p is not None:
        text.append(f"HAProxy, which only forwards bytes, uses {p:.1f} µs.")
    d = cpu.get("direct", {}).get("machine_us")
    if d:
        budget = d / 0.9 - d
        text.append(
            f"With the {nproc} cores saturated, throughput is the machine's CPU time divided by the machine "
            f"CPU each transaction costs, so 0.90 x direct leaves any proxy at most D/0.9 - D of extra "
            f"machine CPU per transaction: direct costs D = {d:.1f} µs, so the budget is {budget:.1f} µs.")
        own = {t: cpu[t]["proxy_total_us"] for t in ("passthrough", "pgmoat", "pgbouncer")
               if t in cpu and cpu[t].get("proxy_total_us") is not None}
        if own:
            text.append("The proxies' own CPU per transaction, before counting what they cost the kernel "
                        "and the other processes: " + ", ".join(
                            f"{LABEL[t]} {v:.1f} µs ({v / budget:.1f} x the budget)" for t, v in own.items()) + ".")
        extra_us = {t: cpu[t]["machine_us"] - d for t in ("passthrough", "pgmoat", "pgbouncer")
                    if t in cpu and cpu[t]["machine_us"] is not None}
        if extra_us and min(extra_us.values()) <= 0:
            text.append("In this run a proxied transaction cost the machine less than a direct one ("
                        + ", ".join(f"{LABEL[t]} {v:+.1f} µs" for t, v in extra_us.items())
                        + "): the shared machine's noise between runs is larger than a proxy's cost, so "
                        "compare the proxies' own CPU above rather than the machine column.")
        elif "passthrough" in extra_us:
            text.append(f"On the whole machine the TCP passthrough adds {extra_us['passthrough']:.1f} µs "
                        f"({extra_us['passthrough'] / budget:.1f} x the budget)"
                        + (f"; pgmoat adds {extra_us['pgmoat']:.1f} µs and PgBouncer "
                           f"{extra_us['pgbouncer']:.1f} µs." if "pgmoat" in extra_us and "pgbouncer" in extra_us
                           else "."))
        busy = cpu["direct"]["machine_busy_pct"]
        if busy < 90:
            text.append(f"The machine was only {busy:.0f} % busy during the direct runs, so this budget is "
                        "an estimate, not a bound.")
    if text:
        w(" ".join(text) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--extra", required=True)
    ap.add_argument("--md", default=os.path.join(REPO, "BENCHMARKS.md"))
    ap.add_argument("--png", default=os.path.join(REPO, "bench", "tps.png"))
    ap.add_argument("--profile", default=os.path.join(REPO, "bench", "PROFILE.md"))
    a = ap.parse_args()
    run = json.load(open(a.run))
    extra = json.load(open(a.extra))
    cfg, mach = extra["config"], extra["machine"]
    targets = [t for t in TARGETS if any(t in r["runs"] for r in run.values())]
    pt = "passthrough" in targets
    S = {}
    for wl, r in run.items():
        S[wl] = stats(r, targets)
        S[wl]["_runs"] = r["runs"]
    chart({w: {t: S[w][t] for t in targets} for w in S}, targets, mach["nproc"], a.png)

    md = []
    w = md.append
    w("# Benchmarks\n")
    w("pgmoat beside PgBouncer and PostgreSQL itself"
      + (", with a plain TCP passthrough (HAProxy) as the floor for any proxy," if pt else "")
      + " measured side by side in one run. "
      "Every figure below comes from that run; the file is generated, do not edit it by hand.\n")
    cmd = command(cfg)
    if cmd != "bench/compare.sh":
        w(f"**This is a shortened run** (`{cmd}`), not the full benchmark: "
          "its figures are not the ones the targets are judged on.\n")

    w("## How to regenerate\n")
    w("As root, from the repository (the harness is `../shared/bench`):\n")
    w("```\nbench/compare.sh\n```\n")
    w("It builds pgmoat (`cargo build --release --locked`), installs PgBouncer and HAProxy with apt "
      "if they are missing, makes the certificates with `pgmoat certs`, starts PostgreSQL, PgBouncer, "
      "pgmoat and HAProxy on free loopback ports in a temporary directory, runs every measurement "
      "below, writes this file and `bench/tps.png`, and stops what it started. Options: `--rounds N`, `--seconds S`, "
      "`--workloads LIST`, `--out DIR` (raw results and `compare.log`, default `target/bench`), "
      "`--idle N`, `--idle-max N`.\n")
    if cmd != "bench/compare.sh":
        w(f"This file was made with `{cmd}`.\n")

    w("## Method\n")
    order = ", ".join(SHORT[t] for t in targets)
    method = [
        "- Harness: `../shared/bench` (`pg.sh`, `pgbouncer.sh`, `run.py`) and `bench/idle_heap.py`; "
        "certificates from `pgmoat certs init` / `certs issue`.",
        f"- Throughput: `run.py` runs each workload against each target in alternating order "
        f"({order}, then the reverse), {cfg['rounds']} round(s) of {cfg['seconds']} s; "
        "the table gives the median with min-max. The reference for ratios is PostgreSQL direct.",
        "- PostgreSQL 15 with TLS (scale 10, fsync off), user and password bench over SCRAM. "
        f"Both poolers: transaction mode, a pool of {cfg['pool_size']} per database/user, "
        "max_client_conn 20000, SCRAM towards clients, client TLS `require` with the CA set (a client "
        "certificate is verified when one is presented), `verify-full` TLS to PostgreSQL. PgBouncer "
        "with `log_connections = 0`, pgmoat with `RUST_LOG=warn` (no line per login).",
    ]
    if pt:
        method.append(
            "- TCP passthrough: HAProxy in TCP mode (`nbthread 2`, `maxconn 4000`, no traffic log) "
            "forwarding a loopback port to PostgreSQL's. It does no TLS termination, no parsing and no "
            "pooling: clients do TLS and SCRAM end to end with PostgreSQL through it, and each client "
            "has its own backend, as with direct. It is there to show what one extra TCP hop costs on "
            "this machine (more socket reads and writes per round trip, and one more process to "
            "schedule): the floor for any proxy, pooling or not.")
    method += [
        f"- Memory: `bench/idle_heap.py` opens {cfg['idle']} idle TLS clients through each pooler and reads "
        "VmRSS before and after, and for pgmoat also its heap accounting (`pgmoat_heap_in_use_bytes`, "
        "glibc's mallinfo2, from /metrics); then "
        f"{cfg['idle_max']} idle TLS clients are held on pgmoat. This runs on freshly started poolers, "
        "before the load, so memory freed by earlier runs does not hide the growth.",
        f"- Latency: `pgbench -n -S -c {cfg['latency_clients']} -j 2 -l` (per-transaction logs) against "
        f"each target, {cfg['rounds']} alternating round(s) of {cfg['seconds']} s; p50/p99 from the logs, "
        "median over rounds. Added latency is the pooler's p99 minus direct's.",
    ]
    if "cpu" in extra:
        method.append(
            "- CPU per transaction: around each latency run, the proxy process's utime and stime (all "
            "its threads; `/proc/PID/stat` fields 14 and 15) and the machine's busy time (`/proc/stat` "
            "`cpu` line: user + nice + system + irq + softirq + steal) are read before and after pgbench "
            "and divided by the transactions in the per-transaction logs; median over rounds. The "
            "window includes pgbench's connections and logins, and the machine figure counts "
            "everything on the machine: pgbench, PostgreSQL, the proxy, the kernel and any neighbour.")
    method.append(
        f"- Everything (PostgreSQL, the proxy, pgbench) runs on one {mach['nproc']}-core machine, so a "
        "proxy competes with PostgreSQL and pgbench for the same cores. The machine is shared and "
        "noisy: read the ratios within this run, not the absolute numbers, and do not compare absolute "
        "numbers across runs.")
    w("\n".join(method) + "\n")

    w("## Machine\n")
    w("| | |\n|---|---|")
    for k, v in (("cores (nproc)", mach["nproc"]), ("CPU", mach["cpu"]), ("kernel", mach["kernel"]),
                 ("memory", f"{mach['mem_kib'] / 1024 / 1024:.1f} GiB"), ("PostgreSQL", mach["postgresql"]),
                 ("pgbench", mach["pgbench"]), ("PgBouncer", mach["pgbouncer"]),
                 *((("HAProxy", mach["haproxy"]),) if "haproxy" in mach else ()),
                 ("pgmoat", f"{mach['pgmoat']}, git {mach['revision']}"), ("date", mach["date"])):
        w(f"| {k} | {v} |")
    w("")

    w("## Throughput\n")
    head = ["workload"] + [f"{SHORT[t]} tps" for t in targets] + \
        ["pgmoat / PgBouncer", "pgmoat / direct", "PgBouncer / direct"] + (["passthrough / direct"] if pt else [])
    w("| " + " | ".join(head) + " |")
    w("|---" * len(head) + "|")
    for wl, s in S.items():
        med = {t: s[t]["median"] for t in targets}
        d, b, m = med["direct"], med["pgbouncer"], med["pgmoat"]
        cells = [wl] + [fmt_tps(s[t]) for t in targets] + \
            [fmt_ratio(ratio(m, b)), fmt_ratio(ratio(m, d)), fmt_ratio(ratio(b, d))]
        if pt:
            cells.append(fmt_ratio(ratio(med["passthrough"], d)))
        w("| " + " | ".join(cells) + " |")
    w("\nMedian tps, min-max in brackets. Workloads:\n")
    for wl in S:
        w(f"- `{wl}`: {WORKLOAD.get(wl, '')}")
    w("")
    rel = os.path.relpath(a.png, os.path.dirname(os.path.abspath(a.md)))
    w(f"![TPS by workload]({rel})\n")

    w("## Targets (issue 16)\n")
    w("| target | required | measured | status |\n|---|---|---|---|")
    for row in issue16_rows(extra):
        w("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    w("")

    w("## Earlier targets (issue 6)\n")
    w("| target | required | measured | status |\n|---|---|---|---|")
    for row in targets_table(S, extra):
        w("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    w("")

    w("## Memory\n")
    w("| pooler | idle TLS clients | on TLS | RSS before | RSS after | per idle client (RSS) | per idle client (heap) | connect rate |")
    w("|---|---|---|---|---|---|---|---|")
    rows = [("PgBouncer", extra["idle"]["pgbouncer"]), ("pgmoat", extra["idle"]["pgmoat"]),
            (f"pgmoat (pool {cfg['pool_size']})", extra["idle_max"]["pgmoat"])]
    for name, m in rows:
        heap = m.get("heap_kib_per_idle_conn")
        heap = "-" if heap is None else f"{heap:.2f} KiB"
        w(f"| {name} | {m['connections']} | {m['tls_in_use']} | {m['rss_before_kib'] / 1024:.1f} MiB | "
          f"{m['rss_after_kib'] / 1024:.1f} MiB | {m['kib_per_idle_conn']:.1f} KiB | {heap} | {m['connect_rate']:.0f}/s |")
    w("\nPer idle client = (after - before) / (clients - 1): RSS from /proc/PID/status; heap from "
      "pgmoat's allocator statistics (bytes handed out and not freed), which RSS cannot tell apart "
      "from pages kept after a free.\n")

    w("## Latency\n")
    lat = extra["latency"]
    w(f"`pgbench -S`, {cfg['latency_clients']} clients, TLS, per-transaction logs.\n")
    w("| target | tps | p50 | p99 | p99.9 | p99 added over direct |\n|---|---|---|---|---|---|")
    for t in [t for t in TARGETS if t in lat]:
        v = lat[t]
        tps = statistics.median(r["tps"] for r in v["rounds"] if r["tps"] is not None)
        added = "-" if t == "direct" else f"{v['p99_ms'] - lat['direct']['p99_ms']:+.2f} ms"
        p999 = statistics.median(r["p999_ms"] for r in v["rounds"])
        w(f"| {LABEL[t]} | {tps:.0f} | {v['p50_ms']:.2f} ms | {v['p99_ms']:.2f} ms | {p999:.2f} ms | {added} |")
    w("\nA closed loop: each client waits for its answer before sending the next query, so a target "
      "with lower throughput also shows higher latency.\n")

    if "cpu" in extra:
        cpu_section(w, extra)
    perf_sections(w, extra)

    w("## Where the time goes\n")
    if os.path.exists(a.profile):
        text = open(a.profile).read().strip()
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):   # its own title would compete with this file's
            lines = lines[1:]
        fenced = False
        for i, line in enumerate(lines):   # its headings go one level below this section's
            if line.startswith("```"):
                fenced = not fenced
            elif not fenced and line.startswith("#"):
                lines[i] = "#" + line
        w("\n".join(lines).strip() + "\n")
    else:
        w("No profile recorded yet (`bench/PROFILE.md`).\n")

    with open(a.md, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    print(f"wrote {a.md} and {a.png}")


if __name__ == "__main__":
    main()
