//! Controller service: volumes, snapshots, attachment bookkeeping, capacity.
//!
//! Every handler validates all arguments first, then takes the per-volume
//! (or per-name) lock, then calls the engine. Work that blocks (file copies,
//! fsync, SQLite) runs on the blocking pool.

use std::sync::Arc;

use proto::v1::controller_server::Controller;
use proto::v1::controller_service_capability::{rpc, Rpc, Type as CapType};
use proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use proto::v1::*;
use tonic::{Request, Response, Status};

use crate::config::{FsType, DEFAULT_VOLUME_SIZE, TOPOLOGY_KEY};
use crate::engine::local::{Kind, LocalId};
use crate::engine::{loopdev, mount};
use crate::error::{Error, Result};
use crate::state;
use crate::validate::{self, Access, Backend, Capability, Range};
use crate::{blocking, now_ns, Driver};

/// Image sizes are multiples of this.
const ALIGN: u64 = 4096;

/// The Controller service.
pub struct ControllerService {
    driver: Arc<Driver>,
}

impl ControllerService {
    /// Wraps the shared driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        ControllerService { driver }
    }
}

/// The controller capabilities advertised (all implemented below).
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
];

/// This node's topology segment.
pub fn node_topology(d: &Driver) -> Topology {
    Topology {
        segments: [(TOPOLOGY_KEY.to_string(), d.config.node_id.clone())].into(),
    }
}

fn topology_matches(d: &Driver, t: &Topology) -> bool {
    t.segments.len() == 1 && t.segments.get(TOPOLOGY_KEY) == Some(&d.config.node_id)
}

pub(crate) fn content_source(v: &state::Volume) -> Option<VolumeContentSource> {
    let t = match v.source_kind.as_str() {
        "snapshot" => SourceType::Snapshot(SnapshotSource {
            snapshot_id: v.source_id.clone(),
        }),
        "volume" => SourceType::Volume(VolumeSource {
            volume_id: v.source_id.clone(),
        }),
        _ => return None,
    };
    Some(VolumeContentSource { r#type: Some(t) })
}

fn to_volume(d: &Driver, v: &state::Volume) -> Volume {
    if let Some(nfs) = crate::nfs::to_volume(v) {
        return nfs;
    }
    Volume {
        capacity_bytes: v.size as i64,
        volume_id: v.id.clone(),
        volume_context: Default::default(),
        content_source: content_source(v),
        accessible_topology: vec![node_topology(d)],
    }
}

pub(crate) fn to_snapshot(s: &state::Snapshot) -> Snapshot {
    Snapshot {
        size_bytes: s.size as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_ns / 1_000_000_000,
            nanos: (s.created_ns % 1_000_000_000) as i32,
        }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

/// Finds a ready volume of this node; NOT_FOUND otherwise.
pub fn lookup_volume(d: &Driver, field: &str, id: &str) -> Result<(LocalId, state::Volume)> {
    validate::id(field, id)?;
    let lid = LocalId::parse(Kind::Volume, id)
        .ok_or_else(|| Error::NotFound(format!("volume {id} does not exist")))?;
    if lid.node != d.config.node_id {
        return Err(Error::NotFound(format!(
            "volume {id} lives on node {}, this is node {}",
            lid.node, d.config.node_id
        )));
    }
    match d.state.volume(id)? {
        Some(v) if v.state == "ready" => Ok((lid, v)),
        _ => Err(Error::NotFound(format!("volume {id} does not exist"))),
    }
}

fn lookup_snapshot(d: &Driver, field: &str, id: &str) -> Result<(LocalId, state::Snapshot)> {
    validate::id(field, id)?;
    let lid = LocalId::parse(Kind::Snapshot, id)
        .ok_or_else(|| Error::NotFound(format!("snapshot {id} does not exist")))?;
    if lid.node != d.config.node_id {
        return Err(Error::NotFound(format!(
            "snapshot {id} lives on node {}",
            lid.node
        )));
    }
    match d.state.snapshot(id)? {
        Some(s) if s.state == "ready" => Ok((lid, s)),
        _ => Err(Error::NotFound(format!("snapshot {id} does not exist"))),
    }
}

/// Summary of what a set of capabilities asks of a volume.
struct Wanted {
    access: &'static str,
    fs_type: String,
    min_size: u64,
}

fn wanted(d: &Driver, field: &str, caps: &[Capability]) -> Result<Wanted> {
    let (mut block, mut mountv) = (false, false);
    let mut fs: Option<FsType> = None;
    let mut min_size = ALIGN;
    for (i, c) in caps.iter().enumerate() {
        match &c.access {
            Access::Block => block = true,
            Access::Mount { fs_type, .. } => {
                mountv = true;
                if let Some(t) = fs_type {
                    if fs.is_some_and(|f| f != *t) {
                        return Err(Error::invalid(
                            format!("{field}[{i}].mount.fs_type"),
                            "capabilities ask for different filesystems",
                        ));
                    }
                    fs = Some(*t);
                }
                min_size = min_size.max(fs_type.unwrap_or(d.config.default_fs_type).min_size());
            }
        }
    }
    let access = match (block, mountv) {
        (true, true) => "both",
        (true, false) => "block",
        _ => "mount",
    };
    Ok(Wanted {
        access,
        fs_type: fs.map(|f| f.as_str().to_string()).unwrap_or_default(),
        min_size,
    })
}

/// Whether a volume created with `v` supports capability `c`; the reason if not.
pub fn access_supported(v: &state::Volume, c: &Capability) -> std::result::Result<(), String> {
    match (&c.access, v.access.as_str()) {
        (Access::Block, "mount") => {
            Err("the volume was created for filesystem access, not block".into())
        }
        (Access::Mount { .. }, "block") => {
            Err("the volume was created for block access, not filesystem".into())
        }
        (
            Access::Mount {
                fs_type: Some(t), ..
            },
            _,
        ) if !v.fs_type.is_empty() && v.fs_type != t.as_str() => Err(format!(
            "the volume was created for {}, not {}",
            v.fs_type,
            t.as_str()
        )),
        _ => Ok(()),
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Picks the image size for a new volume. Honours the range exactly when
/// it can; OUT_OF_RANGE when the limit is below what the volume needs.
pub(crate) fn choose_size(range: Range, floor: u64) -> Result<u64> {
    let base = match (range.required, range.limit) {
        (Some(r), _) => r,
        (None, Some(l)) => l.min(DEFAULT_VOLUME_SIZE),
        (None, None) => DEFAULT_VOLUME_SIZE,
    };
    let need = base.max(floor);
    let mut size = align_up(need);
    if let Some(l) = range.limit {
        if size > l {
            let down = l / ALIGN * ALIGN;
            if down >= need.max(1) && down >= floor {
                size = down;
            } else {
                return Err(Error::OutOfRange(format!(
                    "capacity_range.limit_bytes {l} is below the {need} bytes this volume needs"
                )));
            }
        }
    }
    Ok(size)
}

fn pagination_token(field: &str, token: &str) -> Result<i64> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix('t')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            Error::Aborted(format!(
                "{field} {token:?} is not a token this driver handed out"
            ))
        })
}

fn max_entries(n: i32) -> Result<usize> {
    if n < 0 {
        return Err(Error::invalid("max_entries", "must not be negative"));
    }
    Ok(n as usize)
}

fn volume_condition(d: &Driver, lid: &LocalId, v: &state::Volume) -> VolumeCondition {
    match d.pool.size(lid) {
        None => VolumeCondition {
            abnormal: true,
            message: "the image file is missing from the pool".into(),
        },
        Some(s) if s < v.size => VolumeCondition {
            abnormal: true,
            message: format!("the image file is {s} bytes, the volume {} bytes", v.size),
        },
        Some(_) => VolumeCondition {
            abnormal: false,
            message: "volume is healthy".into(),
        },
    }
}

/// Freezes the volume's filesystem while a copy of its image is taken.
fn freeze_if_mounted(d: &Driver, volume_id: &str) -> Result<Option<mount::Frozen>> {
    match d.state.staging(volume_id)? {
        Some(s) if s.access == "mount" && s.state == "staged" => {
            Ok(Some(mount::freeze(std::path::Path::new(&s.path))))
        }
        _ => Ok(None),
    }
}

fn create_volume(d: &Driver, req: CreateVolumeRequest) -> Result<Volume> {
    // --- validate everything first
    validate::name("name", &req.name)?;
    let caps = validate::capabilities("volume_capabilities", &req.volume_capabilities)?;
    let range = validate::range("capacity_range", req.capacity_range.as_ref())?;
    let params = validate::params("parameters", &req.parameters)?;
    if !req.mutable_parameters.is_empty() {
        return Err(Error::invalid(
            "mutable_parameters",
            "are not supported (no MODIFY_VOLUME capability)",
        ));
    }
    let want = wanted(d, "volume_capabilities", &caps)?;
    let source = match req
        .volume_content_source
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
    {
        None => None,
        Some(SourceType::Snapshot(s)) => {
            validate::id("volume_content_source.snapshot.snapshot_id", &s.snapshot_id)?;
            Some(("snapshot", s.snapshot_id.clone()))
        }
        Some(SourceType::Volume(v)) => {
            validate::id("volume_content_source.volume.volume_id", &v.volume_id)?;
            Some(("volume", v.volume_id.clone()))
        }
    };
    if req.volume_content_source.is_some() && source.is_none() {
        return Err(Error::invalid(
            "volume_content_source",
            "one of snapshot or volume is required",
        ));
    }
    if let Some(t) = &req.accessibility_requirements {
        if !t.requisite.is_empty() && !t.requisite.iter().any(|t| topology_matches(d, t)) {
            return Err(Error::ResourceExhausted(format!(
                "accessibility_requirements.requisite does not include this node ({TOPOLOGY_KEY}={})",
                d.config.node_id
            )));
        }
    }
    let canonical = validate::canonical_params(&req.parameters);

    // --- serialise on the name (and on a source volume)
    let mut keys = vec![format!("name/{}", req.name)];
    if let Some(("volume", id)) = &source {
        keys.push(Driver::vol_key(id));
    }
    let _guard = d.locks.acquire(&keys)?;

    if let Some(v) = d.state.volume_by_name(&req.name)? {
        if v.state == "ready" {
            let fits = range.required.is_none_or(|r| v.size >= r)
                && range.limit.is_none_or(|l| v.size <= l);
            let same_source = source.as_ref().map(|(k, i)| (k.to_string(), i.clone()))
                == (!v.source_kind.is_empty())
                    .then(|| (v.source_kind.clone(), v.source_id.clone()));
            let caps_ok = caps.iter().all(|c| access_supported(&v, c).is_ok())
                && (v.access == want.access || v.access == "both");
            if fits && same_source && v.params == canonical && caps_ok {
                return Ok(to_volume(d, &v));
            }
            return Err(Error::AlreadyExists(format!(
                "a volume named {:?} exists ({}) with different size, source, parameters or capabilities",
                req.name, v.id
            )));
        }
        // An attempt that failed half-way: clear it and start again.
        if let Some(lid) = LocalId::parse(Kind::Volume, &v.id) {
            d.pool.remove(&lid)?;
        }
        d.state.delete_volume(&v.id)?;
    }

    // --- the source and the size
    let (src_lid, src_size) = match &source {
        None => (None, 0),
        Some(("snapshot", id)) => {
            let (lid, s) = lookup_snapshot(d, "volume_content_source.snapshot.snapshot_id", id)?;
            (Some(lid), s.size)
        }
        Some((_, id)) => {
            let (lid, v) = lookup_volume(d, "volume_content_source.volume.volume_id", id)?;
            (Some(lid), v.size)
        }
    };
    let size = choose_size(range, want.min_size.max(src_size))?;
    if range.limit.is_some_and(|l| src_size > l) {
        return Err(Error::OutOfRange(format!(
            "capacity_range.limit_bytes is below the source's size {src_size}"
        )));
    }
    if params.preallocate {
        d.pool.ensure_free(size)?;
    } else {
        d.pool.ensure_space(size)?;
    }

    // --- create: record first, then the file, then mark ready
    let lid = LocalId::generate(Kind::Volume, &d.config.node_id)?;
    let rec = state::Volume {
        seq: 0,
        id: lid.to_string(),
        name: req.name.clone(),
        size,
        access: want.access.to_string(),
        fs_type: want.fs_type.clone(),
        params: canonical,
        source_kind: source
            .as_ref()
            .map(|(k, _)| k.to_string())
            .unwrap_or_default(),
        source_id: source.as_ref().map(|(_, i)| i.clone()).unwrap_or_default(),
        state: "creating".into(),
        fs_grow_pending: false,
    };
    d.state.insert_volume(&rec)?;
    let made = match (&source, &src_lid) {
        (Some(("volume", id)), Some(src)) => {
            let _frozen = freeze_if_mounted(d, id)?;
            d.pool.copy(src, &lid, size)
        }
        (Some(_), Some(src)) => d.pool.copy(src, &lid, size),
        _ => d.pool.create(&lid, size, params.preallocate),
    };
    let made = made.and_then(|_| d.state.set_volume_state(&rec.id, "ready"));
    if let Err(e) = made {
        let _ = d.pool.remove(&lid);
        let _ = d.state.delete_volume(&rec.id);
        return Err(e);
    }
    tracing::info!(volume = %rec.id, name = %rec.name, size, "volume created");
    let rec = state::Volume {
        state: "ready".into(),
        ..rec
    };
    Ok(to_volume(d, &rec))
}

fn delete_volume(d: &Driver, req: DeleteVolumeRequest) -> Result<()> {
    validate::id("volume_id", &req.volume_id)?;
    let Some(lid) = LocalId::parse(Kind::Volume, &req.volume_id) else {
        return Ok(());
    };
    if lid.node != d.config.node_id {
        return Err(Error::FailedPrecondition(format!(
            "volume {} lives on node {}; delete it there",
            req.volume_id, lid.node
        )));
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    let Some(_v) = d.state.volume(&req.volume_id)? else {
        return Ok(());
    };
    if let Some(s) = d.state.staging(&req.volume_id)? {
        return Err(Error::FailedPrecondition(format!(
            "volume {} is still staged at {}; call NodeUnstageVolume first",
            req.volume_id, s.path
        )));
    }
    d.state.set_volume_state(&req.volume_id, "deleting")?;
    for dev in loopdev::find_for(&d.pool.path(&lid)) {
        loopdev::detach(&dev, &d.pool.path(&lid))?;
    }
    d.pool.remove(&lid)?;
    d.state.delete_volume(&req.volume_id)?;
    tracing::info!(volume = %req.volume_id, "volume deleted");
    Ok(())
}

/// The node a volume id names, when it is another node than this one. Such
/// a call comes from a cluster-wide (leader-elected) sidecar; the answer
/// depends only on the id, so every instance gives the same one.
fn foreign_node(d: &Driver, volume_id: &str) -> Option<String> {
    LocalId::parse(Kind::Volume, volume_id)
        .map(|l| l.node)
        .filter(|n| *n != d.config.node_id)
}

fn controller_publish(
    d: &Driver,
    req: ControllerPublishVolumeRequest,
) -> Result<ControllerPublishVolumeResponse> {
    let nfs = crate::nfs::id::is_volume(&req.volume_id);
    if nfs {
        crate::nfs::id::VolumeId::parse("volume_id", &req.volume_id)?;
    } else {
        validate::id("volume_id", &req.volume_id)?;
    }
    if req.node_id.is_empty() {
        return Err(Error::missing("node_id"));
    }
    validate::id("node_id", &req.node_id)?;
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| Error::missing("volume_capability"))?;
    let backend = if nfs { Backend::Nfs } else { Backend::Local };
    let cap = validate::capability_for("volume_capability", cap, backend)?;
    if nfs {
        // An NFS volume has nothing to attach: every node mounts the export.
        return Ok(ControllerPublishVolumeResponse {
            publish_context: [("readonly".to_string(), req.readonly.to_string())].into(),
        });
    }
    if let Some(owner) = foreign_node(d, &req.volume_id) {
        // Attachment of a local volume is bookkeeping on its own node; the
        // only thing to check from here is that it is that node.
        if owner != req.node_id {
            return Err(Error::FailedPrecondition(format!(
                "volume {} lives on node {owner} and cannot be published to node {}",
                req.volume_id, req.node_id
            )));
        }
        return Ok(ControllerPublishVolumeResponse {
            publish_context: [("readonly".to_string(), req.readonly.to_string())].into(),
        });
    }
    let (_, v) = lookup_volume(d, "volume_id", &req.volume_id)?;
    if let Err(why) = access_supported(&v, &cap) {
        return Err(Error::invalid("volume_capability", why));
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    let cap_text = format!("{:?}", cap);
    let readonly = req.readonly;
    let ctx = || ControllerPublishVolumeResponse {
        publish_context: [("readonly".to_string(), readonly.to_string())].into(),
    };
    if let Some(p) = d
        .state
        .controller_publications(&req.volume_id)?
        .into_iter()
        .next()
    {
        if p.node_id == req.node_id {
            if p.readonly == readonly && p.capability == cap_text {
                return Ok(ctx());
            }
            return Err(Error::AlreadyExists(format!(
                "volume {} is already published to node {} with a different capability or readonly flag",
                req.volume_id, req.node_id
            )));
        }
        return Err(Error::FailedPrecondition(format!(
            "volume {} is published to node {}; a local volume can be published to one node",
            req.volume_id, p.node_id
        )));
    }
    if req.node_id != d.config.node_id {
        return Err(Error::NotFound(format!(
            "node {} does not exist here (volume {} lives on node {})",
            req.node_id, req.volume_id, d.config.node_id
        )));
    }
    let max = d.config.max_volumes_per_node;
    if max > 0 && d.state.count_node_publications(&req.node_id)? >= max {
        return Err(Error::ResourceExhausted(format!(
            "node {} already has {max} volumes published (--max-volumes-per-node)",
            req.node_id
        )));
    }
    d.state
        .insert_controller_publication(&state::ControllerPublication {
            volume_id: req.volume_id.clone(),
            node_id: req.node_id.clone(),
            readonly,
            capability: cap_text,
        })?;
    Ok(ctx())
}

fn controller_unpublish(d: &Driver, req: ControllerUnpublishVolumeRequest) -> Result<()> {
    if crate::nfs::id::is_volume(&req.volume_id) {
        return crate::nfs::id::VolumeId::parse("volume_id", &req.volume_id).map(|_| ());
    }
    validate::id("volume_id", &req.volume_id)?;
    if !req.node_id.is_empty() {
        validate::id("node_id", &req.node_id)?;
    }
    if LocalId::parse(Kind::Volume, &req.volume_id).is_none() {
        return Ok(());
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    let node = (!req.node_id.is_empty()).then_some(req.node_id.as_str());
    d.state.delete_controller_publication(&req.volume_id, node)
}

fn validate_caps(
    d: &Driver,
    req: ValidateVolumeCapabilitiesRequest,
) -> Result<ValidateVolumeCapabilitiesResponse> {
    validate::id("volume_id", &req.volume_id)?;
    if req.volume_capabilities.is_empty() {
        return Err(Error::missing("volume_capabilities"));
    }
    let (_, v) = lookup_volume(d, "volume_id", &req.volume_id)?;
    let mut problems = Vec::new();
    for (i, c) in req.volume_capabilities.iter().enumerate() {
        let field = format!("volume_capabilities[{i}]");
        match validate::capability(&field, c) {
            Err(Error::InvalidArgument { field, reason }) => {
                problems.push(format!("{field}: {reason}"))
            }
            Err(e) => return Err(e),
            Ok(cap) => {
                if let Err(why) = access_supported(&v, &cap) {
                    problems.push(format!("{field}: {why}"));
                }
            }
        }
    }
    if let Err(e) = validate::params("parameters", &req.parameters) {
        problems.push(e.to_string());
    }
    Ok(validation_answer(problems, req))
}

/// The ValidateVolumeCapabilities answer: confirmed as asked when nothing
/// is wrong, otherwise unconfirmed with every problem in the message.
pub(crate) fn validation_answer(
    problems: Vec<String>,
    req: ValidateVolumeCapabilitiesRequest,
) -> ValidateVolumeCapabilitiesResponse {
    if !problems.is_empty() {
        return ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: problems.join("; "),
        };
    }
    ValidateVolumeCapabilitiesResponse {
        confirmed: Some(validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: Default::default(),
        }),
        message: String::new(),
    }
}

fn list_volumes(d: &Driver, req: ListVolumesRequest) -> Result<ListVolumesResponse> {
    let max = max_entries(req.max_entries)?;
    let after = pagination_token("starting_token", &req.starting_token)?;
    let mut rows = d
        .state
        .list_volumes(after, if max == 0 { 0 } else { max + 1 })?;
    let more = max > 0 && rows.len() > max;
    rows.truncate(if max == 0 { rows.len() } else { max });
    let next_token = if more {
        rows.last()
            .map(|v| format!("t{}", v.seq))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let mut entries = Vec::with_capacity(rows.len());
    for v in rows {
        let published = d
            .state
            .controller_publications(&v.id)?
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        let cond = LocalId::parse(Kind::Volume, &v.id).map(|l| volume_condition(d, &l, &v));
        entries.push(list_volumes_response::Entry {
            volume: Some(to_volume(d, &v)),
            status: Some(list_volumes_response::VolumeStatus {
                published_node_ids: published,
                volume_condition: cond,
            }),
        });
    }
    Ok(ListVolumesResponse {
        entries,
        next_token,
    })
}

fn get_capacity(d: &Driver, req: GetCapacityRequest) -> Result<GetCapacityResponse> {
    let mut usable = true;
    for (i, c) in req.volume_capabilities.iter().enumerate() {
        match validate::capability(&format!("volume_capabilities[{i}]"), c) {
            Ok(_) => {}
            Err(Error::InvalidArgument { .. }) => usable = false,
            Err(e) => return Err(e),
        }
    }
    if validate::params("parameters", &req.parameters).is_err() {
        usable = false;
    }
    if let Some(t) = &req.accessible_topology {
        if !topology_matches(d, t) {
            usable = false;
        }
    }
    let avail = if usable {
        d.pool.available()? as i64
    } else {
        0
    };
    Ok(GetCapacityResponse {
        available_capacity: avail,
        maximum_volume_size: Some(avail),
        minimum_volume_size: None,
    })
}

fn create_snapshot(d: &Driver, req: CreateSnapshotRequest) -> Result<Snapshot> {
    validate::name("name", &req.name)?;
    validate::id("source_volume_id", &req.source_volume_id)?;
    validate::snapshot_params("parameters", &req.parameters)?;
    let _guard = d.locks.acquire(&[format!("snapshot-name/{}", req.name)])?;
    if let Some(s) = d.state.snapshot_by_name(&req.name)? {
        if s.state == "ready" {
            if s.source_volume_id == req.source_volume_id {
                return Ok(to_snapshot(&s));
            }
            return Err(Error::AlreadyExists(format!(
                "a snapshot named {:?} exists for volume {}, not {}",
                req.name, s.source_volume_id, req.source_volume_id
            )));
        }
        if let Some(lid) = LocalId::parse(Kind::Snapshot, &s.id) {
            d.pool.remove(&lid)?;
        }
        d.state.delete_snapshot(&s.id)?;
    }
    let (src_lid, v) = lookup_volume(d, "source_volume_id", &req.source_volume_id)?;
    let _vguard = d.locks.acquire(&[Driver::vol_key(&req.source_volume_id)])?;
    d.pool.ensure_space(v.size)?;
    let lid = LocalId::generate(Kind::Snapshot, &d.config.node_id)?;
    let rec = state::Snapshot {
        seq: 0,
        id: lid.to_string(),
        name: req.name.clone(),
        source_volume_id: v.id.clone(),
        size: v.size,
        created_ns: now_ns(),
        state: "creating".into(),
    };
    d.state.insert_snapshot(&rec)?;
    let made = {
        let _frozen = freeze_if_mounted(d, &v.id)?;
        d.pool.copy(&src_lid, &lid, v.size)
    }
    .and_then(|_| d.state.set_snapshot_state(&rec.id, "ready"));
    if let Err(e) = made {
        let _ = d.pool.remove(&lid);
        let _ = d.state.delete_snapshot(&rec.id);
        return Err(e);
    }
    tracing::info!(snapshot = %rec.id, volume = %v.id, "snapshot created");
    Ok(to_snapshot(&rec))
}

fn delete_snapshot(d: &Driver, req: DeleteSnapshotRequest) -> Result<()> {
    validate::id("snapshot_id", &req.snapshot_id)?;
    let Some(lid) = LocalId::parse(Kind::Snapshot, &req.snapshot_id) else {
        return Ok(());
    };
    let _guard = d
        .locks
        .acquire(&[format!("snapshot/{}", req.snapshot_id)])?;
    if d.state.snapshot(&req.snapshot_id)?.is_none() {
        return Ok(());
    }
    d.state.set_snapshot_state(&req.snapshot_id, "deleting")?;
    d.pool.remove(&lid)?;
    d.state.delete_snapshot(&req.snapshot_id)
}

fn list_snapshots(d: &Driver, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
    let max = max_entries(req.max_entries)?;
    let after = pagination_token("starting_token", &req.starting_token)?;
    let snap = (!req.snapshot_id.is_empty()).then_some(req.snapshot_id.as_str());
    let src = (!req.source_volume_id.is_empty()).then_some(req.source_volume_id.as_str());
    if let Some(s) = snap {
        validate::id("snapshot_id", s)?;
    }
    if let Some(s) = src {
        validate::id("source_volume_id", s)?;
    }
    let mut rows = d
        .state
        .list_snapshots(after, if max == 0 { 0 } else { max + 1 }, snap, src)?;
    let more = max > 0 && rows.len() > max;
    rows.truncate(if max == 0 { rows.len() } else { max });
    let next_token = if more {
        rows.last()
            .map(|s| format!("t{}", s.seq))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListSnapshotsResponse {
        entries: rows
            .iter()
            .map(|s| list_snapshots_response::Entry {
                snapshot: Some(to_snapshot(s)),
            })
            .collect(),
        next_token,
    })
}

fn expand_volume(
    d: &Driver,
    req: ControllerExpandVolumeRequest,
) -> Result<ControllerExpandVolumeResponse> {
    if crate::nfs::id::is_volume(&req.volume_id) {
        return crate::nfs::expand_volume(d, &req);
    }
    validate::id("volume_id", &req.volume_id)?;
    let range = req
        .capacity_range
        .as_ref()
        .ok_or_else(|| Error::missing("capacity_range"))?;
    let range = validate::range("capacity_range", Some(range))?;
    let required = range
        .required
        .or(range.limit)
        .ok_or_else(|| Error::missing("capacity_range.required_bytes"))?;
    let cap = match &req.volume_capability {
        Some(c) => Some(validate::capability("volume_capability", c)?),
        None => None,
    };
    if foreign_node(d, &req.volume_id).is_some() {
        // The owning node grows the image in NodeExpandVolume.
        if range.limit.is_some_and(|l| align_up(required) > l) {
            return Err(Error::OutOfRange(format!(
                "{required} bytes (4 KiB aligned) exceed capacity_range.limit_bytes"
            )));
        }
        return Ok(ControllerExpandVolumeResponse {
            capacity_bytes: align_up(required) as i64,
            node_expansion_required: true,
        });
    }
    let (lid, v) = lookup_volume(d, "volume_id", &req.volume_id)?;
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    let block = match &cap {
        Some(c) => c.access == Access::Block,
        None => v.access == "block",
    };
    let new = align_up(required);
    if let Some(l) = range.limit {
        if new > l && v.size > l {
            return Err(Error::OutOfRange(format!(
                "capacity_range.limit_bytes {l} is below the volume's size"
            )));
        }
    }
    if new <= v.size {
        return Ok(ControllerExpandVolumeResponse {
            capacity_bytes: v.size as i64,
            node_expansion_required: !block && v.fs_grow_pending,
        });
    }
    if range.limit.is_some_and(|l| new > l) {
        return Err(Error::OutOfRange(format!(
            "{new} bytes (4 KiB aligned) exceed capacity_range.limit_bytes"
        )));
    }
    d.pool.ensure_space(new - v.size)?;
    d.pool.grow(&lid, new)?;
    for dev in loopdev::find_for(&d.pool.path(&lid)) {
        loopdev::refresh_capacity(&dev)?;
    }
    d.state.set_volume_size(&v.id, new, v.access != "block")?;
    tracing::info!(volume = %v.id, from = v.size, to = new, "volume expanded");
    Ok(ControllerExpandVolumeResponse {
        capacity_bytes: new as i64,
        node_expansion_required: !block,
    })
}

fn get_volume(d: &Driver, req: ControllerGetVolumeRequest) -> Result<ControllerGetVolumeResponse> {
    validate::id("volume_id", &req.volume_id)?;
    let (lid, v) = lookup_volume(d, "volume_id", &req.volume_id)?;
    let published = d
        .state
        .controller_publications(&v.id)?
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    Ok(ControllerGetVolumeResponse {
        volume: Some(to_volume(d, &v)),
        status: Some(controller_get_volume_response::VolumeStatus {
            published_node_ids: published,
            volume_condition: Some(volume_condition(d, &lid, &v)),
        }),
    })
}

fn nfs_status(e: Error) -> Status {
    tracing::debug!(error = %e, "NFS request failed");
    Status::from(e)
}

macro_rules! run {
    ($self:ident, $req:ident, $f:ident) => {{
        let d = $self.driver.clone();
        let r = $req.into_inner();
        blocking(move || $f(&d, r)).await.map_err(|e| {
            tracing::debug!(rpc = stringify!($f), error = %e, "request failed");
            Status::from(e)
        })
    }};
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        if crate::nfs::params::selects_nfs(&req.get_ref().parameters) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::create_volume(d, r)
                .await
                .map(|v| Response::new(CreateVolumeResponse { volume: Some(v) }))
                .map_err(nfs_status);
        }
        let v = run!(self, req, create_volume)?;
        Ok(Response::new(CreateVolumeResponse { volume: Some(v) }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        if crate::nfs::id::is_volume(&req.get_ref().volume_id) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::delete_volume(d, &r.volume_id)
                .await
                .map(|_| Response::new(DeleteVolumeResponse {}))
                .map_err(nfs_status);
        }
        run!(self, req, delete_volume)?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Ok(Response::new(run!(self, req, controller_publish)?))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        run!(self, req, controller_unpublish)?;
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        if crate::nfs::id::is_volume(&req.get_ref().volume_id) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::validate_caps(d, r)
                .await
                .map(Response::new)
                .map_err(nfs_status);
        }
        Ok(Response::new(run!(self, req, validate_caps)?))
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        Ok(Response::new(run!(self, req, list_volumes)?))
    }

    async fn get_capacity(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        if crate::nfs::params::selects_nfs(&req.get_ref().parameters) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::get_capacity(d, r)
                .await
                .map(Response::new)
                .map_err(nfs_status);
        }
        Ok(Response::new(run!(self, req, get_capacity)?))
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
        if crate::nfs::id::is_volume(&req.get_ref().source_volume_id) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::create_snapshot(d, r)
                .await
                .map(|s| Response::new(CreateSnapshotResponse { snapshot: Some(s) }))
                .map_err(nfs_status);
        }
        let s = run!(self, req, create_snapshot)?;
        Ok(Response::new(CreateSnapshotResponse { snapshot: Some(s) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        if crate::nfs::id::is_snapshot(&req.get_ref().snapshot_id) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::delete_snapshot(d, &r.snapshot_id)
                .await
                .map(|_| Response::new(DeleteSnapshotResponse {}))
                .map_err(nfs_status);
        }
        run!(self, req, delete_snapshot)?;
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Ok(Response::new(run!(self, req, list_snapshots)?))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        Ok(Response::new(run!(self, req, expand_volume)?))
    }

    async fn controller_get_volume(
        &self,
        req: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        if crate::nfs::id::is_volume(&req.get_ref().volume_id) {
            let d = self.driver.clone();
            let r = req.into_inner();
            return crate::nfs::get_volume(d, &r.volume_id)
                .await
                .map(Response::new)
                .map_err(nfs_status);
        }
        Ok(Response::new(run!(self, req, get_volume)?))
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Error::Unimplemented("ControllerModifyVolume is not supported".into()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let r = |q, l| Range {
            required: q,
            limit: l,
        };
        assert_eq!(
            choose_size(r(None, None), 4096).unwrap(),
            DEFAULT_VOLUME_SIZE
        );
        assert_eq!(
            choose_size(r(Some(16 << 20), None), 1 << 20).unwrap(),
            16 << 20
        );
        assert_eq!(choose_size(r(Some(1000), Some(5000)), 1).unwrap(), 4096);
        assert_eq!(
            choose_size(r(Some(16 << 20), Some(16 << 20)), 1 << 20).unwrap(),
            16 << 20
        );
        assert!(matches!(
            choose_size(r(Some(16 << 20), Some(32 << 20)), 300 << 20),
            Err(Error::OutOfRange(_))
        ));
        assert_eq!(
            choose_size(r(Some(16 << 20), Some(400 << 20)), 300 << 20).unwrap(),
            300 << 20
        );
    }

    #[test]
    fn tokens() {
        assert_eq!(pagination_token("t", "").unwrap(), 0);
        assert_eq!(pagination_token("t", "t12").unwrap(), 12);
        assert!(matches!(
            pagination_token("t", "invalid-token"),
            Err(Error::Aborted(_))
        ));
        assert!(matches!(
            pagination_token("t", "12"),
            Err(Error::Aborted(_))
        ));
    }
}
