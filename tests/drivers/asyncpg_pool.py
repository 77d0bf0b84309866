"""asyncpg through pgmoat in transaction mode (run by tests/drivers.rs).

asyncpg prepares every query as a named statement (__asyncpg_stmt_N__, numbered per
connection, so the same name means different SQL on different connections) and caches it on
its connection; here a pool of 20 asyncpg connections shares pgmoat's few backends, so
statements are used on backends that never saw them prepared.

Environment: PGMOAT_PORT, PGMOAT_CA (CA file for verify-full), PGMOAT_PASSWORD (alice's).
Exits non-zero with a message on the first failure.
"""

import asyncio
import os
import ssl
import sys

import asyncpg

WORKERS = 200
CONNECTIONS = 20


async def worker(pool, i):
    async with pool.acquire() as con:
        async with con.transaction():
            await con.execute("INSERT INTO items (v) VALUES ($1)", f"asyncpg-{i}")
            doubled = await con.fetchval("SELECT $1::int * 2", i)
            assert doubled == i * 2, (i, doubled)
        # Text that differs per worker, so equal statement names on different connections
        # stand for different queries.
        added = await con.fetchval(f"SELECT $1::int + {i % 7}", i)
        assert added == i + i % 7, (i, added)
        stmt = await con.prepare("SELECT $1::text || '-' || $2::int")
        for k in range(3):
            got = await stmt.fetchval(f"w{i}", k)
            assert got == f"w{i}-{k}", got
        rows = await con.fetch("SELECT generate_series(1, $1::int) AS n", 5)
        assert [r["n"] for r in rows] == [1, 2, 3, 4, 5], rows
        await con.executemany(
            "INSERT INTO items (v) VALUES ($1)", [(f"many-{i}-{k}",) for k in range(3)]
        )


async def main():
    ctx = ssl.create_default_context(cafile=os.environ["PGMOAT_CA"])
    pool = await asyncpg.create_pool(
        host="127.0.0.1",
        port=int(os.environ["PGMOAT_PORT"]),
        user="alice",
        password=os.environ["PGMOAT_PASSWORD"],
        database="app",
        ssl=ctx,
        min_size=CONNECTIONS,
        max_size=CONNECTIONS,
    )
    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker(pool, i) for i in range(WORKERS))), timeout=240
        )
        single = await pool.fetchval("SELECT count(*) FROM items WHERE v LIKE 'asyncpg-%'")
        many = await pool.fetchval("SELECT count(*) FROM items WHERE v LIKE 'many-%'")
        assert (single, many) == (WORKERS, 3 * WORKERS), (single, many)
    finally:
        await pool.close()
    print(f"asyncpg {asyncpg.__version__}: {WORKERS} workers over {CONNECTIONS} connections ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the Rust test shows this output on failure
        print(f"asyncpg driver test failed: {type(e).__name__}: {e}", file=sys.stderr)
        raise
