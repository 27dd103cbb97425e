//! ADD: bridge, veth pair, IPAM, pod configuration, gateway, NAT, spoof check.
//! Anything that fails after a step undoes every step before it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ipam::Ipam;
use cni_core::{CniResult, Interface, IpConfig, Request, Route};
use host_net::netlink::{mac_to_string, Netlink};
use host_net::netns::NetNs;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::config::{BridgeConf, MasqBackend};
use crate::error::BridgeError;
use crate::link;
use crate::masq;
use crate::nft::{Batch, Nft};
use crate::pod::{self, PodSetup};
use crate::records::{Record, Records};
use crate::spoofchk;

/// How long ADD waits for the host port to forward.
const FORWARD_BOUND: Duration = Duration::from_secs(5);

pub fn attachment_comment(network: &str, container: &str, ifname: &str) -> String {
    format!("berth:{network}:{container}:{ifname}")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Undo actions collected while ADD makes progress.
#[derive(Default)]
struct Undo {
    host_veth: Option<String>,
    ipam: bool,
    masq: Option<Vec<IpNetwork>>,
    spoof: Option<(String, String)>,
    record: bool,
}

/// The gateway of each address: IPAM's, or with isGateway the subnet's first.
fn fill_gateways(ips: &mut [IpConfig], conf: &BridgeConf) {
    for ipc in ips.iter_mut() {
        ipc.interface = Some(2);
        if ipc.gateway.is_none() && conf.is_gateway {
            let net = ipc.address.network();
            ipc.gateway = IpNetwork::new(net, ipc.address.prefix())
                .ok()
                .and_then(|n| n.iter().nth(1));
        }
    }
}

/// isDefaultGateway: one default route per family, unless IPAM gave one.
fn add_default_routes(res: &mut CniResult) {
    for v4 in [true, false] {
        let Some(gw) = res
            .ips
            .iter()
            .filter(|c| c.address.is_ipv4() == v4)
            .find_map(|c| c.gateway)
        else {
            continue;
        };
        let unspecified = if v4 {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        let Ok(default) = IpNetwork::new(unspecified, 0) else {
            continue;
        };
        let has = res
            .routes
            .iter()
            .any(|r| r.dst == default && r.gw.is_some());
        if !has {
            res.routes.push(Route::new(default, Some(gw)));
        }
    }
}

pub fn cmd_add(req: &Request) -> Result<CniResult, BridgeError> {
    let conf = BridgeConf::parse(&req.config, &req.env.args)?;
    let pod_ns = NetNs::open(&req.env.netns)?;
    if let (Ok(here), Some(id)) = (NetNs::current(), pod_ns.id()) {
        if here.id() == Some(id) {
            return Err(BridgeError::config(
                "CNI_NETNS",
                "is the plugin's own network namespace",
            ));
        }
    }
    let container = &req.env.container_id;
    let ifname = &req.env.ifname;
    let host_name = link::host_veth_name(&conf.network, container, ifname);
    let comment = attachment_comment(&conf.network, container, ifname);

    // The record goes first: if we die half way, DEL and GC know what to undo.
    let mut record = Record {
        container_id: container.clone(),
        ifname: ifname.clone(),
        netns: req.env.netns.clone(),
        bridge: conf.bridge.clone(),
        host_veth: host_name.clone(),
        masq: if conf.ip_masq {
            conf.masq_backend.as_str().to_string()
        } else {
            String::new()
        },
        spoofchk: conf.mac_spoof_check,
        created_at: now(),
        ..Default::default()
    };
    let recs = Records::open(&conf.records_dir(), true)?.ok_or_else(|| BridgeError::Records {
        path: conf.records_dir().display().to_string(),
        msg: "cannot create".into(),
    })?;
    recs.put(&record)?;

    let mut undo = Undo {
        record: true,
        ..Default::default()
    };
    let mut nl = Netlink::new()?;
    let cx = Attach {
        req,
        conf: &conf,
        pod_ns: &pod_ns,
        recs: &recs,
        comment: &comment,
    };
    match add_steps(cx, &mut nl, &mut record, &mut undo) {
        Ok(res) => Ok(res),
        Err(e) => {
            rollback(req, &conf, &mut nl, &recs, &undo, &comment);
            Err(e)
        }
    }
}

/// What ADD's steps read: the request and what was set up for it.
#[derive(Clone, Copy)]
struct Attach<'a> {
    req: &'a Request,
    conf: &'a BridgeConf,
    pod_ns: &'a NetNs,
    recs: &'a Records,
    comment: &'a str,
}

fn add_steps(
    cx: Attach<'_>,
    nl: &mut Netlink,
    record: &mut Record,
    undo: &mut Undo,
) -> Result<CniResult, BridgeError> {
    let Attach {
        req,
        conf,
        pod_ns,
        recs,
        comment,
    } = cx;
    let ifname = &req.env.ifname;
    let br = link::ensure_bridge(nl, conf)?;
    let host = link::create_veth(nl, pod_ns, conf, &record.host_veth, ifname)?;
    undo.host_veth = Some(host.name.clone());
    if host.name != record.host_veth {
        record.host_veth = host.name.clone();
        recs.put(record)?;
    }
    link::configure_port(nl, &host, &br, conf)?;

    let mut res = CniResult::default();
    if let Some(ipam) = Ipam::of(req, conf) {
        let r = ipam.add()?;
        undo.ipam = true;
        if r.ips.is_empty() {
            return Err(BridgeError::Kernel(format!(
                "IPAM plugin {} returned no addresses",
                ipam.plugin_type()
            )));
        }
        res.ips = r.ips;
        res.routes = r.routes;
        res.dns = r.dns;
    }
    fill_gateways(&mut res.ips, conf);
    if conf.is_default_gateway {
        add_default_routes(&mut res);
    }

    let pod = pod::configure(
        pod_ns,
        &PodSetup {
            ifname,
            ips: &res.ips,
            routes: &res.routes,
            enable_dad: conf.enable_dad,
            up: !conf.disable_container_interface,
        },
    )?;
    record.pod_mac = pod.mac.clone();
    record.ips = res.ips.iter().map(|c| c.address.to_string()).collect();

    // NAT (nftables backend) and the spoof check: one transaction, as soon as the addresses
    // and the pod's MAC are known (see `nft::Nft` on why early).
    // The rules are re-asserted only when they are not in place (see `masq::nft_add`).
    let mut nft = Nft::new();
    let mut batch = Batch::new();
    if conf.ip_masq && !res.ips.is_empty() {
        let addrs: Vec<IpNetwork> = res.ips.iter().map(|c| c.address).collect();
        undo.masq = Some(addrs.clone());
        match conf.masq_backend {
            MasqBackend::Nftables => {
                let in_place = masq::nft_rules_in_place(&mut nft)?;
                masq::nft_add(&mut batch, &addrs, &conf.masq_exclude, comment, in_place)
            }
            MasqBackend::Iptables => {
                let chain = masq::iptables_chain(&conf.network, &req.env.container_id, ifname);
                masq::iptables_add(&addrs, &conf.masq_exclude, &chain, comment)?;
            }
        }
    }
    if conf.mac_spoof_check {
        undo.spoof = Some((host.name.clone(), pod.mac.clone()));
        let in_place = spoofchk::rule_in_place(&mut nft)?;
        spoofchk::add(&mut batch, &host.name, &pod.mac, comment, in_place)?;
    }
    nft.commit(&batch)?;

    let mut extra_iface = None;
    if conf.is_gateway {
        let gw_link = if conf.vlan != 0 {
            let l = link::ensure_vlan_gateway(nl, &br, conf)?;
            extra_iface = Some(Interface {
                name: l.name.clone(),
                mac: mac_to_string(&l.mac),
                ..Default::default()
            });
            l
        } else {
            br.clone()
        };
        for v4 in [true, false] {
            let mut any = false;
            for ipc in res.ips.iter().filter(|c| c.address.is_ipv4() == v4) {
                if let Some(gw) = ipc.gateway {
                    let gw_net = IpNetwork::new(gw, ipc.address.prefix())
                        .map_err(|e| BridgeError::Kernel(format!("gateway {gw}: {e}")))?;
                    link::ensure_gateway_addr(nl, &gw_link, gw_net, conf.force_address)?;
                    any = true;
                }
            }
            if any {
                link::enable_forwarding(v4)?;
            }
        }
    }

    let forwarding = if conf.disable_container_interface {
        None
    } else {
        Some(link::wait_forwarding(nl, host.index, FORWARD_BOUND)?)
    };
    recs.put(record)?;

    // Read the bridge's MAC last: it changes as ports are added. The host
    // end's is its own from creation on (the port just read, if any).
    let br_now = nl.link_by_index(br.index)?.unwrap_or(br);
    let host_now = match forwarding {
        Some(l) => l,
        None => nl.link_by_index(host.index)?.unwrap_or(host),
    };
    res.interfaces = vec![
        Interface {
            name: br_now.name.clone(),
            mac: mac_to_string(&br_now.mac),
            ..Default::default()
        },
        Interface {
            name: host_now.name.clone(),
            mac: mac_to_string(&host_now.mac),
            ..Default::default()
        },
        Interface {
            name: ifname.clone(),
            mac: pod.mac.clone(),
            mtu: Some(pod.mtu),
            sandbox: req.env.netns.clone(),
            ..Default::default()
        },
    ];
    if let Some(i) = extra_iface {
        res.interfaces.push(i);
    }
    if let Some(dns) = &conf.dns {
        res.dns = dns.clone();
    }
    Ok(res)
}

fn rollback(
    req: &Request,
    conf: &BridgeConf,
    nl: &mut Netlink,
    recs: &Records,
    undo: &Undo,
    comment: &str,
) {
    let ifname = &req.env.ifname;
    let mut batch = Batch::new();
    if let Some((port, mac)) = &undo.spoof {
        if let Err(e) = spoofchk::del(&mut batch, port, mac) {
            eprintln!("berth-bridge: rollback: {e}");
        }
    }
    if let Some(addrs) = &undo.masq {
        match conf.masq_backend {
            MasqBackend::Nftables => masq::nft_del(&mut batch, addrs, &conf.masq_exclude),
            MasqBackend::Iptables => {
                let chain = masq::iptables_chain(&conf.network, &req.env.container_id, ifname);
                if let Err(e) = masq::iptables_del(addrs, &chain, comment) {
                    eprintln!("berth-bridge: rollback: {e}");
                }
            }
        }
    }
    if let Err(e) = Nft::new().commit(&batch) {
        eprintln!("berth-bridge: rollback: {e}");
    }
    if let Some(name) = &undo.host_veth {
        if let Err(e) = link::delete_veth(nl, name) {
            eprintln!("berth-bridge: rollback: deleting {name}: {e}");
        }
    }
    if undo.ipam {
        if let Some(ipam) = Ipam::of(req, conf) {
            if let Err(e) = ipam.del() {
                eprintln!("berth-bridge: rollback: releasing addresses: {e}");
            }
        }
    }
    if undo.record {
        let _ = recs.delete(&req.env.container_id, ifname);
    }
}
