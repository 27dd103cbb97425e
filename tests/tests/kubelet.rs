//! Scenarios "kubelet": a real kubelet (v1.34, built from the Go module proxy) runs pods with
//! Berth's networks and Berth's volumes.
//!
//! The harness is [`berth_tests::kubelet::Node`]: kubelet, containerd's CRI plugin and
//! berth-csi share a private mount namespace inside a test host netns; its module doc says how
//! it runs on this machine (cgroup v1 without systemd, no CAP_SYS_RESOURCE, the kernel settings
//! kubelet changes recorded and restored) and what its guards remove. The control plane is
//! [`berth_tests::cluster::ControlPlane`]; the CSI sidecars run with the DaemonSet's arguments
//! ([`sidecar_command`]) as the berth-csi ServiceAccount. berth-csi registers with kubelet by
//! its built-in registration (`--kubelet-registration-dir`): node-driver-registrar, which
//! deploy/kubernetes runs for it, cannot be built here (the Go module proxy refuses its module,
//! 403).
//!
//! Guards (also when a test fails): sidecars by PID, then the node (kubelet, berth-csi,
//! containerd and every container by PID, the node's cgroups, loop devices of its pool, the
//! kernel settings), then the control plane by PID, then the netns and the tempdirs. Nothing is
//! configured in the root netns; pods have no nameserver.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_tests::cluster::{ControlPlane, DEFAULT_ADDRESS};
use berth_tests::cri::Stores;
use berth_tests::kubelet::{
    csi_state_rows, install_storage, pod, wait_default_service_account, Node, NodeOptions,
    Sidecars, CSI_DRIVER,
};
use berth_tests::netns::*;
use berth_tests::{bin_dir, read_allocations, store_path, subnet_contains, HOST_LOCAL_BIN};
use netns_fixture::{spawn_in_netns, ChildGuard};
use serde_json::{json, Value};

/// The pods' network (the node's podCIDR from kube-controller-manager is 10.244.0.0/24).
const NETWORK: &str = "berthk8s";
const SUBNET: &str = "10.244.0.0/24";
/// How long a pod gets to run, a claim to bind, a deletion to finish.
const SETTLE: Duration = Duration::from_secs(150);
/// kubelet removes the stopped sandboxes of deleted pods in its garbage collection, once a
/// minute.
const GC_WAIT: Duration = Duration::from_secs(100);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn need_root() {
    assert!(
        netns_fixture::is_root(),
        "the kubelet tests create namespaces and run kubelet and containerd: run them as root"
    );
}

/// berth-bridge (gateway, masquerade) + berth-host-local on [`SUBNET`], stores under `dir`.
fn bridge_conflist(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
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

/// One node with berth-csi and the sidecars, its control plane in the same netns.
struct OneNode {
    // Dropped in declaration order: sidecars, node, control plane, netns, stores.
    _sidecars: Option<Sidecars>,
    node: Node,
    cp: ControlPlane,
    host: Host,
    stores: tempfile::TempDir,
}

impl OneNode {
    fn start(csi: bool) -> OneNode {
        need_root();
        let host = Host::new();
        let stores = tempfile::Builder::new()
            .prefix("berth-kubelet-test-")
            .tempdir()
            .unwrap();
        let cp = ControlPlane::start(host.ns.path(), &stores.path().join("cp"), DEFAULT_ADDRESS)
            .unwrap_or_else(|e| panic!("control plane: {e}"));
        let conflist = bridge_conflist(stores.path());
        let plugins: Vec<PathBuf> = [BRIDGE_BIN, HOST_LOCAL_BIN]
            .iter()
            .map(|p| bin_dir().join(p))
            .collect();
        if csi {
            install_storage(&cp, &root()).unwrap_or_else(|e| panic!("{e}"));
        }
        let node = Node::start(
            &cp,
            &host,
            &NodeOptions {
                name: "node1",
                node_ip: DEFAULT_ADDRESS,
                conflist: Some(&conflist),
                plugins: &plugins,
                csi,
                max_pods: 110,
                fhs_paths: false,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sidecars = csi.then(|| {
            Sidecars::start(&cp, &host, &node, stores.path()).unwrap_or_else(|e| panic!("{e}"))
        });
        wait_default_service_account(&cp).unwrap_or_else(|e| panic!("{e}"));
        OneNode {
            _sidecars: sidecars,
            node,
            cp,
            host,
            stores,
        }
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

    fn exec(&self, pod: &str, script: &str) -> Result<String, String> {
        self.cp
            .kubectl(&["exec", pod, "--", "/bin/sh", "-c", script])
    }

    fn events(&self, object: &str) -> String {
        self.cp.events("default", object)
    }

    fn logs(&self) -> String {
        let keep = std::env::temp_dir().join(format!("berth-kubelet-logs-{}", std::process::id()));
        self.node.keep_logs(&keep);
        for e in fs::read_dir(self.stores.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
        for e in fs::read_dir(&self.cp.dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
        format!(
            "{}\n(all logs kept in {})",
            self.node.logs(),
            keep.display()
        )
    }

    /// Wait until the pod is Ready; its JSON.
    fn running(&self, name: &str) -> Value {
        let ok = wait_until(SETTLE, || {
            self.get(&["pod", name]).is_some_and(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        });
        assert!(
            ok,
            "pod {name} not Ready after {SETTLE:?}: {}\nevents: {}\n{}",
            self.get(&["pod", name]).unwrap_or_default()["status"],
            self.events(name),
            self.logs()
        );
        self.get(&["pod", name]).unwrap()
    }

    /// Wait until the pod ended with `phase` (Succeeded or Failed).
    fn finished(&self, name: &str) -> String {
        let mut phase = String::new();
        wait_until(SETTLE, || {
            phase = self
                .get(&["pod", name])
                .and_then(|p| p["status"]["phase"].as_str().map(String::from))
                .unwrap_or_default();
            phase == "Succeeded" || phase == "Failed"
        });
        phase
    }

    fn pod_ip(&self, name: &str) -> IpAddr {
        let p = self.get(&["pod", name]).unwrap();
        p["status"]["podIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("pod {name} has no podIP: {}", p["status"]))
    }

    fn claim(&self, name: &str, class: &str, block: bool) {
        let mut pvc = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": name },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": class,
                "resources": { "requests": { "storage": "64Mi" } },
            },
        });
        if block {
            pvc["spec"]["volumeMode"] = json!("Block");
        }
        self.apply(&pvc);
    }

    fn delete(&self, what: &[&str]) {
        let mut a = vec!["delete", "--wait=true", "--timeout=120s"];
        a.extend_from_slice(what);
        self.kubectl(&a);
    }

    fn ipam_db(&self) -> PathBuf {
        store_path(&self.stores.path().join("ipam-data"), NETWORK)
    }

    fn records(&self) -> PathBuf {
        records_path(&self.stores.path().join("bridge-data"), NETWORK)
    }

    fn pool_files(&self) -> Vec<String> {
        let mut v = Vec::new();
        for sub in ["volumes", "snapshots"] {
            for e in fs::read_dir(self.node.pool().join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.starts_with('.') {
                    v.push(format!("{sub}/{n}"));
                }
            }
        }
        v
    }

    fn state_rows(&self, table: &str) -> i64 {
        csi_state_rows(&self.node.csi_db(), table).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything the pods and volumes could leave: veths, NAT elements, allocations,
    /// attachment records, pod netns files, sandboxes (the CRI harness's list), mounts under
    /// the node's directories, loop devices, image files and berth-csi rows.
    fn leftovers(&self) -> Vec<String> {
        let ipam = self.ipam_db();
        let records = self.records();
        let stores = Stores {
            ipam_db: Some(&ipam),
            records: Some(&records),
            reference_ipam: None,
            uplinks: &[],
        };
        let mut out = self.node.cri().leftovers(&self.host, &stores);
        match self.node.mounts() {
            Ok(m) if !m.is_empty() => out.push(format!("mounts: {m:?}")),
            Ok(_) => {}
            Err(e) => out.push(e),
        }
        let loops = self.node.loop_devices();
        if !loops.is_empty() {
            out.push(format!("loop devices: {loops:?}"));
        }
        if self.node.csi_db().exists() {
            let files = self.pool_files();
            if !files.is_empty() {
                out.push(format!("image files: {files:?}"));
            }
            for t in ["volumes", "snapshots", "controller_publications"] {
                let n = self.state_rows(t);
                if n != 0 {
                    out.push(format!("{n} row(s) in berth-csi's {t}"));
                }
            }
        }
        out
    }

    fn assert_clean(&self, context: &str) {
        let mut last = Vec::new();
        let clean = wait_until(GC_WAIT, || {
            last = self.leftovers();
            last.is_empty()
        });
        assert!(
            clean,
            "{context}: left behind:\n- {}\n{}",
            last.join("\n- "),
            self.logs()
        );
    }
}

fn volume(claim: &str) -> Value {
    json!([{ "name": "vol", "persistentVolumeClaim": { "claimName": claim } }])
}

#[test]
fn one_node_pods_get_berth_networks_and_volumes() {
    let mut c = OneNode::start(true);
    let node = c.get(&["node", "node1"]).unwrap();
    assert_eq!(
        node["metadata"]["labels"]["topology.csi.berth.dev/node"], "node1",
        "kubelet put berth-csi's topology on the Node: {}",
        node["metadata"]["labels"]
    );

    // A pod with an ext4 claim writes on its volume.
    c.claim("data", "berth-local-ext4", false);
    let mounts = json!([{ "name": "vol", "mountPath": "/data" }]);
    c.apply(&pod(
        "writer",
        "node1",
        "echo berth-was-here > /data/f && sync && exec sleep 3600",
        json!({ "volumes": volume("data"), "volumeMounts": mounts }),
    ));
    let writer = c.running("writer");
    let writer_ip = c.pod_ip("writer");
    assert!(
        subnet_contains(SUBNET, writer_ip),
        "writer got {writer_ip}, outside {SUBNET}: {}",
        writer["status"]
    );
    let held = read_allocations(&c.ipam_db()).unwrap();
    assert!(
        held.iter().any(|a| a.ip() == writer_ip.to_string()),
        "berth-host-local holds no allocation for {writer_ip}: {held:?}"
    );
    let df = c
        .exec("writer", "cat /data/f; grep ' /data ' /proc/mounts")
        .unwrap();
    assert!(
        df.contains("berth-was-here") && df.contains("ext4"),
        "the claim is an ext4 mount with the file on it: {df}"
    );

    // A second pod pings the first, through the bridge.
    c.apply(&pod(
        "pinger",
        "node1",
        &format!("ping -c 3 -W 2 {writer_ip}"),
        json!({ "restartPolicy": "Never" }),
    ));
    assert_eq!(
        c.finished("pinger"),
        "Succeeded",
        "pinger -> writer ({writer_ip}): {}\n{}",
        c.cp.kubectl(&["logs", "pinger"]).unwrap_or_else(|e| e),
        c.events("pinger")
    );

    // A raw block claim is a block device in its pod.
    c.claim("raw", "berth-local-block", true);
    c.apply(&pod(
        "blk",
        "node1",
        "exec sleep 3600",
        json!({
            "volumes": volume("raw"),
            "volumeDevices": [{ "name": "vol", "devicePath": "/dev/berth-raw" }],
        }),
    ));
    c.running("blk");
    let blk = c
        .exec("blk", "test -b /dev/berth-raw && echo is-block; dd if=/dev/berth-raw of=/dev/null bs=1M count=1 2>&1")
        .unwrap();
    assert!(blk.contains("is-block"), "/dev/berth-raw in the pod: {blk}");
    let blk_ip = c.pod_ip("blk");

    // kubelet restarted while the pods run: they keep their network and volumes.
    let restarts = |c: &OneNode, name: &str| {
        c.get(&["pod", name]).unwrap()["status"]["containerStatuses"][0]["restartCount"].clone()
    };
    c.node.stop_kubelet();
    let running = c
        .node
        .cri()
        .crictl_ok(&["ps", "-q", "--state", "Running"])
        .unwrap();
    assert_eq!(
        running.lines().count(),
        2,
        "both containers run while kubelet is down: {running}"
    );
    c.node.start_kubelet().unwrap();
    c.node.wait_ready(&c.cp).unwrap();
    c.running("writer");
    assert_eq!(c.pod_ip("writer"), writer_ip, "writer keeps its address");
    // The Node still says Ready from before; kubelet serves exec once it synced its pods.
    let script = format!("cat /data/f && ping -c 2 -W 2 {blk_ip} >/dev/null && echo ping-ok");
    let mut last = Err(String::new());
    wait_until(Duration::from_secs(60), || {
        last = c.exec("writer", &script);
        last.is_ok()
    });
    let after = last.unwrap_or_else(|e| panic!("after the kubelet restart: {e}\n{}", c.logs()));
    assert!(
        after.contains("berth-was-here") && after.contains("ping-ok"),
        "after the kubelet restart: {after}"
    );
    assert_eq!(restarts(&c, "writer"), json!(0), "writer was not restarted");
    assert_eq!(restarts(&c, "blk"), json!(0), "blk was not restarted");

    // The pod deleted and created again finds its data.
    c.delete(&["pod", "writer"]);
    c.apply(&pod(
        "reader",
        "node1",
        "exec sleep 3600",
        json!({
            "volumes": volume("data"),
            "volumeMounts": [{ "name": "vol", "mountPath": "/data" }],
        }),
    ));
    c.running("reader");
    let again = c.exec("reader", "cat /data/f").unwrap();
    assert_eq!(again.trim(), "berth-was-here", "the data survived the pod");

    // Everything deleted: nothing left on the node.
    c.delete(&["pod", "--all"]);
    c.delete(&["pvc", "--all"]);
    let gone = wait_until(SETTLE, || {
        c.get(&["pv"])
            .is_some_and(|l| l["items"].as_array().is_some_and(|a| a.is_empty()))
    });
    assert!(
        gone,
        "PVs left: {}\n{}",
        c.kubectl(&["get", "pv"]),
        c.logs()
    );
    c.assert_clean("after every pod and claim was deleted");
    let csinode = c.get(&["csinode", "node1"]).unwrap();
    assert_eq!(csinode["spec"]["drivers"][0]["name"], CSI_DRIVER);
}

/// Events of `object` with `reason`: (count, message) each.
fn reason_events(c: &OneNode, object: &str, reason: &str) -> Vec<(u64, String)> {
    let list = c.get(&[
        "events",
        "--field-selector",
        &format!("involvedObject.name={object},reason={reason}"),
    ]);
    list.map(|l| {
        l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["count"].as_u64().unwrap_or(1),
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

#[test]
fn broken_conflist_keeps_pods_creating_and_leaks_nothing() {
    let c = OneNode::start(false);
    let good = bridge_conflist(c.stores.path());
    let mut unknown_ipam = good.clone();
    unknown_ipam["plugins"][0]["ipam"]["type"] = json!("berth-no-such-ipam");
    let mut overlapping = good.clone();
    overlapping["plugins"][0]["ipam"]["ranges"] =
        json!([[{ "subnet": SUBNET }], [{ "subnet": "10.244.0.128/25" }]]);
    let bad_json =
        br#"{"cniVersion": "1.0.0", "name": "berthk8s", "plugins": [{"type": "berth-bridge","#
            .to_vec();
    let cases: [(&str, Vec<u8>, &str); 2] = [
        (
            "unknown IPAM type",
            serde_json::to_vec(&unknown_ipam).unwrap(),
            "berth-no-such-ipam",
        ),
        (
            "overlapping ranges",
            serde_json::to_vec(&overlapping).unwrap(),
            "overlaps",
        ),
    ];
    for (i, (what, bytes, needle)) in cases.iter().enumerate() {
        c.node.write_conflist(bytes).unwrap();
        let name = format!("victim{i}");
        c.apply(&pod(&name, "node1", "exec sleep 3600", json!({})));
        let mut seen = Vec::new();
        let failed_twice = wait_until(SETTLE, || {
            seen = reason_events(&c, &name, "FailedCreatePodSandBox");
            seen.iter().map(|(n, _)| n).sum::<u64>() >= 2
        });
        let all = c.events(&name);
        assert!(
            failed_twice,
            "{what}: kubelet did not retry the sandbox twice: {all}\n{}",
            c.logs()
        );
        assert!(
            seen.iter().any(|(_, m)| m.contains(needle)),
            "{what}: no FailedCreatePodSandBox event names the problem ({needle:?}): {seen:?}"
        );
        let p = c.get(&["pod", &name]).unwrap();
        assert_eq!(p["status"]["phase"], "Pending", "{what}: {}", p["status"]);
        let leftovers = c.leftovers();
        assert!(
            leftovers.is_empty(),
            "{what}: retries left behind: {leftovers:?}"
        );
        println!(
            "kubelet-broken-conflist case={what:?} event={:?}",
            seen.last().map(|s| &s.1)
        );
        c.delete(&["pod", &name]);
    }
    // Bad JSON never reaches a plugin: containerd's CRI plugin drops the network ("cni plugin
    // not initialized"), the Node turns NotReady, and the parse error is in `crictl info`'s
    // lastCNILoadStatus (and containerd's log), the place an operator looks next.
    c.node.write_conflist(&bad_json).unwrap();
    c.apply(&pod("victim-json", "node1", "exec sleep 3600", json!({})));
    let mut status = String::new();
    let reported = wait_until(SETTLE, || {
        status = c
            .node
            .cri()
            .crictl_json(&["info"])
            .map(|v| {
                v["lastCNILoadStatus"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_else(|e| e);
        status.contains("unexpected end of JSON input")
    });
    assert!(reported, "bad JSON: lastCNILoadStatus = {status:?}");
    let not_ready = wait_until(SETTLE, || {
        !reason_events(&c, "victim-json", "NetworkNotReady").is_empty()
            || !reason_events(&c, "victim-json", "FailedCreatePodSandBox").is_empty()
    });
    assert!(
        not_ready,
        "bad JSON: no event on the pod: {}",
        c.events("victim-json")
    );
    let node_msg = c.kubectl(&[
        "get",
        "node",
        "node1",
        "-o=jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
    ]);
    let p = c.get(&["pod", "victim-json"]).unwrap();
    assert_eq!(p["status"]["phase"], "Pending", "bad JSON: {}", p["status"]);
    let leftovers: Vec<String> = c
        .leftovers()
        .into_iter()
        // containerd keeps the failed sandbox (state unknown) and its netns file until it can
        // tear it down; the final check below sees them go.
        .filter(|l| !l.starts_with("sandboxes still listed") && !l.starts_with("pod netns files"))
        .collect();
    assert!(leftovers.is_empty(), "bad JSON: left behind: {leftovers:?}");
    println!(
        "kubelet-broken-conflist case=\"bad JSON\" lastCNILoadStatus={status:?} node={node_msg:?} events={:?}",
        c.events("victim-json")
    );

    // Fixed: the waiting pod and a new one start.
    c.node
        .write_conflist(&serde_json::to_vec(&good).unwrap())
        .unwrap();
    c.apply(&pod("healed", "node1", "exec sleep 3600", json!({})));
    c.running("victim-json");
    c.running("healed");
    assert!(subnet_contains(SUBNET, c.pod_ip("healed")));
    assert!(subnet_contains(SUBNET, c.pod_ip("victim-json")));
    c.delete(&["pod", "--all"]);
    c.assert_clean("after the broken conflists and the healed pod");
}

/// The two-node scenario's underlay: the control plane and the overlay's etcd are on the
/// underlay netns (the bridge's address), each node a host netns plugged into it.
const UL_PREFIX: &str = "172.31.249";
const OVERLAY_ETCD: &str = "172.31.249.254:22379";

/// One node of the two-node scenario: its host netns, berth-overlayd, kubelet.
struct OverlayNode {
    node: Node,
    agent: ChildGuard,
    host: Host,
    subnet: String,
}

fn start_overlay_agent(host: &Host, name: &str, dir: &Path) -> (ChildGuard, String) {
    let subnet_file = dir.join(format!("{name}-subnet.env"));
    let log = fs::File::create(dir.join(format!("{name}-overlayd.log"))).unwrap();
    let mut cmd = std::process::Command::new(bin_dir().join("berth-overlayd"));
    cmd.args([
        "--node-name",
        name,
        "--network",
        "10.244.0.0/16",
        "--store",
        &format!("etcd:http://{OVERLAY_ETCD}"),
        "--iface",
        "eth0",
        "--lease-ttl",
        "12s",
        "--resync-interval",
        "1s",
    ])
    .arg("--subnet-file")
    .arg(&subnet_file)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    let agent = ChildGuard::new(host.spawn(cmd).expect("start berth-overlayd"));
    assert!(
        wait_until(Duration::from_secs(20), || subnet_file.exists()),
        "berth-overlayd on {name} wrote no subnet file: {}",
        fs::read_to_string(dir.join(format!("{name}-overlayd.log"))).unwrap_or_default()
    );
    let subnet = fs::read_to_string(&subnet_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("BERTH_SUBNET="))
        .expect("BERTH_SUBNET in the subnet file")
        .to_string();
    (agent, subnet)
}

#[test]
fn two_nodes_pods_reach_each_other_over_the_berth_overlay() {
    need_root();
    let ul = Underlay::create("bk2", "br-ul", Some(&format!("{UL_PREFIX}.254/24")));
    let stores = tempfile::Builder::new()
        .prefix("berth-kubelet-2n-")
        .tempdir()
        .unwrap();
    let cp = ControlPlane::start(ul.ns.path(), &stores.path().join("cp"), DEFAULT_ADDRESS)
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    // The overlay's own etcd (deploy/kubernetes runs one for berth-overlayd), on the underlay.
    let (etcd_host, etcd_port) = OVERLAY_ETCD.split_once(':').unwrap();
    let etcd = berth_tests::kubelet::overlay_etcd_command(OVERLAY_ETCD, stores.path()).unwrap();
    let _etcd = ChildGuard::new(spawn_in_netns(ul.ns.path(), etcd).expect("start etcd"));
    let probe = format!("exec 3<>/dev/tcp/{etcd_host}/{etcd_port}");
    assert!(
        wait_until(Duration::from_secs(20), || ul
            .ns
            .try_exec(&["bash", "-c", &probe])
            .is_ok()),
        "the overlay's etcd did not start"
    );

    let plugins: Vec<PathBuf> = ["berth-overlay", BRIDGE_BIN, HOST_LOCAL_BIN]
        .iter()
        .map(|p| bin_dir().join(p))
        .collect();
    let mut nodes: Vec<OverlayNode> = Vec::new();
    for i in 1..=2u8 {
        let name = format!("node{i}");
        let host = Host::new();
        let ip: std::net::Ipv4Addr = format!("{UL_PREFIX}.{i}").parse().unwrap();
        ul.attach(&host.ns, &format!("u{i}"), "eth0", &[&format!("{ip}/24")]);
        host.ns
            .try_exec(&[
                "ip",
                "route",
                "add",
                &format!("{DEFAULT_ADDRESS}/32"),
                "via",
                &format!("{UL_PREFIX}.254"),
            ])
            .unwrap();
        let (agent, subnet) = start_overlay_agent(&host, &name, stores.path());
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "pods",
            "plugins": [{
                "type": "berth-overlay",
                "subnetFile": stores.path().join(format!("{name}-subnet.env")).to_string_lossy(),
                "dataDir": stores.path().join(format!("{name}-data")).to_string_lossy(),
            }],
        });
        let node = Node::start(
            &cp,
            &host,
            &NodeOptions {
                name: &name,
                node_ip: ip,
                conflist: Some(&conflist),
                plugins: &plugins,
                csi: false,
                max_pods: 110,
                fhs_paths: false,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        nodes.push(OverlayNode {
            node,
            agent,
            host,
            subnet,
        });
    }
    assert_ne!(
        nodes[0].subnet, nodes[1].subnet,
        "each node leased its own subnet"
    );
    let k = |args: &[&str]| {
        cp.kubectl(args)
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", nodes[0].node.logs(), nodes[1].node.logs()))
    };
    wait_default_service_account(&cp).unwrap_or_else(|e| panic!("{e}"));
    let apply = |obj: &Value| {
        cp.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string())
            .unwrap_or_else(|e| panic!("apply: {e}"))
    };
    apply(&pod("a", "node1", "exec sleep 3600", json!({})));
    apply(&pod(
        "sink",
        "node2",
        // busybox nc stops reading the network once its own stdin ends: keep that open.
        "sleep 3600 | nc -l -p 5001 > /tmp/recv; exec sleep 3600",
        json!({}),
    ));
    for p in ["a", "sink"] {
        k(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=150s",
            &format!("pod/{p}"),
        ]);
    }
    let ip_of = |p: &str| -> IpAddr {
        k(&["get", "pod", p, "-o=jsonpath={.status.podIP}"])
            .trim()
            .parse()
            .unwrap()
    };
    let (a_ip, sink_ip) = (ip_of("a"), ip_of("sink"));
    assert!(
        subnet_contains(&nodes[0].subnet, a_ip),
        "{a_ip} in {}",
        nodes[0].subnet
    );
    assert!(
        subnet_contains(&nodes[1].subnet, sink_ip),
        "{sink_ip} in {}",
        nodes[1].subnet
    );
    let exec = |p: &str, script: &str| cp.kubectl(&["exec", p, "--", "/bin/sh", "-c", script]);
    let ping = exec("a", &format!("ping -c 3 -W 2 {sink_ip}"));
    assert!(
        ping.is_ok(),
        "node1 pod -> node2 pod over the overlay: {ping:?}"
    );
    let back = exec("sink", &format!("ping -c 3 -W 2 {a_ip}"));
    assert!(back.is_ok(), "node2 pod -> node1 pod: {back:?}");

    // A pod-IP TCP transfer between the nodes (no Service): 8 MiB through busybox nc.
    let sent = exec(
        "a",
        &format!("dd if=/dev/zero bs=1M count=8 2>/dev/null | nc -w 5 {sink_ip} 5001; echo sent"),
    );
    assert!(sent.is_ok(), "send to {sink_ip}:5001: {sent:?}");
    let mut got = String::new();
    let arrived = wait_until(Duration::from_secs(20), || {
        got = exec("sink", "wc -c < /tmp/recv").unwrap_or_default();
        got.trim() == "8388608"
    });
    assert!(arrived, "the sink received {got:?} bytes of 8388608");

    // node2's kubelet and agent stopped: node1 drops its route to node2's subnet.
    let route_to = |n: &OverlayNode, subnet: &str| {
        n.host
            .ns
            .try_exec(&["ip", "route", "show", subnet])
            .unwrap_or_default()
    };
    let node2_subnet = nodes[1].subnet.clone();
    assert!(
        !route_to(&nodes[0], &node2_subnet).trim().is_empty(),
        "node1 has a route to node2's {node2_subnet} while node2 runs"
    );
    let mut gone = nodes.pop().unwrap();
    gone.node.stop_kubelet();
    gone.agent.stop();
    let dropped = wait_until(Duration::from_secs(60), || {
        route_to(&nodes[0], &node2_subnet).trim().is_empty()
    });
    assert!(
        dropped,
        "node1 still routes {node2_subnet} after node2's agent stopped: {}\n{}",
        route_to(&nodes[0], &node2_subnet),
        fs::read_to_string(stores.path().join("node1-overlayd.log")).unwrap_or_default()
    );
    let ping = exec("a", &format!("ping -c 1 -W 1 {sink_ip}"));
    assert!(
        ping.is_err(),
        "node2's pod is no longer reachable: {ping:?}"
    );
    drop(gone);
    cp.kubectl(&["delete", "pod", "a", "--wait=true", "--timeout=120s"])
        .unwrap_or_else(|e| panic!("{e}\n{}", nodes[0].node.logs()));
    let ipam_db = store_path(&stores.path().join("node1-data"), "pods");
    let records = records_path(&stores.path().join("node1-data"), "pods");
    let uplinks = ["eth0"];
    let st = Stores {
        ipam_db: Some(&ipam_db),
        records: Some(&records),
        reference_ipam: None,
        uplinks: &uplinks,
    };
    if let Err(e) = nodes[0].node.cri().wait_clean(&nodes[0].host, &st, GC_WAIT) {
        panic!("node1 after its pod was deleted: {e}");
    }
}
