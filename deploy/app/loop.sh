#!/bin/sh
# The example application: every few seconds, one psql connection through pgmoat (verify-full
# TLS with a client certificate, all in DATABASE_URL) that shows who it is on PostgreSQL and
# how pgmoat's own connection to PostgreSQL is encrypted.
set -eu
: "${DATABASE_URL:?set DATABASE_URL}"
trap 'exit 0' TERM INT
while :; do
    psql "$DATABASE_URL" -XAtq -F ' ' -c \
        "select now()::time(0), current_user, 'pgmoat->postgres:', version, cipher, client_dn
           from pg_stat_ssl where pid = pg_backend_pid()" ||
        echo "app: query failed" >&2
    # In the background, so a stop signal is handled at once rather than after the sleep.
    sleep "${INTERVAL:-5}" &
    wait $!
done
