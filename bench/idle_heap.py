#!/usr/bin/env python3
"""Hold N idle TLS clients open through a pooler and report its memory per client two ways:
the process's RSS (/proc/PID/status VmRSS) and, when --metrics is given, pgmoat's own heap
accounting (pgmoat_heap_in_use_bytes on its /metrics, from glibc's mallinfo2). RSS alone
misleads: pages freed earlier are reused, and freed memory is not always returned.

  idle_heap.py --pid PID --port PORT [--n 2000] [--metrics http://127.0.0.1:9187/metrics]

Prints one line of key=value pairs (a superset of the harness's idle_conns.py output).
Needs psycopg; raise `ulimit -n` above N first.
"""
import argparse
import re
import time
import urllib.request

import psycopg


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def heap_bytes(url):
    if not url:
        return None
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    m = re.search(r"^pgmoat_heap_in_use_bytes (\d+)", text, re.M)
    return int(m.group(1)) if m else None


def settled(read, tries=20):
    """The reading once two in a row agree (clients finish logging in asynchronously)."""
    last = read()
    for _ in range(tries):
        time.sleep(0.25)
        now = read()
        if now == last:
            return now
        last = now
    return last


ap = argparse.ArgumentParser()
ap.add_argument("--pid", type=int, required=True)
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--n", type=int, default=2000)
ap.add_argument("--sslmode", default="require")
ap.add_argument("--metrics")
a = ap.parse_args()


def connect():
    return psycopg.connect(host=a.host, port=a.port, user="bench", password="bench",
                           dbname="bench", sslmode=a.sslmode, autocommit=True)


conns = [connect()]
conns[0].execute("select 1")  # warm: a server connection, TLS state initialised
time.sleep(0.5)
rss_before, heap_before = rss_kib(a.pid), settled(lambda: heap_bytes(a.metrics))
t0 = time.time()
for _ in range(a.n - 1):
    conns.append(connect())
elapsed = time.time() - t0
time.sleep(1)
rss_after, heap_after = rss_kib(a.pid), settled(lambda: heap_bytes(a.metrics))
ok = sum(1 for c in conns if c.pgconn.ssl_in_use)
fields = {
    "connections": a.n,
    "tls_in_use": ok,
    "rss_before_kib": rss_before,
    "rss_after_kib": rss_after,
    "kib_per_idle_conn": f"{(rss_after - rss_before) / (a.n - 1):.1f}",
    "connect_rate": f"{(a.n - 1) / elapsed:.0f}",
}
if heap_before is not None and heap_after is not None:
    fields["heap_before_bytes"] = heap_before
    fields["heap_after_bytes"] = heap_after
    fields["heap_kib_per_idle_conn"] = f"{(heap_after - heap_before) / 1024 / (a.n - 1):.2f}"
print(" ".join(f"{k}={v}" for k, v in fields.items()))
for c in conns:
    c.close()
