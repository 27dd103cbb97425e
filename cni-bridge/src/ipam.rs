//! Getting the pod's addresses. When the configuration names
//! `berth-host-local`, its code, linked into this plugin, runs in this
//! process: one exec per pod instead of two, on the same store with the same
//! locks, so an attachment made one way is released the other way. Any other
//! IPAM type, or `"ipamInProcess": false`, runs the plugin found in CNI_PATH
//! as the spec describes.

use cni_core::delegate::Exec;
use cni_core::{CniError, CniResult, Plugin, Request};

use crate::config::BridgeConf;

pub struct Ipam<'a> {
    req: &'a Request,
    exec: Exec<'a>,
    in_process: bool,
}

impl<'a> Ipam<'a> {
    /// The IPAM of `conf`, or None for an L2-only network.
    pub fn of(req: &'a Request, conf: &'a BridgeConf) -> Option<Ipam<'a>> {
        let plugin_type = conf.ipam_type.as_deref()?;
        Some(Ipam {
            req,
            exec: Exec(plugin_type),
            in_process: conf.ipam_in_process && plugin_type == ipam::INFO.name,
        })
    }

    pub fn plugin_type(&self) -> &str {
        self.exec.0
    }

    fn plugin(&self) -> &dyn Plugin {
        if self.in_process {
            &ipam::HostLocal
        } else {
            &self.exec
        }
    }

    pub fn add(&self) -> Result<CniResult, CniError> {
        let r = self.plugin().add(self.req)?;
        if !self.in_process {
            return Ok(r); // already read from the plugin's output
        }
        // Through the wire form, so the result is what the exec'd plugin
        // would have printed at this spec version and nothing more.
        let version = self.req.config.version;
        CniResult::from_json(&r.to_json(version), version)
    }

    pub fn del(&self) -> Result<(), CniError> {
        self.plugin().del(self.req)
    }

    pub fn check(&self) -> Result<(), CniError> {
        self.plugin().check(self.req)
    }

    pub fn gc(&self) -> Result<(), CniError> {
        self.plugin().gc(self.req)
    }

    pub fn status(&self) -> Result<(), CniError> {
        self.plugin().status(self.req)
    }
}
