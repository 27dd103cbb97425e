//! The node's VXLAN device and the per-peer kernel state: a permanent
//! neighbour entry (peer VTEP address -> peer VTEP MAC), an FDB entry (peer
//! VTEP MAC -> peer underlay address) and an on-link route to the peer's
//! subnet via its VTEP address. With DirectRouting, a peer on a subnet
//! directly connected to the underlay gets a plain route via its underlay
//! address instead (marked with [`DIRECT_ROUTE_PROTO`]).

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

/// Route protocol (`ip route ... proto 183`) marking the direct routes
/// berth-overlayd adds on the underlay device, so that the resync touches
/// only routes it made there. (The VXLAN routes are told apart by their
/// device, which is berth's own.)
pub const DIRECT_ROUTE_PROTO: u8 = 183;

/// How one peer's subnets are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPath {
    /// Over the VXLAN device: neighbour, FDB entry and on-link route.
    Vxlan,
    /// DirectRouting: the peer's underlay address lies in a subnet directly
    /// connected to `underlay`, so its subnet of that address family gets a
    /// plain route via that address on `underlay`, unencapsulated. A subnet
    /// of the other family (the lease carries one underlay address) stays
    /// on VXLAN.
    Direct { underlay: u32 },
}

impl PeerPath {
    /// Whether the peer's IPv4 subnet goes over VXLAN.
    pub fn vxlan_v4(&self, p: &Lease) -> bool {
        !matches!(self, PeerPath::Direct { .. } if p.public_ip.is_ipv4())
    }

    /// Whether the peer has an IPv6 subnet that goes over VXLAN.
    pub fn vxlan_v6(&self, p: &Lease) -> bool {
        p.subnet6.is_some() && !matches!(self, PeerPath::Direct { .. } if p.public_ip.is_ipv6())
    }

    /// Whether the peer needs its FDB entry (any subnet over VXLAN).
    pub fn needs_fdb(&self, p: &Lease) -> bool {
        self.vxlan_v4(p) || self.vxlan_v6(p)
    }

    pub fn name(&self) -> &'static str {
        match self {
            PeerPath::Vxlan => "vxlan",
            PeerPath::Direct { .. } => "direct",
        }
    }
}

/// The subnets directly connected to a link: its addresses with their
/// prefixes (IPv6 link-local ones left out).
pub fn connected_subnets(nl: &mut Netlink, link: u32) -> Result<Vec<IpNetwork>, OverlayError> {
    Ok(nl
        .addrs(link)?
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| !matches!(a.ip(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .filter_map(|a| IpNetwork::new(a.network(), a.prefix()).ok())
        .collect())
}

/// The path to a peer: direct when DirectRouting is on and the peer's
/// underlay address is in one of `connected` (the underlay's subnets).
pub fn path_for(
    direct_routing: bool,
    connected: &[IpNetwork],
    underlay: u32,
    p: &Lease,
) -> PeerPath {
    if direct_routing && connected.iter().any(|n| n.contains(p.public_ip)) {
        PeerPath::Direct { underlay }
    } else {
        PeerPath::Vxlan
    }
}

fn vxlan_route(dev: u32, dst: IpNetwork, gw: IpAddr) -> RouteSpec {
    let mut r = RouteSpec::new(dst);
    r.gw = Some(gw);
    r.oif = Some(dev);
    r.onlink = true;
    r
}

fn direct_route(underlay: u32, dst: IpNetwork, gw: IpAddr) -> RouteSpec {
    let mut r = RouteSpec::new(dst);
    r.gw = Some(gw);
    r.oif = Some(underlay);
    r.protocol = Some(DIRECT_ROUTE_PROTO);
    r
}

/// The routes one peer gets on `path` (`dev` is the VXLAN device).
pub fn peer_routes(dev: u32, p: &Lease, path: PeerPath) -> Vec<RouteSpec> {
    let mut v = Vec::new();
    let dst4 = IpNetwork::V4(p.subnet);
    match path {
        PeerPath::Direct { underlay } if !path.vxlan_v4(p) => {
            v.push(direct_route(underlay, dst4, p.public_ip))
        }
        _ => v.push(vxlan_route(dev, dst4, p.vtep_ip())),
    }
    if let Some(s6) = p.subnet6 {
        let dst6 = IpNetwork::V6(s6);
        match (path, p.vtep_ip6()) {
            (PeerPath::Direct { underlay }, _) if !path.vxlan_v6(p) => {
                v.push(direct_route(underlay, dst6, p.public_ip))
            }
            (_, Some(gw6)) => v.push(vxlan_route(dev, dst6, gw6)),
            _ => {}
        }
    }
    v
}

/// Programs one peer on `path` (idempotent: every operation replaces).
pub fn program_peer(
    nl: &mut Netlink,
    dev: u32,
    p: &Lease,
    path: PeerPath,
) -> Result<(), OverlayError> {
    let mac = parse_mac(&p.vtep_mac).ok_or_else(|| {
        OverlayError::Io(format!(
            "lease of {} has a bad VTEP MAC {:?}",
            p.node, p.vtep_mac
        ))
    })?;
    if path.vxlan_v4(p) {
        nl.set_neighbour(dev, p.vtep_ip(), &mac)?;
    }
    if let (true, Some(ip6)) = (path.vxlan_v6(p), p.vtep_ip6()) {
        nl.set_neighbour(dev, ip6, &mac)?;
    }
    if path.needs_fdb(p) {
        nl.set_fdb(dev, &mac, p.public_ip)?;
    }
    for r in peer_routes(dev, p, path) {
        nl.replace_route(&r)?;
    }
    Ok(())
}

/// Removes one peer's state as programmed on `path` (its routes) plus its
/// neighbours and FDB entry, whichever path it had; absent pieces are fine.
pub fn unprogram_peer(
    nl: &mut Netlink,
    dev: u32,
    p: &Lease,
    path: PeerPath,
) -> Result<(), OverlayError> {
    let gone = |r: Result<(), host_net::netlink::NetlinkError>| match r {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENOENT) || e.is(libc::ESRCH) || e.is(libc::ENODEV) => Ok(()),
        Err(e) => Err(OverlayError::from(e)),
    };
    for r in peer_routes(dev, p, path) {
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
    /// The peer's subnet is routed directly on the underlay (DirectRouting).
    pub direct: bool,
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
    /// Routes on the VXLAN device.
    pub routes: Vec<RouteSpec>,
    /// Direct routes berth made (protocol [`DIRECT_ROUTE_PROTO`]), on any device.
    pub direct: Vec<RouteSpec>,
    pub neighbours: HashMap<IpAddr, String>,
    pub fdb: HashSet<(String, IpAddr)>,
}

impl KernelView {
    pub fn read(nl: &mut Netlink, dev: u32) -> Result<KernelView, OverlayError> {
        let mut all = nl.routes(true)?;
        all.extend(nl.routes(false)?);
        let (direct, rest): (Vec<RouteSpec>, Vec<RouteSpec>) = all
            .into_iter()
            .partition(|r| r.protocol == Some(DIRECT_ROUTE_PROTO));
        let routes = rest.into_iter().filter(|r| r.oif == Some(dev)).collect();
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
            direct,
            neighbours,
            fdb,
        })
    }

    /// The path the kernel has for a peer: direct when a direct route of
    /// ours leads to its subnet via its underlay address.
    pub fn path_of(&self, p: &Lease) -> PeerPath {
        let dsts = [Some(IpNetwork::V4(p.subnet)), p.subnet6.map(IpNetwork::V6)];
        self.direct
            .iter()
            .find(|r| dsts.contains(&Some(r.dst)) && r.gw == Some(p.public_ip))
            .and_then(|r| r.oif)
            .map(|underlay| PeerPath::Direct { underlay })
            .unwrap_or(PeerPath::Vxlan)
    }

    /// What the kernel has for a peer, on the path the kernel shows.
    pub fn state_of(&self, p: &Lease) -> PeerState {
        self.state_on(p, self.path_of(p))
    }

    /// What the kernel has for a peer that should be on `path`; pieces the
    /// path does not need count as present.
    pub fn state_on(&self, p: &Lease, path: PeerPath) -> PeerState {
        let route = match path {
            PeerPath::Vxlan => self
                .routes
                .iter()
                .any(|r| r.dst == IpNetwork::V4(p.subnet) && r.gw == Some(p.vtep_ip())),
            PeerPath::Direct { underlay } => peer_routes(0, p, path)
                .iter()
                .filter(|w| w.oif == Some(underlay))
                .all(|w| {
                    self.direct
                        .iter()
                        .any(|r| r.dst == w.dst && r.gw == w.gw && r.oif == w.oif)
                }),
        };
        let neighbour_ok = |ip: Option<IpAddr>| {
            ip.and_then(|ip| self.neighbours.get(&ip))
                .map(|m| m == &p.vtep_mac)
                .unwrap_or(false)
        };
        let neighbour = if path.vxlan_v4(p) {
            neighbour_ok(Some(p.vtep_ip()))
        } else if path.vxlan_v6(p) {
            neighbour_ok(p.vtep_ip6())
        } else {
            true
        };
        let fdb = !path.needs_fdb(p) || self.fdb.contains(&(p.vtep_mac.clone(), p.public_ip));
        PeerState {
            route,
            neighbour,
            fdb,
            direct: matches!(path, PeerPath::Direct { .. }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(public_ip: &str, subnet6: Option<&str>) -> Lease {
        Lease {
            node: "peer".into(),
            subnet: "10.244.2.0/24".parse().expect("subnet"),
            subnet6: subnet6.map(|s| s.parse().expect("subnet6")),
            public_ip: public_ip.parse().expect("ip"),
            vtep_mac: "02:00:00:00:00:02".into(),
            expires_at: 0,
        }
    }

    fn nets(v: &[&str]) -> Vec<IpNetwork> {
        v.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn direct_only_when_on_and_the_peer_is_on_a_connected_subnet() {
        let connected = nets(&["172.31.250.0/24", "fd00:1::/64"]);
        let near = lease("172.31.250.2", None);
        let far = lease("172.31.251.3", None);
        assert_eq!(
            path_for(true, &connected, 7, &near),
            PeerPath::Direct { underlay: 7 }
        );
        assert_eq!(path_for(true, &connected, 7, &far), PeerPath::Vxlan);
        assert_eq!(path_for(false, &connected, 7, &near), PeerPath::Vxlan);
    }

    #[test]
    fn direct_peer_gets_a_marked_route_via_its_underlay_address_and_no_vxlan_state() {
        let p = lease("172.31.250.2", None);
        let path = PeerPath::Direct { underlay: 7 };
        let r = peer_routes(9, &p, path);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].dst.to_string(), "10.244.2.0/24");
        assert_eq!(r[0].gw, Some(p.public_ip));
        assert_eq!(r[0].oif, Some(7));
        assert_eq!(r[0].protocol, Some(DIRECT_ROUTE_PROTO));
        assert!(!r[0].onlink);
        assert!(!path.needs_fdb(&p) && !path.vxlan_v4(&p));
        // Over VXLAN: the on-link route via the VTEP on the device.
        let v = peer_routes(9, &p, PeerPath::Vxlan);
        assert_eq!(v[0].gw, Some(p.vtep_ip()));
        assert_eq!(
            (v[0].oif, v[0].onlink, v[0].protocol),
            (Some(9), true, None)
        );
        assert!(PeerPath::Vxlan.needs_fdb(&p));
    }

    #[test]
    fn a_dual_stack_peer_with_an_ipv4_underlay_address_keeps_ipv6_on_vxlan() {
        let p = lease("172.31.250.2", Some("fd00:244:0:2::/64"));
        let path = PeerPath::Direct { underlay: 7 };
        let r = peer_routes(9, &p, path);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].oif, Some(7));
        assert_eq!(r[1].oif, Some(9));
        assert_eq!(r[1].gw, p.vtep_ip6());
        assert!(path.vxlan_v6(&p) && path.needs_fdb(&p) && !path.vxlan_v4(&p));
    }

    #[test]
    fn kernel_view_tells_direct_from_vxlan_and_missing() {
        let p = lease("172.31.250.2", None);
        let path = PeerPath::Direct { underlay: 7 };
        let mut view = KernelView {
            routes: Vec::new(),
            direct: peer_routes(9, &p, path),
            neighbours: HashMap::new(),
            fdb: HashSet::new(),
        };
        assert_eq!(view.path_of(&p), path);
        assert!(view.state_on(&p, path).complete());
        assert!(view.state_of(&p).direct);
        // Over VXLAN the same view misses everything.
        assert!(!view.state_on(&p, PeerPath::Vxlan).complete());
        view.direct.clear();
        assert_eq!(view.path_of(&p), PeerPath::Vxlan);
        assert_eq!(view.state_on(&p, path).describe(), "missing route");
    }
}
