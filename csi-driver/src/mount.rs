//! Mounts (via mount(2)/umount2(2)), the kernel's mount table
//! (`/proc/self/mountinfo`), and the filesystem tools: blkid to detect,
//! mkfs to create, resize2fs / xfs_growfs to grow, FIFREEZE/FITHAW to get a
//! consistent image for snapshots.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::FsType;
use crate::error::{Error, Result};

/// One line of mountinfo.
#[derive(Clone, Debug)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// Root of the mount inside the filesystem.
    pub root: String,
    /// Where it is mounted.
    pub target: PathBuf,
    /// Filesystem type.
    pub fs_type: String,
    /// Source (device path or similar).
    pub source: String,
    /// Per-mount options (ro/rw etc.).
    pub options: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table of this process's namespace.
pub fn mounts() -> Vec<MountEntry> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 6 || r.len() < 2 {
                return None;
            }
            Some(MountEntry {
                dev: f[2].to_string(),
                root: unescape(f[3]),
                target: PathBuf::from(unescape(f[4])),
                options: f[5].to_string(),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

/// The topmost mount at exactly `path`.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.target == path)
}

/// Whether something is mounted at exactly `path`.
pub fn is_mounted(path: &Path) -> bool {
    mount_at(path).is_some()
}

/// `major:minor` of a block device node.
pub fn dev_numbers(dev: &Path) -> Option<String> {
    let st = nix::sys::stat::stat(dev).ok()?;
    Some(format!(
        "{}:{}",
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev)
    ))
}

/// Mounts a filesystem on `dev` at `target`.
pub fn mount_fs(
    dev: &Path,
    target: &Path,
    fs: &str,
    flags: &[String],
    read_only: bool,
) -> Result<()> {
    let (mut ms, data) = split_flags(flags);
    if read_only {
        ms |= MsFlags::MS_RDONLY;
    }
    let data = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    mount(Some(dev), target, Some(fs), ms, data).map_err(|e| match e {
        nix::Error::EINVAL if data.is_some() => Error::invalid(
            "volume_capability.mount.mount_flags",
            format!("the kernel refused them for {fs}: {}", e.desc()),
        ),
        e => Error::sys(
            format!("mounting {} ({fs}) at {}", dev.display(), target.display()),
            e,
        ),
    })
}

/// Splits mount options into mount(2) flags and the filesystem data string.
pub fn split_flags(flags: &[String]) -> (MsFlags, String) {
    let mut ms = MsFlags::empty();
    let mut data = Vec::new();
    for f in flags {
        match f.as_str() {
            "ro" => ms |= MsFlags::MS_RDONLY,
            "rw" | "defaults" | "exec" | "suid" | "dev" | "atime" | "diratime" | "async"
            | "norelatime" | "nolazytime" => {}
            "noexec" => ms |= MsFlags::MS_NOEXEC,
            "nosuid" => ms |= MsFlags::MS_NOSUID,
            "nodev" => ms |= MsFlags::MS_NODEV,
            "noatime" => ms |= MsFlags::MS_NOATIME,
            "nodiratime" => ms |= MsFlags::MS_NODIRATIME,
            "relatime" => ms |= MsFlags::MS_RELATIME,
            "strictatime" => ms |= MsFlags::MS_STRICTATIME,
            "lazytime" => ms |= MsFlags::MS_LAZYTIME,
            "sync" => ms |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => ms |= MsFlags::MS_DIRSYNC,
            other => data.push(other.to_string()),
        }
    }
    (ms, data.join(","))
}

/// Bind-mounts `src` onto `target`, then makes the bind read-only if asked.
pub fn bind(src: &Path, target: &Path, read_only: bool) -> Result<()> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        Error::sys(
            format!("bind-mounting {} at {}", src.display(), target.display()),
            e,
        )
    })?;
    if read_only {
        let r = mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        if let Err(e) = r {
            let _ = umount2(target, MntFlags::empty());
            return Err(Error::sys(
                format!("making {} read-only", target.display()),
                e,
            ));
        }
    }
    Ok(())
}

/// Unmounts everything stacked at `path`; not mounted is fine.
pub fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..16 {
        if !is_mounted(path) {
            return Ok(());
        }
        match umount2(path, MntFlags::empty()) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(nix::Error::EBUSY) => {
                return Err(Error::FailedPrecondition(format!(
                    "{} is busy (open files)",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::sys(format!("unmounting {}", path.display()), e)),
        }
    }
    Err(Error::Internal(format!(
        "{} still mounted after 16 unmounts",
        path.display()
    )))
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {:?}", cmd.get_program()), e))?;
    Ok(out)
}

fn check(cmd: &mut Command) -> Result<()> {
    let desc = format!("{:?}", cmd);
    let out = run(cmd)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "{desc} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The filesystem type on a device, `None` when blkid finds none.
pub fn probe_fs(dev: &Path) -> Result<Option<String>> {
    let out = run(Command::new("blkid")
        .args(["-p", "-c", "/dev/null", "-o", "value", "-s", "TYPE"])
        .arg(dev))?;
    match out.status.code() {
        Some(0) => {
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(if t.is_empty() { None } else { Some(t) })
        }
        Some(2) => Ok(None),
        _ => Err(Error::Internal(format!(
            "blkid on {} failed: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Makes a filesystem on a device (only ever called when blkid found none).
pub fn mkfs(dev: &Path, fs: FsType) -> Result<()> {
    match fs {
        FsType::Ext4 => check(
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
                ])
                .arg(dev),
        ),
        FsType::Xfs => check(Command::new("mkfs.xfs").args(["-q", "-f", "-K"]).arg(dev)),
    }
}

/// Grows an ext4 filesystem that is not mounted (check first, as resize2fs requires).
pub fn grow_ext4_offline(dev: &Path) -> Result<()> {
    let out = run(Command::new("e2fsck").args(["-f", "-p"]).arg(dev))?;
    // 0: clean, 1: errors corrected.
    if !matches!(out.status.code(), Some(0) | Some(1)) {
        return Err(Error::Internal(format!(
            "e2fsck on {} failed ({}): {}",
            dev.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    check(Command::new("resize2fs").arg(dev))
}

/// Grows a mounted filesystem to its device's size. ext4 online growth needs
/// CAP_SYS_RESOURCE; without it the error says so (FAILED_PRECONDITION).
pub fn grow_online(dev: &Path, mount_point: &Path, fs: &str) -> Result<()> {
    match fs {
        "xfs" => check(Command::new("xfs_growfs").arg(mount_point)),
        "ext4" | "ext3" | "ext2" => {
            let out = run(Command::new("resize2fs").arg(dev))?;
            if out.status.success() {
                return Ok(());
            }
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                Err(Error::FailedPrecondition(format!(
                    "ext4 on {} cannot grow while mounted: the kernel refuses online resize without \
                     CAP_SYS_RESOURCE; it grows at the next NodeStageVolume",
                    dev.display()
                )))
            } else {
                Err(Error::Internal(format!(
                    "resize2fs {} failed: {}",
                    dev.display(),
                    err.trim()
                )))
            }
        }
        other => Err(Error::FailedPrecondition(format!(
            "cannot grow a {other} filesystem"
        ))),
    }
}

nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// Freezes the filesystem mounted at `path` until the guard drops, so that
/// the image file can be copied in a consistent state.
pub struct Frozen(Option<std::fs::File>);

/// Freezes `path` (best effort: a filesystem that cannot freeze is synced).
pub fn freeze(path: &Path) -> Frozen {
    let Ok(f) = std::fs::File::open(path) else {
        return Frozen(None);
    };
    let mut arg: libc::c_int = 0;
    // SAFETY: the ioctl takes a pointer to an int it does not use.
    match unsafe { fifreeze(f.as_raw_fd(), &mut arg) } {
        Ok(_) => Frozen(Some(f)),
        Err(_) => {
            let _ = nix::unistd::syncfs(&f);
            Frozen(None)
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let mut arg: libc::c_int = 0;
            // SAFETY: as above.
            let _ = unsafe { fithaw(f.as_raw_fd(), &mut arg) };
        }
    }
}

/// (total, available, used).
pub type Counts = (u64, u64, u64);

/// Bytes and inodes of the filesystem at `path`.
pub fn usage(path: &Path) -> Result<(Counts, Counts)> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| Error::sys(format!("statvfs {}", path.display()), e))?;
    let fr = s.fragment_size() as u64;
    let bytes = (
        s.blocks() as u64 * fr,
        s.blocks_available() as u64 * fr,
        (s.blocks() as u64 - s.blocks_free() as u64) * fr,
    );
    let inodes = (
        s.files() as u64,
        s.files_available() as u64,
        s.files() as u64 - s.files_free() as u64,
    );
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn flags_split() {
        let (ms, data) = split_flags(&["ro".into(), "noatime".into(), "discard".into()]);
        assert!(ms.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        assert_eq!(data, "discard");
    }
}
