#!/usr/bin/env bash
# A closer look at berth-host-local, the IPAM plugin,
# doing its job the way a container runtime drives it: env vars + stdin.
# Everything happens in a scratch directory that is removed at the end, even
# on Ctrl-C; nothing touches the machine's network.
source "$(dirname "$0")/lib.sh"
need_root
install_packages
find_cargo
build_release

BIN="$ROOT/target/release/berth-host-local"
REF=/usr/lib/cni/host-local
WORK="$(mktemp -d /tmp/berth-demo.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
trap 'echo; echo "interrupted: cleaning up"; exit 130' INT TERM

STEPS=0; T0=$(date +%s%N)
step() { STEPS=$((STEPS+1)); printf '\n[%d] %s\n' "$STEPS" "$*"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

conf() { # name type dataDir [cniVersion]
cat <<JSON
{"cniVersion":"${4:-1.1.0}","name":"$1","type":"berth-bridge",
 "ipam":{"type":"$2","dataDir":"$3",
   "ranges":[[{"subnet":"10.88.0.0/24","rangeStart":"10.88.0.10"}],[{"subnet":"fd88::/64"}]],
   "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}}
JSON
}

cni() { # command container [netns] ; config on stdin
    CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="${3:-/var/run/netns/$2}" CNI_IFNAME=eth0 \
    CNI_PATH="$(dirname "$BIN")" "$PLUGIN"
}
addrs() { jq -r '[.ips[].address] | join("  ")'; }

PLUGIN="$BIN"; CONF="$(conf demo berth-host-local "$WORK/data")"

step "ADD five pods on a dual-stack network (one IPv4 + one IPv6 each)"
for i in 1 2 3 4 5; do
    t=$(date +%s%N); out=$(echo "$CONF" | cni ADD "pod-$i"); took=$(ms_since "$t"); echo "$out" > "$WORK/pod-$i.json"
    printf '    pod-%d  %-40s %3d ms\n' "$i" "$(echo "$out" | addrs)" "$took"
done

step "The runtime lost pod-1's result and retries the same ADD: same addresses, nothing new held"
echo "    $(echo "$CONF" | cni ADD pod-1 | addrs)"

step "A second ADD for pod-1 from another netns is a duplicate: refused with code 103"
echo "$CONF" | cni ADD pod-1 /var/run/netns/elsewhere | jq -c '{code, msg}' | sed 's/^/    /' || true

step "DEL pod-2, then ADD pod-6: round robin does not hand pod-2's address out again at once"
echo "$CONF" | cni DEL pod-2
echo "    pod-6  $(echo "$CONF" | cni ADD pod-6 | addrs)"

step "50 ADDs at once (50 processes sharing one store)"
t=$(date +%s%N)
for i in $(seq 1 50); do (echo "$CONF" | cni ADD "burst-$i" > "$WORK/burst-$i.json") & done; wait
distinct=$(cat "$WORK"/burst-*.json | jq -r '.ips[0].address' | sort -u | wc -l)
echo "    50 processes finished in $(ms_since "$t") ms; distinct IPv4 addresses: $distinct"

step "What the operator sees: berth-host-local list"
listing="$("$BIN" list --data-dir "$WORK/data")"
echo "$listing" | sed -n '1,8p' | sed 's/^/    /'
echo "    ... ($("$BIN" list --data-dir "$WORK/data" --json | jq length) addresses held)"

step "CHECK pod-3 against its own result, then against an address it does not hold"
prev=$(cat "$WORK/pod-3.json")
echo "$CONF" | jq -c --argjson p "$prev" '. + {prevResult: $p}' | cni CHECK pod-3 && echo "    CHECK pod-3: ok"
echo "$CONF" | jq -c '. + {prevResult: {cniVersion:"1.1.0", ips:[{address:"10.88.0.200/24"}]}}' | cni CHECK pod-3 | jq -r '"    CHECK with a wrong address: code \(.code): \(.msg)"' || true

step "GC: the runtime says only pod-1 and pod-3 are still valid"
echo "$CONF" | jq -c '. + {"cni.dev/valid-attachments":[{containerID:"pod-1",ifname:"eth0"},{containerID:"pod-3",ifname:"eth0"}]}' | CNI_COMMAND=GC CNI_PATH="$(dirname "$BIN")" "$BIN" 2>/dev/null
echo "    held after GC: $("$BIN" list --data-dir "$WORK/data" --json | jq -r '[.[].containerId] | unique | join(", ")')"

step "A reboot (simulated: a new boot id): the first call after it reclaims the old boot's leaks"
echo "$CONF" | BERTH_BOOT_ID=demo-next-boot CNI_COMMAND=STATUS CNI_PATH=/ "$BIN" && echo "    STATUS: ok"
echo "    held after the reboot: $("$BIN" list --data-dir "$WORK/data" --json | jq length) addresses"

if [ -x "$REF" ]; then
    step "Migration: three pods were attached by the reference host-local; switch the type to berth-host-local"
    PLUGIN="$REF"; LCONF="$(conf legacy host-local "$WORK/data" 1.0.0)"
    for i in 1 2 3; do echo "    reference gave old-$i $(echo "$LCONF" | cni ADD "old-$i" | addrs)"; done
    PLUGIN="$BIN"; LCONF="$(conf legacy berth-host-local "$WORK/data" 1.0.0)"
    echo "    berth-host-local gives new-1 $(echo "$LCONF" | cni ADD new-1 2>/dev/null | addrs)"
    echo "    imported and kept: $("$BIN" list --data-dir "$WORK/data" --network legacy --json | jq -r '[.[] | select(.containerId|startswith("old")) | .address] | join(", ")')"
fi

step "STATUS, VERSION and the about text"
echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION "$BIN" | sed 's/^/    /'
"$BIN" | sed 's/^/    /'

printf '\nDemo done: %d steps in %d ms. Store was %s (removed now).\n' "$STEPS" "$(ms_since "$T0")" "$WORK/data/demo/ipam.db"
