//! Neighbour (ARP/NDP) entries and bridge-family FDB entries.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{family_of, mac_to_string, Netlink, Result};

fn neighbour_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// The link-layer address of an entry.
fn lladdr(n: &NeighbourMessage) -> Option<Vec<u8>> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
        _ => None,
    })
}

/// The IP destination of an entry. In the bridge family (FDB) the kernel
/// sends it as raw bytes.
fn destination(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) => Some(IpAddr::V4(*x)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(x)) => Some(IpAddr::V6(*x)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

impl Netlink {
    /// A permanent neighbour (ARP/NDP) entry on `index`.
    pub fn set_neighbour(&mut self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(&ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_addr(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.change(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("setting neighbour {ip}"),
        )
    }

    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(&ip);
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_addr(ip)));
        self.change(
            RouteNetlinkMessage::DelNeighbour(m),
            0,
            &format!("deleting neighbour {ip}"),
        )
    }

    /// A permanent FDB entry on a VXLAN device: frames for `mac` go to `dst`.
    pub fn set_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_addr(dst)));
        self.change(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("setting FDB entry {}", mac_to_string(mac)),
        )
    }

    /// Neighbour entries (IP, MAC) of one link, for one family.
    pub fn neighbours(&mut self, index: u32, v4: bool) -> Result<Vec<(IpAddr, Vec<u8>)>> {
        let family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        Ok(self
            .dump_neighbours(family, index, "listing neighbours")?
            .iter()
            .filter_map(|n| Some((destination(n)?, lladdr(n)?)))
            .collect())
    }

    /// FDB entries (MAC, destination) of one (VXLAN) link.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<(Vec<u8>, Option<IpAddr>)>> {
        Ok(self
            .dump_neighbours(AddressFamily::Bridge, index, "listing FDB entries")?
            .iter()
            .filter_map(|n| Some((lladdr(n)?, destination(n))))
            .collect())
    }

    /// Every entry of one family on link `index`.
    fn dump_neighbours(
        &mut self,
        family: AddressFamily,
        index: u32,
        op: &str,
    ) -> Result<Vec<NeighbourMessage>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        let v = self.request(RouteNetlinkMessage::GetNeighbour(m), NLM_F_DUMP, op)?;
        Ok(v.into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
                _ => None,
            })
            .collect())
    }

    pub fn del_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_addr(dst)));
        self.change(
            RouteNetlinkMessage::DelNeighbour(m),
            0,
            &format!("deleting FDB entry {}", mac_to_string(mac)),
        )
    }
}
