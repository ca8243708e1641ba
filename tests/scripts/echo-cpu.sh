#!/usr/bin/env bash
# Server CPU per echoed message: runs `spool echo` pinned to one core and the echo_load
# generator pinned to the other, reads the server's user+system time from /proc over the
# measured window, and prints microseconds of server CPU per round trip.
#
#   bash tests/scripts/echo-cpu.sh [SHELL=smol|std] [CONNS=100] [SECS=10] [LEN=1024] [SPOOL=path]
#
# SPOOL names another spool binary (an older build, to compare). Loopback only; bounded by SECS.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHELL_KIND="${1:-smol}"; CONNS="${2:-100}"; SECS="${3:-10}"; LEN="${4:-1024}"
cargo build -q --release -p spool-smol --bin spool --example echo_load
SPOOL="${5:-$PWD/target/release/spool}"
LOAD="$PWD/target/release/examples/echo_load"
PORT=$((20000 + RANDOM % 10000))
command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux >/dev/null; }

taskset -c 0 "$SPOOL" echo --port "$PORT" --shell "$SHELL_KIND" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.05
done
ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
HZ=$(getconf CLK_TCK)
before=$(ticks)
out=$(taskset -c 1 "$LOAD" "ws://127.0.0.1:$PORT" "$CONNS" "$SECS" "$LEN")
after=$(ticks)
rate=$(echo "$out" | sed -n 's/.*: \([0-9]*\) round trips\/s/\1/p')
cpu_s=$(awk -v a="$after" -v b="$before" -v hz="$HZ" 'BEGIN {print (a - b) / hz}')
per_rt=$(awk -v c="$cpu_s" -v r="$rate" -v s="$SECS" 'BEGIN {print c * 1000000 / (r * s)}')
threads=$(awk '/^Threads:/ {print $2}' "/proc/$SERVER/status")
printf 'shell=%s conns=%s len=%s: %s round trips/s, server CPU %.2f s over %s s, %.2f us per round trip, %s threads\n' \
  "$SHELL_KIND" "$CONNS" "$LEN" "$rate" "$cpu_s" "$SECS" "$per_rt" "$threads"
