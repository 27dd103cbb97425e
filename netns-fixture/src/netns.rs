//! Named network namespaces created by a test, and the underlay bridge that links them.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::enter::{command_in_netns, in_netns, output_in_netns, spawn_in_netns};

/// Where `ip netns add` binds named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the named network namespace `name` (as made by `ip netns add`).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<counter>-<time>`. Only ASCII
/// letters, digits and `-`, so it is valid as a namespace, network or container name.
pub fn unique_name(prefix: &str) -> String {
    let n = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{n}-{:x}",
        std::process::id(),
        nanos % 0x10_0000
    )
}

/// `` `argv` exited with ..`` plus its stdout and stderr, for error messages.
pub fn describe_output(argv: &[&str], out: &Output) -> String {
    format!(
        "`{}` exited with {:?}\nstdout: {}\nstderr: {}",
        argv.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn ip_netns(args: &[&str]) -> Result<(), String> {
    let mut argv = vec!["ip", "netns"];
    argv.extend_from_slice(args);
    let out = Command::new("ip")
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{}` (is iproute2 installed?): {e}",
                argv.join(" ")
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(describe_output(&argv, &out))
    }
}

/// (device, inode) of a namespace file: two files name the same namespace when these match.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// PIDs of the processes whose network namespace is the one at `netns` (never this process,
/// and nothing at all when `netns` is this process's own namespace).
fn pids_in(netns: &Path) -> Vec<u32> {
    let Some(id) = ns_id(netns) else {
        return Vec::new();
    };
    if Some(id) == ns_id(Path::new("/proc/self/ns/net")) {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            pid != me && ns_id(&PathBuf::from(format!("/proc/{pid}/ns/net"))) == Some(id)
        })
        .collect()
}

/// SIGKILL every process inside the namespace at `netns`, then `ip netns delete name`.
fn kill_and_delete(name: &str, netns: &Path) -> Result<(), String> {
    // Twice: a process may fork between the scan and the signal.
    for _ in 0..3 {
        let pids = pids_in(netns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid lives in a namespace
            // this fixture created (never the caller's own, see `pids_in`), so it is a process
            // a test started there.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    ip_netns(&["delete", name])
}

/// Remove namespaces named `<prefix>-<pid>-...` whose `pid` is no longer running (left by a
/// test process that was killed before its guards ran), with whatever still runs in them.
/// Best effort: it never fails.
pub fn reap_stale(prefix: &str) {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = kill_and_delete(&name, &netns_path(&name));
    }
}

/// A named network namespace created by the test; on drop every process still inside it is
/// killed and the namespace is deleted, and with it every link, address, route, sysctl and
/// firewall rule inside.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    deleted: bool,
}

impl Netns {
    /// `ip netns add <prefix>-<pid>-<n>-<t>`, then `lo` up inside.
    pub fn try_create(prefix: &str) -> Result<Netns, String> {
        let name = unique_name(prefix);
        ip_netns(&["add", &name])?;
        let ns = Netns {
            path: netns_path(&name),
            name,
            deleted: false,
        };
        ns.try_exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`Netns::try_create`], panicking on failure.
    pub fn create(prefix: &str) -> Netns {
        Netns::try_create(prefix).unwrap_or_else(|e| panic!("cannot create a netns: {e}"))
    }

    /// Name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()` as a string, e.g. for `CNI_NETNS`.
    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Whether the namespace is still bound.
    pub fn exists(&self) -> bool {
        !self.deleted && self.path.exists()
    }

    /// PIDs of the processes inside.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.path)
    }

    /// Kill every process inside and delete the namespace now; the guard then has nothing
    /// left to do.
    pub fn delete(&mut self) -> Result<(), String> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        kill_and_delete(&self.name, &self.path)
    }

    /// Run `argv` inside; the raw output.
    pub fn output(&self, argv: &[&str]) -> io::Result<Output> {
        output_in_netns(&self.path, argv)
    }

    /// Run `argv` inside; `Err` (with the command's output) unless it exits 0; `Ok(stdout)`.
    pub fn try_exec(&self, argv: &[&str]) -> Result<String, String> {
        let out = self.output(argv).map_err(|e| {
            format!(
                "cannot run `{}` in netns {}: {e}",
                argv.join(" "),
                self.name
            )
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "in netns {}: {}",
                self.name,
                describe_output(argv, &out)
            ))
        }
    }

    /// Run `argv` inside and panic unless it exits 0; returns stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        self.try_exec(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Make `cmd` start inside this namespace when it is spawned or run.
    pub fn command<'a>(&self, cmd: &'a mut Command) -> io::Result<&'a mut Command> {
        command_in_netns(cmd, &self.path)
    }

    /// Spawn `cmd` inside this namespace.
    pub fn spawn(&self, cmd: Command) -> io::Result<Child> {
        spawn_in_netns(&self.path, cmd)
    }

    /// Run `f` on a thread inside this namespace (sockets made there stay in it).
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> io::Result<T> {
        in_netns(&self.path, f)
    }

    /// Write a sysctl of this namespace (`key` like `net/ipv4/ip_forward`).
    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| fs::write(&path, value))?
    }

    /// Read a sysctl of this namespace.
    pub fn sysctl(&self, key: &str) -> io::Result<String> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| fs::read_to_string(&path).map(|s| s.trim().to_string()))?
    }

    /// A veth pair from this namespace to another test namespace: `name` here, `peer_name` in
    /// `peer` (created here, the peer end moved straight into `peer`); both ends stay down.
    pub fn try_add_veth(&self, name: &str, peer: &Netns, peer_name: &str) -> Result<(), String> {
        self.try_exec(&[
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ])
        .map(drop)
    }

    /// [`Netns::try_add_veth`], panicking on failure.
    pub fn add_veth(&self, name: &str, peer: &Netns, peer_name: &str) {
        self.try_add_veth(name, peer, peer_name)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Add each address (`a.b.c.d/len` or IPv6, without DAD) to `dev`, then set it up.
    pub fn try_configure(&self, dev: &str, cidrs: &[&str]) -> Result<(), String> {
        for cidr in cidrs {
            let mut argv = vec!["ip", "addr", "add", cidr, "dev", dev];
            if cidr.contains(':') {
                argv.push("nodad");
            }
            self.try_exec(&argv)?;
        }
        self.try_exec(&["ip", "link", "set", dev, "up"]).map(drop)
    }

    /// [`Netns::try_configure`], panicking on failure.
    pub fn configure(&self, dev: &str, cidrs: &[&str]) {
        self.try_configure(dev, cidrs)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `ping -c1 -W1 -n <addr>` from this namespace, up to `attempts` times (250 ms apart)
    /// until one succeeds. Panics when ping cannot be run.
    pub fn ping(&self, addr: IpAddr, attempts: usize) -> bool {
        let a = addr.to_string();
        for i in 0..attempts.max(1) {
            match self.output(&["ping", "-c1", "-W1", "-n", &a]) {
                Ok(out) if out.status.success() => return true,
                Ok(_) => {}
                Err(e) => panic!("cannot run ping (install iputils-ping): {e}"),
            }
            if i + 1 < attempts {
                thread::sleep(Duration::from_millis(250));
            }
        }
        false
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A test may have removed it by other means; then there is nothing to do.
        if self.deleted || !self.path.exists() {
            return;
        }
        if let Err(e) = self.delete() {
            eprintln!("netns-fixture: {e}");
        }
    }
}

/// A namespace holding a bridge (the underlay) that other test namespaces are plugged into by
/// veth pairs: the "physical network" between test hosts. Deref to its [`Netns`].
#[derive(Debug)]
pub struct Underlay {
    /// The namespace holding the bridge.
    pub ns: Netns,
    bridge: String,
}

impl Underlay {
    /// A new namespace (`prefix` as for [`Netns::try_create`]) with bridge `bridge` up, with
    /// the address `cidr` on the bridge when given.
    pub fn try_create(prefix: &str, bridge: &str, cidr: Option<&str>) -> Result<Underlay, String> {
        let ns = Netns::try_create(prefix)?;
        ns.try_exec(&["ip", "link", "add", bridge, "type", "bridge"])?;
        ns.try_configure(bridge, cidr.as_slice())?;
        Ok(Underlay {
            ns,
            bridge: bridge.to_string(),
        })
    }

    /// [`Underlay::try_create`], panicking on failure.
    pub fn create(prefix: &str, bridge: &str, cidr: Option<&str>) -> Underlay {
        Underlay::try_create(prefix, bridge, cidr)
            .unwrap_or_else(|e| panic!("cannot create the underlay: {e}"))
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Plug `host` in: a veth pair with `port` on the bridge and `ifname` in `host` carrying
    /// `cidrs`, both ends up.
    pub fn try_attach(
        &self,
        host: &Netns,
        port: &str,
        ifname: &str,
        cidrs: &[&str],
    ) -> Result<(), String> {
        self.ns.try_add_veth(port, host, ifname)?;
        self.ns
            .try_exec(&["ip", "link", "set", port, "master", &self.bridge, "up"])?;
        host.try_configure(ifname, cidrs)
    }

    /// [`Underlay::try_attach`], panicking on failure.
    pub fn attach(&self, host: &Netns, port: &str, ifname: &str, cidrs: &[&str]) {
        self.try_attach(host, port, ifname, cidrs)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Deref for Underlay {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}
