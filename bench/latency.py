#!/usr/bin/env python3
"""Latency and CPU per transaction, per workload and per target, in alternating rounds, and how
they grow with the number of clients. pgbench writes a log line per transaction (-l); the
proxy's CPU is its utime + stime from /proc/PID/stat (all threads) around each run.

  latency.py --harness DIR --pki DIR --json FILE [--rounds 5] [--seconds 8]
             [--workloads select1,select1-mtls,extended,prepared,tpcb]
             [--scaling 32,256,1024] [--idle-active N] [--pg-log FILE]
             NAME=PORT[:PID] ...

Workloads are the harness's (run.py), so the pgbench arguments are the throughput table's.
--scaling runs select1 with each client count against the targets that have a PID and are
poolers (not direct, not the passthrough, which give every client a backend of its own);
--idle-active N also runs it with N idle TLS clients held open beside 32 active ones.
"""
import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1


def proc_ticks(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14 and 15)


def machine_busy():
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, cpu[1:9])
    return user + nice + system + irq + softirq + steal


def percentile(sorted_us, q):
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))] / 1000.0


def with_clients(args, clients):
    args = list(args)
    if "-c" in args:
        args[args.index("-c") + 1] = str(clients)
    return args


PG_SLOW = re.compile(r"duration: ([\d.]+) ms")


def pg_log_size(path):
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None


def pg_slow_since(path, offset):
    """PostgreSQL's own slow statements (log_min_duration_statement) logged since `offset`:
    how many, and the longest in ms. A run's tail is PostgreSQL's when these line up with it."""
    if path is None or offset is None:
        return None
    with open(path, errors="replace") as f:
        f.seek(offset)
        durations = [float(m.group(1)) for m in PG_SLOW.finditer(f.read())]
    return {"count": len(durations), "max_ms": max(durations, default=0.0)}


def run_once(workload_args, tls, port, pid, seconds, clients, logdir, tag, pg_log=None):
    args = with_clients(workload_args, clients) if clients else list(workload_args)
    conninfo = f"host=127.0.0.1 port={port} user=bench dbname=bench {tls}"
    prefix = os.path.join(logdir, tag)
    # pgbench's -T includes logging its clients in; a pooler doing SCRAM over TLS logs in a
    # few dozen to a few hundred clients a second (PgBouncer about 60), so a run with many
    # clients is lengthened by that time or it may end before any client has logged in.
    if clients and clients > 32:
        seconds += (clients + 49) // 50
    cmd = ["pgbench", *args, "-T", str(seconds), "-l", f"--log-prefix={prefix}", conninfo]
    env = dict(os.environ, PGPASSWORD="bench")
    log_at = pg_log_size(pg_log)
    before, busy0, t0 = proc_ticks(pid), machine_busy(), time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 300)
    after, busy1, t1 = proc_ticks(pid), machine_busy(), time.time()
    out = p.stdout + p.stderr
    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    if p.returncode != 0 or not tps:
        # A target that cannot run a workload (PgBouncer 1.18 and protocol-level prepared
        # statements in transaction mode) is reported, not fatal.
        for f in glob.glob(prefix + ".*"):
            os.remove(f)
        tail = [line for line in out.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
        return {"clients": clients, "ok": False, "error": (tail or [out[-300:]])[0]}
    us = []
    for f in glob.glob(prefix + ".*"):
        with open(f) as log:
            for line in log:
                us.append(int(line.split()[2]))  # client_id transaction_no time_us ...
        os.remove(f)
    us.sort()
    n = len(us)
    tick_us = 1e6 / CLK_TCK
    row = {"clients": clients, "ok": True, "transactions": n, "tps": float(tps.group(1)),
           "p50_ms": percentile(us, 0.50), "p99_ms": percentile(us, 0.99),
           "p999_ms": percentile(us, 0.999), "mean_ms": sum(us) / n / 1000.0,
           "machine_us": (busy1 - busy0) * tick_us / n,
           "machine_busy_pct": 100.0 * (busy1 - busy0) * tick_us / 1e6 / ((t1 - t0) * NPROC)}
    slow = pg_slow_since(pg_log, log_at)
    if slow is not None:
        row["pg_slow"] = slow
    if before and after:
        row["proxy_user_us"] = (after[0] - before[0]) * tick_us / n
        row["proxy_sys_us"] = (after[1] - before[1]) * tick_us / n
        row["proxy_total_us"] = row["proxy_user_us"] + row["proxy_sys_us"]
    return row


def summary(rounds):
    """Medians over the runs; a target with a failed run gets its error instead."""
    failed = [r for r in rounds if not r["ok"]]
    if failed:
        return {"error": failed[0]["error"]}
    keys = ("tps", "p50_ms", "p99_ms", "p999_ms", "mean_ms", "proxy_user_us", "proxy_sys_us",
            "proxy_total_us", "machine_us", "machine_busy_pct")
    return {k: statistics.median(r[k] for r in rounds) for k in keys if all(k in r for r in rounds)}


class IdleHold:
    """N idle TLS clients held open through a pooler for the length of a `with` block."""

    def __init__(self, port, n):
        self.port, self.n, self.conns = port, n, []

    def __enter__(self):
        import psycopg
        for _ in range(self.n):
            self.conns.append(psycopg.connect(host="127.0.0.1", port=self.port, user="bench",
                                              password="bench", dbname="bench",
                                              sslmode="require", autocommit=True))
        return self

    def __exit__(self, *exc):
        for c in self.conns:
            c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harness", required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--workloads", default="select1,select1-mtls,extended,prepared,tpcb")
    ap.add_argument("--scaling", default="")
    ap.add_argument("--idle-active", type=int, default=0)
    ap.add_argument("--pg-log", default=None,
                    help="PostgreSQL's log, with log_min_duration_statement set: each run "
                         "reports PostgreSQL's own slow statements during it")
    ap.add_argument("targets", nargs="+", help="NAME=PORT[:PID]")
    a = ap.parse_args()
    sys.path.insert(0, a.harness)
    from run import WORKLOADS  # the harness's workload definitions

    targets = []
    for t in a.targets:
        name, rest = t.split("=", 1)
        port, _, pid = rest.partition(":")
        targets.append((name, int(port), int(pid) if pid else None))
    result = {"rounds": a.rounds, "seconds": a.seconds, "workloads": {}, "scaling": {}}
    logdir = tempfile.mkdtemp(prefix="pgmoat-latency-")

    def alternate(label, workload, clients, chosen):
        args, tls = WORKLOADS[workload]
        tls = tls.format(pki=a.pki)
        runs = {name: [] for name, _, _ in chosen}
        for r in range(a.rounds):
            order = chosen if r % 2 == 0 else list(reversed(chosen))
            for name, port, pid in order:
                row = run_once(args, tls, port, pid, a.seconds, clients, logdir, f"{label}-{name}-{r}",
                               a.pg_log)
                runs[name].append(row)
                if not row["ok"]:
                    print(f"# {label} round {r + 1} {name}: ERROR {row['error']}", flush=True)
                    continue
                cpu = f", proxy {row['proxy_total_us']:.1f} us/txn" if "proxy_total_us" in row else ""
                slow = row.get("pg_slow")
                pg = f", PostgreSQL: {slow['count']} slow statements (max {slow['max_ms']:.0f} ms)" \
                    if slow and slow["count"] else ""
                print(f"# {label} round {r + 1} {name}: {row['tps']:.0f} tps, p99 {row['p99_ms']:.2f} ms, "
                      f"p99.9 {row['p999_ms']:.2f} ms{cpu}{pg}", flush=True)
        return {name: {"runs": rows, **summary(rows)} for name, rows in runs.items()}

    for workload in [w for w in a.workloads.split(",") if w]:
        result["workloads"][workload] = alternate(workload, workload, None, targets)
    poolers = [t for t in targets if t[2] and t[0] not in ("direct", "passthrough")]
    for clients in [int(c) for c in a.scaling.split(",") if c]:
        result["scaling"][str(clients)] = alternate(f"select1-c{clients}", "select1", clients, poolers)
    if a.idle_active:
        # One pooler at a time (holding them on all at once would take twice the open files
        # here): these rounds do not alternate between the poolers.
        held = {}
        for target in poolers:
            with IdleHold(target[1], a.idle_active):
                held[target[0]] = alternate(f"select1-idle{a.idle_active}", "select1", 32,
                                            [target])[target[0]]
        result["scaling"][f"{a.idle_active} idle + 32"] = held
    os.rmdir(logdir)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
