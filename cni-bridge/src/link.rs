//! Kernel objects of an attachment: the bridge, the veth pair, bridge port
//! options, VLANs and the gateway address, all through netlink.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use host_net::netlink::{Link, Netlink};
use host_net::netns::{write_sysctl, NetNs};
use ipnetwork::IpNetwork;

use crate::config::BridgeConf;
use crate::error::BridgeError;

/// The host end's name: stable for (network, container, ifname), so DEL can
/// find it even without a record.
pub fn host_veth_name(network: &str, container: &str, ifname: &str) -> String {
    let h = berth_common::digest(&[network.as_bytes(), container.as_bytes(), ifname.as_bytes()]);
    format!("veth{}", &h[..11])
}

/// A fallback name when the stable one is taken by something else.
pub fn random_veth_name() -> String {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    let n = u64::from_le_bytes(buf) ^ u64::from(std::process::id());
    format!("veth{:011x}", n & 0xfff_ffff_ffff)
}

fn kernel(msg: String) -> BridgeError {
    BridgeError::Kernel(msg)
}

fn no_vlan_filtering(conf: &BridgeConf) -> BridgeError {
    BridgeError::Kernel(format!(
        "{} needs bridge VLAN filtering on {}, which this kernel does not support (CONFIG_BRIDGE_VLAN_FILTERING)",
        if conf.vlan != 0 { "vlan" } else { "vlanTrunk" },
        conf.bridge
    ))
}

/// Makes sure the bridge exists and is up; tolerates a concurrent creator.
pub fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link, BridgeError> {
    let mtu = (conf.mtu > 0).then_some(conf.mtu);
    let br = match nl.link(&conf.bridge)? {
        Some(l) => l,
        None => {
            match nl.add_bridge(&conf.bridge, mtu, conf.vlan_filtering()) {
                Ok(()) => {}
                Err(e) if e.is(libc::EEXIST) => {}
                Err(e) if e.is(libc::EOPNOTSUPP) && conf.vlan_filtering() => {
                    return Err(no_vlan_filtering(conf))
                }
                Err(e) => return Err(e.into()),
            }
            // We own routes on the bridge; router advertisements must not add any.
            let _ = write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
            nl.link(&conf.bridge)?.ok_or_else(|| {
                kernel(format!(
                    "bridge {} vanished right after it was created",
                    conf.bridge
                ))
            })?
        }
    };
    if br.kind.as_deref() != Some("bridge") {
        return Err(BridgeError::config(
            "bridge",
            format!(
                "{} exists but is a {} device, not a bridge",
                conf.bridge,
                br.kind.as_deref().unwrap_or("plain")
            ),
        ));
    }
    if conf.vlan_filtering() && br.vlan_filtering != Some(true) {
        match nl.set_vlan_filtering(br.index, true) {
            Ok(()) => {}
            Err(e) if e.is(libc::EOPNOTSUPP) => return Err(no_vlan_filtering(conf)),
            Err(e) => return Err(e.into()),
        }
    }
    if conf.promisc && !br.promisc {
        nl.set_promisc(br.index, true)?;
    }
    if !br.up {
        nl.set_up(br.index, true)?;
    }
    Ok(br)
}

/// Creates the veth pair: `host_name` here, `ifname` inside the pod. On a
/// name clash on the host side (not ours) a random name is used. Returns
/// the host end.
pub fn create_veth(
    nl: &mut Netlink,
    pod_ns: &NetNs,
    conf: &BridgeConf,
    host_name: &str,
    ifname: &str,
) -> Result<Link, BridgeError> {
    let mtu = (conf.mtu > 0).then_some(conf.mtu);
    let mut name = host_name.to_string();
    for attempt in 0..3 {
        match nl.add_veth(&name, ifname, pod_ns.fd(), mtu, conf.mac) {
            Ok(()) => {
                return nl.link(&name)?.ok_or_else(|| {
                    kernel(format!("veth {name} vanished right after it was created"))
                })
            }
            Err(e) if e.is(libc::EEXIST) => {
                let pod_has_it = pod_ns
                    .run(|| Netlink::new().and_then(|mut n| n.link(ifname)))??
                    .is_some();
                if pod_has_it {
                    return Err(kernel(format!(
                        "CNI_IFNAME {ifname} already exists in netns {}",
                        pod_ns.path().display()
                    )));
                }
                if attempt == 2 {
                    return Err(kernel(format!(
                        "cannot find a free name for the host end of {ifname}: {e}"
                    )));
                }
                name = random_veth_name();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(kernel("veth creation kept failing".into()))
}

/// Attaches the host end to the bridge with the port options and VLANs.
pub fn configure_port(
    nl: &mut Netlink,
    host: &Link,
    br: &Link,
    conf: &BridgeConf,
) -> Result<(), BridgeError> {
    // Up together with the attach: the pod end is still down, so the port
    // carries nothing before its options and VLANs below are in place.
    nl.set_master_up(host.index, br.index)?;
    if conf.hairpin || conf.port_isolation {
        nl.set_bridge_port(host.index, conf.hairpin, conf.port_isolation)?;
    }
    if conf.vlan_filtering() {
        if !conf.preserve_default_vlan {
            match nl.bridge_vlan(host.index, 1, false, false, false) {
                Ok(()) => {}
                Err(e) if e.is(libc::ENOENT) || e.is(libc::EINVAL) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if conf.vlan != 0 {
            nl.bridge_vlan(host.index, conf.vlan, true, true, true)?;
        }
        for vid in &conf.vlan_trunk {
            nl.bridge_vlan(host.index, *vid, false, false, true)?;
        }
    }
    Ok(())
}

/// Waits, with a bound, until the bridge port forwards frames: right after
/// attach it can still be in a learning state, and a pod that sends at
/// once would lose its first packets.
/// Returns the port as last read, forwarding.
pub fn wait_forwarding(nl: &mut Netlink, index: u32, bound: Duration) -> Result<Link, BridgeError> {
    let deadline = Instant::now() + bound;
    let mut pause = Duration::from_micros(200);
    loop {
        let l = nl.link_by_index(index)?.ok_or_else(|| {
            kernel(format!(
                "host veth #{index} disappeared while waiting for it to forward"
            ))
        })?;
        if l.port_forwarding != Some(false) && l.running {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            return Err(kernel(format!(
                "bridge port {} did not reach the forwarding state within {} ms",
                l.name,
                bound.as_millis()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Puts `gw` on `link` as the reference does: the same address is fine, a
/// conflicting one (any other IPv4 address, an overlapping IPv6 one) is an
/// error unless `force` replaces it.
pub fn ensure_gateway_addr(
    nl: &mut Netlink,
    link: &Link,
    gw: IpNetwork,
    force: bool,
) -> Result<(), BridgeError> {
    for (_, a) in nl.addrs_of_family(link.index, gw.is_ipv4())? {
        if a == gw {
            return Ok(());
        }
        let conflicts = gw.is_ipv4() || a.contains(gw.ip()) || gw.contains(a.ip());
        if conflicts {
            if a.is_ipv6() && a.ip().is_ipv6() && is_link_local(a.ip()) {
                continue;
            }
            if force {
                nl.del_addr(link.index, a)?;
            } else {
                return Err(kernel(format!(
                    "{} already has address {a}, different from the gateway {gw} (set forceAddress to replace it)",
                    link.name
                )));
            }
        }
    }
    match nl.add_addr(link.index, gw, true) {
        Ok(()) => {}
        Err(e) if e.is(libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    // Pin the bridge's MAC: otherwise it follows the lowest port MAC and
    // changes as pods come and go, breaking the pods' neighbour caches.
    if !link.mac.is_empty() {
        nl.set_mac(link.index, &link.mac)?;
    }
    Ok(())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// The reference's layout for a gateway on a VLAN: a veth pair in the host
/// netns, `<bridge>.<vlan>` carrying the gateway address and its peer on
/// the bridge as an access port of that VLAN. Shared by every pod of the VLAN.
pub fn ensure_vlan_gateway(
    nl: &mut Netlink,
    br: &Link,
    conf: &BridgeConf,
) -> Result<Link, BridgeError> {
    let name = format!("{}.{}", conf.bridge, conf.vlan);
    if name.len() > 15 {
        return Err(BridgeError::config(
            "bridge",
            format!("{name} (bridge name + vlan) is longer than 15 bytes, too long for the VLAN gateway interface"),
        ));
    }
    if let Some(l) = nl.link(&name)? {
        return Ok(l);
    }
    let peer = format!("vgw{}", &berth_common::digest(&[name.as_bytes()])[..12]);
    let mtu = (conf.mtu > 0).then_some(conf.mtu);
    let here = NetNs::current()?;
    match nl.add_veth(&peer, &name, here.fd(), mtu, None) {
        Ok(()) => {}
        Err(e) if e.is(libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let p = nl
        .link(&peer)?
        .ok_or_else(|| kernel(format!("{peer} vanished")))?;
    nl.set_master(p.index, br.index)?;
    if !conf.preserve_default_vlan {
        let _ = nl.bridge_vlan(p.index, 1, false, false, false);
    }
    nl.bridge_vlan(p.index, conf.vlan, true, true, true)?;
    nl.set_up(p.index, true)?;
    let gw = nl
        .link(&name)?
        .ok_or_else(|| kernel(format!("{name} vanished")))?;
    nl.set_up(gw.index, true)?;
    Ok(gw)
}

/// Enables forwarding for one family in the current (host) netns.
pub fn enable_forwarding(v4: bool) -> Result<(), BridgeError> {
    let key = if v4 {
        "net/ipv4/ip_forward"
    } else {
        "net/ipv6/conf/all/forwarding"
    };
    match host_net::netns::read_sysctl(key) {
        Ok(v) if v == "1" => Ok(()),
        _ => {
            write_sysctl(key, "1").map_err(|e| kernel(format!("enabling forwarding ({key}): {e}")))
        }
    }
}

/// Deletes a link by name if it exists and is a veth; returns whether it
/// did. Deleting one end removes the pair.
pub fn delete_veth(nl: &mut Netlink, name: &str) -> Result<bool, BridgeError> {
    match nl.link(name)? {
        Some(l) if l.kind.as_deref() == Some("veth") => match nl.del_link(l.index) {
            Ok(()) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e.into()),
        },
        _ => Ok(false),
    }
}
