//! The `berth-bridge` CNI commands.

use cni_core::{CniError, CniResult, Plugin, PluginInfo, Request};
use host_net::netlink::Netlink;

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::ipam::Ipam;

pub const INFO: PluginInfo = PluginInfo {
    name: "berth-bridge",
    version: env!("CARGO_PKG_VERSION"),
    description: "attaches pods to a Linux bridge with a veth pair; leak-free DEL and GC",
};

pub struct BridgePlugin;

fn status(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.config, "")?;
    if let Some(l) = Netlink::new()?.link(&conf.bridge)? {
        if l.kind.as_deref() != Some("bridge") {
            return Err(BridgeError::Unavailable(format!(
                "{} exists but is not a bridge",
                conf.bridge
            )));
        }
    }
    if let Some(ipam) = Ipam::of(req, &conf) {
        ipam.status()?;
    }
    Ok(())
}

impl Plugin for BridgePlugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        crate::add::cmd_add(req).map_err(CniError::from)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        crate::del::cmd_del(req).map_err(CniError::from)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        crate::check::cmd_check(req).map_err(CniError::from)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        crate::gc::cmd_gc(req).map_err(CniError::from)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        status(req).map_err(CniError::from)
    }
}
