//! DEL: undo everything ADD did, from the record and prevResult, whether or
//! not the pod's netns still exists. Every step tolerates absence, so DEL
//! can be repeated.

use cni_core::delegate::Delegate;
use cni_core::{CniResult, Request};
use host_net::netlink::Netlink;
use host_net::netns::NetNs;
use ipnetwork::IpNetwork;

use crate::add::attachment_comment;
use crate::config::{BridgeConf, MasqBackend};
use crate::error::BridgeError;
use crate::link;
use crate::masq;
use crate::nft::{Batch, Nft};
use crate::pod;
use crate::records::{Record, Records};
use crate::spoofchk;

pub fn cmd_del(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.config, &req.env.args)?;
    let container = &req.env.container_id;
    let ifname = &req.env.ifname;
    let record = match Records::open(&conf.records_dir(), false)? {
        Some(r) => r.get(container, ifname)?,
        None => None,
    };
    let prev = req
        .config
        .prev_result
        .as_ref()
        .and_then(|p| CniResult::from_json(p, req.config.version).ok());

    let mut addrs: Vec<IpNetwork> = Vec::new();
    let mut pod_mac = record
        .as_ref()
        .map(|r| r.pod_mac.clone())
        .unwrap_or_default();
    if let Some(r) = &record {
        addrs.extend(r.ips.iter().filter_map(|s| s.parse::<IpNetwork>().ok()));
    }
    if let Some(p) = &prev {
        addrs.extend(p.ips.iter().map(|c| c.address));
        if pod_mac.is_empty() {
            if let Some(i) = p
                .interfaces
                .iter()
                .find(|i| &i.name == ifname && !i.sandbox.is_empty())
            {
                pod_mac = i.mac.clone();
            }
        }
    }

    // The pod side, if its netns is still there.
    if !req.env.netns.is_empty() {
        match NetNs::open(&req.env.netns) {
            Ok(ns) => addrs.extend(pod::delete(&ns, ifname)?),
            Err(e) if e.is_missing() => {}
            Err(e) => eprintln!("berth-bridge: DEL: skipping the pod side: {e}"),
        }
    }
    let host_veth = record
        .as_ref()
        .map(|r| r.host_veth.clone())
        .unwrap_or_else(|| link::host_veth_name(&conf.network, container, ifname));
    teardown_host(
        &conf,
        container,
        ifname,
        &host_veth,
        record.as_ref(),
        &addrs,
        &pod_mac,
    )?;

    if let Some(t) = &conf.ipam_type {
        Delegate {
            plugin_type: t,
            env: &req.env,
            stdin: &req.stdin,
            version: req.config.version,
        }
        .del()?;
    }
    if let Some(r) = Records::open(&conf.records_dir(), false)? {
        r.delete(container, ifname)?;
    }
    Ok(())
}

/// Removes the host veth, NAT and spoof-check state of one attachment.
pub fn teardown_host(
    conf: &BridgeConf,
    container: &str,
    ifname: &str,
    host_veth: &str,
    record: Option<&Record>,
    addrs: &[IpNetwork],
    pod_mac: &str,
) -> Result<(), BridgeError> {
    let mut unique: Vec<IpNetwork> = Vec::new();
    for a in addrs {
        if !unique.iter().any(|u| u.ip() == a.ip()) {
            unique.push(*a);
        }
    }
    let backend = match record.map(|r| r.masq.as_str()) {
        Some(s) if !s.is_empty() => MasqBackend::parse(s),
        Some(_) => None,
        None => conf.ip_masq.then_some(conf.masq_backend),
    };
    // One nftables transaction for the NAT and spoof-check elements.
    let mut nft = Nft::new();
    let mut batch = Batch::new();
    match backend {
        Some(MasqBackend::Nftables) => masq::nft_del(&mut batch, &unique, &conf.masq_exclude),
        Some(MasqBackend::Iptables) => {
            let chain = masq::iptables_chain(&conf.network, container, ifname);
            masq::iptables_del(
                &unique,
                &chain,
                &attachment_comment(&conf.network, container, ifname),
            )?;
        }
        None => {}
    }
    let spoof = record.map(|r| r.spoofchk).unwrap_or(conf.mac_spoof_check);
    if spoof {
        if pod_mac.is_empty() {
            spoofchk::del_port(&mut nft, &mut batch, host_veth)?;
        } else {
            spoofchk::del(&mut batch, host_veth, pod_mac)?;
        }
    }
    // Before the veth goes: the kernel frees what the transaction removed after an RCU grace
    // period, which then passes while the veth is deleted (see `nft::Nft`).
    nft.commit(&batch)?;
    let mut nl = Netlink::new()?;
    link::delete_veth(&mut nl, host_veth)?;
    Ok(())
}
