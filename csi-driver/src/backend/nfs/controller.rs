//! Controller side of NFS volumes: NFSv3 from user space ([`super::client`]),
//! never a mount, so a dead server costs a bounded wait and a clear code.
//! The service checked the generic arguments first (see each
//! [`crate::backend::Backend`] method).

use std::collections::HashMap;

use proto::v1::volume_content_source::Type as SourceType;
use proto::v1::*;

use super::base::NfsBackend;
use super::client::Nfs;
use super::id::{self, OnDelete, SnapshotId, VolumeId, SNAPSHOT_DIR};
use super::{archive, params};
use crate::config::PublishNodes;
use crate::csi::{
    choose_size, condition, content_source, existing_snapshot, prior_publication, publish_context,
    published_nodes, record_publication, to_snapshot, PriorPublication,
};
use crate::driver::{now_ns, Driver};
use crate::error::{Error, Result};
use crate::state;
use crate::validate::{self, Capability, Range};

/// Mode of a new volume directory unless `mountPermissions` says otherwise:
/// pods of any user id can write, as on an NFS export they usually must.
const DEFAULT_DIR_MODE: u32 = 0o777;

async fn session(d: &Driver, server: &str, share: &str) -> Result<Nfs> {
    Nfs::connect(server, share, d.config.nfs_timeout).await
}

/// Parent path and last name of a subdirectory.
fn split(subdir: &str) -> (&str, &str) {
    match subdir.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", subdir),
    }
}

/// What a node needs besides the id, handed over in the volume context.
fn volume_context(vid: &VolumeId, mount_options: &[String]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = [
        ("server".to_string(), vid.server.clone()),
        ("share".to_string(), vid.share.clone()),
        ("subDir".to_string(), vid.subdir.clone()),
    ]
    .into();
    if !mount_options.is_empty() {
        m.insert("mountOptions".into(), mount_options.join(","));
    }
    m
}

/// The mount options stored with a volume record (in its canonical
/// parameters).
fn recorded_mount_options(v: &state::Volume) -> Vec<String> {
    let pairs: Vec<(String, String)> = serde_json::from_str(&v.params).unwrap_or_default();
    pairs
        .into_iter()
        .find(|(k, _)| k == "mountOptions")
        .and_then(|(_, o)| params::parse_mount_options("mountOptions", &o).ok())
        .unwrap_or_default()
}

/// The CSI volume of a record of ours (used by ListVolumes and
/// ControllerGetVolume): no topology, an NFS volume is reachable anywhere.
pub(super) fn to_volume(v: &state::Volume) -> Option<Volume> {
    let vid = VolumeId::parse("volume_id", &v.id).ok()?;
    Some(Volume {
        capacity_bytes: v.size as i64,
        volume_id: v.id.clone(),
        volume_context: volume_context(&vid, &recorded_mount_options(v)),
        content_source: content_source(v),
        accessible_topology: vec![],
    })
}

enum Source {
    Snapshot(SnapshotId),
    Volume(VolumeId),
}

fn same_export(field: &str, p: &params::NfsParams, server: &str, share: &str) -> Result<()> {
    if p.server != server || p.share != share {
        return Err(Error::invalid(
            field,
            format!(
                "the source is on {server}:{share}; a new volume from it must be on the same export (parameters say {}:{})",
                p.server, p.share
            ),
        ));
    }
    Ok(())
}

/// The answer for a content source id that is not an NFS one: NOT_FOUND
/// when it names nothing we know, INVALID_ARGUMENT when it names a volume
/// or snapshot of another backend (which an NFS volume cannot come from).
fn foreign_source(field: &str, what: &str, known: bool, id: &str) -> Error {
    if known {
        Error::invalid(
            field,
            format!("is not an NFS {what}; an NFS volume can be made only from one"),
        )
    } else {
        Error::NotFound(format!("{field}: {what} {id} does not exist"))
    }
}

fn parse_source(
    d: &Driver,
    req: &CreateVolumeRequest,
    p: &params::NfsParams,
) -> Result<Option<Source>> {
    let Some(src) = &req.volume_content_source else {
        return Ok(None);
    };
    match &src.r#type {
        None => Err(Error::invalid(
            "volume_content_source",
            "one of snapshot or volume is required",
        )),
        Some(SourceType::Snapshot(s)) => {
            let field = "volume_content_source.snapshot.snapshot_id";
            if !id::is_snapshot(&s.snapshot_id) {
                validate::id(field, &s.snapshot_id)?;
                let known = d.state.snapshot(&s.snapshot_id)?.is_some();
                return Err(foreign_source(field, "snapshot", known, &s.snapshot_id));
            }
            let sid = SnapshotId::parse(field, &s.snapshot_id)?;
            same_export(field, p, &sid.server, &sid.share)?;
            Ok(Some(Source::Snapshot(sid)))
        }
        Some(SourceType::Volume(v)) => {
            let field = "volume_content_source.volume.volume_id";
            if !id::is_volume(&v.volume_id) {
                validate::id(field, &v.volume_id)?;
                let known = d.state.volume(&v.volume_id)?.is_some();
                return Err(foreign_source(field, "volume", known, &v.volume_id));
            }
            let vid = VolumeId::parse(field, &v.volume_id)?;
            same_export(field, p, &vid.server, &vid.share)?;
            Ok(Some(Source::Volume(vid)))
        }
    }
}

/// CreateVolume for `backend: nfs`; name, capabilities, range and
/// parameters were checked.
pub(super) async fn create_volume(
    d: &Driver,
    req: CreateVolumeRequest,
    _caps: Vec<Capability>,
    range: Range,
) -> Result<Volume> {
    let p = params::parse("parameters", &req.parameters, &req.name)?;
    let source = parse_source(d, &req, &p)?;
    let size = choose_size(range, 0)?;
    let vid = VolumeId {
        server: p.server.clone(),
        share: p.share.clone(),
        subdir: p.subdir.clone(),
        on_delete: p.on_delete,
    };
    let vol_id = vid.encode();
    if vol_id.len() > validate::MAX_ID_LEN {
        return Err(Error::invalid(
            "parameters[subDir]",
            format!(
                "the volume id for {}:{}/{} would be {} bytes, over the {} allowed; use a shorter subDir or share",
                p.server,
                p.share,
                p.subdir,
                vol_id.len(),
                validate::MAX_ID_LEN
            ),
        ));
    }
    let canonical = validate::canonical_params(&req.parameters);
    let (source_kind, source_id) = match &req
        .volume_content_source
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
    {
        Some(SourceType::Snapshot(s)) => ("snapshot", s.snapshot_id.clone()),
        Some(SourceType::Volume(v)) => ("volume", v.volume_id.clone()),
        None => ("", String::new()),
    };
    let response = || Volume {
        capacity_bytes: size as i64,
        volume_id: vol_id.clone(),
        volume_context: volume_context(&vid, &p.mount_options),
        content_source: req.volume_content_source.clone(),
        accessible_topology: vec![],
    };

    let _guard = d
        .locks
        .acquire(&[format!("name/{}", req.name), Driver::vol_key(&vol_id)])?;
    let mut wipe_first = false;
    if let Some(v) = d.state.volume_by_name(&req.name)? {
        if v.state == "ready" {
            let fits = range.required.is_none_or(|r| v.size >= r)
                && range.limit.is_none_or(|l| v.size <= l);
            if v.id == vol_id && fits && v.params == canonical && v.source_id == source_id {
                return Ok(to_volume(&v).unwrap_or_else(response));
            }
            return Err(Error::AlreadyExists(format!(
                "a volume named {:?} exists ({}) with different size, source or parameters",
                req.name, v.id
            )));
        }
        // An attempt that stopped half-way; a copy it began is redone.
        wipe_first = !v.source_kind.is_empty();
        d.state.delete_volume(&v.id)?;
    }
    if let Some(other) = d.state.volume(&vol_id)? {
        return Err(Error::AlreadyExists(format!(
            "{}:{}/{} already belongs to the volume named {:?}; give this one another subDir",
            p.server, p.share, p.subdir, other.name
        )));
    }
    d.state.insert_volume(&state::Volume {
        seq: 0,
        id: vol_id.clone(),
        name: req.name.clone(),
        size,
        access: "mount".into(),
        fs_type: "nfs".into(),
        params: canonical.clone(),
        source_kind: source_kind.to_string(),
        source_id: source_id.clone(),
        state: "creating".into(),
        fs_grow_pending: false,
    })?;

    let made = async {
        let mut nfs = session(d, &p.server, &p.share).await?;
        let (parent, last) = split(&p.subdir);
        if wipe_first {
            if let Some((pfh, _)) = nfs.lookup_path(parent).await? {
                nfs.remove_tree(&pfh, last.as_bytes()).await?;
            }
        }
        // Look the source up before making anything, so a missing source is
        // NOT_FOUND with nothing left behind.
        let src = match &source {
            None => None,
            Some(Source::Volume(s)) => {
                Some(nfs.lookup_path(&s.subdir).await?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "source volume {}:{}/{} does not exist",
                        s.server, s.share, s.subdir
                    ))
                })?)
            }
            Some(Source::Snapshot(s)) => Some(
                nfs.lookup_path(&format!("{SNAPSHOT_DIR}/{}", s.file))
                    .await?
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "snapshot archive {SNAPSHOT_DIR}/{} does not exist",
                            s.file
                        ))
                    })?,
            ),
        };
        let mode = p.mount_permissions.unwrap_or(DEFAULT_DIR_MODE);
        let dir = nfs.mkdir_p(&p.subdir, mode).await?;
        // MKDIR's mode passes through the server's umask on some servers;
        // set it explicitly so the volume gets exactly what was asked.
        nfs.setattr(&dir, Some(mode), None, None).await?;
        match (&source, src) {
            (Some(Source::Volume(_)), Some((sfh, _))) => {
                nfs.copy_tree(&sfh, &dir).await?;
            }
            (Some(Source::Snapshot(_)), Some((afh, _))) => {
                archive::restore(&mut nfs, &afh, &dir).await?;
            }
            _ => {}
        }
        nfs.close().await;
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = made {
        // Keep a record of a copy that may have half-happened so the retry
        // starts clean; forget a plain create.
        if source.is_none() {
            let _ = d.state.delete_volume(&vol_id);
        }
        return Err(e);
    }
    d.state.set_volume_state(&vol_id, "ready")?;
    tracing::info!(volume = %vol_id, name = %req.name, "NFS volume created");
    Ok(response())
}

/// DeleteVolume of an NFS volume: applies the id's delete policy.
pub(super) async fn delete_volume(d: &Driver, volume_id: &str) -> Result<()> {
    let vid = VolumeId::parse("volume_id", volume_id)?;
    let _guard = d.locks.acquire(&[Driver::vol_key(volume_id)])?;
    if vid.on_delete != OnDelete::Retain {
        let mut nfs = session(d, &vid.server, &vid.share).await?;
        let (parent, last) = split(&vid.subdir);
        if let Some((pfh, _)) = nfs.lookup_path(parent).await? {
            match vid.on_delete {
                OnDelete::Delete => nfs.remove_tree(&pfh, last.as_bytes()).await?,
                OnDelete::Archive => {
                    if nfs.lookup(&pfh, last.as_bytes()).await?.is_some() {
                        let mut to = format!("archived-{last}");
                        if nfs.lookup(&pfh, to.as_bytes()).await?.is_some() {
                            to = format!("archived-{last}-{}", now_ns() / 1_000_000_000);
                        }
                        nfs.rename(&pfh, last.as_bytes(), &pfh, to.as_bytes())
                            .await?;
                        tracing::info!(volume = %volume_id, archived_as = %to, "NFS volume archived");
                    }
                }
                OnDelete::Retain => {}
            }
        }
        nfs.close().await;
    }
    d.state.delete_volume(volume_id)?;
    tracing::info!(volume = %volume_id, policy = vid.on_delete.as_str(), "NFS volume deleted");
    Ok(())
}

/// The archive file name of a snapshot: a digest of its CSI name, so ids
/// stay short whatever the name.
fn archive_name(name: &str) -> String {
    format!("s-{}.tar", berth_common::digest(&[name.as_bytes()]))
}

/// CreateSnapshot of an NFS volume: an archive on the same export; the
/// name was checked.
pub(super) async fn create_snapshot(d: &Driver, req: CreateSnapshotRequest) -> Result<Snapshot> {
    validate::snapshot_params("parameters", &req.parameters)?;
    let vid = VolumeId::parse("source_volume_id", &req.source_volume_id)?;
    let file = archive_name(&req.name);
    let sid = SnapshotId {
        server: vid.server.clone(),
        share: vid.share.clone(),
        source_subdir: vid.subdir.clone(),
        file: file.clone(),
    };
    let snap_id = sid.encode();
    if snap_id.len() > validate::MAX_ID_LEN {
        return Err(Error::invalid(
            "source_volume_id",
            "the snapshot id would exceed 128 bytes (the volume's server, share and subDir are too long)",
        ));
    }
    let _guard = d.locks.acquire(&[
        format!("snapshot-name/{}", req.name),
        Driver::vol_key(&req.source_volume_id),
    ])?;
    // A half-made archive keeps its `.partial` name; the retry overwrites it.
    if let Some(s) = existing_snapshot(d, &req.name, &req.source_volume_id, |_| Ok(()))? {
        return Ok(s);
    }
    let mut rec = state::Snapshot {
        seq: 0,
        id: snap_id.clone(),
        name: req.name.clone(),
        source_volume_id: req.source_volume_id.clone(),
        size: 0,
        created_ns: now_ns(),
        state: "creating".into(),
    };
    d.state.insert_snapshot(&rec)?;
    let made = async {
        let mut nfs = session(d, &vid.server, &vid.share).await?;
        let (src, _) = nfs.lookup_path(&vid.subdir).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "source_volume_id: volume {} does not exist ({}:{}/{} is missing)",
                req.source_volume_id, vid.server, vid.share, vid.subdir
            ))
        })?;
        let dir = nfs.mkdir_p(SNAPSHOT_DIR, 0o700).await?;
        // Write under a temporary name and rename, so an archive with the
        // final name is always complete.
        let partial = format!("{file}.partial");
        let fh = nfs.create(&dir, partial.as_bytes(), 0o600).await?;
        let size = archive::write(&mut nfs, &src, &fh).await?;
        nfs.rename(&dir, partial.as_bytes(), &dir, file.as_bytes())
            .await?;
        nfs.close().await;
        Ok::<_, Error>(size)
    }
    .await;
    match made {
        Ok(size) => {
            rec.size = size;
            rec.state = "ready".into();
            d.state.finish_snapshot(&snap_id, size)?;
            tracing::info!(snapshot = %snap_id, volume = %req.source_volume_id, size, "NFS snapshot created");
            Ok(to_snapshot(&rec))
        }
        Err(e) => {
            let _ = d.state.delete_snapshot(&snap_id);
            Err(e)
        }
    }
}

/// DeleteSnapshot of an NFS snapshot: removes its archive, and the
/// snapshot directory with the last one, so the export is left as found.
pub(super) async fn delete_snapshot(d: &Driver, snapshot_id: &str) -> Result<()> {
    let sid = SnapshotId::parse("snapshot_id", snapshot_id)?;
    let _guard = d.locks.acquire(&[format!("snapshot/{snapshot_id}")])?;
    let mut nfs = session(d, &sid.server, &sid.share).await?;
    if let Some((dir, _)) = nfs.lookup_path(SNAPSHOT_DIR).await? {
        nfs.remove(&dir, sid.file.as_bytes()).await?;
        nfs.remove(&dir, format!("{}.partial", sid.file).as_bytes())
            .await?;
        if let Some((root, _)) = nfs.lookup_path("").await? {
            nfs.rmdir_if_empty(&root, SNAPSHOT_DIR.as_bytes()).await?;
        }
    }
    nfs.close().await;
    d.state.delete_snapshot(snapshot_id)?;
    Ok(())
}

/// GetCapacity for `backend: nfs` parameters: the export's free space as
/// the server reports it. Capabilities CreateVolume would refuse do not
/// make it 0, for the reason the local backend gives: a 0 reads as "full"
/// to external-provisioner and the scheduler, which then never call
/// CreateVolume, whose error names the bad field.
pub(super) async fn get_capacity(
    d: &Driver,
    req: GetCapacityRequest,
) -> Result<GetCapacityResponse> {
    let (server, share) = params::parse_export("parameters", &req.parameters)?;
    let mut nfs = session(d, &server, &share).await?;
    let available = nfs.available().await?;
    nfs.close().await;
    Ok(GetCapacityResponse {
        available_capacity: available as i64,
        maximum_volume_size: Some(available as i64),
        minimum_volume_size: None,
    })
}

/// Whether the volume's directory exists on the server.
async fn exists(d: &Driver, vid: &VolumeId) -> Result<bool> {
    let mut nfs = session(d, &vid.server, &vid.share).await?;
    let found = nfs.lookup_path(&vid.subdir).await?.is_some();
    nfs.close().await;
    Ok(found)
}

/// ValidateVolumeCapabilities of an NFS volume: the problems found.
pub(super) async fn validate_caps(
    b: &NfsBackend,
    req: &ValidateVolumeCapabilitiesRequest,
) -> Result<Vec<String>> {
    let vid = VolumeId::parse("volume_id", &req.volume_id)?;
    if !exists(b, &vid).await? {
        return Err(Error::NotFound(format!(
            "volume {} does not exist ({}:{}/{} is missing)",
            req.volume_id, vid.server, vid.share, vid.subdir
        )));
    }
    let mut problems = validate::capability_problems(&req.volume_capabilities, b, |_| Ok(()))?;
    if !req.parameters.is_empty() {
        if let Err(e) = params::parse_export("parameters", &req.parameters) {
            problems.push(e.to_string());
        }
    }
    Ok(problems)
}

/// ControllerGetVolume of an NFS volume (condition from the server).
pub(super) async fn get_volume(d: &Driver, volume_id: &str) -> Result<ControllerGetVolumeResponse> {
    let vid = VolumeId::parse("volume_id", volume_id)?;
    let rec = d.state.volume(volume_id)?.filter(|v| v.state == "ready");
    let found = exists(d, &vid).await?;
    let volume = match &rec {
        Some(v) => to_volume(v),
        None if found => Some(Volume {
            capacity_bytes: 0,
            volume_id: volume_id.to_string(),
            volume_context: volume_context(&vid, &[]),
            content_source: None,
            accessible_topology: vec![],
        }),
        None => {
            return Err(Error::NotFound(format!(
                "volume {volume_id} does not exist"
            )));
        }
    };
    let condition = if found {
        condition(false, "the directory exists on the server")
    } else {
        condition(
            true,
            format!(
                "{}:{}/{} is missing on the server",
                vid.server, vid.share, vid.subdir
            ),
        )
    };
    Ok(ControllerGetVolumeResponse {
        volume,
        status: Some(controller_get_volume_response::VolumeStatus {
            published_node_ids: published_nodes(d, volume_id)?,
            volume_condition: Some(condition),
        }),
    })
}

/// ControllerPublishVolume of an NFS volume: nothing to attach (every node
/// mounts the export), but the node must be one `--publish-nodes` accepts
/// and the publication is recorded, so a second one to the same node with
/// another readonly flag or capability is ALREADY_EXISTS.
pub(super) fn publish(
    d: &Driver,
    req: ControllerPublishVolumeRequest,
    cap: Capability,
) -> Result<ControllerPublishVolumeResponse> {
    if d.config.publish_nodes == PublishNodes::OwnNode && req.node_id != d.config.node_id {
        return Err(Error::NotFound(format!(
            "node {} is not known here: with --publish-nodes=self only this driver's node {} is",
            req.node_id, d.config.node_id
        )));
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    if prior_publication(d, &req, &cap)? != PriorPublication::Same {
        record_publication(d, &req, &cap)?;
    }
    Ok(publish_context(req.readonly))
}

/// ControllerUnpublishVolume of an NFS volume: forgets the publication (to
/// one node, or to all when no node is given).
pub(super) fn unpublish(d: &Driver, req: ControllerUnpublishVolumeRequest) -> Result<()> {
    if !req.node_id.is_empty() {
        validate::id("node_id", &req.node_id)?;
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&req.volume_id)])?;
    let node = (!req.node_id.is_empty()).then_some(req.node_id.as_str());
    d.state.delete_controller_publication(&req.volume_id, node)
}

/// ControllerExpandVolume of an NFS volume: the size is a record only (an
/// export has no per-directory size unless the server sets quotas).
/// Volume id and range were checked; the capability is not looked at.
pub(super) fn expand_volume(
    d: &Driver,
    req: &ControllerExpandVolumeRequest,
    range: Range,
) -> Result<ControllerExpandVolumeResponse> {
    let size = range
        .required
        .or(range.limit)
        .ok_or_else(|| Error::missing("capacity_range"))?;
    if let Some(v) = d.state.volume(&req.volume_id)? {
        if size > v.size {
            d.state.set_volume_size(&req.volume_id, size, false)?;
        }
    }
    Ok(ControllerExpandVolumeResponse {
        capacity_bytes: size as i64,
        node_expansion_required: false,
    })
}
