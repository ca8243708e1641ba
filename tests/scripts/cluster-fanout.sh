#!/usr/bin/env bash
# Fan-out over a cluster: a Redis of its own on a free port, NODES `spool serve --redis` nodes
# (release builds), SUBS Phoenix subscribers of one topic spread over them, and BROADCASTS
# shouts at RATE a second from one publisher. Prints deliveries, missing ones, latency and each
# node's CPU per broadcast (fanout_load reads /proc/PID/stat).
#
#   bash tests/scripts/cluster-fanout.sh [NODES=3] [SUBS=10000] [BROADCASTS=100] [RATE=20]
#
# Loopback only; bounded: the load ends 10 s after its last broadcast at the latest.
set -euo pipefail
cd "$(dirname "$0")/../.."
NODES="${1:-3}"; SUBS="${2:-10000}"; BROADCASTS="${3:-100}"; RATE="${4:-20}"
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build -q --release -p spool-smol --bin spool --example fanout_load
SPOOL="$PWD/target/release/spool"
LOAD="$PWD/target/release/examples/fanout_load"
BASE=$((20000 + RANDOM % 10000))
REDIS_PORT=$BASE
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
ulimit -n 20000 2>/dev/null || true
addrs=(); pids=()
for i in $(seq 1 "$NODES"); do
  port=$((BASE + i))
  "$SPOOL" serve --port "$port" --redis "redis://127.0.0.1:$REDIS_PORT" --cluster fanout \
    --node-id "n$i" >/dev/null 2>&1 &
  PIDS+=($!); pids+=($!); addrs+=("127.0.0.1:$port")
done
for a in "${addrs[@]}"; do
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null && break
    sleep 0.05
  done
done
sleep 1 # the nodes find each other
"$LOAD" --nodes "$(IFS=,; echo "${addrs[*]}")" --pids "$(IFS=,; echo "${pids[*]}")" \
  --subscribers "$SUBS" --broadcasts "$BROADCASTS" --rate "$RATE"
