//! Typed IPAM errors, mapped once to the CNI error object.

use std::path::PathBuf;

use cni_core::{CniError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A configuration value is wrong; `field` is its JSON path.
    #[error("{field}: {msg}")]
    Config { field: String, msg: String },
    #[error("no free address left in range set {index} ({ranges})")]
    Exhausted { index: usize, ranges: String },
    #[error(
        "requested address {addr} (from {source_name}) is not in any configured range ({ranges})"
    )]
    OutOfRange {
        addr: String,
        source_name: String,
        ranges: String,
    },
    #[error("{0}")]
    Requested(String),
    #[error("requested address {addr} is already held by container {holder} ({ifname})")]
    InUse {
        addr: String,
        holder: String,
        ifname: String,
    },
    #[error("container {container} interface {ifname} already holds {held}; a second ADD with a different netns or configuration is refused: DEL it first")]
    Duplicate {
        container: String,
        ifname: String,
        held: String,
    },
    #[error("ipam.dataDir: cannot use {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("address store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    NotHeld(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Io(String),
}

impl IpamError {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        IpamError::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = match &e {
            IpamError::Config { .. } => ErrorCode::InvalidNetworkConfig,
            IpamError::Exhausted { .. } => ErrorCode::RangeExhausted,
            IpamError::OutOfRange { .. } | IpamError::Requested(_) => {
                ErrorCode::RequestedOutOfRange
            }
            IpamError::InUse { .. } => ErrorCode::AddressInUse,
            IpamError::Duplicate { .. } => ErrorCode::DuplicateAllocation,
            IpamError::DataDir { .. } | IpamError::Io(_) => ErrorCode::IoFailure,
            IpamError::Store { .. } => ErrorCode::Store,
            IpamError::NotHeld(_) => ErrorCode::UnknownContainer,
            IpamError::Unavailable(_) => ErrorCode::PluginNotAvailable,
        };
        CniError::new(code, e.to_string())
    }
}
