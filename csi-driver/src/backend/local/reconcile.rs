//! Start-up reconciliation of the records with the kernel (mountinfo, loop
//! devices). Finished operations are made whole again (a staged volume whose
//! loop device or mount vanished, e.g. after a reboot, is re-attached and
//! re-mounted; publications are re-bound); operations a crash interrupted
//! are rolled back (a half-created volume or snapshot is removed, a
//! half-staged or half-published volume is torn down so the CO's retry
//! starts clean); loop devices on pool images that no record explains are
//! released.

use std::path::{Path, PathBuf};

use super::base::LocalBackend;
use super::loopdev;
use super::node::{bind_publication, teardown_staging};
use super::pool::{Kind, LocalId};
use crate::error::Result;
use crate::mount;

/// Runs every step; a failing item is logged and the others go on.
pub fn reconcile(d: &LocalBackend) -> Result<()> {
    for v in d.state.all_volumes()? {
        if v.state == "ready" {
            continue;
        }
        let Some(lid) = LocalId::parse(Kind::Volume, &v.id) else {
            continue;
        };
        tracing::info!(volume = %v.id, state = %v.state, "rolling back an interrupted volume operation");
        let image = d.pool.path(&lid);
        for dev in loopdev::find_for(&image) {
            log(loopdev::detach(&dev, &image));
        }
        log(d.pool.remove(&lid));
        log(d.state.delete_volume(&v.id));
    }
    for s in d.state.all_snapshots()? {
        if s.state == "ready" {
            continue;
        }
        tracing::info!(snapshot = %s.id, state = %s.state, "rolling back an interrupted snapshot operation");
        if let Some(lid) = LocalId::parse(Kind::Snapshot, &s.id) {
            log(d.pool.remove(&lid));
        }
        log(d.state.delete_snapshot(&s.id));
    }
    for s in d.state.all_stagings()? {
        let Some(lid) = LocalId::parse(Kind::Volume, &s.volume_id) else {
            continue;
        };
        let image = d.pool.path(&lid);
        let vol = d.state.volume(&s.volume_id)?;
        if s.state != "staged" || vol.is_none() {
            tracing::info!(volume = %s.volume_id, state = %s.state, "tearing down an interrupted staging");
            log(teardown_staging(d, &image, &s));
            continue;
        }
        let r = (|| -> Result<()> {
            let dev = match loopdev::find_for(&image)
                .into_iter()
                .find(|x| !loopdev::is_read_only(x))
            {
                Some(dev) => dev,
                None => {
                    tracing::info!(volume = %s.volume_id, "re-attaching the loop device");
                    loopdev::attach(&image, false)?
                }
            };
            let mut s2 = s.clone();
            s2.loop_device = dev.to_string_lossy().into();
            if s.access == "mount" && !mount::is_mounted(Path::new(&s.path)) {
                tracing::info!(volume = %s.volume_id, path = %s.path, "re-mounting the staging path");
                std::fs::create_dir_all(&s.path).ok();
                let flags: Vec<String> = serde_json::from_str(&s.flags).unwrap_or_default();
                mount::mount_fs(&dev, Path::new(&s.path), &s.fs_type, &flags, false)?;
            }
            if s2.loop_device != s.loop_device {
                d.state.put_staging(&s2)?;
            }
            Ok(())
        })();
        log(r);
    }
    for mut p in d.state.all_publications()? {
        let Some(lid) = LocalId::parse(Kind::Volume, &p.volume_id) else {
            continue;
        };
        let image = d.pool.path(&lid);
        let stg = d.state.staging(&p.volume_id)?;
        match stg {
            Some(stg) if p.state == "published" && stg.state == "staged" => {
                if !mount::is_mounted(Path::new(&p.target)) {
                    tracing::info!(volume = %p.volume_id, target = %p.target, "re-binding a publication");
                }
                log(bind_publication(d, &image, &stg, &mut p));
            }
            _ => {
                tracing::info!(volume = %p.volume_id, target = %p.target, "tearing down an interrupted publication");
                log(mount::unmount_all(Path::new(&p.target)));
                let _ = std::fs::remove_dir(&p.target).or_else(|_| std::fs::remove_file(&p.target));
                if !p.ro_loop.is_empty() {
                    log(loopdev::detach(Path::new(&p.ro_loop), &image));
                }
                log(d.state.delete_publication(&p.target));
            }
        }
    }
    release_stray_loops(d)?;
    Ok(())
}

/// Loop devices bound to pool images that no staging or publication uses,
/// and that nothing has mounted, are released.
fn release_stray_loops(d: &LocalBackend) -> Result<()> {
    let mut used: Vec<String> = d
        .state
        .all_stagings()?
        .into_iter()
        .map(|s| s.loop_device)
        .collect();
    used.extend(d.state.all_publications()?.into_iter().map(|p| p.ro_loop));
    let mounted: Vec<String> = mount::mounts().into_iter().map(|m| m.dev).collect();
    for (dev, backing) in loopdev::attached_under(d.pool.root()) {
        if used.iter().any(|u| Path::new(u) == dev) {
            continue;
        }
        if mount::dev_numbers(&dev).is_some_and(|n| mounted.contains(&n)) {
            continue;
        }
        tracing::info!(dev = %dev.display(), image = %backing.display(), "releasing a stray loop device");
        log(loopdev::detach(&dev, &PathBuf::from(&backing)));
    }
    Ok(())
}

fn log(r: Result<()>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "reconciliation step failed");
    }
}
