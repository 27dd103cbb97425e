//! Node side of local volumes: attach (loop device), format once, mount at
//! the staging path, bind into targets, report usage, grow. Blocking.

use std::path::{Component, Path, PathBuf};

use proto::v1::*;

use super::base::LocalBackend;
use super::controller::lookup_volume;
use super::loopdev;
use super::pool::{Kind, LocalId};
use super::rules::access_supported;
use crate::config::FsType;
use crate::csi::{condition, usage_entries, ALIGN};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::mount;
use crate::state;
use crate::validate::{self, Access, Capability, Range};

fn access_name(a: &Access) -> &'static str {
    match a {
        Access::Block => "block",
        Access::Mount { .. } => "mount",
    }
}

fn stored_flags(a: &Access, read_only: bool) -> Vec<String> {
    let mut f = match a {
        Access::Mount { flags, .. } => flags.clone(),
        Access::Block => Vec::new(),
    };
    if read_only && !f.iter().any(|x| x == "ro") {
        f.push("ro".into());
    }
    f
}

/// The rw loop device bound to `image`, attaching one when there is none.
fn ensure_loop(image: &Path) -> Result<PathBuf> {
    match loopdev::find_for(image)
        .into_iter()
        .find(|d| !loopdev::is_read_only(d))
    {
        Some(d) => Ok(d),
        None => loopdev::attach(image, false),
    }
}

/// Mounts a staged filesystem volume (formatting it if it has no
/// filesystem, growing it offline when the image grew while unstaged).
fn mount_staging(
    d: &LocalBackend,
    v: &state::Volume,
    dev: &Path,
    s: &state::Staging,
    wanted: Option<FsType>,
) -> Result<String> {
    let found = mount::probe_fs(dev)?;
    let fs = match (found, wanted) {
        (None, w) => {
            let fs = w
                .or_else(|| FsType::parse(&v.fs_type))
                .unwrap_or(d.config.default_fs_type);
            tracing::info!(volume = %v.id, fs = fs.as_str(), "making filesystem");
            mount::mkfs(dev, fs)?;
            d.state.clear_fs_grow(&v.id)?;
            fs.as_str().to_string()
        }
        (Some(t), Some(w)) if t != w.as_str() => {
            return Err(Error::FailedPrecondition(format!(
            "volume {} already holds a {t} filesystem; volume_capability.mount.fs_type asks for {}",
            v.id,
            w.as_str()
        )))
        }
        (Some(t), _) => t,
    };
    let fresh = d
        .state
        .volume(&v.id)?
        .map(|x| x.fs_grow_pending)
        .unwrap_or(false);
    if fresh && fs.starts_with("ext") {
        mount::grow_ext4_offline(dev)?;
        d.state.clear_fs_grow(&v.id)?;
    }
    let path = Path::new(&s.path);
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    if !mount::is_mounted(path) {
        let flags: Vec<String> = serde_json::from_str(&s.flags).unwrap_or_default();
        mount::mount_fs(dev, path, &fs, &flags, false)?;
    }
    if fresh && fs == "xfs" {
        mount::grow_online(dev, path, &fs)?;
        d.state.clear_fs_grow(&v.id)?;
    }
    Ok(fs)
}

/// Undoes a staging: unmount, release the loop device, forget it.
pub(super) fn teardown_staging(d: &LocalBackend, image: &Path, s: &state::Staging) -> Result<()> {
    if s.access == "mount" {
        mount::unmount_all(Path::new(&s.path))?;
    }
    for dev in loopdev::find_for(image) {
        loopdev::detach(&dev, image)?;
    }
    d.state.delete_staging(&s.volume_id)
}

/// NodeStageVolume: attach the loop device, make the filesystem once, mount
/// it at the staging path (volume id, path and capability were checked).
pub(super) fn stage(
    d: &LocalBackend,
    req: &NodeStageVolumeRequest,
    path: PathBuf,
    cap: Capability,
) -> Result<()> {
    let (lid, v) = lookup_volume(d, &req.volume_id)?;
    if let Err(why) = access_supported(&v, &cap) {
        return Err(Error::invalid("volume_capability", why));
    }
    let _guard = d.locks.acquire(&[Driver::vol_key(&v.id)])?;
    let image = d.pool.path(&lid);
    let flags =
        serde_json::to_string(&stored_flags(&cap.access, cap.read_only_mode)).unwrap_or_default();
    let wanted = match &cap.access {
        Access::Mount { fs_type, .. } => *fs_type,
        Access::Block => None,
    };
    let path_s = path.to_string_lossy().to_string();
    if let Some(s) = d.state.staging(&v.id)? {
        if s.path != path_s || s.access != access_name(&cap.access) || s.flags != flags {
            return Err(Error::AlreadyExists(format!(
                "volume {} is already staged at {} ({}) with other arguments",
                v.id, s.path, s.access
            )));
        }
        if s.state == "staged" {
            // Idempotent repeat: make sure it is still whole.
            let dev = ensure_loop(&image)?;
            if s.access == "mount" {
                let fs = mount_staging(d, &v, &dev, &s, wanted)?;
                if fs != s.fs_type || dev.to_string_lossy() != s.loop_device {
                    d.state.put_staging(&state::Staging {
                        fs_type: fs,
                        loop_device: dev.to_string_lossy().into(),
                        ..s
                    })?;
                }
            }
            return Ok(());
        }
    }
    let mut rec = state::Staging {
        volume_id: v.id.clone(),
        path: path_s,
        loop_device: String::new(),
        access: access_name(&cap.access).to_string(),
        fs_type: String::new(),
        flags,
        state: "staging".into(),
    };
    d.state.put_staging(&rec)?;
    let result = (|| -> Result<state::Staging> {
        let dev = ensure_loop(&image)?;
        rec.loop_device = dev.to_string_lossy().into();
        d.state.put_staging(&rec)?;
        if rec.access == "mount" {
            rec.fs_type = mount_staging(d, &v, &dev, &rec, wanted)?;
        } else {
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        }
        rec.state = "staged".into();
        d.state.put_staging(&rec)?;
        Ok(rec.clone())
    })();
    match result {
        Ok(s) => {
            tracing::info!(volume = %v.id, path = %s.path, dev = %s.loop_device, "volume staged");
            Ok(())
        }
        Err(e) => {
            if let Err(e2) = teardown_staging(d, &image, &rec) {
                tracing::warn!(volume = %v.id, error = %e2, "rolling back a failed stage");
            }
            Err(e)
        }
    }
}

/// NodeUnstageVolume: unmount, release the loop device.
pub(super) fn unstage(d: &LocalBackend, volume_id: &str, path: PathBuf) -> Result<()> {
    let Some(lid) = LocalId::parse(Kind::Volume, volume_id) else {
        return Ok(());
    };
    let _guard = d.locks.acquire(&[Driver::vol_key(volume_id)])?;
    let image = d.pool.path(&lid);
    let Some(s) = d.state.staging(volume_id)? else {
        // Nothing recorded: unmount only if what is there is this volume.
        if let Some(m) = mount::mount_at(&path) {
            if loopdev::find_for(&image)
                .iter()
                .any(|dev| mount::dev_numbers(dev).as_deref() == Some(m.dev.as_str()))
            {
                mount::unmount_all(&path)?;
            }
        }
        return Ok(());
    };
    if s.path != path.to_string_lossy() {
        return Err(Error::NotFound(format!(
            "volume {} is staged at {}, not {}",
            s.volume_id,
            s.path,
            path.display()
        )));
    }
    let pubs = d.state.publications_of(volume_id)?;
    if let Some(p) = pubs.first() {
        return Err(Error::FailedPrecondition(format!(
            "volume {} is still published at {}; call NodeUnpublishVolume first",
            volume_id, p.target
        )));
    }
    d.state.put_staging(&state::Staging {
        state: "unstaging".into(),
        ..s.clone()
    })?;
    teardown_staging(d, &image, &s)?;
    tracing::info!(volume = %volume_id, path = %path.display(), "volume unstaged");
    Ok(())
}

/// Makes `target` exist as what a bind of `access` needs: a directory for a
/// filesystem, a regular file for a block device.
fn make_target(target: &Path, access: &str) -> Result<()> {
    if access == "mount" {
        std::fs::create_dir_all(target)
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))
    } else {
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map(|_| ())
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))
    }
}

/// Removes a target after unmounting (it is the CO's path; only what we made).
fn remove_target(target: &Path) -> Result<()> {
    let r = match std::fs::symlink_metadata(target) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
    };
    r.map_err(|e| Error::io(format!("removing {}", target.display()), e))
}

/// Binds a publication (used by publish and by restart reconciliation).
pub(super) fn bind_publication(
    d: &LocalBackend,
    image: &Path,
    stg: &state::Staging,
    p: &mut state::Publication,
) -> Result<()> {
    let target = PathBuf::from(&p.target);
    make_target(&target, &p.access)?;
    if mount::is_mounted(&target) {
        return Ok(());
    }
    if p.access == "mount" {
        mount::bind(Path::new(&stg.path), &target, p.readonly)
    } else {
        let src = if p.readonly {
            if p.ro_loop.is_empty() || !loopdev::is_bound_to(Path::new(&p.ro_loop), image) {
                p.ro_loop = loopdev::attach(image, true)?.to_string_lossy().into();
                d.state.put_publication(p)?;
            }
            PathBuf::from(&p.ro_loop)
        } else {
            ensure_loop(image)?
        };
        mount::bind(&src, &target, false)
    }
}

fn teardown_publication(d: &LocalBackend, image: &Path, p: &state::Publication) -> Result<()> {
    let target = Path::new(&p.target);
    mount::unmount_all(target)?;
    remove_target(target)?;
    if !p.ro_loop.is_empty() {
        loopdev::detach(Path::new(&p.ro_loop), image)?;
    }
    d.state.delete_publication(&p.target)
}

/// NodePublishVolume: bind the staged volume (or its device) onto the
/// target, read-only when asked.
pub(super) fn publish(
    d: &LocalBackend,
    req: &NodePublishVolumeRequest,
    target: PathBuf,
    staging: Option<PathBuf>,
    cap: Capability,
) -> Result<()> {
    let staging = staging.ok_or_else(|| Error::missing("staging_target_path"))?;
    let (lid, v) = lookup_volume(d, &req.volume_id)?;
    let _guard = d.locks.acquire(&[Driver::vol_key(&v.id)])?;
    let image = d.pool.path(&lid);
    let stg = match d.state.staging(&v.id)? {
        Some(s) if s.state == "staged" && Path::new(&s.path) == staging => s,
        _ => {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is not staged at staging_target_path {}",
                v.id,
                staging.display()
            )))
        }
    };
    let access = access_name(&cap.access);
    if access != stg.access {
        return Err(Error::invalid(
            "volume_capability",
            format!(
                "asks for {access} access, the volume is staged for {}",
                stg.access
            ),
        ));
    }
    let readonly = req.readonly
        || cap.read_only_mode
        || req
            .publish_context
            .get("readonly")
            .is_some_and(|r| r == "true");
    let target_s = target.to_string_lossy().to_string();
    if let Some(mut p) = d.state.publication(&target_s)? {
        if p.volume_id == v.id && p.readonly == readonly && p.access == access {
            if p.state == "published" {
                bind_publication(d, &image, &stg, &mut p)?;
                return Ok(());
            }
        } else {
            return Err(Error::AlreadyExists(format!(
                "target_path {target_s} is already used by volume {} (readonly={}, {})",
                p.volume_id, p.readonly, p.access
            )));
        }
    } else if mount::is_mounted(&target) {
        return Err(Error::AlreadyExists(format!(
            "target_path {target_s} already has something mounted"
        )));
    }
    let others = d.state.publications_of(&v.id)?;
    crate::csi::check_single_writer(
        &cap,
        &v.id,
        &target_s,
        others.iter().map(|p| p.target.as_str()),
    )?;
    let mut rec = state::Publication {
        target: target_s.clone(),
        volume_id: v.id.clone(),
        readonly,
        access: access.to_string(),
        ro_loop: String::new(),
        state: "publishing".into(),
    };
    d.state.put_publication(&rec)?;
    let r = bind_publication(d, &image, &stg, &mut rec).and_then(|_| {
        rec.state = "published".into();
        d.state.put_publication(&rec)
    });
    if let Err(e) = r {
        if let Err(e2) = teardown_publication(d, &image, &rec) {
            tracing::warn!(volume = %v.id, error = %e2, "rolling back a failed publish");
        }
        return Err(e);
    }
    tracing::info!(volume = %v.id, target = %target_s, readonly, "volume published");
    Ok(())
}

/// NodeUnpublishVolume: unbind the target and remove it.
pub(super) fn unpublish(d: &LocalBackend, volume_id: &str, target: PathBuf) -> Result<()> {
    let Some(lid) = LocalId::parse(Kind::Volume, volume_id) else {
        return Ok(());
    };
    let _guard = d.locks.acquire(&[Driver::vol_key(volume_id)])?;
    let image = d.pool.path(&lid);
    let target_s = target.to_string_lossy().to_string();
    match d.state.publication(&target_s)? {
        Some(p) if p.volume_id == volume_id => {
            teardown_publication(d, &image, &p)?;
            tracing::info!(volume = %volume_id, target = %target_s, "volume unpublished");
            Ok(())
        }
        Some(p) => Err(Error::NotFound(format!(
            "target_path {target_s} holds volume {}, not {}",
            p.volume_id, volume_id
        ))),
        None => {
            // Not recorded (already unpublished, or lost): remove only what is ours.
            if mount::is_mounted(&target) {
                let ours = d.state.staging(volume_id)?.is_some_and(|s| {
                    mount::mount_at(&target)
                        .zip(mount::dev_numbers(Path::new(&s.loop_device)))
                        .is_some_and(|(m, dev)| m.dev == dev)
                });
                if !ours {
                    return Err(Error::NotFound(format!(
                        "volume {} is not published at {target_s}",
                        volume_id
                    )));
                }
                mount::unmount_all(&target)?;
            }
            remove_target(&target)
        }
    }
}

/// Checks a `volume_path` the volume must be staged or published at.
/// Relative or unknown paths are NOT_FOUND (the volume is not there).
fn volume_at(
    d: &LocalBackend,
    field: &str,
    volume_id: &str,
    path: &str,
) -> Result<(PathBuf, state::Staging)> {
    if path.is_empty() {
        return Err(Error::missing(field));
    }
    let p = Path::new(path);
    if path.contains('\0') || p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(
            field,
            format!("{path:?} must not contain '..'"),
        ));
    }
    let not_here = || {
        Error::NotFound(format!(
            "volume {volume_id} is not staged or published at {path}"
        ))
    };
    if !p.is_absolute() {
        return Err(not_here());
    }
    let p = validate::abs_path(field, path, &d.own_dirs())?;
    let stg = d.state.staging(volume_id)?.ok_or_else(not_here)?;
    let ps = p.to_string_lossy().to_string();
    let known = stg.path == ps
        || d.state
            .publications_of(volume_id)?
            .iter()
            .any(|x| x.target == ps);
    if !known || !p.exists() {
        return Err(not_here());
    }
    Ok((p, stg))
}

/// NodeGetVolumeStats: filesystem usage (or the device size) and the
/// volume's condition.
pub(super) fn stats(
    d: &LocalBackend,
    req: &NodeGetVolumeStatsRequest,
) -> Result<NodeGetVolumeStatsResponse> {
    let (lid, v) = lookup_volume(d, &req.volume_id)?;
    let (path, stg) = volume_at(d, "volume_path", &v.id, &req.volume_path)?;
    let image = d.pool.path(&lid);
    let mut cond = condition(false, "volume is healthy");
    if !image.exists() {
        cond = condition(true, "the image file is missing from the pool");
    } else if loopdev::find_for(&image).is_empty() {
        cond = condition(true, "no loop device is attached to the image");
    }
    let usage = if stg.access == "mount" {
        if !mount::is_mounted(&path) {
            cond = condition(true, format!("{} is not mounted", path.display()));
        }
        let (b, i) = mount::usage(&path)?;
        usage_entries(b, i)
    } else {
        let total = loopdev::size_of(Path::new(&stg.loop_device)).unwrap_or(v.size);
        vec![VolumeUsage {
            total: total as i64,
            available: 0,
            used: 0,
            unit: volume_usage::Unit::Bytes as i32,
        }]
    };
    Ok(NodeGetVolumeStatsResponse {
        usage,
        volume_condition: Some(cond),
    })
}

/// NodeExpandVolume: grow the image, the loop devices and the filesystem.
pub(super) fn expand(
    d: &LocalBackend,
    req: &NodeExpandVolumeRequest,
    range: Range,
) -> Result<NodeExpandVolumeResponse> {
    // Capability and staging path are checked here only: the NFS backend
    // does not check them (yet).
    if let Some(c) = &req.volume_capability {
        validate::capability("volume_capability", c, d)?;
    }
    if !req.staging_target_path.is_empty() {
        validate::abs_path(
            "staging_target_path",
            &req.staging_target_path,
            &d.own_dirs(),
        )?;
    }
    let (lid, v) = lookup_volume(d, &req.volume_id)?;
    let (_, stg) = volume_at(d, "volume_path", &v.id, &req.volume_path)?;
    let _guard = d.locks.acquire(&[Driver::vol_key(&v.id)])?;
    let v = d
        .state
        .volume(&v.id)?
        .ok_or_else(|| Error::NotFound(format!("volume {} does not exist", req.volume_id)))?;
    let required = range.required.or(range.limit).unwrap_or(v.size);
    let new = required.div_ceil(ALIGN).max(1) * ALIGN;
    let new = new.max(v.size);
    if range.limit.is_some_and(|l| new > l) {
        return Err(Error::OutOfRange(format!(
            "the volume is {} bytes, above capacity_range.limit_bytes",
            v.size
        )));
    }
    let image = d.pool.path(&lid);
    if new > v.size {
        d.pool
            .ensure_space("capacity_range.required_bytes", new - v.size)?;
        d.pool.grow(&lid, new)?;
        d.state.set_volume_size(&v.id, new, stg.access == "mount")?;
    }
    for dev in loopdev::find_for(&image) {
        loopdev::refresh_capacity(&dev)?;
    }
    if stg.access == "mount" {
        let dev = ensure_loop(&image)?;
        mount::grow_online(&dev, Path::new(&stg.path), &stg.fs_type)?;
        d.state.clear_fs_grow(&v.id)?;
    }
    tracing::info!(volume = %v.id, size = new, "volume expanded on node");
    Ok(NodeExpandVolumeResponse {
        capacity_bytes: new as i64,
    })
}
