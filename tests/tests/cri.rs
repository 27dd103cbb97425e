//! Scenario "CRI": crictl drives containerd 1.6's CRI plugin (the path kubelet's pods take) with
//! Berth as the CNI.
//!
//! Each test creates a host netns and starts containerd in it the way `berth_tests::runtime`
//! does for `ctr`: the daemon enters the test's host netns and a private mount namespace by
//! `setns` between fork and exec (what `nsenter --net=/var/run/netns/<host>` does; never
//! `ip netns exec`, whose fresh sysfs hides /sys/fs/cgroup from runc). In that mount namespace
//! `/run` (so also `/var/run/netns`, where the CRI plugin binds the pods' netns files `cni-*`),
//! `/var/lib` (libcni's cache) and `/dev/shm` are private tmpfs; containerd's root, state, gRPC
//! socket, configuration and logs, the CNI `bin_dir` (links to our release binaries and the
//! reference `loopback`, which containerd 1.6 always configures) and `conf_dir` (one conflist)
//! are in the test's tempdir. The sandbox image is Debian's busybox-static rootfs packed as a
//! docker-archive tarball and `ctr -n k8s.io images import`ed. Every pod sandbox gets a unique
//! `linux.cgroup_parent`.
//!
//! Guards (also when a test fails): containerd, shims and containers are killed by PID (every
//! process of the private mount namespace and their descendants), which also drops the
//! namespace's mounts; the pods' cgroup parents are removed under every /sys/fs/cgroup
//! hierarchy; a pod netns file that shows up in the real /var/run/netns is unmounted and
//! removed; berth-overlayd is stopped by PID; the test's netns are deleted; the tempdir
//! (containerd root and state) is removed. Nothing is configured in the root netns.
//!
//! crictl is built by scripts/test-peers.sh into `$BERTH_TOOLS_DIR/bin` (default
//! /var/cache/berth-tools); a missing crictl fails the tests.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_tests::bench::{median, ms};
use berth_tests::netns::*;
use berth_tests::runtime::{busybox_rootfs_tar, remove_cgroup_tree, require_tool, Containerd};
use berth_tests::{
    bin_dir, parse_cidr, read_allocations, store_path, unique_name, v4_add, HOST_LOCAL_BIN,
};
use serde_json::{json, Value};

/// The sandbox and container image (imported, never pulled).
const IMAGE: &str = "localhost/berth-busybox:cri";
/// Time limit for one crictl / ctr call.
const T: Duration = Duration::from_secs(120);
/// The network name of the bridge conflist.
const NETWORK: &str = "berthcri";
/// The bridge scenarios' pod subnet and gateway.
const SUBNET: &str = "10.97.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);

fn need_root() {
    assert!(
        netns_fixture::is_root(),
        "the CRI tests create namespaces and run containerd: run them as root"
    );
}

/// `$BERTH_TOOLS_DIR/bin/crictl` (default /var/cache/berth-tools/bin/crictl); panics when it
/// is not built.
fn crictl_bin() -> PathBuf {
    let tools = match std::env::var_os("BERTH_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/var/cache/berth-tools"),
    };
    let bin = tools.join("bin/crictl");
    assert!(
        bin.is_file(),
        "crictl not found at {}: run scripts/test-peers.sh to build the pinned test peers \
         (tests/tools/versions.txt; CI builds them), or point BERTH_TOOLS_DIR at a directory with bin/crictl",
        bin.display()
    );
    bin
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn run_tool(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", argv[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(path: &Path) -> String {
    let p = path.to_string_lossy();
    let out = run_tool(&["sha256sum", &p]);
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A docker-archive tarball of the busybox-static rootfs (one layer), tagged [`IMAGE`], whose
/// default command sleeps (the sandbox's "pause" process). Returns its path.
fn busybox_image_archive(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let layer = busybox_rootfs_tar(dir).unwrap_or_else(|e| panic!("busybox rootfs: {e}"));
    let arch = dir.join("archive");
    fs::create_dir_all(&arch).unwrap();
    let diff_id = sha256_file(&layer);
    fs::rename(&layer, arch.join("layer.tar")).unwrap();
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
    let config_bytes = serde_json::to_vec(&config).unwrap();
    fs::write(arch.join("config.json"), &config_bytes).unwrap();
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [IMAGE],
        "Layers": ["layer.tar"],
    }]);
    fs::write(
        arch.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
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
    ]);
    tar
}

/// A pod sandbox made by `crictl runp`.
#[derive(Clone, Debug)]
struct Sandbox {
    id: String,
    name: String,
    config: PathBuf,
    ip: IpAddr,
}

/// containerd with its CRI plugin and crictl, inside a test host netns; see the module doc.
struct Cri {
    crictl: PathBuf,
    dir: PathBuf,
    containerd: Option<Containerd>,
    /// Cgroup parents given to sandboxes (top-level cgroup names), removed on drop.
    cgroups: RefCell<Vec<String>>,
    /// Names of the pods' netns files (`cni-*`) as containerd reported them.
    netns_files: RefCell<Vec<String>>,
    _tmp: tempfile::TempDir,
}

impl Drop for Cri {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            c.shutdown();
        }
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
    /// Start containerd with the CRI plugin in `host`, `conflist` as its only CNI
    /// configuration and links to `plugins` (file names in `bin_dir()`) plus the reference
    /// `loopback` in its CNI `bin_dir`; import the image; wait until CRI reports the network
    /// ready.
    fn start(host: &Host, conflist: &Value, plugins: &[&str]) -> Cri {
        let crictl = crictl_bin();
        for (tool, pkg) in [
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("sha256sum", "coreutils"),
        ] {
            require_tool(tool, pkg).unwrap_or_else(|e| panic!("{e}"));
        }
        let tmp = tempfile::Builder::new()
            .prefix("berth-cri-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let cni_bin = dir.join("cni-bin");
        let cni_conf = dir.join("cni-conf");
        for d in [&cni_bin, &cni_conf, &dir.join("pods")] {
            fs::create_dir_all(d).unwrap();
        }
        for p in plugins {
            let src = bin_dir().join(p);
            require_bin(&src);
            std::os::unix::fs::symlink(&src, cni_bin.join(p)).unwrap();
        }
        let lo = Path::new(REFERENCE_CNI_DIR).join("loopback");
        assert!(
            lo.is_file(),
            "{} not found: containerd 1.6's CRI plugin always sets up `lo` with the reference \
             loopback plugin; install the Debian package containernetworking-plugins",
            lo.display()
        );
        std::os::unix::fs::symlink(&lo, cni_bin.join("loopback")).unwrap();
        fs::write(
            cni_conf.join("10-berth.conflist"),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        fs::write(
            dir.join("crictl.yaml"),
            format!(
                "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: 60\ndebug: false\n",
                s(&dir.join("containerd.sock"))
            ),
        )
        .unwrap();
        let archive = busybox_image_archive(&dir.join("image"));
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
                .unwrap_or_else(|e| panic!("containerd with the CRI plugin did not start: {e}"));
        let cri = Cri {
            crictl,
            dir,
            containerd: Some(containerd),
            cgroups: RefCell::new(Vec::new()),
            netns_files: RefCell::new(Vec::new()),
            _tmp: tmp,
        };
        cri.ctr_ok(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            &archive.to_string_lossy(),
        ]);
        cri.wait_ready();
        let images = cri.crictl_ok(&["images"]);
        assert!(
            images.contains("localhost/berth-busybox"),
            "CRI does not list the imported image: {images}\n{}",
            cri.logs()
        );
        cri
    }

    fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd")
    }

    /// containerd's log tail, for failure messages.
    fn logs(&self) -> String {
        format!(
            "---- containerd log (tail) ----\n{}",
            self.containerd().log_tail()
        )
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        self.containerd()
            .ok(args, T)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `crictl --config <dir>/crictl.yaml <args>` in the host netns and the private mount
    /// namespace.
    fn crictl(&self, args: &[&str]) -> Output {
        let c = self.containerd();
        let mut cmd = c.holder.command(&self.crictl);
        cmd.arg("--config")
            .arg(self.dir.join("crictl.yaml"))
            .args(args);
        let (out, timed_out) = c
            .holder
            .output(cmd, T)
            .unwrap_or_else(|e| panic!("cannot run crictl: {e}"));
        assert!(
            !timed_out,
            "crictl {} timed out after {T:?}: {}\n{}",
            args.join(" "),
            text(&out),
            self.logs()
        );
        out
    }

    /// crictl that must exit 0; stdout.
    fn crictl_ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {} failed: {}\n{}",
            args.join(" "),
            text(&out),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn crictl_json(&self, args: &[&str]) -> Value {
        let out = self.crictl_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "crictl {}: not JSON ({e}): {out}\n{}",
                args.join(" "),
                self.logs()
            )
        })
    }

    /// Wait until `crictl info` reports RuntimeReady and NetworkReady (the CRI plugin loaded
    /// our conflist); panics with its exact output otherwise.
    fn wait_ready(&self) {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(30), || {
            let out = self.crictl(&["info"]);
            last = text(&out);
            if !out.status.success() {
                return false;
            }
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let conds = v["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ["RuntimeReady", "NetworkReady"].iter().all(|t| {
                conds
                    .iter()
                    .any(|c| c["type"] == json!(t) && c["status"] == json!(true))
            })
        });
        assert!(
            ok,
            "containerd's CRI plugin is not ready (crictl info): {last}\n{}",
            self.logs()
        );
    }

    /// `crictl runp` a sandbox with a unique cgroup parent; its address from `inspectp`.
    fn runp(&self, name: &str) -> Sandbox {
        let cgroup = unique_name("berth-cri");
        self.cgroups.borrow_mut().push(cgroup.clone());
        let logs = self.dir.join("pods").join(name);
        fs::create_dir_all(&logs).unwrap();
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
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let id = self
            .crictl_ok(&["runp", &path.to_string_lossy()])
            .trim()
            .to_string();
        assert!(!id.is_empty(), "crictl runp printed no id\n{}", self.logs());
        let v = self.inspectp(&id);
        self.note_netns(&v);
        let ip = v["status"]["network"]["ip"]
            .as_str()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "inspectp {id}: no .status.network.ip: {}\n{}",
                    v["status"],
                    self.logs()
                )
            });
        Sandbox {
            id,
            name: name.to_string(),
            config: path,
            ip,
        }
    }

    fn inspectp(&self, id: &str) -> Value {
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
                    self.netns_files.borrow_mut().push(name);
                }
            }
        }
    }

    /// `crictl create` + `start` a busybox container running `sleep 3600` in `pod`.
    fn container(&self, pod: &Sandbox) -> String {
        let config = json!({
            "metadata": { "name": "app" },
            "image": { "image": IMAGE },
            "command": ["sleep", "3600"],
            "log_path": "app.log",
            "linux": {},
        });
        let path = self.dir.join("pods").join(format!("{}-app.json", pod.name));
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let id = self
            .crictl_ok(&[
                "create",
                &pod.id,
                &path.to_string_lossy(),
                &pod.config.to_string_lossy(),
            ])
            .trim()
            .to_string();
        self.crictl_ok(&["start", &id]);
        let state = self.crictl_json(&["inspect", "-o", "json", &id])["status"]["state"].clone();
        assert_eq!(
            state,
            json!("CONTAINER_RUNNING"),
            "container {id} in {} is not running\n{}",
            pod.name,
            self.logs()
        );
        id
    }

    /// Whether `ping` from inside container `cid` (crictl exec, synchronous) reaches `addr`,
    /// trying up to 5 times.
    fn ping_from(&self, cid: &str, addr: IpAddr) -> Result<(), String> {
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
            ]);
            if out.status.success() {
                return Ok(());
            }
            last = text(&out);
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("ping {a} from container {cid}: {last}"))
    }

    /// `crictl stopp` + `rmp`; the time both took.
    fn stop_remove(&self, pod: &Sandbox) -> Duration {
        let t = Instant::now();
        self.crictl_ok(&["stopp", &pod.id]);
        self.crictl_ok(&["rmp", &pod.id]);
        t.elapsed()
    }

    /// Names in the private /run/netns (where the CRI plugin binds pod netns files).
    fn private_netns_files(&self) -> Vec<String> {
        let c = self.containerd();
        let mut cmd = c.holder.command("ls");
        cmd.arg("-1").arg("/run/netns");
        let (out, _) = c.holder.output(cmd, T).expect("ls /run/netns");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Restart containerd (SIGTERM, then start again on the same root and state); shims and
    /// containers keep running meanwhile.
    fn restart(&mut self) {
        let c = self.containerd.as_mut().expect("containerd");
        let old = c.daemon_pid();
        c.stop_daemon();
        c.start_daemon()
            .unwrap_or_else(|e| panic!("containerd did not start again: {e}"));
        assert_ne!(old, c.daemon_pid(), "containerd was not restarted");
        self.wait_ready();
    }
}

/// What must be gone once every sandbox was stopped and removed; empty when all is clean.
/// `uplinks` are the host's own veths (the underlay link), not pods'.
fn leftovers(
    host: &Host,
    cri: &Cri,
    ipam_db: &Path,
    records: &Path,
    uplinks: &[&str],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut veths = host.veths();
    veths.retain(|v| !uplinks.contains(&v.as_str()));
    if !veths.is_empty() {
        out.push(format!("veths in the host netns: {veths:?}"));
    }
    let nat = host.nat_elements();
    if !nat.is_empty() {
        out.push(format!("{} NAT set element(s): {nat:?}", nat.len()));
    }
    if ipam_db.exists() {
        match read_allocations(ipam_db) {
            Ok(rows) if !rows.is_empty() => {
                out.push(format!("{} IPAM allocation(s) held: {rows:?}", rows.len()))
            }
            Ok(_) => {}
            Err(e) => out.push(format!("cannot read {}: {e}", ipam_db.display())),
        }
    }
    match read_attachment_records(records) {
        Ok(rows) if !rows.is_empty() => out.push(format!("attachment records left: {rows:?}")),
        _ => {}
    }
    let private: Vec<String> = cri
        .private_netns_files()
        .into_iter()
        .filter(|n| n.starts_with("cni-"))
        .collect();
    if !private.is_empty() {
        out.push(format!(
            "pod netns files left in /var/run/netns: {private:?}"
        ));
    }
    for name in cri.netns_files.borrow().iter() {
        if Path::new(NETNS_DIR).join(name).exists() {
            out.push(format!("pod netns file {name} in the real {NETNS_DIR}"));
        }
    }
    let pods = cri.crictl_ok(&["pods", "-q"]);
    if !pods.trim().is_empty() {
        out.push(format!("sandboxes still listed: {}", pods.trim()));
    }
    out
}

/// Assert [`leftovers`] is (or soon becomes) empty.
fn assert_clean(
    host: &Host,
    cri: &Cri,
    (ipam_db, records): (&Path, &Path),
    uplinks: &[&str],
    context: &str,
) {
    let mut last = Vec::new();
    let clean = wait_until(Duration::from_secs(5), || {
        last = leftovers(host, cri, ipam_db, records, uplinks);
        last.is_empty()
    });
    assert!(
        clean,
        "{context}: left behind:\n- {}\n{}",
        last.join("\n- "),
        cri.logs()
    );
}

/// berth-bridge (gateway, masquerade) + berth-host-local on [`SUBNET`], stores under `dir`.
///
/// `cni_version` is 1.0.0 for containerd 1.6: its libcni fails every ADD of a 1.1.0
/// configuration with `unsupported CNI result version "1.1.0"`.
fn bridge_conflist(dir: &Path, cni_version: &str) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": NETWORK,
        "plugins": [{
            "type": BRIDGE_BIN,
            "bridge": "berth0",
            "isGateway": true,
            "ipMasq": true,
            "dataDir": dir.join("bridge-data").to_string_lossy(),
            "ipam": {
                "type": HOST_LOCAL_BIN,
                "dataDir": dir.join("ipam-data").to_string_lossy(),
                "ranges": [[{ "subnet": SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }],
    })
}

/// A directory for the plugins' stores that outlives the [`Cri`] (declared before it).
fn store_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-cri-stores-")
        .tempdir()
        .expect("tempdir")
}

fn assert_ping(cri: &Cri, cid: &str, addr: IpAddr, what: &str) {
    if let Err(e) = cri.ping_from(cid, addr) {
        panic!("{what}: {e}\n{}", cri.logs());
    }
}

/// The host netns reaches every pod.
fn assert_host_reaches(host: &Host, cri: &Cri, pods: &[Sandbox], what: &str) {
    for p in pods {
        assert!(
            host.ping(p.ip, 8),
            "{what}: host netns -> {} ({}) does not answer\n{}",
            p.name,
            p.ip,
            cri.logs()
        );
    }
}

/// `stopp` + `rmp` of every pod; the time each took.
fn stop_remove_all(cri: &Cri, pods: &[Sandbox]) -> Vec<Duration> {
    pods.iter().map(|p| cri.stop_remove(p)).collect()
}

fn print_timings(test: &str, runp: &[Duration], stop_rm: &[Duration]) {
    let m = |v: &[Duration]| median(v).map(ms).unwrap_or_else(|| "-".into());
    println!(
        "cri-timings test={test} sandboxes={} runp_median_ms={} stopp_rmp_median_ms={}",
        runp.len(),
        m(runp),
        m(stop_rm)
    );
}

#[test]
fn cri_bridge_lifecycle_20_sandboxes() {
    need_root();
    let host = Host::new();
    let stores = store_dir();
    let cri = Cri::start(
        &host,
        &bridge_conflist(stores.path(), "1.0.0"),
        &[BRIDGE_BIN, HOST_LOCAL_BIN],
    );
    let ipam_db = store_path(&stores.path().join("ipam-data"), NETWORK);
    let records = records_path(&stores.path().join("bridge-data"), NETWORK);

    let t_all = Instant::now();
    let mut pods = Vec::new();
    let mut runp_times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let pod = cri.runp(&format!("pod{i}"));
        runp_times.push(t.elapsed());
        pods.push(pod);
    }
    let ips: HashSet<IpAddr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(
        ips.len(),
        20,
        "20 sandboxes got {} distinct addresses: {:?}",
        ips.len(),
        pods.iter().map(|p| p.ip).collect::<Vec<_>>()
    );
    for p in &pods {
        assert!(
            subnet_ok(SUBNET, p.ip),
            "{} got {} outside {SUBNET}",
            p.name,
            p.ip
        );
    }
    let held = read_allocations(&ipam_db).expect("read the IPAM store");
    assert_eq!(held.len(), 20, "IPAM store while 20 pods run: {held:?}");

    let c0 = cri.container(&pods[0]);
    let c1 = cri.container(&pods[1]);
    assert_ping(
        &cri,
        &c0,
        IpAddr::V4(GATEWAY),
        "container -> bridge gateway",
    );
    assert_ping(&cri, &c0, pods[1].ip, "container in pod0 -> pod1");
    assert_ping(&cri, &c1, pods[19].ip, "container in pod1 -> pod19");
    assert_host_reaches(&host, &cri, &pods, "bridge");

    let stop_times = stop_remove_all(&cri, &pods);
    assert_clean(
        &host,
        &cri,
        (&ipam_db, &records),
        &[],
        "after stopp + rmp of 20 sandboxes",
    );
    print_timings("bridge", &runp_times, &stop_times);
    println!(
        "cri bridge lifecycle: 20 sandboxes, 2 containers, pings, teardown in {:?}",
        t_all.elapsed()
    );
}

#[test]
fn cri_containerd_restart_keeps_pods() {
    need_root();
    let host = Host::new();
    let stores = store_dir();
    let mut cri = Cri::start(
        &host,
        &bridge_conflist(stores.path(), "1.0.0"),
        &[BRIDGE_BIN, HOST_LOCAL_BIN],
    );
    let ipam_db = store_path(&stores.path().join("ipam-data"), NETWORK);
    let records = records_path(&stores.path().join("bridge-data"), NETWORK);

    let pods: Vec<Sandbox> = (0..3).map(|i| cri.runp(&format!("pod{i}"))).collect();
    let ctrs: Vec<String> = pods.iter().map(|p| cri.container(p)).collect();
    assert_ping(
        &cri,
        &ctrs[0],
        pods[1].ip,
        "before the restart: pod0 -> pod1",
    );

    cri.restart();

    for (p, c) in pods.iter().zip(&ctrs) {
        let v = cri.inspectp(&p.id);
        assert_eq!(
            v["status"]["state"],
            json!("SANDBOX_READY"),
            "{} after the restart: {}\n{}",
            p.name,
            v["status"],
            cri.logs()
        );
        assert_eq!(
            v["status"]["network"]["ip"].as_str(),
            Some(p.ip.to_string().as_str()),
            "{} changed its address across the containerd restart\n{}",
            p.name,
            cri.logs()
        );
        let state = cri.crictl_json(&["inspect", "-o", "json", c])["status"]["state"].clone();
        assert_eq!(
            state,
            json!("CONTAINER_RUNNING"),
            "container of {} after the restart\n{}",
            p.name,
            cri.logs()
        );
    }
    assert_ping(
        &cri,
        &ctrs[0],
        pods[1].ip,
        "after the restart: pod0 -> pod1",
    );
    assert_ping(
        &cri,
        &ctrs[1],
        pods[2].ip,
        "after the restart: pod1 -> pod2",
    );
    assert_ping(
        &cri,
        &ctrs[2],
        IpAddr::V4(GATEWAY),
        "after the restart: pod2 -> gateway",
    );
    assert_host_reaches(&host, &cri, &pods, "after the restart");
    // A sandbox made after the restart gets an address no running pod holds.
    let late = cri.runp("late");
    assert!(
        pods.iter().all(|p| p.ip != late.ip),
        "a sandbox made after the restart got {}, already held by a running pod",
        late.ip
    );

    for p in pods.iter().chain(std::iter::once(&late)) {
        cri.stop_remove(p);
    }
    assert_clean(
        &host,
        &cri,
        (&ipam_db, &records),
        &[],
        "after a containerd restart and stopp + rmp of every sandbox",
    );
}

#[test]
fn cri_overlay_lifecycle() {
    need_root();
    let ul = Underlay::create("bcu", "br-ul", Some("172.31.251.254/24"));
    let host = Host::new();
    ul.attach(&host, "u1", "eth0", &["172.31.251.1/24"]);
    let stores = store_dir();
    let subnet_file = stores.path().join("subnet.env");
    let data_dir = stores.path().join("ovl-data");
    let agent_log = stores.path().join("overlayd.log");
    let overlayd = bin_dir().join("berth-overlayd");
    require_bin(&overlayd);
    let mut cmd = Command::new(&overlayd);
    cmd.args([
        "--node-name",
        "node1",
        "--network",
        "10.244.0.0/16",
        "--store",
        &format!("dir:{}", stores.path().join("lease-store").display()),
        "--iface",
        "eth0",
    ])
    .arg("--subnet-file")
    .arg(&subnet_file)
    .args(["--lease-ttl", "30s", "--resync-interval", "1s"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(&agent_log).unwrap());
    let mut agent = ChildGuard::new(host.spawn(cmd).expect("start berth-overlayd"));
    let agent_text = || fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(15), || subnet_file.exists()),
        "berth-overlayd wrote no subnet file: {}",
        agent_text()
    );
    let subnet = fs::read_to_string(&subnet_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("BERTH_SUBNET="))
        .expect("BERTH_SUBNET in the subnet file")
        .to_string();
    let gateway = match parse_cidr(&subnet) {
        Some((IpAddr::V4(base), _)) => IpAddr::V4(v4_add(base, 1)),
        other => panic!("node subnet {subnet}: {other:?}"),
    };
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{
            "type": "berth-overlay",
            "subnetFile": subnet_file.to_string_lossy(),
            "dataDir": data_dir.to_string_lossy(),
        }],
    });
    let cri = Cri::start(
        &host,
        &conflist,
        &["berth-overlay", BRIDGE_BIN, HOST_LOCAL_BIN],
    );
    let ipam_db = store_path(&data_dir, "pods");
    let records = records_path(&data_dir, "pods");

    let mut runp_times = Vec::new();
    let mut pods = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        pods.push(cri.runp(&format!("opod{i}")));
        runp_times.push(t.elapsed());
    }
    let ips: HashSet<IpAddr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), pods.len(), "addresses: {ips:?}");
    for p in &pods {
        assert!(
            subnet_ok(&subnet, p.ip),
            "{} got {} outside the node subnet {subnet}",
            p.name,
            p.ip
        );
    }
    let c0 = cri.container(&pods[0]);
    let c1 = cri.container(&pods[1]);
    assert_ping(&cri, &c0, gateway, "overlay: container -> gateway");
    assert_ping(&cri, &c0, pods[1].ip, "overlay: pod0 -> pod1");
    assert_ping(&cri, &c1, pods[4].ip, "overlay: pod1 -> pod4");
    assert_host_reaches(&host, &cri, &pods, "overlay");
    let stop_times = stop_remove_all(&cri, &pods);
    assert_clean(
        &host,
        &cri,
        (&ipam_db, &records),
        &["eth0"],
        "overlay: after stopp + rmp",
    );
    assert!(
        agent.running(),
        "berth-overlayd exited during the test: {}",
        agent_text()
    );
    print_timings("overlay", &runp_times, &stop_times);
    drop(cri);
    agent.stop();
}

fn subnet_ok(subnet: &str, ip: IpAddr) -> bool {
    berth_tests::subnet_contains(subnet, ip)
}
