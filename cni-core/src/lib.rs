//! The CNI protocol for Berth's plugins: spec versions, environment and
//! configuration parsing, typed results in every version's layout, the
//! spec's error object, the dispatch skeleton and delegation to other
//! plugins (IPAM) through CNI_PATH.

#[cfg(target_env = "musl")]
mod alloc;
pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod log;
pub mod result;
pub mod skel;
pub mod version;

pub use config::{ConfList, NetConf};
pub use env::{CmdEnv, Command};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, PluginInfo, Request};
pub use version::SpecVersion;
