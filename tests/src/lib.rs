//! Test harness for Berth.
//!
//! What lives here:
//! - locating the built binaries ([`bin_dir`], [`host_local_bin`], [`reference_host_local`]);
//! - [`CniRun`], a builder that execs a CNI plugin the way a container runtime does (a cleared
//!   environment, the `CNI_*` variables, the network configuration on stdin) and collects a
//!   [`CniOutput`]; [`CniRun::spawn`] and [`CniRun::spawn_watched`] for concurrency and crash tests;
//! - configuration builders ([`host_local_conf`], [`merge_top_level`]) and unique names
//!   ([`unique_name`]) so tests can run in parallel;
//! - read-only access to the berth-host-local SQLite store ([`read_allocations`],
//!   [`integrity_check`]);
//! - the reference host-local on-disk format ([`write_reference_reservation`], ...), used by the
//!   migration tests and the benchmark;
//! - small address helpers ([`parse_cidr`], [`subnet_contains`], [`v4_add`]);
//! - [`bench`]: statistics, machine description and markdown helpers shared by `berth-bench`;
//! - [`fixture`]: a per-test host-local network (own tempdir as `dataDir`) for terse tests;
//! - [`netns`]: kernel-level fixtures for the main plugins (a `Host` netns that runs the plugin,
//!   `Pod` netns attached through it, an `Outside` netns behind the host, state readers for
//!   links, addresses, nft sets, iptables chains and the attachment records), all removed by
//!   guards on drop;
//! - [`runtime`]: real container runtimes (podman, containerd + ctr) confined to a test's host
//!   netns and a private mount namespace, and the busybox image they run;
//! - [`cri`]: containerd's CRI plugin driven by crictl in a test host netns (pod sandboxes the
//!   way kubelet makes them), shared by the CRI tests and `berth-bench cri`.
//!
//! The core functions return `Result`s; only [`fixture`], which exists to make test code short,
//! panics (with a message saying what failed), as a test assertion would.

// Test-support crate: a fixture that cannot be set up fails the test, like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod cluster;
pub mod cri;
pub mod kubelet;
pub mod netns;
pub mod runtime;
pub mod svg;

/// Every CNI spec version berth plugins speak, oldest first.
pub const SPEC_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// File name of our IPAM plugin.
pub const HOST_LOCAL_BIN: &str = "berth-host-local";

/// Where Debian's containernetworking-plugins installs the reference host-local.
pub const REFERENCE_HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// The stderr line prefix berth plugins write when `BERTH_FAULT_PAUSE` makes them stop.
pub const FAULT_PAUSE_PREFIX: &str = "berth-fault: paused at ";

/// Default time limit for one plugin run; a plugin that takes longer is SIGKILLed and the
/// output is marked `timed_out`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Locating binaries
// ---------------------------------------------------------------------------------------------

/// Directory holding the built `berth-*` binaries.
///
/// `BERTH_BIN_DIR` wins when set. Otherwise it is derived from the running executable: test
/// binaries live in `target/release/deps`, `berth-bench` in `target/release`; the first of the
/// executable's directory and its ancestors (at most two levels up) that contains
/// `berth-host-local` is returned. When none does (nothing built yet), the best guess is
/// returned: the parent of a `deps` directory, else the executable's directory.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
        if !dir.is_empty() {
            return PathBuf::from(dir);
        }
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let mut candidate = Some(exe_dir.as_path());
    for _ in 0..3 {
        let Some(dir) = candidate else { break };
        if dir.join(HOST_LOCAL_BIN).is_file() {
            return dir.to_path_buf();
        }
        candidate = dir.parent();
    }
    if exe_dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(parent) = exe_dir.parent() {
            return parent.to_path_buf();
        }
    }
    exe_dir
}

/// Path of the `berth-host-local` under test: `BERTH_HOST_LOCAL` when set (lets a developer
/// point the suite at another build or another implementation), else `bin_dir()/berth-host-local`.
pub fn host_local_bin() -> PathBuf {
    match std::env::var_os("BERTH_HOST_LOCAL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => bin_dir().join(HOST_LOCAL_BIN),
    }
}

/// The reference host-local plugin, if installed (`BERTH_REFERENCE_HOST_LOCAL` overrides the
/// default location).
pub fn reference_host_local() -> Option<PathBuf> {
    let path = match std::env::var_os("BERTH_REFERENCE_HOST_LOCAL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(REFERENCE_HOST_LOCAL),
    };
    path.is_file().then_some(path)
}

// ---------------------------------------------------------------------------------------------
// Unique names
// ---------------------------------------------------------------------------------------------

pub use netns_fixture::unique_name;

// ---------------------------------------------------------------------------------------------
// Network configuration
// ---------------------------------------------------------------------------------------------

/// `{"cniVersion":..,"name":..,"type":"berth-test","ipam":<ipam>}` as bytes for stdin.
pub fn host_local_conf(cni_version: &str, name: &str, ipam: Value) -> Vec<u8> {
    conf_bytes(&host_local_conf_value(cni_version, name, ipam))
}

/// The same configuration as a JSON value, for tests that add keys before sending it.
pub fn host_local_conf_value(cni_version: &str, name: &str, ipam: Value) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": name,
        "type": "berth-test",
        "ipam": ipam,
    })
}

/// Copy every top-level key of `extra` (an object) into `conf` (an object), replacing existing
/// keys. Non-objects are left alone.
pub fn merge_top_level(conf: &mut Value, extra: &Value) {
    if let (Some(target), Some(source)) = (conf.as_object_mut(), extra.as_object()) {
        for (k, v) in source {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// Serialize a configuration value for stdin.
pub fn conf_bytes(conf: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail (all keys are strings).
    serde_json::to_vec(conf).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Running a plugin
// ---------------------------------------------------------------------------------------------

/// Builder for one plugin execution, as a CNI runtime performs it.
///
/// The child's environment is cleared except `PATH`; only the variables set on the builder are
/// passed. Each `CNI_*` variable is optional so tests can leave any of them out.
#[derive(Clone, Debug)]
pub struct CniRun {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
    timeout: Duration,
    netns: Option<PathBuf>,
}

impl CniRun {
    /// A run of `program` with no arguments, no `CNI_*` variables and empty stdin.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        CniRun {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            netns: None,
        }
    }

    /// Run the plugin inside the network namespace bound at `path` (e.g. `/run/netns/<name>`):
    /// the child enters it (setns) between fork and exec, so the plugin binary itself is the
    /// process that is timed and measured, as when a runtime living in that netns execs it.
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Set (or replace) an environment variable of the child.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        if let Some(slot) = self.env.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.env.push((key.to_string(), value));
        }
        self
    }

    /// Remove an environment variable set earlier on this builder.
    pub fn without_env(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// The value this builder will pass for `key`, if any.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `CNI_COMMAND`.
    pub fn command(self, command: &str) -> Self {
        self.env("CNI_COMMAND", command)
    }
    /// `CNI_CONTAINERID`.
    pub fn container_id(self, id: &str) -> Self {
        self.env("CNI_CONTAINERID", id)
    }
    /// `CNI_NETNS`.
    pub fn netns(self, netns: &str) -> Self {
        self.env("CNI_NETNS", netns)
    }
    /// `CNI_IFNAME`.
    pub fn ifname(self, ifname: &str) -> Self {
        self.env("CNI_IFNAME", ifname)
    }
    /// `CNI_ARGS`.
    pub fn cni_args(self, args: &str) -> Self {
        self.env("CNI_ARGS", args)
    }
    /// `CNI_PATH`.
    pub fn cni_path(self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref().to_string_lossy().into_owned();
        self.env("CNI_PATH", p)
    }
    /// A command-line argument (for the operator CLI).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
    /// Bytes written to the child's stdin (then stdin is closed).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }
    /// Time limit for [`CniRun::run`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// The program this builder runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    fn command_line(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start the plugin and feed it stdin; stdout and stderr are pipes the caller must drain
    /// (use [`wait_output`]). For starting many processes at once.
    pub fn spawn(&self) -> io::Result<Child> {
        let mut cmd = self.command_line();
        let ns = match &self.netns {
            Some(path) => Some(netns::NsFiles::open(&[(
                path.as_path(),
                libc::CLONE_NEWNET,
            )])?),
            None => None,
        };
        if let Some(ns) = &ns {
            ns.install(&mut cmd)?;
        }
        let spawned = cmd.spawn();
        drop(ns);
        let mut child = spawned?;
        if let Some(mut pipe) = child.stdin.take() {
            let data = self.stdin.clone();
            if data.len() <= 32 * 1024 {
                // Fits in the pipe buffer: cannot block. A child that exits without reading
                // makes this fail with EPIPE, which is the child's business, not ours.
                let _ = pipe.write_all(&data);
            } else {
                thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                });
            }
        }
        Ok(child)
    }

    /// Start the plugin with stderr streamed line by line, for waiting on a fault-injection
    /// pause line and then killing it.
    pub fn spawn_watched(&self) -> io::Result<WatchedChild> {
        let mut child = self.spawn()?;
        let stdout = child.stdout.take().map(drain_thread);
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                loop {
                    let mut line = Vec::new();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if tx
                                .send(String::from_utf8_lossy(&line).into_owned())
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            });
        }
        Ok(WatchedChild {
            child,
            stdout,
            stderr_lines: rx,
            stderr_seen: String::new(),
            stderr_closed: false,
        })
    }

    /// Run the plugin to completion (or until the time limit, then SIGKILL).
    pub fn run(&self) -> io::Result<CniOutput> {
        let start = Instant::now();
        let child = self.spawn()?;
        let mut out = wait_output(child, self.timeout)?;
        out.elapsed = start.elapsed();
        Ok(out)
    }

    /// Run the plugin to completion under ptrace and return, with its output, the peak resident
    /// set of the plugin process itself (`VmHWM` of its address space, read from
    /// `/proc/<pid>/status` when it stops at exit), in KiB.
    ///
    /// Unlike `ru_maxrss` from wait4 ([`CniOutput::max_rss_kb`]), this excludes the address space
    /// the child had before exec (a copy of, or with vfork the very, parent's; Linux folds its
    /// high-water mark into `ru_maxrss` at exec) and the children the plugin waited for (its
    /// IPAM). For measurements only: the ptrace stops slow the run down, and there is no time
    /// limit. Must be called from the thread that will wait (ptrace binds the tracer thread).
    pub fn run_peak_rss(&self) -> io::Result<(CniOutput, Option<u64>)> {
        let start = Instant::now();
        let mut cmd = self.command_line();
        let ns = match &self.netns {
            Some(path) => Some(netns::NsFiles::open(&[(
                path.as_path(),
                libc::CLONE_NEWNET,
            )])?),
            None => None,
        };
        if let Some(ns) = &ns {
            ns.install(&mut cmd)?;
        }
        // SAFETY: runs in the forked child; ptrace(PTRACE_TRACEME) is a plain system call. The
        // child then stops with SIGTRAP right after exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        drop(ns);
        let mut child = spawned?;
        if let Some(mut pipe) = child.stdin.take() {
            let data = self.stdin.clone();
            thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let stdout = child.stdout.take().map(drain_thread);
        let stderr = child.stderr.take().map(drain_thread);
        let pid = child.id() as libc::pid_t;
        let mut hwm = None;
        let mut exec_seen = false;
        let (status, rss) = loop {
            let mut status: libc::c_int = 0;
            // SAFETY: an all-zero `rusage` is a valid value (plain integers and timevals).
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 writes only into the status int and the rusage we own, both live for
            // the call.
            let rc = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut usage) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(err);
            }
            if libc::WIFSTOPPED(status) {
                let sig = libc::WSTOPSIG(status);
                let event = (status >> 16) & 0xffff;
                // SAFETY: ptrace requests on our own stopped tracee, from the tracer thread.
                unsafe {
                    if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
                        hwm = read_vm_hwm(pid as u32);
                        libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
                    } else if sig == libc::SIGTRAP && !exec_seen {
                        exec_seen = true;
                        let opts =
                            (libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL) as libc::c_long;
                        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts);
                        libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
                    } else {
                        // A signal for the plugin (SIGCHLD from its IPAM, Go's SIGURG, ...).
                        libc::ptrace(libc::PTRACE_CONT, pid, 0, sig as libc::c_long);
                    }
                }
                continue;
            }
            use std::os::unix::process::ExitStatusExt;
            break (
                ExitStatus::from_raw(status),
                u64::try_from(usage.ru_maxrss).ok().filter(|kb| *kb > 0),
            );
        };
        let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        let mut out = CniOutput::new(status, stdout, stderr, start.elapsed(), false);
        out.max_rss_kb = rss;
        Ok((out, hwm))
    }

    /// A shell-like rendering of this run, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.netns {
            s.push_str(&format!("[in netns {}] ", ns.display()));
        }
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={v} "));
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s.push_str(&format!(" <<< {}", String::from_utf8_lossy(&self.stdin)));
        s
    }
}

fn drain_thread<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// `VmHWM` (peak resident set of the current address space) of `pid`, in KiB.
pub fn read_vm_hwm(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Block until `pid` has exited, without reaping it (so the pid cannot be reused while the
/// caller may still signal it).
fn wait_exit_no_reap(pid: u32) {
    loop {
        // SAFETY: waitid only writes into the zeroed siginfo_t we own; P_PID with WNOWAIT leaves
        // the child for Child::wait to reap.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Collect the output of a spawned plugin, killing it (SIGKILL) if it runs past `timeout`.
pub fn wait_output(mut child: Child, timeout: Duration) -> io::Result<CniOutput> {
    let start = Instant::now();
    let stdout: Option<JoinHandle<Vec<u8>>> =
        child.stdout.take().map(|p: ChildStdout| drain_thread(p));
    let stderr: Option<JoinHandle<Vec<u8>>> =
        child.stderr.take().map(|p: ChildStderr| drain_thread(p));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        wait_exit_no_reap(pid);
        let _ = tx.send(());
    });
    let timed_out = match rx.recv_timeout(timeout) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
        Err(RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            true
        }
    };
    let (status, max_rss_kb) = reap_with_rusage(&mut child)?;
    let elapsed = start.elapsed();
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let mut out = CniOutput::new(status, stdout, stderr, elapsed, timed_out);
    out.max_rss_kb = max_rss_kb;
    Ok(out)
}

/// Reap `child` with wait4(2) to get its resource usage along with the status. `ru_maxrss`
/// (KiB) is the peak resident set of the child or of any descendant it waited for (Linux fills
/// it from RUSAGE_BOTH), e.g. a main plugin and the IPAM plugin it exec'd.
fn reap_with_rusage(child: &mut Child) -> io::Result<(ExitStatus, Option<u64>)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero `rusage` is a valid value (plain integers and timevals).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into the status int and the rusage we own, both live for
        // the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            let rss = u64::try_from(usage.ru_maxrss).ok().filter(|kb| *kb > 0);
            return Ok((ExitStatus::from_raw(status), rss));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if err.raw_os_error() == Some(libc::ECHILD) {
            // Already reaped elsewhere: fall back to what std knows.
            return Ok((child.wait()?, None));
        }
        return Err(err);
    }
}

/// A spawned plugin whose stderr is read line by line.
pub struct WatchedChild {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr_lines: Receiver<String>,
    stderr_seen: String,
    stderr_closed: bool,
}

impl WatchedChild {
    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Wait until a stderr line contains `needle`. Fails with `TimedOut` after `timeout`, or
    /// with `UnexpectedEof` when the child closes stderr (exits) first. The stderr read so far is
    /// in the error message.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> io::Result<()> {
        if self.stderr_seen.contains(needle) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push_str(&line);
                    if line.contains(needle) {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no stderr line containing {needle:?} within {timeout:?}; stderr so far: {}", self.stderr_seen),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stderr_closed = true;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("child closed stderr before printing {needle:?}; stderr: {}", self.stderr_seen),
                    ));
                }
            }
        }
    }

    /// Wait for the `berth-fault: paused at <point>` line.
    pub fn wait_for_fault_pause(&mut self, point: &str, timeout: Duration) -> io::Result<()> {
        self.wait_for_stderr(&format!("{FAULT_PAUSE_PREFIX}{point}"), timeout)
    }

    /// SIGKILL the child and collect what it printed.
    pub fn kill(mut self) -> io::Result<CniOutput> {
        self.child.kill()?;
        self.finish(false)
    }

    /// Wait (up to `timeout`, then SIGKILL) for the child to exit and collect what it printed.
    pub fn wait(mut self, timeout: Duration) -> io::Result<CniOutput> {
        let pid = self.child.id();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            wait_exit_no_reap(pid);
            let _ = tx.send(());
        });
        let timed_out = matches!(rx.recv_timeout(timeout), Err(RecvTimeoutError::Timeout));
        if timed_out {
            let _ = self.child.kill();
        }
        self.finish(timed_out)
    }

    fn finish(mut self, timed_out: bool) -> io::Result<CniOutput> {
        let start = Instant::now();
        let status = self.child.wait()?;
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !self.stderr_closed {
            // The reader thread ends at EOF, which follows the exit.
            while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
                self.stderr_seen.push_str(&line);
            }
        }
        let stderr = std::mem::take(&mut self.stderr_seen).into_bytes();
        Ok(CniOutput::new(
            status,
            stdout,
            stderr,
            start.elapsed(),
            timed_out,
        ))
    }
}

/// What a plugin run produced.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Raw stderr.
    pub stderr: Vec<u8>,
    /// stdout parsed as JSON, when it parses.
    pub json: Option<Value>,
    /// Wall time from spawn (or from the start of waiting, for spawned children) to exit.
    pub elapsed: Duration,
    /// The run hit its time limit and was killed.
    pub timed_out: bool,
    /// Peak resident set size in KiB from wait4(2) (the process, or a descendant it reaped,
    /// whichever peaked higher); None when not measured.
    pub max_rss_kb: Option<u64>,
}

impl CniOutput {
    fn new(
        status: ExitStatus,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        elapsed: Duration,
        timed_out: bool,
    ) -> Self {
        let json = serde_json::from_slice(&stdout).ok();
        CniOutput {
            status,
            stdout,
            stderr,
            json,
            elapsed,
            timed_out,
            max_rss_kb: None,
        }
    }

    /// Exit code (`None` when killed by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as (lossy) text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The CNI error `code` from stdout, when stdout is an error object.
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// The CNI error `msg` (empty when absent).
    pub fn error_msg(&self) -> String {
        self.json
            .as_ref()
            .and_then(|j| j.get("msg"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    /// The CNI error `msg` and `details` together, for "does the message name X" checks.
    pub fn error_text(&self) -> String {
        let details = self
            .json
            .as_ref()
            .and_then(|j| j.get("details"))
            .and_then(Value::as_str)
            .unwrap_or("");
        format!("{} {}", self.error_msg(), details)
    }

    /// stderr mentions a Rust panic.
    pub fn panicked(&self) -> bool {
        self.stderr_text().contains("panicked")
    }

    /// Addresses (with prefix, as printed) of a result in any spec version.
    pub fn addresses(&self) -> Vec<String> {
        self.json.as_ref().map(result_addresses).unwrap_or_default()
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status={:?} timed_out={} elapsed={:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.timed_out,
            self.elapsed,
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

/// Addresses (as printed, `a.b.c.d/len`) in a CNI result of any version: `ips[].address`
/// (0.3.0 and later) or `ip4.ip` / `ip6.ip` (0.1.0, 0.2.0).
pub fn result_addresses(result: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            if let Some(a) = ip.get("address").and_then(Value::as_str) {
                out.push(a.to_string());
            }
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(a) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            out.push(a.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/// The address part of `a.b.c.d/len` (or the whole string when there is no `/`).
pub fn strip_prefix_len(addr: &str) -> &str {
    addr.split('/').next().unwrap_or(addr)
}

/// Parse `addr/len`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    let ip: IpAddr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

/// Parse an address given with or without `/len`.
pub fn parse_ip_loose(s: &str) -> Option<IpAddr> {
    strip_prefix_len(s).parse().ok()
}

fn ip_bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// Is `ip` inside `subnet` (`a.b.c.d/len`)?
pub fn subnet_contains(subnet: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = parse_cidr(subnet) else {
        return false;
    };
    if net.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let (n, width) = ip_bits(net);
    let (a, _) = ip_bits(ip);
    let host_bits = width - u32::from(len);
    if host_bits >= 128 {
        return true;
    }
    (n >> host_bits) == (a >> host_bits)
}

/// `base + n` for IPv4 (saturating at 255.255.255.255).
pub fn v4_add(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).saturating_add(n))
}

/// `base + n` for IPv6 (saturating).
pub fn v6_add(base: Ipv6Addr, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(base).saturating_add(n))
}

// ---------------------------------------------------------------------------------------------
// The berth-host-local store
// ---------------------------------------------------------------------------------------------

/// `<dataDir>/<network>/ipam.db`.
pub fn store_path(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network).join("ipam.db")
}

/// One row of the `allocations` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// As stored (with or without `/len`; compare with [`Allocation::ip`]).
    pub address: String,
    /// Container id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

impl Allocation {
    /// The address without any `/len`.
    pub fn ip(&self) -> &str {
        strip_prefix_len(&self.address)
    }
}

fn open_store_read_only(db: &Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

/// Every row of `allocations`, opened read-only. Fails when the file does not exist.
pub fn read_allocations(db: &Path) -> rusqlite::Result<Vec<Allocation>> {
    let conn = open_store_read_only(db)?;
    let mut stmt = conn.prepare(
        "SELECT CAST(address AS TEXT), CAST(container_id AS TEXT), CAST(ifname AS TEXT) FROM allocations ORDER BY address",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Allocation {
            address: row.get::<_, Option<String>>(0)?.unwrap_or_default(),
            container_id: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ifname: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// `PRAGMA integrity_check` on the store, opened read-only (`"ok"` when healthy).
pub fn integrity_check(db: &Path) -> rusqlite::Result<String> {
    let conn = open_store_read_only(db)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let lines: rusqlite::Result<Vec<String>> = rows.collect();
    Ok(lines?.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// The reference host-local on-disk format
// ---------------------------------------------------------------------------------------------

/// Write one reservation file `<dir>/<ip>` with content `<container>\r\n<ifname>` (or just
/// `<container>`, the pre-0.8 format, when `ifname` is `None`). Creates `dir`.
pub fn write_reference_reservation(
    dir: &Path,
    ip: &str,
    container: &str,
    ifname: Option<&str>,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let content = match ifname {
        Some(ifn) => format!("{container}\r\n{ifn}"),
        None => container.to_string(),
    };
    fs::write(dir.join(ip), content)
}

/// Write `<dir>/last_reserved_ip.<range_set_index>`.
pub fn write_reference_last_reserved(
    dir: &Path,
    range_set_index: usize,
    ip: &str,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(format!("last_reserved_ip.{range_set_index}")), ip)
}

/// Create the empty `<dir>/lock` file the reference plugin flocks.
pub fn write_reference_lock(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map(|_| ())
}

/// Prefill `count` reservations in reference format: consecutive IPv4 addresses from `first`,
/// files content `<container_prefix><i>\r\n<ifname>`, plus `last_reserved_ip.0` = the last one
/// and `lock`. Returns the last address written (None when `count` is 0).
pub fn prefill_reference_v4(
    dir: &Path,
    first: Ipv4Addr,
    count: u32,
    container_prefix: &str,
    ifname: &str,
) -> io::Result<Option<Ipv4Addr>> {
    fs::create_dir_all(dir)?;
    write_reference_lock(dir)?;
    let mut last = None;
    for i in 0..count {
        let ip = v4_add(first, i);
        write_reference_reservation(
            dir,
            &ip.to_string(),
            &format!("{container_prefix}{i}"),
            Some(ifname),
        )?;
        last = Some(ip);
    }
    if let Some(ip) = last {
        write_reference_last_reserved(dir, 0, &ip.to_string())?;
    }
    Ok(last)
}

// ---------------------------------------------------------------------------------------------
// Benchmark helpers
// ---------------------------------------------------------------------------------------------

/// Helpers shared by `berth-bench` subcommands.
pub mod bench {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Median of durations (mean of the two middle ones for an even count); None when empty.
    pub fn median(samples: &[Duration]) -> Option<Duration> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort();
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2
        })
    }

    /// The `p`th percentile (0 < p <= 100) by nearest rank: the smallest sample with at least
    /// p% of the samples at or below it (p90 of 12 samples is the 11th smallest); None when
    /// empty.
    pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    /// `a / b` as f64, None when `b` is zero.
    pub fn ratio(a: Duration, b: Duration) -> Option<f64> {
        let b = b.as_secs_f64();
        (b > 0.0).then(|| a.as_secs_f64() / b)
    }

    /// [`ms`] of an optional duration, "n/a" without one.
    pub fn ms_opt(d: Option<Duration>) -> String {
        d.map(ms).unwrap_or_else(|| "n/a".into())
    }

    /// [`ratio`] of two optional durations.
    pub fn ratio_opt(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => None,
        }
    }

    /// Milliseconds with 2 decimals.
    pub fn ms(d: Duration) -> String {
        format!("{:.2}", d.as_secs_f64() * 1000.0)
    }

    /// `Some(x)` -> x with `decimals`, None -> `n/a`.
    pub fn opt_f(x: Option<f64>, decimals: usize) -> String {
        match x {
            Some(x) => format!("{x:.decimals$}"),
            None => "n/a".to_string(),
        }
    }

    /// Kernel release (`uname -r`).
    pub fn kernel_release() -> String {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }

    /// Number of CPUs available to this process (`nproc`).
    pub fn nproc() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    /// CPU model name from /proc/cpuinfo.
    pub fn cpu_model() -> String {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim();
                if k == "model name" || k == "Model" || k == "cpu model" {
                    return v.trim().to_string();
                }
            }
        }
        "unknown".to_string()
    }

    /// Current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
    pub fn utc_now() -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }

    /// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
    pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// The command line of this process, shell-quoted.
    pub fn command_line() -> String {
        std::env::args()
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Quote `s` for a POSIX shell when it needs it.
    pub fn shell_quote(s: &str) -> String {
        let safe = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c));
        if safe {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    }

    /// Append a report section to the `--markdown` file (created if missing), and say so.
    pub fn append_markdown(path: &std::path::Path, md: &str) -> Result<(), String> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("--markdown {}: {e}", path.display()))?;
        f.write_all(md.as_bytes())
            .map_err(|e| format!("--markdown {}: {e}", path.display()))?;
        println!("\nmarkdown section appended to {}", path.display());
        Ok(())
    }

    /// A markdown table from a header and rows.
    pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
        let mut s = String::new();
        s.push_str(&format!("| {} |\n", header.join(" | ")));
        s.push_str(&format!(
            "|{}\n",
            header.iter().map(|_| "---|").collect::<String>()
        ));
        for r in rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }

    /// A plain-text table with aligned columns.
    pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.len());
                }
            }
        }
        let fmt_row = |cells: Vec<&str>| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:>w$}", c, w = widths.get(i).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut s = fmt_row(header.to_vec());
        s.push('\n');
        for r in rows {
            s.push_str(&fmt_row(r.iter().map(String::as_str).collect()));
            s.push('\n');
        }
        s
    }

    /// Parse `--name value`, `--name=value` and bare `--switch` arguments. Flags in
    /// `with_value` need a value, flags in `switches` take none (their value is `"true"`);
    /// anything else, and positional arguments, are errors. Later occurrences win.
    pub fn parse_flags(
        args: &[String],
        with_value: &[&str],
        switches: &[&str],
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let mut out = std::collections::BTreeMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if with_value.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("--{name} needs a value"))?,
                };
                out.insert(name.to_string(), value);
            } else if switches.contains(&name) {
                if inline.is_some() {
                    return Err(format!("--{name} takes no value"));
                }
                out.insert(name.to_string(), "true".to_string());
            } else {
                return Err(format!("unknown option --{name}"));
            }
        }
        Ok(out)
    }

    /// The machine description every markdown section starts with.
    pub fn machine_markdown() -> String {
        format!(
            "- date: {}\n- kernel: `{}`\n- nproc: {}\n- CPU: {}\n- command: `{}`\n",
            utc_now(),
            kernel_release(),
            nproc(),
            cpu_model(),
            command_line()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Test fixture
// ---------------------------------------------------------------------------------------------

/// A host-local network private to one test: its own tempdir as `dataDir` and a unique name.
///
/// Methods panic with a descriptive message when the plugin cannot be started or the store
/// cannot be read: they are test assertions.
pub mod fixture {
    use super::*;

    /// One test network.
    pub struct HostLocalNet {
        /// Owns the data directory (removed on drop).
        pub dir: tempfile::TempDir,
        /// Network name (unique).
        pub name: String,
        /// cniVersion of every configuration this network produces.
        pub cni_version: String,
        /// The `ipam` object, `dataDir` and `type` included.
        pub ipam: Value,
        /// Extra top-level configuration keys (e.g. `runtimeConfig`).
        pub extra: Value,
        /// Plugin binary.
        pub plugin: PathBuf,
        /// Environment added to every run (e.g. `BERTH_BOOT_ID`).
        pub env: Vec<(String, String)>,
    }

    /// The netns path every fixture ADD uses unless told otherwise (host-local never opens it).
    pub const NETNS: &str = "/var/run/netns/berth-test";

    impl HostLocalNet {
        /// A network with `ipam` (without `dataDir`; it is added) for `berth-host-local`.
        pub fn new(cni_version: &str, ipam: Value) -> Self {
            Self::with_plugin(host_local_bin(), cni_version, ipam)
        }

        /// The same with another plugin binary (e.g. the reference host-local).
        pub fn with_plugin(plugin: PathBuf, cni_version: &str, mut ipam: Value) -> Self {
            let dir = tempfile::Builder::new()
                .prefix("berth-test-")
                .tempdir()
                .expect("create a tempdir for dataDir");
            if let Some(obj) = ipam.as_object_mut() {
                obj.entry("type").or_insert_with(|| json!("host-local"));
                obj.insert("dataDir".into(), json!(dir.path().to_string_lossy()));
            }
            HostLocalNet {
                dir,
                name: unique_name("net"),
                cni_version: cni_version.to_string(),
                ipam,
                extra: json!({}),
                plugin,
                env: Vec::new(),
            }
        }

        /// Builder-style: add an environment variable to every run.
        pub fn with_env(mut self, key: &str, value: &str) -> Self {
            self.env.push((key.to_string(), value.to_string()));
            self
        }

        /// The data directory.
        pub fn data_dir(&self) -> &Path {
            self.dir.path()
        }

        /// `<dataDir>/<name>`: where both the reference files and our store live.
        pub fn network_dir(&self) -> PathBuf {
            self.dir.path().join(&self.name)
        }

        /// `<dataDir>/<name>/ipam.db`.
        pub fn store(&self) -> PathBuf {
            store_path(self.dir.path(), &self.name)
        }

        /// The configuration value (with `extra` merged).
        pub fn conf_value(&self) -> Value {
            let mut v = host_local_conf_value(&self.cni_version, &self.name, self.ipam.clone());
            merge_top_level(&mut v, &self.extra);
            v
        }

        /// The configuration with more top-level keys (`prevResult`, `args`, ...).
        pub fn conf_with(&self, extra: Value) -> Vec<u8> {
            let mut v = self.conf_value();
            merge_top_level(&mut v, &extra);
            conf_bytes(&v)
        }

        /// The configuration bytes.
        pub fn conf(&self) -> Vec<u8> {
            conf_bytes(&self.conf_value())
        }

        /// A run with only CNI_COMMAND, CNI_PATH, the fixture env and the configuration.
        pub fn bare(&self, command: &str) -> CniRun {
            let mut run = CniRun::new(&self.plugin)
                .command(command)
                .cni_path(bin_dir())
                .stdin(self.conf());
            for (k, v) in &self.env {
                run = run.env(k, v.clone());
            }
            run
        }

        /// A run of `command` for (container, ifname) with NETNS, ready to `.run()`.
        pub fn cmd(&self, command: &str, container: &str, ifname: &str) -> CniRun {
            self.bare(command)
                .container_id(container)
                .ifname(ifname)
                .netns(NETNS)
        }

        /// ADD on eth0.
        pub fn add(&self, container: &str) -> CniOutput {
            self.add_if(container, "eth0")
        }

        /// ADD on `ifname`.
        pub fn add_if(&self, container: &str, ifname: &str) -> CniOutput {
            run_or_panic(&self.cmd("ADD", container, ifname))
        }

        /// ADD on eth0 that must succeed and give exactly `expected_count` addresses; returns them
        /// without prefix length.
        pub fn add_ok(&self, container: &str, expected_count: usize) -> Vec<IpAddr> {
            let out = self.add(container);
            assert!(out.success(), "ADD {container} failed: {}", out.describe());
            assert!(
                !out.panicked(),
                "ADD {container} panicked: {}",
                out.describe()
            );
            let addrs = out.addresses();
            assert_eq!(
                addrs.len(),
                expected_count,
                "ADD {container}: unexpected address count: {}",
                out.describe()
            );
            addrs
                .iter()
                .map(|a| {
                    parse_ip_loose(a).unwrap_or_else(|| {
                        panic!("unparseable address {a:?} in {}", out.describe())
                    })
                })
                .collect()
        }

        /// DEL on eth0.
        pub fn del(&self, container: &str) -> CniOutput {
            self.del_if(container, "eth0")
        }

        /// DEL on `ifname`.
        pub fn del_if(&self, container: &str, ifname: &str) -> CniOutput {
            run_or_panic(&self.cmd("DEL", container, ifname))
        }

        /// Rows of the store (panics when it cannot be read).
        pub fn allocations(&self) -> Vec<Allocation> {
            read_allocations(&self.store()).unwrap_or_else(|e| {
                panic!(
                    "cannot read allocations from {}: {e}",
                    self.store().display()
                )
            })
        }

        /// Rows of the store belonging to `container`.
        pub fn allocations_of(&self, container: &str) -> Vec<Allocation> {
            self.allocations()
                .into_iter()
                .filter(|a| a.container_id == container)
                .collect()
        }

        /// Run the operator CLI of the plugin binary with `args` (no CNI_* env).
        pub fn cli(&self, args: &[&str]) -> CniOutput {
            let mut run = CniRun::new(&self.plugin);
            for a in args {
                run = run.arg(*a);
            }
            for (k, v) in &self.env {
                run = run.env(k, v.clone());
            }
            run_or_panic(&run)
        }
    }

    /// Run, panicking (with the command line) when the plugin cannot be started.
    pub fn run_or_panic(run: &CniRun) -> CniOutput {
        run.run().unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); build it with `cargo build --release -p ipam` or set BERTH_BIN_DIR",
                run.program().display()
            )
        })
    }

    /// Assert a run failed the CNI way: exit status 1, stdout an error object with `code` and a
    /// `cniVersion`, no panic. Returns the error text (msg + details).
    pub fn assert_cni_error(out: &CniOutput, code: u64, context: &str) -> String {
        match check_cni_error(out, code) {
            Ok(text) => text,
            Err(why) => panic!("{context}: {why}: {}", out.describe()),
        }
    }

    /// The non-panicking form of [`assert_cni_error`]: `Err(reason)` when the run is not a
    /// well-formed CNI error with `code`.
    pub fn check_cni_error(out: &CniOutput, code: u64) -> Result<String, String> {
        if out.panicked() {
            return Err("plugin panicked".into());
        }
        if out.timed_out {
            return Err("plugin hung".into());
        }
        if out.exit_code() != Some(1) {
            return Err(format!("expected exit status 1, got {:?}", out.exit_code()));
        }
        let json = out.json.as_ref().ok_or("stdout is not JSON")?;
        let got = json.get("code").and_then(Value::as_u64);
        if got != Some(code) {
            return Err(format!("expected error code {code}, got {got:?}"));
        }
        if json
            .get("msg")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("error has no msg".into());
        }
        if json.get("cniVersion").and_then(Value::as_str).is_none() {
            return Err("error has no cniVersion".into());
        }
        Ok(out.error_text())
    }
}
