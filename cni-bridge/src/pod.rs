//! The pod's side of an attachment, configured from inside its netns.

use std::net::IpAddr;

use cni_core::{IpConfig, Route};
use host_net::netlink::{mac_to_string, Netlink, RouteSpec};
use host_net::netns::{write_sysctl, NetNs};

use crate::error::BridgeError;

/// What the pod's interface looks like after setup.
#[derive(Debug, Clone)]
pub struct PodIface {
    pub mac: String,
    pub mtu: u32,
}

pub struct PodSetup<'a> {
    pub ifname: &'a str,
    pub ips: &'a [IpConfig],
    pub routes: &'a [Route],
    pub enable_dad: bool,
    /// false for disableContainerInterface: the interface stays down.
    pub up: bool,
}

/// The gateway of the first address of the family of `dst`.
fn family_gateway(ips: &[IpConfig], v4: bool) -> Option<IpAddr> {
    ips.iter()
        .filter(|c| c.address.is_ipv4() == v4)
        .find_map(|c| c.gateway)
}

fn tolerate_exists(r: Result<(), host_net::netlink::NetlinkError>) -> Result<(), BridgeError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Configures the pod interface: sysctls, link state, addresses, routes.
pub fn configure(ns: &NetNs, s: &PodSetup<'_>) -> Result<PodIface, BridgeError> {
    ns.run(|| -> Result<PodIface, BridgeError> {
        let mut nl = Netlink::new()?;
        let link = nl.link(s.ifname)?.ok_or_else(|| {
            BridgeError::Kernel(format!(
                "pod interface {} is missing from netns {}",
                s.ifname,
                ns.path().display()
            ))
        })?;
        // Sysctls are best effort: IPv6 may be disabled in the pod.
        if s.enable_dad {
            let _ = write_sysctl(&format!("net/ipv6/conf/{}/enhanced_dad", s.ifname), "1");
            let _ = write_sysctl(&format!("net/ipv6/conf/{}/accept_dad", s.ifname), "1");
        } else {
            let _ = write_sysctl(&format!("net/ipv6/conf/{}/accept_dad", s.ifname), "0");
        }
        let _ = write_sysctl(&format!("net/ipv4/conf/{}/arp_notify", s.ifname), "1");
        if s.up {
            nl.set_up(link.index, true)?;
        }
        for ipc in s.ips {
            tolerate_exists(nl.add_addr(link.index, ipc.address, !s.enable_dad))?;
        }
        for r in s.routes {
            let gw = r.gw.or_else(|| family_gateway(s.ips, r.dst.is_ipv4()));
            let spec = RouteSpec {
                dst: r.dst,
                gw,
                oif: Some(link.index),
                onlink_scope: gw.is_none(),
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                src: None,
                onlink: false,
                protocol: None,
            };
            tolerate_exists(nl.add_route(&spec))?;
        }
        // The MAC and MTU read before are final: neither bringing the link
        // up nor adding addresses or routes changes them.
        Ok(PodIface {
            mac: mac_to_string(&link.mac),
            mtu: link.mtu,
        })
    })?
}

/// Deletes the pod interface if it is there; returns its addresses so the
/// caller can clean up NAT state for them.
pub fn delete(ns: &NetNs, ifname: &str) -> Result<Vec<ipnetwork::IpNetwork>, BridgeError> {
    ns.run(|| -> Result<Vec<ipnetwork::IpNetwork>, BridgeError> {
        let mut nl = Netlink::new()?;
        let Some(link) = nl.link(ifname)? else {
            return Ok(Vec::new());
        };
        let addrs: Vec<_> = nl
            .addrs(link.index)?
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| !matches!(a.ip(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect();
        match nl.del_link(link.index) {
            Ok(()) => {}
            Err(e) if e.is(libc::ENODEV) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(addrs)
    })?
}
