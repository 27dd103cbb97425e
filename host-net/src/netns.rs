//! Entering network namespaces.
//!
//! Namespace membership is per thread: work inside a pod's namespace runs
//! on the calling thread, which joins it and is switched back afterwards.
//! Netlink sockets opened inside stay bound to that namespace afterwards,
//! so a `Netlink` handle can be made inside and used outside.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("netns {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netns {path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("entering netns {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
}

impl NetNsError {
    /// Whether the namespace simply does not exist (any more).
    pub fn is_missing(&self) -> bool {
        matches!(self, NetNsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

/// NSFS_MAGIC and PROC_SUPER_MAGIC: a namespace file lives on nsfs (bind
/// mounts under /var/run/netns) or procfs (/proc/PID/ns/net).
const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

impl NetNs {
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NetNsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetNsError::Open {
            path: path.clone(),
            source,
        })?;
        let st = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| NetNsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        let magic = st.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(NetNsError::NotNetns { path });
        }
        Ok(NetNs { file, path })
    }

    /// The namespace this thread is in.
    pub fn current() -> Result<NetNs, NetNsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Identity of the namespace (device + inode), to compare two handles.
    pub fn id(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }

    /// Runs `f` inside this namespace and returns its value.
    ///
    /// The calling thread joins the namespace for the call and returns to
    /// its own before this returns, also when `f` panics. A spawned thread
    /// would never need switching back, but costs a plugin run a thread
    /// start and a malloc arena, a measurable share of a pod start when a
    /// hundred pods start at once. If the way back fails the process aborts:
    /// code that believes it is in the host namespace must not run in a pod's.
    pub fn run<T, F: FnOnce() -> T>(&self, f: F) -> Result<T, NetNsError> {
        let home = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetNsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let _back = Return { home: &home };
        Ok(f())
    }
}

/// Takes the thread back to its namespace when dropped.
struct Return<'a> {
    home: &'a NetNs,
}

impl Drop for Return<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "fatal: cannot return to network namespace {}: {e}",
                self.home.path.display()
            );
            std::process::abort();
        }
    }
}

/// Writes a sysctl of the current thread's network namespace, e.g.
/// `net/ipv4/conf/eth0/arp_notify`. Call it inside `NetNs::run` for a pod.
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

pub fn read_sysctl(key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key)).map(|s| s.trim().to_string())
}
