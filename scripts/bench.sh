#!/usr/bin/env bash
# Runs every benchmark and writes BENCHMARKS.md and the charts in bench/.
#   sudo ./scripts/bench.sh [--quick]
source "$(dirname "$0")/lib.sh"
need_root
install_packages
find_cargo
build_release
# The CRI section drives crictl, a pinned test peer.
"$ROOT/scripts/test-peers.sh"
cd "$ROOT"
exec "$ROOT/target/release/berth-bench" report --out "$ROOT/BENCHMARKS.md" "$@"
