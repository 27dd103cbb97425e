//! Identity service: name, version, capabilities, readiness (the state
//! store and every backend's storage).

use std::sync::Arc;

use proto::v1::identity_server::Identity;
use proto::v1::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use proto::v1::*;
use tonic::{Request, Response, Status};

use crate::config::DRIVER_NAME;
use crate::driver::Driver;
use crate::registry::Registry;

/// The Identity service.
pub struct IdentityService {
    driver: Arc<Driver>,
    backends: Arc<Registry>,
}

impl IdentityService {
    /// Answers for the driver and its backends.
    pub fn new(driver: Arc<Driver>, backends: Arc<Registry>) -> Self {
        IdentityService { driver, backends }
    }
}

fn service_cap(t: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(Type::Service(Service { r#type: t as i32 })),
    }
}

/// The plugin capabilities for a mode (also printed by the README).
pub fn plugin_capabilities(controller: bool) -> Vec<PluginCapability> {
    let mut caps = Vec::new();
    if controller {
        caps.push(service_cap(service::Type::ControllerService));
    }
    caps.push(service_cap(service::Type::VolumeAccessibilityConstraints));
    caps.push(PluginCapability {
        r#type: Some(Type::VolumeExpansion(VolumeExpansion {
            r#type: volume_expansion::Type::Online as i32,
        })),
    });
    caps
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: [
                ("csi-spec".to_string(), proto::CSI_SPEC_VERSION.to_string()),
                ("backend".to_string(), "local".to_string()),
            ]
            .into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: plugin_capabilities(self.driver.config.mode.controller()),
        }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let (d, backends) = (self.driver.clone(), self.backends.clone());
        let ready = tokio::task::spawn_blocking(move || d.state.healthy() && backends.healthy())
            .await
            .unwrap_or(false);
        if !ready {
            tracing::warn!("probe: state store or pool unusable");
        }
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
