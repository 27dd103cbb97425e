//! The NFS backend: volumes are subdirectories of NFS exports, chosen by
//! the StorageClass parameter `backend: nfs`.
//!
//! The controller side ([`controller`]) speaks NFSv3 from user space
//! ([`client`], [`archive`] for snapshots) and never mounts anything, so a
//! dead server costs a bounded wait and a clear code. The node side
//! ([`node`]) mounts `server:/share/subdir` on the target with the kernel's
//! NFS client. Ids carry the server, export, subdirectory and delete policy
//! ([`id`]), so no call after CreateVolume needs our records; records are
//! still kept for idempotency by name and for ListVolumes. [`params`] holds
//! the StorageClass parameters and the mount options a node accepts,
//! [`base`] the backend's type; this module plugs them into [`Backend`].

pub mod archive;
pub mod base;
pub mod client;
pub mod controller;
pub mod id;
pub mod node;
pub mod params;

use std::collections::HashMap;
use std::path::PathBuf;

use proto::v1::volume_capability::access_mode::Mode as AccessMode;
use proto::v1::volume_capability::AccessType;
use proto::v1::*;

use crate::backend::{Backend, PathCheck};
use crate::error::{Error, Result};
use crate::state;
use crate::validate::{self, Access, Capability, CapabilityRules, Range};
pub use base::{NfsBackend, NAME};
pub use id::SNAPSHOT_DIR;

impl CapabilityRules for NfsBackend {
    /// Single- and multi-node modes: every node can mount the export.
    fn access_mode(&self, mode: AccessMode) -> std::result::Result<bool, String> {
        match mode {
            AccessMode::SingleNodeWriter
            | AccessMode::SingleNodeSingleWriter
            | AccessMode::SingleNodeMultiWriter
            | AccessMode::MultiNodeSingleWriter
            | AccessMode::MultiNodeMultiWriter => Ok(false),
            AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly => Ok(true),
            // The message is the local backend's (kept as it was).
            other => Err(format!(
                "{} is not supported: local volumes live on one node",
                other.as_str_name()
            )),
        }
    }

    /// Mounts only, `fs_type` empty, `nfs` or `nfs4`, NFS mount options.
    fn access_type(&self, field: &str, t: &AccessType) -> Result<Access> {
        let m = match t {
            AccessType::Block(_) => {
                return Err(Error::invalid(
                    format!("{field}.block"),
                    "NFS volumes are filesystems; block access is not possible",
                ))
            }
            AccessType::Mount(m) => m,
        };
        if !matches!(m.fs_type.as_str(), "" | "nfs" | "nfs4") {
            return Err(Error::invalid(
                format!("{field}.mount.fs_type"),
                format!(
                    "{:?} is not an NFS filesystem type (nfs, nfs4 or empty)",
                    m.fs_type
                ),
            ));
        }
        validate::mount_flags_size(field, &m.mount_flags)?;
        for (i, f) in m.mount_flags.iter().enumerate() {
            params::check_mount_option(&format!("{field}.mount.mount_flags[{i}]"), f)?;
        }
        Ok(Access::Mount {
            fs_type: None,
            flags: m.mount_flags.clone(),
        })
    }
}

#[tonic::async_trait]
impl Backend for NfsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn owns_volume_id(&self, volume_id: &str) -> bool {
        id::is_volume(volume_id)
    }

    fn owns_snapshot_id(&self, snapshot_id: &str) -> bool {
        id::is_snapshot(snapshot_id)
    }

    fn check_volume_id(&self, field: &str, volume_id: &str) -> Result<()> {
        id::VolumeId::parse(field, volume_id).map(|_| ())
    }

    fn check_snapshot_id(&self, field: &str, snapshot_id: &str) -> Result<()> {
        id::SnapshotId::parse(field, snapshot_id).map(|_| ())
    }

    fn path_check(&self) -> PathCheck {
        PathCheck::Lexical
    }

    /// Nothing is staged: each publish mounts the export directly.
    fn publishes_from_staging(&self) -> bool {
        false
    }

    fn check_parameters(
        &self,
        field: &str,
        map: &HashMap<String, String>,
        volume_name: &str,
    ) -> Result<()> {
        params::parse(field, map, volume_name).map(|_| ())
    }

    async fn create_volume(
        &self,
        req: CreateVolumeRequest,
        caps: Vec<Capability>,
        range: Range,
    ) -> Result<Volume> {
        controller::create_volume(self, req, caps, range).await
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<()> {
        controller::delete_volume(self, volume_id).await
    }

    async fn controller_publish(
        &self,
        req: ControllerPublishVolumeRequest,
        cap: Capability,
    ) -> Result<ControllerPublishVolumeResponse> {
        controller::publish(self, req, cap)
    }

    async fn controller_unpublish(&self, req: ControllerUnpublishVolumeRequest) -> Result<()> {
        controller::unpublish(self, req)
    }

    async fn validate_volume_capabilities(
        &self,
        req: &ValidateVolumeCapabilitiesRequest,
    ) -> Result<Vec<String>> {
        controller::validate_caps(self, req).await
    }

    fn list_entry(&self, v: &state::Volume) -> (Volume, Option<VolumeCondition>) {
        let volume = controller::to_volume(v).unwrap_or_else(|| Volume {
            capacity_bytes: v.size as i64,
            volume_id: v.id.clone(),
            ..Default::default()
        });
        (volume, None)
    }

    async fn get_capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse> {
        controller::get_capacity(self, req).await
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        controller::create_snapshot(self, req).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        controller::delete_snapshot(self, snapshot_id).await
    }

    async fn expand_volume(
        &self,
        req: ControllerExpandVolumeRequest,
        range: Range,
    ) -> Result<ControllerExpandVolumeResponse> {
        controller::expand_volume(self, &req, range)
    }

    async fn get_volume(&self, volume_id: &str) -> Result<ControllerGetVolumeResponse> {
        controller::get_volume(self, volume_id).await
    }

    /// Nothing is staged; the arguments were checked.
    fn node_stage(
        &self,
        _req: &NodeStageVolumeRequest,
        _staging: PathBuf,
        _cap: Capability,
    ) -> Result<()> {
        Ok(())
    }

    /// Nothing was staged; the arguments were checked.
    fn node_unstage(&self, _volume_id: &str, _staging: PathBuf) -> Result<()> {
        Ok(())
    }

    fn node_publish(
        &self,
        req: &NodePublishVolumeRequest,
        target: PathBuf,
        _staging: Option<PathBuf>,
        cap: Capability,
    ) -> Result<()> {
        node::publish(self, req, target, cap)
    }

    fn node_unpublish(&self, volume_id: &str, target: PathBuf) -> Result<()> {
        node::unpublish(self, volume_id, target)
    }

    /// The export's figures as the kernel client sees them.
    fn node_stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        let path = self.path("volume_path", &req.volume_path, &self.own_dirs())?;
        node::stats(self, req, path)
    }

    /// Nothing to grow on the node: the requested size is the answer.
    fn node_expand(
        &self,
        _req: &NodeExpandVolumeRequest,
        range: Range,
    ) -> Result<NodeExpandVolumeResponse> {
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: range.required.or(range.limit).unwrap_or(0) as i64,
        })
    }
}
