//! Typed overlay errors.

use cni_core::netlink::NetlinkError;

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
}

impl OverlayError {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        OverlayError::Config { field: field.into(), msg: msg.into() }
    }
}
