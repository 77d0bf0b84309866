#!/usr/bin/env bash
# Side-by-side benchmark: PostgreSQL direct, PgBouncer, pgmoat and a plain TCP passthrough
# (HAProxy) on the same machine, with the team's harness in ../shared/bench; regenerates
# BENCHMARKS.md and bench/tps.png.
#
#   bench/compare.sh [--rounds N] [--seconds S] [--workloads LIST] [--out DIR]
#                    [--idle N] [--idle-max N] [--harness DIR] [--latency-rounds N]
#                    [--scaling LIST] [--idle-active N] [--memory-only]
#
#   --rounds N       alternating runs per workload and target (default 3)
#   --seconds S      length of each pgbench run (default 10)
#   --workloads LIST comma separated, from run.py (default select1,select1-mtls,extended,prepared,tpcb,connect)
#   --out DIR        results and compare.log (default target/bench)
#   --idle N         idle TLS clients for the memory-per-client figure (default 2000)
#   --idle-max N     idle TLS clients held on pgmoat with a pool of 20 (default 10000)
#   --harness DIR    the shared harness (default ../shared/bench beside the repository)
#   --latency-rounds N  alternating rounds of the latency / CPU step per workload (default 5)
#   --scaling LIST   client counts for the scaling table, select1 on the poolers (default
#                    32,256,1024; empty to skip)
#   --idle-active N  also select1 with 32 active clients beside N idle TLS ones (default 10000;
#                    0 to skip)
#   --memory-only    stop after the idle-client memory step (BENCHMARKS.md is left alone)
#   --baseline REV   instead: this tree's pgmoat against the build of git revision REV (or
#                    --baseline-bin FILE), alternating on one PostgreSQL, CPU per transaction
#                    with the run-to-run spread; see bench/baseline.sh (writes baseline.md)
#
# Run as root: the harness runs PostgreSQL and PgBouncer as the postgres account. Everything
# it starts runs on free loopback ports in a temporary directory and is stopped on exit.
# HAProxy only forwards TCP to PostgreSQL (TLS stays end to end): the cost of one extra hop.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3
seconds=10
workloads=select1,select1-mtls,extended,prepared,tpcb,connect
out=$repo/target/bench
idle=2000
idle_max=10000
harness=$repo/../shared/bench
pool_size=20
latency_clients=32
latency_rounds=5
scaling=32,256,1024
idle_active=10000
memory_only=0
known_workloads=" select1 select1-mtls select1-plain extended prepared tpcb connect "

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
    case $arg in
        --baseline|--baseline-bin) exec "$repo/bench/baseline.sh" "$@" ;;
    esac
done
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
        --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
        --workloads) workloads=${2:?--workloads needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --idle) idle=${2:?--idle needs a value}; shift 2 ;;
        --idle-max) idle_max=${2:?--idle-max needs a value}; shift 2 ;;
        --harness) harness=${2:?--harness needs a value}; shift 2 ;;
        --latency-rounds) latency_rounds=${2:?--latency-rounds needs a value}; shift 2 ;;
        --scaling) scaling=${2?--scaling needs a value (may be empty)}; shift 2 ;;
        --idle-active) idle_active=${2:?--idle-active needs a value}; shift 2 ;;
        --memory-only) memory_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case $idle_active in ''|*[!0-9]*) echo "compare.sh: --idle-active is not a number: $idle_active" >&2; exit 2 ;; esac
for c in ${scaling//,/ }; do
    case $c in ''|*[!0-9]*|0) echo "compare.sh: --scaling is not a list of client counts: $scaling" >&2; exit 2 ;; esac
done
for n in "$rounds" "$seconds" "$idle" "$idle_max" "$latency_rounds"; do
    case $n in ''|*[!0-9]*|0) echo "compare.sh: not a positive number: $n" >&2; exit 2 ;; esac
done
IFS=, read -r -a workload_list <<< "$workloads"
for w in "${workload_list[@]}"; do
    case $known_workloads in
        *" $w "*) ;;
        *) echo "compare.sh: unknown workload: $w (known:$known_workloads)" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "compare.sh: run as root (PostgreSQL and PgBouncer run as the postgres account)" >&2
    exit 2
fi
harness=$(cd "$harness" 2>/dev/null && pwd) || { echo "compare.sh: no harness at $harness" >&2; exit 2; }
for f in pg.sh pgbouncer.sh run.py; do
    [ -f "$harness/$f" ] || { echo "compare.sh: $harness/$f is missing" >&2; exit 2; }
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
log=$out/compare.log
: > "$log"
exec > >(tee -a "$log") 2>&1

say() { printf '\n== %s  [%s]\n' "$*" "$(date +%H:%M:%S)"; }
started=$(date +%s)
echo "bench/compare.sh --rounds $rounds --seconds $seconds --workloads $workloads --out $out --idle $idle --idle-max $idle_max"
echo "harness: $harness"

# --- everything started below is stopped here, on success and on failure ---------------------
work=
pgmoat_pid=
pt_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$work" ]; then
        say "stopping what compare.sh started"
        if [ -n "$pgmoat_pid" ] && kill -0 "$pgmoat_pid" 2>/dev/null; then
            kill "$pgmoat_pid"
            wait "$pgmoat_pid" 2>/dev/null
        fi
        [ -z "$pt_pid" ] && pt_pid=$(cat "$work/haproxy/haproxy.pid" 2>/dev/null)
        if [ -n "$pt_pid" ] && kill -0 "$pt_pid" 2>/dev/null; then
            kill "$pt_pid"      # HAProxy runs detached (-D): wait for it by polling
            for _ in $(seq 50); do
                kill -0 "$pt_pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
        if [ -f "$work/pgb/pgbouncer.pid" ]; then
            local pgb_pid
            pgb_pid=$(cat "$work/pgb/pgbouncer.pid" 2>/dev/null)
            "$harness/pgbouncer.sh" stop "$work/pgb"
            for _ in $(seq 50); do
                { [ -z "$pgb_pid" ] || ! kill -0 "$pgb_pid" 2>/dev/null; } && break
                sleep 0.1
            done
        fi
        [ -f "$work/pg/PG_VERSION" ] && "$harness/pg.sh" stop "$work/pg"
        mkdir -p "$out/logs"
        cp -f "$work/pgmoat/pgmoat.log" "$work/pgb/pgbouncer.log" "$work/haproxy/haproxy.log" "$out/logs/" 2>/dev/null
        cp -f "$work/pg/log" "$out/logs/postgresql.log" 2>/dev/null
        rm -rf "$work"
    fi
    if [ "$rc" = 0 ]; then
        echo "compare.sh: done in $(( $(date +%s) - started )) s"
    else
        echo "compare.sh: FAILED (exit $rc) after $(( $(date +%s) - started )) s; logs in $out/logs, $log" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build, tools, Python ---------------------------------------------------------------------
say "cargo build --release --locked"
(cd "$repo" && cargo build --release --locked)
pgmoat=$repo/target/release/pgmoat

need_pkgs=()
[ -x /usr/sbin/pgbouncer ] || need_pkgs+=(pgbouncer)
[ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
{ command -v initdb >/dev/null || [ -x /usr/lib/postgresql/15/bin/initdb ]; } || need_pkgs+=(postgresql-15)
{ command -v pgbench >/dev/null && command -v psql >/dev/null; } || need_pkgs+=(postgresql-client-15)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "apt-get install ${need_pkgs[*]}"
    # Keep Debian's packaged services (PgBouncer on 6432, a cluster on 5432, HAProxy) from starting.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
    # Should the packaged HAProxy service have started anyway, stop it: only ours runs here.
    if [[ " ${need_pkgs[*]} " == *" haproxy "* ]] && [ -s /run/haproxy.pid ] \
        && kill -0 "$(head -n 1 /run/haproxy.pid)" 2>/dev/null; then
        /etc/init.d/haproxy stop || echo "compare.sh: could not stop the packaged haproxy service" >&2
    fi
fi

venv=$repo/target/bench-venv
reqs=$repo/bench/requirements.txt
if ! cmp -s "$reqs" "$venv/.requirements.txt" 2>/dev/null; then
    say "Python venv $venv"
    pybase=/usr/bin/python3
    [ -x "$pybase" ] || pybase=$(command -v python3)
    rm -rf "$venv"
    "$pybase" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/.requirements.txt"
fi
py=$venv/bin/python

# --- limits, ports, temporary directory -------------------------------------------------------
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 1048576 ]; then
    ulimit -Hn 1048576 2>/dev/null || true     # root may raise the hard limit, a container may not
fi
ulimit -n "$(ulimit -Hn)"
echo "open files: ulimit -n $(ulimit -n)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -le $((idle_max + 100)) ]; then
    echo "compare.sh: ulimit -n $(ulimit -n) is too low for --idle-max $idle_max" >&2
    exit 1
fi

taken_ports=" "
free_port() {   # a loopback port nobody listens on, below the ephemeral range
    local p=$1
    while ss -Hltn "sport = :$p" | grep -q . || [[ $taken_ports == *" $p "* ]]; do
        p=$((p + 1))
    done
    taken_ports+="$p "
    echo "$p"
}
pg_port=$(free_port 25432)
pgb_port=$(free_port 25532)
moat_port=$(free_port 25632)
pt_port=$(free_port 25732)
moat_metrics_port=$(free_port 25832)
echo "ports: PostgreSQL $pg_port, PgBouncer $pgb_port, pgmoat $moat_port, TCP passthrough $pt_port"

work=$(mktemp -d /tmp/pgmoat-bench.XXXXXX)
chmod 755 "$work"              # the postgres account reads the PKI and owns pg/ and pgb/ below
pki=$work/pki

# --- PKI, made with pgmoat's own certificate tool ---------------------------------------------
say "PKI with pgmoat certs ($pki)"
"$pgmoat" certs init --out "$pki" --cn "bench CA"
"$pgmoat" certs issue server --san DNS:localhost,IP:127.0.0.1 --cn localhost --out "$pki"
"$pgmoat" certs issue pooler --san DNS:localhost,IP:127.0.0.1 --cn localhost --out "$pki"
"$pgmoat" certs issue client --client --cn bench --out "$pki"
# The harness reads PKIDIR/ca.crt (pgmoat certs keeps the CA in PKIDIR/ca/). pg.sh copies
# server.* into the data directory for postgres; pgbouncer.sh makes pooler.key readable for
# PgBouncer (which runs as postgres); libpq (as root) wants client.key 0600, as written.
cp "$pki/ca/ca.crt" "$pki/ca.crt"
chmod 755 "$pki"
chmod 644 "$pki"/*.crt
"$pgmoat" certs check "$pki" --ca "$pki/ca.crt"

wait_listening() {   # port pid log name: until something accepts on the port, or the process died
    local _
    for _ in $(seq 100); do
        (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { cat "$3"; echo "$4 exited" >&2; exit 1; }
        sleep 0.1
    done
    cat "$3"; echo "$4 does not accept connections on port $1" >&2; exit 1
}

# --- PostgreSQL, PgBouncer, pgmoat, HAProxy -----------------------------------------------------
say "PostgreSQL on $pg_port (pg.sh: initdb, pgbench -i -s 10)"
"$harness/pg.sh" start "$work/pg" "$pg_port" "$pki"

say "PgBouncer on $pgb_port (pgbouncer.sh)"
pgb_pid=$("$harness/pgbouncer.sh" start "$work/pgb" "$pgb_port" "$pg_port" "$pki" | tail -n 1)
echo "PgBouncer pid $pgb_pid"

say "pgmoat on $moat_port"
mkdir -p "$work/pgmoat"
echo '"bench" "bench"' > "$work/pgmoat/userlist.txt"
cat > "$work/pgmoat/pgmoat.toml" <<TOML
# The same setup as the harness's pgbouncer.ini.
listen_addr = "127.0.0.1"
listen_port = $moat_port
pool_mode = "transaction"
default_pool_size = $pool_size
max_client_conn = 20000
auth_type = "scram-sha-256"
auth_file = "$work/pgmoat/userlist.txt"
client_tls_sslmode = "require"
client_tls_cert_file = "$pki/pooler.crt"
client_tls_key_file = "$pki/pooler.key"
client_tls_ca_file = "$pki/ca.crt"
server_tls_sslmode = "verify-full"
server_tls_ca_file = "$pki/ca.crt"
# Scraped only by the idle-client step (pgmoat_heap_in_use_bytes: heap accounting).
metrics_addr = "127.0.0.1:$moat_metrics_port"

[databases]
bench = "host=localhost port=$pg_port dbname=bench"
TOML
cat "$work/pgmoat/pgmoat.toml"
"$pgmoat" check-config "$work/pgmoat/pgmoat.toml" > /dev/null
# Per-login info lines off, as PgBouncer's log_connections = 0.
RUST_LOG=warn "$pgmoat" run --config "$work/pgmoat/pgmoat.toml" > "$work/pgmoat/pgmoat.log" 2>&1 &
pgmoat_pid=$!
wait_listening "$moat_port" "$pgmoat_pid" "$work/pgmoat/pgmoat.log" pgmoat
echo "pgmoat pid $pgmoat_pid"

say "TCP passthrough (HAProxy) on $pt_port"
# No TLS termination, no parsing, no pooling: it forwards bytes, so clients run TLS and SCRAM end
# to end with PostgreSQL. maxconn 4000 is plenty for the load runs (32 clients) and keeps the fd
# limit HAProxy sets itself (about 2 x maxconn) within ulimit -n. No log lines in the proxies:
# no line per connection; startup warnings and alerts land in haproxy.log.
mkdir -p "$work/haproxy"
cat > "$work/haproxy/haproxy.cfg" <<CFG
global
    maxconn 4000
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend passthrough
    bind 127.0.0.1:$pt_port
    default_backend postgresql
backend postgresql
    server pg 127.0.0.1:$pg_port
CFG
cat "$work/haproxy/haproxy.cfg"
haproxy -c -f "$work/haproxy/haproxy.cfg"
haproxy -D -f "$work/haproxy/haproxy.cfg" -p "$work/haproxy/haproxy.pid" > "$work/haproxy/haproxy.log" 2>&1 \
    || { cat "$work/haproxy/haproxy.log"; echo "haproxy failed to start" >&2; exit 1; }
for _ in $(seq 50); do [ -s "$work/haproxy/haproxy.pid" ] && break; sleep 0.1; done
pt_pid=$(head -n 1 "$work/haproxy/haproxy.pid")
wait_listening "$pt_port" "$pt_pid" "$work/haproxy/haproxy.log" haproxy
echo "HAProxy pid $pt_pid"

export PGPASSWORD=bench
names=(direct pgbouncer pgmoat passthrough)
ports=("$pg_port" "$pgb_port" "$moat_port" "$pt_port")
proxy_pids=("" "$pgb_pid" "$pgmoat_pid" "$pt_pid")   # the process between client and PostgreSQL
for i in "${!names[@]}"; do   # each target answers over verify-full TLS with the client certificate
    psql "host=127.0.0.1 port=${ports[$i]} user=bench dbname=bench sslmode=verify-full sslrootcert=$pki/ca.crt sslcert=$pki/client.crt sslkey=$pki/client.key" \
        -Atc "select '${names[$i]}: ' || count(*) || ' rows in pgbench_accounts' from pgbench_accounts"
done

# --- machine and versions -----------------------------------------------------------------------
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no -- . ':!BENCHMARKS.md' ':!bench/tps.png' 2>/dev/null)" ]; then
    rev="$rev-dirty"
fi
B_NPROC=$(nproc)
B_CPU=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
B_KERNEL=$(uname -sr)
B_MEM_KIB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
B_PG=$(psql "host=$work/pg port=$pg_port user=bench dbname=bench" -Atc 'show server_version')
B_PGBENCH=$(pgbench --version)
B_PGBOUNCER=$(/usr/sbin/pgbouncer --version | head -n 1)
B_PGMOAT=$("$pgmoat" --version)
B_HAPROXY=$(haproxy -v | head -n 1 | sed 's/ - https:.*//')
B_REV=$rev
B_DATE=$(date -u +'%Y-%m-%d %H:%M UTC')
export B_NPROC B_CPU B_KERNEL B_MEM_KIB B_PG B_PGBENCH B_PGBOUNCER B_PGMOAT B_HAPROXY B_REV B_DATE
printf '%s\n' "nproc $B_NPROC" "cpu $B_CPU" "kernel $B_KERNEL" "memory $B_MEM_KIB kB" \
    "PostgreSQL $B_PG" "$B_PGBENCH" "$B_PGBOUNCER" "$B_HAPROXY" "$B_PGMOAT ($B_REV)"

# --- memory per idle TLS client (fresh poolers, before the load runs) ---------------------------
idle_run() {   # name pid port n [metrics URL] -> one line of idle_heap.py output in $out/idle-name-n.txt
    local file=$out/idle-$1-$4.txt
    say "$4 idle TLS clients on $1 (bench/idle_heap.py: RSS${5:+ and heap accounting})"
    "$py" "$repo/bench/idle_heap.py" --pid "$2" --port "$3" --n "$4" ${5:+--metrics "$5"} | tee "$file"
    sleep 2    # let the pooler close the clients before the next step
}
moat_metrics=http://127.0.0.1:$moat_metrics_port/metrics
idle_run pgbouncer "$pgb_pid" "$pgb_port" "$idle"
idle_run pgmoat "$pgmoat_pid" "$moat_port" "$idle" "$moat_metrics"
idle_run pgmoat "$pgmoat_pid" "$moat_port" "$idle_max" "$moat_metrics"
if [ "$memory_only" = 1 ]; then
    say "--memory-only: done (results in $out)"
    exit 0
fi

# --- throughput: run.py, alternating order, direct is the reference -----------------------------
say "run.py: $rounds rounds x $seconds s, workloads $workloads"
"$py" "$harness/run.py" --pki "$pki" --rounds "$rounds" --seconds "$seconds" \
    --workloads "$workloads" --json "$out/run.json" \
    "direct=127.0.0.1:$pg_port" "pgbouncer=127.0.0.1:$pgb_port" "pgmoat=127.0.0.1:$moat_port" \
    "passthrough=127.0.0.1:$pt_port" \
    | tee "$out/run-table.md"

# --- latency and CPU per transaction by workload, and scaling: bench/latency.py ---------------
# Every pgbench transaction logged (-l): p50/p99/p99.9 per run; the proxy's utime + stime around
# each run. The same workloads as the throughput table (but connect), in alternating rounds.
lat_workloads=()
for w in select1 select1-mtls extended prepared tpcb; do
    [[ ",$workloads," == *",$w,"* || $w == select1 ]] && lat_workloads+=("$w")
done
lat_workloads=$(IFS=,; echo "${lat_workloads[*]}")
# PostgreSQL logs its own statements over 5 ms from here on, so a run whose tail is
# PostgreSQL's (cold pages, autovacuum) shows as such instead of being charged to the proxy.
psql -h "$work/pg" -p "$pg_port" -U bench -d postgres -qAt \
    -c "ALTER SYSTEM SET log_min_duration_statement = 5" -c "SELECT pg_reload_conf()" > /dev/null
say "latency.py: $lat_workloads, $latency_rounds rounds x $seconds s; scaling ${scaling:-none}; $idle_active idle + 32"
"$py" "$repo/bench/latency.py" --harness "$harness" --pki "$pki" --json "$out/latency.json" \
    --rounds "$latency_rounds" --seconds "$seconds" --workloads "$lat_workloads" \
    --scaling "$scaling" --idle-active "$idle_active" --pg-log "$work/pg/log" \
    "direct=$pg_port" "pgbouncer=$pgb_port:$pgb_pid" "pgmoat=$moat_port:$pgmoat_pid" \
    "passthrough=$pt_port:$pt_pid" | tee "$out/latency.log"

# --- the small json of memory and latency figures, then the report ------------------------------
export B_OUT=$out B_IDLE=$idle B_IDLE_MAX=$idle_max B_POOL=$pool_size B_ROUNDS=$rounds \
    B_LAT_ROUNDS=$latency_rounds B_SECONDS=$seconds B_WORKLOADS=$workloads B_LAT_CLIENTS=$latency_clients B_TARGETS="${names[*]}"
"$py" - <<'PY'
import glob, json, os, re, statistics
e = os.environ
out = e["B_OUT"]

def idle(name, n):
    line = open(f"{out}/idle-{name}-{n}.txt").read().strip().splitlines()[-1]
    kv = dict(re.findall(r"(\w+)=([\d.]+)", line))
    return {"connections": int(kv["connections"]), "tls_in_use": int(kv["tls_in_use"]),
            "rss_before_kib": int(kv["rss_before_kib"]), "rss_after_kib": int(kv["rss_after_kib"]),
            "kib_per_idle_conn": float(kv["kib_per_idle_conn"]), "connect_rate": float(kv["connect_rate"]),
            # pgmoat only: its own heap accounting (None for PgBouncer)
            "heap_kib_per_idle_conn": float(kv["heap_kib_per_idle_conn"]) if "heap_kib_per_idle_conn" in kv else None}

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

perf = json.load(open(f"{out}/latency.json"))
select1 = perf["workloads"]["select1"]
latency = {name: {"rounds": v["runs"], "p50_ms": v["p50_ms"], "p99_ms": v["p99_ms"],
                  "mean_ms": statistics.median(r["mean_ms"] for r in v["runs"])}
           for name, v in select1.items()}
cpus = {name: {"rounds": v["runs"],
               **{k: median(r.get(k) for r in v["runs"])
                  for k in ("proxy_user_us", "proxy_sys_us", "proxy_total_us", "machine_us", "machine_busy_pct")}}
        for name, v in select1.items()}

extra = {
    "config": {"rounds": int(e["B_ROUNDS"]), "seconds": int(e["B_SECONDS"]), "workloads": e["B_WORKLOADS"],
               "idle": int(e["B_IDLE"]), "idle_max": int(e["B_IDLE_MAX"]), "pool_size": int(e["B_POOL"]),
               "latency_clients": int(e["B_LAT_CLIENTS"]), "latency_rounds": int(e["B_LAT_ROUNDS"])},
    "machine": {"nproc": int(e["B_NPROC"]), "cpu": e["B_CPU"], "kernel": e["B_KERNEL"],
                "mem_kib": int(e["B_MEM_KIB"]), "postgresql": e["B_PG"], "pgbench": e["B_PGBENCH"],
                "pgbouncer": e["B_PGBOUNCER"], "haproxy": e["B_HAPROXY"], "pgmoat": e["B_PGMOAT"], "revision": e["B_REV"],
                "date": e["B_DATE"]},
    "idle": {"pgbouncer": idle("pgbouncer", e["B_IDLE"]), "pgmoat": idle("pgmoat", e["B_IDLE"])},
    "idle_max": {"pgmoat": idle("pgmoat", e["B_IDLE_MAX"])},
    "latency": latency,
    "cpu": cpus,   # select1 (pgbench -S) per transaction, from the latency runs; medians over rounds
    "perf": perf,  # latency.py: every workload and run, and the scaling runs
}
json.dump(extra, open(f"{out}/extra.json", "w"), indent=1)
for name, v in latency.items():
    print(f"# latency {name}: p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms (median of {len(v['rounds'])})")
for name, c in cpus.items():
    proxy = "" if c["proxy_total_us"] is None else \
        f"proxy {c['proxy_user_us']:.1f} user + {c['proxy_sys_us']:.1f} sys us/txn, "
    print(f"# cpu {name}: {proxy}machine {c['machine_us']:.1f} us/txn, {c['machine_busy_pct']:.0f} % busy")
PY

say "report: BENCHMARKS.md, bench/tps.png"
"$py" "$repo/bench/report.py" --run "$out/run.json" --extra "$out/extra.json" \
    --md "$repo/BENCHMARKS.md" --png "$repo/bench/tps.png"
cp "$repo/BENCHMARKS.md" "$out/BENCHMARKS.md"
