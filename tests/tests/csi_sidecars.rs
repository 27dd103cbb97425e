//! Scenario "CSI through the sidecars": berth-csi behind the kubernetes-csi sidecars
//! (external-provisioner, external-attacher, external-resizer, csi-snapshotter) and the
//! snapshot-controller, against the real control plane of `berth_tests::cluster`, all in one
//! test netns. Each sidecar runs as a process on berth-csi's socket with the arguments
//! `deploy/kubernetes/03-node-daemonset.yaml` gives it and a kubeconfig holding a token of the
//! `berth-csi` ServiceAccount, so the shipped RBAC is what authorizes them.
//!
//! What a kubelet would do is done by hand, because the kubelet is the next issue's work: the
//! Node object with berth-csi's topology label and the CSINode object (the kubelet writes both
//! when node-driver-registrar registers the driver), the `volume.kubernetes.io/selected-node`
//! annotation (the scheduler sets it when it places a pod that uses a WaitForFirstConsumer
//! claim) and the VolumeAttachment (the controller-manager's attach-detach controller creates
//! it for a scheduled pod). Everything the sidecars and berth-csi do is real.
//!
//! Guards, also when a test fails: every process (control plane, berth-csi, sidecars) is
//! stopped by PID, the netns deleted, the tempdir (berth-csi's state and pool) removed.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// nfs-ganesha in a test netns, the fixture csi-driver's NFS tests use.
#[allow(dead_code)]
#[path = "../../csi-driver/tests/common/nfs_server.rs"]
mod nfs_server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::cluster::{
    log_tail, sidecar_command, tool_version, ControlPlane, DEFAULT_ADDRESS,
};
use berth_tests::kubelet::csi_state_rows;
use netns_fixture::{spawn_in_netns, test_peer, wait_until, ChildGuard, Netns};
use serde_json::{json, Value};

/// The fake node's name (berth-csi's --node-id and its topology value).
const NODE: &str = "berth-node-1";
const TOPOLOGY_KEY: &str = "topology.csi.berth.dev/node";
const DRIVER: &str = "csi.berth.dev";
/// The test's namespace for claims and snapshots.
const NS: &str = "berth-test";
/// How long a claim gets to bind, a snapshot to become ready, a resize to finish.
const SETTLE: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A process of the test (berth-csi or a sidecar) with its log.
struct Proc {
    name: String,
    child: ChildGuard,
    log: PathBuf,
}

/// The control plane, berth-csi and the sidecars of one test.
struct Cluster {
    // Dropped in declaration order: the sidecars and berth-csi stop before the control plane,
    // the netns goes after every process in it, the tempdir last.
    procs: Vec<Proc>,
    cp: ControlPlane,
    /// The test's own netns, or `None` when it runs in one the caller owns (the NFS server's).
    _netns: Option<Netns>,
    netns_path: PathBuf,
    dir: tempfile::TempDir,
    /// The berth-csi ServiceAccount's kubeconfig (what the sidecars use).
    sa_kubeconfig: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        assert!(
            netns_fixture::is_root(),
            "run as root: the test creates a netns"
        );
        let netns = Netns::create("bsc");
        let path = netns.path().to_path_buf();
        Cluster::start_in(Some(netns), &path)
    }

    /// Everything in the netns at `netns_path`; `owned` is dropped after every process.
    fn start_in(owned: Option<Netns>, netns_path: &Path) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(netns_path, &dir.path().join("cp"), DEFAULT_ADDRESS)
            .unwrap_or_else(|e| panic!("control plane: {e}"));
        let mut c = Cluster {
            procs: Vec::new(),
            sa_kubeconfig: dir.path().join("berth-csi.kubeconfig"),
            cp,
            _netns: owned,
            netns_path: netns_path.to_path_buf(),
            dir,
        };
        let m = root().join("deploy/kubernetes");
        let crds = test_peer("files/snapshot-crds");
        c.kubectl(&["apply", "--server-side", "-k", &crds.to_string_lossy()]);
        c.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/volumesnapshots.snapshot.storage.k8s.io",
            "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
            "crd/volumesnapshotclasses.snapshot.storage.k8s.io",
        ]);
        for f in [
            "00-namespace.yaml",
            "01-csidriver.yaml",
            "02-rbac.yaml",
            "04-storageclasses.yaml",
        ] {
            c.kubectl(&["apply", "-f", &m.join(f).to_string_lossy()]);
        }
        c.kubectl(&["create", "namespace", NS]);
        // What the kubelet writes at registration (see the file's comment).
        c.apply(&json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": NODE, "labels": {
                "kubernetes.io/hostname": NODE, TOPOLOGY_KEY: NODE,
            }},
        }));
        c.apply(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
            "metadata": { "name": NODE },
            "spec": { "drivers": [{
                "name": DRIVER, "nodeID": NODE, "topologyKeys": [TOPOLOGY_KEY],
            }]},
        }));
        c.cp.service_account_kubeconfig("berth-system", "berth-csi", &c.sa_kubeconfig)
            .unwrap();
        c.start_driver();
        for s in [
            "csi-provisioner",
            "csi-attacher",
            "csi-resizer",
            "csi-snapshotter",
            "snapshot-controller",
        ] {
            c.start_sidecar(s);
        }
        eprintln!(
            "sidecars: {}",
            [
                "csi-provisioner",
                "csi-attacher",
                "csi-resizer",
                "csi-snapshotter",
                "snapshot-controller"
            ]
            .map(|s| format!("{s} {}", tool_version(s)))
            .join(", ")
        );
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("csi/csi.sock")
    }

    fn pool(&self) -> PathBuf {
        self.dir.path().join("pool")
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) {
        // A restarted process replaces its predecessor (already stopped or killed).
        self.procs.retain(|p| p.name != name);
        let log = self.dir.path().join(format!("{name}.log"));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        let child = spawn_in_netns(&self.netns_path, cmd)
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push(Proc {
            name: name.to_string(),
            child: ChildGuard::new(child),
            log,
        });
    }

    fn start_driver(&mut self) {
        fs::create_dir_all(self.dir.path().join("csi")).unwrap();
        let mut cmd = Command::new(berth_tests::bin_dir().join("berth-csi"));
        cmd.arg(format!("--endpoint=unix://{}", self.socket().display()))
            .arg(format!("--node-id={NODE}"))
            .arg(format!(
                "--state-dir={}",
                self.dir.path().join("state").display()
            ))
            .arg(format!("--local-pool={}", self.pool().display()))
            .args([
                "--mode=all",
                "--max-volumes-per-node=0",
                "--default-fs-type=ext4",
                "--publish-nodes=any",
            ])
            .env("BERTH_CSI_LOG", "info");
        self.spawn("berth-csi", cmd);
        let sock = self.socket();
        assert!(
            wait_until(Duration::from_secs(20), || sock.exists()),
            "berth-csi made no socket:\n{}",
            self.log_tail("berth-csi")
        );
    }

    /// A sidecar as [`sidecar_command`] makes it.
    fn start_sidecar(&mut self, name: &str) {
        let cmd = sidecar_command(
            name,
            &self.socket(),
            &self.sa_kubeconfig,
            &self.cp.admin,
            NODE,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.spawn(name, cmd);
    }

    fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    fn log_tail(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| log_tail(&p.log, 60))
            .unwrap_or_default()
    }

    /// The lines of a process's log that mention `word`.
    fn log_lines(&self, name: &str, word: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| fs::read_to_string(&p.log).ok())
            .map(|l| {
                l.lines()
                    .filter(|l| l.contains(word))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// Copy every log (the processes' and the control plane's) out of the tempdir, which goes
    /// when the test ends; returns where.
    fn keep_logs(&self) -> String {
        let to =
            std::env::temp_dir().join(format!("berth-csi-sidecars-logs-{}", std::process::id()));
        let _ = fs::create_dir_all(&to);
        for d in [self.dir.path().to_path_buf(), self.cp.dir.clone()] {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let _ = fs::copy(&p, to.join(e.file_name()));
                }
            }
        }
        to.display().to_string()
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}:\n{}", p.name, log_tail(&p.log, 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.cp
            .kubectl(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    fn apply(&self, obj: &Value) {
        self.cp.apply(obj).unwrap_or_else(|e| panic!("{e}"));
    }

    fn get(&self, args: &[&str]) -> Option<Value> {
        self.cp.get_json(args)
    }

    fn pvc(&self, name: &str) -> Value {
        self.get(&["pvc", name, "-n", NS])
            .unwrap_or_else(|| panic!("no claim {name}"))
    }

    /// Create a claim; `selected` sets the scheduler's selected-node annotation.
    fn claim(
        &self,
        name: &str,
        class: &str,
        size: &str,
        block: bool,
        selected: bool,
        source: Option<&str>,
    ) {
        let mut pvc = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": name, "namespace": NS },
            "spec": {
                "storageClassName": class,
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "resources": { "requests": { "storage": size } },
            },
        });
        if selected {
            pvc["metadata"]["annotations"] = json!({ "volume.kubernetes.io/selected-node": NODE });
        }
        if let Some(snap) = source {
            pvc["spec"]["dataSource"] = json!({
                "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snap,
            });
        }
        self.apply(&pvc);
    }

    /// Wait until the claim is Bound; returns its PV.
    fn bound(&self, name: &str) -> Value {
        let ok = wait_until(SETTLE, || {
            self.get(&["pvc", name, "-n", NS])
                .is_some_and(|p| p["status"]["phase"] == "Bound")
        });
        assert!(
            ok,
            "claim {name} not Bound after {SETTLE:?}: {}\nevents: {}\n{}\nlogs kept in {}",
            self.pvc(name),
            self.events(name),
            self.logs(),
            self.keep_logs()
        );
        let pv = self.pvc(name)["spec"]["volumeName"]
            .as_str()
            .unwrap()
            .to_string();
        self.get(&["pv", &pv]).unwrap()
    }

    fn events(&self, object: &str) -> String {
        self.cp.events(NS, object)
    }

    /// The image files in berth-csi's pool (`volumes/` or `snapshots/`).
    fn pool_files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.pool().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Rows of a table of berth-csi's state (read-only, beside the running driver).
    fn state_rows(&self, table: &str) -> i64 {
        csi_state_rows(&self.dir.path().join("state/berth-csi.db"), table)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pv_names(&self) -> Vec<String> {
        let pvs = self.get(&["pv"]).unwrap();
        pvs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    }
}

fn quantity_bytes(q: &str) -> u64 {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("quantity {q}"))
        * mult
}

/// Check a PV the external-provisioner made for berth-csi on NODE.
fn check_pv(pv: &Value, fs_type: Option<&str>, block: bool) {
    let csi = &pv["spec"]["csi"];
    assert_eq!(csi["driver"], DRIVER, "{pv}");
    let handle = csi["volumeHandle"].as_str().unwrap();
    assert!(handle.starts_with(&format!("local:{NODE}:")), "{handle}");
    if let Some(f) = fs_type {
        assert_eq!(csi["fsType"], f, "{pv}");
    }
    assert_eq!(
        pv["spec"]["volumeMode"],
        if block { "Block" } else { "Filesystem" }
    );
    let term =
        &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(
        term["key"], TOPOLOGY_KEY,
        "Berth's topology on the PV: {pv}"
    );
    assert_eq!(term["values"], json!([NODE]), "{pv}");
}

#[test]
fn claims_become_volumes_through_the_sidecars() {
    let mut c = Cluster::start();

    // WaitForFirstConsumer classes, selected node as the scheduler sets it.
    c.claim("data-ext4", "berth-local-ext4", "64Mi", false, true, None);
    c.claim("data-xfs", "berth-local-xfs", "320Mi", false, true, None);
    c.claim("data-block", "berth-local-block", "32Mi", true, true, None);
    // Without the annotation a WaitForFirstConsumer claim waits for its pod.
    c.claim("waiting", "berth-local-ext4", "16Mi", false, false, None);
    // Immediate binding: a class of the test's own.
    c.apply(&json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": { "name": "berth-test-immediate" },
        "provisioner": DRIVER,
        "parameters": { "backend": "local", "csi.storage.k8s.io/fstype": "ext4" },
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": true,
    }));
    c.claim(
        "data-now",
        "berth-test-immediate",
        "16Mi",
        false,
        false,
        None,
    );

    let ext4 = c.bound("data-ext4");
    check_pv(&ext4, Some("ext4"), false);
    check_pv(&c.bound("data-xfs"), Some("xfs"), false);
    check_pv(&c.bound("data-block"), None, true);
    check_pv(&c.bound("data-now"), Some("ext4"), false);
    assert_eq!(c.pvc("waiting")["status"]["phase"], "Pending");
    assert_eq!(
        c.pool_files("volumes").len(),
        4,
        "one image per bound claim"
    );
    // Capacity tracking: the provisioner publishes berth-csi's GetCapacity for the node.
    assert!(
        wait_until(SETTLE, || c
            .get(&["csistoragecapacities", "-n", "berth-system"])
            .is_some_and(|l| l["items"].as_array().is_some_and(|i| i
                .iter()
                .any(|cap| cap["nodeTopology"]["matchLabels"][TOPOLOGY_KEY]
                    == NODE
                    && cap["capacity"].is_string())))),
        "no CSIStorageCapacity for {NODE}:\n{}",
        c.log_tail("csi-provisioner")
    );

    // The external-attacher: a VolumeAttachment as the attach-detach controller makes it.
    let pv_name = ext4["metadata"]["name"].as_str().unwrap().to_string();
    c.apply(&json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": { "name": "berth-test-va" },
        "spec": { "attacher": DRIVER, "nodeName": NODE,
                  "source": { "persistentVolumeName": pv_name } },
    }));
    assert!(
        wait_until(SETTLE, || c
            .get(&["volumeattachment", "berth-test-va"])
            .is_some_and(|v| v["status"]["attached"] == true)),
        "VolumeAttachment not attached: {:?}\n{}",
        c.get(&["volumeattachment", "berth-test-va"]),
        c.log_tail("csi-attacher")
    );
    assert_eq!(
        c.state_rows("controller_publications"),
        1,
        "ControllerPublishVolume recorded"
    );
    c.kubectl(&[
        "delete",
        "volumeattachment",
        "berth-test-va",
        "--timeout=120s",
    ]);
    assert!(
        wait_until(SETTLE, || c.state_rows("controller_publications") == 0),
        "ControllerUnpublishVolume not done after the VolumeAttachment went:\n{}",
        c.log_tail("csi-attacher")
    );

    // The external-resizer: ControllerExpandVolume, the PV shows the new size.
    c.kubectl(&[
        "patch",
        "pvc",
        "data-ext4",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"96Mi"}}}}"#,
    ]);
    assert!(
        wait_until(SETTLE, || c
            .get(&["pv", &pv_name])
            .and_then(|p| p["spec"]["capacity"]["storage"]
                .as_str()
                .map(quantity_bytes))
            == Some(96 << 20)),
        "PV not grown: {:?}\n{}",
        c.get(&["pv", &pv_name]),
        c.log_tail("csi-resizer")
    );
    let handle = ext4["spec"]["csi"]["volumeHandle"].as_str().unwrap();
    let image = c
        .pool()
        .join("volumes")
        .join(format!("{}.img", handle.rsplit(':').next().unwrap()));
    let len = fs::metadata(&image)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; pool has {:?}",
                image.display(),
                c.pool_files("volumes")
            )
        })
        .len();
    assert!(len >= 96 << 20, "image file grown to {len}");

    // csi-snapshotter + snapshot-controller, then a claim restored from the snapshot.
    c.apply(&json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": { "name": "snap-ext4", "namespace": NS },
        "spec": { "volumeSnapshotClassName": "berth-local",
                  "source": { "persistentVolumeClaimName": "data-ext4" } },
    }));
    assert!(
        wait_until(SETTLE, || c
            .get(&["volumesnapshot", "snap-ext4", "-n", NS])
            .is_some_and(|s| s["status"]["readyToUse"] == true)),
        "snapshot not ready: {:?}\n{}\n{}",
        c.get(&["volumesnapshot", "snap-ext4", "-n", NS]),
        c.log_tail("csi-snapshotter"),
        c.log_tail("snapshot-controller")
    );
    assert_eq!(c.pool_files("snapshots").len(), 1);
    c.claim(
        "restored",
        "berth-local-ext4",
        "96Mi",
        false,
        true,
        Some("snap-ext4"),
    );
    check_pv(&c.bound("restored"), Some("ext4"), false);

    // Deleting claims and the snapshot removes the volumes from berth-csi's pool.
    c.kubectl(&[
        "delete",
        "volumesnapshot",
        "snap-ext4",
        "-n",
        NS,
        "--timeout=120s",
    ]);
    c.kubectl(&["delete", "pvc", "--all", "-n", NS, "--timeout=120s"]);
    assert!(
        wait_until(SETTLE, || c.pv_names().is_empty()
            && c.pool_files("volumes").is_empty()
            && c.pool_files("snapshots").is_empty()),
        "left: PVs {:?}, volumes {:?}, snapshots {:?}\n{}",
        c.pv_names(),
        c.pool_files("volumes"),
        c.pool_files("snapshots"),
        c.logs()
    );
    for table in ["volumes", "snapshots", "controller_publications"] {
        assert_eq!(
            c.state_rows(table),
            0,
            "berth-csi's state still has {table}"
        );
    }
    assert!(
        c.proc_mut("berth-csi").child.running(),
        "berth-csi still runs"
    );
}

#[test]
fn bad_classes_and_claims_fail_with_the_field_named_and_leave_nothing() {
    let c = Cluster::start();
    let class = |name: &str, params: Value, mode: &str| {
        c.apply(&json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": { "name": name }, "provisioner": DRIVER,
            "parameters": params, "volumeBindingMode": mode,
        }));
    };
    // One of each binding mode: with WaitForFirstConsumer the scheduler picked the node; with
    // Immediate each node's provisioner first asks GetCapacity whether it could take it.
    class(
        "bad-param",
        json!({ "backend": "local", "colour": "blue" }),
        "WaitForFirstConsumer",
    );
    class(
        "bad-fs",
        json!({ "backend": "local", "csi.storage.k8s.io/fstype": "ntfs" }),
        "Immediate",
    );
    c.claim("unknown-param", "bad-param", "16Mi", false, true, None);
    c.claim("bad-fstype", "bad-fs", "16Mi", false, false, None);
    c.claim("too-big", "berth-local-ext4", "10Pi", false, true, None);
    for (claim, words) in [
        ("unknown-param", &["parameters[colour]"][..]),
        ("bad-fstype", &["mount.fs_type", "ntfs"][..]),
        ("too-big", &["capacity_range.required_bytes"][..]),
    ] {
        let mut last = String::new();
        let seen = wait_until(SETTLE, || {
            last = c.events(claim);
            last.lines()
                .any(|l| l.starts_with("ProvisioningFailed") && words.iter().all(|w| l.contains(w)))
        });
        assert!(
            seen,
            "no ProvisioningFailed event naming {words:?} for {claim}: {last}\n{}\nlogs kept in {}",
            c.log_lines("csi-provisioner", claim),
            c.keep_logs()
        );
        eprintln!(
            "{claim}: {}",
            last.lines()
                .find(|l| l.starts_with("ProvisioningFailed"))
                .unwrap_or("")
        );
        assert_eq!(c.pvc(claim)["status"]["phase"], "Pending");
    }
    assert!(c.pv_names().is_empty(), "no PV: {:?}", c.pv_names());
    assert!(
        c.pool_files("volumes").is_empty(),
        "no image: {:?}",
        c.pool_files("volumes")
    );
}

#[test]
fn provisioner_killed_mid_way_loses_and_duplicates_nothing() {
    let mut c = Cluster::start();
    let names: Vec<String> = (0..6).map(|i| format!("burst-{i}")).collect();
    for n in &names {
        c.claim(n, "berth-local-ext4", "16Mi", false, true, None);
    }
    // Kill it (SIGKILL, like a crash) once it has started on them, then start it again.
    let started = Instant::now();
    wait_until(Duration::from_secs(30), || {
        fs::read_to_string(&c.proc_mut("csi-provisioner").log)
            .is_ok_and(|l| l.contains("CreateVolume") || l.contains("started provision"))
    });
    c.proc_mut("csi-provisioner").child.kill();
    eprintln!(
        "provisioner killed {:.1} s after the claims; {} of {} images existed",
        started.elapsed().as_secs_f64(),
        c.pool_files("volumes").len(),
        names.len()
    );
    c.start_sidecar("csi-provisioner");
    let handles: Vec<String> = names
        .iter()
        .map(|n| {
            c.bound(n)["spec"]["csi"]["volumeHandle"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut distinct = handles.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        names.len(),
        "one volume per claim: {handles:?}"
    );
    assert_eq!(c.pv_names().len(), names.len(), "PVs: {:?}", c.pv_names());
    // A volume created but never recorded in a PV would stay in the pool as an orphan.
    assert!(
        wait_until(Duration::from_secs(30), || c.pool_files("volumes").len()
            == names.len()),
        "images: {:?} for {handles:?}",
        c.pool_files("volumes")
    );
    c.kubectl(&["delete", "pvc", "--all", "-n", NS, "--timeout=120s"]);
    assert!(
        wait_until(SETTLE, || c.pv_names().is_empty()
            && c.pool_files("volumes").is_empty()),
        "left: {:?} {:?}",
        c.pv_names(),
        c.pool_files("volumes")
    );
}

#[test]
fn nfs_class_gives_read_write_many_volumes() {
    assert!(
        netns_fixture::is_root(),
        "run as root: the test creates a netns"
    );
    // berth-csi, the sidecars and the control plane run in the NFS server's netns, where
    // ganesha listens on 10.0.2.2.
    let srv = nfs_server::NfsServer::start().unwrap_or_else(|e| panic!("nfs-ganesha: {e}"));
    let path = netns_fixture::netns_path(srv.netns());
    let c = Cluster::start_in(None, &path);
    c.apply(&json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": { "name": "berth-nfs" },
        "provisioner": DRIVER,
        "parameters": { "backend": "nfs", "server": srv.addr(), "share": srv.share() },
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete",
    }));
    c.apply(&json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "shared", "namespace": NS },
        "spec": {
            "storageClassName": "berth-nfs",
            "accessModes": ["ReadWriteMany"],
            "resources": { "requests": { "storage": "64Mi" } },
        },
    }));
    let pv = c.bound("shared");
    assert_eq!(pv["spec"]["accessModes"], json!(["ReadWriteMany"]), "{pv}");
    assert_eq!(pv["spec"]["csi"]["driver"], DRIVER);
    let handle = pv["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap()
        .to_string();
    let dirs = || -> Vec<String> {
        fs::read_dir(srv.export_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        dirs().len(),
        1,
        "one directory on the export for {handle}: {:?}",
        dirs()
    );
    c.kubectl(&["delete", "pvc", "shared", "-n", NS, "--timeout=120s"]);
    assert!(
        wait_until(SETTLE, || c.pv_names().is_empty() && dirs().is_empty()),
        "left: PVs {:?}, export {:?}\n{}\n{}",
        c.pv_names(),
        dirs(),
        c.logs(),
        srv.log()
    );
}
