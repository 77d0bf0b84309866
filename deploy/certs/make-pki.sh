#!/bin/sh
# The PKI of the compose example, made with pgmoat's own cert tool. The CA key stays in its own
# directory (volume); each container's directory gets only what that container needs, owned by
# the user it runs as. Safe to run again: what exists is kept.
#
#   make-pki.sh                 create whatever is missing (the compose `certs` job)
#   make-pki.sh renew NAME...   issue NAME again (postgres, pgmoat, pgmoat-client, app); then
#                               reload the container that uses it (SIGHUP)
#   make-pki.sh revoke NAME     revoke NAME's certificate (postgres, pgmoat, pgmoat-client,
#                               app) in the CA's CRL and hand pgmoat the new CRL; then reload
#                               pgmoat (SIGHUP) and `renew NAME` to give NAME a new one. pgmoat
#                               checks app's and postgres' certificates against it; the
#                               example's PostgreSQL has no ssl_crl_file for pgmoat-client
#   make-pki.sh crl             re-sign the CRL with a fresh next update (every run does it
#                               too; from cron if the stack runs longer than PKI_CRL_DAYS)
#   make-pki.sh check [ARGS]    `pgmoat certs check` over every issued certificate and the
#                               CRL; exit code 0 ok, 1 warning, 2 critical (ARGS: --warn-days N)
#
# Everything below can be changed from the environment, so the same topology can be built
# without Docker (tests point the directories at a temp dir and PGMOAT at the built binary).
set -eu

PGMOAT=${PGMOAT:-pgmoat}
CA_DIR=${PKI_CA_DIR:-/pki/ca}
POSTGRES_DIR=${PKI_POSTGRES_DIR:-/pki/postgres}
PGMOAT_DIR=${PKI_PGMOAT_DIR:-/pki/pgmoat}
APP_DIR=${PKI_APP_DIR:-/pki/app}
# The PostgreSQL role that logs in with pg_hba `cert`: the CN of pgmoat's client certificate
# towards PostgreSQL, and of the app's client certificate towards pgmoat (auth_type = cert).
DB_USER=${PKI_DB_USER:-app}
POSTGRES_SANS=${PKI_POSTGRES_SANS:-DNS:postgres}
PGMOAT_SANS=${PKI_PGMOAT_SANS:-DNS:pgmoat,DNS:localhost}
DAYS=${PKI_DAYS:-365}
# The CRL's validity. pgmoat refuses every client certificate once the CRL is past its next
# update (tls_crl_expired = refuse), so something must re-sign it before then: each run of
# this job does, and `make-pki.sh crl` does it alone.
CRL_DAYS=${PKI_CRL_DAYS:-90}
# Who reads each directory: the postgres image runs as uid 999, pgmoat's image as 10001, the
# example app (postgres image, user postgres) as 999. Ownership is only changed when run as
# root (PKI_CHOWN=no turns it off).
POSTGRES_UID=${PKI_POSTGRES_UID:-999}
PGMOAT_UID=${PKI_PGMOAT_UID:-10001}
APP_UID=${PKI_APP_UID:-999}
CHOWN=${PKI_CHOWN:-auto}

CA_CERT="$CA_DIR/ca/ca.crt"
CA_KEY="$CA_DIR/ca/ca.key"
CA_CRL="$CA_DIR/ca/ca.crl"

usage() {
    echo "usage: make-pki.sh | make-pki.sh renew NAME... | make-pki.sh revoke NAME |" >&2
    echo "       make-pki.sh crl | make-pki.sh check [ARGS]" >&2
    echo "NAME: postgres, pgmoat, pgmoat-client or app" >&2
    exit 2
}

# Names to issue again even though they exist (renew, or a new CA).
RENEW=""

# issue DIR NAME [pgmoat certs issue options]: issues NAME into DIR unless DIR/NAME.crt and
# its key exist and NAME is not being renewed. --force replaces leftovers of a broken run.
issue() {
    dir=$1
    name=$2
    shift 2
    case " $RENEW " in
        *" $name "* | *" all "*) ;;
        *)
            if [ -s "$dir/$name.crt" ] && [ -s "$dir/$name.key" ]; then
                echo "certs: keeping $dir/$name.crt"
                return 0
            fi
            ;;
    esac
    mkdir -p "$dir"
    "$PGMOAT" certs issue "$name" --out "$dir" --ca-dir "$CA_DIR/ca" --days "$DAYS" --force "$@"
}

# hand_over UID DIR: the reading container's user owns DIR; keys stay 0600, the rest 0644.
hand_over() {
    case "$CHOWN" in
        no) return 0 ;;
        auto) [ "$(id -u)" = 0 ] || return 0 ;;
    esac
    chown -R "$1:$1" "$2"
}

# dir_of NAME: the directory NAME's certificate lives in.
dir_of() {
    case "$1" in
        postgres) echo "$POSTGRES_DIR" ;;
        pgmoat | pgmoat-client) echo "$PGMOAT_DIR" ;;
        app) echo "$APP_DIR" ;;
        *) usage ;;
    esac
}

# publish_crl: pgmoat checks client certificates against the CA's CRL
# (client_tls_crl_file = certs/ca/ca.crl); it gets a copy, like the CA certificate.
publish_crl() {
    mkdir -p "$PGMOAT_DIR/ca"
    # Copy then rename: a reload (watch_files) never reads half a CRL.
    cp "$CA_CRL" "$PGMOAT_DIR/ca/.ca.crl.tmp"
    mv -f "$PGMOAT_DIR/ca/.ca.crl.tmp" "$PGMOAT_DIR/ca/ca.crl"
    hand_over "$PGMOAT_UID" "$PGMOAT_DIR"
}

sign_crl() {
    "$PGMOAT" certs crl --ca-dir "$CA_DIR/ca" --days "$CRL_DAYS"
}

make_all() {
    mkdir -p "$CA_DIR"
    chmod 0700 "$CA_DIR"
    if [ ! -s "$CA_KEY" ] || [ ! -s "$CA_CERT" ]; then
        "$PGMOAT" certs init --out "$CA_DIR" --force
        # Certificates from an earlier CA would no longer verify.
        RENEW="all"
    else
        echo "certs: keeping the CA in $CA_DIR/ca"
    fi

    # PostgreSQL: its server certificate (SAN = the host name pgmoat connects to) and the CA
    # that pg_hba `cert` checks pgmoat's client certificate against.
    issue "$POSTGRES_DIR" postgres --san "$POSTGRES_SANS"
    cp "$CA_CERT" "$POSTGRES_DIR/ca.crt"
    # The image's superuser password, made here so none is written in the compose file. Only
    # the local socket and `hostssl ... scram-sha-256` lines can use it.
    if [ ! -s "$POSTGRES_DIR/superuser-password" ]; then
        (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$POSTGRES_DIR/superuser-password")
    fi
    hand_over "$POSTGRES_UID" "$POSTGRES_DIR"

    # pgmoat: laid out like `pgmoat certs`' default certs/ directory, mounted as
    # /etc/pgmoat/certs: its server certificate for clients, its client certificate for
    # PostgreSQL, and the CA for both directions.
    issue "$PGMOAT_DIR" pgmoat --san "$PGMOAT_SANS"
    issue "$PGMOAT_DIR" pgmoat-client --client --cn "$DB_USER"
    mkdir -p "$PGMOAT_DIR/ca"
    cp "$CA_CERT" "$PGMOAT_DIR/ca/ca.crt"
    hand_over "$PGMOAT_UID" "$PGMOAT_DIR"

    # The app: its client certificate (CN = the user it logs in as) and the CA for
    # sslmode=verify-full.
    issue "$APP_DIR" app --client --cn "$DB_USER"
    cp "$CA_CERT" "$APP_DIR/ca.crt"
    hand_over "$APP_UID" "$APP_DIR"

    # The CRL (empty until something is revoked), re-signed on every run.
    sign_crl
    publish_crl
}

case "${1:-}" in
    "")
        make_all
        ;;
    renew)
        shift
        [ "$#" -gt 0 ] || usage
        for name in "$@"; do
            case "$name" in
                postgres | pgmoat | pgmoat-client | app) RENEW="$RENEW $name" ;;
                *) usage ;;
            esac
        done
        make_all
        echo "certs: renewed:$RENEW; now reload their users, e.g. docker compose kill -s HUP pgmoat"
        ;;
    revoke)
        shift
        [ "$#" -eq 1 ] || usage
        dir=$(dir_of "$1")
        "$PGMOAT" certs revoke "$1" --out "$dir" --ca-dir "$CA_DIR/ca" --days "$CRL_DAYS"
        publish_crl
        echo "certs: revoked $1; now reload pgmoat (docker compose kill -s HUP pgmoat) and issue a new one (renew $1)"
        ;;
    crl)
        sign_crl
        publish_crl
        ;;
    check)
        shift
        exec "$PGMOAT" certs check --ca "$CA_CERT" "$@" "$POSTGRES_DIR" "$PGMOAT_DIR" "$APP_DIR"
        ;;
    *)
        usage
        ;;
esac
