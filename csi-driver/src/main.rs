//! `berth-csi`: parses flags and runs the driver library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use csi_driver::config::{Config, FsType, Mode, PublishNodes};

/// CSI driver csi.berth.dev: local-disk volumes (image files on loop devices) and NFS volumes (subdirectories of NFS exports).
#[derive(Parser, Debug)]
#[command(name = "berth-csi", version, about, long_about = None)]
struct Args {
    /// gRPC endpoint: unix:///path/to/csi.sock (a stale socket is removed at start) or tcp://ip:port.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///run/csi/csi.sock")]
    endpoint: String,

    /// This node's id, also its topology value (topology.csi.berth.dev/node).
    #[arg(long, env = "CSI_NODE_ID")]
    node_id: String,

    /// Directory of the SQLite state (berth-csi.db).
    #[arg(long, default_value = "/var/lib/berth-csi")]
    state_dir: PathBuf,

    /// Directory holding volume and snapshot image files (default: <state-dir>/pool).
    #[arg(long)]
    local_pool: Option<PathBuf>,

    /// Services to serve besides Identity: all, controller or node.
    #[arg(long, default_value = "all")]
    mode: Mode,

    /// Attach limit reported by NodeGetInfo and enforced by ControllerPublishVolume (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_volumes_per_node: i64,

    /// Node ids ControllerPublishVolume of NFS volumes accepts: self (only
    /// --node-id; others are NOT_FOUND) or any (the CO vouches for them, e.g.
    /// a cluster-wide external-attacher answering for every node).
    #[arg(long, default_value = "self")]
    publish_nodes: PublishNodes,

    /// Filesystem for mount volumes whose capability has no fs_type: ext4 or xfs.
    #[arg(long, default_value = "ext4", value_parser = parse_fs)]
    default_fs_type: FsType,

    /// Bound in seconds on each NFS request: controller calls to the server,
    /// and node mounts, unmounts and stats of NFS paths.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    nfs_timeout: u64,

    /// Serve Prometheus metrics (/metrics) and health (/healthz) on this address (off by default).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Register with the kubelet through this plugin registration directory
    /// (normally /var/lib/kubelet/plugins_registry) by serving
    /// csi.berth.dev-reg.sock there. Off by default (node-driver-registrar
    /// usually does this). Needs --mode all or node.
    #[arg(long, value_name = "DIR")]
    kubelet_registration_dir: Option<PathBuf>,

    /// The CSI socket path as the kubelet sees it, sent to the kubelet on
    /// registration (default: the path of a unix:// --endpoint; required with
    /// a tcp:// one).
    #[arg(long, value_name = "PATH", value_parser = parse_registration_endpoint)]
    kubelet_registration_endpoint: Option<PathBuf>,
}

fn parse_registration_endpoint(s: &str) -> Result<PathBuf, String> {
    // clap names the flag itself; keep only the reason.
    Config::parse_registration_endpoint(s).map_err(|e| match e {
        csi_driver::error::Error::InvalidArgument { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_fs(s: &str) -> Result<FsType, String> {
    FsType::parse(s).ok_or_else(|| format!("{s:?} is not supported (ext4 or xfs)"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_CSI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let endpoint = match Config::parse_endpoint(&args.endpoint) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-csi: {e}");
            return ExitCode::from(2);
        }
    };
    let pool = args
        .local_pool
        .clone()
        .unwrap_or_else(|| args.state_dir.join("pool"));
    let config = Config {
        endpoint,
        nfs_timeout: std::time::Duration::from_secs(args.nfs_timeout),
        node_id: args.node_id,
        state_dir: args.state_dir,
        pool_dir: pool,
        mode: args.mode,
        max_volumes_per_node: args.max_volumes_per_node,
        publish_nodes: args.publish_nodes,
        default_fs_type: args.default_fs_type,
        metrics_addr: args.metrics_addr,
        kubelet_registration_dir: args.kubelet_registration_dir,
        kubelet_registration_endpoint: args.kubelet_registration_endpoint,
    };
    let opened = csi_driver::Driver::open(config).and_then(|d| {
        let backends = csi_driver::registry::Registry::open(&d)?;
        Ok((d, std::sync::Arc::new(backends)))
    });
    let (driver, backends) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("berth-csi: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-csi: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(csi_driver::server::serve(driver, backends));
    // Give engine work already running (a copy, an fsync) time to finish.
    rt.shutdown_timeout(std::time::Duration::from_secs(30));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "berth-csi stopped");
            ExitCode::FAILURE
        }
    }
}
