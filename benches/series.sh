#!/usr/bin/env bash
# Reproduces the load figures of docs/PERFORMANCE.md in one command:
#
#   bash benches/series.sh sqlite OUTDIR     # or: mysql (MariaDB on 127.0.0.1:3306 + Redis)
#
# Builds the release binaries, starts the fake upstream (core 1) and a Questech on a fresh
# database, and runs: /v1 non-streaming at 32 concurrent and at 1, streaming /v1 at 1 and at 32
# (server pinned to core 0), then the WebSocket turns run (server restarted, unpinned). Every run
# targets 127.0.0.1 only, is bounded in time and stops by itself; OUTDIR gets each run's
# report.json/.md, the group-commit counters and the load average. QBIN=<path> measures another
# build of the server (an A/B); QB_DURATION=<s> changes the length of each run (default 15).
set -euo pipefail

backend=${1:?usage: series.sh sqlite|mysql OUTDIR}
out=$(mkdir -p "${2:?usage: series.sh sqlite|mysql OUTDIR}" && cd "$2" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --workspace --bins
qbin=${QBIN:-$root/target/release/questech}
bench=$root/target/release/questech-bench
secs=${QB_DURATION:-15}
export QB_ADMIN_PASSWORD=bench-admin-pw-1
work=$out/server
fake_pid=""
server_pid=""

stop() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
cleanup() {
    stop
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
}
trap cleanup EXIT

# Starts the server on a fresh database; $1 = a command prefix (e.g. "taskset -c 0") or "".
start() {
    stop
    rm -rf "$work" && mkdir -p "$work"
    export BIND_ADDR=127.0.0.1:10089 DATA_DIR=$work
    export SERVICE_DEBUG=true ECHO_DELAY_MS=0 USER_RPM=0 USER_MAX_INFLIGHT=0 BCRYPT_COST=4
    export OPENAI_API_KEY=x OPENAI_BASE_URL=http://127.0.0.1:18080/v1
    if [ "$backend" = mysql ]; then
        local db="qbench_$(date +%s)_$RANDOM"
        mysql -uroot -h127.0.0.1 -e "CREATE DATABASE $db"
        export DATABASE_URL=mysql://root@127.0.0.1:3306/$db
        export REDIS_URL=redis://127.0.0.1:6379 REDIS_PREFIX=bench:$db:
    else
        export DATABASE_URL=sqlite://$work/q.db
        unset REDIS_URL REDIS_PREFIX || true
    fi
    echo "$QB_ADMIN_PASSWORD" | "$qbin" admin create-user --username bench --role admin >"$work/admin.log" 2>&1
    $1 "$qbin" >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        curl -fs http://127.0.0.1:10089/health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the server did not start; see $work/server.log" >&2
    exit 1
}

run() { # name, then the bench's mode arguments; the load generator on core 1 for /v1
    local name=$1 pin=$2
    shift 2
    $pin "$bench" --admin-user bench --duration "${secs}s" --server-pid "$server_pid" \
        --baseline-url http://127.0.0.1:18080/v1 --out "$out/$name.json" "$@" >"$out/$name.log" 2>&1
    uptime >>"$out/uptime.txt"
}

taskset -c 1 "$root/target/release/fake-upstream" --port 18080 --chunks 16 --threads 1 \
    >"$out/fake.log" 2>&1 &
fake_pid=$!
sleep 0.5
uptime >"$out/uptime.txt"

start "taskset -c 0"
run v1-c32 "taskset -c 1" v1 --concurrency 32
run v1-c1 "taskset -c 1" v1 --concurrency 1
run v1-stream-c1 "taskset -c 1" v1 --stream --concurrency 1
run v1-stream-c32 "taskset -c 1" v1 --stream --concurrency 32
curl -s http://127.0.0.1:10089/metrics | grep group_commit >"$out/metrics-v1.txt" || true

start ""
run ws-100 "" ws --users 100 --sockets 1
curl -s http://127.0.0.1:10089/metrics | grep group_commit >"$out/metrics-ws.txt" || true

echo "reports in $out"
