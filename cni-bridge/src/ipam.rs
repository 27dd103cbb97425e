//! Getting the pod's addresses. When the configuration names
//! `berth-host-local`, its code, linked into this plugin, runs in this
//! process: one exec per pod instead of two, on the same store with the same
//! locks, so an attachment made one way is released the other way. Any other
//! IPAM type, or `"ipamInProcess": false`, runs the plugin found in CNI_PATH
//! as the spec describes.

use cni_core::delegate::Delegate;
use cni_core::{CniError, CniResult, Plugin, Request};

use crate::config::BridgeConf;

pub struct Ipam<'a> {
    req: &'a Request,
    plugin_type: &'a str,
    in_process: bool,
}

impl<'a> Ipam<'a> {
    /// The IPAM of `conf`, or None for an L2-only network.
    pub fn of(req: &'a Request, conf: &'a BridgeConf) -> Option<Ipam<'a>> {
        let plugin_type = conf.ipam_type.as_deref()?;
        Some(Ipam {
            req,
            plugin_type,
            in_process: conf.ipam_in_process && plugin_type == ipam::INFO.name,
        })
    }

    pub fn plugin_type(&self) -> &str {
        self.plugin_type
    }

    fn exec(&self) -> Delegate<'_> {
        Delegate {
            plugin_type: self.plugin_type,
            env: &self.req.env,
            stdin: &self.req.stdin,
            version: self.req.config.version,
        }
    }

    pub fn add(&self) -> Result<CniResult, CniError> {
        if !self.in_process {
            return self.exec().add();
        }
        // Through the wire form, so the result is what the exec'd plugin
        // would have printed at this spec version and nothing more.
        let version = self.req.config.version;
        let r = ipam::HostLocal.add(self.req)?;
        CniResult::from_json(&r.to_json(version), version)
    }

    pub fn del(&self) -> Result<(), CniError> {
        if self.in_process {
            ipam::HostLocal.del(self.req)
        } else {
            self.exec().del()
        }
    }

    pub fn check(&self) -> Result<(), CniError> {
        if self.in_process {
            ipam::HostLocal.check(self.req)
        } else {
            self.exec().check()
        }
    }

    pub fn gc(&self) -> Result<(), CniError> {
        if self.in_process {
            ipam::HostLocal.gc(self.req)
        } else {
            self.exec().gc()
        }
    }

    pub fn status(&self) -> Result<(), CniError> {
        if self.in_process {
            ipam::HostLocal.status(self.req)
        } else {
            self.exec().status()
        }
    }
}
