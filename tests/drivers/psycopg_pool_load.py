"""Runs transactions from a psycopg_pool ConnectionPool until a stop file appears.

Usage: psycopg_pool_load.py CONNINFO STOP_FILE [MAX_LIFETIME]

Four threads share a pool of four connections whose max_lifetime is MAX_LIFETIME seconds
(default 2): expired connections are replaced by new ones, as an application's pool does.
Each thread runs a two-statement transaction again and again. Prints one JSON line:
{"ok": N, "failed": N, "errors": [first few messages]}.
"""

import json
import os
import sys
import threading
import time

from psycopg_pool import ConnectionPool


def main(conninfo, stop_file, max_lifetime):
    pool = ConnectionPool(
        conninfo, min_size=4, max_size=4, max_lifetime=max_lifetime, open=True, timeout=30
    )
    pool.wait(timeout=30)
    counts = {"ok": 0, "failed": 0}
    errors = []
    lock = threading.Lock()

    def work():
        while not os.path.exists(stop_file):
            try:
                with pool.connection() as conn:
                    with conn.transaction():
                        conn.execute("SELECT 1")
                        conn.execute("SELECT pg_backend_pid()")
                with lock:
                    counts["ok"] += 1
            except Exception as e:  # counted, never fatal to the run
                with lock:
                    counts["failed"] += 1
                    if len(errors) < 5:
                        errors.append(repr(e))
            time.sleep(0.005)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    print(json.dumps({**counts, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 2.0)
