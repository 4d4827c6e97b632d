#!/usr/bin/env bash
# A soak of the pool on Redis: the load tool runs SECONDS (default 180) with [pool] on a
# redis-server of its own, which is stopped and started again twice during the run. Every
# transaction must still be answered 2xx (the tool exits non-zero otherwise): nothing on the
# per-message path waits for Redis. Needs redis-server (Debian redis-server).
#
#   benches/pool_soak.sh [SECONDS] [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-180}
users=${2:-50}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis_pid=
start_redis() {
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir" \
    >/dev/null 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return; sleep 0.05; done
  echo "redis-server did not start" >&2; exit 1
}
stop_redis() { kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; }
trap 'stop_redis; rm -rf "$dir"' EXIT

cargo bench --no-run --bench load >/dev/null 2>&1
start_redis
cargo bench --bench load -- --users "$users" --seconds "$secs" --no-baseline \
  --dialogs-per-user 100000000 \
  --pool-redis "redis://127.0.0.1:$port/0" > "$dir/load.out" 2>&1 &
load=$!
third=$((secs / 3))
for round in 1 2; do
  sleep "$third"
  echo "== $(date +%T) stopping Redis (round $round)"
  stop_redis
  sleep 10
  echo "== $(date +%T) starting Redis again"
  start_redis
done
status=0
wait "$load" || status=$?
cat "$dir/load.out"
echo "== load tool exit status $status (0: every transaction answered)"
exit "$status"
