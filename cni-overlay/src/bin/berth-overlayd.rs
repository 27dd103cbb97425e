use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use cni_overlay::agent::{Agent, AgentConfig};
use cni_overlay::lease::NetworkPlan;
use cni_overlay::{parse_duration, OverlayError};
use ipnetwork::IpNetwork;

#[derive(Parser)]
#[command(
    name = "berth-overlayd",
    version,
    about = "Berth overlay node agent: leases this node's subnet of the cluster network and programs VXLAN routes to every peer",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print this node's lease and every peer with its programming state.
    Status {
        #[command(flatten)]
        common: Common,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// This node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The cluster pod network; give it once for IPv4 (required) and once more for IPv6 (optional).
    #[arg(long = "network", required = false)]
    networks: Vec<IpNetwork>,
    /// Where leases live: dir:PATH (one machine) or etcd:http://HOST:PORT[,...] (clusters).
    #[arg(long, default_value = "dir:/var/lib/berth/overlay")]
    store: String,
    /// VXLAN network identifier; the device is berth.<vni>.
    #[arg(long, default_value_t = 1)]
    vni: u32,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Prefix length of each node's IPv4 subnet.
    #[arg(long, default_value_t = 24)]
    subnet_len: u8,
    /// Prefix length of each node's IPv6 subnet.
    #[arg(long, default_value_t = 64)]
    subnet_len6: u8,
    /// Underlay interface (default: the one holding the default route).
    #[arg(long)]
    iface: Option<String>,
    /// Address peers send VXLAN packets to (default: the underlay interface's address).
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = 8472)]
    port: u16,
    /// Where to write this node's subnet for the berth-overlay CNI plugin.
    #[arg(long, default_value = "/run/berth/subnet.env")]
    subnet_file: PathBuf,
    /// Lease time to live; renewed every third of it.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    lease_ttl: std::time::Duration,
    /// How often the kernel state is compared with the leases and repaired.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    resync_interval: std::time::Duration,
    /// Serve Prometheus metrics (/metrics) and health (/healthz) on this address (off by default).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn node_name(c: &Common) -> String {
    c.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
    })
}

fn plan(c: &Common, len: u8, len6: u8) -> Result<NetworkPlan, OverlayError> {
    let v4: Vec<_> = c.networks.iter().filter_map(|n| match n { IpNetwork::V4(v) => Some(*v), _ => None }).collect();
    let v6: Vec<_> = c.networks.iter().filter_map(|n| match n { IpNetwork::V6(v) => Some(*v), _ => None }).collect();
    let network = match v4.as_slice() {
        [one] => *one,
        [] => return Err(OverlayError::config("--network", "an IPv4 cluster network is required, e.g. --network 10.244.0.0/16")),
        _ => return Err(OverlayError::config("--network", "give one IPv4 network (and at most one IPv6)")),
    };
    if v6.len() > 1 {
        return Err(OverlayError::config("--network", "give at most one IPv6 network"));
    }
    NetworkPlan::new(network, len, v6.first().copied(), len6)
}

/// The cluster network must not overlap anything the node already routes
/// (the underlay, other interfaces), or pods would shadow real hosts.
fn check_overlap(plan: &NetworkPlan, vni: u32) -> Result<(), OverlayError> {
    let mut nl = cni_core::netlink::Netlink::new()?;
    let ours = [format!("berth.{vni}"), "berth0".to_string()];
    let links = nl.links()?;
    for (idx, a) in nl.addrs(0)? {
        let name = links.iter().find(|l| l.index == idx).map(|l| l.name.clone()).unwrap_or_default();
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

fn run(cli: RunArgs) -> Result<(), OverlayError> {
    let plan = plan(&cli.common, cli.subnet_len, cli.subnet_len6)?;
    check_overlap(&plan, cli.common.vni)?;
    let store = cni_overlay::store::open(&cli.common.store, &plan.network.to_string())?;
    let cfg = AgentConfig {
        node: node_name(&cli.common),
        plan,
        iface: cli.iface,
        public_ip: cli.public_ip,
        vni: cli.common.vni,
        port: cli.port,
        subnet_file: cli.subnet_file,
        lease_ttl: cli.lease_ttl,
        resync: cli.resync_interval,
    };
    let mut agent = Agent::start(cfg, store)?;
    if let Some(addr) = cli.metrics_addr {
        let bound = cni_overlay::metrics::serve(addr, agent.metrics.clone())
            .map_err(|e| OverlayError::config("--metrics-addr", format!("cannot listen on {addr}: {e}")))?;
        eprintln!("berth-overlayd: metrics on http://{bound}/metrics");
    }
    agent.run(&STOP)
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Status { common, json }) => (|| -> Result<(), OverlayError> {
            let p = plan(&common, 24, 64)?;
            let mut store = cni_overlay::store::open(&common.store, &p.network.to_string())?;
            print!("{}", cni_overlay::status::render(store.as_mut(), &node_name(&common), common.vni, json)?);
            Ok(())
        })(),
        None => {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
                libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
            }
            run(cli.run)
        }
    };
    if let Err(e) = result {
        eprintln!("berth-overlayd: {e}");
        std::process::exit(1);
    }
}
