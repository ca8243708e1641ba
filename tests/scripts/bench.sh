#!/usr/bin/env bash
# spool's benchmark suite (issue 12): one table of spool beside its peers, measured in the
# same run, with the ratios and the issue's targets.
#
#   bash tests/scripts/bench.sh [--quick] [--only echo,fanout,memory,scale,codec]
#                               [--scale-conns N] [--memory-conns N] [--runs N]
#
# Builds the release binaries (`spool`, the load generator `bench`, the peers of
# tests/src/bin/peer_*.rs, `bench_codec`), installs what it lacks (taskset, valgrind, Node's
# `ws` through `npm ci` in tests/node), then runs `bench run`: each server pinned to core 0,
# the load (spool-core clients) to core 1. Sections: echo (100 connections, 1 KiB and 16 B),
# fanout (10,000 Phoenix subscribers), memory (RSS per idle connection, 19,000 held), scale
# (19,000 idle connections with pings, kernel memory, projection to 1,000,000) and codec
# (criterion and callgrind). About 14 minutes in full (three runs of each echo and fan-out
# figure, in turn across the servers), 3 with --quick. Loopback only; every
# process it starts is in its own process group, killed on the way out.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  esac
done

apt_install() {
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
  apt-get install -y -qq "$@" >/dev/null
}
command -v taskset >/dev/null || apt_install util-linux
command -v valgrind >/dev/null || apt_install valgrind
command -v npm >/dev/null || apt_install nodejs npm
if [ ! -d tests/node/node_modules/ws ] || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
cargo build -q --release -p spool-smol --bin spool -p spool-tests --bins
# Criterion's codec groups are built (and run) by the driver's codec section itself.

# Up to 19,000 connections a server, and the holders' share each.
ulimit -Sn "$(ulimit -Hn)"
# Its own process group, so that everything it started goes with it.
setsid "$ROOT/target/release/bench" run "$@" &
DRIVER=$!
trap 'kill -- -"$DRIVER" 2>/dev/null || true' EXIT INT TERM
wait "$DRIVER"
