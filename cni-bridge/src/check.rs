//! CHECK: compare the kernel with what ADD reported (prevResult) and what
//! the configuration asks for; the first difference is the error.

use crate::ipam::Ipam;
use cni_core::{CniResult, Request};
use host_net::netlink::{mac_to_string, Netlink};
use host_net::netns::NetNs;

use crate::config::{BridgeConf, MasqBackend};
use crate::error::BridgeError;
use crate::masq;
use crate::nft::Nft;
use crate::records::Records;
use crate::spoofchk;

fn differ(msg: String) -> BridgeError {
    BridgeError::Check(msg)
}

pub fn cmd_check(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.config, &req.env.args)?;
    let prev_v = req
        .config
        .prev_result
        .as_ref()
        .ok_or_else(|| BridgeError::config("prevResult", "is required for CHECK"))?;
    let prev = CniResult::from_json(prev_v, req.config.version)
        .map_err(|e| BridgeError::config("prevResult", e.msg))?;
    if let Some(ipam) = Ipam::of(req, &conf) {
        ipam.check()?;
    }
    let ifname = &req.env.ifname;
    let mut nl = Netlink::new()?;

    // The bridge.
    let br = nl
        .link(&conf.bridge)?
        .ok_or_else(|| differ(format!("bridge {} does not exist", conf.bridge)))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(differ(format!("{} is not a bridge", conf.bridge)));
    }
    if br.promisc != conf.promisc {
        return Err(differ(format!(
            "bridge {} promiscuous mode is {}, config says {}",
            br.name, br.promisc, conf.promisc
        )));
    }
    if let Some(i) = prev
        .interfaces
        .iter()
        .find(|i| i.name == conf.bridge && i.sandbox.is_empty())
    {
        if !i.mac.is_empty() && i.mac != mac_to_string(&br.mac) {
            return Err(differ(format!(
                "bridge {} MAC is {}, prevResult says {}",
                br.name,
                mac_to_string(&br.mac),
                i.mac
            )));
        }
    }

    // The pod interface.
    let pod_if = prev
        .interfaces
        .iter()
        .find(|i| &i.name == ifname && i.sandbox == req.env.netns)
        .ok_or_else(|| {
            differ(format!(
                "prevResult has no interface {ifname} in sandbox {}",
                req.env.netns
            ))
        })?;
    let ns = NetNs::open(&req.env.netns)?;
    let (pod, pod_addrs, v4_routes, v6_routes) = ns.run(|| -> Result<_, BridgeError> {
        let mut nl = Netlink::new()?;
        let l = nl.link(ifname)?.ok_or_else(|| {
            differ(format!(
                "pod interface {ifname} does not exist in {}",
                req.env.netns
            ))
        })?;
        let addrs = nl.addrs(l.index)?;
        Ok((l, addrs, nl.routes(true)?, nl.routes(false)?))
    })??;
    if pod.kind.as_deref() != Some("veth") {
        return Err(differ(format!("pod interface {ifname} is not a veth")));
    }
    if !pod_if.mac.is_empty() && pod_if.mac != mac_to_string(&pod.mac) {
        return Err(differ(format!(
            "pod interface {ifname} MAC is {}, prevResult says {}",
            mac_to_string(&pod.mac),
            pod_if.mac
        )));
    }
    if conf.mtu != 0 && pod.mtu != conf.mtu {
        return Err(differ(format!(
            "pod interface {ifname} MTU is {}, config says {}",
            pod.mtu, conf.mtu
        )));
    }
    for ipc in &prev.ips {
        if !pod_addrs.iter().any(|(_, a)| *a == ipc.address) {
            return Err(differ(format!(
                "address {} is missing from pod interface {ifname}",
                ipc.address
            )));
        }
    }
    for r in &prev.routes {
        let table = if r.dst.is_ipv4() {
            &v4_routes
        } else {
            &v6_routes
        };
        let found = table
            .iter()
            .any(|t| t.dst == r.dst && (r.gw.is_none() || t.gw == r.gw));
        if !found {
            return Err(differ(format!(
                "route {}{} is missing in the pod",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }

    // The host end: the pod interface's peer, a port of the bridge.
    let peer = pod
        .link
        .ok_or_else(|| differ(format!("pod interface {ifname} has no veth peer")))?;
    let host = nl
        .link_by_index(peer)?
        .ok_or_else(|| differ(format!("the host end of {ifname} (#{peer}) does not exist")))?;
    if host.master != Some(br.index) {
        return Err(differ(format!(
            "host veth {} is not attached to bridge {}",
            host.name, br.name
        )));
    }
    if let Some(i) = prev
        .interfaces
        .iter()
        .find(|i| i.name == host.name && i.sandbox.is_empty())
    {
        if !i.mac.is_empty() && i.mac != mac_to_string(&host.mac) {
            return Err(differ(format!(
                "host veth {} MAC is {}, prevResult says {}",
                host.name,
                mac_to_string(&host.mac),
                i.mac
            )));
        }
    } else if !prev.interfaces.is_empty() {
        return Err(differ(format!(
            "host veth {} is not in prevResult",
            host.name
        )));
    }
    if conf.mtu != 0 && host.mtu != conf.mtu {
        return Err(differ(format!(
            "host veth {} MTU is {}, config says {}",
            host.name, host.mtu, conf.mtu
        )));
    }
    if host.port_hairpin.unwrap_or(false) != conf.hairpin {
        return Err(differ(format!(
            "host veth {} hairpin mode is {}, config says {}",
            host.name,
            host.port_hairpin.unwrap_or(false),
            conf.hairpin
        )));
    }
    if host.port_isolated.unwrap_or(false) != conf.port_isolation {
        return Err(differ(format!(
            "host veth {} isolation is {}, config says {}",
            host.name,
            host.port_isolated.unwrap_or(false),
            conf.port_isolation
        )));
    }
    if conf.vlan_filtering() {
        let vlans = nl.bridge_vlans(host.index)?;
        if conf.vlan != 0
            && !vlans
                .iter()
                .any(|(v, pvid, untagged)| *v == conf.vlan && *pvid && *untagged)
        {
            return Err(differ(format!(
                "host veth {} is not an access port of vlan {}",
                host.name, conf.vlan
            )));
        }
        for vid in &conf.vlan_trunk {
            if !vlans.iter().any(|(v, _, _)| v == vid) {
                return Err(differ(format!(
                    "host veth {} does not carry trunk vlan {vid}",
                    host.name
                )));
            }
        }
    }

    // NAT and spoof check.
    let mut nft = Nft::new();
    if conf.ip_masq {
        let chain = masq::iptables_chain(&conf.network, &req.env.container_id, ifname);
        for ipc in &prev.ips {
            let ok = match conf.masq_backend {
                MasqBackend::Nftables => masq::nft_present(&mut nft, &ipc.address)?,
                MasqBackend::Iptables => masq::iptables_present(&ipc.address, &chain),
            };
            if !ok {
                return Err(differ(format!(
                    "masquerade for {} ({}) is missing",
                    ipc.address,
                    conf.masq_backend.as_str()
                )));
            }
        }
    }
    if conf.mac_spoof_check && !spoofchk::present(&mut nft, &host.name, &mac_to_string(&pod.mac))? {
        return Err(differ(format!(
            "MAC spoof check for {} is missing",
            host.name
        )));
    }
    // A record that names another host veth means the pair was replaced.
    if let Some(recs) = Records::open(&conf.records_dir(), false)? {
        if let Some(r) = recs.get(&req.env.container_id, ifname)? {
            if r.host_veth != host.name {
                return Err(differ(format!(
                    "host veth is {}, the attachment record says {}",
                    host.name, r.host_veth
                )));
            }
        }
    }
    Ok(())
}
