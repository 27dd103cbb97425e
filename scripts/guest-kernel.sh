#!/usr/bin/env bash
# Prepares a guest kernel for the QEMU-based tests (the host kernel has no NFS
# client, so node-side NFS mounts are exercised inside a small guest).
#
# Usage: scripts/guest-kernel.sh [CACHE_DIR]   (default: $ROOT/target/guest-kernel)
#
# Leaves in CACHE_DIR: vmlinuz, lib/modules/<version>/ (with a fresh
# modules.dep from depmod), and VERSION. The package is only downloaded and
# unpacked (`apt-get download` + `dpkg -x`); nothing is installed on the host.
# Idempotent: a prepared cache dir is left as is. On failure it says why on
# stderr and exits non-zero, and the tests that need a guest skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${1:-$ROOT/target/guest-kernel}"
META_PKG="linux-image-cloud-amd64"

die() {
    echo "guest-kernel: $*" >&2
    exit 1
}

# Already prepared? VERSION is written last, so its presence means the rest
# of the tree is complete.
if [ -f "$CACHE/VERSION" ]; then
    ver="$(cat "$CACHE/VERSION")"
    if [ -f "$CACHE/vmlinuz" ] && [ -f "$CACHE/lib/modules/$ver/modules.dep" ]; then
        echo "guest-kernel: $CACHE already holds $ver"
        exit 0
    fi
fi

for tool in apt-get apt-cache dpkg; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (needs a Debian-like system)"
done

# The meta package only depends on the versioned image package; that is the
# one holding the kernel and its modules.
pkg="$(apt-cache depends "$META_PKG" 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')" || true
if [ -z "${pkg:-}" ]; then
    die "cannot resolve the versioned package behind $META_PKG (apt-cache depends found nothing; try apt-get update)"
fi
ver="${pkg#linux-image-}"

mkdir -p "$CACHE"
# Work in a scratch dir next to the cache so a failed run leaves no
# half-prepared tree behind, then move the results into place.
work="$(mktemp -d "$CACHE/.prepare.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# apt-get download writes into the current directory and runs as the _apt
# user where possible; a world-writable scratch dir avoids its sandbox warning.
chmod 0777 "$work"
if ! (cd "$work" && apt-get download "$pkg" >"$work/download.log" 2>&1); then
    cat "$work/download.log" >&2 || true
    die "apt-get download $pkg failed (no network or package index?)"
fi
deb="$(ls "$work"/*.deb 2>/dev/null | head -n1)"
[ -n "$deb" ] || die "apt-get download $pkg produced no .deb"

dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"

kernel="$work/root/boot/vmlinuz-$ver"
modules="$work/root/lib/modules/$ver"
[ -f "$kernel" ] || die "no boot/vmlinuz-$ver in $pkg"
[ -d "$modules" ] || die "no lib/modules/$ver in $pkg"

# depmod comes from kmod, which minimal hosts (like the test VMs) lack. Rather
# than install it, unpack Debian's kmod next to the kernel and call it under
# the name depmod (kmod picks its personality from argv[0]).
depmod="$(command -v depmod || true)"
if [ -z "$depmod" ]; then
    if ! (cd "$work" && apt-get download kmod >>"$work/download.log" 2>&1); then
        cat "$work/download.log" >&2 || true
        die "depmod is not installed and apt-get download kmod failed"
    fi
    dpkg -x "$(ls "$work"/kmod_*.deb | head -n1)" "$work/kmod" || die "dpkg -x kmod failed"
    ln -s kmod "$work/kmod/bin/depmod"
    depmod="$work/kmod/bin/depmod"
fi
"$depmod" -b "$work/root" "$ver" || die "depmod -b failed for $ver"

rm -rf "$CACHE/lib" "$CACHE/vmlinuz" "$CACHE/VERSION"
mkdir -p "$CACHE/lib/modules"
mv "$kernel" "$CACHE/vmlinuz"
mv "$modules" "$CACHE/lib/modules/$ver"
echo "$ver" >"$CACHE/VERSION"
echo "guest-kernel: prepared $ver in $CACHE"
