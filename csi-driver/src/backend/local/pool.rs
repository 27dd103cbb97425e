//! The `local` backend: each volume is an image file in the pool directory
//! (sparse unless preallocated); snapshots and clones are copies of image
//! files (a reflink when the pool's filesystem supports it, otherwise a
//! sparse copy that skips holes).
//!
//! Paths are only ever built from the random hex part of an id that this
//! module generated and validated, so no request can name a file outside
//! `<pool>/volumes` or `<pool>/snapshots`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Kinds of ids the backend hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `local:<node>:<hex>`.
    Volume,
    /// `snap:<node>:<hex>`.
    Snapshot,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Volume => "local",
            Kind::Snapshot => "snap",
        }
    }
    fn dir(self) -> &'static str {
        match self {
            Kind::Volume => "volumes",
            Kind::Snapshot => "snapshots",
        }
    }
}

/// A parsed id of this backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalId {
    /// What it names.
    pub kind: Kind,
    /// The node whose pool holds it.
    pub node: String,
    /// 24 lowercase hex digits: the file name stem.
    pub hex: String,
}

impl LocalId {
    /// A fresh random id on `node`.
    pub fn generate(kind: Kind, node: &str) -> Result<LocalId> {
        let mut b = [0u8; 12];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| Error::io("reading /dev/urandom", e))?;
        let hex = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(LocalId {
            kind,
            node: node.to_string(),
            hex,
        })
    }

    /// Parses `<prefix>:<node>:<hex>`; `None` for anything else (an id that
    /// was never ours, answered NOT_FOUND).
    pub fn parse(kind: Kind, s: &str) -> Option<LocalId> {
        let rest = s.strip_prefix(kind.prefix())?.strip_prefix(':')?;
        let (node, hex) = rest.rsplit_once(':')?;
        if hex.len() != 24
            || !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return None;
        }
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return None;
        }
        Some(LocalId {
            kind,
            node: node.to_string(),
            hex: hex.to_string(),
        })
    }
}

impl std::fmt::Display for LocalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.kind.prefix(), self.node, self.hex)
    }
}

/// Below this much free space the pool takes no new volumes.
pub const MIN_FREE: u64 = 16 << 20;

/// The pool directory.
#[derive(Clone, Debug)]
pub struct Pool {
    root: PathBuf,
}

nix::ioctl_write_int!(ficlone, 0x94, 9);

impl Pool {
    /// Opens (creating) the pool layout under `root`.
    pub fn open(root: &Path) -> Result<Pool> {
        for k in [Kind::Volume, Kind::Snapshot] {
            let d = root.join(k.dir());
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        Ok(Pool {
            root: root.to_path_buf(),
        })
    }

    /// The pool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Image file of an id.
    pub fn path(&self, id: &LocalId) -> PathBuf {
        self.root
            .join(id.kind.dir())
            .join(format!("{}.img", id.hex))
    }

    /// Whether the pool is usable: its directories exist and are writable.
    pub fn healthy(&self) -> bool {
        [Kind::Volume, Kind::Snapshot].iter().all(|k| {
            let d = self.root.join(k.dir());
            d.is_dir() && nix::unistd::access(&d, nix::unistd::AccessFlags::W_OK).is_ok()
        })
    }

    /// Bytes free for new data on the pool's filesystem.
    pub fn available(&self) -> Result<u64> {
        let s = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| Error::sys(format!("statvfs {}", self.root.display()), e))?;
        Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
    }

    /// Fails with RESOURCE_EXHAUSTED when `bytes` more cannot fit. Images are
    /// sparse: a new volume uses almost nothing until data is written, so it
    /// is refused only when it is larger than the whole pool filesystem (it
    /// could never be filled) or when the pool is out of space already.
    /// Preallocated images need the bytes free now (`ensure_free`). `field`
    /// names the request field the bytes come from, for the caller's user.
    pub fn ensure_space(&self, field: &str, bytes: u64) -> Result<()> {
        let s = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| Error::sys(format!("statvfs {}", self.root.display()), e))?;
        let total = s.blocks() as u64 * s.fragment_size() as u64;
        let avail = s.blocks_available() as u64 * s.fragment_size() as u64;
        if bytes > total {
            return Err(Error::ResourceExhausted(format!(
                "{field} asks for {bytes} bytes, more than the whole pool {} ({total} bytes)",
                self.root.display()
            )));
        }
        if avail < MIN_FREE {
            return Err(Error::ResourceExhausted(format!(
                "{field}: the pool {} is full ({avail} bytes free)",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// Fails with RESOURCE_EXHAUSTED unless `bytes` are free now.
    pub fn ensure_free(&self, field: &str, bytes: u64) -> Result<()> {
        let avail = self.available()?;
        if bytes > avail {
            return Err(Error::ResourceExhausted(format!(
                "{field} asks for {bytes} bytes, the pool {} has {avail} free",
                self.root.display()
            )));
        }
        Ok(())
    }

    /// Creates an empty image of `size` bytes (sparse unless `preallocate`).
    pub fn create(&self, id: &LocalId, size: u64, preallocate: bool) -> Result<()> {
        let p = self.path(id);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        f.set_len(size)
            .map_err(|e| Error::io(format!("sizing {}", p.display()), e))?;
        if preallocate {
            nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, size as i64)
                .map_err(|e| Error::sys(format!("preallocating {}", p.display()), e))?;
        }
        f.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", p.display()), e))
    }

    /// Copies the image of `src` to `dst` and makes it at least `size` bytes.
    pub fn copy(&self, src: &LocalId, dst: &LocalId, size: u64) -> Result<()> {
        let sp = self.path(src);
        let dp = self.path(dst);
        let mut s =
            File::open(&sp).map_err(|e| Error::io(format!("opening {}", sp.display()), e))?;
        let d = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&dp)
            .map_err(|e| Error::io(format!("creating {}", dp.display()), e))?;
        // SAFETY: FICLONE takes the source file descriptor as its argument.
        let cloned = unsafe { ficlone(d.as_raw_fd(), s.as_raw_fd() as libc::c_ulong) }.is_ok();
        if !cloned {
            sparse_copy(&mut s, &d).map_err(|e| {
                Error::io(format!("copying {} to {}", sp.display(), dp.display()), e)
            })?;
        }
        let len = d.metadata().map_err(|e| Error::io("stat copy", e))?.len();
        if size > len {
            d.set_len(size)
                .map_err(|e| Error::io(format!("sizing {}", dp.display()), e))?;
        }
        d.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", dp.display()), e))
    }

    /// Grows an image to `size` bytes (never shrinks).
    pub fn grow(&self, id: &LocalId, size: u64) -> Result<()> {
        let p = self.path(id);
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
        let len = f.metadata().map_err(|e| Error::io("stat", e))?.len();
        if size > len {
            f.set_len(size)
                .map_err(|e| Error::io(format!("growing {}", p.display()), e))?;
            f.sync_all()
                .map_err(|e| Error::io(format!("syncing {}", p.display()), e))?;
        }
        Ok(())
    }

    /// Size of an image, `None` when the file is missing.
    pub fn size(&self, id: &LocalId) -> Option<u64> {
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Removes an image; a missing file is fine.
    pub fn remove(&self, id: &LocalId) -> Result<()> {
        let p = self.path(id);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
        }
    }
}

/// Copies only the data extents of `src` into `dst` (holes stay holes).
fn sparse_copy(src: &mut File, dst: &File) -> std::io::Result<()> {
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let sfd = src.as_raw_fd();
    let mut off: i64 = 0;
    while (off as u64) < len {
        // SAFETY: plain lseek on a valid fd.
        let data = unsafe { libc::lseek(sfd, off, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut pos_in = data;
        let mut pos_out = data;
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: both fds are valid; offsets are passed by pointer and updated.
            let n = unsafe {
                libc::copy_file_range(sfd, &mut pos_in, dst.as_raw_fd(), &mut pos_out, left, 0)
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
        }
        off = hole;
    }
    src.seek(SeekFrom::Start(0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = LocalId::generate(Kind::Volume, "node-1.example").unwrap();
        let s = id.to_string();
        assert!(s.starts_with("local:node-1.example:"));
        assert_eq!(LocalId::parse(Kind::Volume, &s), Some(id));
        assert_eq!(LocalId::parse(Kind::Snapshot, &s), None);
        assert_eq!(LocalId::parse(Kind::Volume, "reallyfakevolumeid"), None);
        assert_eq!(
            LocalId::parse(Kind::Volume, "local:n:../../../etc/passwd"),
            None
        );
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        let a = LocalId::generate(Kind::Volume, "n").unwrap();
        let b = LocalId::generate(Kind::Snapshot, "n").unwrap();
        pool.create(&a, 8 << 20, false).unwrap();
        {
            use std::io::Write;
            let mut f = OpenOptions::new().write(true).open(pool.path(&a)).unwrap();
            f.seek(SeekFrom::Start(4 << 20)).unwrap();
            f.write_all(b"hello").unwrap();
        }
        pool.copy(&a, &b, 16 << 20).unwrap();
        let data = std::fs::read(pool.path(&b)).unwrap();
        assert_eq!(data.len(), 16 << 20);
        assert_eq!(&data[4 << 20..(4 << 20) + 5], b"hello");
    }
}
