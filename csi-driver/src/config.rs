//! Runtime configuration of the driver (parsed by the binary, used by the library).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The CSI driver name.
pub const DRIVER_NAME: &str = "csi.berth.dev";
/// The topology key every volume and node is labelled with.
pub const TOPOLOGY_KEY: &str = "topology.csi.berth.dev/node";
/// Size given to a volume when the request has no capacity range.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;

/// Which CSI services the process serves (Identity is always served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Controller and Node.
    All,
    /// Controller only.
    Controller,
    /// Node only.
    Node,
}

impl Mode {
    /// Whether the Controller service is served.
    pub fn controller(self) -> bool {
        matches!(self, Mode::All | Mode::Controller)
    }
    /// Whether the Node service is served.
    pub fn node(self) -> bool {
        matches!(self, Mode::All | Mode::Node)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "all" => Ok(Mode::All),
            "controller" => Ok(Mode::Controller),
            "node" => Ok(Mode::Node),
            other => Err(format!(
                "unknown mode {other:?} (expected all, controller or node)"
            )),
        }
    }
}

/// Which node ids ControllerPublishVolume of a volume without a home node
/// (NFS) accepts (`--publish-nodes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishNodes {
    /// Only this driver's own `--node-id`; any other is NOT_FOUND.
    OwnNode,
    /// Any well-formed node id: the CO vouches for it (Kubernetes makes
    /// VolumeAttachments only for nodes it has).
    Any,
}

impl std::str::FromStr for PublishNodes {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "self" => Ok(PublishNodes::OwnNode),
            "any" => Ok(PublishNodes::Any),
            other => Err(format!("unknown value {other:?} (expected self or any)")),
        }
    }
}

/// Filesystems the node can make and grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    /// ext4 (mkfs.ext4, resize2fs).
    Ext4,
    /// xfs (mkfs.xfs, xfs_growfs).
    Xfs,
}

impl FsType {
    /// Parses a CSI `fs_type`; `None` for an unsupported name.
    pub fn parse(s: &str) -> Option<FsType> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }
    /// The kernel / blkid name.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
    /// Smallest device mkfs accepts (xfsprogs >= 5.19 refuses < 300 MiB).
    pub fn min_size(self) -> u64 {
        match self {
            FsType::Ext4 => 1 << 20,
            FsType::Xfs => 300 << 20,
        }
    }
}

/// Everything `berth-csi` needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the gRPC server listens.
    pub endpoint: Endpoint,
    /// Bound on each NFS request (controller RPCs over the network, node
    /// mount/unmount/stat of NFS paths).
    pub nfs_timeout: std::time::Duration,
    /// This node's id (also the topology value).
    pub node_id: String,
    /// SQLite state lives here.
    pub state_dir: PathBuf,
    /// Volume and snapshot image files live here.
    pub pool_dir: PathBuf,
    /// Services to serve.
    pub mode: Mode,
    /// Attach limit reported by NodeGetInfo and enforced by ControllerPublish (0 = none).
    pub max_volumes_per_node: i64,
    /// Node ids ControllerPublish of NFS volumes accepts.
    pub publish_nodes: PublishNodes,
    /// Filesystem used when a mount capability has no fs_type.
    pub default_fs_type: FsType,
    /// Where to serve Prometheus metrics and health (off when None).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// A gRPC listening address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (what a kubelet and the sidecars use).
    Unix(PathBuf),
    /// A TCP address (for a driver reached over a network, e.g. in a VM).
    Tcp(std::net::SocketAddr),
}

impl Config {
    /// Parses `unix:///path`, `unix:/path`, a bare absolute path, or
    /// `tcp://host:port` (an IP address and port).
    pub fn parse_endpoint(endpoint: &str) -> Result<Endpoint> {
        if let Some(rest) = endpoint.strip_prefix("tcp://") {
            return rest
                .trim_end_matches('/')
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|_| {
                    Error::invalid(
                        "--endpoint",
                        format!("{endpoint:?} is not tcp://<ip>:<port>"),
                    )
                });
        }
        let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
            rest
        } else if let Some(rest) = endpoint.strip_prefix("unix:") {
            rest
        } else {
            endpoint
        };
        if !path.starts_with('/') {
            return Err(Error::invalid(
                "--endpoint",
                format!("{endpoint:?} is not unix:///absolute/path"),
            ));
        }
        Ok(Endpoint::Unix(PathBuf::from(path)))
    }

    /// Checks the values the binary cannot check with types alone.
    pub fn validate(&self) -> Result<()> {
        let id = &self.node_id;
        if id.is_empty() || id.len() > 90 {
            return Err(Error::invalid("--node-id", "must be 1 to 90 characters"));
        }
        if id.starts_with('.') || id.contains("..") {
            return Err(Error::invalid(
                "--node-id",
                "may not start with '.' or contain '..' (it becomes part of every volume id)",
            ));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(Error::invalid(
                "--node-id",
                "may contain only letters, digits, '.', '-' and '_'",
            ));
        }
        for (flag, p) in [
            ("--state-dir", &self.state_dir),
            ("--local-pool", &self.pool_dir),
        ] {
            if !p.is_absolute() {
                return Err(Error::invalid(
                    flag,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        if self.max_volumes_per_node < 0 {
            return Err(Error::invalid(
                "--max-volumes-per-node",
                "must not be negative",
            ));
        }
        Ok(())
    }
}
