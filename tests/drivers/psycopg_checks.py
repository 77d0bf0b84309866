"""psycopg 3 (libpq underneath) through pgmoat in transaction mode (run by tests/drivers.rs).

Each thread has its own connection; half use autocommit (their prepares are answered by
pgmoat alone), half run in transactions. Server-side prepared statements (prepare=True,
named _pg3_N per connection, so names collide across connections), executemany (pipeline
mode), COPY FROM STDIN and COPY TO STDOUT.

Environment: PGMOAT_PORT, PGMOAT_CA, PGMOAT_PASSWORD. Exits non-zero on the first failure.
"""

import os
import sys
import threading

import psycopg

THREADS = 8
ROUNDS = 20
MANY = 50
COPIED = 100


def conninfo():
    return psycopg.conninfo.make_conninfo(
        host="localhost",
        hostaddr="127.0.0.1",
        port=os.environ["PGMOAT_PORT"],
        user="alice",
        password=os.environ["PGMOAT_PASSWORD"],
        dbname="app",
        sslmode="verify-full",
        sslrootcert=os.environ["PGMOAT_CA"],
        connect_timeout="10",
    )


def work(n):
    autocommit = n % 2 == 0
    with psycopg.connect(conninfo(), autocommit=autocommit) as conn:
        for i in range(ROUNDS):
            with conn.cursor() as cur:
                cur.execute(f"SELECT %s::int + {n}", (i,), prepare=True)
                assert cur.fetchone()[0] == i + n
                cur.execute("SELECT %s::text || %s::text", (f"t{n}", str(i)), prepare=True)
                assert cur.fetchone()[0] == f"t{n}{i}"
            if not autocommit:
                conn.commit()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO items (v) VALUES (%s)", [(f"pg3-{n}-{k}",) for k in range(MANY)]
            )
        if not autocommit:
            conn.commit()
        with conn.cursor() as cur:
            with cur.copy("COPY items (v) FROM STDIN") as copy:
                for k in range(COPIED):
                    copy.write_row((f"copy-{n}-{k:03}",))
        if not autocommit:
            conn.commit()
        with conn.cursor() as cur:
            query = "COPY (SELECT v FROM items WHERE v LIKE %s ORDER BY v) TO STDOUT"
            with cur.copy(query, (f"copy-{n}-%",)) as copy:
                rows = [row[0] for row in copy.rows()]
        assert rows == [f"copy-{n}-{k:03}" for k in range(COPIED)], rows[:3]
        if not autocommit:
            conn.commit()


def main():
    errors = []

    def run(n):
        try:
            work(n)
        except Exception as e:
            errors.append(f"thread {n}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    if any(t.is_alive() for t in threads):
        errors.append("threads still running after 240 s")
    if errors:
        print("psycopg driver test failed:\n" + "\n".join(errors), file=sys.stderr)
        sys.exit(1)
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        many = conn.execute("SELECT count(*) FROM items WHERE v LIKE 'pg3-%'").fetchone()[0]
        copied = conn.execute("SELECT count(*) FROM items WHERE v LIKE 'copy-%'").fetchone()[0]
    if (many, copied) != (THREADS * MANY, THREADS * COPIED):
        print(f"psycopg driver test failed: counts {many}, {copied}", file=sys.stderr)
        sys.exit(1)
    print(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}): {THREADS} connections ok")


if __name__ == "__main__":
    main()
