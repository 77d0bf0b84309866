"""Logs in with psycopg 3 (libpq underneath) and prints the session's user, or the refusal.

usage: psycopg_login.py CONNINFO
Prints "user=NAME" after a successful login, or "refused: MESSAGE" (exit 0 either way), so
the Rust test decides what was expected; any other failure exits non-zero.
"""

import sys

import psycopg


def main() -> int:
    conninfo = sys.argv[1]
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            user = conn.execute("SELECT current_user").fetchone()[0]
    except psycopg.OperationalError as e:
        print("refused: " + " ".join(str(e).split()))
        return 0
    print(f"user={user}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
