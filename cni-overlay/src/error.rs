//! Typed overlay errors.

use std::path::PathBuf;

use cni_core::{CniError, ErrorCode};
use host_net::netlink::NetlinkError;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A flag or configuration value is wrong; `field` names it.
    #[error("{field}: {msg}")]
    Config { field: String, msg: String },
    #[error("lease store {store}: {msg}")]
    Store { store: String, msg: String },
    #[error("network {network} has no free /{len} subnet left")]
    Exhausted { network: String, len: u8 },
    #[error("the lease on {subnet} was lost (taken by {holder})")]
    LeaseLost { subnet: String, holder: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Io(String),
    /// ADD/CHECK: the node agent has not written the node's lease yet.
    #[error("the berth-overlayd node agent is not ready on this node: {} does not exist yet", path.display())]
    AgentNotReady { path: PathBuf },
    /// STATUS: the same condition, reported as the plugin being unavailable.
    #[error("the berth-overlayd node agent is not ready on this node: {} does not exist yet", path.display())]
    AgentMissing { path: PathBuf },
    /// The node's subnet file exists but cannot be read.
    #[error("{0}")]
    SubnetFile(String),
    /// A CNI error from below (configuration parsing), passed through.
    #[error("{0}")]
    Cni(CniError),
}

impl From<CniError> for OverlayError {
    fn from(e: CniError) -> Self {
        OverlayError::Cni(e)
    }
}

impl From<OverlayError> for CniError {
    fn from(e: OverlayError) -> CniError {
        let code = match &e {
            OverlayError::Cni(inner) => return inner.clone(),
            OverlayError::Config { .. } => ErrorCode::InvalidNetworkConfig,
            OverlayError::AgentNotReady { .. } => ErrorCode::TryAgainLater,
            OverlayError::AgentMissing { .. } | OverlayError::Store { .. } => {
                ErrorCode::PluginNotAvailable
            }
            OverlayError::SubnetFile(_) | OverlayError::Io(_) => ErrorCode::IoFailure,
            OverlayError::Netlink(_) => ErrorCode::Kernel,
            OverlayError::Exhausted { .. } | OverlayError::LeaseLost { .. } => ErrorCode::Internal,
        };
        CniError::new(code, e.to_string())
    }
}

impl OverlayError {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        OverlayError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}
