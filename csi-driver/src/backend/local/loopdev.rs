//! Loop devices through the kernel's ioctls on `/dev/loop-control` and
//! `/dev/loopN`: find a free device, bind an image file to it, refresh its
//! size after the file grew, and release it. The device that backs a given
//! image is found by asking the kernel (LOOP_GET_STATUS64) for the device and
//! inode of each bound file, so the kernel, not our records, is the source of
//! truth. Paths are not compared: the path sysfs prints for a backing file is
//! resolved from the mount namespace that bound it, so a driver restarted in
//! a new container (the pool bind-mounted afresh) would not recognise the
//! devices its predecessor bound.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const LOOP_SET_FD: u32 = 0x4C00;
const LOOP_CLR_FD: u32 = 0x4C01;
const LOOP_SET_STATUS64: u32 = 0x4C04;
const LOOP_GET_STATUS64: u32 = 0x4C05;
const LOOP_SET_CAPACITY: u32 = 0x4C07;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;

const LO_FLAGS_READ_ONLY: u32 = 1;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_none_bad!(ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);
nix::ioctl_write_int_bad!(loop_set_fd, LOOP_SET_FD);
nix::ioctl_write_ptr_bad!(loop_set_status64, LOOP_SET_STATUS64, LoopInfo64);
nix::ioctl_read_bad!(loop_get_status64, LOOP_GET_STATUS64, LoopInfo64);
nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);
nix::ioctl_none_bad!(loop_set_capacity, LOOP_SET_CAPACITY);

fn info_for(image: &Path, read_only: bool) -> LoopInfo64 {
    // SAFETY: LoopInfo64 is plain old data; all-zero is a valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.lo_flags = if read_only { LO_FLAGS_READ_ONLY } else { 0 };
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(63);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    info
}

/// Binds `image` to a free loop device and returns its path (`/dev/loopN`).
/// Retries when another process takes the same free device first.
pub fn attach(image: &Path, read_only: bool) -> Result<PathBuf> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .map_err(|e| Error::io(format!("opening {}", image.display()), e))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| Error::io("opening /dev/loop-control", e))?;
    for _ in 0..64 {
        // SAFETY: the ioctl takes no argument and returns a device number.
        let n = unsafe { ctl_get_free(ctl.as_raw_fd()) }
            .map_err(|e| Error::sys("LOOP_CTL_GET_FREE", e))?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let file = match open_dev(&dev, read_only) {
            Ok(f) => f,
            Err(_) => continue,
        };
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: info_for(image, read_only),
            reserved: [0; 8],
        };
        // SAFETY: cfg is a valid loop_config that outlives the call.
        match unsafe { loop_configure(file.as_raw_fd(), &cfg) } {
            Ok(_) => return Ok(dev),
            Err(nix::Error::EBUSY) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOTTY) => {
                // Kernels before 5.8: the two-step interface.
                // SAFETY: the argument is a valid open file descriptor.
                match unsafe { loop_set_fd(file.as_raw_fd(), backing.as_raw_fd()) } {
                    Ok(_) => {}
                    Err(nix::Error::EBUSY) => continue,
                    Err(e) => {
                        return Err(Error::sys(format!("LOOP_SET_FD on {}", dev.display()), e))
                    }
                }
                let info = info_for(image, read_only);
                // SAFETY: info is a valid loop_info64 that outlives the call.
                if let Err(e) = unsafe { loop_set_status64(file.as_raw_fd(), &info) } {
                    // SAFETY: no argument.
                    let _ = unsafe { loop_clr_fd(file.as_raw_fd()) };
                    return Err(Error::sys(
                        format!("LOOP_SET_STATUS64 on {}", dev.display()),
                        e,
                    ));
                }
                return Ok(dev);
            }
            Err(e) => {
                return Err(Error::sys(
                    format!("LOOP_CONFIGURE on {}", dev.display()),
                    e,
                ))
            }
        }
    }
    Err(Error::Internal(format!(
        "no free loop device for {} after 64 tries",
        image.display()
    )))
}

fn open_dev(dev: &Path, read_only: bool) -> std::io::Result<File> {
    match OpenOptions::new().read(true).write(!read_only).open(dev) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // In a container /dev may lack the node the kernel just made
            // free: create it (block device, major 7) and try again.
            let minor = dev
                .to_str()
                .and_then(|s| s.strip_prefix("/dev/loop"))
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or(e)?;
            nix::sys::stat::mknod(
                dev,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o660),
                nix::sys::stat::makedev(7, minor),
            )
            .map_err(std::io::Error::from)?;
            OpenOptions::new().read(true).write(!read_only).open(dev)
        }
        other => other,
    }
}

/// A file's identity: the device it lives on and its inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (following symlinks).
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The identity of the file bound to a loop device, from the kernel. None
/// when the device is unbound or cannot be opened.
pub fn backing_id(dev: &Path) -> Option<FileId> {
    let file = open_dev(dev, true).ok()?;
    // SAFETY: LoopInfo64 is plain old data; all-zero is a valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid, writable loop_info64 that outlives the call.
    unsafe { loop_get_status64(file.as_raw_fd(), &mut info) }.ok()?;
    // The kernel encodes lo_device the way stat(2) encodes st_dev.
    Some(FileId {
        dev: info.lo_device,
        ino: info.lo_inode,
    })
}

/// Whether `dev` is bound to the file identified by `image` (or, when the
/// kernel cannot be asked, to a file at the same path).
fn bound_to(dev: &Path, image: &Path, id: Option<FileId>) -> bool {
    match (id, backing_id(dev)) {
        (Some(want), Some(got)) => want == got,
        _ => backing_file(dev).as_deref() == Some(image),
    }
}

/// Whether the loop device `dev` is bound to `image`.
pub fn is_bound_to(dev: &Path, image: &Path) -> bool {
    bound_to(dev, image, FileId::of(image))
}

/// Releases a loop device, but only if it is still bound to `image` (never
/// someone else's device). A device still in use is released by the kernel
/// when its last user closes it.
pub fn detach(dev: &Path, image: &Path) -> Result<()> {
    if !is_bound_to(dev, image) {
        return Ok(());
    }
    let file =
        open_dev(dev, true).map_err(|e| Error::io(format!("opening {}", dev.display()), e))?;
    // SAFETY: no argument.
    match unsafe { loop_clr_fd(file.as_raw_fd()) } {
        Ok(_) | Err(nix::Error::ENXIO) => Ok(()),
        Err(e) => Err(Error::sys(format!("LOOP_CLR_FD on {}", dev.display()), e)),
    }
}

/// Makes the kernel re-read the size of the backing file.
pub fn refresh_capacity(dev: &Path) -> Result<()> {
    let file =
        open_dev(dev, true).map_err(|e| Error::io(format!("opening {}", dev.display()), e))?;
    // SAFETY: no argument.
    unsafe { loop_set_capacity(file.as_raw_fd()) }
        .map(|_| ())
        .map_err(|e| Error::sys(format!("LOOP_SET_CAPACITY on {}", dev.display()), e))
}

/// The file a loop device is bound to, from sysfs.
pub fn backing_file(dev: &Path) -> Option<PathBuf> {
    let name = dev.file_name()?.to_str()?;
    let s = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(
        s.trim_end_matches('\n').trim_end_matches(" (deleted)"),
    ))
}

/// Whether a loop device is bound read-only.
pub fn is_read_only(dev: &Path) -> bool {
    let Some(name) = dev.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    std::fs::read_to_string(format!("/sys/block/{name}/ro"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// Every loop device bound to a file, with that file.
pub fn all_attached() -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let dev = PathBuf::from(format!("/dev/{name}"));
        if let Some(b) = backing_file(&dev) {
            out.push((dev, b));
        }
    }
    out
}

/// Loop devices bound to `image`, read-write ones first.
pub fn find_for(image: &Path) -> Vec<PathBuf> {
    let id = FileId::of(image);
    let mut v: Vec<PathBuf> = all_attached()
        .into_iter()
        .map(|(d, _)| d)
        .filter(|d| bound_to(d, image, id))
        .collect();
    v.sort_by_key(|d| is_read_only(d));
    v
}

/// Every loop device bound to a regular file under `dir` (searched to a
/// depth of two), with that file's path under `dir`.
pub fn attached_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut files: Vec<(FileId, PathBuf)> = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_dir() && depth < 2 {
                dirs.push((p, depth + 1));
            } else if t.is_file() {
                if let Some(id) = FileId::of(&p) {
                    files.push((id, p));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (dev, backing) in all_attached() {
        let found = match backing_id(&dev) {
            Some(id) => files.iter().find(|(f, _)| *f == id).map(|(_, p)| p.clone()),
            None => backing.starts_with(dir).then_some(backing),
        };
        if let Some(p) = found {
            out.push((dev, p));
        }
    }
    out
}

/// Size of a block device in bytes (from sysfs, 512-byte sectors).
pub fn size_of(dev: &Path) -> Option<u64> {
    let name = dev.file_name()?.to_str()?;
    let s = std::fs::read_to_string(format!("/sys/block/{name}/size")).ok()?;
    s.trim().parse::<u64>().ok().map(|n| n * 512)
}
