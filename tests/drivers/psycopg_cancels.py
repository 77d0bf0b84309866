"""Cancels a running pg_sleep(30) again and again on one psycopg connection.

Usage: psycopg_cancels.py CONNINFO COUNT

Each round runs `SELECT pg_sleep(30)` in a thread, waits until PostgreSQL shows it running
(asked on a second connection), calls conn.cancel() (a CancelRequest on a new connection to
the same host and port, so through a load balancer it may reach any pgmoat instance), and
times how long the query takes to fail with QueryCanceled. Prints one JSON line:
{"canceled": N, "slowest": seconds, "other_errors": [...]}.
"""

import json
import sys
import threading
import time

import psycopg
from psycopg import errors

SLEEP = "SELECT pg_sleep(30)"


def main(conninfo, count):
    conn = psycopg.connect(conninfo, autocommit=True)
    monitor = psycopg.connect(conninfo, autocommit=True)
    canceled, slowest, other = 0, 0.0, []
    for _ in range(count):
        outcome = {}

        def run():
            try:
                conn.execute(SLEEP)
                outcome["error"] = "the sleep finished without being canceled"
            except errors.QueryCanceled:
                outcome["canceled"] = time.monotonic()
            except Exception as e:  # reported, never fatal to the run
                outcome["error"] = repr(e)

        # The last round's backend may show its canceled query active a moment longer.
        since = monitor.execute("SELECT clock_timestamp()").fetchone()[0]
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = monitor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE state = 'active' AND query = %s AND query_start > %s",
                (SLEEP, since),
            ).fetchone()
            if row[0] == 1:
                break
            time.sleep(0.01)
        sent = time.monotonic()
        conn.cancel()
        thread.join(35)
        if "canceled" in outcome:
            canceled += 1
            slowest = max(slowest, outcome["canceled"] - sent)
        else:
            other.append(outcome.get("error", "still running"))
    print(json.dumps({"canceled": canceled, "slowest": slowest, "other_errors": other}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
