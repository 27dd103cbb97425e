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
# debootstrap makes the image's base (scripts/image.sh). musl-tools (musl-gcc)
# compiles the C in the CNI plugins' musl build (build_static).
PACKAGES=(ca-certificates gcc libc6-dev pkg-config make
          containernetworking-plugins iproute2 nftables iptables iputils-ping
          sqlite3 procps util-linux e2fsprogs xfsprogs jq
          podman containerd runc conmon busybox-static
          etcd-server protobuf-compiler iperf3 bash
          nfs-ganesha nfs-ganesha-vfs rpcbind cpio tar python3 python3-venv
          openssl curl debootstrap musl-tools)

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

# The Rust target of the CNI plugins' static build.
MUSL_TARGET=x86_64-unknown-linux-musl
# Where build_static puts the CNI plugins: the musl build, or the glibc
# static one when musl cannot be had (build_static then points it there).
STATIC_DIR="$ROOT/target/$MUSL_TARGET/release"
# Where it puts berth-csi, always glibc static-pie (csi-driver/tests/nfs_node.rs).
GNU_STATIC_DIR="$ROOT/target/x86_64-unknown-linux-gnu/release"
# The CNI plugins, which the DaemonSet copies onto each host and every pod
# start execs: static, they run whatever the host's C library, map no shared
# libraries and start about 0.5 ms sooner; linked with musl rather than glibc,
# each exec skips glibc's CPUID-heavy start-up, which traps to the hypervisor
# on a VM (cni-core/src/alloc.rs, BENCHMARKS.md "musl and mimalloc for the CNI
# plugins").
PLUGIN_BINS=(berth-bridge berth-host-local berth-overlay)

# The Rust target and the C compiler wrapper (SQLite and mimalloc are C) for
# the musl build; false when either cannot be installed.
musl_toolchain() {
    command -v musl-gcc >/dev/null 2>&1 || return 1
    rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" && return 0
    command -v rustup >/dev/null 2>&1 && rustup target add "$MUSL_TARGET" >/dev/null
}

# Static builds of PLUGIN_BINS in STATIC_DIR (musl; glibc static-pie when the
# musl toolchain is missing) and of berth-csi in GNU_STATIC_DIR (for the QEMU
# guests of the NFS node tests, whose initramfs has no C library), with thin
# LTO, which the workspace profile leaves off to keep the test build quick
# (Cargo.toml, [profile.release]). Fails (status 1) when they cannot be built;
# callers go on without them: image.sh ships the dynamic plugins and the guest
# tests copy the dynamic berth-csi with its libraries.
build_static() {
    [ "$(uname -m)" = "x86_64" ] || return 1
    local plugin_pkgs=(-p cni-bridge -p ipam -p cni-overlay) gnu_pkgs=(-p csi-driver)
    local gnu=(berth-csi) musl_ok=false bins=() b
    if musl_toolchain; then
        for b in "${PLUGIN_BINS[@]}"; do bins+=(--bin "$b"); done
        step "building static ${PLUGIN_BINS[*]} (musl)"
        # Thin LTO for what ships (see above); musl links statically.
        (cd "$ROOT" && CARGO_PROFILE_RELEASE_LTO=thin \
            cargo build --release "${plugin_pkgs[@]}" "${bins[@]}" \
                --target "$MUSL_TARGET") && musl_ok=true
    fi
    if ! $musl_ok; then
        echo "warning: no musl build of the CNI plugins (musl-gcc or the Rust target $MUSL_TARGET missing, or the build failed); linking them with glibc" >&2
        STATIC_DIR="$GNU_STATIC_DIR"
        gnu_pkgs+=("${plugin_pkgs[@]}")
        gnu+=("${PLUGIN_BINS[@]}")
    fi
    step "building static ${gnu[*]} (glibc static-pie)"
    bins=()
    for b in "${gnu[@]}"; do bins+=(--bin "$b"); done
    if (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_LTO=thin \
        cargo build --release "${gnu_pkgs[@]}" "${bins[@]}" \
            --target x86_64-unknown-linux-gnu); then
        return 0
    fi
    echo "warning: no glibc static build of ${gnu[*]}" >&2
    # The plugins are what the callers need.
    $musl_ok
}

# The guest kernel for the NFS node tests (downloaded, never installed).
prepare_guest_kernel() {
    "$ROOT/scripts/guest-kernel.sh" \
        || echo "warning: no guest kernel; the NFS node tests will say they skip" >&2
}
