//! containerd 1.6's CRI plugin driven by crictl, inside a test host netns: the path kubelet's
//! pods take to a CNI plugin (RunPodSandbox -> CNI ADD, StopPodSandbox -> CNI DEL).
//!
//! It is a library module, not part of one test file, because two callers use it: the CRI
//! integration tests (`tests/tests/cri.rs`) and `berth-bench cri`, which times pod sandbox start
//! and stop through the same harness with our plugins and with the reference ones.
//!
//! [`Cri::start`] runs containerd the way [`crate::runtime`] does for `ctr`: the daemon enters
//! the test's host netns and a private mount namespace by `setns` between fork and exec (what
//! `nsenter --net=/var/run/netns/<host>` does; never `ip netns exec`, whose fresh sysfs hides
//! /sys/fs/cgroup from runc). In that mount namespace `/run` (so also `/var/run/netns`, where the
//! CRI plugin binds the pods' netns files `cni-*`), `/var/lib` (libcni's cache) and `/dev/shm`
//! are private tmpfs; containerd's root, state, gRPC socket, configuration and logs, the CNI
//! `bin_dir` (links to the plugins given, plus the reference `loopback`, which containerd 1.6
//! always configures) and `conf_dir` (one conflist) are in a tempdir of the [`Cri`]. The sandbox
//! image is Debian's busybox-static rootfs packed as a docker-archive tarball
//! ([`busybox_image_archive`]) and `ctr -n k8s.io images import`ed. Every pod sandbox gets a
//! unique `linux.cgroup_parent`.
//!
//! Guards (also when a test fails or a benchmark returns early): [`Cri`]'s drop kills
//! containerd, shims and containers by PID (every process of the private mount namespace and
//! their descendants), which also drops the namespace's mounts; removes the pods' cgroup parents
//! under every /sys/fs/cgroup hierarchy; unmounts and removes a pod netns file that shows up in
//! the real /var/run/netns; the tempdir (containerd root and state) goes last. Nothing is
//! configured in the root netns. The caller owns the [`Host`] (declare it before the [`Cri`] so
//! it is deleted after) and the plugins' stores.
//!
//! crictl is built by scripts/test-peers.sh into `$BERTH_TOOLS_DIR/bin` (default
//! /var/cache/berth-tools); [`crictl_bin`] says how to get it when it is missing.
//!
//! Every function returns `Result<_, String>` with the whole story in the message (the command,
//! its output and the tail of containerd's log): tests turn it into a panic with that message,
//! the benchmark into its exit error. Nothing here unwraps.

// The crate allows unwrap/expect for its test fixtures; this module is shared with a benchmark
// binary and keeps the workspace rule.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::{
    read_attachment_records, wait_until, Host, NetnsInspect, NAT_SETS, NAT_TABLE, NETNS_DIR,
    REFERENCE_CNI_DIR,
};
use crate::runtime::{busybox_rootfs_tar, remove_cgroup_tree, require_tool, text, Containerd};
use crate::{read_allocations, unique_name};

/// The sandbox and container image (imported, never pulled).
pub const IMAGE: &str = "localhost/berth-busybox:cri";

/// Time limit for one crictl / ctr call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`Cri::start`] and [`Cri::restart`] wait for `crictl info` to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `$BERTH_TOOLS_DIR/bin/crictl` (default /var/cache/berth-tools/bin/crictl); `Err` says how to
/// build it.
pub fn crictl_bin() -> Result<PathBuf, String> {
    let tools = match std::env::var_os("BERTH_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/cache/berth-tools"),
    };
    let bin = tools.join("bin/crictl");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "crictl not found at {}: run scripts/test-peers.sh to build the pinned test peers \
             (tests/tools/versions.txt; CI builds them), or point BERTH_TOOLS_DIR at a directory with bin/crictl",
            bin.display()
        ))
    }
}

/// Run `argv` (in the caller's namespaces) to success; its stdout.
fn run_tool(argv: &[&str]) -> Result<String, String> {
    let (prog, args) = argv.split_first().ok_or("run_tool: empty command line")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{}` failed: {}", argv.join(" "), text(&out)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let p = path.to_string_lossy();
    let out = run_tool(&["sha256sum", &p])?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), String> {
    fs::write(path, bytes).map_err(|e| format!("write {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))
}

fn to_json(v: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec_pretty(v).map_err(|e| format!("serialize JSON: {e}"))
}

/// A docker-archive tarball of the busybox-static rootfs (one layer), tagged [`IMAGE`], whose
/// default command sleeps (the sandbox's "pause" process), built under `dir`. Returns its path.
pub fn busybox_image_archive(dir: &Path) -> Result<PathBuf, String> {
    mkdir(dir)?;
    let layer = busybox_rootfs_tar(dir).map_err(|e| format!("busybox rootfs: {e}"))?;
    let arch = dir.join("archive");
    mkdir(&arch)?;
    let diff_id = sha256_file(&layer)?;
    fs::rename(&layer, arch.join("layer.tar"))
        .map_err(|e| format!("move {} into {}: {e}", layer.display(), arch.display()))?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sleep", "2147483647"],
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created_by": "berth-tests cri.rs: busybox-static rootfs" }],
    });
    write(&arch.join("config.json"), to_json(&config)?)?;
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [IMAGE],
        "Layers": ["layer.tar"],
    }]);
    write(&arch.join("manifest.json"), to_json(&manifest)?)?;
    let tar = dir.join("busybox-image.tar");
    run_tool(&[
        "tar",
        "-C",
        &arch.to_string_lossy(),
        "-cf",
        &tar.to_string_lossy(),
        "manifest.json",
        "config.json",
        "layer.tar",
    ])?;
    Ok(tar)
}

/// A pod sandbox made by `crictl runp`.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The sandbox id crictl printed.
    pub id: String,
    /// The name given to [`Cri::runp`] (metadata name and hostname).
    pub name: String,
    /// The sandbox configuration file (`crictl create` needs it again).
    pub config: PathBuf,
    /// Its address, from `inspectp` (`.status.network.ip`).
    pub ip: std::net::IpAddr,
}

/// What must be empty once every sandbox was stopped and removed, besides what
/// [`Cri::leftovers`] always checks (veths in the host, berth-bridge's NAT set elements, pod
/// netns files, listed sandboxes). `Default` checks only that.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stores<'a> {
    /// berth-host-local's store (`store_path(dataDir, network)`): no allocation may be held.
    pub ipam_db: Option<&'a Path>,
    /// berth-bridge's or berth-overlay's attachment records (`records_path(dataDir, network)`).
    pub records: Option<&'a Path>,
    /// A reference host-local network directory (`<dataDir>/<network>`): no reservation file.
    pub reference_ipam: Option<&'a Path>,
    /// The host's own veths (e.g. the underlay link), not pods'.
    pub uplinks: &'a [&'a str],
}

/// containerd with its CRI plugin and crictl, inside a test host netns; see the module doc.
///
/// The fields drop in order: containerd (every process of its mount namespace killed, the
/// namespace released), then the pods' cgroups and netns files, then the tempdir.
pub struct Cri {
    crictl: PathBuf,
    dir: PathBuf,
    containerd: Containerd,
    pods: PodGuard,
    _tmp: tempfile::TempDir,
}

/// What the sandboxes left outside containerd's tempdir, removed on drop (after containerd).
#[derive(Default)]
struct PodGuard {
    /// Cgroup parents given to sandboxes (top-level cgroup names).
    cgroups: RefCell<Vec<String>>,
    /// Names of the pods' netns files (`cni-*`) as containerd reported them.
    netns_files: RefCell<Vec<String>>,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        for cg in self.cgroups.borrow().iter() {
            remove_cgroup_tree(cg);
        }
        for name in self.netns_files.borrow().iter() {
            // They live in the private /run; one that reached the real /var/run/netns is ours
            // (the name is a UUID containerd generated for our pod) and goes too.
            let p = Path::new(NETNS_DIR).join(name);
            if name.starts_with("cni-") && !name.contains('/') && p.exists() {
                if let Ok(c) = std::ffi::CString::new(p.to_string_lossy().as_bytes()) {
                    // SAFETY: umount2(2) on a NUL-terminated path we own for the call; it only
                    // detaches the bind mount of our own pod's netns file.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
                let _ = fs::remove_file(&p);
            }
        }
    }
}

impl Cri {
    /// Start containerd with the CRI plugin in `host`, `conflist` as its only CNI configuration
    /// and, in its CNI `bin_dir`, a link to each of `plugins` (named by its file name, which is
    /// what the conflist's `type` must say) plus the reference `loopback`; import the image;
    /// wait until CRI reports the runtime and the network ready.
    pub fn start(host: &Host, conflist: &Value, plugins: &[PathBuf]) -> Result<Cri, String> {
        Cri::start_with(host, Some(conflist), plugins)
    }

    /// [`Cri::start`], or with `conflist` `None` an empty CNI `conf_dir` (a node whose CNI a
    /// DaemonSet installs later): then only RuntimeReady is waited for.
    pub fn start_with(
        host: &Host,
        conflist: Option<&Value>,
        plugins: &[PathBuf],
    ) -> Result<Cri, String> {
        let crictl = crictl_bin()?;
        for (tool, pkg) in [
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("sha256sum", "coreutils"),
        ] {
            require_tool(tool, pkg)?;
        }
        let tmp = tempfile::Builder::new()
            .prefix("berth-cri-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let dir = tmp.path().to_path_buf();
        let cni_bin = dir.join("cni-bin");
        let cni_conf = dir.join("cni-conf");
        for d in [&cni_bin, &cni_conf, &dir.join("pods")] {
            mkdir(d)?;
        }
        let link = |src: &Path, name: &std::ffi::OsStr| {
            std::os::unix::fs::symlink(src, cni_bin.join(name))
                .map_err(|e| format!("link {} into {}: {e}", src.display(), cni_bin.display()))
        };
        for src in plugins {
            let name = src
                .file_name()
                .ok_or_else(|| format!("plugin path {} has no file name", src.display()))?;
            if !src.is_file() {
                return Err(format!(
                    "{} not found: build the workspace with `cargo build --release --workspace` (or point \
                     BERTH_BIN_DIR at a build); reference plugins come with containernetworking-plugins",
                    src.display()
                ));
            }
            link(src, name)?;
        }
        let lo = Path::new(REFERENCE_CNI_DIR).join("loopback");
        if !lo.is_file() {
            return Err(format!(
                "{} not found: containerd 1.6's CRI plugin always sets up `lo` with the reference \
                 loopback plugin; install the Debian package containernetworking-plugins",
                lo.display()
            ));
        }
        link(&lo, std::ffi::OsStr::new("loopback"))?;
        if let Some(conflist) = conflist {
            write(&cni_conf.join("10-berth.conflist"), to_json(conflist)?)?;
        }
        let s = |p: &Path| p.to_string_lossy().into_owned();
        write(
            &dir.join("crictl.yaml"),
            format!(
                "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: 60\ndebug: false\n",
                s(&dir.join("containerd.sock"))
            ),
        )?;
        let archive = busybox_image_archive(&dir.join("image"))?;
        let extra = format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = {IMAGE:?}\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 disable_apparmor = true\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20   snapshotter = \"native\"\n\
             \x20   default_runtime_name = \"runc\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
             \x20     runtime_type = \"io.containerd.runc.v2\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20   bin_dir = {:?}\n\
             \x20   conf_dir = {:?}\n\
             \x20   max_conf_num = 1\n",
            s(&cni_bin),
            s(&cni_conf),
        );
        let containerd =
            Containerd::start_with(host, &dir, &cni_conf, &[], &extra, "k8s.io", false)
                .map_err(|e| format!("containerd with the CRI plugin did not start: {e}"))?;
        let cri = Cri {
            crictl,
            dir,
            containerd,
            pods: PodGuard::default(),
            _tmp: tmp,
        };
        cri.ctr_ok(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            &archive.to_string_lossy(),
        ])?;
        cri.wait_conditions(if conflist.is_some() {
            &["RuntimeReady", "NetworkReady"]
        } else {
            &["RuntimeReady"]
        })?;
        let images = cri.crictl_ok(&["images"])?;
        if !images.contains("localhost/berth-busybox") {
            return Err(format!(
                "CRI does not list the imported image: {images}\n{}",
                cri.logs()
            ));
        }
        Ok(cri)
    }

    /// Replace the CNI configuration (`cni-conf/10-berth.conflist`) with `bytes`, which need not
    /// be valid: the CRI plugin watches the directory and reloads it.
    pub fn write_conflist(&self, bytes: &[u8]) -> Result<(), String> {
        let path = self.dir.join("cni-conf/10-berth.conflist");
        // Written beside and renamed, so the plugin never reads half a file.
        let tmp = self.dir.join("cni-conf/.10-berth.conflist.new");
        write(&tmp, bytes)?;
        fs::rename(&tmp, &path).map_err(|e| format!("rename onto {}: {e}", path.display()))
    }

    /// The CNI `bin_dir` and `conf_dir` the CRI plugin uses.
    pub fn cni_dirs(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("cni-bin"), self.dir.join("cni-conf"))
    }

    /// The containerd instance (its private mount namespace, `ctr`, the log).
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// containerd's log tail, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "---- containerd log (tail) ----\n{}",
            self.containerd.log_tail()
        )
    }

    /// `ctr -n k8s.io <args>` that must exit 0; stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String, String> {
        self.containerd.ok(args, CALL_TIMEOUT)
    }

    /// `crictl --config <dir>/crictl.yaml <args>` in the host netns and the private mount
    /// namespace; `Err` when it cannot run or times out (any exit status is `Ok`).
    pub fn crictl(&self, args: &[&str]) -> Result<Output, String> {
        let holder = &self.containerd.holder;
        let mut cmd = holder.command(&self.crictl);
        cmd.arg("--config")
            .arg(self.dir.join("crictl.yaml"))
            .args(args);
        let (out, timed_out) = holder
            .output(cmd, CALL_TIMEOUT)
            .map_err(|e| format!("cannot run crictl: {e}"))?;
        if timed_out {
            return Err(format!(
                "crictl {} timed out after {CALL_TIMEOUT:?}: {}\n{}",
                args.join(" "),
                text(&out),
                self.logs()
            ));
        }
        Ok(out)
    }

    /// crictl that must exit 0; stdout.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.crictl(args)?;
        if !out.status.success() {
            return Err(format!(
                "crictl {} failed: {}\n{}",
                args.join(" "),
                text(&out),
                self.logs()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// crictl that must exit 0 and print JSON.
    pub fn crictl_json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.crictl_ok(args)?;
        serde_json::from_str(&out).map_err(|e| {
            format!(
                "crictl {}: not JSON ({e}): {out}\n{}",
                args.join(" "),
                self.logs()
            )
        })
    }

    /// Wait until `crictl info` reports RuntimeReady and NetworkReady (the CRI plugin loaded
    /// the conflist); `Err` with its exact output otherwise.
    pub fn wait_ready(&self) -> Result<(), String> {
        self.wait_conditions(&["RuntimeReady", "NetworkReady"])
    }

    /// Wait until `crictl info` reports every condition of `types` true.
    fn wait_conditions(&self, types: &[&str]) -> Result<(), String> {
        let mut last = String::new();
        let mut failed = None;
        let ok = wait_until(READY_TIMEOUT, || {
            let out = match self.crictl(&["info"]) {
                Ok(out) => out,
                Err(e) => {
                    failed = Some(e);
                    return true;
                }
            };
            last = text(&out);
            if !out.status.success() {
                return false;
            }
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let conds = v["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            types.iter().all(|t| {
                conds
                    .iter()
                    .any(|c| c["type"] == json!(t) && c["status"] == json!(true))
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if !ok {
            return Err(format!(
                "containerd's CRI plugin is not ready (crictl info): {last}\n{}",
                self.logs()
            ));
        }
        Ok(())
    }

    /// `crictl runp` a sandbox named `name` with a unique cgroup parent; its address from
    /// `inspectp`.
    pub fn runp(&self, name: &str) -> Result<Sandbox, String> {
        self.runp_timed(name).map(|(pod, _)| pod)
    }

    /// [`Cri::runp`], and the wall time of the `crictl runp` call alone (RunPodSandbox as
    /// crictl sees it, crictl's own start-up included; not the config file or `inspectp`).
    pub fn runp_timed(&self, name: &str) -> Result<(Sandbox, Duration), String> {
        let cgroup = unique_name("berth-cri");
        self.pods.cgroups.borrow_mut().push(cgroup.clone());
        let logs = self.dir.join("pods").join(name);
        mkdir(&logs)?;
        let config = json!({
            "metadata": { "name": name, "namespace": "berth-cri", "uid": unique_name("uid"), "attempt": 0 },
            "hostname": name,
            "log_directory": logs.to_string_lossy(),
            "linux": {
                "cgroup_parent": format!("/{cgroup}"),
                "security_context": { "namespace_options": { "network": 0 } },
            },
        });
        let path = self.dir.join("pods").join(format!("{name}.json"));
        write(&path, to_json(&config)?)?;
        let t = Instant::now();
        let id = self.crictl_ok(&["runp", &path.to_string_lossy()])?;
        let took = t.elapsed();
        let id = id.trim().to_string();
        if id.is_empty() {
            return Err(format!("crictl runp printed no id\n{}", self.logs()));
        }
        let v = self.inspectp(&id)?;
        self.note_netns(&v);
        let ip = v["status"]["network"]["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "inspectp {id}: no .status.network.ip: {}\n{}",
                    v["status"],
                    self.logs()
                )
            })?;
        let pod = Sandbox {
            id,
            name: name.to_string(),
            config: path,
            ip,
        };
        Ok((pod, took))
    }

    /// `crictl inspectp -o json <id>`.
    pub fn inspectp(&self, id: &str) -> Result<Value, String> {
        self.crictl_json(&["inspectp", "-o", "json", id])
    }

    /// Remember the name of the pod's netns file (for the guard and the leftover check).
    fn note_netns(&self, inspect: &Value) {
        let namespaces = inspect["info"]["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for ns in namespaces {
            if ns["type"] == json!("network") {
                if let Some(name) = ns["path"]
                    .as_str()
                    .and_then(|p| Path::new(p).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                {
                    self.pods.netns_files.borrow_mut().push(name);
                }
            }
        }
    }

    /// `crictl create` + `start` a busybox container running `sleep 3600` in `pod`; its id,
    /// once `inspect` reports it running.
    pub fn container(&self, pod: &Sandbox) -> Result<String, String> {
        let config = json!({
            "metadata": { "name": "app" },
            "image": { "image": IMAGE },
            "command": ["sleep", "3600"],
            "log_path": "app.log",
            "linux": {},
        });
        let path = self.dir.join("pods").join(format!("{}-app.json", pod.name));
        write(&path, to_json(&config)?)?;
        let id = self
            .crictl_ok(&[
                "create",
                &pod.id,
                &path.to_string_lossy(),
                &pod.config.to_string_lossy(),
            ])?
            .trim()
            .to_string();
        self.crictl_ok(&["start", &id])?;
        let state = self.crictl_json(&["inspect", "-o", "json", &id])?["status"]["state"].clone();
        if state != json!("CONTAINER_RUNNING") {
            return Err(format!(
                "container {id} in {} is not running: state {state}\n{}",
                pod.name,
                self.logs()
            ));
        }
        Ok(id)
    }

    /// Whether `ping` from inside container `cid` (crictl exec, synchronous) reaches `addr`,
    /// trying up to 5 times.
    pub fn ping_from(&self, cid: &str, addr: std::net::IpAddr) -> Result<(), String> {
        let a = addr.to_string();
        let mut last = String::new();
        for _ in 0..5 {
            let out = self.crictl(&[
                "exec",
                "-s",
                "--timeout",
                "10",
                cid,
                "ping",
                "-c1",
                "-W2",
                &a,
            ])?;
            if out.status.success() {
                return Ok(());
            }
            last = text(&out);
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("ping {a} from container {cid}: {last}"))
    }

    /// `crictl stopp` + `rmp`; the wall time of both calls.
    pub fn stop_remove(&self, pod: &Sandbox) -> Result<Duration, String> {
        let t = Instant::now();
        self.crictl_ok(&["stopp", &pod.id])?;
        self.crictl_ok(&["rmp", &pod.id])?;
        Ok(t.elapsed())
    }

    /// Names in the private /run/netns (where the CRI plugin binds pod netns files).
    pub fn private_netns_files(&self) -> Result<Vec<String>, String> {
        let holder = &self.containerd.holder;
        let mut cmd = holder.command("ls");
        cmd.arg("-1").arg("/run/netns");
        let (out, _) = holder
            .output(cmd, CALL_TIMEOUT)
            .map_err(|e| format!("ls /run/netns in the private mount namespace: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Restart containerd (SIGTERM, then start again on the same root and state); shims and
    /// containers keep running meanwhile. Returns once CRI reports ready again.
    pub fn restart(&mut self) -> Result<(), String> {
        let c = &mut self.containerd;
        let old = c.daemon_pid();
        c.stop_daemon();
        c.start_daemon()
            .map_err(|e| format!("containerd did not start again: {e}"))?;
        if old == c.daemon_pid() {
            return Err(format!("containerd was not restarted (pid {old:?})"));
        }
        self.wait_ready()
    }

    /// What is left once every sandbox was stopped and removed; empty when all is clean. A
    /// state that cannot be read is reported as a leftover.
    pub fn leftovers(&self, host: &Host, stores: &Stores) -> Vec<String> {
        let mut out = Vec::new();
        match host_veths(host) {
            Ok(mut veths) => {
                veths.retain(|v| !stores.uplinks.contains(&v.as_str()));
                if !veths.is_empty() {
                    out.push(format!("veths in the host netns: {veths:?}"));
                }
            }
            Err(e) => out.push(e),
        }
        let mut nat = Vec::new();
        for set in NAT_SETS {
            match host.nft_set_elements("inet", NAT_TABLE, set) {
                Ok(Some(elems)) => nat.extend(elems.iter().map(|e| format!("{set}: {e}"))),
                Ok(None) => {}
                Err(e) => out.push(format!("reading nft set {set}: {e}")),
            }
        }
        if !nat.is_empty() {
            out.push(format!("{} NAT set element(s): {nat:?}", nat.len()));
        }
        if let Some(db) = stores.ipam_db.filter(|db| db.exists()) {
            match read_allocations(db) {
                Ok(rows) if !rows.is_empty() => {
                    out.push(format!("{} IPAM allocation(s) held: {rows:?}", rows.len()))
                }
                Ok(_) => {}
                Err(e) => out.push(format!("cannot read {}: {e}", db.display())),
            }
        }
        if let Some(records) = stores.records {
            if let Ok(rows) = read_attachment_records(records) {
                if !rows.is_empty() {
                    out.push(format!("attachment records left: {rows:?}"));
                }
            }
        }
        if let Some(dir) = stores.reference_ipam {
            let held = crate::netns::reference_reservations(dir);
            if !held.is_empty() {
                out.push(format!(
                    "{} reference host-local reservation(s) held: {held:?}",
                    held.len()
                ));
            }
        }
        match self.private_netns_files() {
            Ok(files) => {
                let private: Vec<String> = files
                    .into_iter()
                    .filter(|n| n.starts_with("cni-"))
                    .collect();
                if !private.is_empty() {
                    out.push(format!(
                        "pod netns files left in /var/run/netns: {private:?}"
                    ));
                }
            }
            Err(e) => out.push(e),
        }
        for name in self.pods.netns_files.borrow().iter() {
            if Path::new(NETNS_DIR).join(name).exists() {
                out.push(format!("pod netns file {name} in the real {NETNS_DIR}"));
            }
        }
        match self.crictl_ok(&["pods", "-q"]) {
            Ok(pods) if !pods.trim().is_empty() => {
                out.push(format!("sandboxes still listed: {}", pods.trim()))
            }
            Ok(_) => {}
            Err(e) => out.push(e),
        }
        out
    }

    /// Wait up to `timeout` for [`Cri::leftovers`] to be empty; `Err` lists what is left,
    /// followed by containerd's log tail.
    pub fn wait_clean(
        &self,
        host: &Host,
        stores: &Stores,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut last = Vec::new();
        let clean = wait_until(timeout, || {
            last = self.leftovers(host, stores);
            last.is_empty()
        });
        if clean {
            Ok(())
        } else {
            Err(format!(
                "left behind:\n- {}\n{}",
                last.join("\n- "),
                self.logs()
            ))
        }
    }
}

/// Every veth in `host` (`ip -j -d link show`, the kind from `linkinfo`).
pub fn host_veths(host: &Host) -> Result<Vec<String>, String> {
    let text = host.try_exec(&["ip", "-j", "-d", "link", "show"])?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let links: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "`ip -j -d link show` in {}: not JSON ({e}): {text}",
            host.name()
        )
    })?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["linkinfo"]["info_kind"] == json!("veth"))
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}
