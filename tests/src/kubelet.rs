//! A Kubernetes node for the cluster tests: a real kubelet (built by scripts/test-peers.sh from
//! `k8s.io/kubernetes`, the version pinned in tests/tools/versions.txt) on containerd 1.6's CRI
//! plugin ([`crate::cri::Cri`]), inside a test host netns, registered with a
//! [`ControlPlane`], optionally with berth-csi as its node plugin.
//!
//! How it runs on this machine (facts in ../shared/TESTBED.md):
//! - kubelet, containerd and berth-csi share the private mount namespace the [`Cri`] made
//!   (entered by `setns`, as `nsenter --net=... --mount=...` does; never `ip netns exec`, whose
//!   fresh sysfs hides /sys/fs/cgroup). The volumes kubelet and berth-csi mount are seen by
//!   runc without any propagation between namespaces, and they all go when the namespace does.
//! - kubelet's root dir (pods, volumes, `plugins/`, `plugins_registry/`), cert dir, pod logs,
//!   kubeconfig and configuration are in the node's tempdir.
//! - cgroup v1 hybrid, no systemd: `cgroupDriver: cgroupfs` under a `cgroupRoot` unique to the
//!   node (created under every hierarchy before kubelet starts, removed after), so two kubelets
//!   on one machine never share `kubepods`. `failCgroupV1: false` keeps v1.34 running on v1.
//! - root lacks CAP_SYS_RESOURCE: `oomScoreAdj: 0` (kubelet would lower its own score), and
//!   containerd restricts the pods' scores (`restrict_oom_score_adj`).
//! - kubelet sets kernel settings that are not per netns (`vm.overcommit_memory`,
//!   `kernel.panic`, `kernel.panic_on_oops`; it also checks `vm.panic_on_oom` and the keys
//!   limits). [`KernelSettings`] records them before the first kubelet of the process starts,
//!   and restores them when the last one is gone (also when a test fails); the record is kept in
//!   a file under /run too, so a run that was killed is repaired by the next.
//! - pods get a `resolv.conf` without a nameserver: nothing a pod does sends a query off the
//!   machine.
//!
//! Guards, in drop order: kubelet and berth-csi are stopped by PID; the [`Cri`] kills
//! containerd, shims and containers (every process of the mount namespace), which also drops
//! every mount of the namespace; the node's cgroup tree is removed; loop devices still backed by
//! files of the node's tempdir are detached; the kernel settings are restored; the tempdir goes
//! last. The caller owns the [`Host`] (declare it before the [`Node`]) and the control plane.

// The crate allows unwrap/expect for its test fixtures; this module is shared with a benchmark
// binary and keeps the workspace rule.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{
    sidecar_command, tool, tool_version, write_kubeconfig, ControlPlane, Credential, SIDECARS,
};
use crate::cri::Cri;
use crate::netns::{wait_until, Host};
use crate::runtime::{remove_cgroup_tree, Daemon};
use crate::unique_name;

/// The CSI driver name kubelet knows berth-csi by.
pub const CSI_DRIVER: &str = "csi.berth.dev";

/// How long a node gets to register and report Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Kernel settings kubelet writes or checks at start (its `setupKernelTunables`); none of them
/// is per network namespace.
const KUBELET_SYSCTLS: [&str; 6] = [
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

/// Where the values from before the first kubelet are kept while kubelets run.
const SYSCTL_RECORD: &str = "/run/berth-tests-kubelet-sysctls";

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Users of the kernel settings in this process, and the values from before the first.
static SETTINGS: Mutex<(usize, Vec<(String, String)>)> = Mutex::new((0, Vec::new()));

/// The kernel settings kubelet changes, held while a kubelet of this process may run; the last
/// holder restores them. See the module doc.
pub struct KernelSettings(());

impl KernelSettings {
    /// Record the settings (or take the record a killed run left) unless another node of this
    /// process already holds them.
    pub fn hold() -> Result<KernelSettings, String> {
        let mut s = SETTINGS
            .lock()
            .map_err(|_| "kernel settings lock poisoned")?;
        if s.0 == 0 {
            let saved = match fs::read_to_string(SYSCTL_RECORD) {
                // A run that was killed left its record: those are the machine's values.
                Ok(text) => text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                Err(_) => {
                    let mut now = Vec::new();
                    for key in KUBELET_SYSCTLS {
                        let v = fs::read_to_string(sysctl_path(key))
                            .map_err(|e| format!("read {key}: {e}"))?;
                        now.push((key.to_string(), v.trim().to_string()));
                    }
                    let text: String = now.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    fs::write(SYSCTL_RECORD, text)
                        .map_err(|e| format!("write {SYSCTL_RECORD}: {e}"))?;
                    now
                }
            };
            s.1 = saved;
        }
        s.0 += 1;
        Ok(KernelSettings(()))
    }

    /// The values recorded before the first kubelet.
    pub fn recorded() -> Vec<(String, String)> {
        SETTINGS.lock().map(|s| s.1.clone()).unwrap_or_default()
    }
}

impl Drop for KernelSettings {
    fn drop(&mut self) {
        let Ok(mut s) = SETTINGS.lock() else {
            return;
        };
        s.0 = s.0.saturating_sub(1);
        if s.0 > 0 {
            return;
        }
        let mut all_restored = true;
        for (key, value) in &s.1 {
            let p = sysctl_path(key);
            let now = fs::read_to_string(&p).unwrap_or_default();
            if now.trim() != value && fs::write(&p, value).is_err() {
                eprintln!("kubelet harness: cannot restore {key}={value}");
                all_restored = false;
            }
        }
        if all_restored {
            let _ = fs::remove_file(SYSCTL_RECORD);
        }
    }
}

/// A top-level cgroup under every v1 hierarchy (and the unified one), removed on drop.
struct CgroupRoot {
    name: String,
}

impl CgroupRoot {
    fn create(name: &str) -> Result<CgroupRoot, String> {
        let me = CgroupRoot {
            name: name.to_string(),
        };
        let entries =
            fs::read_dir("/sys/fs/cgroup").map_err(|e| format!("read /sys/fs/cgroup: {e}"))?;
        for h in entries.flatten() {
            let base = h.path();
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let dir = base.join(name);
            fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            // A new cpuset cgroup starts with no CPUs and no memory nodes: nothing could join.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(base.join(f)) {
                    fs::write(dir.join(f), v.trim())
                        .map_err(|e| format!("write {}: {e}", dir.join(f).display()))?;
                }
            }
        }
        Ok(me)
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.name);
    }
}

/// Loop devices whose backing file is under `dir` (berth-csi's images), followed by the loop
/// devices stacked on one of those (kubelet holds each raw block volume it maps with a loop
/// device over the device node; one killed before it unmapped leaves that loop behind, and it
/// keeps ours busy). (device, backing file) from `losetup -l`.
pub fn loop_devices_under(dir: &Path) -> Vec<(String, String)> {
    loop_devices_of(dir, None)
}

/// [`loop_devices_under`], also counting as ours every loop device backed by a file of the
/// filesystem `fs` (`major:minor`): the node's private /var/lib, where a berth-csi run as a
/// DaemonSet keeps its pool (its loop devices show a backing path relative to that mount, which
/// no path prefix matches).
pub fn loop_devices_of(dir: &Path, fs: Option<&str>) -> Vec<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let out = Command::new("losetup")
        .args([
            "-l",
            "-n",
            "--raw",
            "-O",
            "NAME,BACK-MAJ:MIN,BACK-INO,BACK-FILE",
        ])
        .stdin(Stdio::null())
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.splitn(4, ' ').collect::<Vec<_>>())
        .filter(|r| r.len() == 4)
        .collect();
    let prefix = dir.to_string_lossy().into_owned();
    let ours: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r[3].starts_with(&prefix) || fs.is_some_and(|f| r[1] == f))
        .map(|r| (r[0].to_string(), r[3].to_string()))
        .collect();
    // The device nodes of ours, as a stacked loop's BACK-MAJ:MIN and BACK-INO name them.
    let nodes: Vec<(String, String, String)> = ours
        .iter()
        .filter_map(|(dev, _)| {
            let m = fs::metadata(dev).ok()?;
            let d = m.dev();
            let (maj, min) = (libc::major(d), libc::minor(d));
            Some((format!("{maj}:{min}"), m.ino().to_string(), dev.clone()))
        })
        .collect();
    let mut all = Vec::new();
    for r in &rows {
        if let Some((_, _, under)) = nodes.iter().find(|(mm, ino, _)| r[1] == mm && r[2] == ino) {
            all.push((r[0].to_string(), format!("stacked on {under}")));
        }
    }
    all.extend(ours);
    all
}

/// Detaches, on drop, the loop devices of [`loop_devices_under`] (stacked ones first).
struct LoopGuard(PathBuf, Option<String>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        // The namespace's mounts go a moment after its last process: a device still busy is
        // tried again.
        for _ in 0..20 {
            let left = loop_devices_of(&self.0, self.1.as_deref());
            if left.is_empty() {
                break;
            }
            for (dev, _) in left {
                let _ = Command::new("losetup")
                    .args(["-d", &dev])
                    .stdin(Stdio::null())
                    .output();
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

/// What a [`Node`] runs.
pub struct NodeOptions<'a> {
    /// The Node name (also berth-csi's node id and its topology value).
    pub name: &'a str,
    /// The address kubelet serves on and reports as the Node's InternalIP; it must be an
    /// address of `host` the control plane can reach.
    pub node_ip: Ipv4Addr,
    /// The CNI configuration list containerd's CRI plugin loads; `None` leaves its `conf_dir`
    /// empty (the CNI DaemonSet installs one): the Node is then only waited for to register,
    /// since it is NotReady until a network is configured.
    pub conflist: Option<&'a Value>,
    /// The CNI plugins, linked into the CRI plugin's `bin_dir` by file name.
    pub plugins: &'a [PathBuf],
    /// Run berth-csi (all services) in the node, registered with kubelet by its built-in
    /// registration (see [`Node::csi_socket`]).
    pub csi: bool,
    /// kubelet's `maxPods`.
    pub max_pods: u32,
    /// Give kubelet and the CRI plugin a real node's paths inside the node's mount namespace:
    /// kubelet's root dir is `/var/lib/kubelet`, the CNI dirs are `/opt/cni/bin` and
    /// `/etc/cni/net.d` (each a bind mount of the node's tempdir, so the files stay where
    /// [`Node::root_dir`] and [`Cri::cni_dirs`] say). Then the shipped DaemonSets' host paths fit
    /// every node unchanged, however many nodes share this machine.
    pub fhs_paths: bool,
}

/// Where a node's kubelet keeps its root dir inside the node's mount namespace with
/// [`NodeOptions::fhs_paths`].
pub const FHS_KUBELET_DIR: &str = "/var/lib/kubelet";

/// A kubelet, its containerd and (optionally) berth-csi in a host netns; see the module doc.
///
/// The fields drop in order (kubelet first, the tempdir last).
pub struct Node {
    /// The Node name.
    pub name: String,
    /// The node's address (kubelet's `--node-ip`).
    pub node_ip: Ipv4Addr,
    root_inside: PathBuf,
    kubelet: Option<Daemon>,
    csi: Option<Daemon>,
    cri: Cri,
    _cgroup: CgroupRoot,
    _loops: LoopGuard,
    _settings: KernelSettings,
    kubelet_cmd: Vec<String>,
    csi_cmd: Vec<String>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Start containerd, berth-csi (when asked) and kubelet in `host`, and wait until the Node
    /// is Ready in `cp` (and, with berth-csi, until its CSINode lists the driver).
    pub fn start(cp: &ControlPlane, host: &Host, o: &NodeOptions) -> Result<Node, String> {
        let started = Instant::now();
        let kubelet = tool("kubelet");
        if !kubelet.is_file() {
            return Err(format!(
                "{} not found: run scripts/test-peers.sh (tests/tools/versions.txt; CI builds it)",
                kubelet.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-kubelet-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path().to_path_buf();
        let settings = KernelSettings::hold()?;
        let cgroup_name = unique_name("berth-kubelet");
        let cgroup = CgroupRoot::create(&cgroup_name)?;
        let mut loops = LoopGuard(d.clone(), None);
        let cri = Cri::start_with(host, o.conflist, o.plugins)?;
        {
            use std::os::unix::fs::MetadataExt;
            let var_lib = cri.containerd().holder.path_inside("/var/lib");
            if let Ok(m) = fs::metadata(&var_lib) {
                let d = m.dev();
                loops.1 = Some(format!("{}:{}", libc::major(d), libc::minor(d)));
            }
        }
        for sub in ["root", "certs", "pod-logs", "csi", "csi-state"] {
            fs::create_dir_all(d.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let root_inside = if o.fhs_paths {
            let (cni_bin, cni_conf) = cri.cni_dirs();
            // /var/lib and /opt are the namespace's own tmpfs, so these mount points are made
            // there, never on the machine's filesystem.
            bind_inside(&cri, &d.join("root"), Path::new(FHS_KUBELET_DIR))?;
            // Bidirectional propagation (berth-csi's volume mounts reaching kubelet and the
            // pods) needs the root dir shared; kubelet only arranges that when its root dir is
            // not a mount point yet. The peer group is new and lives in this namespace.
            run_inside(&cri, &["mount", "-n", "--make-rshared", FHS_KUBELET_DIR])?;
            bind_inside(&cri, &cni_bin, Path::new("/opt/cni/bin"))?;
            bind_inside(&cri, &cni_conf, Path::new("/etc/cni/net.d"))?;
            PathBuf::from(FHS_KUBELET_DIR)
        } else {
            d.join("root")
        };
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let cert = format!("kubelet-{}", o.name);
        cp.pki
            .client_cert(&cert, &format!("/O=system:nodes/CN=system:node:{}", o.name))?;
        let kubeconfig = d.join("kubelet.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &cp.server(),
            &cp.pki.path("ca.crt"),
            Credential::Cert {
                cert: &cp.pki.path(&format!("{cert}.crt")),
                key: &cp.pki.path(&format!("{cert}.key")),
            },
        )?;
        // No nameserver: a pod's lookups fail at once instead of leaving the machine.
        fs::write(d.join("resolv.conf"), "search cluster.local\n")
            .map_err(|e| format!("write resolv.conf: {e}"))?;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{cgroup_name}"),
            "failCgroupV1": false,
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", s(cri.containerd().socket_path())),
            "podLogsDir": s(&d.join("pod-logs")),
            // Only holders of a certificate of the cluster's CA (the API server) reach it.
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": s(&cp.pki.path("ca.crt")) },
            },
            "authorization": { "mode": "AlwaysAllow" },
            // Lowering its own score needs CAP_SYS_RESOURCE, which root lacks here.
            "oomScoreAdj": 0,
            "address": o.node_ip.to_string(),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 0,
            "resolvConf": s(&d.join("resolv.conf")),
            "maxPods": o.max_pods,
            // The machine's disk is shared with everything else: never evict test pods for it.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": false,
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            // No systemd inhibitor locks here.
            "shutdownGracePeriod": "0s",
        });
        let config_path = d.join("kubelet-config.yaml");
        fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let kubelet_cmd = vec![
            s(&kubelet),
            format!("--config={}", s(&config_path)),
            format!("--kubeconfig={}", s(&kubeconfig)),
            format!("--root-dir={}", s(&root_inside)),
            format!("--cert-dir={}", s(&d.join("certs"))),
            format!("--hostname-override={}", o.name),
            format!("--node-ip={}", o.node_ip),
            "--v=2".to_string(),
        ];
        let csi_cmd = if o.csi {
            let bin = crate::bin_dir().join("berth-csi");
            if !bin.is_file() {
                return Err(format!(
                    "{} not found: build the workspace (cargo build --release --workspace)",
                    bin.display()
                ));
            }
            vec![
                s(&bin),
                format!("--endpoint=unix://{}", s(&d.join("csi/csi.sock"))),
                format!("--node-id={}", o.name),
                format!("--state-dir={}", s(&d.join("csi-state"))),
                format!("--local-pool={}", s(&d.join("pool"))),
                "--mode=all".to_string(),
                "--publish-nodes=any".to_string(),
                format!(
                    "--kubelet-registration-dir={}",
                    s(&d.join("root/plugins_registry"))
                ),
            ]
        } else {
            Vec::new()
        };
        let mut node = Node {
            name: o.name.to_string(),
            node_ip: o.node_ip,
            root_inside,
            kubelet: None,
            csi: None,
            cri,
            _cgroup: cgroup,
            _loops: loops,
            _settings: settings,
            kubelet_cmd,
            csi_cmd,
            dir,
        };
        if o.csi {
            node.start_csi()?;
        }
        node.start_kubelet()?;
        if o.conflist.is_some() {
            node.wait_ready(cp)?;
        } else {
            node.wait_registered(cp)?;
        }
        if o.csi {
            node.wait_csi_registered(cp)?;
        }
        eprintln!(
            "node {} up in {:.1} s ({}, containerd in {})",
            o.name,
            started.elapsed().as_secs_f64(),
            tool_version("kubelet"),
            host.name()
        );
        Ok(node)
    }

    fn daemon(&self, argv: &[String], log: &str) -> Result<Daemon, String> {
        let holder = &self.cri.containerd().holder;
        let (prog, args) = argv.split_first().ok_or("empty command")?;
        let mut cmd = holder.command(prog);
        // berth-csi's log level; kubelet ignores it.
        cmd.args(args).env("BERTH_CSI_LOG", "info");
        Daemon::start(holder, cmd, &self.dir.path().join(log))
    }

    /// Start kubelet (again, after [`Node::stop_kubelet`]) with the same configuration.
    pub fn start_kubelet(&mut self) -> Result<(), String> {
        crate::runtime::note(
            &self.dir.path().join("kubelet.log"),
            "---- berth test: starting kubelet ----",
        );
        let d = self.daemon(&self.kubelet_cmd, "kubelet.log")?;
        self.kubelet = Some(d);
        Ok(())
    }

    /// Stop kubelet (SIGTERM, then SIGKILL): pods, containerd and berth-csi keep running, as
    /// when a node's kubelet is restarted.
    pub fn stop_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.stop();
        }
    }

    /// Whether kubelet runs.
    pub fn kubelet_running(&mut self) -> bool {
        self.kubelet.as_mut().is_some_and(Daemon::running)
    }

    fn start_csi(&mut self) -> Result<(), String> {
        let d = self.daemon(&self.csi_cmd, "berth-csi.log")?;
        self.csi = Some(d);
        let sock = self.csi_socket();
        if !wait_until(Duration::from_secs(20), || sock.exists()) {
            return Err(format!(
                "berth-csi made no socket at {}:\n{}",
                sock.display(),
                self.log_tail("berth-csi.log", 40)
            ));
        }
        Ok(())
    }

    /// Wait until the Node reports `Ready=True`.
    pub fn wait_ready(&self, cp: &ControlPlane) -> Result<(), String> {
        let jsonpath = "-o=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        let mut last = String::new();
        let ready = wait_until(READY_TIMEOUT, || {
            last = cp
                .kubectl(&["get", "node", &self.name, jsonpath])
                .unwrap_or_else(|e| e);
            last.trim() == "True"
        });
        if ready {
            Ok(())
        } else {
            Err(format!(
                "node {} not Ready within {READY_TIMEOUT:?} (last: {last})\nkubelet:\n{}",
                self.name,
                self.log_tail("kubelet.log", 40)
            ))
        }
    }

    /// Wait until the Node object exists (kubelet registered it).
    pub fn wait_registered(&self, cp: &ControlPlane) -> Result<(), String> {
        if wait_until(READY_TIMEOUT, || {
            cp.kubectl(&["get", "node", &self.name]).is_ok()
        }) {
            Ok(())
        } else {
            Err(format!(
                "node {} did not register within {READY_TIMEOUT:?}\nkubelet:\n{}",
                self.name,
                self.log_tail("kubelet.log", 40)
            ))
        }
    }

    /// Wait until kubelet lists berth-csi in the Node's CSINode.
    pub fn wait_csi_registered(&self, cp: &ControlPlane) -> Result<(), String> {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(60), || {
            last = cp
                .kubectl(&[
                    "get",
                    "csinode",
                    &self.name,
                    "-o=jsonpath={.spec.drivers[*].name}",
                ])
                .unwrap_or_else(|e| e);
            last.split_whitespace().any(|d| d == CSI_DRIVER)
        });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "kubelet did not register {CSI_DRIVER} on node {} (CSINode drivers: {last})\nkubelet:\n{}\nberth-csi:\n{}",
                self.name,
                self.log_tail("kubelet.log", 30),
                self.log_tail("berth-csi.log", 30)
            ))
        }
    }

    /// berth-csi's socket (what the sidecars dial).
    pub fn csi_socket(&self) -> PathBuf {
        self.dir.path().join("csi/csi.sock")
    }

    /// berth-csi's state database.
    pub fn csi_db(&self) -> PathBuf {
        self.dir.path().join("csi-state/berth-csi.db")
    }

    /// berth-csi's pool of image files.
    pub fn pool(&self) -> PathBuf {
        self.dir.path().join("pool")
    }

    /// kubelet's root dir (where its files are; see [`Node::kubelet_dir`]).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// kubelet's `--root-dir` as kubelet and the pods' host paths see it: [`FHS_KUBELET_DIR`]
    /// with [`NodeOptions::fhs_paths`], else [`Node::root_dir`].
    pub fn kubelet_dir(&self) -> &Path {
        &self.root_inside
    }

    /// The node's tempdir (logs are `<dir>/<name>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CRI harness (crictl, ctr, containerd's log).
    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// Replace the CRI plugin's CNI configuration with `bytes` (it reloads the directory).
    pub fn write_conflist(&self, bytes: &[u8]) -> Result<(), String> {
        self.cri.write_conflist(bytes)
    }

    /// Mount points of the node's mount namespace under its tempdir (kubelet's volumes,
    /// berth-csi's staging), from the namespace holder's mountinfo; kubelet's own bind mount of
    /// its root dir is not listed.
    pub fn mounts(&self) -> Result<Vec<String>, String> {
        let pid = self.cri.containerd().holder.pid();
        let p = format!("/proc/{pid}/mountinfo");
        let text = fs::read_to_string(&p).map_err(|e| format!("read {p}: {e}"))?;
        let under = self.dir.path().to_string_lossy().into_owned();
        // kubelet bind-mounts its root dir onto itself (to make it a shared mount) at start.
        let root = self.root_inside.to_string_lossy().into_owned();
        let in_root = format!("{root}/");
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| (m.starts_with(&under) || m.starts_with(&in_root)) && *m != root)
            .map(str::to_string)
            .collect())
    }

    /// Loop devices backed by the node's image files.
    pub fn loop_devices(&self) -> Vec<(String, String)> {
        loop_devices_of(self.dir.path(), self._loops.1.as_deref())
    }

    /// The last `n` lines of one of the node's logs (`kubelet.log`, `berth-csi.log`).
    pub fn log_tail(&self, log: &str, n: usize) -> String {
        crate::cluster::log_tail(&self.dir.path().join(log), n)
    }

    /// kubelet's, berth-csi's and containerd's log tails, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- kubelet ({}):\n{}\n--- berth-csi:\n{}\n{}",
            self.name,
            self.log_tail("kubelet.log", 30),
            self.log_tail("berth-csi.log", 15),
            self.cri.logs()
        )
    }

    /// Copy the node's logs to `to` (the tempdir goes when the test ends).
    pub fn keep_logs(&self, to: &Path) {
        let _ = fs::create_dir_all(to);
        for log in ["kubelet.log", "berth-csi.log"] {
            let _ = fs::copy(
                self.dir.path().join(log),
                to.join(format!("{}-{log}", self.name)),
            );
        }
        let _ = fs::write(
            to.join(format!("{}-containerd.log", self.name)),
            self.cri.logs(),
        );
    }
}

/// Run `argv` inside the node's mount namespace; an error carries its stderr.
fn run_inside(cri: &Cri, argv: &[&str]) -> Result<(), String> {
    let holder = &cri.containerd().holder;
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = holder.command(prog);
    cmd.args(args);
    let (out, timed_out) = holder
        .output(cmd, Duration::from_secs(20))
        .map_err(|e| format!("{argv:?} in the node's mount namespace: {e}"))?;
    if timed_out || !out.status.success() {
        return Err(format!(
            "{argv:?} in the node's mount namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Bind-mount `src` over `target` (created first) inside the node's mount namespace.
fn bind_inside(cri: &Cri, src: &Path, target: &Path) -> Result<(), String> {
    let (src, target) = (src.to_string_lossy(), target.to_string_lossy());
    run_inside(cri, &["mkdir", "-p", &target])?;
    run_inside(cri, &["mount", "-n", "--bind", &src, &target])
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_kubelet();
        if let Some(mut c) = self.csi.take() {
            c.stop();
        }
    }
}

/// Install what berth-csi needs in the cluster: the VolumeSnapshot CRDs of the pinned
/// external-snapshotter release, and deploy/kubernetes' namespace, CSIDriver, RBAC and
/// StorageClasses (`repo` is the repository root).
pub fn install_storage(cp: &ControlPlane, repo: &Path) -> Result<(), String> {
    let crds = netns_fixture::test_peer("files/snapshot-crds");
    cp.kubectl(&["apply", "--server-side", "-k", &crds.to_string_lossy()])?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/volumesnapshots.snapshot.storage.k8s.io",
    ])?;
    let m = repo.join("deploy/kubernetes");
    for f in [
        "00-namespace.yaml",
        "01-csidriver.yaml",
        "02-rbac.yaml",
        "04-storageclasses.yaml",
    ] {
        cp.kubectl(&["apply", "-f", &m.join(f).to_string_lossy()])?;
    }
    Ok(())
}

/// The CSI sidecars ([`SIDECARS`]) of one node's berth-csi, as processes in the node's host
/// netns authenticated as the berth-csi ServiceAccount; stopped by PID on drop.
pub struct Sidecars {
    children: Vec<netns_fixture::ChildGuard>,
}

impl Sidecars {
    /// Start every sidecar on `node`'s berth-csi socket; logs are `<dir>/<sidecar>.log`.
    pub fn start(
        cp: &ControlPlane,
        host: &Host,
        node: &Node,
        dir: &Path,
    ) -> Result<Sidecars, String> {
        let sa = dir.join("berth-csi.kubeconfig");
        cp.service_account_kubeconfig("berth-system", "berth-csi", &sa)?;
        let mut me = Sidecars {
            children: Vec::new(),
        };
        for name in SIDECARS {
            let mut cmd = sidecar_command(name, &node.csi_socket(), &sa, &cp.admin, &node.name)?;
            let log_path = dir.join(format!("{name}.log"));
            let log =
                fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
            let log2 = log.try_clone().map_err(|e| e.to_string())?;
            cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
            let child = netns_fixture::spawn_in_netns(host.ns.path(), cmd)
                .map_err(|e| format!("cannot start {name}: {e}"))?;
            me.children.push(netns_fixture::ChildGuard::new(child));
        }
        eprintln!(
            "sidecars: {}",
            SIDECARS
                .map(|s| format!("{s} {}", tool_version(s)))
                .join(", ")
        );
        Ok(me)
    }
}

/// Wait until kube-controller-manager made the `default` ServiceAccount of `default` (pods are
/// refused before).
pub fn wait_default_service_account(cp: &ControlPlane) -> Result<(), String> {
    if wait_until(Duration::from_secs(60), || {
        cp.kubectl(&["get", "serviceaccount", "default"]).is_ok()
    }) {
        Ok(())
    } else {
        Err(format!(
            "no default ServiceAccount after 60 s\n{}",
            cp.log_tail("kube-controller-manager")
        ))
    }
}

/// An etcd for berth-overlayd's leases (deploy/kubernetes expects one beside the cluster's),
/// serving clients on `client` (`host:port`) with its peer port on 127.0.0.1:22380, its data
/// in `dir/overlay-etcd` and its log in `dir/overlay-etcd.log`; spawn it in the netns it
/// serves.
pub fn overlay_etcd_command(client: &str, dir: &Path) -> Result<Command, String> {
    let log = dir.join("overlay-etcd.log");
    let log = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut etcd = Command::new("etcd");
    etcd.arg("--data-dir")
        .arg(dir.join("overlay-etcd"))
        .args([
            &format!("--listen-client-urls=http://{client}"),
            &format!("--advertise-client-urls=http://{client}"),
            "--listen-peer-urls=http://127.0.0.1:22380",
            "--initial-advertise-peer-urls=http://127.0.0.1:22380",
            "--initial-cluster=default=http://127.0.0.1:22380",
            "--log-level=warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(etcd)
}

/// Rows of a table of berth-csi's state database (opened read-only beside the running driver).
pub fn csi_state_rows(db: &Path, table: &str) -> Result<i64, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("{}: {e}", db.display()))?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .map_err(|e| format!("{} table {table}: {e}", db.display()))
}

/// The busybox image every pod of the cluster tests runs (imported, never pulled).
pub const POD_IMAGE: &str = crate::cri::IMAGE;

/// A Pod manifest: one busybox container running `sh -c script`, scheduled (by the scheduler,
/// so WaitForFirstConsumer claims get their node) onto `node`, with the given
/// volumes (`volumes`, `volumeMounts`, `volumeDevices` JSON) merged in.
pub fn pod(name: &str, node: &str, script: &str, extra: Value) -> Value {
    let mut container = json!({
        "name": "main",
        "image": POD_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
    });
    let mut spec = json!({
        "nodeSelector": { "kubernetes.io/hostname": node },
        "terminationGracePeriodSeconds": 1,
        "dnsPolicy": "Default",
        "enableServiceLinks": false,
        "automountServiceAccountToken": false,
        "containers": [],
    });
    if let Some(obj) = extra.as_object() {
        for (k, v) in obj {
            match k.as_str() {
                "volumeMounts" | "volumeDevices" => container[k] = v.clone(),
                _ => spec[k] = v.clone(),
            }
        }
    }
    spec["containers"] = json!([container]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": spec,
    })
}
