//! The backend interface: what a storage backend does for each controller
//! and node RPC, which capabilities and parameters it accepts, and how its
//! ids are recognised. The services check the generic CSI arguments, pick
//! the backend in [`crate::registry`] and call it through [`Backend`].
//!
//! Backends: [`local`] (image files on loop devices) and [`nfs`]
//! (subdirectories of NFS exports). A backend depends only on the generic
//! modules (driver, state, validate, csi, mount, ...), never on the services,
//! the registry or another backend.

pub mod local;
pub mod nfs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proto::v1::*;

use crate::error::Result;
use crate::state;
use crate::validate::{self, Capability, CapabilityRules, Range};

/// How a backend's CO paths (staging, target, volume paths) are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathCheck {
    /// Normalised and resolved through existing symlinks
    /// ([`validate::abs_path`]).
    Resolve,
    /// Normalised only, never stat'ed: the path may be a mount of a server
    /// that does not answer ([`validate::abs_path_lexical`]).
    Lexical,
}

/// One storage backend. Controller calls are async (the NFS controller
/// talks to its server); the local backend runs its blocking work on the
/// blocking pool inside them. Node calls are blocking: the node service runs
/// them on the blocking pool.
///
/// Every method gets a request whose generic arguments the service already
/// checked (named in each method); the backend checks the rest.
#[tonic::async_trait]
pub trait Backend: CapabilityRules + Send + Sync + 'static {
    /// The StorageClass `backend` value that selects it.
    fn name(&self) -> &'static str;

    // --- routing and rules ------------------------------------------------

    /// Whether a volume id is one of this backend's (by its prefix).
    fn owns_volume_id(&self, id: &str) -> bool;

    /// Whether a snapshot id is one of this backend's (by its prefix).
    fn owns_snapshot_id(&self, id: &str) -> bool;

    /// Checks a volume id routed here; INVALID_ARGUMENT naming `field`.
    fn check_volume_id(&self, field: &str, id: &str) -> Result<()>;

    /// Checks a snapshot id routed here; INVALID_ARGUMENT naming `field`.
    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()>;

    /// How CO paths of this backend's volumes are checked.
    fn path_check(&self) -> PathCheck;

    /// Whether NodePublishVolume works from the staging path (so it needs
    /// one, and a target outside it).
    fn publishes_from_staging(&self) -> bool;

    /// Validates the StorageClass parameters of a CreateVolume
    /// (`volume_name` fills defaults and templates).
    fn check_parameters(
        &self,
        field: &str,
        map: &HashMap<String, String>,
        volume_name: &str,
    ) -> Result<()>;

    // --- controller ------------------------------------------------------

    /// CreateVolume; name, capabilities, range, parameters and
    /// mutable_parameters are checked.
    async fn create_volume(
        &self,
        req: CreateVolumeRequest,
        caps: Vec<Capability>,
        range: Range,
    ) -> Result<Volume>;

    /// DeleteVolume of a checked id.
    async fn delete_volume(&self, volume_id: &str) -> Result<()>;

    /// ControllerPublishVolume; volume id, node id and capability checked.
    async fn controller_publish(
        &self,
        req: ControllerPublishVolumeRequest,
        cap: Capability,
    ) -> Result<ControllerPublishVolumeResponse>;

    /// ControllerUnpublishVolume; volume id checked.
    async fn controller_unpublish(&self, req: ControllerUnpublishVolumeRequest) -> Result<()>;

    /// ValidateVolumeCapabilities: the problems found (empty: confirmed);
    /// volume id checked, capabilities present.
    async fn validate_volume_capabilities(
        &self,
        req: &ValidateVolumeCapabilitiesRequest,
    ) -> Result<Vec<String>>;

    /// A record's ListVolumes entry: the volume and its condition, if the
    /// backend reports one.
    fn list_entry(&self, v: &state::Volume) -> (Volume, Option<VolumeCondition>);

    /// GetCapacity for parameters that select this backend. Parameters and
    /// capabilities CreateVolume would refuse still get the space there is
    /// (see the local backend's `get_capacity` for why).
    async fn get_capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse>;

    /// CreateSnapshot of a volume of this backend; the name is checked.
    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot>;

    /// DeleteSnapshot of a checked id.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()>;

    /// ControllerExpandVolume; volume id and range checked.
    async fn expand_volume(
        &self,
        req: ControllerExpandVolumeRequest,
        range: Range,
    ) -> Result<ControllerExpandVolumeResponse>;

    /// ControllerGetVolume of a checked id.
    async fn get_volume(&self, volume_id: &str) -> Result<ControllerGetVolumeResponse>;

    // --- node (blocking) -------------------------------------------------

    /// NodeStageVolume; volume id, staging path and capability checked.
    fn node_stage(
        &self,
        req: &NodeStageVolumeRequest,
        staging: PathBuf,
        cap: Capability,
    ) -> Result<()>;

    /// NodeUnstageVolume; volume id and staging path checked.
    fn node_unstage(&self, volume_id: &str, staging: PathBuf) -> Result<()>;

    /// NodePublishVolume; volume id, target, staging path (when the backend
    /// publishes from it) and capability checked.
    fn node_publish(
        &self,
        req: &NodePublishVolumeRequest,
        target: PathBuf,
        staging: Option<PathBuf>,
        cap: Capability,
    ) -> Result<()>;

    /// NodeUnpublishVolume; volume id and target checked.
    fn node_unpublish(&self, volume_id: &str, target: PathBuf) -> Result<()>;

    /// NodeGetVolumeStats; volume id checked, volume path present.
    fn node_stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse>;

    /// NodeExpandVolume; volume id and range checked, volume path present.
    fn node_expand(
        &self,
        req: &NodeExpandVolumeRequest,
        range: Range,
    ) -> Result<NodeExpandVolumeResponse>;

    // --- lifecycle -------------------------------------------------------

    /// Start-up reconciliation of its records with the kernel (blocking).
    fn reconcile(&self) -> Result<()> {
        Ok(())
    }

    /// Whether its storage is usable (Probe).
    fn healthy(&self) -> bool {
        true
    }

    // --- provided: the generic checks under this backend's rules ----------

    /// One capability under this backend's rules.
    fn capability(&self, field: &str, cap: &VolumeCapability) -> Result<Capability> {
        validate::capability(field, cap, self)
    }

    /// A required list of capabilities under this backend's rules.
    fn capabilities(&self, field: &str, caps: &[VolumeCapability]) -> Result<Vec<Capability>> {
        validate::capabilities(field, caps, self)
    }

    /// A CO path, checked as [`Backend::path_check`] says.
    fn path(&self, field: &str, value: &str, own_dirs: &[&Path]) -> Result<PathBuf> {
        validate::abs_path_with(
            field,
            value,
            own_dirs,
            self.path_check() == PathCheck::Resolve,
        )
    }
}

static REGISTERED: OnceLock<String> = OnceLock::new();

/// Records the names of the registered backends (the registry does, once).
pub fn set_registered(names: String) {
    let _ = REGISTERED.set(names);
}

/// The registered backends' names, `local, nfs`, for messages that list
/// them.
pub fn registered() -> &'static str {
    REGISTERED.get().map(String::as_str).unwrap_or_default()
}
