//! A QEMU guest with an NFS client, for tests of node-side NFS mounts (the
//! host kernel has no NFS client and cannot load modules).
//!
//! The guest runs Debian's cloud kernel (prepared by
//! `scripts/guest-kernel.sh`) with an initramfs built per boot: static
//! busybox, the kernel modules for virtio-net, NFS v3/v4 and loop (in
//! dependency order, from the kernel's `modules.dep`), any files a test adds
//! (binaries get their shared libraries too), an optional daemon, and a shell
//! service on guest port 7000.
//!
//! Networking is QEMU's user mode (slirp), started inside a netns the test
//! owns (normally the `NfsServer`'s): the guest is 10.0.2.15, and 10.0.2.2 is
//! that netns' loopback, where the NFS server listens. Guest ports are
//! forwarded to 127.0.0.1:<free port> *in that netns*, so host-side
//! connections must be made from inside it ([`connect_in_netns`]). Nothing
//! leaves the machine: the netns has no route anywhere.
//!
//! TCG only: KVM opens on these machines, but this kernel then stops with an
//! emulation failure (cmpxchg16b).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::nfs_server::{command_in_netns, find_program, in_netns, kill_child};

/// The guest port of the shell service (always forwarded).
pub const SHELL_PORT: u16 = 7000;
/// The guest's address on the slirp network.
pub const GUEST_ADDR: &str = "10.0.2.15";
/// Where the daemon's stdout+stderr go in the guest (also copied to the
/// console).
pub const DAEMON_LOG: &str = "/var/log/daemon.log";

/// Modules the guest loads (their dependencies are added from
/// `modules.dep`): virtio-net for the network, the NFS clients, loop.
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtio_net", "nfsv3", "nfsv4", "loop"];

const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_SH_TIMEOUT: Duration = Duration::from_secs(120);

static SH_COUNTER: AtomicUsize = AtomicUsize::new(0);
/// `scripts/guest-kernel.sh` runs at most once per test process; parallel
/// tests wait for that one run and share its outcome.
static PREPARE: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// TCP connect to 127.0.0.1:`port` from inside `netns` (where QEMU's port
/// forwards listen). The socket is created on a thread that joined the
/// netns, and keeps that namespace when used from any other thread.
pub fn connect_in_netns(netns: &str, port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })?
}

/// What to put into and run in the guest.
#[derive(Clone, Debug, Default)]
pub struct GuestOptions {
    /// Host path -> absolute guest path. Dynamically linked executables get
    /// the libraries `ldd` lists and the loader copied along.
    pub files: Vec<(PathBuf, String)>,
    /// A shell command line started after networking is up, e.g.
    /// `/bin/berth-csi --endpoint tcp://0.0.0.0:10000 --mode node`. Its
    /// output goes to [`DAEMON_LOG`] in the guest and to the console; its PID
    /// to /run/daemon.pid.
    pub daemon: Option<String>,
    /// Guest TCP ports to forward (the shell port is always forwarded).
    pub forward: Vec<u16>,
    /// Modules to load in addition to [`DEFAULT_MODULES`] (names as in
    /// `modules.dep`, e.g. "xfs"); dependencies are added.
    pub modules: Vec<String>,
    /// Guest memory (default 512 MiB).
    pub memory_mib: Option<u32>,
    /// How long `boot` waits for the shell (default 120 s).
    pub boot_timeout: Option<Duration>,
}

impl GuestOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a host file at `guest_path` in the initramfs.
    pub fn file(mut self, host: impl Into<PathBuf>, guest_path: impl Into<String>) -> Self {
        self.files.push((host.into(), guest_path.into()));
        self
    }

    /// Sets the daemon command line (see [`GuestOptions::daemon`]).
    pub fn daemon(mut self, cmdline: impl Into<String>) -> Self {
        self.daemon = Some(cmdline.into());
        self
    }

    /// Forwards a guest TCP port (see [`Guest::host_port`]).
    pub fn forward(mut self, guest_port: u16) -> Self {
        self.forward.push(guest_port);
        self
    }

    /// Loads an extra kernel module (with its dependencies).
    pub fn module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = Some(timeout);
        self
    }
}

/// A booted guest; killed and cleaned up on drop.
pub struct Guest {
    netns: String,
    dir: tempfile::TempDir,
    qemu: Option<Child>,
    /// guest port -> host port (in the netns, on 127.0.0.1)
    ports: HashMap<u16, u16>,
    console: PathBuf,
    kernel_version: String,
    boot_time: Duration,
}

impl Guest {
    /// Builds an initramfs, starts QEMU in `netns` and waits (bounded) until
    /// the shell service answers. An error starting with "skipping" means
    /// the machine lacks something (no qemu, no guest kernel, not root).
    pub fn boot(netns: &str, opts: GuestOptions) -> Result<Guest, String> {
        if !csi_driver::driver::running_as_root() {
            return Err("skipping: the guest fixture needs root (it runs QEMU in a netns)".into());
        }
        let qemu = find_program("qemu-system-x86_64")
            .ok_or("skipping: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")?;
        let busybox = find_program("busybox")
            .ok_or("skipping: busybox not found (apt-get install busybox-static)")?;
        if find_program("cpio").is_none() {
            return Err("skipping: cpio not found (apt-get install cpio)".into());
        }
        let kernel = KernelDir::find()?;

        let dir = tempfile::Builder::new()
            .prefix("bguest-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let console = dir.path().join("console.log");
        let initrd = build_initramfs(dir.path(), &kernel, &busybox, &opts)?;

        // Pick free ports in the netns. All listeners stay open until every
        // port is chosen so the ports differ; QEMU binds them right after.
        let mut guest_ports = vec![SHELL_PORT];
        for p in &opts.forward {
            if !guest_ports.contains(p) {
                guest_ports.push(*p);
            }
        }
        let host_ports = in_netns(netns, || -> io::Result<Vec<u16>> {
            let listeners = guest_ports
                .iter()
                .map(|_| TcpListener::bind(("127.0.0.1", 0)))
                .collect::<io::Result<Vec<_>>>()?;
            listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect()
        })
        .and_then(|r| r)
        .map_err(|e| format!("pick free ports in netns {netns}: {e}"))?;
        let ports: HashMap<u16, u16> = guest_ports.iter().copied().zip(host_ports).collect();

        let mut netdev = String::from("user,id=n0");
        for g in &guest_ports {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{g}", ports[g]));
        }
        let qemu_log =
            File::create(dir.path().join("qemu.log")).map_err(|e| format!("qemu log: {e}"))?;
        let qemu_log2 = qemu_log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(qemu);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .arg("-m")
            .arg(opts.memory_mib.unwrap_or(512).to_string())
            // No display, no default devices; the serial console goes to a
            // file (stdin stays /dev/null) and there is no monitor.
            .args(["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-monitor", "none"])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-netdev")
            .arg(&netdev)
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(qemu_log)
            .stderr(qemu_log2)
            .process_group(0);
        command_in_netns(&mut cmd, netns).map_err(|e| e.to_string())?;

        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| format!("start qemu: {e}"))?;
        let mut guest = Guest {
            netns: netns.to_string(),
            dir,
            qemu: Some(child),
            ports,
            console,
            kernel_version: kernel.version,
            boot_time: Duration::ZERO,
        };
        // From here on an error drops `guest`, which kills QEMU.
        guest.wait_for_shell(started, opts.boot_timeout.unwrap_or(DEFAULT_BOOT_TIMEOUT))?;
        guest.boot_time = started.elapsed();
        Ok(guest)
    }

    /// Runs `cmd` with the guest's /bin/sh (stdin /dev/null, stderr merged
    /// into stdout) and returns (exit status, output). Waits up to 120 s.
    /// Background processes started by `cmd` must redirect their output, or
    /// they write into a closed connection.
    pub fn sh(&self, cmd: &str) -> Result<(i32, String), String> {
        self.sh_timeout(cmd, DEFAULT_SH_TIMEOUT)
    }

    /// Like [`sh`](Self::sh), but a non-zero status is an error carrying the
    /// output; returns the output.
    pub fn sh_ok(&self, cmd: &str) -> Result<String, String> {
        match self.sh(cmd)? {
            (0, out) => Ok(out),
            (rc, out) => Err(format!("guest `{cmd}` exited {rc}: {out}")),
        }
    }

    /// [`sh`](Self::sh) with an explicit timeout.
    pub fn sh_timeout(&self, cmd: &str, timeout: Duration) -> Result<(i32, String), String> {
        let deadline = Instant::now() + timeout;
        // A marker the command's own output will not contain.
        let marker = format!(
            "__berth_rc_{}_{}=",
            std::process::id(),
            SH_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // Run the command in its own `sh -c` so a syntax error or an `exit`
        // in it still lets the marker line with its status come out.
        let script = format!(
            "sh -c '{}' </dev/null 2>&1; echo \"{marker}$?\"\n",
            cmd.replace('\'', r"'\''")
        );
        let mut s = self
            .connect(SHELL_PORT)
            .map_err(|e| format!("connect to guest shell: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        s.write_all(script.as_bytes())
            .map_err(|e| format!("send to guest shell: {e}"))?;
        // EOF on the shell's stdin: it exits after our one line.
        let _ = s.shutdown(Shutdown::Write);

        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(res) = parse_marker(&buf, &marker) {
                return Ok(res);
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "guest `{cmd}` timed out after {timeout:?}; output so far: {}",
                            String::from_utf8_lossy(&buf)
                        ));
                    }
                }
                Err(e) => return Err(format!("read from guest shell: {e}")),
            }
        }
        Err(format!(
            "guest shell closed without an exit status for `{cmd}`; output: {}",
            String::from_utf8_lossy(&buf)
        ))
    }

    /// The host port (on 127.0.0.1 in the netns) forwarded to `guest_port`.
    /// Panics if the port was not asked for in [`GuestOptions::forward`]:
    /// that is a bug in the test.
    pub fn host_port(&self, guest_port: u16) -> u16 {
        match self.ports.get(&guest_port) {
            Some(p) => *p,
            None => panic!(
                "guest port {guest_port} is not forwarded (add it with GuestOptions::forward)"
            ),
        }
    }

    /// A gRPC channel to a server in the guest on a forwarded port. The
    /// connector dials from inside the netns, where the forward listens.
    pub async fn grpc_channel(
        &self,
        guest_port: u16,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let netns = self.netns().to_string();
        let port = self.host_port(guest_port);
        tonic::transport::Endpoint::from_static("http://guest")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let netns = netns.clone();
                async move {
                    let s = connect_in_netns(&netns, port)?;
                    s.set_nonblocking(true)?;
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::TcpStream::from_std(s)?,
                    ))
                }
            }))
            .await
    }

    /// A TCP connection to `guest_port` through the forward, made in the
    /// netns. For tonic: `set_nonblocking(true)` then
    /// `tokio::net::TcpStream::from_std` in a custom connector.
    pub fn connect(&self, guest_port: u16) -> io::Result<TcpStream> {
        let port = self.ports.get(&guest_port).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("guest port {guest_port} is not forwarded"),
            )
        })?;
        connect_in_netns(&self.netns, port)
    }

    /// The serial console so far (kernel messages, init's and the daemon's
    /// output), for failure messages.
    pub fn console(&self) -> String {
        let mut text = fs::read_to_string(&self.console).unwrap_or_default();
        if let Ok(q) = fs::read_to_string(self.dir.path().join("qemu.log")) {
            if !q.trim().is_empty() {
                text.push_str(&format!("\n==> qemu stderr <==\n{q}"));
            }
        }
        text
    }

    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// The daemon's log in the guest (over the shell channel).
    pub fn daemon_log(&self) -> Result<String, String> {
        self.sh(&format!("cat {DAEMON_LOG}")).map(|(_, out)| out)
    }

    /// From starting QEMU to the first answer of the shell service.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    pub fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// QEMU's PID, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(|c| c.id())
    }

    fn wait_for_shell(&mut self, started: Instant, timeout: Duration) -> Result<(), String> {
        let deadline = started + timeout;
        loop {
            if let Some(q) = self.qemu.as_mut() {
                if let Ok(Some(st)) = q.try_wait() {
                    self.qemu = None;
                    return Err(format!(
                        "qemu exited during boot ({st})\n{}",
                        self.console()
                    ));
                }
            }
            let last = match self.sh_timeout("echo up", Duration::from_secs(3)) {
                Ok((0, out)) if out.trim() == "up" => return Ok(()),
                Ok(other) => format!("{other:?}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "guest shell did not answer within {timeout:?} (last: {last})\n{}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            kill_child(&mut q);
        }
        // The TempDir removes the initramfs tree, the archive and the logs.
    }
}

/// Finds `marker<status>\n` in the output; returns (status, output before).
fn parse_marker(buf: &[u8], marker: &str) -> Option<(i32, String)> {
    let text = String::from_utf8_lossy(buf);
    let at = text.find(marker)?;
    let rest = &text[at + marker.len()..];
    let end = rest.find('\n')?;
    let rc = rest[..end].trim().parse().ok()?;
    Some((rc, text[..at].to_string()))
}

/// A prepared guest kernel: `vmlinuz`, `VERSION`, `lib/modules/<version>`.
struct KernelDir {
    vmlinuz: PathBuf,
    modules: PathBuf,
    version: String,
}

impl KernelDir {
    /// `$BERTH_GUEST_KERNEL`, else `<workspace>/target/guest-kernel`; runs
    /// `scripts/guest-kernel.sh` once if it is not prepared yet.
    fn find() -> Result<KernelDir, String> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .ok_or("no workspace dir above the crate")?;
        let dir = std::env::var_os("BERTH_GUEST_KERNEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/guest-kernel"));
        if let Some(k) = Self::load(&dir) {
            return Ok(k);
        }
        let outcome = {
            let mut slot = PREPARE.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| prepare_kernel(&workspace, &dir))
                .clone()
        };
        if let Err(why) = outcome {
            return Err(format!(
                "skipping: no guest kernel in {}: {why}",
                dir.display()
            ));
        }
        Self::load(&dir).ok_or_else(|| {
            format!(
                "skipping: {} is incomplete after scripts/guest-kernel.sh (need vmlinuz, VERSION, lib/modules/<ver>/modules.dep)",
                dir.display()
            )
        })
    }

    fn load(dir: &Path) -> Option<KernelDir> {
        let version = fs::read_to_string(dir.join("VERSION"))
            .ok()?
            .trim()
            .to_string();
        let vmlinuz = dir.join("vmlinuz");
        let modules = dir.join("lib/modules").join(&version);
        (!version.is_empty() && vmlinuz.is_file() && modules.join("modules.dep").is_file())
            .then_some(KernelDir {
                vmlinuz,
                modules,
                version,
            })
    }
}

fn prepare_kernel(workspace: &Path, dir: &Path) -> Result<(), String> {
    let script = workspace.join("scripts/guest-kernel.sh");
    if !script.is_file() {
        return Err(format!("{} not found", script.display()));
    }
    eprintln!("guest: preparing a guest kernel with {}", script.display());
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Module name as the kernel sees it: file name without `.ko[.xz|.zst|.gz]`,
/// `-` and `_` equal.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Resolves `wanted` modules and their dependencies from `modules.dep` into
/// a load order (dependencies first). Built-in modules are skipped.
fn module_load_order(moddir: &Path, wanted: &[String]) -> Result<Vec<PathBuf>, String> {
    let dep_text = fs::read_to_string(moddir.join("modules.dep"))
        .map_err(|e| format!("read {}/modules.dep: {e}", moddir.display()))?;
    let builtin: HashSet<String> = fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    // name -> (path relative to moddir, dependency paths)
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep_text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(module), (module.to_string(), list));
    }

    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some((path, list)) = deps.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            return Err(format!(
                "module {name} is neither in modules.dep nor built in"
            ));
        };
        for d in list {
            visit(&module_name(d), deps, builtin, seen, order)?;
        }
        order.push(PathBuf::from(path));
        Ok(())
    }

    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Copies a module into the initramfs, decompressed (busybox insmod may
/// lack xz/zstd support).
fn install_module(src: &Path, dst: &Path) -> Result<(), String> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::copy(src, dst)
            .map(|_| ())
            .map_err(|e| format!("copy {name}: {e}")),
        Some(tool) => {
            let out = File::create(dst).map_err(|e| format!("create {}: {e}", dst.display()))?;
            let status = Command::new(tool)
                .arg("-dc")
                .arg(src)
                .stdout(out)
                .status()
                .map_err(|e| format!("{tool} -dc {name}: {e} (install {tool})"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{tool} -dc {name}: {status}"))
            }
        }
    }
}

/// Path in the tree for an absolute guest path.
fn in_tree(root: &Path, guest_path: &str) -> PathBuf {
    root.join(guest_path.trim_start_matches('/'))
}

/// Copies a host file to `guest_path`, replacing a busybox link there.
fn put_file(root: &Path, host: &Path, guest_path: &str) -> Result<(), String> {
    let dst = in_tree(root, guest_path);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    if dst.symlink_metadata().is_ok() {
        fs::remove_file(&dst).map_err(|e| format!("replace {}: {e}", dst.display()))?;
    }
    // fs::copy follows symlinks and keeps the mode bits.
    fs::copy(host, &dst).map_err(|e| format!("copy {} -> {guest_path}: {e}", host.display()))?;
    Ok(())
}

/// Shared libraries (and the loader) `ldd` lists for `bin`; empty for a
/// static binary or a non-ELF file.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let Some(ldd) = find_program("ldd") else {
        return Ok(Vec::new());
    };
    let out = Command::new(ldd)
        .arg(bin)
        .output()
        .map_err(|e| format!("ldd {}: {e}", bin.display()))?;
    // ldd fails ("not a dynamic executable") for static binaries and scripts.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(format!("ldd {}: {line}", bin.display()));
        }
        // "libc.so.6 => /lib/.../libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no path.
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Builds `<dir>/initramfs.cpio` (newc, uncompressed: QEMU loads it
/// directly, and gunzip under TCG would only cost boot time).
fn build_initramfs(
    dir: &Path,
    kernel: &KernelDir,
    busybox: &Path,
    opts: &GuestOptions,
) -> Result<PathBuf, String> {
    let root = dir.join("root");
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "mnt",
        "root",
        "var/log",
        "lib/modules",
    ] {
        fs::create_dir_all(root.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }

    // busybox and a link per applet, where `--list-full` says it lives.
    put_file(&root, busybox, "/bin/busybox")?;
    for lib in shared_libs(busybox)? {
        put_file(&root, &lib, &lib.to_string_lossy())?;
    }
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| format!("busybox --list-full: {e}"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = in_tree(&root, applet.trim());
        if applet.trim().is_empty() || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        symlink("/bin/busybox", &link).map_err(|e| format!("link {applet}: {e}"))?;
    }
    if !root.join("usr/bin/nc").exists() && !root.join("bin/nc").exists() {
        return Err("skipping: this busybox has no nc applet (needed for the guest shell)".into());
    }

    // Kernel modules in load order, numbered so the order is visible.
    let mut wanted: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(opts.modules.iter().cloned());
    let order = module_load_order(&kernel.modules, &wanted)?;
    let mut load_list = String::new();
    for (i, rel) in order.iter().enumerate() {
        let name = format!("{:02}-{}.ko", i, module_name(&rel.to_string_lossy()));
        install_module(
            &kernel.modules.join(rel),
            &root.join("lib/modules").join(&name),
        )?;
        load_list.push_str(&name);
        load_list.push('\n');
    }
    write_file(&root.join("etc/modules.order"), &load_list, 0o644)?;

    // Test files, with the libraries of dynamic executables.
    for (host, guest_path) in &opts.files {
        if !guest_path.starts_with('/') {
            return Err(format!("guest path {guest_path} must be absolute"));
        }
        put_file(&root, host, guest_path)?;
        for lib in shared_libs(host)? {
            put_file(&root, &lib, &lib.to_string_lossy())?;
        }
    }

    write_file(
        &root.join("etc/hosts"),
        "127.0.0.1 localhost guest\n",
        0o644,
    )?;
    write_file(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write_file(&root.join("etc/group"), "root:x:0:\n", 0o644)?;
    write_file(
        &root.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files\n",
        0o644,
    )?;
    let mtab = root.join("etc/mtab");
    if mtab.symlink_metadata().is_err() {
        symlink("/proc/mounts", &mtab).map_err(|e| format!("link /etc/mtab: {e}"))?;
    }
    if let Some(daemon) = &opts.daemon {
        // `exec` so the PID in /run/daemon.pid is the daemon's own.
        write_file(
            &root.join("etc/daemon.sh"),
            &format!("exec {daemon}\n"),
            0o755,
        )?;
    }
    // busybox nc does not pass stderr to the -e program; this does.
    write_file(
        &root.join("bin/shell-svc"),
        "#!/bin/sh\nexec 2>&1\ncd /\nexec /bin/sh\n",
        0o755,
    )?;
    write_file(&root.join("init"), &init_script(), 0o755)?;

    let archive = dir.join("initramfs.cpio");
    write_cpio(&root, &archive)?;
    Ok(archive)
}

fn init_script() -> String {
    format!(
        r#"#!/bin/sh
# PID 1 of the test guest (written by csi-driver/tests/common/guest.rs).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so init starts without stdio.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r m; do
    insmod "/lib/modules/$m" || echo "berth-guest: insmod $m failed"
done </etc/modules.order
ip link set lo up
ip link set eth0 up
ip addr add {GUEST_ADDR}/24 dev eth0
ip route add default via 10.0.2.2
hostname guest
if [ -f /etc/daemon.sh ]; then
    /bin/sh /etc/daemon.sh </dev/null >{DAEMON_LOG} 2>&1 &
    echo $! >/run/daemon.pid
    tail -f {DAEMON_LOG} &
fi
# The shell service: -ll keeps listening and forks one /bin/shell-svc per
# connection; the loop restarts nc should it ever exit.
(while true; do nc -ll -p {SHELL_PORT} -e /bin/shell-svc; sleep 1; done) </dev/null &
echo "berth-guest: ready"
while true; do sleep 3600; done
"#
    )
}

/// `cpio -o -H newc` of everything under `root` (paths relative to it,
/// symlinks stored as links, owned by root).
fn write_cpio(root: &Path, archive: &Path) -> Result<(), String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> io::Result<()> {
        for e in fs::read_dir(root.join(rel))? {
            let e = e?;
            let rel_child = rel.join(e.file_name());
            out.push(rel_child.to_string_lossy().into_owned());
            if e.file_type()?.is_dir() {
                walk(root, &rel_child, out)?;
            }
        }
        Ok(())
    }
    let mut names = Vec::new();
    walk(root, Path::new(""), &mut names).map_err(|e| format!("list initramfs tree: {e}"))?;
    names.sort();

    let out = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(archive)
        .map_err(|e| format!("create {}: {e}", archive.display()))?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start cpio: {e}"))?;
    let mut input = names.join("\n");
    input.push('\n');
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("feed cpio: {e}"))?;
    }
    let res = child.wait_with_output().map_err(|e| format!("cpio: {e}"))?;
    if !res.status.success() {
        return Err(format!(
            "cpio failed ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    Ok(())
}
