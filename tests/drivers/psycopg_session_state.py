"""psycopg 3 through pgmoat in transaction mode on a pool of 2 (run by tests/drivers.rs): what
a new user tries first with session state. SET ROLE and search_path follow their connection and
never reach the other; a temp table, an advisory lock, LISTEN, SQL PREPARE and a WITH HOLD
cursor survive their transaction for their owner only; notifications arrive while idle;
conn.cancel() stops the owner's query and nobody else's.

Environment: PGMOAT_PORT, PGMOAT_CA, PGMOAT_PASSWORD. Exits non-zero on the first failure.
"""

import os
import sys
import threading
import time

import psycopg

# The same connection settings as the other psycopg check (this directory is on sys.path).
from psycopg_checks import conninfo


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def check(what, got, expected):
    if got != expected:
        print(f"psycopg session state: {what}: got {got!r}, expected {expected!r}", file=sys.stderr)
        sys.exit(1)


def main():
    a = psycopg.connect(conninfo(), autocommit=True)
    b = psycopg.connect(conninfo(), autocommit=True)

    a.execute("SET ROLE tenant_a")
    a.execute("SET search_path = tenant, public")
    for _ in range(3):
        check("b's role", one(b, "SELECT current_user"), "alice")
        check("b's search_path", one(b, "SHOW search_path"), '"$user", public')
        check("a's role", one(a, "SELECT current_user"), "tenant_a")
        check("a's search_path", one(a, "SHOW search_path"), "tenant, public")
    a.execute("RESET ROLE")
    check("a's role after RESET ROLE", one(a, "SELECT current_user"), "alice")

    a.execute("CREATE TEMP TABLE scratch (x int)")
    a.execute("INSERT INTO scratch VALUES (7)")
    a.execute("SELECT pg_advisory_lock(42)")
    a.execute("PREPARE seven AS SELECT 7")
    a.execute("DECLARE held CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
    a.execute("LISTEN jobs")
    pinned = one(a, "SELECT pg_backend_pid()")
    for n in (1, 2):
        check("a's temp table", one(a, "SELECT x FROM scratch"), 7)
        check("a's prepared statement", one(a, "EXECUTE seven"), 7)
        check("a's cursor", one(a, "FETCH 1 FROM held"), n)
        check("a's lock", one(a, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND pid = pg_backend_pid()"), 1)
        check("a's server", one(a, "SELECT pg_backend_pid()"), pinned)
        if one(b, "SELECT pg_backend_pid()") == pinned:
            check("b got a's pinned server", True, False)
        check("b sees a temp table", one(b, "SELECT to_regclass('pg_temp.scratch')"), None)

    # Notifications while idle.
    b.execute("NOTIFY jobs, 'one'")
    b.execute("NOTIFY jobs, 'two'")
    got = []
    for note in a.notifies(timeout=5, stop_after=2):
        got.append(note.payload)
    check("notifications", got, ["one", "two"])

    # cancel(): the owner's long query stops, b's query does not.
    def cancel_soon():
        time.sleep(0.5)
        a.cancel()

    t = threading.Thread(target=cancel_soon)
    t.start()
    try:
        a.execute("SELECT pg_sleep(20)")
        check("cancel", "finished", "cancelled")
    except psycopg.errors.QueryCanceled:
        pass
    t.join()
    check("b after the cancel", one(b, "SELECT 'fine'"), "fine")
    check("a after the cancel", one(a, "SELECT x FROM scratch"), 7)

    a.close()
    b.close()
    print(f"psycopg {psycopg.__version__}: session state follows its connection")


if __name__ == "__main__":
    main()
