//! Scenario "control plane": etcd + kube-apiserver + kube-controller-manager + kube-scheduler
//! (`berth_tests::cluster`) in a test netns, and the shipped manifests in `deploy/kubernetes`
//! checked by the real API server: `kubectl apply --dry-run=server -k` accepts every object
//! (admission, schema and defaulting included), then the cluster-wide objects Berth needs
//! (CSIDriver, RBAC, StorageClasses, VolumeSnapshotClass) are applied for real and read back.
//!
//! The VolumeSnapshot CRDs come from the external-snapshotter release pinned in
//! tests/tools/versions.txt (scripts/test-peers.sh copies them to
//! `$BERTH_TOOLS_DIR/files/snapshot-crds`). Guards: the control plane's processes are stopped
//! by PID and the netns deleted on drop, also when the test fails.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_tests::cluster::{ControlPlane, DEFAULT_ADDRESS};
use netns_fixture::{test_peer, wait_until, Netns};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("kubectl gave no JSON ({e}): {s}"))
}

/// Install the VolumeSnapshot CRDs and wait until the API serves them.
pub fn install_snapshot_crds(cp: &ControlPlane) {
    let crds = test_peer("files/snapshot-crds");
    let out = cp
        .kubectl(&["apply", "--server-side", "-k", &crds.to_string_lossy()])
        .unwrap();
    for kind in [
        "volumesnapshots",
        "volumesnapshotcontents",
        "volumesnapshotclasses",
    ] {
        assert!(out.contains(kind), "CRD {kind} not applied: {out}");
        let crd = format!("crd/{kind}.snapshot.storage.k8s.io");
        cp.kubectl(&["wait", "--for=condition=Established", &crd, "--timeout=60s"])
            .unwrap();
    }
}

#[test]
fn api_server_accepts_every_shipped_manifest() {
    assert!(
        netns_fixture::is_root(),
        "run as root: the test creates a netns"
    );
    let netns = Netns::create("bcp");
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(netns.path(), dir.path(), DEFAULT_ADDRESS)
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let manifests = root().join("deploy/kubernetes");
    let manifests = manifests.to_string_lossy();

    // The controller-manager works: its ServiceAccount controller gives a new namespace its
    // `default` account. The scheduler works: a pod with no node to go to is marked
    // Unschedulable by it (nothing else sets that condition).
    cp.kubectl(&["create", "namespace", "berth-probe"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || cp
            .kubectl(&["get", "serviceaccount", "default", "-n", "berth-probe"])
            .is_ok()),
        "kube-controller-manager made no default ServiceAccount:\n{}",
        cp.log_tail("kube-controller-manager")
    );
    cp.kubectl(&[
        "run",
        "probe",
        "-n",
        "berth-probe",
        "--image=localhost/none:1",
        "--restart=Never",
    ])
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || {
            cp.kubectl(&["get", "pod", "probe", "-n", "berth-probe", "-o", "json"])
                .map(|s| {
                    json(&s)["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                })
                .unwrap_or(false)
        }),
        "kube-scheduler did not mark the pod Unschedulable:\n{}",
        cp.log_tail("kube-scheduler")
    );

    install_snapshot_crds(&cp);
    // Namespaced objects are checked against their namespace, which a dry run does not
    // create: the Namespace goes in for real first.
    cp.kubectl(&["apply", "-f", &format!("{manifests}/00-namespace.yaml")])
        .unwrap();

    let built = cp.kubectl(&["kustomize", &manifests]).unwrap();
    let objects: Vec<String> = serde_yaml_ng::Deserializer::from_str(&built)
        .filter_map(|de| {
            use serde::Deserialize;
            let v = Value::deserialize(de).unwrap();
            let kind = v["kind"].as_str()?.to_lowercase();
            Some(format!("{kind}/{}", v["metadata"]["name"].as_str()?))
        })
        .collect();
    assert!(objects.len() >= 15, "kustomize built only {objects:?}");
    let dry = cp
        .kubectl(&["apply", "--dry-run=server", "-k", &manifests])
        .unwrap_or_else(|e| panic!("the API server rejected a shipped manifest: {e}"));
    eprintln!("server dry run:\n{dry}");
    let accepted = dry
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(
        accepted,
        objects.len(),
        "every object of the kustomization is accepted: {objects:?}\n{dry}"
    );
    for o in &objects {
        let name = o.rsplit('/').next().unwrap();
        assert!(
            dry.lines().any(|l| l.contains(&format!("/{name} "))),
            "{o} missing from the dry run:\n{dry}"
        );
    }

    // The check can fail: the same server rejects a StorageClass with a bad binding mode.
    let bad = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: bad\n\
               provisioner: csi.berth.dev\nvolumeBindingMode: Sometimes\n";
    let err = cp
        .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], bad)
        .expect_err("a bad volumeBindingMode is rejected");
    assert!(err.contains("volumeBindingMode"), "{err}");

    // The cluster-wide objects, for real.
    for f in [
        "01-csidriver.yaml",
        "02-rbac.yaml",
        "04-storageclasses.yaml",
    ] {
        cp.kubectl(&["apply", "-f", &format!("{manifests}/{f}")])
            .unwrap();
    }
    let driver = json(
        &cp.kubectl(&["get", "csidriver", "csi.berth.dev", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(driver["spec"]["attachRequired"], true);
    assert_eq!(driver["spec"]["storageCapacity"], true);
    assert_eq!(driver["spec"]["fsGroupPolicy"], "File");
    let classes = json(&cp.kubectl(&["get", "storageclass", "-o", "json"]).unwrap());
    let mut names: Vec<&str> = classes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["provisioner"] == "csi.berth.dev")
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["berth-local-block", "berth-local-ext4", "berth-local-xfs"]
    );
    let snap = json(
        &cp.kubectl(&["get", "volumesnapshotclass", "berth-local", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(snap["driver"], "csi.berth.dev");
    assert_eq!(snap["deletionPolicy"], "Delete");

    // RBAC as bound: the sidecars' account may do its job and no more.
    let sa = "--as=system:serviceaccount:berth-system:berth-csi";
    for (verb, resource, want) in [
        ("create", "persistentvolumes", "yes"),
        ("patch", "volumeattachments.storage.k8s.io", "yes"),
        (
            "update",
            "volumesnapshotcontents.snapshot.storage.k8s.io",
            "yes",
        ),
        ("create", "events", "yes"),
        ("delete", "nodes", "no"),
        ("get", "secrets", "no"),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, resource, sa]);
        let got = match &out {
            Ok(s) => s.trim().to_string(),
            // `can-i` exits 1 for "no".
            Err(e) if e.contains("no") => "no".to_string(),
            Err(e) => panic!("kubectl auth can-i: {e}"),
        };
        assert_eq!(got, want, "berth-csi may {verb} {resource}");
    }
    let leases = cp.kubectl(&[
        "auth",
        "can-i",
        "update",
        "leases.coordination.k8s.io",
        "-n",
        "berth-system",
        sa,
    ]);
    assert_eq!(leases.map(|s| s.trim().to_string()), Ok("yes".to_string()));
}
