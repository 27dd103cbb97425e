//! The CNI protocol for Berth's plugins: spec versions, environment and
//! configuration parsing, typed results in every version's layout, the
//! spec's error object, the dispatch skeleton and delegation to other
//! plugins (IPAM) through CNI_PATH.

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod fault;
pub mod log;
pub mod metrics_http;
pub mod netlink;
pub mod netns;
pub mod result;
pub mod skel;
pub mod version;

pub use config::{ConfList, NetConf};
pub use env::{CmdEnv, Command};
pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Plugin, PluginInfo, Request};
pub use version::SpecVersion;

/// Stable 64-bit FNV-1a of some byte strings, as 16 hex digits. Used where a
/// value must hash the same across processes and plugin versions (std's
/// hasher promises neither).
pub fn digest(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
