//! Scenario "installed as shipped": Berth's image (built by scripts/image.sh from the
//! Dockerfile on a debootstrapped Debian base, no registry) and `kubectl apply -k` of a test
//! overlay of deploy/kubernetes on a one-node cluster of [`berth_tests::kubelet`]. The overlay
//! changes only image names and endpoints: the images are the locally built ones, the overlay's
//! etcd is the test's, and the host paths are the node's (its kubelet root dir and the CRI
//! plugin's CNI dirs live in the test's tempdirs, not under /var/lib/kubelet and /opt/cni).
//!
//! The images come as docker-archives from `scripts/image.sh --sidecars --archive-dir DIR`
//! (scripts/test.sh runs it; DIR is `$BERTH_IMAGE_ARCHIVES`, default
//! /var/cache/berth-image/archives) and are imported into the node's containerd (`k8s.io`).
//! The snapshot-controller, a cluster prerequisite deploy/kubernetes does not ship, runs as a
//! process as in the sidecar tests.
//!
//! Guards as in tests/tests/kubelet.rs: the node (kubelet, containerd and every container by
//! PID, cgroups, loop devices, kernel settings), the processes, the control plane, the netns
//! and the tempdirs.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_tests::cluster::{sidecar_command, ControlPlane, API_PORT, DEFAULT_ADDRESS};
use berth_tests::kubelet::{pod, wait_default_service_account, Node, NodeOptions, CSI_DRIVER};
use berth_tests::netns::*;
use berth_tests::subnet_contains;
use netns_fixture::{spawn_in_netns, test_peer, ChildGuard};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(180);
const OVERLAY_ETCD: &str = "127.0.0.1:22379";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn archives() -> PathBuf {
    std::env::var_os("BERTH_IMAGE_ARCHIVES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-image/archives"))
}

/// `to` relative to `from` (both absolute): kustomize refuses absolute resource paths.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..f.len() {
        p.push("..");
    }
    for c in &t[common..] {
        p.push(c.as_os_str());
    }
    p
}

/// The index of the element of `list` whose `key` is `value`.
fn index_of(list: &Value, key: &str, value: &str) -> usize {
    list.as_array()
        .and_then(|a| a.iter().position(|e| e[key] == value))
        .unwrap_or_else(|| panic!("no element with {key} = {value} in {list}"))
}

/// The shipped DaemonSet of `file` (one document).
fn shipped(file: &str) -> Value {
    let text = fs::read_to_string(root().join("deploy/kubernetes").join(file)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The test overlay: the images built here, the test's etcd, the node's paths.
fn write_overlay(dir: &Path, node: &Node, version: &str) {
    let (cni_bin, cni_conf) = node.cri().cni_dirs();
    let kubelet = node.root_dir();
    let k = kubelet.to_string_lossy();
    let csi = shipped("03-node-daemonset.yaml");
    let spec = &csi["spec"]["template"]["spec"];
    let c = index_of(&spec["containers"], "name", "berth-csi");
    let args = spec["containers"][c]["args"].as_array().unwrap();
    let reg = args
        .iter()
        .position(|a| {
            a.as_str()
                .is_some_and(|s| s.starts_with("--kubelet-registration-endpoint="))
        })
        .expect("the DaemonSet passes --kubelet-registration-endpoint");
    let mount = index_of(
        &spec["containers"][c]["volumeMounts"],
        "name",
        "kubelet-dir",
    );
    let vol = |name: &str| index_of(&spec["volumes"], "name", name);
    let csi_patch = json!([
        { "op": "replace", "path": format!("/spec/template/spec/containers/{c}/args/{reg}"),
          "value": format!("--kubelet-registration-endpoint={k}/plugins/csi.berth.dev/csi.sock") },
        { "op": "replace", "path": format!("/spec/template/spec/containers/{c}/volumeMounts/{mount}/mountPath"),
          "value": k },
        { "op": "replace", "path": format!("/spec/template/spec/volumes/{}/hostPath/path", vol("kubelet-dir")),
          "value": k },
        { "op": "replace", "path": format!("/spec/template/spec/volumes/{}/hostPath/path", vol("socket-dir")),
          "value": format!("{k}/plugins/csi.berth.dev") },
        { "op": "replace", "path": format!("/spec/template/spec/volumes/{}/hostPath/path", vol("registration-dir")),
          "value": format!("{k}/plugins_registry") },
    ]);
    // No kube-proxy runs here, so the `kubernetes` Service's IP leads nowhere: the sidecars'
    // in-cluster configuration gets the API server's own address (an endpoint, as a cluster
    // without kube-proxy would set it).
    let mut csi_patch = csi_patch;
    for (i, container) in spec["containers"].as_array().unwrap().iter().enumerate() {
        assert!(container["env"].is_array(), "container {i} has env");
        for (name, value) in [
            ("KUBERNETES_SERVICE_HOST", DEFAULT_ADDRESS.to_string()),
            ("KUBERNETES_SERVICE_PORT", API_PORT.to_string()),
        ] {
            csi_patch.as_array_mut().unwrap().push(json!({
                "op": "add", "path": format!("/spec/template/spec/containers/{i}/env/-"),
                "value": { "name": name, "value": value },
            }));
        }
    }
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(
        &fs::read_to_string(root().join("deploy/kubernetes/11-cni-daemonset.yaml")).unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let cspec = &ds["spec"]["template"]["spec"];
    let cvol = |name: &str| index_of(&cspec["volumes"], "name", name);
    let cni_patch = json!([
        { "op": "replace", "path": format!("/spec/template/spec/volumes/{}/hostPath/path", cvol("cni-bin")),
          "value": cni_bin.to_string_lossy() },
        { "op": "replace", "path": format!("/spec/template/spec/volumes/{}/hostPath/path", cvol("cni-conf")),
          "value": cni_conf.to_string_lossy() },
    ]);
    let image = |shipped: &str, local: &str| json!({ "name": shipped, "newName": local });
    let mut images = vec![json!({
        "name": "ghcr.io/berth-dev/berth", "newName": "localhost/berth", "newTag": version,
    })];
    for s in [
        "csi-provisioner",
        "csi-attacher",
        "csi-resizer",
        "csi-snapshotter",
    ] {
        images.push(image(
            &format!("registry.k8s.io/sig-storage/{s}"),
            &format!("localhost/berth-test/{s}"),
        ));
    }
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(dir, &root().join("deploy/kubernetes")).to_string_lossy()],
        "images": images,
        "patches": [
            { "target": { "kind": "DaemonSet", "name": "berth-csi-node" }, "patch": csi_patch.to_string() },
            { "target": { "kind": "DaemonSet", "name": "berth-cni" }, "patch": cni_patch.to_string() },
            { "target": { "kind": "ConfigMap", "name": "berth-cni" }, "patch": json!([
                { "op": "replace", "path": "/data/store", "value": format!("etcd:http://{OVERLAY_ETCD}") },
            ]).to_string() },
        ],
    });
    // JSON is YAML: kustomize reads it.
    fs::write(
        dir.join("kustomization.yaml"),
        serde_json::to_string_pretty(&kustomization).unwrap(),
    )
    .unwrap();
}

/// Rows (first column) of `sql` on the SQLite database at `db` inside the node's mount
/// namespace, by sqlite3 run there (read-only).
fn sql_inside(node: &Node, db: &str, sql: &str) -> Result<Vec<String>, String> {
    let holder = &node.cri().containerd().holder;
    let mut cmd = holder.command("sqlite3");
    cmd.args(["-readonly", db, sql]);
    let (out, timed_out) = holder
        .output(cmd, Duration::from_secs(20))
        .map_err(|e| format!("sqlite3 {db}: {e}"))?;
    if timed_out || !out.status.success() {
        return Err(format!(
            "sqlite3 {db} {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn shipped_manifests_and_image_run_berth_on_a_node() {
    assert!(netns_fixture::is_root(), "run as root");
    let version = env!("CARGO_PKG_VERSION");
    let arch = archives();
    let berth_archive = arch.join(format!("berth_{version}.tar"));
    assert!(
        berth_archive.is_file(),
        "{} not found: build the images with `scripts/image.sh --sidecars --archive-dir {}` (scripts/test.sh does)",
        berth_archive.display(),
        arch.display()
    );
    let host = Host::new();
    // A node has a default route (berth-overlayd picks its underlay interface from it). Here it
    // points into a veth pair whose other end is in the same netns (no dummy links in this
    // kernel) and has no address: what is sent there goes nowhere, and never leaves the netns.
    for cmd in [
        vec![
            "ip",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-sink",
        ],
        vec!["ip", "link", "set", "eth0-sink", "up"],
        vec!["ip", "addr", "add", "192.0.2.10/24", "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
        vec!["ip", "route", "add", "default", "via", "192.0.2.1"],
    ] {
        host.ns.try_exec(&cmd).unwrap();
    }
    let stores = tempfile::Builder::new()
        .prefix("berth-install-test-")
        .tempdir()
        .unwrap();
    // The overlay's etcd, on the host netns' loopback (hostNetwork pods reach it).
    let etcd = berth_tests::kubelet::overlay_etcd_command(OVERLAY_ETCD, stores.path()).unwrap();
    let cp = ControlPlane::start(host.ns.path(), &stores.path().join("cp"), DEFAULT_ADDRESS)
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let _etcd = ChildGuard::new(spawn_in_netns(host.ns.path(), etcd).expect("start etcd"));
    let k = |args: &[&str]| cp.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    let crds = test_peer("files/snapshot-crds");
    k(&["apply", "--server-side", "-k", &crds.to_string_lossy()]);
    let node = Node::start(
        &cp,
        &host,
        &NodeOptions {
            name: "node1",
            node_ip: DEFAULT_ADDRESS,
            conflist: None,
            plugins: &[],
            csi: false,
            max_pods: 110,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fail = |what: &str| -> ! {
        let keep = std::env::temp_dir().join(format!("berth-install-logs-{}", std::process::id()));
        node.keep_logs(&keep);
        let mut containers = String::new();
        for (ds, c) in [
            ("berth-cni", "berth-overlayd"),
            ("berth-cni", "install-cni"),
            ("berth-csi-node", "berth-csi"),
        ] {
            for prev in ["--previous=false", "--previous=true"] {
                let out = cp
                    .kubectl(&[
                        "logs",
                        "-n",
                        "berth-system",
                        &format!("ds/{ds}"),
                        "-c",
                        c,
                        prev,
                        "--tail=15",
                    ])
                    .unwrap_or_else(|e| e);
                containers.push_str(&format!("--- {ds}/{c} {prev}:\n{out}\n"));
            }
        }
        panic!(
            "{what}\n{}\n{containers}\npods: {}\nevents: {}\n(logs kept in {})",
            node.logs(),
            cp.kubectl(&["get", "pods", "-A", "-o", "wide"])
                .unwrap_or_default(),
            cp.kubectl(&["get", "events", "-A"]).unwrap_or_default(),
            keep.display()
        )
    };
    for e in fs::read_dir(&arch).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "tar") {
            node.cri()
                .ctr_ok(&[
                    "images",
                    "import",
                    "--snapshotter",
                    "native",
                    &p.to_string_lossy(),
                ])
                .unwrap_or_else(|e| fail(&format!("import {}: {e}", p.display())));
        }
    }
    let overlay = tempfile::Builder::new()
        .prefix("berth-install-overlay-")
        .tempdir()
        .unwrap();
    // `kubectl apply -k` of the overlay for the image tag `tag`, then both DaemonSets rolled out.
    let install = |tag: &str| {
        write_overlay(overlay.path(), &node, tag);
        if let Err(e) = cp.kubectl(&["apply", "-k", &overlay.path().to_string_lossy()]) {
            fail(&format!("kubectl apply -k ({tag}): {e}"));
        }
        for ds in ["berth-cni", "berth-csi-node"] {
            if let Err(e) = cp.kubectl(&[
                "rollout",
                "status",
                "-n",
                "berth-system",
                &format!("ds/{ds}"),
                "--timeout=240s",
            ]) {
                fail(&format!("DaemonSet {ds} did not roll out to {tag}: {e}"));
            }
        }
    };
    install(version);
    if let Err(e) = node.wait_ready(&cp) {
        fail(&e);
    }
    if let Err(e) = node.wait_csi_registered(&cp) {
        fail(&e);
    }
    let (cni_bin, cni_conf) = node.cri().cni_dirs();
    for b in ["berth-bridge", "berth-host-local", "berth-overlay"] {
        let p = cni_bin.join(b);
        assert!(
            p.is_file() && !p.is_symlink(),
            "the CNI DaemonSet installed {}",
            p.display()
        );
    }
    assert!(cni_conf.join("10-berth.conflist").is_file());

    // The snapshot-controller (a cluster prerequisite), as the sidecar tests run it.
    let mut sc = sidecar_command(
        "snapshot-controller",
        Path::new("/nonexistent"),
        Path::new("/nonexistent"),
        &cp.admin,
        "node1",
    )
    .unwrap();
    sc.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(stores.path().join("snapshot-controller.log")).unwrap());
    let _snapshot_controller = ChildGuard::new(spawn_in_netns(host.ns.path(), sc).unwrap());
    wait_default_service_account(&cp).unwrap_or_else(|e| fail(&e));

    // The workloads of the kubelet tests, unchanged.
    let apply = |obj: &Value| cp.apply(obj).unwrap_or_else(|e| fail(&e));
    apply(&json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "data" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "berth-local-ext4",
            "resources": { "requests": { "storage": "64Mi" } },
        },
    }));
    let vol = |claim: &str| {
        json!({
            "volumes": [{ "name": "vol", "persistentVolumeClaim": { "claimName": claim } }],
            "volumeMounts": [{ "name": "vol", "mountPath": "/data" }],
        })
    };
    apply(&pod(
        "writer",
        "node1",
        "echo shipped > /data/f && sync && exec sleep 3600",
        vol("data"),
    ));
    apply(&pod("peer", "node1", "exec sleep 3600", json!({})));
    for p in ["writer", "peer"] {
        if let Err(e) = cp.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=180s",
            &format!("pod/{p}"),
        ]) {
            fail(&format!("pod {p}: {e}"));
        }
    }
    let ip = |p: &str| k(&["get", "pod", p, "-o=jsonpath={.status.podIP}"]);
    let writer_ip = ip("writer");
    let subnet = fs::read_to_string(
        node.cri()
            .containerd()
            .holder
            .path_inside("/run/berth/subnet.env"),
    )
    .unwrap_or_default();
    let subnet = subnet
        .lines()
        .find_map(|l| l.strip_prefix("BERTH_SUBNET="))
        .unwrap_or_else(|| fail("berth-overlayd wrote no /run/berth/subnet.env"))
        .to_string();
    assert!(
        subnet_contains(&subnet, writer_ip.parse().unwrap()),
        "writer {writer_ip} is in the overlay's node subnet {subnet}"
    );
    let exec = |p: &str, script: &str| cp.kubectl(&["exec", p, "--", "/bin/sh", "-c", script]);
    exec("peer", &format!("ping -c 2 -W 2 {writer_ip}")).unwrap_or_else(|e| fail(&e));
    let text = exec("writer", "cat /data/f").unwrap_or_else(|e| fail(&e));
    assert_eq!(text.trim(), "shipped");

    // A snapshot of the claim, restored into a new claim.
    apply(&json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": { "name": "snap" },
        "spec": { "volumeSnapshotClassName": "berth-local",
                  "source": { "persistentVolumeClaimName": "data" } },
    }));
    let ready = wait_until(SETTLE, || {
        cp.get_json(&["volumesnapshot", "snap"])
            .is_some_and(|s| s["status"]["readyToUse"] == true)
    });
    if !ready {
        fail("VolumeSnapshot snap not readyToUse");
    }
    apply(&json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "restored" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "berth-local-ext4",
            "resources": { "requests": { "storage": "64Mi" } },
            "dataSource": { "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap" },
        },
    }));
    apply(&pod("reader", "node1", "exec sleep 3600", vol("restored")));
    if let Err(e) = cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        "pod/reader",
    ]) {
        fail(&format!("pod reader: {e}"));
    }
    let restored = exec("reader", "cat /data/f").unwrap_or_else(|e| fail(&e));
    assert_eq!(
        restored.trim(),
        "shipped",
        "the restored claim has the data"
    );
    println!("install: CSIDriver {CSI_DRIVER} registered, pods on {subnet}, snapshot restored");

    // Day two: both DaemonSets rolled to a new image tag.
    let vxlan = || -> (Value, Value) {
        let text = host
            .ns
            .try_exec(&["ip", "-j", "link", "show", "berth.1"])
            .unwrap_or_else(|e| fail(&e));
        let v: Value = serde_json::from_str(&text).unwrap();
        (v[0]["ifindex"].clone(), v[0]["address"].clone())
    };
    let vxlan_before = vxlan();
    let next = format!("{version}-day2");
    node.cri()
        .ctr_ok(&[
            "images",
            "tag",
            &format!("localhost/berth:{version}"),
            &format!("localhost/berth:{next}"),
        ])
        .unwrap_or_else(|e| fail(&e));
    install(&next);
    let images = k(&[
        "get",
        "pods",
        "-n",
        "berth-system",
        "-o=jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert!(
        images
            .split_whitespace()
            .all(|i| i == format!("localhost/berth:{next}")),
        "every Berth pod runs the new tag: {images}"
    );
    node.wait_csi_registered(&cp).unwrap_or_else(|e| fail(&e));
    assert_eq!(
        ip("writer"),
        writer_ip,
        "writer keeps its address over the rollout"
    );
    let restarts = k(&[
        "get",
        "pod",
        "writer",
        "-o=jsonpath={.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(restarts.trim(), "0", "writer was not restarted");
    exec("peer", &format!("ping -c 2 -W 2 {writer_ip}"))
        .unwrap_or_else(|e| fail(&format!("peer -> writer after the rollout: {e}")));
    let after = exec("writer", "cat /data/f").unwrap_or_else(|e| fail(&e));
    assert_eq!(after.trim(), "shipped", "the volume is still mounted");
    let subnet_after = fs::read_to_string(
        node.cri()
            .containerd()
            .holder
            .path_inside("/run/berth/subnet.env"),
    )
    .unwrap_or_default();
    assert!(
        subnet_after.contains(&format!("BERTH_SUBNET={subnet}")),
        "the new agent kept the subnet {subnet}: {subnet_after}"
    );
    assert_eq!(
        vxlan(),
        vxlan_before,
        "the new agent adopted the VXLAN device (same ifindex and MAC)"
    );
    // One allocation per pod on the pod network, no more: the replaced berth-csi pod's went.
    let pods = cp.get_json(&["pods", "-A"]).unwrap();
    let on_pod_network = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true && p["status"]["phase"] == "Running")
        .count();
    // SQLite resolves /proc/<pid>/root to "/" (it follows symlinks in the path), so the stores
    // inside the node's mount namespace are read by sqlite3 run there.
    let ipam_db = "/var/lib/cni/berth/berth/ipam.db";
    let held = sql_inside(
        &node,
        ipam_db,
        "SELECT CAST(address AS TEXT) FROM allocations",
    )
    .unwrap_or_else(|e| fail(&e));
    assert_eq!(
        held.len(),
        on_pod_network,
        "allocations held after the rollout: {held:?}"
    );

    // Uninstall: workloads first, then `kubectl delete -k`.
    for what in [
        vec!["pod", "writer", "reader", "peer"],
        vec!["volumesnapshot", "snap"],
        vec!["pvc", "data", "restored"],
    ] {
        let mut a = vec!["delete", "--wait=true", "--timeout=120s"];
        a.extend(what);
        if let Err(e) = cp.kubectl(&a) {
            fail(&e);
        }
    }
    let no_pvs = wait_until(SETTLE, || {
        cp.get_json(&["pv"])
            .is_some_and(|l| l["items"].as_array().is_some_and(|a| a.is_empty()))
    });
    assert!(no_pvs, "PVs left before the uninstall");
    if let Err(e) = cp.kubectl(&[
        "delete",
        "-k",
        &overlay.path().to_string_lossy(),
        "--wait=true",
        "--timeout=180s",
    ]) {
        fail(&format!("kubectl delete -k: {e}"));
    }
    let gone = wait_until(SETTLE, || {
        node.cri()
            .crictl_ok(&["ps", "-q"])
            .is_ok_and(|s| s.trim().is_empty())
    });
    assert!(gone, "containers left after the uninstall");
    // What the README's Uninstall says stays on the node.
    for b in ["berth-bridge", "berth-host-local", "berth-overlay"] {
        assert!(cni_bin.join(b).is_file(), "{b} stays in the CNI bin dir");
    }
    assert!(
        cni_conf.join("10-berth.conflist").is_file(),
        "the conflist stays"
    );
    assert!(
        host.ns.try_exec(&["ip", "link", "show", "berth0"]).is_ok(),
        "the bridge stays"
    );
    // The agent released its lease when it stopped (`berth-overlayd status` reads the store).
    let status = host
        .ns
        .try_exec(&[
            &berth_tests::bin_dir()
                .join("berth-overlayd")
                .to_string_lossy(),
            "status",
            "--node-name=node1",
            "--network=10.244.0.0/16",
            &format!("--store=etcd:http://{OVERLAY_ETCD}"),
            "--json",
        ])
        .unwrap_or_else(|e| fail(&e));
    let status: Value =
        serde_json::from_str(&status).unwrap_or_else(|e| fail(&format!("{e}: {status}")));
    assert!(
        status["lease"].is_null(),
        "no lease left in the overlay's etcd: {status}"
    );
    assert!(
        host.ns.try_exec(&["ip", "link", "show", "berth.1"]).is_ok(),
        "the VXLAN device stays"
    );
    let rows = sql_inside(
        &node,
        "/var/lib/berth-csi/berth-csi.db",
        "SELECT id FROM volumes",
    )
    .unwrap_or_else(|e| fail(&format!("berth-csi's state stays: {e}")));
    assert!(
        rows.is_empty(),
        "no volume is recorded once the claims are gone: {rows:?}"
    );
    let held = sql_inside(
        &node,
        ipam_db,
        "SELECT CAST(address AS TEXT) FROM allocations",
    )
    .unwrap_or_else(|e| fail(&e));
    assert!(held.is_empty(), "no allocation left: {held:?}");
    println!(
        "install: rolled to {next} (same subnet, VXLAN device, no leaked allocation), uninstalled"
    );
}
