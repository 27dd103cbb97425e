# Shared by the quick-start scripts: root check, system packages, the build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# A step's heading, with the time since the outermost script started
# (mm:ss), so a slow run shows where its minutes went. Exported, so scripts
# it runs (image.sh) count from the same start.
export BERTH_STEP_T0="${BERTH_STEP_T0:-$(date +%s)}"
step() {
    local t=$(( $(date +%s) - BERTH_STEP_T0 ))
    printf '==> [%02d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"
}

# Debian packages the demo and the tests use: the reference CNI plugins (for
# side-by-side tests and benchmarks), kernel tools for the namespace tests,
# sqlite3 to inspect stores, a C compiler for the bundled SQLite, podman and
# containerd for the runtime tests, etcd for the overlay's etcd store, protoc
# for the etcd client's build script, iperf3 for the overlay benchmark.
# openssl makes the test control plane's certificates; curl probes its health;
# debootstrap makes the image's base (scripts/image.sh).
PACKAGES=(ca-certificates gcc libc6-dev pkg-config make
          containernetworking-plugins iproute2 nftables iptables iputils-ping
          sqlite3 procps util-linux e2fsprogs xfsprogs jq
          podman containerd runc conmon busybox-static
          etcd-server protobuf-compiler iperf3 bash
          nfs-ganesha nfs-ganesha-vfs rpcbind cpio tar python3 python3-venv
          openssl curl debootstrap)

# Installed without their recommended packages (QEMU would otherwise pull in
# a desktop stack): the emulator that boots the NFS client guests.
LEAN_PACKAGES=(qemu-system-x86)

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: run this as root (it installs packages and, in later tests, creates network namespaces)" >&2
        exit 1
    fi
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    local lean=()
    for p in "${LEAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || lean+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ] || [ "${#lean[@]}" -gt 0 ]; then
        step "installing ${missing[*]} ${lean[*]}"
        apt-get update -qq
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ "${#lean[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
    fi
}

find_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install Rust 1.89 or later (https://rustup.rs) and run this again." >&2
        exit 1
    fi
}

# Style and lints are part of the test: rustfmt's layout and clippy with the
# workspace lints (Cargo.toml [workspace.lints]), warnings as errors.
check_style() {
    step "cargo fmt --all --check"
    (cd "$ROOT" && cargo fmt --all --check)
    step "cargo clippy --workspace --all-targets -- -D warnings"
    (cd "$ROOT" && cargo clippy --workspace --all-targets --quiet -- -D warnings)
}

build_release() {
    step "building (release)"
    (cd "$ROOT" && cargo build --release --workspace)
}

# Where build_static puts its binaries.
STATIC_DIR="$ROOT/target/x86_64-unknown-linux-gnu/release"
# The binaries it links statically: the CNI plugins, which the DaemonSet copies
# onto each host and every pod start execs (static, they run whatever the
# host's C library, map no shared libraries and start about 0.5 ms sooner),
# and berth-csi for the QEMU guests of the NFS node tests (their initramfs has
# no C library).
STATIC_BINS=(berth-bridge berth-host-local berth-overlay berth-csi)

# Statically linked (glibc static-pie) builds of STATIC_BINS in STATIC_DIR, in
# one cargo run so their dependencies compile once. Fails (status 1) when
# they cannot be built; callers go on without them: image.sh ships the
# dynamic plugins and the guest tests copy the dynamic berth-csi with its
# libraries.
build_static() {
    [ "$(uname -m)" = "x86_64" ] || return 1
    step "building static ${STATIC_BINS[*]}"
    local args=()
    for b in "${STATIC_BINS[@]}"; do args+=(--bin "$b"); done
    # Thin LTO for what ships, which the workspace profile leaves off to keep
    # the test build quick (Cargo.toml, [profile.release]).
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_LTO=thin \
        cargo build --release -p cni-bridge -p ipam -p cni-overlay -p csi-driver \
            "${args[@]}" --target x86_64-unknown-linux-gnu) && return 0
    echo "warning: no static builds" >&2
    return 1
}

# The guest kernel for the NFS node tests (downloaded, never installed).
prepare_guest_kernel() {
    "$ROOT/scripts/guest-kernel.sh" \
        || echo "warning: no guest kernel; the NFS node tests will say they skip" >&2
}
