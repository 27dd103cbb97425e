//! Interface addresses.

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{family_of, Netlink, Result};

impl Netlink {
    pub fn add_addr(&mut self, index: u32, addr: IpNetwork, nodad: bool) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        if let (IpNetwork::V4(v4), true) = (addr, addr.prefix() < 31) {
            m.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        if nodad && addr.is_ipv6() {
            m.attributes.push(AddressAttribute::Flags(
                netlink_packet_route::address::AddressFlags::Nodad,
            ));
        }
        self.change(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding address {addr} to link #{index}"),
        )
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        self.change(
            RouteNetlinkMessage::DelAddress(m),
            0,
            &format!("removing address {addr} from link #{index}"),
        )
    }

    /// Addresses of one link (or of every link with `index` 0), IPv4 first.
    /// Two dumps of one family each rather than one of every family: see
    /// [`Netlink::addrs_of_family`].
    pub fn addrs(&mut self, index: u32) -> Result<Vec<(u32, IpNetwork)>> {
        let mut out = self.addrs_of_family(index, true)?;
        out.extend(self.addrs_of_family(index, false)?);
        Ok(out)
    }

    /// Addresses of one family on one link (or on every link with `index` 0).
    ///
    /// Cheaper than [`Netlink::addrs`] on a busy host: a dump of one family
    /// runs under RCU, while a dump of every family (AF_UNSPEC) holds RTNL,
    /// the lock every link change on the host waits for.
    pub fn addrs_of_family(&mut self, index: u32, v4: bool) -> Result<Vec<(u32, IpNetwork)>> {
        let mut req = AddressMessage::default();
        req.header.family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let v = self.request(
            RouteNetlinkMessage::GetAddress(req),
            NLM_F_DUMP,
            "listing addresses",
        )?;
        let mut out = Vec::new();
        for r in v {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
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
            // The family is checked again: a kernel without IPv6 answers an
            // AF_INET6 dump with every family's addresses.
            if let Some(ip) = ip.filter(|ip| ip.is_ipv4() == v4) {
                if let Ok(net) = IpNetwork::new(ip, a.header.prefix_len) {
                    out.push((a.header.index, net));
                }
            }
        }
        Ok(out)
    }
}
