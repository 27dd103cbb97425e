//! Bridge + veth pod attachment: the library behind `berth-bridge`, also
//! used by `berth-overlay` to attach pods on a node.
//!
//! The public API is the plugin: [`BridgePlugin`] implements
//! [`cni_core::Plugin`] (ADD, DEL, CHECK, GC, STATUS) for a configuration
//! with `"type": "berth-bridge"`; everything behind it is private to this
//! crate.

mod add;
mod check;
mod config;
mod del;
mod error;
mod gc;
mod ipam;
mod link;
mod masq;
mod nft;
mod plugin;
mod pod;
mod records;
mod spoofchk;

pub use config::DEFAULT_BRIDGE;
pub use error::BridgeError;
pub use plugin::{BridgePlugin, INFO};
