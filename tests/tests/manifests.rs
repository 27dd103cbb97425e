//! The deployment files are checked the way `kubectl apply --dry-run` would
//! catch the usual mistakes, without a cluster: every YAML document parses and
//! has the fields its kind needs, references between objects resolve, the
//! kustomization lists every manifest, and every CNI configuration shipped
//! (files and ConfigMap entries) is a valid conflist for our plugins.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn manifests() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()) == Some("yaml")
                && p.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let v = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{name} document {i}: not valid YAML: {e}"));
            if v.is_null() {
                continue;
            }
            docs.push((format!("{name}#{i}"), v));
        }
    }
    docs
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CSIDriver",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "VolumeSnapshotClass",
    "PriorityClass",
];

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn pod_spec(v: &Value) -> Option<&Value> {
    match v["kind"].as_str()? {
        "DaemonSet" | "Deployment" | "StatefulSet" => v.get("spec")?.get("template")?.get("spec"),
        "Pod" => v.get("spec"),
        _ => None,
    }
}

#[test]
fn every_manifest_has_the_fields_its_kind_needs() {
    let docs = manifests();
    let mut errors = Vec::new();
    for (at, v) in &docs {
        for f in ["apiVersion", "kind"] {
            if s(v, &[f]).is_none() {
                errors.push(format!("{at}: {f} missing"));
            }
        }
        if s(v, &["metadata", "name"]).is_none() {
            errors.push(format!("{at}: metadata.name missing"));
        }
        let kind = s(v, &["kind"]).unwrap_or_default();
        if !CLUSTER_SCOPED.contains(&kind) && s(v, &["metadata", "namespace"]).is_none() {
            errors.push(format!("{at}: {kind} needs metadata.namespace"));
        }
        if let Some(spec) = pod_spec(v) {
            // The selector must select the template.
            let sel = v["spec"]["selector"]["matchLabels"].as_object();
            let labels = v["spec"]["template"]["metadata"]["labels"].as_object();
            match (sel, labels) {
                (Some(sel), Some(labels)) => {
                    for (k, val) in sel {
                        if labels.get(k) != Some(val) {
                            errors.push(format!(
                                "{at}: selector {k}={val} does not match the template labels"
                            ));
                        }
                    }
                }
                _ => errors.push(format!(
                    "{at}: selector.matchLabels and template labels are required"
                )),
            }
            let volumes: BTreeSet<&str> = spec["volumes"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v["name"].as_str()).collect())
                .unwrap_or_default();
            for key in ["containers", "initContainers"] {
                for c in spec[key].as_array().into_iter().flatten() {
                    let cname = c["name"].as_str().unwrap_or("?");
                    if c["name"].as_str().is_none() || c["image"].as_str().is_none() {
                        errors.push(format!(
                            "{at}: every container needs name and image ({cname})"
                        ));
                    }
                    for m in c["volumeMounts"].as_array().into_iter().flatten() {
                        let n = m["name"].as_str().unwrap_or_default();
                        if !volumes.contains(n) {
                            errors.push(format!(
                                "{at}: container {cname} mounts undeclared volume {n:?}"
                            ));
                        }
                        if m["mountPath"].as_str().is_none() {
                            errors.push(format!(
                                "{at}: container {cname} mount {n} has no mountPath"
                            ));
                        }
                    }
                }
            }
        }
        if kind == "StorageClass" && s(v, &["provisioner"]) != Some("csi.berth.dev") {
            errors.push(format!(
                "{at}: StorageClass provisioner must be csi.berth.dev"
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "manifest problems:\n{}",
        errors.join("\n")
    );
}

#[test]
fn references_between_objects_resolve() {
    let docs = manifests();
    let defined: BTreeSet<(String, String, String)> = docs
        .iter()
        .map(|(_, v)| {
            (
                s(v, &["kind"]).unwrap_or_default().to_string(),
                s(v, &["metadata", "namespace"])
                    .unwrap_or_default()
                    .to_string(),
                s(v, &["metadata", "name"]).unwrap_or_default().to_string(),
            )
        })
        .collect();
    let configmaps: BTreeMap<(String, String), Value> = docs
        .iter()
        .filter(|(_, v)| s(v, &["kind"]) == Some("ConfigMap"))
        .map(|(_, v)| {
            (
                (
                    s(v, &["metadata", "namespace"])
                        .unwrap_or_default()
                        .to_string(),
                    s(v, &["metadata", "name"]).unwrap_or_default().to_string(),
                ),
                v["data"].clone(),
            )
        })
        .collect();
    let mut errors = Vec::new();
    for (at, v) in &docs {
        let ns = s(v, &["metadata", "namespace"])
            .unwrap_or_default()
            .to_string();
        if !ns.is_empty()
            && !defined.contains(&("Namespace".into(), String::new(), ns.clone()))
            && ns != "kube-system"
            && ns != "default"
        {
            errors.push(format!("{at}: namespace {ns} is not defined"));
        }
        if let Some(spec) = pod_spec(v) {
            if let Some(sa) = spec["serviceAccountName"].as_str() {
                if !defined.contains(&("ServiceAccount".into(), ns.clone(), sa.to_string())) {
                    errors.push(format!(
                        "{at}: serviceAccountName {sa} is not defined in {ns}"
                    ));
                }
            }
            for key in ["containers", "initContainers"] {
                for c in spec[key].as_array().into_iter().flatten() {
                    for e in c["env"].as_array().into_iter().flatten() {
                        if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                            let name = r["name"].as_str().unwrap_or_default().to_string();
                            let k = r["key"].as_str().unwrap_or_default();
                            match configmaps.get(&(ns.clone(), name.clone())) {
                                Some(data) if data.get(k).is_some() => {}
                                _ => errors.push(format!(
                                    "{at}: env {} reads {name}/{k}, which is not defined",
                                    e["name"]
                                )),
                            }
                        }
                    }
                }
            }
            for vol in spec["volumes"].as_array().into_iter().flatten() {
                if let Some(cm) = vol["configMap"]["name"].as_str() {
                    if !configmaps.contains_key(&(ns.clone(), cm.to_string())) {
                        errors.push(format!(
                            "{at}: volume uses ConfigMap {cm}, which is not defined"
                        ));
                    }
                }
            }
        }
        for (kind_key, subjects) in [
            ("RoleBinding", "subjects"),
            ("ClusterRoleBinding", "subjects"),
        ] {
            if s(v, &["kind"]) == Some(kind_key) {
                for sub in v[subjects].as_array().into_iter().flatten() {
                    if sub["kind"] == "ServiceAccount" {
                        let key = (
                            "ServiceAccount".to_string(),
                            sub["namespace"].as_str().unwrap_or(&ns).to_string(),
                            sub["name"].as_str().unwrap_or_default().to_string(),
                        );
                        if !defined.contains(&key) {
                            errors.push(format!(
                                "{at}: binds undefined ServiceAccount {}/{}",
                                key.1, key.2
                            ));
                        }
                    }
                }
                let role_kind = v["roleRef"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let role_ns = if role_kind == "ClusterRole" {
                    String::new()
                } else {
                    ns.clone()
                };
                let role = v["roleRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if !defined.contains(&(role_kind.clone(), role_ns, role.clone()))
                    && !role.starts_with("system:")
                {
                    errors.push(format!("{at}: roleRef {role_kind} {role} is not defined"));
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "unresolved references:\n{}",
        errors.join("\n")
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = root().join("deploy/kubernetes");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization.yaml");
    let v: Value = serde_yaml_ng::from_str(&text).expect("kustomization parses");
    let listed: BTreeSet<String> = v["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(String::from))
        .collect();
    for f in &listed {
        assert!(
            dir.join(f).exists(),
            "kustomization lists {f}, which does not exist"
        );
    }
    for e in std::fs::read_dir(&dir).expect("dir").flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.ends_with(".yaml") && n != "kustomization.yaml" {
            assert!(listed.contains(&n), "{n} is not in kustomization.yaml");
        }
    }
}

#[test]
fn every_shipped_cni_configuration_is_valid() {
    let mut confs: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(root().join("deploy/cni"))
        .expect("deploy/cni")
        .flatten()
    {
        confs.push((
            e.path().display().to_string(),
            std::fs::read_to_string(e.path()).expect("read"),
        ));
    }
    for (at, v) in manifests() {
        if v["kind"] == "ConfigMap" {
            for (k, val) in v["data"].as_object().into_iter().flatten() {
                if k.ends_with(".conflist") {
                    confs.push((
                        format!("{at} {k}"),
                        val.as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
    }
    assert!(
        confs.len() >= 3,
        "expected the example conflists and the DaemonSet's"
    );
    for (at, text) in confs {
        let list =
            cni_core::ConfList::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{at}: {e}"));
        for (i, p) in list.plugins.iter().enumerate() {
            let t = p["type"].as_str().unwrap_or_default();
            assert!(
                t.starts_with("berth-"),
                "{at}: plugin {i} is {t:?}, not one of ours"
            );
            let one = list.plugin_config(i, None).expect("plugin config");
            cni_core::NetConf::parse(&one).unwrap_or_else(|e| panic!("{at}: plugin {i}: {e}"));
        }
    }
}

#[test]
fn the_nfs_example_is_accepted_by_the_driver() {
    let text = std::fs::read_to_string(root().join("deploy/examples/nfs.yaml"))
        .expect("deploy/examples/nfs.yaml");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|de| Value::deserialize(de).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect();
    let sc = docs
        .iter()
        .find(|d| d["kind"] == "StorageClass")
        .expect("a StorageClass");
    assert_eq!(sc["provisioner"], "csi.berth.dev");
    let mut params: std::collections::HashMap<String, String> = sc["parameters"]
        .as_object()
        .expect("parameters")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string parameter").to_string()))
        .collect();
    // What the provisioner adds with --extra-create-metadata.
    params.insert("csi.storage.k8s.io/pvc/name".into(), "shared-data".into());
    params.insert("csi.storage.k8s.io/pvc/namespace".into(), "default".into());
    let p = csi_driver::nfs::params::parse("parameters", &params, "pvc-0")
        .expect("parameters the driver accepts");
    assert_eq!(p.subdir, "default/shared-data");
    for (i, o) in sc["mountOptions"]
        .as_array()
        .expect("mountOptions")
        .iter()
        .enumerate()
    {
        csi_driver::nfs::params::check_mount_option(
            &format!("mountOptions[{i}]"),
            o.as_str().unwrap_or_default(),
        )
        .expect("a mount option the driver accepts");
    }
    let pvc = docs
        .iter()
        .find(|d| d["kind"] == "PersistentVolumeClaim")
        .expect("a claim");
    assert_eq!(pvc["spec"]["storageClassName"], sc["metadata"]["name"]);
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteMany");
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let vols = &dep["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        vols[0]["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
}
