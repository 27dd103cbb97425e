//! `berth-overlayd` as a library: turn the command line's values into a
//! network plan, refuse a cluster network the node already uses, open the
//! store and run the agent (or print its status). The binary only parses
//! arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::agent::{Agent, AgentConfig};
use crate::lease::NetworkPlan;
use crate::vxlan::device_name;
use crate::OverlayError;

/// What every subcommand needs to find the node's lease.
#[derive(Debug, Clone)]
pub struct Target {
    /// This node's name; None for the hostname.
    pub node_name: Option<String>,
    /// The cluster networks: one IPv4 (required), at most one IPv6.
    pub networks: Vec<IpNetwork>,
    /// `kube`, `dir:PATH` or `etcd:URL[,URL]`.
    pub store: String,
    /// The kube store's kubeconfig (outside a pod).
    pub kubeconfig: Option<PathBuf>,
    pub vni: u32,
}

fn open_options(t: &Target) -> crate::store::OpenOptions {
    crate::store::OpenOptions {
        node: node_name(t),
        kubeconfig: t.kubeconfig.clone(),
    }
}

/// Everything the running agent is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub target: Target,
    pub subnet_len: u8,
    pub subnet_len6: u8,
    pub iface: Option<String>,
    pub public_ip: Option<IpAddr>,
    pub port: u16,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub resync_interval: Duration,
    pub metrics_addr: Option<SocketAddr>,
    /// DirectRouting: plain routes to peers on the underlay's own subnets.
    pub direct_routing: bool,
    /// The pods' MTU: `auto`, `vxlan`, `underlay` or a number.
    pub pod_mtu: crate::pod_mtu::PodMtu,
}

/// Subnet lengths `status` assumes: it only reads leases, whose subnets
/// carry their own length.
const STATUS_SUBNET_LEN: (u8, u8) = (24, 64);

/// The node name: as given, else the kernel's hostname.
pub fn node_name(t: &Target) -> String {
    t.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    })
}

/// The network plan from the `--network` values.
pub fn plan(t: &Target, len: u8, len6: u8) -> Result<NetworkPlan, OverlayError> {
    let v4: Vec<_> = t
        .networks
        .iter()
        .filter_map(|n| match n {
            IpNetwork::V4(v) => Some(*v),
            _ => None,
        })
        .collect();
    let v6: Vec<_> = t
        .networks
        .iter()
        .filter_map(|n| match n {
            IpNetwork::V6(v) => Some(*v),
            _ => None,
        })
        .collect();
    let network = match v4.as_slice() {
        [one] => *one,
        [] => {
            return Err(OverlayError::config(
                "--network",
                "an IPv4 cluster network is required, e.g. --network 10.244.0.0/16",
            ))
        }
        _ => {
            return Err(OverlayError::config(
                "--network",
                "give one IPv4 network (and at most one IPv6)",
            ))
        }
    };
    if v6.len() > 1 {
        return Err(OverlayError::config(
            "--network",
            "give at most one IPv6 network",
        ));
    }
    NetworkPlan::new(network, len, v6.first().copied(), len6)
}

/// The cluster network must not overlap anything the node already routes
/// (the underlay, other interfaces), or pods would shadow real hosts.
pub fn check_overlap(plan: &NetworkPlan, vni: u32) -> Result<(), OverlayError> {
    let mut nl = host_net::netlink::Netlink::new()?;
    let ours = [device_name(vni), cni_bridge::DEFAULT_BRIDGE.to_string()];
    let links = nl.links()?;
    for (idx, a) in nl.addrs(0)? {
        let name = links
            .iter()
            .find(|l| l.index == idx)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        if ours.contains(&name) || a.ip().is_loopback() {
            continue;
        }
        for net in plan.networks() {
            if net.is_ipv4() == a.is_ipv4() && (net.contains(a.ip()) || a.contains(net.network())) {
                return Err(OverlayError::config(
                    "--network",
                    format!("{net} overlaps {a} on {name}: choose a cluster network this node does not already use"),
                ));
            }
        }
    }
    Ok(())
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(o: RunOptions) -> Result<(), OverlayError> {
    let plan = plan(&o.target, o.subnet_len, o.subnet_len6)?;
    check_overlap(&plan, o.target.vni)?;
    let store = crate::store::open(
        &o.target.store,
        &plan.network.to_string(),
        &open_options(&o.target),
    )?;
    let cfg = AgentConfig {
        node: node_name(&o.target),
        plan,
        iface: o.iface,
        public_ip: o.public_ip,
        vni: o.target.vni,
        port: o.port,
        subnet_file: o.subnet_file,
        lease_ttl: o.lease_ttl,
        resync: o.resync_interval,
        direct_routing: o.direct_routing,
        pod_mtu: o.pod_mtu,
    };
    let mut agent = Agent::start(cfg, store)?;
    if let Some(addr) = o.metrics_addr {
        let bound = crate::metrics::serve(addr, agent.metrics.clone()).map_err(|e| {
            OverlayError::config("--metrics-addr", format!("cannot listen on {addr}: {e}"))
        })?;
        eprintln!("berth-overlayd: metrics on http://{bound}/metrics");
    }
    agent.run(berth_common::signals::stop_flag())
}

/// This node's lease and every peer with its programming state, as text or JSON.
pub fn status(t: &Target, json: bool) -> Result<String, OverlayError> {
    let p = plan(t, STATUS_SUBNET_LEN.0, STATUS_SUBNET_LEN.1)?;
    let mut store = crate::store::open(&t.store, &p.network.to_string(), &open_options(t))?;
    crate::status::render(store.as_mut(), &node_name(t), t.vni, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(nets: &[&str]) -> Target {
        Target {
            node_name: Some("n1".into()),
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            store: "dir:/nonexistent".into(),
            kubeconfig: None,
            vni: 1,
        }
    }

    #[test]
    fn plan_needs_exactly_one_ipv4_network() {
        assert!(plan(&target(&["10.244.0.0/16"]), 24, 64).is_ok());
        assert!(plan(&target(&["10.244.0.0/16", "fd00:244::/56"]), 24, 64).is_ok());
        let e = plan(&target(&[]), 24, 64).unwrap_err().to_string();
        assert!(e.contains("--network") && e.contains("IPv4"), "{e}");
        let e = plan(&target(&["10.244.0.0/16", "10.245.0.0/16"]), 24, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one IPv4"), "{e}");
        let e = plan(
            &target(&["10.244.0.0/16", "fd00::/56", "fd01::/56"]),
            24,
            64,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("IPv6"), "{e}");
    }
}
