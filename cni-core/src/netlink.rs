//! A small synchronous rtnetlink client: the link, address, route, bridge
//! port, VLAN and neighbour operations Berth's plugins need, with kernel
//! errors kept as errno so callers can tolerate EEXIST / ENOENT precisely.
//!
//! Synchronous on purpose: a CNI plugin makes a handful of requests and
//! exits, so an async runtime would only add start-up time.

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, BridgePortState, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort, InfoData, InfoKind,
    InfoPortData, InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("netlink: {0}")]
    Decode(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// What Berth reads back about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, `vxlan`, ... (None for plain devices).
    pub kind: Option<String>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub master: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    /// Operational state is up (carrier and admin up).
    pub running: bool,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// Bridge port attributes, when the link is a bridge port.
    pub port_hairpin: Option<bool>,
    pub port_isolated: Option<bool>,
    /// Bridge port STP state is "forwarding".
    pub port_forwarding: Option<bool>,
    /// Bridge attribute.
    pub vlan_filtering: Option<bool>,
}

pub fn mac_to_string(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        out[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        running: m.header.flags.contains(LinkFlags::LowerUp) && m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(mac) => l.mac = mac.clone(),
            LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Link(i) => l.link = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Bridge(opts)) => {
                            for o in opts {
                                if let InfoBridge::VlanFiltering(v) = o {
                                    l.vlan_filtering = Some(*v);
                                }
                            }
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                            for o in opts {
                                match o {
                                    InfoBridgePort::HairpinMode(v) => l.port_hairpin = Some(*v),
                                    InfoBridgePort::Isolated(v) => l.port_isolated = Some(*v),
                                    InfoBridgePort::State(st) => {
                                        l.port_forwarding = Some(*st == BridgePortState::Forwarding)
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// A route as Berth adds and reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Link scope for on-link routes (no gateway).
    pub onlink_scope: bool,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub src: Option<IpAddr>,
    /// RTNH_F_ONLINK: the gateway is reachable on `oif` without a covering route.
    pub onlink: bool,
}

impl RouteSpec {
    pub fn new(dst: IpNetwork) -> RouteSpec {
        RouteSpec {
            dst,
            gw: None,
            oif: None,
            onlink_scope: false,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            src: None,
            onlink: false,
        }
    }
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn from_route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// One open rtnetlink socket, bound to the namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    pub fn new() -> Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        // Extended acks make kernel errors carry a reason; best effort.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink { sock, seq: 1 })
    }

    /// Sends one request and collects the replies: the messages of a dump,
    /// or nothing for an acknowledged change. `op` names the operation in
    /// errors.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(NetlinkError::Socket)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(NetlinkError::Socket)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode(format!("{op}: {e}")))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode(format!("{op}: zero-length message")));
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn change(&mut self, msg: RouteNetlinkMessage, extra: u16, op: &str) -> Result<()> {
        self.request(msg, NLM_F_ACK | extra, op).map(|_| ())
    }

    // ---- links ----

    /// The link called `name`, or None.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        if name.is_empty() || name.len() > 15 {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0, &format!("looking up link {name}")) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::GetLink(m), 0, &format!("looking up link #{index}")) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let v = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP, "listing links")?;
        Ok(v.iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge. EEXIST is returned as an error for the caller to
    /// tolerate (another plugin may have created it a moment ago).
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>, vlan_filtering: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, &format!("creating bridge {name}"))
    }

    /// Turns VLAN filtering on for an existing bridge.
    pub fn set_vlan_filtering(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), 0, "setting vlan_filtering")
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace `peer_ns_fd`.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns_fd: std::os::fd::RawFd,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut pm = LinkMessage::default();
        pm.attributes.push(LinkAttribute::IfName(peer.to_string()));
        pm.attributes.push(LinkAttribute::NetNsFd(peer_ns_fd));
        if let Some(mtu) = mtu {
            pm.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = peer_mac {
            pm.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(pm))),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, &format!("creating veth pair {name}/{peer}"))
    }

    /// Creates a VXLAN device on `underlay` (no learning: peers are programmed).
    #[allow(clippy::too_many_arguments)]
    pub fn add_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        local: IpAddr,
        port: u16,
        underlay: u32,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
    ) -> Result<()> {
        // No outer UDP checksum: the inner packet carries its own, and
        // computing the outer one costs throughput for nothing (RFC 7348
        // allows zero for IPv4; IPv6 keeps it, as the kernel requires).
        let mut data = vec![InfoVxlan::Id(vni), InfoVxlan::Link(underlay), InfoVxlan::Port(port), InfoVxlan::Learning(false)];
        if local.is_ipv4() {
            data.push(InfoVxlan::UDPCsum(false));
        }
        match local {
            IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(data))]));
        self.change(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, &format!("creating vxlan {name}"))
    }

    /// VXLAN parameters of a link: (vni, local address, port, underlay index, learning).
    pub fn vxlan_info(&mut self, name: &str) -> Result<Option<(u32, Option<IpAddr>, u16, u32, bool)>> {
        if name.is_empty() || name.len() > 15 {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let v = match self.request(RouteNetlinkMessage::GetLink(m), 0, &format!("looking up {name}")) {
            Ok(v) => v,
            Err(e) if e.is(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        for r in v {
            let RouteNetlinkMessage::NewLink(l) = r else { continue };
            for a in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = a else { continue };
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(d)) = i {
                        let (mut vni, mut local, mut port, mut link, mut learning) = (0, None, 0, 0, true);
                        for x in d {
                            match x {
                                InfoVxlan::Id(v) => vni = *v,
                                InfoVxlan::Local(a) => local = Some(IpAddr::V4(*a)),
                                InfoVxlan::Local6(a) => local = Some(IpAddr::V6(*a)),
                                InfoVxlan::Port(p) => port = *p,
                                InfoVxlan::Link(l) => link = *l,
                                InfoVxlan::Learning(b) => learning = *b,
                                _ => {}
                            }
                        }
                        return Ok(Some((vni, local, port, link, learning)));
                    }
                }
            }
        }
        Ok(None)
    }

    pub fn del_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(m), 0, &format!("deleting link #{index}"))
    }

    fn set_flags(&mut self, index: u32, flag: LinkFlags, on: bool, op: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = flag;
        if on {
            m.header.flags = flag;
        }
        self.change(RouteNetlinkMessage::SetLink(m), 0, op)
    }

    pub fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        self.set_flags(index, LinkFlags::Up, up, &format!("setting link #{index} {}", if up { "up" } else { "down" }))
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flags(index, LinkFlags::Promisc, on, &format!("setting promiscuous mode on link #{index}"))
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.change(RouteNetlinkMessage::SetLink(m), 0, &format!("attaching link #{index} to #{master}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.change(RouteNetlinkMessage::SetLink(m), 0, &format!("setting MTU of link #{index}"))
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.change(RouteNetlinkMessage::SetLink(m), 0, &format!("setting MAC of link #{index}"))
    }

    pub fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.change(RouteNetlinkMessage::SetLink(m), 0, &format!("renaming link #{index} to {name}"))
    }

    /// Bridge port flags (hairpin, isolation) on a port of a bridge.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![
                InfoBridgePort::HairpinMode(hairpin),
                InfoBridgePort::Isolated(isolated),
            ])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(m), 0, &format!("setting bridge port options on link #{index}"))
    }

    /// Adds (or removes) one VLAN on a bridge port.
    pub fn bridge_vlan(&mut self, index: u32, vid: u16, pvid: bool, untagged: bool, add: bool) -> Result<()> {
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.header.index = index;
        m.attributes.push(LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid })]));
        let op = format!("{} vlan {vid} on link #{index}", if add { "adding" } else { "removing" });
        if add {
            self.change(RouteNetlinkMessage::SetLink(m), 0, &op)
        } else {
            self.change(RouteNetlinkMessage::DelLink(m), 0, &op)
        }
    }

    /// VLANs of a bridge port: (vid, pvid, untagged).
    pub fn bridge_vlans(&mut self, index: u32) -> Result<Vec<(u16, bool, bool)>> {
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let v = self.request(RouteNetlinkMessage::GetLink(m), NLM_F_DUMP, "listing bridge vlans")?;
        let mut out = Vec::new();
        for r in v {
            let RouteNetlinkMessage::NewLink(l) = r else { continue };
            if l.header.index != index {
                continue;
            }
            for a in &l.attributes {
                if let LinkAttribute::AfSpecBridge(specs) = a {
                    for s in specs {
                        if let AfSpecBridge::VlanInfo(info) = s {
                            out.push((
                                info.vid,
                                info.flags.contains(BridgeVlanInfoFlags::Pvid),
                                info.flags.contains(BridgeVlanInfoFlags::Untagged),
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    // ---- addresses ----

    pub fn add_addr(&mut self, index: u32, addr: IpNetwork, nodad: bool) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        if let (IpNetwork::V4(v4), true) = (addr, addr.prefix() < 31) {
            m.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        if nodad && addr.is_ipv6() {
            m.attributes.push(AddressAttribute::Flags(netlink_packet_route::address::AddressFlags::Nodad));
        }
        self.change(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL, &format!("adding address {addr} to link #{index}"))
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        self.change(RouteNetlinkMessage::DelAddress(m), 0, &format!("removing address {addr} from link #{index}"))
    }

    /// Addresses of one link (or of every link with `index` 0).
    pub fn addrs(&mut self, index: u32) -> Result<Vec<(u32, IpNetwork)>> {
        let v = self.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP, "listing addresses")?;
        let mut out = Vec::new();
        for r in v {
            let RouteNetlinkMessage::NewAddress(a) = r else { continue };
            if index != 0 && a.header.index != index {
                continue;
            }
            let ip = a
                .attributes
                .iter()
                .find_map(|x| match x {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                })
                .or_else(|| {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
            if let Some(ip) = ip {
                if let Ok(net) = IpNetwork::new(ip, a.header.prefix_len) {
                    out.push((a.header.index, net));
                }
            }
        }
        Ok(out)
    }

    // ---- routes ----

    fn route_msg(r: &RouteSpec) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(&r.dst.ip());
        m.header.destination_prefix_length = r.dst.prefix();
        let table = r.table.unwrap_or(u32::from(RouteHeader::RT_TABLE_MAIN));
        m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.gw.is_none() && r.onlink_scope { RouteScope::Link } else { RouteScope::Universe };
        if r.onlink {
            m.header.flags |= RouteFlags::Onlink;
        }
        if r.dst.prefix() > 0 {
            m.attributes.push(RouteAttribute::Destination(route_addr(r.dst.network())));
        }
        if let Some(gw) = r.gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        if let Some(oif) = r.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = r.src {
            m.attributes.push(RouteAttribute::PrefSource(route_addr(src)));
        }
        if let Some(p) = r.priority {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        if table > 255 {
            m.attributes.push(RouteAttribute::Table(table));
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = r.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(mss) = r.advmss {
            metrics.push(RouteMetric::Advmss(mss));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        m
    }

    pub fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
        let op = format!("adding route {}{}", r.dst, r.gw.map(|g| format!(" via {g}")).unwrap_or_default());
        self.change(RouteNetlinkMessage::NewRoute(Self::route_msg(r)), NLM_F_CREATE | NLM_F_EXCL, &op)
    }

    pub fn replace_route(&mut self, r: &RouteSpec) -> Result<()> {
        let op = format!("replacing route {}", r.dst);
        self.change(RouteNetlinkMessage::NewRoute(Self::route_msg(r)), NLM_F_CREATE | NLM_F_REPLACE, &op)
    }

    pub fn del_route(&mut self, r: &RouteSpec) -> Result<()> {
        let op = format!("deleting route {}", r.dst);
        self.change(RouteNetlinkMessage::DelRoute(Self::route_msg(r)), 0, &op)
    }

    /// Routes of the main table for one family (`v4`), as specs.
    pub fn routes(&mut self, v4: bool) -> Result<Vec<RouteSpec>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v4 { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let v = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP, "listing routes")?;
        let mut out = Vec::new();
        for r in v {
            let RouteNetlinkMessage::NewRoute(rm) = r else { continue };
            let mut table = u32::from(rm.header.table);
            let mut dst_ip = None;
            let mut spec_gw = None;
            let mut oif = None;
            let mut mtu = None;
            let mut advmss = None;
            let mut priority = None;
            let mut src = None;
            for a in &rm.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst_ip = from_route_addr(d),
                    RouteAttribute::Gateway(g) => spec_gw = from_route_addr(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Priority(p) => priority = Some(*p),
                    RouteAttribute::PrefSource(s) => src = from_route_addr(s),
                    RouteAttribute::Metrics(ms) => {
                        for x in ms {
                            match x {
                                RouteMetric::Mtu(v) => mtu = Some(*v),
                                RouteMetric::Advmss(v) => advmss = Some(*v),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) || rm.header.kind != RouteType::Unicast {
                continue;
            }
            let unspecified: IpAddr = if v4 { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) };
            let Ok(dst) = IpNetwork::new(dst_ip.unwrap_or(unspecified), rm.header.destination_prefix_length) else { continue };
            out.push(RouteSpec {
                dst,
                gw: spec_gw,
                oif,
                onlink_scope: rm.header.scope == RouteScope::Link,
                mtu,
                advmss,
                priority,
                table: Some(table),
                src,
                onlink: rm.header.flags.contains(RouteFlags::Onlink),
            });
        }
        Ok(out)
    }

    // ---- neighbours and FDB ----

    /// A permanent neighbour (ARP/NDP) entry on `index`.
    pub fn set_neighbour(&mut self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(&ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.change(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE, &format!("setting neighbour {ip}"))
    }

    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(&ip);
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        self.change(RouteNetlinkMessage::DelNeighbour(m), 0, &format!("deleting neighbour {ip}"))
    }

    /// A permanent FDB entry on a VXLAN device: frames for `mac` go to `dst`.
    pub fn set_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        self.change(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_REPLACE, &format!("setting FDB entry {}", mac_to_string(mac)))
    }

    /// Neighbour entries (IP, MAC) of one link, for one family.
    pub fn neighbours(&mut self, index: u32, v4: bool) -> Result<Vec<(IpAddr, Vec<u8>)>> {
        let mut m = NeighbourMessage::default();
        m.header.family = if v4 { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let v = self.request(RouteNetlinkMessage::GetNeighbour(m), NLM_F_DUMP, "listing neighbours")?;
        Ok(v.into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => {
                    let ip = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) => Some(IpAddr::V4(*x)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(x)) => Some(IpAddr::V6(*x)),
                        _ => None,
                    })?;
                    let mac = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
                        _ => None,
                    })?;
                    Some((ip, mac))
                }
                _ => None,
            })
            .collect())
    }

    /// FDB entries (MAC, destination) of one (VXLAN) link.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<(Vec<u8>, Option<IpAddr>)>> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        let v = self.request(RouteNetlinkMessage::GetNeighbour(m), NLM_F_DUMP, "listing FDB entries")?;
        Ok(v.into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => {
                    let mac = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
                        _ => None,
                    })?;
                    // In the bridge family the destination comes back as raw bytes.
                    let dst = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) => Some(IpAddr::V4(*x)),
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(x)) => Some(IpAddr::V6(*x)),
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        },
                        _ => None,
                    });
                    Some((mac, dst))
                }
                _ => None,
            })
            .collect())
    }

    pub fn del_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        self.change(RouteNetlinkMessage::DelNeighbour(m), 0, &format!("deleting FDB entry {}", mac_to_string(mac)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:ab:0c:00:00:ff").expect("mac");
        assert_eq!(mac_to_string(&m), "02:ab:0c:00:00:ff");
        assert!(parse_mac("02:ab:0c:00:00").is_none());
        assert!(parse_mac("02:ab:0c:00:00:zz").is_none());
        assert!(parse_mac("2:ab:0c:00:00:ff").is_none());
    }

    #[test]
    fn loopback_is_visible_without_privileges() {
        // Reading links works unprivileged in any namespace.
        let mut nl = Netlink::new().expect("socket");
        let lo = nl.link("lo").expect("query").expect("lo exists");
        assert_eq!(lo.index, 1);
        assert!(nl.link("brth-nosuchlnk").expect("query").is_none());
        assert!(nl.link("a-name-that-is-far-too-long").expect("query").is_none());
    }
}
