#!/usr/bin/env bash
# User-space instructions per echo round trip in the server, under callgrind: the figure to
# optimise the echo path against, since it repeats to within about 2% on a busy machine where
# CPU time per round trip moves by 5-10% from run to run. (The kernel's share, most of the
# real cost, is not counted.)
#
#   bash tests/scripts/echo-instructions.sh [SHELL=std|smol] [LEN=16] [SPOOL=path]
#
# Runs `spool echo` under valgrind twice, with the bench load generator (100 connections) for
# 3 s and for 6 s, and prints the difference in instructions over the difference in round
# trips, so start-up and warm-up cancel out. Loopback only; about 30 seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHELL_KIND="${1:-std}"; LEN="${2:-16}"
cargo build -q --release -p spool-smol --bin spool -p spool-tests --bin bench
SPOOL="${3:-$PWD/target/release/spool}"
LOAD="$PWD/target/release/bench"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
OUT=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$OUT"' EXIT

# Prints "ROUND_TRIPS INSTRUCTIONS" for one run of SECS seconds.
one() {
  local port=$((20000 + RANDOM % 10000))
  valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$SPOOL" echo --port "$port" --shell "$SHELL_KIND" --no-deflate >/dev/null 2>"$OUT/err" &
  SERVER=$!
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  local line
  line=$("$LOAD" echo --addr "127.0.0.1:$port" --conns 100 --len "$LEN" --secs "$1" --warmup 0.5)
  sleep 0.3
  kill -INT "$SERVER"
  wait "$SERVER" 2>/dev/null || true
  SERVER=
  echo "$(echo "$line" | sed -n 's/.*round_trips=\([0-9]*\).*/\1/p') $(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$OUT/err")"
}
read -r rt1 ir1 < <(one 3)
read -r rt2 ir2 < <(one 6)
if [ -z "$rt1" ] || [ -z "$ir2" ] || [ "$rt2" -le "$rt1" ]; then
  echo "echo-instructions: no usable runs ($rt1/$rt2 round trips)" >&2
  exit 1
fi
echo "shell=$SHELL_KIND len=$LEN: $(( (ir2 - ir1) / (rt2 - rt1) )) instructions per round trip ($rt1 and $rt2 round trips)"
