"""Writers that keep one psycopg 3 connection each through a failover, and report what happened.

usage: failover_writers.py CONNINFO [--clients N] [--first-client K] [--duration SECS]
                           [--stop-file PATH] [--ready-file PATH] [--join-timeout SECS]

Each of N threads opens ONE connection and never reconnects: the point is to see what a
client's existing connection goes through (through pgmoat) while the server behind it changes.
Clients are numbered K..K+N-1 (K defaults to 1, so ids stay clear of small hand-made ones;
give two runs against one table different K). Each loops on a transaction:
INSERT INTO ledger(id, client, v) VALUES (id, client, 'x'), with id = client * 10_000_000 + seq
(seq counts attempts, so an id is never tried twice), then COMMIT.
A commit that returns records the id as committed; any error records (t, sqlstate, message)
and the id as failed (its outcome is unknown when the connection broke during COMMIT), rolls
back and goes on after 50 ms. A client whose connection is closed stops ("closed": true).

The run ends when the stop file exists or the duration is over, whichever comes first (at
least one must be given). The ready file, if given, is created once every client has tried to
connect, so a test can wait for it before breaking things. Then one JSON object is printed:

  committed         {client: [id, ...]}
  commits           {client: [[id, t], ...]}      t: seconds since start (time.monotonic)
  commits_wall      {client: [[id, unix_time], ...]}
  errors            {client: [[t, sqlstate or null, message], ...]}
  failed_ids        {client: [id, ...]}
  last_commit_time  {client: t or null}
  first_error_time  {client: t or null}
  first_error_any   t or null
  closed            {client: bool}
  stuck             {client: bool}   still inside a call when the run ended (not joined)
  start_wall, ready_time, elapsed

Exit status 0 whatever the clients saw; 2 for bad arguments.
"""

import argparse
import json
import os
import sys
import threading
import time

import psycopg

ID_BASE = 10_000_000
RETRY_PAUSE = 0.05
STOP_POLL = 0.2


class RollbackError(Exception):
    def __init__(self, cause):
        super().__init__(f"rollback: {cause}")
        self.sqlstate = getattr(cause, "sqlstate", None)


class Client:
    def __init__(self, n, conninfo, t0, lock):
        self.n = n
        self.conninfo = conninfo
        self.t0 = t0
        self.lock = lock
        self.commits = []  # (id, t, wall)
        self.errors = []  # (t, sqlstate, message)
        self.failed_ids = []
        self.closed = False
        self.conn = None

    def now(self):
        return time.monotonic() - self.t0

    def record_error(self, exc, failed_id=None):
        sqlstate = getattr(exc, "sqlstate", None)
        message = " ".join(str(exc).split()) or type(exc).__name__
        with self.lock:
            self.errors.append((self.now(), sqlstate, message))
            if failed_id is not None:
                self.failed_ids.append(failed_id)

    def connect(self):
        try:
            self.conn = psycopg.connect(self.conninfo)
        except Exception as e:  # noqa: BLE001 - every failure is data for the test
            self.record_error(e)
            with self.lock:
                self.closed = True

    def run(self, go, stop):
        go.wait()
        if self.conn is None:
            return
        seq = 0
        while not stop.is_set():
            seq += 1
            row_id = self.n * ID_BASE + seq
            try:
                self.conn.execute(
                    "INSERT INTO ledger(id, client, v) VALUES (%s, %s, 'x')",
                    (row_id, self.n),
                )
                self.conn.commit()
            except Exception as e:  # noqa: BLE001
                self.record_error(e, row_id)
                try:
                    self.conn.rollback()
                except Exception as e2:  # noqa: BLE001
                    # On a closed connection this only repeats what the first error said.
                    if not self.conn.closed:
                        self.record_error(RollbackError(e2))
                if self.conn.closed:
                    with self.lock:
                        self.closed = True
                    return
                stop.wait(RETRY_PAUSE)
                continue
            with self.lock:
                self.commits.append((row_id, self.now(), time.time()))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("conninfo")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--first-client", type=int, default=1)
    p.add_argument("--duration", type=float)
    p.add_argument("--stop-file")
    p.add_argument("--ready-file")
    p.add_argument("--join-timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.duration is None and args.stop_file is None:
        p.error("give --duration or --stop-file")
    if args.clients < 1:
        p.error("--clients must be at least 1")
    if args.first_client < 0 or (args.first_client + args.clients) * ID_BASE >= 2**63:
        p.error("--first-client out of range for bigint ids")
    return args


def conninfo_with_timeout(conninfo):
    # A connect that hangs would hold up the whole run; libpq's own default is forever.
    if "connect_timeout" in conninfo or "PGCONNECT_TIMEOUT" in os.environ:
        return conninfo
    return conninfo + " connect_timeout=10"


def main(argv):
    args = parse_args(argv)
    t0 = time.monotonic()
    start_wall = time.time()
    lock = threading.Lock()
    go, stop = threading.Event(), threading.Event()
    conninfo = conninfo_with_timeout(args.conninfo)
    numbers = range(args.first_client, args.first_client + args.clients)
    clients = [Client(n, conninfo, t0, lock) for n in numbers]

    connecting = [threading.Thread(target=c.connect, daemon=True) for c in clients]
    for t in connecting:
        t.start()
    for t in connecting:
        t.join()
    # Daemon threads: a client stuck in a call (say a commit waiting for a dead synchronous
    # standby) must not keep the report from being printed.
    workers = [threading.Thread(target=c.run, args=(go, stop), daemon=True) for c in clients]
    for t in workers:
        t.start()
    ready_time = time.monotonic() - t0
    go.set()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")

    deadline = None if args.duration is None else time.monotonic() + args.duration
    while True:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(STOP_POLL)
    stop.set()
    join_deadline = time.monotonic() + args.join_timeout
    for t in workers:
        t.join(max(0.0, join_deadline - time.monotonic()))
    elapsed = time.monotonic() - t0

    with lock:
        report = build_report(clients, workers, start_wall, ready_time, elapsed)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    # Skip interpreter shutdown: a stuck thread's connection could block it.
    os._exit(0)


def build_report(clients, workers, start_wall, ready_time, elapsed):
    def per_client(f):
        return {str(c.n): f(c) for c in clients}

    first_errors = [c.errors[0][0] for c in clients if c.errors]
    return {
        "committed": per_client(lambda c: [i for i, _, _ in c.commits]),
        "commits": per_client(lambda c: [[i, t] for i, t, _ in c.commits]),
        "commits_wall": per_client(lambda c: [[i, w] for i, _, w in c.commits]),
        "errors": per_client(lambda c: [list(e) for e in c.errors]),
        "failed_ids": per_client(lambda c: list(c.failed_ids)),
        "last_commit_time": per_client(lambda c: c.commits[-1][1] if c.commits else None),
        "first_error_time": per_client(lambda c: c.errors[0][0] if c.errors else None),
        "first_error_any": min(first_errors) if first_errors else None,
        "closed": per_client(lambda c: c.closed),
        "stuck": {str(c.n): w.is_alive() for c, w in zip(clients, workers)},
        "start_wall": start_wall,
        "ready_time": ready_time,
        "elapsed": elapsed,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
