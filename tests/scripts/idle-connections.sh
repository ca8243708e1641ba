#!/usr/bin/env bash
# Holds N idle WebSocket connections (handshakes done, pings every second) against
# `spool echo` on one shell, and prints the server's thread count, resident memory before and
# after, and memory per connection; then stops the server with SIGTERM and reports how long
# that took. Loopback only, bounded in time; see shell-smol/examples/idle_connections.rs.
#
#   tests/scripts/idle-connections.sh [SHELL [N]]   # SHELL smol (default) or std, N 19000
#
# Extra flags after N go to the driver (--per-client, --ping-interval-ms, --hold-ms).
# PROFILE=dev uses the debug build instead of a release one.
set -euo pipefail
cd "$(dirname "$0")/../.."
shell="${1:-smol}"
n="${2:-19000}"
shift $(( $# < 2 ? $# : 2 ))
profile="${PROFILE:-release}"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build --profile "$profile" -p spool-smol --bin spool --example idle_connections
# Every process here needs its descriptors: the server one per connection, each client process
# up to --per-client (9,000 by default).
ulimit -Sn "$(ulimit -Hn)"
exec "target/$dir/examples/idle_connections" --spool "target/$dir/spool" \
  --shell "$shell" --connections "$n" "$@"
