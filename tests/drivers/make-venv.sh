#!/usr/bin/env bash
# Creates (or reuses) the Python venv the driver tests run in: make-venv.sh VENV_DIR.
# Idempotent: a venv made from the same requirements.txt that imports every package is kept.
# Run under `flock` when several processes may call it at once (tests/drivers.rs does).
set -euo pipefail
venv="$1"
here="$(cd "$(dirname "$0")" && pwd)"
requirements="$here/requirements.txt"
stamp="$venv/pgmoat-requirements.txt"

if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp" \
    && "$venv/bin/python" -c 'import asyncpg, psycopg, psycopg_pool, prometheus_client, kubernetes_validate, yaml' 2>/dev/null; then
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "make-venv: python3 is not installed" >&2
    exit 1
fi
rm -rf "$venv"
python3 -m venv "$venv" || {
    echo "make-venv: 'python3 -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
}
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" || {
    echo "make-venv: pip could not install $requirements (is PyPI reachable?)" >&2
    exit 1
}
"$venv/bin/python" -c 'import asyncpg, psycopg, psycopg_pool, prometheus_client, kubernetes_validate, yaml'
cp "$requirements" "$stamp"
