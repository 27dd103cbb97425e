//! DEL: undo everything ADD did, from the record and prevResult, whether or
//! not the pod's netns still exists. Every step tolerates absence, so DEL
//! can be repeated.

use crate::ipam::Ipam;
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
    let recs = Records::open(&conf.records_dir(), false)?;
    let record = match &recs {
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

    let host_veth = record
        .as_ref()
        .map(|r| r.host_veth.clone())
        .unwrap_or_else(|| link::host_veth_name(&conf.network, container, ifname));
    // NAT (nftables) and spoof check first: the kernel frees the removed elements after an RCU
    // grace period, which passes while the veth pair is deleted (see `nft::Nft`). The iptables
    // backend needs every address at once (its chain goes with the last jump), so it runs after
    // the pod side as before.
    let early = masq_backend(&conf, record.as_ref()) != Some(MasqBackend::Iptables);
    let nat = |addrs: &[IpNetwork], spoofchk: bool| {
        teardown_nat(
            &conf,
            container,
            ifname,
            &host_veth,
            record.as_ref(),
            addrs,
            &pod_mac,
            spoofchk,
        )
    };
    if early {
        nat(&addrs, true)?;
    }

    // The pod side, if its netns is still there.
    let mut found = Vec::new();
    if !req.env.netns.is_empty() {
        match NetNs::open(&req.env.netns) {
            Ok(ns) => found.extend(pod::delete(&ns, ifname)?),
            Err(e) if e.is_missing() => {}
            Err(e) => eprintln!("berth-bridge: DEL: skipping the pod side: {e}"),
        }
    }
    if early {
        // Addresses only the pod interface knew (no record, no prevResult).
        let extra: Vec<IpNetwork> = found
            .into_iter()
            .filter(|a| !addrs.iter().any(|b| b.ip() == a.ip()))
            .collect();
        if !extra.is_empty() {
            nat(&extra, false)?;
        }
    } else {
        addrs.extend(found);
        nat(&addrs, true)?;
    }
    let mut nl = Netlink::new()?;
    link::delete_veth(&mut nl, &host_veth)?;

    if let Some(ipam) = Ipam::of(req, &conf) {
        ipam.del()?;
    }
    if let Some(r) = &recs {
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
    teardown_nat(
        conf, container, ifname, host_veth, record, addrs, pod_mac, true,
    )?;
    let mut nl = Netlink::new()?;
    link::delete_veth(&mut nl, host_veth)?;
    Ok(())
}

/// Removes the NAT state of `addrs` and, with `spoof`, the spoof-check state of one
/// attachment: one nftables transaction (the iptables backend runs its commands).
#[allow(clippy::too_many_arguments)]
fn teardown_nat(
    conf: &BridgeConf,
    container: &str,
    ifname: &str,
    host_veth: &str,
    record: Option<&Record>,
    addrs: &[IpNetwork],
    pod_mac: &str,
    spoof: bool,
) -> Result<(), BridgeError> {
    let mut unique: Vec<IpNetwork> = Vec::new();
    for a in addrs {
        if !unique.iter().any(|u| u.ip() == a.ip()) {
            unique.push(*a);
        }
    }
    let backend = masq_backend(conf, record);
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
    let spoof = spoof && record.map(|r| r.spoofchk).unwrap_or(conf.mac_spoof_check);
    if spoof {
        if pod_mac.is_empty() {
            spoofchk::del_port(&mut nft, &mut batch, host_veth)?;
        } else {
            spoofchk::del(&mut batch, host_veth, pod_mac)?;
        }
    }
    nft.commit(&batch)
}

/// The NAT backend an attachment used: its record's, else the configuration's.
fn masq_backend(conf: &BridgeConf, record: Option<&Record>) -> Option<MasqBackend> {
    match record.map(|r| r.masq.as_str()) {
        Some(s) if !s.is_empty() => MasqBackend::parse(s),
        Some(_) => None,
        None => conf.ip_masq.then_some(conf.masq_backend),
    }
}
