//! VXLAN devices.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, Result};

/// VXLAN parameters of a link as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub port: u16,
    /// Index of the underlay link.
    pub underlay: u32,
    pub learning: bool,
}

impl Netlink {
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
        let mut data = vec![
            InfoVxlan::Id(vni),
            InfoVxlan::Link(underlay),
            InfoVxlan::Port(port),
            InfoVxlan::Learning(false),
        ];
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
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.change(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating vxlan {name}"),
        )
    }

    /// VXLAN parameters of the link called `name`, or None when there is no
    /// such link or it is not a VXLAN device.
    pub fn vxlan_info(&mut self, name: &str) -> Result<Option<VxlanInfo>> {
        if name.is_empty() || name.len() > 15 {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(super::links::skip_stats());
        let v = match self.request(
            RouteNetlinkMessage::GetLink(m),
            0,
            &format!("looking up {name}"),
        ) {
            Ok(v) => v,
            Err(e) if e.is(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        for r in v {
            let RouteNetlinkMessage::NewLink(l) = r else {
                continue;
            };
            for a in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = a else {
                    continue;
                };
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(d)) = i {
                        let (mut vni, mut local, mut port, mut link, mut learning) =
                            (0, None, 0, 0, true);
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
                        return Ok(Some(VxlanInfo {
                            vni,
                            local,
                            port,
                            underlay: link,
                            learning,
                        }));
                    }
                }
            }
        }
        Ok(None)
    }
}
