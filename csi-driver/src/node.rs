//! Node service: checks the generic CSI arguments of each call once (ids,
//! CO paths as the backend's rules say, capabilities, ranges), then hands
//! it to the backend the volume id picks. Backend node work blocks (mounts,
//! loop devices, mkfs), so each call runs on the blocking pool.

use std::sync::Arc;

use proto::v1::node_server::Node;
use proto::v1::node_service_capability::{rpc, Rpc, Type as CapType};
use proto::v1::*;
use tonic::{Request, Response, Status};

use crate::backend::Backend;
use crate::csi::node_topology;
use crate::driver::{blocking, Driver};
use crate::error::{answer, Error, Result};
use crate::registry::Registry;
use crate::validate;

/// The Node service.
pub struct NodeService {
    driver: Arc<Driver>,
    backends: Arc<Registry>,
}

/// The node capabilities advertised.
pub const CAPABILITIES: &[rpc::Type] = &[
    rpc::Type::StageUnstageVolume,
    rpc::Type::GetVolumeStats,
    rpc::Type::ExpandVolume,
    rpc::Type::VolumeCondition,
    rpc::Type::SingleNodeMultiWriter,
];

impl NodeService {
    /// Serves the registered backends.
    pub fn new(driver: Arc<Driver>, backends: Arc<Registry>) -> Self {
        NodeService { driver, backends }
    }

    /// Runs `f` with the backend of `volume_id` (whose id it checked) on
    /// the blocking pool, and answers.
    async fn run<T: Send + 'static>(
        &self,
        rpc: &'static str,
        volume_id: String,
        f: impl FnOnce(&Driver, &dyn Backend) -> Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let (d, backends) = (self.driver.clone(), self.backends.clone());
        let r = blocking(move || {
            let b = backends.for_volume_id(&volume_id);
            b.check_volume_id("volume_id", &volume_id)?;
            f(&d, b.as_ref())
        })
        .await;
        answer(rpc, r)
    }
}

fn capability(b: &dyn Backend, cap: Option<&VolumeCapability>) -> Result<validate::Capability> {
    let cap = cap.ok_or_else(|| Error::missing("volume_capability"))?;
    b.capability("volume_capability", cap)
}

fn stage(
    d: &Driver,
    b: &dyn Backend,
    req: NodeStageVolumeRequest,
) -> Result<NodeStageVolumeResponse> {
    let staging = b.path(
        "staging_target_path",
        &req.staging_target_path,
        &d.own_dirs(),
    )?;
    let cap = capability(b, req.volume_capability.as_ref())?;
    b.node_stage(&req, staging, cap)?;
    Ok(NodeStageVolumeResponse {})
}

fn unstage(
    d: &Driver,
    b: &dyn Backend,
    req: NodeUnstageVolumeRequest,
) -> Result<NodeUnstageVolumeResponse> {
    let staging = b.path(
        "staging_target_path",
        &req.staging_target_path,
        &d.own_dirs(),
    )?;
    b.node_unstage(&req.volume_id, staging)?;
    Ok(NodeUnstageVolumeResponse {})
}

fn publish(
    d: &Driver,
    b: &dyn Backend,
    req: NodePublishVolumeRequest,
) -> Result<NodePublishVolumeResponse> {
    let from_staging = b.publishes_from_staging();
    if from_staging && req.staging_target_path.is_empty() {
        return Err(Error::missing("staging_target_path"));
    }
    let target = b.path("target_path", &req.target_path, &d.own_dirs())?;
    let staging = if from_staging {
        Some(b.path(
            "staging_target_path",
            &req.staging_target_path,
            &d.own_dirs(),
        )?)
    } else {
        None
    };
    let cap = capability(b, req.volume_capability.as_ref())?;
    if let Some(staging) = &staging {
        if target == *staging || target.starts_with(staging) {
            return Err(Error::invalid(
                "target_path",
                "must not be inside staging_target_path",
            ));
        }
    }
    b.node_publish(&req, target, staging, cap)?;
    Ok(NodePublishVolumeResponse {})
}

fn unpublish(
    d: &Driver,
    b: &dyn Backend,
    req: NodeUnpublishVolumeRequest,
) -> Result<NodeUnpublishVolumeResponse> {
    let target = b.path("target_path", &req.target_path, &d.own_dirs())?;
    b.node_unpublish(&req.volume_id, target)?;
    Ok(NodeUnpublishVolumeResponse {})
}

fn stats(b: &dyn Backend, req: NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
    if req.volume_path.is_empty() {
        return Err(Error::missing("volume_path"));
    }
    b.node_stats(&req)
}

fn expand(b: &dyn Backend, req: NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse> {
    if req.volume_path.is_empty() {
        return Err(Error::missing("volume_path"));
    }
    let range = validate::range("capacity_range", req.capacity_range.as_ref())?;
    b.node_expand(&req, range)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        self.run("node_stage", req.volume_id.clone(), |d, b| stage(d, b, req))
            .await
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        self.run("node_unstage", req.volume_id.clone(), |d, b| {
            unstage(d, b, req)
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        self.run("node_publish", req.volume_id.clone(), |d, b| {
            publish(d, b, req)
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        self.run("node_unpublish", req.volume_id.clone(), |d, b| {
            unpublish(d, b, req)
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        self.run("node_stats", req.volume_id.clone(), |_, b| stats(b, req))
            .await
    }

    async fn node_expand_volume(
        &self,
        req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        self.run("node_expand", req.volume_id.clone(), |_, b| expand(b, req))
            .await
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|t| NodeServiceCapability {
                    r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let d = &self.driver;
        Ok(Response::new(NodeGetInfoResponse {
            node_id: d.config.node_id.clone(),
            max_volumes_per_node: d.config.max_volumes_per_node,
            accessible_topology: Some(node_topology(d)),
        }))
    }
}
