#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests that exec
# the real binaries. Installs what it needs first.
source "$(dirname "$0")/lib.sh"
need_root
install_packages
find_cargo
build_release
echo "==> running every test"
cd "$ROOT"
BERTH_BIN_DIR="$ROOT/target/release" cargo test --release --workspace -- --test-threads="${TEST_THREADS:-4}"
