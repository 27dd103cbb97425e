//! The `local` backend: each volume is an image file in a pool directory on
//! this node's disk ([`pool`]), attached through a loop device
//! ([`loopdev`]), formatted and mounted, or handed over as a raw block
//! device. Ids are `local:<node>:<hex>` and `snap:<node>:<hex>`; ids that no
//! other backend claims come here too (the default), and are NOT_FOUND.
//!
//! [`base`] holds the backend's type (driver + pool), [`controller`] and
//! [`node`] the RPCs (blocking), [`rules`] what the backend accepts,
//! [`reconcile`] the start-up repair of its records; this module plugs them
//! into [`Backend`].

pub mod base;
pub mod controller;
pub mod loopdev;
pub mod node;
pub mod pool;
pub mod reconcile;
pub mod rules;

use std::collections::HashMap;
use std::path::PathBuf;

use proto::v1::volume_capability::access_mode::Mode as AccessMode;
use proto::v1::volume_capability::AccessType;
use proto::v1::*;

use crate::backend::{Backend, PathCheck};
use crate::error::Result;
use crate::state;
use crate::validate::{self, Access, Capability, CapabilityRules, Range};
pub use base::{LocalBackend, NAME};
use pool::{Kind, LocalId};

impl CapabilityRules for LocalBackend {
    fn access_mode(&self, mode: AccessMode) -> std::result::Result<bool, String> {
        rules::access_mode(mode)
    }

    fn access_type(&self, field: &str, t: &AccessType) -> Result<Access> {
        rules::access_type(field, t)
    }
}

#[tonic::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn owns_volume_id(&self, id: &str) -> bool {
        LocalId::parse(Kind::Volume, id).is_some()
    }

    fn owns_snapshot_id(&self, id: &str) -> bool {
        LocalId::parse(Kind::Snapshot, id).is_some()
    }

    fn check_volume_id(&self, field: &str, id: &str) -> Result<()> {
        validate::id(field, id)
    }

    fn check_snapshot_id(&self, field: &str, id: &str) -> Result<()> {
        validate::id(field, id)
    }

    fn path_check(&self) -> PathCheck {
        PathCheck::Resolve
    }

    fn publishes_from_staging(&self) -> bool {
        true
    }

    fn check_parameters(
        &self,
        field: &str,
        map: &HashMap<String, String>,
        _volume_name: &str,
    ) -> Result<()> {
        rules::params(field, map).map(|_| ())
    }

    async fn create_volume(
        &self,
        req: CreateVolumeRequest,
        caps: Vec<Capability>,
        range: Range,
    ) -> Result<Volume> {
        self.run(move |d| controller::create_volume(d, req, caps, range))
            .await
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<()> {
        let id = volume_id.to_string();
        self.run(move |d| controller::delete_volume(d, &id)).await
    }

    async fn controller_publish(
        &self,
        req: ControllerPublishVolumeRequest,
        cap: Capability,
    ) -> Result<ControllerPublishVolumeResponse> {
        self.run(move |d| controller::controller_publish(d, req, cap))
            .await
    }

    async fn controller_unpublish(&self, req: ControllerUnpublishVolumeRequest) -> Result<()> {
        self.run(move |d| controller::controller_unpublish(d, req))
            .await
    }

    async fn validate_volume_capabilities(
        &self,
        req: &ValidateVolumeCapabilitiesRequest,
    ) -> Result<Vec<String>> {
        let req = req.clone();
        self.run(move |d| controller::validate_caps(d, &req)).await
    }

    fn list_entry(&self, v: &state::Volume) -> (Volume, Option<VolumeCondition>) {
        controller::list_entry(self, v)
    }

    async fn get_capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse> {
        self.run(move |d| controller::get_capacity(d, req)).await
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        self.run(move |d| controller::create_snapshot(d, req)).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let id = snapshot_id.to_string();
        self.run(move |d| controller::delete_snapshot(d, &id)).await
    }

    async fn expand_volume(
        &self,
        req: ControllerExpandVolumeRequest,
        range: Range,
    ) -> Result<ControllerExpandVolumeResponse> {
        self.run(move |d| controller::expand_volume(d, req, range))
            .await
    }

    async fn get_volume(&self, volume_id: &str) -> Result<ControllerGetVolumeResponse> {
        let id = volume_id.to_string();
        self.run(move |d| controller::get_volume(d, &id)).await
    }

    fn node_stage(
        &self,
        req: &NodeStageVolumeRequest,
        staging: PathBuf,
        cap: Capability,
    ) -> Result<()> {
        node::stage(self, req, staging, cap)
    }

    fn node_unstage(&self, volume_id: &str, staging: PathBuf) -> Result<()> {
        node::unstage(self, volume_id, staging)
    }

    fn node_publish(
        &self,
        req: &NodePublishVolumeRequest,
        target: PathBuf,
        staging: Option<PathBuf>,
        cap: Capability,
    ) -> Result<()> {
        node::publish(self, req, target, staging, cap)
    }

    fn node_unpublish(&self, volume_id: &str, target: PathBuf) -> Result<()> {
        node::unpublish(self, volume_id, target)
    }

    fn node_stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        node::stats(self, req)
    }

    fn node_expand(
        &self,
        req: &NodeExpandVolumeRequest,
        range: Range,
    ) -> Result<NodeExpandVolumeResponse> {
        node::expand(self, req, range)
    }

    fn reconcile(&self) -> Result<()> {
        reconcile::reconcile(self)
    }

    fn healthy(&self) -> bool {
        self.pool.healthy()
    }
}
