#!/usr/bin/env bash
# pgmoat against an earlier build of itself, in one run: the same PostgreSQL, the same config,
# both pgmoats side by side, pgbench alternating between them round by round. Reports the CPU
# each pgmoat process spends per transaction (utime + stime from /proc over the run, divided by
# the transactions pgbench completed) and the throughput, with the median and the min-max of the
# rounds, so a difference can be read against the run-to-run spread. Called by
# `bench/compare.sh --baseline REV`; writes $OUT/baseline.md and $OUT/baseline.json.
#
#   bench/baseline.sh --baseline REV|--baseline-bin FILE [--rounds N] [--seconds S]
#                     [--workloads LIST] [--out DIR] [--harness DIR]
#
#   --baseline REV      a git revision (built in a worktree under target/), e.g. main~5
#   --baseline-bin FILE an already built pgmoat binary instead
#   --rounds N          alternating rounds (default 5)
#   --seconds S         length of each pgbench run (default 10)
#   --workloads LIST    from select1,extended,prepared,tpcb (default all four)
#   --out DIR           default target/bench
#   --harness DIR       the shared harness (default ../shared/bench beside the repository)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=5
seconds=10
workloads=select1,extended,prepared,tpcb
out=$repo/target/bench
harness=$repo/../shared/bench
baseline_rev=
baseline_bin=

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --baseline) baseline_rev=${2:?--baseline needs a revision}; shift 2 ;;
        --baseline-bin) baseline_bin=${2:?--baseline-bin needs a file}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        --seconds) seconds=${2:?}; shift 2 ;;
        --workloads) workloads=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --harness) harness=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "baseline.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -z "$baseline_rev$baseline_bin" ]; then
    echo "baseline.sh: give --baseline REV or --baseline-bin FILE" >&2; exit 2
fi
for n in "$rounds" "$seconds"; do
    case $n in ''|*[!0-9]*|0) echo "baseline.sh: not a positive number: $n" >&2; exit 2 ;; esac
done
declare -A flags=(
    [select1]="-n -S -c 32 -j 2"
    [extended]="-n -S -M extended -c 32 -j 2"
    [prepared]="-n -S -M prepared -c 32 -j 2"
    [tpcb]="-n -c 16 -j 2"
)
IFS=, read -r -a workload_list <<< "$workloads"
for w in "${workload_list[@]}"; do
    [ -n "${flags[$w]:-}" ] || { echo "baseline.sh: unknown workload: $w" >&2; exit 2; }
done
if [ "$(id -u)" != 0 ]; then
    echo "baseline.sh: run as root (PostgreSQL runs as the postgres account)" >&2; exit 2
fi
harness=$(cd "$harness" 2>/dev/null && pwd) || { echo "baseline.sh: no harness at $harness" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
say() { printf '\n== %s  [%s]\n' "$*" "$(date +%H:%M:%S)"; }

work=
pids=()
cleanup() {
    local rc=$?
    trap - EXIT
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    [ -n "$work" ] && [ -f "$work/pg/PG_VERSION" ] && "$harness/pg.sh" stop "$work/pg"
    [ -n "$work" ] && rm -rf "$work"
    [ -n "${worktree:-}" ] && git -C "$repo" worktree remove --force "$worktree" 2>/dev/null
    [ "$rc" = 0 ] || echo "baseline.sh: FAILED (exit $rc)" >&2
    exit "$rc"
}
trap cleanup EXIT

say "cargo build --release --locked (this tree)"
(cd "$repo" && cargo build --release --locked)
current=$repo/target/release/pgmoat
if [ -n "$baseline_rev" ]; then
    rev=$(git -C "$repo" rev-parse --short "$baseline_rev")
    worktree=$repo/target/baseline-src
    git -C "$repo" worktree remove --force "$worktree" 2>/dev/null || true
    say "building the baseline $rev in $worktree"
    git -C "$repo" worktree add --detach "$worktree" "$rev"
    (cd "$worktree" && CARGO_TARGET_DIR=$repo/target/baseline cargo build --release --locked)
    baseline_bin=$repo/target/baseline/release/pgmoat
    baseline_name="$rev"
else
    baseline_name=$(basename "$baseline_bin")
fi
current_name=$(git -C "$repo" rev-parse --short HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock)" ]; then
    current_name="$current_name-dirty"
fi

work=$(mktemp -d /tmp/pgmoat-baseline.XXXXXX)
chmod 755 "$work"
pki=$work/pki
"$current" certs init --out "$pki" --cn "bench CA" > /dev/null
"$current" certs issue server --san DNS:localhost,IP:127.0.0.1 --cn localhost --out "$pki" > /dev/null
"$current" certs issue pooler --san DNS:localhost,IP:127.0.0.1 --cn localhost --out "$pki" > /dev/null
cp "$pki/ca/ca.crt" "$pki/ca.crt"
chmod 755 "$pki"; chmod 644 "$pki"/*.crt

free_port() {
    local p=$1
    while ss -Hltn "sport = :$p" | grep -q .; do p=$((p + 1)); done
    echo "$p"
}
pg_port=$(free_port 26432)
say "PostgreSQL on $pg_port"
"$harness/pg.sh" start "$work/pg" "$pg_port" "$pki"

start_pgmoat() {   # name binary port -> pid
    local dir=$work/$1
    mkdir -p "$dir"
    echo '"bench" "bench"' > "$dir/userlist.txt"
    cat > "$dir/pgmoat.toml" <<TOML
listen_addr = "127.0.0.1"
listen_port = $3
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 2000
auth_type = "scram-sha-256"
auth_file = "$dir/userlist.txt"
client_tls_sslmode = "require"
client_tls_cert_file = "$pki/pooler.crt"
client_tls_key_file = "$pki/pooler.key"
server_tls_sslmode = "verify-full"
server_tls_ca_file = "$pki/ca.crt"

[databases]
bench = "host=localhost port=$pg_port dbname=bench"
TOML
    RUST_LOG=warn "$2" run --config "$dir/pgmoat.toml" > "$dir/pgmoat.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        (exec 3<> "/dev/tcp/127.0.0.1/$3") 2>/dev/null && { echo "$pid"; return; }
        kill -0 "$pid" 2>/dev/null || { cat "$dir/pgmoat.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "pgmoat $1 did not start" >&2; exit 1
}
new_port=$(free_port 26532)
old_port=$(free_port $((new_port + 1)))
new_pid=$(start_pgmoat new "$current" "$new_port"); pids+=("$new_pid")
old_pid=$(start_pgmoat old "$baseline_bin" "$old_port"); pids+=("$old_pid")
echo "new $current_name on $new_port (pid $new_pid), baseline $baseline_name on $old_port (pid $old_pid)"

ticks() { local s f; s=$(< "/proc/$1/stat"); read -r -a f <<< "${s##*) }"; echo $(( f[11] + f[12] )); }
export PGPASSWORD=bench
results=$out/baseline-runs.txt
: > "$results"
names=(new old); ports=("$new_port" "$old_port"); procs=("$new_pid" "$old_pid")
for w in "${workload_list[@]}"; do
    for ((r = 1; r <= rounds; r++)); do
        order=(0 1); [ $((r % 2)) = 0 ] && order=(1 0)
        for i in "${order[@]}"; do
            before=$(ticks "${procs[$i]}")
            # shellcheck disable=SC2086
            line=$(pgbench ${flags[$w]} -T "$seconds" \
                "host=127.0.0.1 port=${ports[$i]} user=bench dbname=bench sslmode=require" 2>&1 \
                | awk '/^number of transactions actually processed/ {split($NF, a, "/"); n=a[1]} /^tps/ {t=$3} END {print n, t}')
            after=$(ticks "${procs[$i]}")
            echo "$w $r ${names[$i]} $((after - before)) $line" | tee -a "$results"
        done
    done
done

export B_RESULTS=$results B_OUT=$out B_CLK=$(getconf CLK_TCK) B_NEW="$current_name" B_OLD="$baseline_name" \
    B_ROUNDS=$rounds B_SECONDS=$seconds
python3 - <<'PY'
import json, os, statistics
e = os.environ
tick_us = 1e6 / int(e["B_CLK"])
runs = {}
for line in open(e["B_RESULTS"]):
    w, r, who, ticks, n, tps = line.split()
    runs.setdefault(w, {}).setdefault(who, []).append(
        {"round": int(r), "cpu_us_per_txn": int(ticks) * tick_us / max(int(n), 1), "tps": float(tps)})
rows, doc = [], {"new": e["B_NEW"], "baseline": e["B_OLD"], "workloads": {}}
for w, by in runs.items():
    s = {}
    for who, xs in by.items():
        cpu = sorted(x["cpu_us_per_txn"] for x in xs)
        tps = sorted(x["tps"] for x in xs)
        s[who] = {"cpu_median": statistics.median(cpu), "cpu_min": cpu[0], "cpu_max": cpu[-1],
                  "tps_median": statistics.median(tps), "tps_min": tps[0], "tps_max": tps[-1], "rounds": xs}
    n, o = s["new"], s["old"]
    ratio = n["cpu_median"] / o["cpu_median"]
    # The run-to-run spread: the wider of the two targets' (max-min)/median.
    spread = max((t["cpu_max"] - t["cpu_min"]) / t["cpu_median"] for t in (n, o))
    verdict = "within the spread" if ratio <= 1 + spread else "WORSE beyond the spread"
    doc["workloads"][w] = {**s, "cpu_ratio": ratio, "spread": spread, "verdict": verdict}
    rows.append(f"| {w} | {n['cpu_median']:.1f} ({n['cpu_min']:.1f}-{n['cpu_max']:.1f}) | "
                f"{o['cpu_median']:.1f} ({o['cpu_min']:.1f}-{o['cpu_max']:.1f}) | {ratio:.3f} | "
                f"±{spread * 100:.0f} % | {n['tps_median'] / o['tps_median']:.3f} | {verdict} |")
md = [f"# pgmoat {e['B_NEW']} against {e['B_OLD']}", "",
      f"{e['B_ROUNDS']} alternating rounds of {e['B_SECONDS']} s per workload; CPU is the pgmoat process's "
      "utime + stime per transaction (µs), median (min-max) over the rounds.", "",
      "| workload | new CPU/txn | baseline CPU/txn | CPU ratio | spread | tps ratio | |",
      "| --- | --- | --- | --- | --- | --- | --- |", *rows, ""]
open(f"{e['B_OUT']}/baseline.md", "w").write("\n".join(md))
json.dump(doc, open(f"{e['B_OUT']}/baseline.json", "w"), indent=1)
print("\n".join(md))
PY
