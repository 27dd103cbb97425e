//! Links: lookup, creation of veth pairs, flags, MTU, MAC, names, masters.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, BridgePortState, In6AddrGenMode, InfoBridge, InfoBridgePort,
    InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, Result};

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
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
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

/// Asks the kernel to leave the interface counters out of a link reply
/// (IFLA_STATS, IFLA_STATS64, the IPv6 and ICMPv6 statistics): nothing here
/// reads them, and gathering, sending and parsing them is most of a reply.
pub(crate) fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

pub(crate) fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        running: m.header.flags.contains(LinkFlags::LowerUp)
            && m.header.flags.contains(LinkFlags::Up),
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

impl Netlink {
    /// The link called `name`, or None.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        if name.is_empty() || name.len() > 15 {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(skip_stats());
        match self.request(
            RouteNetlinkMessage::GetLink(m),
            0,
            &format!("looking up link {name}"),
        ) {
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
        m.attributes.push(skip_stats());
        match self.request(
            RouteNetlinkMessage::GetLink(m),
            0,
            &format!("looking up link #{index}"),
        ) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(skip_stats());
        let v = self.request(RouteNetlinkMessage::GetLink(m), NLM_F_DUMP, "listing links")?;
        Ok(v.iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })
            .collect())
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
        // Without queue counts the kernel gives each end one queue per CPU,
        // then cuts the real count back to one, and that cut waits for an
        // RCU grace period while holding RTNL: every other link change on
        // the host waits behind it. One queue is what a veth uses anyway.
        for msg in [&mut pm, &mut m] {
            msg.attributes.push(LinkAttribute::NumTxQueues(1));
            msg.attributes.push(LinkAttribute::NumRxQueues(1));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(pm))),
        ]));
        self.change(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating veth pair {name}/{peer}"),
        )
    }

    pub fn del_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change(
            RouteNetlinkMessage::DelLink(m),
            0,
            &format!("deleting link #{index}"),
        )
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
        self.set_flags(
            index,
            LinkFlags::Up,
            up,
            &format!("setting link #{index} {}", if up { "up" } else { "down" }),
        )
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flags(
            index,
            LinkFlags::Promisc,
            on,
            &format!("setting promiscuous mode on link #{index}"),
        )
    }

    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.change(
            RouteNetlinkMessage::SetLink(m),
            0,
            &format!("attaching link #{index} to #{master}"),
        )
    }

    /// Attaches a link to `master` and brings it up in one request: one
    /// RTNL section instead of two, which matters when many pods start at
    /// once on a host (every link change there takes the same lock).
    ///
    /// The same request turns IPv6 address generation off on the link: a
    /// bridge port forwards frames and needs no address of its own, and
    /// without one the kernel skips, for every pod, the link-local address,
    /// its duplicate address detection, the multicast joins and router
    /// solicitations at start, and their teardown at delete. The mode is in
    /// place before the port has carrier (its peer is still down), which is
    /// when the kernel would generate the address. A link without IPv6
    /// state (`ipv6.disable=1`, or an MTU below 1280) makes the kernel refuse
    /// the attribute with EAFNOSUPPORT while it validates the request, before
    /// it changes anything, so the request is sent again without it.
    pub fn set_master_up(&mut self, index: u32, master: u32) -> Result<()> {
        let op = format!("attaching link #{index} to #{master} and setting it up");
        let msg = |no_addrconf: bool| {
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.header.change_mask = LinkFlags::Up;
            m.header.flags = LinkFlags::Up;
            m.attributes.push(LinkAttribute::Controller(master));
            if no_addrconf {
                m.attributes
                    .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                        vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                    )]));
            }
            RouteNetlinkMessage::SetLink(m)
        };
        match self.change(msg(true), 0, &op) {
            Err(e) if e.is(libc::EAFNOSUPPORT) => self.change(msg(false), 0, &op),
            r => r,
        }
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.change(
            RouteNetlinkMessage::SetLink(m),
            0,
            &format!("setting MTU of link #{index}"),
        )
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.change(
            RouteNetlinkMessage::SetLink(m),
            0,
            &format!("setting MAC of link #{index}"),
        )
    }

    pub fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.change(
            RouteNetlinkMessage::SetLink(m),
            0,
            &format!("renaming link #{index} to {name}"),
        )
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
        assert!(nl
            .link("a-name-that-is-far-too-long")
            .expect("query")
            .is_none());
    }
}
