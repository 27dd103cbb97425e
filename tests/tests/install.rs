//! Scenario "installed as shipped": Berth's image (built by scripts/image.sh from the
//! Dockerfile on a debootstrapped Debian base, no registry) and `kubectl apply -k` of a test
//! overlay of deploy/kubernetes on the one-node and two-node clusters of
//! [`berth_tests::kubelet`]. The overlay changes only image names and endpoints: the images are
//! the locally built ones, and the API server's address is given to the pods that call it (no
//! kube-proxy runs here). The overlay runs on the shipped default store, `kube`: each node's
//! subnet is its Node's podCIDR from the harness's kube-controller-manager, no etcd of its own. The host paths are the shipped ones:
//! each node runs with [`NodeOptions::fhs_paths`], so inside its mount namespace kubelet's root
//! dir is /var/lib/kubelet and the CNI dirs are /opt/cni/bin and /etc/cni/net.d (bind mounts of
//! the node's tempdirs), and one DaemonSet template fits every node.
//!
//! The images come as docker-archives from `scripts/image.sh --sidecars --archive-dir DIR`
//! (scripts/test.sh runs it; DIR is `$BERTH_IMAGE_ARCHIVES`, default
//! /var/cache/berth-image/archives) and are imported into each node's containerd (`k8s.io`).
//! The snapshot-controller, a cluster prerequisite deploy/kubernetes does not ship, runs as a
//! process as in the sidecar tests.
//!
//! Guards as in tests/tests/kubelet.rs: the node (kubelet, containerd and every container by
//! PID, cgroups, loop devices, kernel settings), the processes, the control plane, the netns
//! and the tempdirs.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::cluster::{sidecar_command, ControlPlane, API_PORT, DEFAULT_ADDRESS};
use berth_tests::kubelet::{pod, wait_default_service_account, Node, NodeOptions, CSI_DRIVER};
use berth_tests::netns::*;
use berth_tests::subnet_contains;
use netns_fixture::{spawn_in_netns, test_peer, ChildGuard};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(180);

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

/// The shipped DaemonSet of `file` (one document).
fn shipped(file: &str) -> Value {
    let text = fs::read_to_string(root().join("deploy/kubernetes").join(file)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The test overlay: the images built here (tag `version`) and the API server's address for
/// the pods that call it.
fn write_overlay(dir: &Path, version: &str) {
    // No kube-proxy runs here, so the `kubernetes` Service's IP leads nowhere: the containers
    // that call the API server (the CSI sidecars, berth-overlayd's kube store) get its own
    // address (an endpoint, as a cluster without kube-proxy would set it).
    let api_env = |containers: &Value| -> Value {
        let mut patch = Vec::new();
        for (i, container) in containers.as_array().unwrap().iter().enumerate() {
            assert!(container["env"].is_array(), "container {i} has env");
            for (name, value) in [
                ("KUBERNETES_SERVICE_HOST", DEFAULT_ADDRESS.to_string()),
                ("KUBERNETES_SERVICE_PORT", API_PORT.to_string()),
            ] {
                patch.push(json!({
                    "op": "add", "path": format!("/spec/template/spec/containers/{i}/env/-"),
                    "value": { "name": name, "value": value },
                }));
            }
        }
        Value::Array(patch)
    };
    let csi = shipped("03-node-daemonset.yaml");
    let csi_patch = api_env(&csi["spec"]["template"]["spec"]["containers"]);
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(
        &fs::read_to_string(root().join("deploy/kubernetes/11-cni-daemonset.yaml")).unwrap(),
    )
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();
    let cni = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let cni_patch = api_env(&cni["spec"]["template"]["spec"]["containers"]);
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
        ],
    });
    // JSON is YAML: kustomize reads it.
    fs::write(
        dir.join("kustomization.yaml"),
        serde_json::to_string_pretty(&kustomization).unwrap(),
    )
    .unwrap();
}

/// A node of these tests: shipped paths, no CNI configuration (the DaemonSet installs it), no
/// berth-csi of the harness (the DaemonSet runs it).
fn node_options(name: &str, node_ip: Ipv4Addr) -> NodeOptions<'_> {
    NodeOptions {
        name,
        node_ip,
        conflist: None,
        plugins: &[],
        csi: false,
        max_pods: 110,
        fhs_paths: true,
    }
}

/// Import every docker-archive of `arch` into the node's containerd.
fn import_images(node: &Node, arch: &Path) -> Result<(), String> {
    for e in fs::read_dir(arch).map_err(|e| e.to_string())?.flatten() {
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
                .map_err(|e| format!("import {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// The berth-system containers' logs (current and previous), for failure messages.
fn berth_container_logs(cp: &ControlPlane) -> String {
    let mut out = String::new();
    for (ds, c) in [
        ("berth-cni", "berth-overlayd"),
        ("berth-cni", "install-cni"),
        ("berth-csi-node", "berth-csi"),
    ] {
        for prev in ["--previous=false", "--previous=true"] {
            let text = cp
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
            out.push_str(&format!("--- {ds}/{c} {prev}:\n{text}\n"));
        }
    }
    out
}

/// Panic with `what` and everything that explains it; the nodes' logs are kept.
fn failure(cp: &ControlPlane, nodes: &[&Node], what: &str) -> ! {
    let keep = std::env::temp_dir().join(format!("berth-install-logs-{}", std::process::id()));
    let mut logs = String::new();
    for n in nodes {
        n.keep_logs(&keep);
        logs.push_str(&n.logs());
        logs.push('\n');
    }
    panic!(
        "{what}\n{logs}\n{}\npods: {}\nevents: {}\n(logs kept in {})",
        berth_container_logs(cp),
        cp.kubectl(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default(),
        cp.kubectl(&["get", "events", "-A"]).unwrap_or_default(),
        keep.display()
    )
}

/// `kubectl apply -k` of the overlay in `dir`, then both DaemonSets rolled out.
fn apply_and_roll_out(cp: &ControlPlane, dir: &Path) -> Result<(), String> {
    cp.kubectl(&["apply", "-k", &dir.to_string_lossy()])
        .map_err(|e| format!("kubectl apply -k: {e}"))?;
    for ds in ["berth-cni", "berth-csi-node"] {
        cp.kubectl(&[
            "rollout",
            "status",
            "-n",
            "berth-system",
            &format!("ds/{ds}"),
            "--timeout=240s",
        ])
        .map_err(|e| format!("DaemonSet {ds} did not roll out: {e}"))?;
    }
    Ok(())
}

/// The node's overlay subnet, from the `BERTH_SUBNET` berth-overlayd wrote.
fn node_subnet(node: &Node) -> Option<String> {
    let text = fs::read_to_string(
        node.cri()
            .containerd()
            .holder
            .path_inside("/run/berth/subnet.env"),
    )
    .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("BERTH_SUBNET="))
        .map(str::to_string)
}

/// The snapshot-controller (a cluster prerequisite), as the sidecar tests run it, in `netns`.
fn snapshot_controller(cp: &ControlPlane, netns: &Path, log: &Path) -> ChildGuard {
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
        .stderr(fs::File::create(log).unwrap());
    ChildGuard::new(spawn_in_netns(netns, sc).unwrap())
}

/// The `berth.dev/vtep-mac` annotation berth-overlayd published on `node` (empty if none).
fn published_vtep(cp: &ControlPlane, node: &str) -> String {
    cp.get_json(&["node", node])
        .and_then(|n| {
            n["metadata"]["annotations"]["berth.dev/vtep-mac"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The Node's IPv4 pod CIDR (from kube-controller-manager).
fn pod_cidr(cp: &ControlPlane, node: &str) -> String {
    cp.kubectl(&["get", "node", node, "-o=jsonpath={.spec.podCIDR}"])
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Loop devices bound to each of berth-csi's images in the node's pool (matched by device and
/// inode, as the kernel records them), by image.
fn loops_per_image(node: &Node) -> Vec<(String, usize)> {
    use std::os::unix::fs::MetadataExt;
    let pool = node
        .cri()
        .containerd()
        .holder
        .path_inside("/var/lib/berth-csi/pool/volumes");
    let listing = Command::new("losetup")
        .args(["-l", "-n", "-O", "BACK-MAJ:MIN,BACK-INO"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let bound: Vec<(String, u64)> = listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect();
    let mut out = Vec::new();
    for e in fs::read_dir(&pool).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        let dev = format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev()));
        let n = bound
            .iter()
            .filter(|(d, i)| *d == dev && *i == m.ino())
            .count();
        out.push((e.file_name().to_string_lossy().into_owned(), n));
    }
    out
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

/// A 64Mi `berth-local-ext4` claim, restored from the VolumeSnapshot `source` if given.
fn claim(name: &str, source: Option<&str>) -> Value {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "berth-local-ext4",
            "resources": { "requests": { "storage": "64Mi" } },
        },
    });
    if let Some(snap) = source {
        c["spec"]["dataSource"] = json!({
            "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snap,
        });
    }
    c
}

/// The pod fields that mount `claim` at /data.
fn vol(claim: &str) -> Value {
    json!({
        "volumes": [{ "name": "vol", "persistentVolumeClaim": { "claimName": claim } }],
        "volumeMounts": [{ "name": "vol", "mountPath": "/data" }],
    })
}

/// A VolumeSnapshot `snap` of `claim`, waited for until it is ready to use.
fn snapshot(cp: &ControlPlane, claim: &str) -> Result<(), String> {
    cp.apply(&json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": { "name": "snap" },
        "spec": { "volumeSnapshotClassName": "berth-local",
                  "source": { "persistentVolumeClaimName": claim } },
    }))?;
    let ready = wait_until(SETTLE, || {
        cp.get_json(&["volumesnapshot", "snap"])
            .is_some_and(|s| s["status"]["readyToUse"] == true)
    });
    if ready {
        Ok(())
    } else {
        Err(format!("VolumeSnapshot snap of {claim} not readyToUse"))
    }
}

/// Wait until pod `p` is Ready.
fn wait_pod(cp: &ControlPlane, p: &str) -> Result<(), String> {
    cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=180s",
        &format!("pod/{p}"),
    ])
    .map(|_| ())
    .map_err(|e| format!("pod {p}: {e}"))
}

/// The README's uninstall: the workloads first (`pods`, the snapshot `snap`, `claims`), every PV
/// gone, then `kubectl delete -k` of the overlay in `dir`.
fn uninstall(cp: &ControlPlane, dir: &Path, pods: &[&str], claims: &[&str]) -> Result<(), String> {
    for (kind, names) in [
        ("pod", pods),
        ("volumesnapshot", &["snap"][..]),
        ("pvc", claims),
    ] {
        let mut a = vec!["delete", "--wait=true", "--timeout=120s", kind];
        a.extend(names);
        cp.kubectl(&a)?;
    }
    let no_pvs = wait_until(SETTLE, || {
        cp.get_json(&["pv"])
            .is_some_and(|l| l["items"].as_array().is_some_and(|a| a.is_empty()))
    });
    if !no_pvs {
        return Err("PVs left before the uninstall".into());
    }
    cp.kubectl(&[
        "delete",
        "-k",
        &dir.to_string_lossy(),
        "--wait=true",
        "--timeout=180s",
    ])
    .map(|_| ())
    .map_err(|e| format!("kubectl delete -k: {e}"))
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
    let cp = ControlPlane::start(host.ns.path(), &stores.path().join("cp"), DEFAULT_ADDRESS)
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let k = |args: &[&str]| cp.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    let crds = test_peer("files/snapshot-crds");
    k(&["apply", "--server-side", "-k", &crds.to_string_lossy()]);
    let node = Node::start(&cp, &host, &node_options("node1", DEFAULT_ADDRESS))
        .unwrap_or_else(|e| panic!("{e}"));
    let fail = |what: &str| -> ! { failure(&cp, &[&node], what) };
    import_images(&node, &arch).unwrap_or_else(|e| fail(&e));
    let overlay = tempfile::Builder::new()
        .prefix("berth-install-overlay-")
        .tempdir()
        .unwrap();
    // `kubectl apply -k` of the overlay for the image tag `tag`, then both DaemonSets rolled out.
    let install = |tag: &str| {
        write_overlay(overlay.path(), tag);
        apply_and_roll_out(&cp, overlay.path()).unwrap_or_else(|e| fail(&format!("{tag}: {e}")));
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
        // They run on the host, with its C library or none: the image ships
        // them statically linked (scripts/image.sh says so when it cannot).
        assert_eq!(
            elf_interpreter(&p),
            None,
            "{} from the image is dynamically linked",
            p.display()
        );
    }
    assert!(cni_conf.join("10-berth.conflist").is_file());

    let _snapshot_controller = snapshot_controller(
        &cp,
        host.ns.path(),
        &stores.path().join("snapshot-controller.log"),
    );
    wait_default_service_account(&cp).unwrap_or_else(|e| fail(&e));

    // The workloads of the kubelet tests, unchanged.
    let apply = |obj: &Value| cp.apply(obj).unwrap_or_else(|e| fail(&e));
    apply(&claim("data", None));
    apply(&pod(
        "writer",
        "node1",
        "echo shipped > /data/f && sync && exec sleep 3600",
        vol("data"),
    ));
    apply(&pod("peer", "node1", "exec sleep 3600", json!({})));
    for p in ["writer", "peer"] {
        wait_pod(&cp, p).unwrap_or_else(|e| fail(&e));
    }
    let ip = |p: &str| k(&["get", "pod", p, "-o=jsonpath={.status.podIP}"]);
    let writer_ip = ip("writer");
    let subnet =
        node_subnet(&node).unwrap_or_else(|| fail("berth-overlayd wrote no /run/berth/subnet.env"));
    assert!(
        subnet_contains(&subnet, writer_ip.parse().unwrap()),
        "writer {writer_ip} is in the overlay's node subnet {subnet}"
    );
    let exec = |p: &str, script: &str| cp.kubectl(&["exec", p, "--", "/bin/sh", "-c", script]);
    exec("peer", &format!("ping -c 2 -W 2 {writer_ip}")).unwrap_or_else(|e| fail(&e));
    let text = exec("writer", "cat /data/f").unwrap_or_else(|e| fail(&e));
    assert_eq!(text.trim(), "shipped");

    // A snapshot of the claim, restored into a new claim.
    snapshot(&cp, "data").unwrap_or_else(|e| fail(&e));
    apply(&claim("restored", Some("snap")));
    apply(&pod("reader", "node1", "exec sleep 3600", vol("restored")));
    wait_pod(&cp, "reader").unwrap_or_else(|e| fail(&e));
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
    assert_eq!(
        node_subnet(&node).as_deref(),
        Some(subnet.as_str()),
        "the new agent kept the subnet"
    );
    // The new berth-csi adopted the loop device of the staged volume (one per image, not two).
    let loops = loops_per_image(&node);
    assert!(
        !loops.is_empty() && loops.iter().all(|(_, n)| *n == 1),
        "loop devices per pool image after the rollout: {loops:?}"
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
    uninstall(
        &cp,
        overlay.path(),
        &["writer", "reader", "peer"],
        &["data", "restored"],
    )
    .unwrap_or_else(|e| fail(&e));
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
    // The kube store: the subnet is the Node's, and the Node keeps the VTEP annotations the
    // agent published (peers keep their routes until the Node goes).
    assert!(
        !published_vtep(&cp, "node1").is_empty(),
        "the Node keeps berth.dev/vtep-mac after the uninstall"
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

/// The underlay of the two-node install: the control plane and the snapshot-controller on the
/// router end, a node behind each port.
const UL_PREFIX: &str = "172.31.248";

#[test]
fn shipped_manifests_run_berth_on_two_nodes() {
    assert!(netns_fixture::is_root(), "run as root");
    let version = env!("CARGO_PKG_VERSION");
    let arch = archives();
    assert!(
        arch.join(format!("berth_{version}.tar")).is_file(),
        "no images in {}: build them with `scripts/image.sh --sidecars --archive-dir {0}` (scripts/test.sh does)",
        arch.display()
    );
    let ul = Underlay::create("bi2", "br-ul", Some(&format!("{UL_PREFIX}.254/24")));
    let stores = tempfile::Builder::new()
        .prefix("berth-install-2n-")
        .tempdir()
        .unwrap();
    let cp = ControlPlane::start(ul.ns.path(), &stores.path().join("cp"), DEFAULT_ADDRESS)
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let k = |args: &[&str]| cp.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    let crds = test_peer("files/snapshot-crds");
    k(&["apply", "--server-side", "-k", &crds.to_string_lossy()]);
    let mut hosts = Vec::new();
    let mut nodes = Vec::new();
    for i in 1..=2u8 {
        let host = Host::new();
        let ip: Ipv4Addr = format!("{UL_PREFIX}.{i}").parse().unwrap();
        ul.attach(&host.ns, &format!("u{i}"), "eth0", &[&format!("{ip}/24")]);
        // The default route (berth-overlayd finds its underlay interface by it) ends in the
        // underlay netns, which routes nowhere else.
        host.ns
            .try_exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("{UL_PREFIX}.254"),
            ])
            .unwrap();
        let name = format!("node{i}");
        let node =
            Node::start(&cp, &host, &node_options(&name, ip)).unwrap_or_else(|e| panic!("{e}"));
        hosts.push(host);
        nodes.push(node);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let fail = |what: &str| -> ! { failure(&cp, &all, what) };
    for n in &nodes {
        import_images(n, &arch).unwrap_or_else(|e| fail(&e));
    }
    let overlay = tempfile::Builder::new()
        .prefix("berth-install-overlay-")
        .tempdir()
        .unwrap();
    // One overlay, one template per DaemonSet, both nodes: the shipped host paths fit each.
    write_overlay(overlay.path(), version);
    apply_and_roll_out(&cp, overlay.path()).unwrap_or_else(|e| fail(&e));
    let scheduled = k(&[
        "get",
        "ds",
        "-n",
        "berth-system",
        "-o=jsonpath={.items[*].status.numberReady}",
    ]);
    assert_eq!(scheduled.trim(), "2 2", "each DaemonSet runs on both nodes");
    for n in &nodes {
        n.wait_ready(&cp).unwrap_or_else(|e| fail(&e));
        n.wait_csi_registered(&cp).unwrap_or_else(|e| fail(&e));
        let (cni_bin, cni_conf) = n.cri().cni_dirs();
        assert!(
            cni_bin.join("berth-overlay").is_file(),
            "{}: plugins installed",
            n.name
        );
        assert!(
            cni_conf.join("10-berth.conflist").is_file(),
            "{}: conflist installed",
            n.name
        );
    }
    let subnets: Vec<String> = nodes
        .iter()
        .map(|n| {
            node_subnet(n).unwrap_or_else(|| fail(&format!("{}: no /run/berth/subnet.env", n.name)))
        })
        .collect();
    assert_ne!(subnets[0], subnets[1], "each node has its own subnet");
    for (n, s) in nodes.iter().zip(&subnets) {
        assert_eq!(
            &pod_cidr(&cp, &n.name),
            s,
            "{}: the subnet is the Node's podCIDR",
            n.name
        );
        assert!(
            !published_vtep(&cp, &n.name).is_empty(),
            "{}: VTEP published",
            n.name
        );
    }
    let _snapshot_controller = snapshot_controller(
        &cp,
        ul.ns.path(),
        &stores.path().join("snapshot-controller.log"),
    );
    wait_default_service_account(&cp).unwrap_or_else(|e| fail(&e));

    // The kubelet tests' workloads, unchanged: a claim and a writer on each node.
    let apply = |obj: &Value| cp.apply(obj).unwrap_or_else(|e| fail(&e));
    for n in &nodes {
        let c = format!("data-{}", n.name);
        apply(&claim(&c, None));
        apply(&pod(
            &format!("writer-{}", n.name),
            &n.name,
            &format!("echo {} > /data/f && sync && exec sleep 3600", n.name),
            vol(&c),
        ));
    }
    for n in &nodes {
        wait_pod(&cp, &format!("writer-{}", n.name)).unwrap_or_else(|e| fail(&e));
    }
    let ip = |p: &str| -> std::net::IpAddr {
        k(&["get", "pod", p, "-o=jsonpath={.status.podIP}"])
            .trim()
            .parse()
            .unwrap()
    };
    let exec = |p: &str, script: &str| cp.kubectl(&["exec", p, "--", "/bin/sh", "-c", script]);
    let ips: Vec<std::net::IpAddr> = nodes
        .iter()
        .map(|n| ip(&format!("writer-{}", n.name)))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            subnet_contains(&subnets[i], ips[i]),
            "writer-{} {} is in its node's subnet {}",
            n.name,
            ips[i],
            subnets[i]
        );
        let pv = k(&[
            "get",
            "pvc",
            &format!("data-{}", n.name),
            "-o=jsonpath={.spec.volumeName}",
        ]);
        let pinned = k(&["get", "pv", pv.trim(), "-o=jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}"]);
        assert_eq!(
            pinned.trim(),
            n.name,
            "the claim's volume is on the writer's node"
        );
        let text = exec(&format!("writer-{}", n.name), "cat /data/f").unwrap_or_else(|e| fail(&e));
        assert_eq!(text.trim(), n.name);
    }
    // Across the overlay, both ways.
    exec("writer-node1", &format!("ping -c 2 -W 2 {}", ips[1]))
        .unwrap_or_else(|e| fail(&format!("node1 pod -> node2 pod: {e}")));
    exec("writer-node2", &format!("ping -c 2 -W 2 {}", ips[0]))
        .unwrap_or_else(|e| fail(&format!("node2 pod -> node1 pod: {e}")));

    // A snapshot of node2's claim, restored for a reader on node2 (snapshots of a local volume
    // live in that node's pool: node2's csi-snapshotter takes it).
    snapshot(&cp, "data-node2").unwrap_or_else(|e| fail(&e));
    apply(&claim("restored", Some("snap")));
    apply(&pod("reader", "node2", "exec sleep 3600", vol("restored")));
    wait_pod(&cp, "reader").unwrap_or_else(|e| fail(&e));
    let restored = exec("reader", "cat /data/f").unwrap_or_else(|e| fail(&e));
    assert_eq!(
        restored.trim(),
        "node2",
        "the restored claim has node2's data"
    );
    println!("install (2 nodes): subnets {subnets:?}, pods {ips:?} reach each other, snapshot restored on node2");

    // Uninstall.
    uninstall(
        &cp,
        overlay.path(),
        &["writer-node1", "writer-node2", "reader"],
        &["data-node1", "data-node2", "restored"],
    )
    .unwrap_or_else(|e| fail(&e));
    for n in &nodes {
        let gone = wait_until(SETTLE, || {
            n.cri()
                .crictl_ok(&["ps", "-q"])
                .is_ok_and(|s| s.trim().is_empty())
        });
        assert!(gone, "{}: containers left after the uninstall", n.name);
        assert!(
            loops_per_image(n).is_empty(),
            "{}: pool images left",
            n.name
        );
    }
}

/// The program interpreter (PT_INTERP) an ELF64 little-endian executable
/// asks for, None for a static one.
fn elf_interpreter(path: &Path) -> Option<String> {
    let b = std::fs::read(path).expect("read the executable");
    assert_eq!(
        b.get(..4),
        Some(&b"\x7fELF"[..]),
        "{} is no ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes([b[ph], b[ph + 1], b[ph + 2], b[ph + 3]]);
        (p_type == 3).then(|| {
            let (off, len) = (u64_at(ph + 8), u64_at(ph + 32));
            String::from_utf8_lossy(&b[off..off + len])
                .trim_end_matches('\0')
                .to_string()
        })
    })
}
