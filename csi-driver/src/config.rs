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
    /// `--kubelet-registration-dir`: the kubelet's `plugins_registry/`
    /// directory to register in (no registration when None).
    pub kubelet_registration_dir: Option<PathBuf>,
    /// `--kubelet-registration-endpoint`: the CSI socket as the kubelet sees
    /// it (default: the path of a unix `endpoint`).
    pub kubelet_registration_endpoint: Option<PathBuf>,
}

/// File name of the kubelet registration socket in `--kubelet-registration-dir`:
/// `<driver name>-reg.sock` (`csi.berth.dev-reg.sock`), the name
/// node-driver-registrar gives it, so a host that switches between the two
/// never has both registered.
pub fn registration_socket_name() -> String {
    format!("{DRIVER_NAME}-reg.sock")
}

/// Registration with a kubelet, resolved from the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletRegistration {
    /// The registration socket berth-csi serves (in the kubelet's
    /// `plugins_registry/`).
    pub socket: PathBuf,
    /// The CSI endpoint given to the kubelet in `PluginInfo.endpoint` (a
    /// unix socket path; a string because that is what the kubelet gets).
    pub endpoint: String,
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

    /// Parses `--kubelet-registration-endpoint`: an absolute path, optionally
    /// written `unix:///path`. The kubelet dials it as a plain unix socket
    /// path, so that is what is kept.
    pub fn parse_registration_endpoint(s: &str) -> Result<PathBuf> {
        let path = s.strip_prefix("unix://").unwrap_or(s);
        if !path.starts_with('/') {
            return Err(Error::invalid(
                "--kubelet-registration-endpoint",
                format!("{s:?} is not an absolute unix socket path"),
            ));
        }
        Ok(PathBuf::from(path))
    }

    /// The kubelet registration to serve, if `--kubelet-registration-dir` is
    /// set; an error naming the flag when the flags do not fit together.
    pub fn kubelet_registration(&self) -> Result<Option<KubeletRegistration>> {
        let Some(dir) = &self.kubelet_registration_dir else {
            if self.kubelet_registration_endpoint.is_some() {
                return Err(Error::invalid(
                    "--kubelet-registration-endpoint",
                    "has no effect without --kubelet-registration-dir",
                ));
            }
            return Ok(None);
        };
        // The kubelet registers a CSI plugin to call its Node service
        // (NodeGetInfo right away, then stage/publish); a controller-only
        // process has none to offer.
        if !self.mode.node() {
            return Err(Error::invalid(
                "--kubelet-registration-dir",
                "needs --mode all or --mode node (the kubelet calls the Node service)",
            ));
        }
        if !dir.is_absolute() {
            return Err(Error::invalid(
                "--kubelet-registration-dir",
                format!("{} is not an absolute path", dir.display()),
            ));
        }
        let endpoint = match (&self.kubelet_registration_endpoint, &self.endpoint) {
            (Some(p), _) => p.clone(),
            (None, Endpoint::Unix(p)) => p.clone(),
            // The kubelet only dials unix sockets, and we cannot guess which
            // path a TCP endpoint is forwarded to.
            (None, Endpoint::Tcp(addr)) => {
                return Err(Error::invalid(
                    "--kubelet-registration-endpoint",
                    format!(
                        "is required with --kubelet-registration-dir when --endpoint is tcp://{addr} (the kubelet dials a unix socket)"
                    ),
                ))
            }
        };
        // Both flags are parsed from UTF-8 strings, so this only guards
        // against a Config built some other way.
        let endpoint = endpoint.to_str().map(str::to_string).ok_or_else(|| {
            Error::invalid(
                "--kubelet-registration-endpoint",
                format!("{} is not UTF-8", endpoint.display()),
            )
        })?;
        Ok(Some(KubeletRegistration {
            socket: dir.join(registration_socket_name()),
            endpoint,
        }))
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
        self.kubelet_registration()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, mode: Mode) -> Config {
        Config {
            endpoint: Config::parse_endpoint(endpoint).unwrap(),
            nfs_timeout: std::time::Duration::from_secs(30),
            node_id: "n1".into(),
            state_dir: "/var/lib/berth-csi".into(),
            pool_dir: "/var/lib/berth-csi/pool".into(),
            mode,
            max_volumes_per_node: 0,
            publish_nodes: PublishNodes::OwnNode,
            default_fs_type: FsType::Ext4,
            metrics_addr: None,
            kubelet_registration_dir: None,
            kubelet_registration_endpoint: None,
        }
    }

    #[track_caller]
    fn invalid_field(c: &Config) -> String {
        match c.validate() {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn registration_is_off_by_default() {
        let c = config("unix:///run/csi/csi.sock", Mode::All);
        c.validate().unwrap();
        assert_eq!(c.kubelet_registration().unwrap(), None);
    }

    #[test]
    fn registration_defaults_to_the_unix_endpoint() {
        for mode in [Mode::All, Mode::Node] {
            let mut c = config("unix:///var/lib/kubelet/plugins/b/csi.sock", mode);
            c.kubelet_registration_dir = Some("/var/lib/kubelet/plugins_registry".into());
            c.validate().unwrap();
            assert_eq!(
                c.kubelet_registration().unwrap(),
                Some(KubeletRegistration {
                    socket: "/var/lib/kubelet/plugins_registry/csi.berth.dev-reg.sock".into(),
                    endpoint: "/var/lib/kubelet/plugins/b/csi.sock".into(),
                })
            );
        }
    }

    #[test]
    fn registration_endpoint_overrides_the_listening_path() {
        let mut c = config("tcp://127.0.0.1:10000", Mode::Node);
        c.kubelet_registration_dir = Some("/reg".into());
        c.kubelet_registration_endpoint = Some("/host/csi.sock".into());
        let r = c.kubelet_registration().unwrap().unwrap();
        assert_eq!(r.endpoint, "/host/csi.sock");
        assert_eq!(r.socket, PathBuf::from("/reg/csi.berth.dev-reg.sock"));
    }

    #[test]
    fn registration_socket_is_named_after_the_driver() {
        assert_eq!(
            registration_socket_name(),
            format!("{DRIVER_NAME}-reg.sock")
        );
        assert_eq!(registration_socket_name(), "csi.berth.dev-reg.sock");
    }

    #[test]
    fn registration_in_controller_mode_is_refused() {
        let mut c = config("unix:///run/csi/csi.sock", Mode::Controller);
        c.kubelet_registration_dir = Some("/reg".into());
        assert_eq!(invalid_field(&c), "--kubelet-registration-dir");
    }

    #[test]
    fn registration_with_tcp_needs_an_endpoint() {
        let mut c = config("tcp://127.0.0.1:10000", Mode::All);
        c.kubelet_registration_dir = Some("/reg".into());
        assert_eq!(invalid_field(&c), "--kubelet-registration-endpoint");
    }

    #[test]
    fn registration_dir_must_be_absolute() {
        let mut c = config("unix:///run/csi/csi.sock", Mode::All);
        c.kubelet_registration_dir = Some("reg".into());
        assert_eq!(invalid_field(&c), "--kubelet-registration-dir");
    }

    #[test]
    fn registration_endpoint_alone_is_refused() {
        let mut c = config("unix:///run/csi/csi.sock", Mode::All);
        c.kubelet_registration_endpoint = Some("/host/csi.sock".into());
        assert_eq!(invalid_field(&c), "--kubelet-registration-endpoint");
    }

    #[test]
    fn registration_endpoint_parses_paths_and_unix_urls() {
        for (s, want) in [
            (
                "/var/lib/kubelet/plugins/b/csi.sock",
                "/var/lib/kubelet/plugins/b/csi.sock",
            ),
            ("unix:///run/csi.sock", "/run/csi.sock"),
        ] {
            assert_eq!(
                Config::parse_registration_endpoint(s).unwrap(),
                PathBuf::from(want)
            );
        }
        for bad in ["csi.sock", "tcp://127.0.0.1:1", "unix://relative", ""] {
            assert!(
                matches!(
                    Config::parse_registration_endpoint(bad),
                    Err(Error::InvalidArgument { ref field, .. }) if field == "--kubelet-registration-endpoint"
                ),
                "{bad:?}"
            );
        }
    }
}
