//! Typed bridge errors, mapped once to the CNI error object.

use cni_core::{CniError, ErrorCode};
use host_net::netlink::NetlinkError;
use host_net::netns::NetNsError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{field}: {msg}")]
    Config { field: String, msg: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error("{0}")]
    Kernel(String),
    #[error("{0}")]
    Nat(String),
    #[error("nftables: {0}")]
    Nft(#[from] nftables_netlink::Error),
    #[error("attachment records {path}: {msg}")]
    Records { path: String, msg: String },
    #[error("{0}")]
    Check(String),
    #[error("{0}")]
    Unavailable(String),
    /// An error from a delegated plugin (IPAM), passed through unchanged.
    #[error("{0}")]
    Cni(CniError),
}

impl BridgeError {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        BridgeError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

impl From<CniError> for BridgeError {
    fn from(e: CniError) -> Self {
        BridgeError::Cni(e)
    }
}

impl From<BridgeError> for CniError {
    fn from(e: BridgeError) -> CniError {
        let code = match &e {
            BridgeError::Cni(inner) => return inner.clone(),
            BridgeError::Config { .. } => ErrorCode::InvalidNetworkConfig,
            BridgeError::NetNs(n) if n.is_missing() => ErrorCode::InvalidEnv,
            BridgeError::NetNs(_) => ErrorCode::InvalidEnv,
            BridgeError::Netlink(_)
            | BridgeError::Kernel(_)
            | BridgeError::Nat(_)
            | BridgeError::Nft(_) => ErrorCode::Kernel,
            BridgeError::Records { .. } => ErrorCode::Store,
            BridgeError::Check(_) => ErrorCode::CheckFailed,
            BridgeError::Unavailable(_) => ErrorCode::PluginNotAvailable,
        };
        CniError::new(code, e.to_string())
    }
}
