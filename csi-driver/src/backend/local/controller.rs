//! Controller side of local volumes: image files in the pool, attachment
//! bookkeeping in the records. Blocking; [`super::LocalBackend`] runs these on the
//! blocking pool. The service checked the generic arguments first (see each
//! [`crate::backend::Backend`] method).

use proto::v1::volume_content_source::Type as SourceType;
use proto::v1::*;

use super::base::LocalBackend;
use super::loopdev;
use super::pool::{Kind, LocalId};
use super::rules::{self, access_supported};
use crate::config::{FsType, TOPOLOGY_KEY};
use crate::csi::{
    align_up, choose_size, condition, content_source, existing_snapshot, node_topology,
    prior_publication, publish_context, record_publication, to_snapshot, topology_matches,
    PriorPublication, ALIGN,
};
use crate::driver::{now_ns, Driver};
use crate::error::{Error, Result};
use crate::mount;
use crate::state;
use crate::validate::{self, Access, Capability, Range};

/// The CSI volume of a record: accessible from this node only.
pub(super) fn to_volume(d: &LocalBackend, v: &state::Volume) -> Volume {
    Volume {
        capacity_bytes: v.size as i64,
        volume_id: v.id.clone(),
        volume_context: Default::default(),
        content_source: content_source(v),
        accessible_topology: vec![node_topology(d)],
    }
}

/// Finds a ready volume of this node (the id was checked); NOT_FOUND
/// otherwise.
pub(super) fn lookup_volume(d: &LocalBackend, id: &str) -> Result<(LocalId, state::Volume)> {
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

fn lookup_snapshot(d: &LocalBackend, id: &str) -> Result<(LocalId, state::Snapshot)> {
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

fn wanted(d: &LocalBackend, field: &str, caps: &[Capability]) -> Result<Wanted> {
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

fn volume_condition(d: &LocalBackend, lid: &LocalId, v: &state::Volume) -> VolumeCondition {
    match d.pool.size(lid) {
        None => condition(true, "the image file is missing from the pool"),
        Some(s) if s < v.size => condition(
            true,
            format!("the image file is {s} bytes, the volume {} bytes", v.size),
        ),
        Some(_) => condition(false, "volume is healthy"),
    }
}

/// A record's ListVolumes entry.
pub(super) fn list_entry(d: &LocalBackend, v: &state::Volume) -> (Volume, Option<VolumeCondition>) {
    let cond = LocalId::parse(Kind::Volume, &v.id).map(|l| volume_condition(d, &l, v));
    (to_volume(d, v), cond)
}

/// Freezes the volume's filesystem while a copy of its image is taken.
fn freeze_if_mounted(d: &LocalBackend, volume_id: &str) -> Result<Option<mount::Frozen>> {
    match d.state.staging(volume_id)? {
        Some(s) if s.access == "mount" && s.state == "staged" => {
            Ok(Some(mount::freeze(std::path::Path::new(&s.path))))
        }
        _ => Ok(None),
    }
}

/// CreateVolume: name, capabilities, range and parameters were checked.
pub(super) fn create_volume(
    d: &LocalBackend,
    req: CreateVolumeRequest,
    caps: Vec<Capability>,
    range: Range,
) -> Result<Volume> {
    // --- validate everything first
    let params = rules::params("parameters", &req.parameters)?;
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
            let (lid, s) = lookup_snapshot(d, id)?;
            (Some(lid), s.size)
        }
        Some((_, id)) => {
            let (lid, v) = lookup_volume(d, id)?;
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
        d.pool.ensure_free("capacity_range.required_bytes", size)?;
    } else {
        d.pool.ensure_space("capacity_range.required_bytes", size)?;
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

/// DeleteVolume; keeps the volume's snapshots.
pub(super) fn delete_volume(d: &LocalBackend, volume_id: &str) -> Result<()> {
    let Some(lid) = LocalId::parse(Kind::Volume, volume_id) else {
        return Ok(());
    };
    if lid.node != d.config.node_id {
        return Err(Error::FailedPrecondition(format!(
            "volume {} lives on node {}; delete it there",
            volume_id, lid.node
        )));
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(volume_id)])?;
    let Some(_v) = d.state.volume(volume_id)? else {
        return Ok(());
    };
    if let Some(s) = d.state.staging(volume_id)? {
        return Err(Error::FailedPrecondition(format!(
            "volume {} is still staged at {}; call NodeUnstageVolume first",
            volume_id, s.path
        )));
    }
    d.state.set_volume_state(volume_id, "deleting")?;
    for dev in loopdev::find_for(&d.pool.path(&lid)) {
        loopdev::detach(&dev, &d.pool.path(&lid))?;
    }
    d.pool.remove(&lid)?;
    d.state.delete_volume(volume_id)?;
    tracing::info!(volume = %volume_id, "volume deleted");
    Ok(())
}

/// The node a volume id names, when it is another node than this one. Such
/// a call comes from a cluster-wide (leader-elected) sidecar; the answer
/// depends only on the id, so every instance gives the same one.
fn foreign_node(d: &LocalBackend, volume_id: &str) -> Option<String> {
    LocalId::parse(Kind::Volume, volume_id)
        .map(|l| l.node)
        .filter(|n| *n != d.config.node_id)
}

/// ControllerPublishVolume: attachment bookkeeping and its checks (node,
/// readonly, attach limit); volume id, node id and capability were checked.
pub(super) fn controller_publish(
    d: &LocalBackend,
    req: ControllerPublishVolumeRequest,
    cap: Capability,
) -> Result<ControllerPublishVolumeResponse> {
    if let Some(owner) = foreign_node(d, &req.volume_id) {
        // Attachment of a local volume is bookkeeping on its own node; the
        // only thing to check from here is that it is that node.
        if owner != req.node_id {
            return Err(Error::FailedPrecondition(format!(
                "volume {} lives on node {owner} and cannot be published to node {}",
                req.volume_id, req.node_id
            )));
        }
        return Ok(publish_context(req.readonly));
    }
    let (_, v) = lookup_volume(d, &req.volume_id)?;
    if let Err(why) = access_supported(&v, &cap) {
        return Err(Error::invalid("volume_capability", why));
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    let ctx = || publish_context(req.readonly);
    match prior_publication(d, &req, &cap)? {
        PriorPublication::Same => return Ok(ctx()),
        PriorPublication::Elsewhere(node) => {
            return Err(Error::FailedPrecondition(format!(
            "volume {} is published to node {node}; a local volume can be published to one node",
            req.volume_id
        )))
        }
        PriorPublication::None => {}
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
    record_publication(d, &req, &cap)?;
    Ok(ctx())
}

/// ControllerUnpublishVolume: forgets the attachment (to one node, or all).
pub(super) fn controller_unpublish(
    d: &LocalBackend,
    req: ControllerUnpublishVolumeRequest,
) -> Result<()> {
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

/// ValidateVolumeCapabilities: what is wrong with the capabilities and the
/// parameters for this volume.
pub(super) fn validate_caps(
    d: &LocalBackend,
    req: &ValidateVolumeCapabilitiesRequest,
) -> Result<Vec<String>> {
    let (_, v) = lookup_volume(d, &req.volume_id)?;
    let mut problems =
        validate::capability_problems(&req.volume_capabilities, d, |c| access_supported(&v, c))?;
    if let Err(e) = rules::params("parameters", &req.parameters) {
        problems.push(e.to_string());
    }
    Ok(problems)
}

/// GetCapacity: the pool filesystem's free bytes, 0 for another node's
/// topology segment. Parameters and capabilities CreateVolume would refuse
/// do not make it 0: external-provisioner (node deployment, Immediate
/// binding) and the scheduler (WaitForFirstConsumer) read 0 as "full" and
/// never call CreateVolume, so the user would see a claim that waits
/// forever, or "not enough free storage", instead of CreateVolume's error
/// naming the bad field.
pub(super) fn get_capacity(
    d: &LocalBackend,
    req: GetCapacityRequest,
) -> Result<GetCapacityResponse> {
    let usable = req
        .accessible_topology
        .as_ref()
        .is_none_or(|t| topology_matches(d, t));
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

/// CreateSnapshot: a copy of the image, taken with the filesystem frozen
/// when it is mounted; the name was checked.
pub(super) fn create_snapshot(d: &LocalBackend, req: CreateSnapshotRequest) -> Result<Snapshot> {
    // The source id is checked before the parameters here, after them in
    // the NFS backend.
    validate::id("source_volume_id", &req.source_volume_id)?;
    validate::snapshot_params("parameters", &req.parameters)?;
    let _guard = d.locks.acquire(&[format!("snapshot-name/{}", req.name)])?;
    let existing = existing_snapshot(
        d,
        &req.name,
        &req.source_volume_id,
        |s| match LocalId::parse(Kind::Snapshot, &s.id) {
            Some(lid) => d.pool.remove(&lid),
            None => Ok(()),
        },
    )?;
    if let Some(s) = existing {
        return Ok(s);
    }
    let (src_lid, v) = lookup_volume(d, &req.source_volume_id)?;
    let _vguard = d.locks.acquire(&[Driver::vol_key(&req.source_volume_id)])?;
    d.pool.ensure_space("source_volume_id", v.size)?;
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

/// DeleteSnapshot: removes the snapshot's image.
pub(super) fn delete_snapshot(d: &LocalBackend, snapshot_id: &str) -> Result<()> {
    let Some(lid) = LocalId::parse(Kind::Snapshot, snapshot_id) else {
        return Ok(());
    };
    let _guard = d.locks.acquire(&[format!("snapshot/{}", snapshot_id)])?;
    if d.state.snapshot(snapshot_id)?.is_none() {
        return Ok(());
    }
    d.state.set_snapshot_state(snapshot_id, "deleting")?;
    d.pool.remove(&lid)?;
    d.state.delete_snapshot(snapshot_id)
}

/// ControllerExpandVolume: grows the image and its loop devices; a volume
/// of another node is answered from its id (its node grows it in
/// NodeExpandVolume). Volume id and range were checked.
pub(super) fn expand_volume(
    d: &LocalBackend,
    req: ControllerExpandVolumeRequest,
    range: Range,
) -> Result<ControllerExpandVolumeResponse> {
    if req.capacity_range.is_none() {
        return Err(Error::missing("capacity_range"));
    }
    let required = range
        .required
        .or(range.limit)
        .ok_or_else(|| Error::missing("capacity_range.required_bytes"))?;
    let cap = match &req.volume_capability {
        // Checked here only: the NFS backend ignores it (for now).
        Some(c) => Some(validate::capability("volume_capability", c, d)?),
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
    let (lid, v) = lookup_volume(d, &req.volume_id)?;
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
    d.pool
        .ensure_space("capacity_range.required_bytes", new - v.size)?;
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

/// ControllerGetVolume: the record, its attachments and the image's state.
pub(super) fn get_volume(d: &LocalBackend, volume_id: &str) -> Result<ControllerGetVolumeResponse> {
    let (lid, v) = lookup_volume(d, volume_id)?;
    let published = crate::csi::published_nodes(d, &v.id)?;
    Ok(ControllerGetVolumeResponse {
        volume: Some(to_volume(d, &v)),
        status: Some(controller_get_volume_response::VolumeStatus {
            published_node_ids: published,
            volume_condition: Some(volume_condition(d, &lid, &v)),
        }),
    })
}
