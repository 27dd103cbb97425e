//! Controller service: checks the generic CSI arguments of each call once,
//! then hands it to the backend the [`Registry`] picks (from the volume or
//! snapshot id, or from the StorageClass parameters). Listing volumes and
//! snapshots is generic (the records), with each backend's entry.

use std::sync::Arc;

use proto::v1::controller_server::Controller;
use proto::v1::controller_service_capability::{rpc, Rpc, Type as CapType};
use proto::v1::*;
use tonic::{Request, Response, Status};

use crate::csi::{published_nodes, to_snapshot, validation_answer};
use crate::driver::{blocking, Driver};
use crate::error::{answer, Error, Result};
use crate::registry::Registry;
use crate::validate;

/// The Controller service.
pub struct ControllerService {
    driver: Arc<Driver>,
    backends: Arc<Registry>,
}

impl ControllerService {
    /// Serves the registered backends.
    pub fn new(driver: Arc<Driver>, backends: Arc<Registry>) -> Self {
        ControllerService { driver, backends }
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<CreateVolumeResponse> {
        validate::name("name", &req.name)?;
        let b = self.backends.for_parameters(&req.parameters);
        let caps = b.capabilities("volume_capabilities", &req.volume_capabilities)?;
        let range = validate::range("capacity_range", req.capacity_range.as_ref())?;
        b.check_parameters("parameters", &req.parameters, &req.name)?;
        if !req.mutable_parameters.is_empty() {
            return Err(Error::invalid(
                "mutable_parameters",
                "are not supported (no MODIFY_VOLUME capability)",
            ));
        }
        let volume = b.create_volume(req, caps, range).await?;
        Ok(CreateVolumeResponse {
            volume: Some(volume),
        })
    }

    async fn delete_volume(&self, req: DeleteVolumeRequest) -> Result<DeleteVolumeResponse> {
        let b = self.backends.for_volume_id(&req.volume_id);
        b.check_volume_id("volume_id", &req.volume_id)?;
        b.delete_volume(&req.volume_id).await?;
        Ok(DeleteVolumeResponse {})
    }

    async fn publish(
        &self,
        req: ControllerPublishVolumeRequest,
    ) -> Result<ControllerPublishVolumeResponse> {
        let b = self.backends.for_volume_id(&req.volume_id);
        b.check_volume_id("volume_id", &req.volume_id)?;
        if req.node_id.is_empty() {
            return Err(Error::missing("node_id"));
        }
        validate::id("node_id", &req.node_id)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Error::missing("volume_capability"))?;
        let cap = b.capability("volume_capability", cap)?;
        b.controller_publish(req, cap).await
    }

    async fn unpublish(
        &self,
        req: ControllerUnpublishVolumeRequest,
    ) -> Result<ControllerUnpublishVolumeResponse> {
        let b = self.backends.for_volume_id(&req.volume_id);
        b.check_volume_id("volume_id", &req.volume_id)?;
        b.controller_unpublish(req).await?;
        Ok(ControllerUnpublishVolumeResponse {})
    }

    async fn validate_capabilities(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse> {
        let b = self.backends.for_volume_id(&req.volume_id);
        b.check_volume_id("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::missing("volume_capabilities"));
        }
        let problems = b.validate_volume_capabilities(&req).await?;
        Ok(validation_answer(problems, req))
    }

    async fn list_volumes(&self, req: ListVolumesRequest) -> Result<ListVolumesResponse> {
        let max = validate::max_entries(req.max_entries)?;
        let after = validate::pagination_token("starting_token", &req.starting_token)?;
        let (d, backends) = (self.driver.clone(), self.backends.clone());
        blocking(move || {
            let mut rows = d
                .state
                .list_volumes(after, if max == 0 { 0 } else { max + 1 })?;
            let next_token = page(&mut rows, max, |v| v.seq);
            let mut entries = Vec::with_capacity(rows.len());
            for v in rows {
                let published_node_ids = published_nodes(&d, &v.id)?;
                let (volume, volume_condition) = backends.for_volume_id(&v.id).list_entry(&v);
                entries.push(list_volumes_response::Entry {
                    volume: Some(volume),
                    status: Some(list_volumes_response::VolumeStatus {
                        published_node_ids,
                        volume_condition,
                    }),
                });
            }
            Ok(ListVolumesResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse> {
        let b = self.backends.for_parameters(&req.parameters);
        b.get_capacity(req).await
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<CreateSnapshotResponse> {
        validate::name("name", &req.name)?;
        let b = self.backends.for_volume_id(&req.source_volume_id);
        let snapshot = b.create_snapshot(req).await?;
        Ok(CreateSnapshotResponse {
            snapshot: Some(snapshot),
        })
    }

    async fn delete_snapshot(&self, req: DeleteSnapshotRequest) -> Result<DeleteSnapshotResponse> {
        let b = self.backends.for_snapshot_id(&req.snapshot_id);
        b.check_snapshot_id("snapshot_id", &req.snapshot_id)?;
        b.delete_snapshot(&req.snapshot_id).await?;
        Ok(DeleteSnapshotResponse {})
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        let max = validate::max_entries(req.max_entries)?;
        let after = validate::pagination_token("starting_token", &req.starting_token)?;
        if !req.snapshot_id.is_empty() {
            validate::id("snapshot_id", &req.snapshot_id)?;
        }
        if !req.source_volume_id.is_empty() {
            validate::id("source_volume_id", &req.source_volume_id)?;
        }
        let d = self.driver.clone();
        blocking(move || {
            let snap = (!req.snapshot_id.is_empty()).then_some(req.snapshot_id.as_str());
            let src = (!req.source_volume_id.is_empty()).then_some(req.source_volume_id.as_str());
            let mut rows =
                d.state
                    .list_snapshots(after, if max == 0 { 0 } else { max + 1 }, snap, src)?;
            let next_token = page(&mut rows, max, |s| s.seq);
            Ok(ListSnapshotsResponse {
                entries: rows
                    .iter()
                    .map(|s| list_snapshots_response::Entry {
                        snapshot: Some(to_snapshot(s)),
                    })
                    .collect(),
                next_token,
            })
        })
        .await
    }

    /// GetSnapshot from the records, like ListSnapshots by id.
    async fn get_snapshot(&self, req: GetSnapshotRequest) -> Result<GetSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(Error::missing("snapshot_id"));
        }
        validate::id("snapshot_id", &req.snapshot_id)?;
        let d = self.driver.clone();
        blocking(move || {
            let s = d
                .state
                .snapshot(&req.snapshot_id)?
                .filter(|s| s.state == "ready")
                .ok_or_else(|| {
                    Error::NotFound(format!("snapshot {} does not exist", req.snapshot_id))
                })?;
            Ok(GetSnapshotResponse {
                snapshot: Some(to_snapshot(&s)),
            })
        })
        .await
    }

    async fn expand_volume(
        &self,
        req: ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse> {
        let b = self.backends.for_volume_id(&req.volume_id);
        b.check_volume_id("volume_id", &req.volume_id)?;
        let range = validate::range("capacity_range", req.capacity_range.as_ref())?;
        b.expand_volume(req, range).await
    }

    async fn get_volume(
        &self,
        req: ControllerGetVolumeRequest,
    ) -> Result<ControllerGetVolumeResponse> {
        let b = self.backends.for_volume_id(&req.volume_id);
        b.check_volume_id("volume_id", &req.volume_id)?;
        b.get_volume(&req.volume_id).await
    }
}

/// Cuts `rows` (fetched with one extra) to a page of `max` (0: all) and
/// returns the token of the next page, empty when there is none.
fn page<T>(rows: &mut Vec<T>, max: usize, seq: impl Fn(&T) -> i64) -> String {
    let more = max > 0 && rows.len() > max;
    rows.truncate(if max == 0 { rows.len() } else { max });
    if more {
        rows.last()
            .map(|r| format!("t{}", seq(r)))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// The controller capabilities advertised (all implemented).
pub const CAPABILITIES: &[rpc::Type] = &[
    rpc::Type::CreateDeleteVolume,
    rpc::Type::PublishUnpublishVolume,
    rpc::Type::ListVolumes,
    rpc::Type::GetCapacity,
    rpc::Type::CreateDeleteSnapshot,
    rpc::Type::ListSnapshots,
    rpc::Type::CloneVolume,
    rpc::Type::PublishReadonly,
    rpc::Type::ExpandVolume,
    rpc::Type::ListVolumesPublishedNodes,
    rpc::Type::VolumeCondition,
    rpc::Type::GetVolume,
    rpc::Type::SingleNodeMultiWriter,
    rpc::Type::GetSnapshot,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        answer("create_volume", self.create_volume(req.into_inner()).await)
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        answer("delete_volume", self.delete_volume(req.into_inner()).await)
    }

    async fn controller_publish_volume(
        &self,
        req: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        answer("controller_publish", self.publish(req.into_inner()).await)
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        answer(
            "controller_unpublish",
            self.unpublish(req.into_inner()).await,
        )
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = self.validate_capabilities(req.into_inner()).await;
        answer("validate_caps", r)
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        answer("list_volumes", self.list_volumes(req.into_inner()).await)
    }

    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        answer("get_capacity", self.get_capacity(req.into_inner()).await)
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|t| ControllerServiceCapability {
                    r#type: Some(CapType::Rpc(Rpc { r#type: *t as i32 })),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        answer(
            "create_snapshot",
            self.create_snapshot(req.into_inner()).await,
        )
    }

    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        answer(
            "delete_snapshot",
            self.delete_snapshot(req.into_inner()).await,
        )
    }

    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        answer(
            "list_snapshots",
            self.list_snapshots(req.into_inner()).await,
        )
    }

    async fn get_snapshot(
        &self,
        req: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        answer("get_snapshot", self.get_snapshot(req.into_inner()).await)
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        answer("expand_volume", self.expand_volume(req.into_inner()).await)
    }

    async fn controller_get_volume(
        &self,
        req: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        answer("get_volume", self.get_volume(req.into_inner()).await)
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Error::Unimplemented("ControllerModifyVolume is not supported".into()).into())
    }
}
