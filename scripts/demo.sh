#!/usr/bin/env bash
# The Berth demo: hosts on an underlay running berth-overlayd, pods attached
# with berth-overlay pinging each other across hosts, then berth-csi
# provisioning a volume that a pod writes to, a snapshot and a restore. All in
# network namespaces and scratch directories it creates and removes (also on
# Ctrl-C); the root network namespace is never touched.
#   sudo ./scripts/demo.sh [--short]
# scripts/demo-ipam.sh is a closer look at the IPAM plugin alone.
source "$(dirname "$0")/lib.sh"
need_root
install_packages
find_cargo
build_release
exec "$ROOT/target/release/berth-demo" "$@"
