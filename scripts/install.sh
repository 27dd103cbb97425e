#!/usr/bin/env bash
# Installs Berth on a host without Kubernetes: CNI plugins into /opt/cni/bin,
# the example conflists into /etc/cni/net.d (without overwriting), the daemons
# into /usr/local/bin and their systemd units. Builds first if needed.
#   sudo ./scripts/install.sh [--prefix /usr/local] [--cni-bin /opt/cni/bin] [--cni-conf /etc/cni/net.d]
source "$(dirname "$0")/lib.sh"
PREFIX=/usr/local CNI_BIN=/opt/cni/bin CNI_CONF=/etc/cni/net.d
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2;;
        --cni-bin) CNI_BIN="$2"; shift 2;;
        --cni-conf) CNI_CONF="$2"; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
need_root
find_cargo
[ -x "$ROOT/target/release/berth-bridge" ] || build_release
install -d "$CNI_BIN" "$CNI_CONF" "$PREFIX/bin"
for b in berth-bridge berth-host-local berth-overlay; do
    install -m 0755 "$ROOT/target/release/$b" "$CNI_BIN/$b"
done
for b in berth-overlayd berth-csi; do
    [ -x "$ROOT/target/release/$b" ] && install -m 0755 "$ROOT/target/release/$b" "$PREFIX/bin/$b"
done
for f in "$ROOT"/deploy/cni/*.conflist; do
    [ -e "$CNI_CONF/$(basename "$f")" ] || install -m 0644 "$f" "$CNI_CONF/"
done
if [ -d /etc/systemd/system ]; then
    install -m 0644 "$ROOT"/deploy/systemd/*.service /etc/systemd/system/
    echo "systemd units installed: edit /etc/systemd/system/berth-overlayd.service, then"
    echo "  systemctl daemon-reload && systemctl enable --now berth-overlayd berth-csi"
fi
echo "installed: $CNI_BIN/{berth-bridge,berth-host-local,berth-overlay}, $PREFIX/bin/{berth-overlayd,berth-csi}, conflists in $CNI_CONF"
