//! `berth-overlayd`: argument parsing; the agent is `cni_overlay::daemon`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use cni_overlay::daemon::{self, RunOptions, Target};
use cni_overlay::parse_duration;
use cni_overlay::pod_mtu::PodMtu;
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
    /// Where leases live: kube (the Kubernetes API: Nodes' spec.podCIDRs, VTEPs as Node
    /// annotations), dir:PATH (one machine) or etcd:http://HOST:PORT[,...].
    #[arg(long, default_value = "dir:/var/lib/berth/overlay")]
    store: String,
    /// kubeconfig for --store=kube on a host outside the cluster (default: $KUBECONFIG, else
    /// the pod's ServiceAccount).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
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
    /// DirectRouting (like flannel's vxlan DirectRouting): a peer whose underlay address is on a
    /// subnet directly connected to the underlay interface gets a plain route via that address,
    /// unencapsulated; peers elsewhere keep VXLAN. Off by default; `--direct-routing=false` too.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true",
          require_equals = true, action = clap::ArgAction::Set)]
    direct_routing: bool,
    /// The pods' MTU, written to the subnet file for berth-overlay (a conflist `mtu` wins):
    /// `auto` (the underlay's MTU with --direct-routing, else the VXLAN MTU), `vxlan`,
    /// `underlay`, or a number up to the underlay's MTU. Above the VXLAN MTU, a pod's packet
    /// too big for a peer on VXLAN gets ICMP "fragmentation needed" from its own node.
    #[arg(long, default_value = "auto")]
    pod_mtu: PodMtu,
}

impl From<Common> for Target {
    fn from(c: Common) -> Target {
        Target {
            node_name: c.node_name,
            networks: c.networks,
            store: c.store,
            kubeconfig: c.kubeconfig,
            vni: c.vni,
        }
    }
}

impl From<RunArgs> for RunOptions {
    fn from(r: RunArgs) -> RunOptions {
        RunOptions {
            target: r.common.into(),
            subnet_len: r.subnet_len,
            subnet_len6: r.subnet_len6,
            iface: r.iface,
            public_ip: r.public_ip,
            port: r.port,
            subnet_file: r.subnet_file,
            lease_ttl: r.lease_ttl,
            resync_interval: r.resync_interval,
            metrics_addr: r.metrics_addr,
            direct_routing: r.direct_routing,
            pod_mtu: r.pod_mtu,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Status { common, json }) => {
            daemon::status(&common.into(), json).map(|text| print!("{text}"))
        }
        None => daemon::run(cli.run.into()),
    };
    if let Err(e) = result {
        eprintln!("berth-overlayd: {e}");
        std::process::exit(1);
    }
}
