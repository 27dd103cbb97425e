#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the integration tests that exec the
# real binaries (CNI plugins in test network namespaces, the CSI driver with
# real loop devices and mounts, an NFS server with QEMU guests as NFS client
# nodes, podman and containerd), and the demo in its short mode. Installs
# what it needs first.
source "$(dirname "$0")/lib.sh"
need_root
install_packages
find_cargo
check_style
build_release
build_static_csi
prepare_guest_kernel
echo "==> running every test"
cd "$ROOT"
BERTH_BIN_DIR="$ROOT/target/release" cargo test --release --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
echo "==> the demo, short mode"
"$ROOT/target/release/berth-demo" --short
left=$(ip netns list | grep -c -E '^(bd(ul|h|pod|probe)|bnfs)-' || true)
if [ "$left" != "0" ]; then
    echo "error: the tests or the demo left $left network namespaces behind" >&2
    exit 1
fi
