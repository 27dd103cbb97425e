//! A real NFS server for tests: rpcbind + nfs-ganesha (FSAL VFS) serving a
//! temporary directory, inside a network namespace made for the fixture.
//!
//! Why this shape:
//! - The host kernel has no NFS client, so clients are QEMU guests (see
//!   `guest.rs`) started in the same netns. QEMU's user-mode network maps the
//!   guest's 10.0.2.2 to the netns loopback, so the netns' `lo` also carries
//!   10.0.2.2/32: processes in the netns (e.g. a CSI controller) then reach
//!   the server under the same address the guests use.
//! - rpcbind and ganesha insist on `/run/rpcbind.sock`, `/run/rpcbind.lock`
//!   and `/run/ganesha`. Each fixture therefore gets a private mount
//!   namespace with its own tmpfs on `/run`, so several fixtures can run in
//!   parallel and nothing is left in the host's `/run`. A small holder
//!   process keeps that mount namespace alive, so ganesha can be restarted
//!   into it.
//! - Everything (processes, netns, temp dir) is removed in `Drop`, also when
//!   a test fails half way. The netns and the daemon plumbing are the shared
//!   `netns-fixture` crate ([`Netns`]); this file adds what is NFS-specific.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netns_fixture::{find_program, is_root, kill_child, reap_stale, Netns, NsFiles};
use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

/// Network namespaces made by this fixture are named `bnfs-<pid>-<n>-<t>`.
pub const NETNS_PREFIX: &str = "bnfs-";
/// The server's address, as seen from the netns and from QEMU guests in it.
pub const SERVER_ADDR: &str = "10.0.2.2";
/// The NFSv4 pseudo path (and, with `Mount_Path_Pseudo`, the v3 mount path).
pub const SHARE: &str = "/export";

const NFS_PORT: u16 = 2049;
const RPCBIND_PORT: u16 = 111;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True for an error that means "this machine cannot run the test", which
/// tests report and skip instead of failing.
pub fn is_skip(err: &str) -> bool {
    err.starts_with("skipping")
}

/// The running server. See the module docs.
pub struct NfsServer {
    netns: Netns,
    dir: tempfile::TempDir,
    export: PathBuf,
    config: PathBuf,
    /// Keeps the private mount namespace (with its /run tmpfs) alive.
    holder: Option<Child>,
    rpcbind: Option<Child>,
    ganesha: Option<Child>,
}

impl NfsServer {
    /// Starts rpcbind and ganesha in a new netns and waits (bounded) until
    /// NFS on 2049 and the MOUNT service registered with rpcbind answer.
    /// An error starting with "skipping" means the machine lacks something
    /// (see [`is_skip`]).
    pub fn start() -> Result<NfsServer, String> {
        if !is_root() {
            return Err(
                "skipping: the NFS server fixture needs root (netns, mount namespaces)".into(),
            );
        }
        for prog in ["ganesha.nfsd", "rpcbind", "ip"] {
            if find_program(prog).is_none() {
                return Err(format!(
                    "skipping: {prog} not found (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind iproute2)"
                ));
            }
        }
        if !Path::new("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so").exists()
            && !Path::new("/usr/lib/ganesha/libfsalvfs.so").exists()
        {
            // Not fatal by itself (other layouts exist), but say so early.
            eprintln!("nfs_server: libfsalvfs.so not found where Debian puts it; is nfs-ganesha-vfs installed?");
        }
        reap_stale(NETNS_PREFIX.trim_end_matches('-'));

        let dir = tempfile::Builder::new()
            .prefix("bnfs-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // `lo` is up; it also carries the address guests use for the server.
        let netns = Netns::try_create(NETNS_PREFIX.trim_end_matches('-'))?;
        netns.try_exec(&["ip", "addr", "add", "10.0.2.2/32", "dev", "lo"])?;
        let export = dir.path().join("export");
        let recovery = dir.path().join("recovery");
        let config = dir.path().join("ganesha.conf");
        let mut server = NfsServer {
            netns,
            export,
            config,
            dir,
            holder: None,
            rpcbind: None,
            ganesha: None,
        };
        // From here on, an early return drops `server`, which cleans up.
        for d in [&server.export, &recovery] {
            fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        // Guests write as root (No_Root_Squash), but keep it open to anyone
        // so tests that map users still work.
        fs::set_permissions(&server.export, fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("chmod export: {e}"))?;
        fs::write(&server.config, ganesha_config(&server.export, &recovery))
            .map_err(|e| format!("write ganesha config: {e}"))?;

        server.holder = Some(server.spawn_holder()?);
        server.start_rpcbind()?;
        server.start_ganesha()?;
        Ok(server)
    }

    /// The network namespace the server (and its clients) live in.
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// Host path of the exported directory.
    pub fn export_dir(&self) -> &Path {
        &self.export
    }

    /// "10.0.2.2".
    pub fn addr(&self) -> &str {
        SERVER_ADDR
    }

    /// "/export".
    pub fn share(&self) -> &str {
        SHARE
    }

    /// The fixture's temp dir (config, logs, export, recovery).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Ganesha's and rpcbind's logs, for failure messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for name in ["ganesha.log", "ganesha.out", "rpcbind.log"] {
            let path = self.dir.path().join(name);
            if let Ok(text) = fs::read_to_string(&path) {
                out.push_str(&format!("==> {} <==\n{text}\n", path.display()));
            }
        }
        out
    }

    /// PIDs of the processes this fixture runs (for leak checks).
    pub fn pids(&self) -> Vec<u32> {
        [&self.holder, &self.rpcbind, &self.ganesha]
            .into_iter()
            .flatten()
            .map(|c| c.id())
            .collect()
    }

    /// Ganesha's PID, if it runs.
    pub fn ganesha_pid(&self) -> Option<u32> {
        self.ganesha.as_ref().map(|c| c.id())
    }

    /// Freezes ganesha (SIGSTOP): clients see a server that stops answering
    /// while TCP connections stay up.
    /// Returns once every ganesha thread is stopped: kill(2) only queues
    /// the signal, and a thread still running could answer one more call.
    pub fn pause(&self) -> Result<(), String> {
        self.signal_ganesha(Signal::SIGSTOP)?;
        let pid = self.ganesha_pid().ok_or("ganesha is not running")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            if Instant::now() > deadline {
                return Err(format!("ganesha ({pid}) did not stop within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Undoes [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) -> Result<(), String> {
        self.signal_ganesha(Signal::SIGCONT)
    }

    /// Kills ganesha for good (SIGKILL, like a crash); rpcbind stays.
    pub fn kill(&mut self) {
        if let Some(mut g) = self.ganesha.take() {
            kill_child(&mut g);
        }
    }

    /// Kills ganesha if it runs and starts it again with the same config and
    /// export (Graceless, so it serves at once), then waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.start_ganesha()
    }

    /// Makes `cmd` run in the server's netns (e.g. a CSI controller that
    /// mounts nothing but talks NFS/RPC to 10.0.2.2).
    pub fn run_in_netns<'a>(&self, cmd: &'a mut Command) -> io::Result<&'a mut Command> {
        self.netns.command(cmd)
    }

    /// Spawns `cmd` in the server's netns.
    pub fn spawn_in_netns(&self, cmd: &mut Command) -> io::Result<Child> {
        self.run_in_netns(cmd)?.spawn()
    }

    /// TCP connect to `port` on 10.0.2.2 from inside the netns.
    pub fn connect(&self, port: u16, timeout: Duration) -> io::Result<TcpStream> {
        let addr = server_sockaddr(port);
        self.netns
            .run(|| TcpStream::connect_timeout(&addr, timeout))?
    }

    /// An RPC NULL call to NFSv3 on 2049: Ok when ganesha answers within
    /// `timeout` (a paused or killed server does not).
    pub fn ping(&self, timeout: Duration) -> Result<(), String> {
        let mut s = self
            .connect(NFS_PORT, timeout)
            .map_err(|e| format!("connect 2049: {e}"))?;
        rpc_call(&mut s, 100003, 3, 0, &[], timeout).map(|_| ())
    }

    /// Asks rpcbind (GETPORT) where MOUNT v3 over TCP listens; 0 if not
    /// registered.
    pub fn mountd_port(&self, timeout: Duration) -> Result<u16, String> {
        let mut s = self
            .connect(RPCBIND_PORT, timeout)
            .map_err(|e| format!("connect rpcbind: {e}"))?;
        // GETPORT(prog=MOUNT, vers=3, prot=TCP, port=0) to PMAP v2.
        let args = [100005u32, 3, libc::IPPROTO_TCP as u32, 0];
        let body = rpc_call(&mut s, 100000, 2, 3, &args, timeout)?;
        let port = body
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("short GETPORT reply")?;
        u16::try_from(port).map_err(|_| format!("bad port {port} from rpcbind"))
    }

    /// Starts `sleep infinity` in the netns inside a new mount namespace
    /// with a tmpfs on /run. The daemons later join that mount namespace.
    fn spawn_holder(&self) -> Result<Child, String> {
        let sleep = find_program("sleep").ok_or("skipping: sleep not found")?;
        let mut cmd = Command::new(sleep);
        cmd.arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.netns.command(&mut cmd).map_err(|e| e.to_string())?;
        let run_dir = CString::new("/run").map_err(|e| e.to_string())?;
        let tmpfs = CString::new("tmpfs").map_err(|e| e.to_string())?;
        let opts = CString::new("mode=0755").map_err(|e| e.to_string())?;
        // Slave, not private: mounts the test makes on the host later (e.g.
        // under the export dir) still show up in here, but nothing made in
        // here (the /run tmpfs) leaks out.
        netns_fixture::own_mount_namespace(&mut cmd);
        // SAFETY: only a mount(2) on pointers to CStrings owned by the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::mount(
                    tmpfs.as_ptr(),
                    run_dir.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    opts.as_ptr().cast(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|e| format!("start mount-namespace holder: {e}"))
    }

    /// A command that starts in the netns and in the holder's mount
    /// namespace, logging stdout+stderr to `log` in the temp dir.
    fn daemon_command(&self, program: &Path, log: &str) -> Result<Command, String> {
        let holder = self.holder.as_ref().ok_or("no mount-namespace holder")?;
        // The netns first, then the holder's mount namespace (the forked child is
        // single-threaded, as joining a mount namespace requires).
        let mnt = PathBuf::from(format!("/proc/{}/ns/mnt", holder.id()));
        let ns = NsFiles::open(&[
            (self.netns.path(), libc::CLONE_NEWNET),
            (&mnt, libc::CLONE_NEWNS),
        ])
        .map_err(|e| format!("open the server's namespaces: {e}"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .map_err(|e| format!("open {log}: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        ns.install(&mut cmd).map_err(|e| e.to_string())?;
        Ok(cmd)
    }

    fn start_rpcbind(&mut self) -> Result<(), String> {
        let prog = find_program("rpcbind").ok_or("skipping: rpcbind not found")?;
        let mut cmd = self.daemon_command(&prog, "rpcbind.log")?;
        // -f: stay in the foreground so the PID we hold is the daemon's.
        cmd.arg("-f");
        let child = cmd.spawn().map_err(|e| format!("start rpcbind: {e}"))?;
        self.rpcbind = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = self.rpcbind.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.rpcbind = None;
                    return Err(format!("rpcbind exited at start ({st})\n{}", self.log()));
                }
            }
            if self
                .connect(RPCBIND_PORT, Duration::from_millis(500))
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "rpcbind did not listen on 111 within {READY_TIMEOUT:?}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_ganesha(&mut self) -> Result<(), String> {
        let prog = find_program("ganesha.nfsd").ok_or("skipping: ganesha.nfsd not found")?;
        let mut cmd = self.daemon_command(&prog, "ganesha.out")?;
        // -F: foreground (the PID is the daemon's); logs and pid file in the
        // temp dir instead of syslog and /run.
        cmd.arg("-F")
            .arg("-L")
            .arg(self.dir.path().join("ganesha.log"))
            .arg("-p")
            .arg(self.dir.path().join("ganesha.pid"))
            .arg("-f")
            .arg(&self.config);
        let child = cmd.spawn().map_err(|e| format!("start ganesha: {e}"))?;
        self.ganesha = Some(child);
        self.wait_ganesha_ready()
    }

    /// Ready means: NFS answers an RPC NULL on 2049, and rpcbind knows a
    /// MOUNT v3/TCP port that accepts connections (v3 clients need it).
    fn wait_ganesha_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = self.ganesha.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.ganesha = None;
                    return Err(format!("ganesha exited at start ({st})\n{}", self.log()));
                }
            }
            let step = Duration::from_millis(500);
            let res = self.ping(step).and_then(|()| {
                let port = self.mountd_port(step)?;
                if port == 0 {
                    return Err("MOUNT not registered with rpcbind yet".to_string());
                }
                self.connect(port, step)
                    .map(|_| ())
                    .map_err(|e| format!("connect mountd port {port}: {e}"))
            });
            let last = match res {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "ganesha not ready within {READY_TIMEOUT:?} (last: {last})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal_ganesha(&self, sig: Signal) -> Result<(), String> {
        let g = self.ganesha.as_ref().ok_or("ganesha is not running")?;
        send_signal(Pid::from_raw(g.id() as i32), sig).map_err(|e| format!("signal ganesha: {e}"))
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in
/// /proc/<pid>/task/<tid>/stat, the field after the parenthesised name).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(true)
    })
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        // Ganesha first (it talks to rpcbind on the way down), then rpcbind,
        // then the holder; with the last process gone the mount namespace
        // and its /run tmpfs disappear by themselves.
        for child in [self.ganesha.take(), self.rpcbind.take(), self.holder.take()]
            .iter_mut()
            .flatten()
        {
            kill_child(child);
        }
        // Then the `Netns` guard kills anything else a test started in the
        // netns and forgot, and deletes the netns.
        // The TempDir removes config, logs, export and recovery dirs.
    }
}

fn server_sockaddr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 2], port))
}

fn ganesha_config(export: &Path, recovery: &Path) -> String {
    format!(
        r#"# Written by the test fixture (csi-driver/tests/common/nfs_server.rs).
NFS_CORE_PARAM {{
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "{SHARE}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    # Tests change the export directory behind the server's back (to play
    # a second client, or a directory replaced on the server); make ganesha
    # revalidate instead of serving cached attributes.
    Attr_Expiration_Time = 0;
    FSAL {{
        Name = VFS;
    }}
}}
"#,
        recovery = recovery.display(),
        export = export.display(),
    )
}

/// One ONC RPC call over a TCP stream (record marking, AUTH_NULL), enough
/// for NULL and GETPORT. Returns the reply's result bytes.
fn rpc_call(
    s: &mut TcpStream,
    prog: u32,
    vers: u32,
    proc_: u32,
    args: &[u32],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let xid = 0x6265_7274u32 ^ COUNTER.fetch_add(1, Ordering::SeqCst) as u32;
    // xid, CALL, rpcvers 2, prog, vers, proc, cred AUTH_NULL, verf AUTH_NULL
    let mut words = vec![xid, 0, 2, prog, vers, proc_, 0, 0, 0, 0];
    words.extend_from_slice(args);
    let mut msg = Vec::with_capacity(4 + words.len() * 4);
    msg.extend_from_slice(&(0x8000_0000u32 | (words.len() as u32 * 4)).to_be_bytes());
    for w in words {
        msg.extend_from_slice(&w.to_be_bytes());
    }
    s.write_all(&msg).map_err(|e| format!("rpc send: {e}"))?;

    let mut mark = [0u8; 4];
    s.read_exact(&mut mark)
        .map_err(|e| format!("rpc reply: {e}"))?;
    let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
    if len > 1 << 16 {
        return Err(format!("rpc reply too long ({len} bytes)"));
    }
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply)
        .map_err(|e| format!("rpc reply: {e}"))?;
    let word = |i: usize| -> Result<u32, String> {
        reply
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "short rpc reply".to_string())
    };
    // xid, REPLY(1), MSG_ACCEPTED(0), verf flavor, verf length, verf body...,
    // accept_stat SUCCESS(0), results.
    if word(0)? != xid || word(1)? != 1 || word(2)? != 0 {
        return Err("unexpected rpc reply header".into());
    }
    let verf_len = word(4)? as usize;
    let stat_at = 5 + verf_len.div_ceil(4);
    let stat = word(stat_at)?;
    if stat != 0 {
        return Err(format!("rpc call not accepted (accept_stat {stat})"));
    }
    Ok(reply[(stat_at + 1) * 4..].to_vec())
}
