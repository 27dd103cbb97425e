//! Node side of NFS volumes: the kernel NFS client mounts
//! `server:/share/subdir` straight on the publish target (no staging
//! mount). Every call that can touch the server (mount, unmount, stat of
//! the mount) runs on its own thread with a bound, so a server that stops
//! answering cannot hang the driver: the caller gets DEADLINE_EXCEEDED, and
//! an unmount falls back to a lazy detach.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::mount::{umount2, MntFlags, MsFlags};
use proto::v1::*;

use super::id::VolumeId;
use super::params::parse_mount_options;
use crate::csi::{condition, usage_entries};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::mount::{self, split_flags, MountEntry};
use crate::validate::{Access, Capability};

/// Work that did not finish within its bound, by key (a target path or a
/// server name): its thread is still blocked in the kernel.
static IN_FLIGHT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Runs `f` on a thread and waits at most `bound`; `None` when it did not
/// finish. A syscall blocked on a dead server cannot be cancelled, so the
/// thread is left to end on its own; while it has not, further work on the
/// same `key` answers `None` at once instead of stacking up more blocked
/// threads (kubelet retries for as long as the server is down).
fn bounded<T: Send + 'static>(
    key: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    {
        let mut busy = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        if busy.iter().any(|k| k == key) {
            tracing::warn!(
                key,
                "an earlier NFS call on this is still blocked; not starting another"
            );
            return None;
        }
        busy.push(key.to_string());
    }
    let (tx, rx) = mpsc::channel();
    let owned = key.to_string();
    let spawned = std::thread::Builder::new()
        .name("berth-nfs-call".into())
        .spawn(move || {
            let r = f();
            // Free the key before handing the result over, so the caller's
            // next step on the same key is not mistaken for a blocked one.
            IN_FLIGHT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k| *k != owned);
            let _ = tx.send(r);
        });
    if spawned.is_err() {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k| k != key);
        return None;
    }
    rx.recv_timeout(bound).ok()
}

fn key(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn is_nfs(m: &MountEntry) -> bool {
    m.fs_type == "nfs" || m.fs_type == "nfs4"
}

/// How the target looks from the mount table: mounted with this volume,
/// mounted with something else, or not mounted.
enum AtTarget {
    Ours(MountEntry),
    Other(MountEntry),
    Nothing,
}

fn at_target(target: &Path, vid: &VolumeId) -> AtTarget {
    match mount::mount_at(target) {
        Some(m) if is_nfs(&m) && same_source(&m.source, &vid.mount_source()) => AtTarget::Ours(m),
        Some(m) => AtTarget::Other(m),
        None => AtTarget::Nothing,
    }
}

/// Sources compare equal up to a trailing `/` (kernels differ).
fn same_source(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Whether a mount answers, under a bound: Ok, stale handle, or no answer.
/// statfs always asks the server (stat may be answered from the client's
/// attribute cache), so a stopped server or a replaced directory shows.
enum Health {
    Ok,
    Stale,
    Error(String),
    NoAnswer,
}

fn health(path: &Path, bound: Duration) -> Health {
    let p = path.to_path_buf();
    match bounded(&key(path), bound, move || nix::sys::statvfs::statvfs(&p)) {
        None => Health::NoAnswer,
        Some(Ok(_)) => Health::Ok,
        Some(Err(nix::Error::ESTALE)) => Health::Stale,
        Some(Err(e)) => Health::Error(e.desc().to_string()),
    }
}

/// Unmounts everything at `target`: a normal unmount under the bound, then
/// a lazy detach for what is busy or does not answer.
fn unmount_bounded(target: &Path, bound: Duration) -> Result<()> {
    for _ in 0..16 {
        if mount::mount_at(target).is_none() {
            return Ok(());
        }
        let p = target.to_path_buf();
        match bounded(&key(target), bound, move || umount2(&p, MntFlags::empty())) {
            Some(Ok(())) | Some(Err(nix::Error::EINVAL)) | Some(Err(nix::Error::ENOENT)) => {}
            outcome => {
                let why = match outcome {
                    None => format!("no answer within {} s", bound.as_secs_f32()),
                    Some(Err(e)) => e.desc().to_string(),
                    Some(Ok(())) => String::new(),
                };
                tracing::warn!(target = %target.display(), why = %why, "unmount failed; detaching lazily");
                match umount2(target, MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                    Err(e) => return Err(Error::sys(format!("detaching {}", target.display()), e)),
                }
            }
        }
    }
    Err(Error::Internal(format!(
        "{} still mounted after 16 unmounts",
        target.display()
    )))
}

/// Splits options into mount(2) flags, the NFS data string and the
/// filesystem type, adding NFS 4.1 when no version is given.
fn mount_args(opts: &[String], read_only: bool, addr: &str) -> (MsFlags, String, &'static str) {
    let (mut flags, data) = split_flags(opts);
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let mut parts: Vec<String> = data
        .split(',')
        .filter(|s| !s.is_empty() && *s != "defaults")
        .map(str::to_string)
        .collect();
    let version = parts
        .iter()
        .find_map(|o| {
            o.strip_prefix("vers=")
                .or_else(|| o.strip_prefix("nfsvers="))
        })
        .map(str::to_string);
    let fs_type = match &version {
        Some(v) if v.starts_with('4') => "nfs4",
        Some(_) => "nfs",
        None => {
            parts.insert(0, "vers=4.1".into());
            "nfs4"
        }
    };
    parts.push(format!("addr={addr}"));
    (flags, parts.join(","), fs_type)
}

fn resolve(server: &str, bound: Duration) -> Result<String> {
    let bare = server
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare);
    }
    use std::net::ToSocketAddrs;
    let name = bare.clone();
    match bounded(&format!("resolve {bare}"), bound, move || {
        (name.as_str(), 2049)
            .to_socket_addrs()
            .map(|mut a| a.next())
    }) {
        Some(Ok(Some(a))) => Ok(a.ip().to_string()),
        Some(Ok(None)) => Err(Error::Unavailable(format!(
            "NFS server {server}: the name has no address"
        ))),
        Some(Err(e)) => Err(Error::Unavailable(format!(
            "NFS server {server}: resolving the name: {e}"
        ))),
        None => Err(Error::DeadlineExceeded(format!(
            "NFS server {server}: resolving the name took longer than {} s",
            bound.as_secs_f32()
        ))),
    }
}

fn mount_error(vid: &VolumeId, e: nix::Error) -> Error {
    let what = format!("mounting {}", vid.mount_source());
    match e {
        nix::Error::ENODEV => Error::FailedPrecondition(format!(
            "{what}: this node's kernel has no NFS client (load the nfs and nfsv4 modules)"
        )),
        nix::Error::ENOENT | nix::Error::ESTALE => Error::NotFound(format!(
            "{what}: the volume's directory does not exist on the server"
        )),
        nix::Error::EACCES | nix::Error::EPERM => Error::FailedPrecondition(format!(
            "{what}: the server refused access (check the export's client list and security flavours)"
        )),
        nix::Error::ETIMEDOUT
        | nix::Error::ECONNREFUSED
        | nix::Error::EHOSTUNREACH
        | nix::Error::ENETUNREACH
        | nix::Error::EIO => Error::Unavailable(format!("{what}: {}", e.desc())),
        nix::Error::EINVAL => Error::InvalidArgument {
            field: "mount options".into(),
            reason: format!("{what}: the kernel refused the options ({})", e.desc()),
        },
        other => Error::sys(what, other),
    }
}

/// NodePublishVolume of an NFS volume: mounts the export's subdirectory on
/// the target (volume id, target and capability were checked).
pub(super) fn publish(
    d: &Driver,
    req: &NodePublishVolumeRequest,
    target: PathBuf,
    cap: Capability,
) -> Result<()> {
    let vid = VolumeId::parse("volume_id", &req.volume_id)?;
    let read_only = req.readonly || cap.read_only_mode;
    let mut opts = match req.volume_context.get("mountOptions") {
        Some(o) => parse_mount_options("volume_context[mountOptions]", o)?,
        None => Vec::new(),
    };
    if let Access::Mount { flags, .. } = &cap.access {
        opts.extend(flags.iter().cloned());
    }
    let bound = d.config.nfs_timeout;
    let _guard = d.locks.acquire(&[format!("target/{}", target.display())])?;

    match at_target(&target, &vid) {
        AtTarget::Other(m) => {
            return Err(Error::AlreadyExists(format!(
                "target_path {} already has {} ({}) mounted",
                target.display(),
                m.source,
                m.fs_type
            )))
        }
        AtTarget::Ours(m) => match health(&target, bound) {
            Health::Ok => {
                let mounted_ro = m.options.split(',').any(|o| o == "ro");
                if mounted_ro == read_only {
                    return Ok(());
                }
                return Err(Error::AlreadyExists(format!(
                    "target_path {} is published {}; this call asks for {}",
                    target.display(),
                    if mounted_ro {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if read_only { "read-only" } else { "read-write" }
                )));
            }
            Health::Stale => {
                // The directory on the server was replaced (or the server
                // lost its handles): drop the dead mount and mount again.
                tracing::warn!(target = %target.display(), "stale NFS file handle; remounting");
                unmount_bounded(&target, bound)?;
            }
            Health::NoAnswer => {
                return Err(Error::DeadlineExceeded(format!(
                    "target_path {} is mounted but {} does not answer within {} s",
                    target.display(),
                    vid.server,
                    bound.as_secs_f32()
                )))
            }
            Health::Error(e) => {
                tracing::warn!(target = %target.display(), error = %e, "mounted NFS volume fails; remounting");
                unmount_bounded(&target, bound)?;
            }
        },
        AtTarget::Nothing => {}
    }
    // Other publications of this volume on the node: its NFS mounts
    // elsewhere (the mount table only; nothing on the server is asked).
    let source = vid.mount_source();
    let others: Vec<String> = mount::mounts()
        .into_iter()
        .filter(|m| is_nfs(m) && same_source(&m.source, &source))
        .map(|m| m.target.to_string_lossy().into_owned())
        .collect();
    crate::csi::check_single_writer(
        &cap,
        &req.volume_id,
        &target.to_string_lossy(),
        others.iter().map(String::as_str),
    )?;

    std::fs::create_dir_all(&target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let addr = resolve(&vid.server, bound)?;
    let (flags, data, fs_type) = mount_args(&opts, read_only, &addr);
    let (s, t, dt) = (source.clone(), target.clone(), data.clone());
    let outcome = bounded(&key(&target), bound, move || {
        nix::mount::mount(
            Some(s.as_str()),
            &t,
            Some(fs_type),
            flags,
            Some(dt.as_str()),
        )
    });
    match outcome {
        Some(Ok(())) => {
            tracing::info!(volume = %req.volume_id, target = %target.display(), options = %data, read_only, "NFS volume published");
            Ok(())
        }
        Some(Err(e)) => Err(mount_error(&vid, e)),
        None => Err(Error::DeadlineExceeded(format!(
            "mounting {source} on {} did not finish within {} s (--nfs-timeout); the server may be down",
            target.display(),
            bound.as_secs_f32()
        ))),
    }
}

/// NodeUnpublishVolume of an NFS volume: a bounded unmount, then a lazy
/// one; the target is removed.
pub(super) fn unpublish(d: &Driver, volume_id: &str, target: PathBuf) -> Result<()> {
    let _guard = d.locks.acquire(&[format!("target/{}", target.display())])?;
    unmount_bounded(&target, d.config.nfs_timeout)?;
    match std::fs::remove_dir(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", target.display()), e)),
    }
    tracing::info!(volume = %volume_id, target = %target.display(), "NFS volume unpublished");
    Ok(())
}

/// NodeGetVolumeStats of an NFS volume: the export's figures as the
/// kernel client sees them.
pub(super) fn stats(
    d: &Driver,
    req: &NodeGetVolumeStatsRequest,
    path: PathBuf,
) -> Result<NodeGetVolumeStatsResponse> {
    let vid = VolumeId::parse("volume_id", &req.volume_id)?;
    if !matches!(at_target(&path, &vid), AtTarget::Ours(_)) {
        return Err(Error::NotFound(format!(
            "volume {} is not published at {}",
            req.volume_id,
            path.display()
        )));
    }
    let p = path.clone();
    let usage = match bounded(&key(&path), d.config.nfs_timeout, move || mount::usage(&p)) {
        Some(u) => u,
        None => {
            return Ok(NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(condition(true, format!("{} does not answer", vid.server))),
            })
        }
    };
    let (cond, usage) = match usage {
        Ok((b, i)) => (condition(false, "volume is healthy"), usage_entries(b, i)),
        Err(e) => (condition(true, e.to_string()), vec![]),
    };
    Ok(NodeGetVolumeStatsResponse {
        usage,
        volume_condition: Some(cond),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_work_is_not_started_twice() {
        let (release, wait) = mpsc::channel::<()>();
        let first = bounded("k", Duration::from_millis(20), move || wait.recv().is_ok());
        assert_eq!(first, None, "times out while blocked");
        assert_eq!(
            bounded("k", Duration::from_secs(5), || 1),
            None,
            "refused at once"
        );
        assert_eq!(bounded("other", Duration::from_secs(5), || 2), Some(2));
        release.send(()).expect("release");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bounded("k", Duration::from_secs(5), || 3) != Some(3) {
            assert!(
                std::time::Instant::now() < deadline,
                "key freed when the work ends"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn nfs41_is_the_default_and_options_pass_through() {
        let (flags, data, fs) = mount_args(&["noatime".into(), "hard".into()], true, "10.0.2.2");
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        assert_eq!(fs, "nfs4");
        assert_eq!(data, "vers=4.1,hard,addr=10.0.2.2");
        let (_, data, fs) = mount_args(&["nfsvers=3".into(), "nolock".into()], false, "h");
        assert_eq!(fs, "nfs");
        assert_eq!(data, "nfsvers=3,nolock,addr=h");
        let (_, _, fs) = mount_args(&["vers=4.2".into()], false, "h");
        assert_eq!(fs, "nfs4");
    }
}
