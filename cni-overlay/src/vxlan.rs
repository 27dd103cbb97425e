//! The node's VXLAN device and the per-peer kernel state: a permanent
//! neighbour entry (peer VTEP address -> peer VTEP MAC), an FDB entry (peer
//! VTEP MAC -> peer underlay address) and an on-link route to the peer's
//! subnet via its VTEP address.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use host_net::netlink::{mac_to_string, parse_mac, Link, Netlink, RouteSpec};
use ipnetwork::IpNetwork;

use crate::error::OverlayError;
use crate::lease::Lease;

pub fn device_name(vni: u32) -> String {
    format!("berth.{vni}")
}

/// The underlay: the named interface, or the one holding the default route;
/// and its address (the first global IPv4 one, else IPv6).
pub fn underlay(nl: &mut Netlink, iface: Option<&str>) -> Result<(Link, IpAddr), OverlayError> {
    let link = match iface {
        Some(name) => nl
            .link(name)?
            .ok_or_else(|| OverlayError::config("--iface", format!("no interface named {name}")))?,
        None => {
            let default: IpNetwork = "0.0.0.0/0"
                .parse()
                .map_err(|_| OverlayError::Io("constant".into()))?;
            let oif = nl
                .routes(true)?
                .into_iter()
                .find(|r| r.dst == default)
                .and_then(|r| r.oif)
                .ok_or_else(|| OverlayError::config("--iface", "there is no default route to pick the underlay interface from; set --iface"))?;
            nl.link_by_index(oif)?.ok_or_else(|| {
                OverlayError::config(
                    "--iface",
                    format!("default route interface #{oif} vanished"),
                )
            })?
        }
    };
    let addrs = nl.addrs(link.index)?;
    let pick = addrs
        .iter()
        .map(|(_, a)| a.ip())
        .find(|ip| ip.is_ipv4())
        .or_else(|| {
            addrs
                .iter()
                .map(|(_, a)| a.ip())
                .find(|ip| matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80))
        })
        .ok_or_else(|| {
            OverlayError::config(
                "--public-ip",
                format!("{} has no address; set --public-ip", link.name),
            )
        })?;
    Ok((link, pick))
}

pub struct DeviceSpec<'a> {
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay: &'a Link,
    pub mac: [u8; 6],
    pub lease: &'a Lease,
}

/// MTU of the device: the underlay's minus the VXLAN encapsulation.
pub fn mtu_for(underlay_mtu: u32, local: IpAddr) -> u32 {
    underlay_mtu.saturating_sub(if local.is_ipv4() { 50 } else { 70 })
}

/// Creates (or repairs) the VXLAN device and its addresses.
pub fn ensure_device(nl: &mut Netlink, s: &DeviceSpec<'_>) -> Result<Link, OverlayError> {
    let name = device_name(s.vni);
    let mtu = mtu_for(s.underlay.mtu, s.local);
    if let Some(have) = nl.vxlan_info(&name)? {
        let ok = have.vni == s.vni
            && have.local == Some(s.local)
            && have.port == s.port
            && have.underlay == s.underlay.index
            && !have.learning;
        if !ok {
            if let Some(l) = nl.link(&name)? {
                nl.del_link(l.index)?;
            }
        }
    }
    let dev = match nl.link(&name)? {
        Some(l) => l,
        None => {
            match nl.add_vxlan(
                &name,
                s.vni,
                s.local,
                s.port,
                s.underlay.index,
                Some(mtu),
                Some(s.mac),
            ) {
                Ok(()) => {}
                Err(e) if e.is(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            nl.link(&name)?
                .ok_or_else(|| OverlayError::Io(format!("{name} vanished after creation")))?
        }
    };
    if dev.mac != s.mac {
        nl.set_mac(dev.index, &s.mac)?;
    }
    if dev.mtu != mtu {
        nl.set_mtu(dev.index, mtu)?;
    }
    // Exactly this node's VTEP addresses on the device.
    let mut want =
        vec![IpNetwork::new(s.lease.vtep_ip(), 32).map_err(|e| OverlayError::Io(e.to_string()))?];
    if let Some(ip6) = s.lease.vtep_ip6() {
        want.push(IpNetwork::new(ip6, 128).map_err(|e| OverlayError::Io(e.to_string()))?);
    }
    for (_, a) in nl.addrs(dev.index)? {
        let link_local = matches!(a.ip(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !link_local && !want.contains(&a) {
            nl.del_addr(dev.index, a)?;
        }
    }
    for a in want {
        match nl.add_addr(dev.index, a, true) {
            Ok(()) => {}
            Err(e) if e.is(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !dev.up {
        nl.set_up(dev.index, true)?;
    }
    Ok(nl.link_by_index(dev.index)?.unwrap_or(dev))
}

fn peer_routes(dev: u32, p: &Lease) -> Vec<RouteSpec> {
    let mut v = Vec::new();
    let mut r = RouteSpec::new(IpNetwork::V4(p.subnet));
    r.gw = Some(p.vtep_ip());
    r.oif = Some(dev);
    r.onlink = true;
    v.push(r);
    if let (Some(s6), Some(gw6)) = (p.subnet6, p.vtep_ip6()) {
        let mut r = RouteSpec::new(IpNetwork::V6(s6));
        r.gw = Some(gw6);
        r.oif = Some(dev);
        r.onlink = true;
        v.push(r);
    }
    v
}

/// Programs one peer (idempotent: every operation replaces).
pub fn program_peer(nl: &mut Netlink, dev: u32, p: &Lease) -> Result<(), OverlayError> {
    let mac = parse_mac(&p.vtep_mac).ok_or_else(|| {
        OverlayError::Io(format!(
            "lease of {} has a bad VTEP MAC {:?}",
            p.node, p.vtep_mac
        ))
    })?;
    nl.set_neighbour(dev, p.vtep_ip(), &mac)?;
    if let Some(ip6) = p.vtep_ip6() {
        nl.set_neighbour(dev, ip6, &mac)?;
    }
    nl.set_fdb(dev, &mac, p.public_ip)?;
    for r in peer_routes(dev, p) {
        nl.replace_route(&r)?;
    }
    Ok(())
}

/// Removes one peer's state; absent pieces are fine.
pub fn unprogram_peer(nl: &mut Netlink, dev: u32, p: &Lease) -> Result<(), OverlayError> {
    let gone = |r: Result<(), host_net::netlink::NetlinkError>| match r {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENOENT) || e.is(libc::ESRCH) || e.is(libc::ENODEV) => Ok(()),
        Err(e) => Err(OverlayError::from(e)),
    };
    for r in peer_routes(dev, p) {
        gone(nl.del_route(&r))?;
    }
    if let Some(mac) = parse_mac(&p.vtep_mac) {
        gone(nl.del_fdb(dev, &mac, p.public_ip))?;
    }
    gone(nl.del_neighbour(dev, p.vtep_ip()))?;
    if let Some(ip6) = p.vtep_ip6() {
        gone(nl.del_neighbour(dev, ip6))?;
    }
    Ok(())
}

/// What the kernel has for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerState {
    pub route: bool,
    pub neighbour: bool,
    pub fdb: bool,
}

impl PeerState {
    pub fn complete(&self) -> bool {
        self.route && self.neighbour && self.fdb
    }

    pub fn describe(&self) -> String {
        if self.complete() {
            return "programmed".into();
        }
        let missing: Vec<&str> = [
            ("route", self.route),
            ("neighbour", self.neighbour),
            ("fdb", self.fdb),
        ]
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
        format!("missing {}", missing.join(", "))
    }
}

/// A snapshot of the device's kernel state, to compare with the leases.
pub struct KernelView {
    pub routes: Vec<RouteSpec>,
    pub neighbours: HashMap<IpAddr, String>,
    pub fdb: HashSet<(String, IpAddr)>,
}

impl KernelView {
    pub fn read(nl: &mut Netlink, dev: u32) -> Result<KernelView, OverlayError> {
        let mut routes: Vec<RouteSpec> = nl
            .routes(true)?
            .into_iter()
            .filter(|r| r.oif == Some(dev))
            .collect();
        routes.extend(nl.routes(false)?.into_iter().filter(|r| r.oif == Some(dev)));
        let mut neighbours = HashMap::new();
        for v4 in [true, false] {
            for (ip, mac) in nl.neighbours(dev, v4)? {
                neighbours.insert(ip, mac_to_string(&mac));
            }
        }
        let fdb = nl
            .fdb(dev)?
            .into_iter()
            .filter_map(|(mac, dst)| dst.map(|d| (mac_to_string(&mac), d)))
            .collect();
        Ok(KernelView {
            routes,
            neighbours,
            fdb,
        })
    }

    pub fn state_of(&self, p: &Lease) -> PeerState {
        let route = self
            .routes
            .iter()
            .any(|r| r.dst == IpNetwork::V4(p.subnet) && r.gw == Some(p.vtep_ip()));
        let neighbour = self
            .neighbours
            .get(&p.vtep_ip())
            .map(|m| m == &p.vtep_mac)
            .unwrap_or(false);
        let fdb = self.fdb.contains(&(p.vtep_mac.clone(), p.public_ip));
        PeerState {
            route,
            neighbour,
            fdb,
        }
    }
}
