//! Address allocation for CNI: range sets with the reference host-local's
//! rules, a crash-safe SQLite store shared safely by concurrent plugin
//! processes, and the `berth-host-local` plugin and operator CLI.

pub mod allocator;
pub mod bootid;
pub mod cli;
pub mod config;
pub mod dns;
pub mod error;
pub mod migrate;
pub mod plugin;
pub mod range;
pub mod store;

pub use error::IpamError;
pub use plugin::{HostLocal, INFO};
