//! Bridge + veth pod attachment: the library behind `berth-bridge`, also
//! used by `berth-overlay` to attach pods on a node.

pub mod add;
pub mod check;
pub mod config;
pub mod del;
pub mod error;
pub mod gc;
pub mod link;
pub mod masq;
pub mod nft;
pub mod plugin;
pub mod pod;
pub mod records;
pub mod spoofchk;

pub use config::BridgeConf;
pub use error::BridgeError;
pub use plugin::{BridgePlugin, INFO};
