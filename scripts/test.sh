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
# The Go test peers build beside the Rust build: on a fresh machine both
# take many minutes, and each has single-threaded phases (linking) the
# other fills.
peers_log=$(mktemp)
"$ROOT/scripts/test-peers.sh" > "$peers_log" 2>&1 &
peers_pid=$!
check_style
build_release
build_static || true
prepare_guest_kernel
peers_ok=0
wait "$peers_pid" || peers_ok=$?
step "test peers ready (scripts/test-peers.sh, run beside the Rust build):"
grep -v '^go: downloading' "$peers_log" || true
rm -f "$peers_log"
if [ "$peers_ok" != 0 ]; then
    echo "error: scripts/test-peers.sh failed (exit $peers_ok)" >&2
    exit 1
fi
# Berth's image and the sidecar images, for the install test (no registry:
# a debootstrapped base, cached after the first run).
step "building the images (scripts/image.sh)"
export BERTH_IMAGE_ARCHIVES="${BERTH_IMAGE_ARCHIVES:-/var/cache/berth-image/archives}"
"$ROOT/scripts/image.sh" --sidecars --archive-dir "$BERTH_IMAGE_ARCHIVES" | { grep -v '^Copying\|^Writing\|^Storing\|^Getting' || true; }
step "running every test"
cd "$ROOT"
# The test namespaces are named b<prefix>-<pid>-<n>-<stamp> (netns-fixture's
# unique_name; the demo uses it too). A run killed before its guards ran (a
# session's end, a timeout) leaves its namespaces behind: remove those whose
# pid is gone, with whatever still runs in them, and judge this run only by
# the namespaces it adds.
test_netns_re='^b[a-z0-9]*-[0-9]+-[0-9]+-[0-9a-f]+$'
test_netns() { ip netns list | awk '{print $1}' | grep -E "$test_netns_re" | sort || true; }
for ns in $(test_netns); do
    pid=${ns#*-}; pid=${pid%%-*}
    [ -d "/proc/$pid" ] && continue
    echo "removing network namespace $ns, left by a test process ($pid) that is gone"
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
done
netns_before=$(test_netns)
# What the tests must leave as they found it: the loop devices and the kernel
# settings kubelet changes (compared after the last step).
kernel_settings="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
# A run killed while its kubelets ran left the machine's values in its record
# (tests/src/kubelet.rs): put them back before taking the baseline.
if [ -e /run/berth-tests-kubelet-sysctls ]; then
    echo "restoring the kernel settings a killed run's kubelets changed (/run/berth-tests-kubelet-sysctls)"
    while IFS== read -r key value; do
        [ -n "$key" ] && sysctl -q -w "$key=$value"
    done < /run/berth-tests-kubelet-sysctls
    rm -f /run/berth-tests-kubelet-sysctls
fi
# shellcheck disable=SC2086
settings_before=$(sysctl $kernel_settings)
loops_before=$(losetup -l -n -O NAME,BACK-FILE | sort)
export BERTH_BIN_DIR="$ROOT/target/release"
cargo test --release --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
# Conformance as the ecosystem runs it, each its own step (these tests are
# #[ignore]d in the run above).
# --workspace keeps the features of the main run (a -p build of one
# package would unify features differently and rebuild it).
conformance() {
    local what=$1; shift
    step "conformance: $what"
    cargo test --release --workspace "$@" -- --ignored --nocapture --test-threads=1
}
conformance "cnitool (libcni) add/check/status/del/gc: berth-bridge + berth-host-local, berth-overlay; cniVersion 0.4.0, 1.0.0, 1.1.0" \
    --test overlay cnitool
conformance "a gRPC C-core client (Python grpcio) runs a volume lifecycle on berth-csi" \
    --test grpc_c_core_client
if [ -f "$ROOT/csi-driver/tests/sanity.rs" ]; then
    conformance "csi-sanity on the local and NFS backends" --test sanity
fi
step "the demo, short mode"
"$ROOT/target/release/berth-demo" --short
left=$(comm -13 <(echo "$netns_before") <(test_netns))
if [ -n "$left" ]; then
    echo "error: the tests or the demo left network namespaces behind:" >&2
    echo "$left" >&2
    exit 1
fi
# The kubelet tests restore the kernel settings kubelet changes and detach
# the loop devices of their nodes.
if [ -e /run/berth-tests-kubelet-sysctls ]; then
    echo "error: kernel settings kubelet changed were not restored (see /run/berth-tests-kubelet-sysctls)" >&2
    exit 1
fi
# shellcheck disable=SC2086
settings_after=$(sysctl $kernel_settings)
if [ "$settings_after" != "$settings_before" ]; then
    echo "error: kernel settings changed by the tests:" >&2
    diff <(echo "$settings_before") <(echo "$settings_after") >&2 || true
    exit 1
fi
new_loops=$(comm -13 <(echo "$loops_before") <(losetup -l -n -O NAME,BACK-FILE | sort))
if [ -n "$new_loops" ]; then
    echo "error: the tests left loop devices attached:" >&2
    echo "$new_loops" >&2
    exit 1
fi
step "done: every test, the conformance steps and the demo passed"
