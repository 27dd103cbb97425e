//! Entering namespaces: in a child between fork and exec, or on a scoped thread.
//!
//! Namespace membership is per thread, and a socket stays in the namespace it was created in,
//! so a socket made by [`in_netns`] can be used from any thread afterwards.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;

fn open_ns(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))
}

/// Namespace files opened in the parent, entered by a child between fork and exec.
pub struct NsFiles {
    files: Vec<(File, libc::c_int)>,
}

impl NsFiles {
    /// Open each `(path, CLONE_NEW*)`; they are entered in this order.
    pub fn open(list: &[(&Path, libc::c_int)]) -> io::Result<NsFiles> {
        let mut files = Vec::with_capacity(list.len());
        for (path, kind) in list {
            files.push((open_ns(path)?, *kind));
        }
        Ok(NsFiles { files })
    }

    /// Make `cmd`'s child enter the namespaces before exec. The command keeps its own
    /// duplicates of the descriptors, so `self` may be dropped before `cmd` is spawned.
    pub fn install(&self, cmd: &mut Command) -> io::Result<()> {
        let files = self
            .files
            .iter()
            .map(|(f, k)| Ok((f.try_clone()?, *k)))
            .collect::<io::Result<Vec<_>>>()?;
        let fds: Vec<(RawFd, libc::c_int)> =
            files.iter().map(|(f, k)| (f.as_raw_fd(), *k)).collect();
        // SAFETY: the closure runs in the forked child and only makes setns(2) system calls
        // (async-signal-safe) on descriptors that the closure itself keeps open (`files` is
        // moved into it); it does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                let _keep_open = &files;
                for &(fd, kind) in &fds {
                    if libc::setns(fd, kind) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Spawn `cmd` inside the namespaces.
    pub fn spawn(&self, mut cmd: Command) -> io::Result<Child> {
        self.install(&mut cmd)?;
        cmd.spawn()
    }
}

/// Make `cmd` start its process inside the network namespace at `netns` (setns in the child
/// before exec). The namespace file is opened now, so a missing namespace fails here.
pub fn command_in_netns<'a>(cmd: &'a mut Command, netns: &Path) -> io::Result<&'a mut Command> {
    NsFiles::open(&[(netns, libc::CLONE_NEWNET)])?.install(cmd)?;
    Ok(cmd)
}

/// Spawn `cmd` inside the network namespace at `netns`.
pub fn spawn_in_netns(netns: &Path, mut cmd: Command) -> io::Result<Child> {
    command_in_netns(&mut cmd, netns)?;
    cmd.spawn()
}

/// Run `argv` inside the network namespace at `netns` and collect its output.
pub fn output_in_netns(netns: &Path, argv: &[&str]) -> io::Result<Output> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_in_netns(netns, cmd)?.wait_with_output()
}

/// Run `f` on a scoped thread that joined the network namespace at `netns`; sockets created
/// there stay in that namespace. The calling thread never changes namespace.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(netns: &Path, f: F) -> io::Result<T> {
    let file = open_ns(netns)?;
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) on a descriptor this thread owns; only this short-lived thread,
            // which ends after `f`, changes namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread inside the netns panicked")))
    })
}

/// Makes `cmd` start in a mount namespace of its own whose mounts are all
/// slaves of the caller's: mounts the caller makes later still appear in
/// it, nothing mounted inside (a private `/run`, a bind mount) leaks back
/// to the host. Further `pre_exec` steps added after this one run inside.
pub fn own_mount_namespace(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec and makes only
    // async-signal-safe system calls (unshare, mount) on static C strings.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
