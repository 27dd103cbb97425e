//! Real container runtimes for end-to-end tests: podman 4 (CNI backend) and containerd 1.6 with
//! `ctr run --cni`, each confined to a test [`Host`](crate::netns::Host) namespace and to a
//! private mount namespace.
//!
//! The private mount namespace ([`NsHolder`]) is held by a `sleep` process started inside the
//! host netns after `unshare(CLONE_NEWNS)` and a recursive `MS_SLAVE` remount of `/` (nothing
//! mounted inside propagates out); every runtime command and daemon of the test then
//! enters both namespaces (setns between fork and exec), so they all see the same private
//! mounts:
//! - tmpfs over `/run`, `/var/lib` and `/dev/shm` (runtime state, the libcni result cache, the
//!   podman lock segment): nothing the runtimes write there reaches the real file system, and
//!   it all disappears with the namespace;
//! - the test's CNI configuration directory bind-mounted over `/etc/cni/net.d` and a tmpfs
//!   `/opt` with `/opt/cni/bin` linking to the plugins (the fixed paths `ctr` reads).
//!
//! Everything else the runtimes keep (storage, containerd root/state/socket, logs) is under the
//! test's tempdir. [`NsHolder`]'s drop kills, by PID, every process living in its mount
//! namespace and all their descendants (daemons, shims, conmon, containers), then the holder.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{Host, NsFiles};

/// A `PATH` with the usual system directories (runtimes look up runc, conmon, shims there).
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Find `name` in [`SYSTEM_PATH`]; `Err` says which Debian package provides it.
pub fn require_tool(name: &str, package: &str) -> Result<PathBuf, String> {
    for dir in SYSTEM_PATH.split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "`{name}` is not installed: install the Debian package `{package}` (scripts/lib.sh PACKAGES lists it; run the \
         quick-start setup or `apt-get install {package}`)"
    ))
}

/// Exit status, stdout and stderr of a finished command, for error messages.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

// ---------------------------------------------------------------------------------------------
// The busybox image
// ---------------------------------------------------------------------------------------------

/// Whether the ELF file at `path` has no program interpreter (is statically linked).
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let data = fs::read(path)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a 64-bit ELF file", path.display()),
        )
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().map_err(|_| bad())?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > data.len() {
            return Err(bad());
        }
        if u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Build a root file system of Debian's statically linked busybox (`/bin/busybox` of
/// `busybox-static`, a link per applet, `/etc/passwd`) under `dir/rootfs` and pack it as
/// `dir/rootfs.tar`. Returns the tar path.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf, String> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err("/bin/busybox not found: install the Debian package `busybox-static`".into());
    }
    if !is_static_elf(busybox).map_err(|e| e.to_string())? {
        return Err(
            "/bin/busybox is dynamically linked: install `busybox-static` (not `busybox`)".into(),
        );
    }
    let root = dir.join("rootfs");
    let mk = |p: &Path| fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()));
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "run"] {
        mk(&root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("busybox --list: {e}"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(|e| format!("symlink {applet}: {e}"))?;
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    fs::write(root.join("etc/group"), "root:x:0:\n").map_err(|e| e.to_string())?;
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    if !out.status.success() {
        return Err(format!("tar failed: {}", text(&out)));
    }
    Ok(tar)
}

// ---------------------------------------------------------------------------------------------
// The private mount namespace
// ---------------------------------------------------------------------------------------------

/// A private mount namespace (see the module doc) inside a host netns, held by a `sleep`.
pub struct NsHolder {
    child: Option<Child>,
    pid: u32,
    mnt_ns: PathBuf,
    mnt_id: Option<(u64, u64)>,
    net_ns: PathBuf,
}

impl NsHolder {
    /// Create it in `host`'s netns. `cni_conf_dir` is bind-mounted over `/etc/cni/net.d`;
    /// `/opt/cni/bin` gets a link to each of `plugins`.
    pub fn new(host: &Host, cni_conf_dir: &Path, plugins: &[PathBuf]) -> Result<NsHolder, String> {
        let q = |p: &Path| crate::bench::shell_quote(&p.to_string_lossy());
        let mut script = String::from(
            "set -e\n\
             mount -n -t tmpfs -o mode=0755 berth-run /run\n\
             mkdir -p /run/netns /run/lock /run/containerd\n\
             mount -n -t tmpfs -o mode=0755 berth-varlib /var/lib\n\
             mkdir -p /var/lib/cni\n\
             mount -n -t tmpfs -o mode=1777 berth-shm /dev/shm\n\
             if [ ! -d /etc/cni/net.d ]; then mkdir -p /etc/cni/net.d; fi\n",
        );
        script.push_str(&format!(
            "mount -n --bind {} /etc/cni/net.d\n",
            q(cni_conf_dir)
        ));
        script.push_str("mount -n -t tmpfs -o mode=0755 berth-opt /opt\nmkdir -p /opt/cni/bin\n");
        for p in plugins {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            script.push_str(&format!(
                "ln -s {} /opt/cni/bin/{}\n",
                q(p),
                crate::bench::shell_quote(&name)
            ));
        }
        script.push_str("echo berth-holder-ready\nexec sleep 2147483647\n");

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", SYSTEM_PATH);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ns = NsFiles::open(&[(host.path(), libc::CLONE_NEWNET)]).map_err(|e| e.to_string())?;
        ns.install(&mut cmd).map_err(|e| e.to_string())?;
        // Mounts made in the new namespace must not propagate back (and `mount -n` keeps
        // /run/mount/utab untouched).
        netns_fixture::own_mount_namespace(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start the namespace holder: {e}"))?;
        drop(ns);
        let pid = child.id();
        let stdout = child.stdout.take();
        let mut holder = NsHolder {
            child: Some(child),
            pid,
            mnt_ns: PathBuf::from(format!("/proc/{pid}/ns/mnt")),
            mnt_id: None,
            net_ns: host.path().to_path_buf(),
        };
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if !line.contains("berth-holder-ready") {
            let mut err = String::new();
            if let Some(c) = holder.child.as_mut() {
                if let Some(mut e) = c.stderr.take() {
                    let _ = io::Read::read_to_string(&mut e, &mut err);
                }
            }
            return Err(format!(
                "the private mount namespace could not be set up: {err}"
            ));
        }
        let id = fs::metadata(&holder.mnt_ns)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if id.is_none() || id == own_mnt_ns() {
            // Never treat the root mount namespace as ours: the drop would kill its processes.
            return Err("the namespace holder is not in a private mount namespace".into());
        }
        holder.mnt_id = id;
        Ok(holder)
    }

    /// `path` as seen inside the namespace (through `/proc/<holder>/root`), e.g. a file in its
    /// private /run.
    pub fn path_inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// PID of the process holding the namespace (`/proc/<pid>/ns/mnt` is the namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A command that runs inside the private mount namespace and the host netns, with a clean
    /// environment (`PATH` = [`SYSTEM_PATH`]); spawn it with [`NsHolder::spawn`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::null());
        cmd
    }

    /// Spawn `cmd` inside the namespaces.
    pub fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let ns = NsFiles::open(&[
            (self.mnt_ns.as_path(), libc::CLONE_NEWNS),
            (self.net_ns.as_path(), libc::CLONE_NEWNET),
        ])?;
        ns.spawn(cmd)
    }

    /// Run `cmd` inside to completion, killing it after `timeout`.
    pub fn output(&self, mut cmd: Command, timeout: Duration) -> io::Result<(Output, bool)> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        output_within(self.spawn(cmd)?, timeout)
    }

    /// PIDs of every process in this mount namespace, and all their descendants.
    pub fn processes(&self) -> Vec<u32> {
        let Some(id) = self.mnt_id else {
            return Vec::new();
        };
        if Some(id) == own_mnt_ns() {
            return Vec::new();
        }
        let me = std::process::id();
        let mut parent_of = Vec::new();
        let mut members = Vec::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == me || pid == self.pid {
                    continue;
                }
                if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/mnt")) {
                    if (m.dev(), m.ino()) == id {
                        members.push(pid);
                    }
                }
                if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
                    if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
                        if let Some(ppid) = rest
                            .split_whitespace()
                            .nth(1)
                            .and_then(|s| s.parse::<u32>().ok())
                        {
                            parent_of.push((pid, ppid));
                        }
                    }
                }
            }
        }
        let mut all = members.clone();
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            for (child, parent) in &parent_of {
                if *parent == p && !all.contains(child) && *child != me {
                    all.push(*child);
                }
            }
            i += 1;
        }
        all
    }

    /// SIGKILL every process of [`NsHolder::processes`]; returns how many were signalled.
    pub fn kill_all(&self) -> usize {
        let pids = self.processes();
        for pid in &pids {
            // SAFETY: kill(2) on a pid that lives in our private mount namespace or descends
            // from such a process: processes this test started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        pids.len()
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        // Kill twice: a process may fork between the scan and the signal.
        for _ in 0..3 {
            if self.kill_all() == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait for `child` (its stdout and stderr piped), reading both pipes while it runs, so that
/// a large output cannot stall it; SIGKILL after `timeout`. The output, and whether it timed
/// out.
pub fn output_within(child: Child, timeout: Duration) -> io::Result<(Output, bool)> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let r = child.wait_with_output();
        let _ = tx.send(());
        r
    });
    let timed_out = rx.recv_timeout(timeout).is_err();
    if timed_out {
        // SAFETY: kill(2) on our own child's pid, not yet reaped (the waiter still waits).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let out = waiter
        .join()
        .map_err(|_| io::Error::other("waiter thread panicked"))??;
    Ok((out, timed_out))
}

/// Remove the cgroup `name` (a top-level cgroup a runtime created for this test, e.g. podman's
/// cgroup parent or containerd's namespace) from every hierarchy under /sys/fs/cgroup, children
/// first. Only empty cgroups can be removed; errors are ignored (nothing to remove, or still
/// busy). `name` must be unique to the test: nothing else is touched.
pub fn remove_cgroup_tree(name: &str) {
    fn rmdir_tree(p: &Path) {
        if let Ok(entries) = fs::read_dir(p) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(p);
    }
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return;
    }
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let p = h.path().join(name);
        if p.is_dir() {
            dirs.push(p);
        }
    }
    // Processes just killed may take a moment to leave their cgroups.
    for _ in 0..20 {
        dirs.retain(|d| {
            rmdir_tree(d);
            d.exists()
        });
        if dirs.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// (dev, inode) of this process's mount namespace.
fn own_mnt_ns() -> Option<(u64, u64)> {
    fs::metadata("/proc/self/ns/mnt")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

// ---------------------------------------------------------------------------------------------
// A daemon process
// ---------------------------------------------------------------------------------------------

/// A daemon started by a test; SIGTERM then SIGKILL (by PID) on drop.
pub struct Daemon {
    child: Option<Child>,
    /// Its log file (stdout + stderr).
    pub log: PathBuf,
}

impl Daemon {
    /// Spawn `cmd` through `holder` with stdout and stderr appended to `log`.
    pub fn start(holder: &NsHolder, mut cmd: Command, log: &Path) -> Result<Daemon, String> {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(f).stderr(f2);
        let child = holder
            .spawn(cmd)
            .map_err(|e| format!("start daemon: {e}"))?;
        Ok(Daemon {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stop it: SIGTERM, up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            netns_fixture::stop_child(&mut c, netns_fixture::STOP_GRACE);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------

/// podman with a private configuration, storage, run root and CNI configuration directory,
/// inside a test host's netns and a private mount namespace.
pub struct Podman {
    /// podman binary.
    pub bin: PathBuf,
    dir: PathBuf,
    /// The directory given to podman as `network_config_dir` (also `/etc/cni/net.d` inside).
    pub cni_dir: PathBuf,
    /// A cgroup parent unique to this instance (pass [`Podman::cgroup_parent_arg`] to
    /// `podman run`); removed on drop.
    pub cgroup_parent: String,
    /// Namespaces; dropped (processes killed) before the tempdir goes.
    pub holder: NsHolder,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for _ in 0..3 {
            if self.holder.kill_all() == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        remove_cgroup_tree(&self.cgroup_parent);
    }
}

impl Podman {
    /// `--cgroup-parent=/<unique>` for `podman run`.
    pub fn cgroup_parent_arg(&self) -> String {
        format!("--cgroup-parent=/{}", self.cgroup_parent)
    }

    /// Set podman up under `dir` (which must outlive it) for `host`; `plugin_dirs` are
    /// `cni_plugin_dirs`.
    pub fn new(host: &Host, dir: &Path, plugin_dirs: &[PathBuf]) -> Result<Podman, String> {
        let bin = require_tool("podman", "podman")?;
        require_tool("runc", "runc")?;
        require_tool("conmon", "conmon")?;
        let cni_dir = dir.join("cni");
        for d in ["cni", "storage", "run", "tmp", "libpod-tmp", "home"] {
            fs::create_dir_all(dir.join(d)).map_err(|e| format!("mkdir: {e}"))?;
        }
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|p| format!("{:?}", s(p.clone())))
            .collect();
        let containers_conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             \n[engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {:?}\n\
             runtime = \"runc\"\n\
             tmp_dir = {:?}\n\
             image_copy_tmp_dir = {:?}\n\
             \n[network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{}]\n\
             network_config_dir = {:?}\n",
            s(dir.join("events.log")),
            s(dir.join("libpod-tmp")),
            s(dir.join("tmp")),
            dirs.join(", "),
            s(cni_dir.clone()),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            s(dir.join("storage")),
            s(dir.join("run"))
        );
        fs::write(dir.join("containers.conf"), containers_conf).map_err(|e| e.to_string())?;
        fs::write(dir.join("storage.conf"), storage_conf).map_err(|e| e.to_string())?;
        let holder = NsHolder::new(host, &cni_dir, &[])?;
        let cgroup_parent = crate::unique_name("berth-podman");
        Ok(Podman {
            bin,
            dir: dir.to_path_buf(),
            cni_dir,
            cgroup_parent,
            holder,
        })
    }

    /// `podman <args>` inside, with the private configuration; (output, timed out).
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = self.holder.command(&self.bin);
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        cmd.env("CONTAINERS_CONF", s(self.dir.join("containers.conf")))
            .env("CONTAINERS_STORAGE_CONF", s(self.dir.join("storage.conf")))
            .env("TMPDIR", s(self.dir.join("tmp")))
            .env("HOME", s(self.dir.join("home")))
            .args(args);
        let (out, timed_out) = self
            .holder
            .output(cmd, timeout)
            .map_err(|e| format!("cannot run podman {}: {e}", args.join(" ")))?;
        if timed_out {
            return Err(format!(
                "podman {} timed out after {timeout:?}: {}",
                args.join(" "),
                text(&out)
            ));
        }
        Ok(out)
    }

    /// `podman <args>` that must exit 0; returns stdout.
    pub fn ok(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let out = self.run(args, timeout)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("podman {} failed: {}", args.join(" "), text(&out)))
        }
    }

    /// Write `<cni_dir>/<name>.conflist`.
    pub fn write_conflist(&self, name: &str, conflist: &serde_json::Value) -> Result<(), String> {
        let path = self.cni_dir.join(format!("{name}.conflist"));
        fs::write(
            &path,
            serde_json::to_vec_pretty(conflist).unwrap_or_default(),
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// containerd + ctr
// ---------------------------------------------------------------------------------------------

/// containerd with its own config, root, state and socket under a tempdir, in a test host's
/// netns and a private mount namespace (where `/etc/cni/net.d` and `/opt/cni/bin` are the
/// test's), and `ctr` talking to it.
pub struct Containerd {
    containerd: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// ctr binary.
    pub ctr: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace ctr uses (for `ctr run`: unique, also the containers' cgroup
    /// parent).
    pub namespace: String,
    namespace_is_cgroup: bool,
    daemon: Option<Daemon>,
    /// Namespaces; dropped after the daemon.
    pub holder: NsHolder,
}

impl Containerd {
    /// Start containerd under `dir` (must outlive it) in `host`, with `cni_conf_dir` as
    /// `/etc/cni/net.d` and `plugins` linked in `/opt/cni/bin`; its CRI plugin is disabled and
    /// `ctr` uses a unique namespace (which also names the containers' cgroup parent, removed
    /// on drop).
    pub fn start(
        host: &Host,
        dir: &Path,
        cni_conf_dir: &Path,
        plugins: &[PathBuf],
    ) -> Result<Containerd, String> {
        // The namespace names the containers' cgroup parent (/<namespace>/<id>): unique per test.
        let namespace = crate::unique_name("berth-ctr");
        Containerd::start_with(
            host,
            dir,
            cni_conf_dir,
            plugins,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            &namespace,
            true,
        )
    }

    /// Start containerd like [`Containerd::start`], with `extra` appended to the generated
    /// top-level configuration (root, state, gRPC and ttrpc sockets under `dir`), e.g. a
    /// `[plugins."io.containerd.grpc.v1.cri"]` section. `ctr` uses `namespace`; when
    /// `namespace_is_cgroup`, the cgroup `/<namespace>` is removed on drop (only for a name
    /// unique to the test: never for a shared one like `k8s.io`).
    pub fn start_with(
        host: &Host,
        dir: &Path,
        cni_conf_dir: &Path,
        plugins: &[PathBuf],
        extra: &str,
        namespace: &str,
        namespace_is_cgroup: bool,
    ) -> Result<Containerd, String> {
        let containerd = require_tool("containerd", "containerd")?;
        let ctr = require_tool("ctr", "containerd")?;
        require_tool("containerd-shim-runc-v2", "containerd")?;
        require_tool("runc", "runc")?;
        for d in ["root", "state"] {
            fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\n\
             root = {:?}\n\
             state = {:?}\n\
             {extra}\
             \n[grpc]\n  address = {:?}\n\
             \n[ttrpc]\n  address = {:?}\n",
            s(dir.join("root")),
            s(dir.join("state")),
            s(socket.clone()),
            s(dir.join("containerd.sock.ttrpc")),
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let holder = NsHolder::new(host, cni_conf_dir, plugins)?;
        let mut me = Containerd {
            containerd,
            config: config_path,
            log: dir.join("containerd.log"),
            ctr,
            socket,
            namespace: namespace.to_string(),
            namespace_is_cgroup,
            daemon: None,
            holder,
        };
        me.start_daemon()?;
        Ok(me)
    }

    /// Start the daemon (again, after [`Containerd::stop_daemon`]) on the same configuration,
    /// root and state, and wait until it answers `ctr version`.
    pub fn start_daemon(&mut self) -> Result<(), String> {
        if let Some(d) = self.daemon.as_mut() {
            if d.running() {
                return Ok(());
            }
        }
        let mut cmd = self.holder.command(&self.containerd);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--log-level")
            .arg("info");
        note(&self.log, "---- berth test: starting containerd ----");
        let mut daemon = Daemon::start(&self.holder, cmd, &self.log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !daemon.running() {
                return Err(format!(
                    "containerd exited during start-up; log:\n{}",
                    daemon.log_tail()
                ));
            }
            if self.socket.exists() {
                if let Ok(out) = self.run(&["version"], Duration::from_secs(10)) {
                    if out.status.success() {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer within 30 s; log:\n{}",
                    daemon.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Stop the daemon only (SIGTERM, grace, SIGKILL): shims and containers keep running, as
    /// when containerd is restarted on a node.
    pub fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    /// The daemon's gRPC socket (the CRI endpoint when the CRI plugin is configured).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// PID of the running daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    /// `ctr -a <socket> -n <namespace> <args>` inside.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = self.holder.command(&self.ctr);
        cmd.arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args);
        let (out, timed_out) = self
            .holder
            .output(cmd, timeout)
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        if timed_out {
            return Err(format!(
                "ctr {} timed out after {timeout:?}: {}",
                args.join(" "),
                text(&out)
            ));
        }
        Ok(out)
    }

    /// `ctr <args>` that must exit 0; returns stdout.
    pub fn ok(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let out = self.run(args, timeout)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {} failed: {}\ncontainerd log:\n{}",
                args.join(" "),
                text(&out),
                self.log_tail()
            ))
        }
    }

    /// The tail of containerd's log (every start appends to the same file).
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Kill every container and shim, stop the daemon, sweep the private mount namespace and
    /// remove the namespace cgroup (when it is the test's). What the drop does; repeatable.
    pub fn shutdown(&mut self) {
        // Containers and shims first (they live in the private mount namespace or below it),
        // then the daemon; the holder's drop sweeps whatever is left.
        let daemon_pid = self.daemon_pid();
        for pid in self.holder.processes() {
            if Some(pid) != daemon_pid {
                // SAFETY: kill(2) on a process of our private mount namespace (or below it).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        self.stop_daemon();
        for _ in 0..3 {
            if self.holder.kill_all() == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        if self.namespace_is_cgroup {
            remove_cgroup_tree(&self.namespace);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Append `line` to a log file, ignoring errors (diagnostics only).
pub fn note(log: &Path, line: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}
