//! Routes of the main (or a numbered) table.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{family_of, Netlink, Result};

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
    /// The route's protocol (`rtm_protocol`, `ip route ... proto N`): a marker
    /// telling whose route it is. None adds with `boot` (3); read routes carry
    /// the kernel's value.
    pub protocol: Option<u8>,
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
            protocol: None,
        }
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

impl Netlink {
    fn route_msg(r: &RouteSpec) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(&r.dst.ip());
        m.header.destination_prefix_length = r.dst.prefix();
        let table = r.table.unwrap_or(u32::from(RouteHeader::RT_TABLE_MAIN));
        m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.header.protocol = r
            .protocol
            .map(RouteProtocol::from)
            .unwrap_or(RouteProtocol::Boot);
        m.header.kind = RouteType::Unicast;
        m.header.scope = if r.gw.is_none() && r.onlink_scope {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if r.onlink {
            m.header.flags |= RouteFlags::Onlink;
        }
        if r.dst.prefix() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(r.dst.network())));
        }
        if let Some(gw) = r.gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        if let Some(oif) = r.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = r.src {
            m.attributes
                .push(RouteAttribute::PrefSource(route_addr(src)));
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
        let op = format!(
            "adding route {}{}",
            r.dst,
            r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
        );
        self.change(
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
            NLM_F_CREATE | NLM_F_EXCL,
            &op,
        )
    }

    pub fn replace_route(&mut self, r: &RouteSpec) -> Result<()> {
        let op = format!("replacing route {}", r.dst);
        self.change(
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &op,
        )
    }

    pub fn del_route(&mut self, r: &RouteSpec) -> Result<()> {
        let op = format!("deleting route {}", r.dst);
        self.change(RouteNetlinkMessage::DelRoute(Self::route_msg(r)), 0, &op)
    }

    /// Routes of the main table for one family (`v4`), as specs.
    pub fn routes(&mut self, v4: bool) -> Result<Vec<RouteSpec>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let v = self.request(
            RouteNetlinkMessage::GetRoute(m),
            NLM_F_DUMP,
            "listing routes",
        )?;
        let mut out = Vec::new();
        for r in v {
            let RouteNetlinkMessage::NewRoute(rm) = r else {
                continue;
            };
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
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || rm.header.kind != RouteType::Unicast
            {
                continue;
            }
            let unspecified: IpAddr = if v4 {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            };
            let Ok(dst) = IpNetwork::new(
                dst_ip.unwrap_or(unspecified),
                rm.header.destination_prefix_length,
            ) else {
                continue;
            };
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
                protocol: Some(u8::from(rm.header.protocol)),
            });
        }
        Ok(out)
    }
}
