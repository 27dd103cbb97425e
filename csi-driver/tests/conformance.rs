//! Conformance suite: each behaviour csi-sanity (csi-test v5.3.1) checks,
//! driven over the real socket of the real `berth-csi` binary. Needs root
//! (loop devices, mounts); skips itself otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::HashMap;

use common::*;
use proto::v1::controller_service_capability::{rpc, Type as CType};
use proto::v1::node_service_capability::{rpc as nrpc, Type as NType};
use proto::v1::plugin_capability::{service, volume_expansion, Type as PType};
use proto::v1::volume_capability::access_mode::Mode;
use proto::v1::volume_content_source::{SnapshotSource, Type as Src, VolumeSource};
use proto::v1::*;
use tonic::Code;

const TOPO_KEY: &str = "topology.csi.berth.dev/node";

#[tokio::test]
async fn identity_info_capabilities_and_probe() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let info = h
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.berth.dev");
    assert!(!info.vendor_version.is_empty());
    let caps = h
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut services = Vec::new();
    let mut expansion = Vec::new();
    for c in caps.capabilities {
        match c.r#type.unwrap() {
            PType::Service(s) => services.push(s.r#type),
            PType::VolumeExpansion(e) => expansion.push(e.r#type),
        }
    }
    services.sort();
    assert_eq!(
        services,
        vec![
            service::Type::ControllerService as i32,
            service::Type::VolumeAccessibilityConstraints as i32
        ]
    );
    assert_eq!(expansion, vec![volume_expansion::Type::Online as i32]);
    let probe = h
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    // An unusable pool makes Probe report not ready.
    let vols = h.pool.join("volumes");
    std::fs::rename(&vols, h.pool.join("moved")).unwrap();
    let probe = h
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
    std::fs::rename(h.pool.join("moved"), &vols).unwrap();
    let probe = h
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
async fn node_mode_serves_no_controller() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start_with(&["--mode", "node"]).await;
    let caps = h
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!caps
        .capabilities
        .iter()
        .any(|c| matches!(&c.r#type, Some(PType::Service(s)) if s.r#type == service::Type::ControllerService as i32)));
    let r = h
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await;
    assert_eq!(code(r), Code::Unimplemented);
    h.node.node_get_info(NodeGetInfoRequest {}).await.unwrap();
}

#[tokio::test]
async fn controller_and_node_capabilities_are_known_ones() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let caps = h
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let got: Vec<i32> = caps
        .capabilities
        .iter()
        .map(|c| match c.r#type.as_ref().unwrap() {
            CType::Rpc(r) => r.r#type,
        })
        .collect();
    // Nothing unimplemented is advertised.
    for t in &got {
        let t = rpc::Type::try_from(*t).unwrap();
        assert!(
            !matches!(t, rpc::Type::Unknown | rpc::Type::ModifyVolume),
            "{t:?}"
        );
    }
    for want in [
        rpc::Type::CreateDeleteVolume,
        rpc::Type::PublishUnpublishVolume,
        rpc::Type::ListVolumes,
        rpc::Type::GetCapacity,
        rpc::Type::CreateDeleteSnapshot,
        rpc::Type::ListSnapshots,
        rpc::Type::CloneVolume,
        rpc::Type::ExpandVolume,
        rpc::Type::GetVolume,
        rpc::Type::SingleNodeMultiWriter,
        rpc::Type::GetSnapshot,
    ] {
        assert!(got.contains(&(want as i32)), "missing {want:?}");
    }
    let ncaps = h
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ngot: Vec<i32> = ncaps
        .capabilities
        .iter()
        .map(|c| match c.r#type.as_ref().unwrap() {
            NType::Rpc(r) => r.r#type,
        })
        .collect();
    for want in [
        nrpc::Type::StageUnstageVolume,
        nrpc::Type::GetVolumeStats,
        nrpc::Type::ExpandVolume,
        nrpc::Type::SingleNodeMultiWriter,
    ] {
        assert!(ngot.contains(&(want as i32)), "missing {want:?}");
    }
    let info = h.node_info().await;
    assert_eq!(info.node_id, h.node_id);
    assert_eq!(
        info.accessible_topology.unwrap().segments.get(TOPO_KEY),
        Some(&h.node_id)
    );
}

#[tokio::test]
async fn create_volume_arguments_idempotency_and_conflicts() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let c = &mut h.controller;
    // Missing name / capabilities.
    expect_err(
        c.create_volume(create_req("", 16 * MIB, mount_cap("")))
            .await,
        Code::InvalidArgument,
        "name",
    );
    let mut r = create_req("no-caps", 16 * MIB, mount_cap(""));
    r.volume_capabilities.clear();
    expect_err(
        c.create_volume(r).await,
        Code::InvalidArgument,
        "volume_capabilities",
    );
    // Multi-node modes are not possible on a local disk.
    expect_err(
        c.create_volume(create_req(
            "multi",
            16 * MIB,
            mount_cap_mode("", Mode::MultiNodeMultiWriter),
        ))
        .await,
        Code::InvalidArgument,
        "volume_capabilities[0].access_mode.mode",
    );
    // No capacity: the default size; the same call again returns the same volume.
    let mut r = create_req("no-capacity", 0, mount_cap(""));
    r.capacity_range = None;
    let v1 = c
        .create_volume(r.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v1.capacity_bytes, 1 << 30);
    let v1b = c
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v1.volume_id, v1b.volume_id);
    // Same name, same capacity: same volume; different capacity: ALREADY_EXISTS.
    let a = c
        .create_volume(create_req("sized", 16 * MIB, mount_cap("")))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(a.capacity_bytes, 16 * MIB);
    assert_eq!(
        a.accessible_topology[0].segments.get(TOPO_KEY),
        Some(&h.node_id)
    );
    let b = c
        .create_volume(create_req("sized", 16 * MIB, mount_cap("")))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(a.volume_id, b.volume_id);
    expect_err(
        c.create_volume(create_req("sized", 32 * MIB, mount_cap("")))
            .await,
        Code::AlreadyExists,
        "sized",
    );
    // Maximum-length name (128 bytes) works.
    let long = "n".repeat(128);
    c.create_volume(create_req(&long, 16 * MIB, mount_cap("")))
        .await
        .unwrap();
    expect_err(
        c.create_volume(create_req(&"n".repeat(129), 16 * MIB, mount_cap("")))
            .await,
        Code::InvalidArgument,
        "name",
    );
}

#[tokio::test]
async fn create_volume_capacity_rules_and_topology() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let node = h.node_id.clone();
    let c = &mut h.controller;
    // Exact size when required == limit.
    let mut r = create_req("exact", 20 * MIB, mount_cap("ext4"));
    r.capacity_range = Some(CapacityRange {
        required_bytes: 20 * MIB,
        limit_bytes: 20 * MIB,
    });
    assert_eq!(
        c.create_volume(r)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .capacity_bytes,
        20 * MIB
    );
    // xfs needs 300 MiB: a small request grows when the limit allows, OUT_OF_RANGE when not.
    let v = c
        .create_volume(create_req("xfs-small", 16 * MIB, mount_cap("xfs")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.volume.unwrap().capacity_bytes, 300 * MIB);
    let mut r = create_req("xfs-limited", 16 * MIB, mount_cap("xfs"));
    r.capacity_range = Some(CapacityRange {
        required_bytes: 16 * MIB,
        limit_bytes: 32 * MIB,
    });
    expect_err(c.create_volume(r).await, Code::OutOfRange, "limit_bytes");
    // More than the pool holds.
    expect_err(
        c.create_volume(create_req("huge", 1 << 60, mount_cap("")))
            .await,
        Code::ResourceExhausted,
        "pool",
    );
    // Topology: another node only -> RESOURCE_EXHAUSTED; this node -> fine.
    let topo = |n: &str| Topology {
        segments: [(TOPO_KEY.to_string(), n.to_string())].into(),
    };
    let mut r = create_req("elsewhere", 16 * MIB, mount_cap(""));
    r.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topo("other")],
        preferred: vec![],
    });
    expect_err(
        c.create_volume(r).await,
        Code::ResourceExhausted,
        "accessibility_requirements",
    );
    let mut r = create_req("here", 16 * MIB, mount_cap(""));
    r.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![topo("other"), topo(&node)],
        preferred: vec![topo(&node)],
    });
    let v = c
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.accessible_topology, vec![topo(&node)]);
    // GetCapacity: pool space here, nothing for another node's segment.
    let cap = c
        .get_capacity(GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
    let cap = c
        .get_capacity(GetCapacityRequest {
            accessible_topology: Some(topo("other")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.available_capacity, 0);
    // Parameters CreateVolume refuses still get the pool's space: a 0 would read as "full" to
    // external-provisioner and the scheduler, and CreateVolume's error would never be seen.
    let cap = c
        .get_capacity(GetCapacityRequest {
            parameters: [("colour".to_string(), "blue".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0);
}

#[tokio::test]
async fn delete_volume_rules() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    expect_err(
        h.delete("").await.map(tonic::Response::new),
        Code::InvalidArgument,
        "volume_id",
    );
    h.delete("reallyfakevolumeid").await.unwrap();
    h.delete(&format!("local:{}:0123456789abcdef01234567", h.node_id))
        .await
        .unwrap();
    let v = h.create("to-delete", 16 * MIB, mount_cap("")).await;
    h.delete(&v.volume_id).await.unwrap();
    h.delete(&v.volume_id).await.unwrap();
    let list = h
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list
        .entries
        .iter()
        .all(|e| e.volume.as_ref().unwrap().volume_id != v.volume_id));
    assert_eq!(
        std::fs::read_dir(h.pool.join("volumes")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn controller_publish_unpublish() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start_with(&["--max-volumes-per-node", "2"]).await;
    let node = h.node_id.clone();
    let v = h.create("pub", 16 * MIB, mount_cap("")).await;
    let req = |vol: &str, node: &str, ro: bool| ControllerPublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        volume_capability: Some(mount_cap("")),
        readonly: ro,
        ..Default::default()
    };
    let c = &mut h.controller;
    expect_err(
        c.controller_publish_volume(req("", &node, false)).await,
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        c.controller_publish_volume(req(&v.volume_id, "", false))
            .await,
        Code::InvalidArgument,
        "node_id",
    );
    let mut r = req(&v.volume_id, &node, false);
    r.volume_capability = None;
    expect_err(
        c.controller_publish_volume(r).await,
        Code::InvalidArgument,
        "volume_capability",
    );
    expect_err(
        c.controller_publish_volume(req("some-vol-id", &node, false))
            .await,
        Code::NotFound,
        "some-vol-id",
    );
    expect_err(
        c.controller_publish_volume(req(&v.volume_id, "some-fake-node-id", false))
            .await,
        Code::NotFound,
        "node",
    );
    let ctx = c
        .controller_publish_volume(req(&v.volume_id, &node, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ctx.publish_context.get("readonly").map(String::as_str),
        Some("false")
    );
    // Idempotent; different readonly -> ALREADY_EXISTS; another node -> FAILED_PRECONDITION.
    c.controller_publish_volume(req(&v.volume_id, &node, false))
        .await
        .unwrap();
    expect_err(
        c.controller_publish_volume(req(&v.volume_id, &node, true))
            .await,
        Code::AlreadyExists,
        "readonly",
    );
    expect_err(
        c.controller_publish_volume(req(&v.volume_id, "foobar", false))
            .await,
        Code::FailedPrecondition,
        &node,
    );
    // Published nodes are reported.
    let got = c
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status.unwrap().published_node_ids, vec![node.clone()]);
    // Attach limit of 2.
    let v2 = h.create("pub2", 16 * MIB, mount_cap("")).await;
    let v3 = h.create("pub3", 16 * MIB, mount_cap("")).await;
    let c = &mut h.controller;
    c.controller_publish_volume(req(&v2.volume_id, &node, false))
        .await
        .unwrap();
    expect_err(
        c.controller_publish_volume(req(&v3.volume_id, &node, false))
            .await,
        Code::ResourceExhausted,
        "2",
    );
    assert_eq!(h.node_info().await.max_volumes_per_node, 2);
    // Unpublish: required id, unknown ids fine, idempotent.
    let c = &mut h.controller;
    let un = |vol: &str, node: &str| ControllerUnpublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        ..Default::default()
    };
    expect_err(
        c.controller_unpublish_volume(un("", &node)).await,
        Code::InvalidArgument,
        "volume_id",
    );
    c.controller_unpublish_volume(un("some-vol-id", &node))
        .await
        .unwrap();
    c.controller_unpublish_volume(un(&v.volume_id, &node))
        .await
        .unwrap();
    c.controller_unpublish_volume(un(&v.volume_id, &node))
        .await
        .unwrap();
    c.controller_publish_volume(req(&v3.volume_id, &node, false))
        .await
        .unwrap();

    // A volume of another node (a cluster-wide attacher/resizer asks any
    // instance): the answer depends only on the id.
    let foreign = "local:other-node:0123456789abcdef01234567";
    c.controller_publish_volume(req(foreign, "other-node", false))
        .await
        .unwrap();
    expect_err(
        c.controller_publish_volume(req(foreign, &node, false))
            .await,
        Code::FailedPrecondition,
        "other-node",
    );
    let r = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: foreign.into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.capacity_bytes, r.node_expansion_required),
        (64 * MIB, true)
    );
}

#[tokio::test]
async fn validate_volume_capabilities() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("validate", 16 * MIB, mount_cap("")).await;
    let req = |vol: &str, caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: vol.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let c = &mut h.controller;
    expect_err(
        c.validate_volume_capabilities(req("", vec![mount_cap("")]))
            .await,
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        c.validate_volume_capabilities(req(&v.volume_id, vec![]))
            .await,
        Code::InvalidArgument,
        "volume_capabilities",
    );
    expect_err(
        c.validate_volume_capabilities(req("some-vol-id", vec![mount_cap("")]))
            .await,
        Code::NotFound,
        "some-vol-id",
    );
    let ok = c
        .validate_volume_capabilities(req(&v.volume_id, vec![mount_cap("")]))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = c
        .validate_volume_capabilities(req(
            &v.volume_id,
            vec![mount_cap_mode("", Mode::MultiNodeMultiWriter)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none());
    assert!(
        no.message.contains("MULTI_NODE_MULTI_WRITER"),
        "{}",
        no.message
    );
    let no = c
        .validate_volume_capabilities(req(&v.volume_id, vec![block_cap()]))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none());
}

#[tokio::test]
async fn list_volumes_pagination() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let c = &mut h.controller;
    for tok in ["invalid-token", "7", "t-1"] {
        let r = c
            .list_volumes(ListVolumesRequest {
                starting_token: tok.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(r), Code::Aborted, "{tok}");
    }
    expect_err(
        c.list_volumes(ListVolumesRequest {
            max_entries: -1,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "max_entries",
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            h.create(&format!("sanity{i}"), 16 * MIB, mount_cap(""))
                .await
                .volume_id,
        );
    }
    let c = &mut h.controller;
    let page = c
        .list_volumes(ListVolumesRequest {
            max_entries: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 2);
    assert!(!page.next_token.is_empty());
    // Delete the last volume of the first page and add a new one: the token still works.
    let last = page.entries[1].volume.as_ref().unwrap().volume_id.clone();
    h.delete(&last).await.unwrap();
    let added = h
        .create("new-addition", 16 * MIB, mount_cap(""))
        .await
        .volume_id;
    let rest = h
        .controller
        .list_volumes(ListVolumesRequest {
            starting_token: page.next_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rest_ids: Vec<String> = rest
        .entries
        .iter()
        .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
        .collect();
    assert_eq!(rest_ids, vec![ids[2].clone(), added.clone()]);
    assert!(rest.next_token.is_empty());
    let all = h
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 3);
}

#[tokio::test]
async fn snapshots_create_list_delete_restore() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("snap-src", 16 * MIB, mount_cap("")).await;
    let other = h.create("snap-other", 16 * MIB, mount_cap("")).await;
    let snap = |name: &str, src: &str| CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: src.into(),
        ..Default::default()
    };
    let c = &mut h.controller;
    expect_err(
        c.create_snapshot(snap("", &v.volume_id)).await,
        Code::InvalidArgument,
        "name",
    );
    expect_err(
        c.create_snapshot(snap("s", "")).await,
        Code::InvalidArgument,
        "source_volume_id",
    );
    expect_err(
        c.create_snapshot(snap("s", "some-vol-id")).await,
        Code::NotFound,
        "some-vol-id",
    );
    let s1 = c
        .create_snapshot(snap("s1", &v.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(s1.ready_to_use && s1.creation_time.is_some());
    assert_eq!(s1.size_bytes, 16 * MIB);
    assert_eq!(s1.source_volume_id, v.volume_id);
    let again = c
        .create_snapshot(snap("s1", &v.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, s1.snapshot_id);
    expect_err(
        c.create_snapshot(snap("s1", &other.volume_id)).await,
        Code::AlreadyExists,
        "s1",
    );
    c.create_snapshot(snap(&"x".repeat(128), &v.volume_id))
        .await
        .unwrap();
    let s3 = c
        .create_snapshot(snap("s3", &other.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();

    // GetSnapshot: by id; a missing or empty id is an error.
    let get = |id: &str| GetSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    let got = c.get_snapshot(get(&s1.snapshot_id)).await.unwrap();
    assert_eq!(got.into_inner().snapshot.as_ref(), Some(&s1));
    for (id, want, needle) in [
        ("", Code::InvalidArgument, "snapshot_id"),
        ("none-exist-id", Code::NotFound, "none-exist-id"),
    ] {
        expect_err(c.get_snapshot(get(id)).await, want, needle);
    }

    // List: all, by id, by source, unknown filters -> empty, pagination, bad tokens.
    let list = |snap: &str, src: &str, max: i32, tok: &str| ListSnapshotsRequest {
        snapshot_id: snap.into(),
        source_volume_id: src.into(),
        max_entries: max,
        starting_token: tok.into(),
        ..Default::default()
    };
    assert_eq!(
        c.list_snapshots(list("", "", 0, ""))
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        3
    );
    let by_id = c
        .list_snapshots(list(&s1.snapshot_id, "", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    assert_eq!(
        by_id.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        s1.snapshot_id
    );
    let by_src = c
        .list_snapshots(list("", &other.volume_id, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_src.entries.len(), 1);
    assert_eq!(
        by_src.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        s3.snapshot_id
    );
    assert!(c
        .list_snapshots(list("none-exist-id", "", 0, ""))
        .await
        .unwrap()
        .into_inner()
        .entries
        .is_empty());
    assert!(c
        .list_snapshots(list("", "none-exist-volume", 0, ""))
        .await
        .unwrap()
        .into_inner()
        .entries
        .is_empty());
    let p1 = c
        .list_snapshots(list("", "", 2, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.entries.len(), 2);
    let p2 = c
        .list_snapshots(list("", "", 2, &p1.next_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.entries.len(), 1);
    assert!(p2.next_token.is_empty());
    assert_eq!(
        code(c.list_snapshots(list("", "", 0, "invalid-token")).await),
        Code::Aborted
    );
    assert_eq!(
        code(c.list_snapshots(list("", "", 0, "8")).await),
        Code::Aborted
    );

    // Restore: unknown snapshot -> NOT_FOUND; known -> a volume with the snapshot as source.
    let mut r = create_req("from-snap", 16 * MIB, mount_cap(""));
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Snapshot(SnapshotSource {
            snapshot_id: "some-snap-id".into(),
        })),
    });
    expect_err(
        c.create_volume(r.clone()).await,
        Code::NotFound,
        "some-snap-id",
    );
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Snapshot(SnapshotSource {
            snapshot_id: s1.snapshot_id.clone(),
        })),
    });
    let restored = c
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        restored.content_source.unwrap().r#type,
        Some(Src::Snapshot(SnapshotSource {
            snapshot_id: s1.snapshot_id.clone()
        }))
    );
    // A restore smaller than the snapshot is OUT_OF_RANGE.
    let mut small = create_req("from-snap-small", 8 * MIB, mount_cap(""));
    small.capacity_range = Some(CapacityRange {
        required_bytes: 8 * MIB,
        limit_bytes: 8 * MIB,
    });
    small.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Snapshot(SnapshotSource {
            snapshot_id: s1.snapshot_id.clone(),
        })),
    });
    assert_eq!(code(c.create_volume(small).await), Code::OutOfRange);

    // Delete: required id, unknown fine, gone from the list.
    expect_err(
        c.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: "".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "snapshot_id",
    );
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: "reallyfakesnapshotid".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: s1.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(c
        .list_snapshots(list(&s1.snapshot_id, "", 0, ""))
        .await
        .unwrap()
        .into_inner()
        .entries
        .is_empty());
    // The snapshot is independent of its source volume.
    h.delete(&other.volume_id).await.unwrap();
    let c = &mut h.controller;
    assert_eq!(
        c.list_snapshots(list(&s3.snapshot_id, "", 0, ""))
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        1
    );
}

#[tokio::test]
async fn clone_volume() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("clone-src", 16 * MIB, mount_cap("")).await;
    let mut r = create_req("clone", 32 * MIB, mount_cap(""));
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Volume(VolumeSource {
            volume_id: "some-vol-id".into(),
        })),
    });
    expect_err(
        h.controller.create_volume(r.clone()).await,
        Code::NotFound,
        "some-vol-id",
    );
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Volume(VolumeSource {
            volume_id: v.volume_id.clone(),
        })),
    });
    let c = h
        .controller
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(c.capacity_bytes, 32 * MIB);
    assert_ne!(c.volume_id, v.volume_id);
}

#[tokio::test]
async fn controller_expand_and_get_volume() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("expand", 16 * MIB, mount_cap("")).await;
    let req = |vol: &str, range: Option<CapacityRange>| ControllerExpandVolumeRequest {
        volume_id: vol.into(),
        capacity_range: range,
        ..Default::default()
    };
    let range = |q: i64| {
        Some(CapacityRange {
            required_bytes: q,
            limit_bytes: 0,
        })
    };
    let c = &mut h.controller;
    expect_err(
        c.controller_expand_volume(req("", range(MIB))).await,
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        c.controller_expand_volume(req(&v.volume_id, None)).await,
        Code::InvalidArgument,
        "capacity_range",
    );
    expect_err(
        c.controller_expand_volume(req("some-vol-id", range(32 * MIB)))
            .await,
        Code::NotFound,
        "some-vol-id",
    );
    let r = c
        .controller_expand_volume(req(&v.volume_id, range(40 * MIB)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 40 * MIB);
    assert!(r.node_expansion_required);
    // Asking for less never shrinks.
    let r = c
        .controller_expand_volume(req(&v.volume_id, range(20 * MIB)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 40 * MIB);
    let image = std::fs::read_dir(h.pool.join("volumes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::metadata(image).unwrap().len(), 40 * MIB as u64);
    let c = &mut h.controller;
    expect_err(
        c.controller_get_volume(ControllerGetVolumeRequest {
            volume_id: "".into(),
        })
        .await,
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        c.controller_get_volume(ControllerGetVolumeRequest {
            volume_id: "some-vol-id".into(),
        })
        .await,
        Code::NotFound,
        "some-vol-id",
    );
    let g = c
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.volume.unwrap().capacity_bytes, 40 * MIB);
    assert!(!g.status.unwrap().volume_condition.unwrap().abnormal);
}

#[tokio::test]
async fn node_lifecycle_is_idempotent_and_checks_arguments() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("node-life", 32 * MIB, mount_cap("")).await;
    let id = v.volume_id.clone();
    let staging = h.path_s("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let target = h.path_s("mnt/target");
    std::fs::create_dir_all(h.path("mnt")).unwrap();

    // Required arguments.
    expect_err(
        h.stage("", &staging, mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        h.stage(&id, "", mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "staging_target_path",
    );
    let r = h
        .node
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::InvalidArgument, "volume_capability");
    expect_err(
        h.stage("some-vol-id", &staging, mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        "some-vol-id",
    );
    expect_err(
        h.publish("", &staging, &target, mount_cap(""), false)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        h.publish(&id, &staging, "", mount_cap(""), false)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "target_path",
    );
    expect_err(
        h.publish(&id, "", &target, mount_cap(""), false)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "staging_target_path",
    );
    let r = h
        .node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            ..Default::default()
        })
        .await;
    expect_err(r, Code::InvalidArgument, "volume_capability");
    expect_err(
        h.unpublish("", &target).await.map(tonic::Response::new),
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        h.unpublish(&id, "").await.map(tonic::Response::new),
        Code::InvalidArgument,
        "target_path",
    );
    expect_err(
        h.unstage("", &staging).await.map(tonic::Response::new),
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        h.unstage(&id, "").await.map(tonic::Response::new),
        Code::InvalidArgument,
        "staging_target_path",
    );
    // Publishing before staging is a FAILED_PRECONDITION.
    expect_err(
        h.publish(&id, &staging, &target, mount_cap(""), false)
            .await
            .map(tonic::Response::new),
        Code::FailedPrecondition,
        "staged",
    );

    // Stage twice, publish twice (same arguments): both succeed.
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    // Staging the same volume elsewhere conflicts.
    expect_err(
        h.stage(&id, &h.path_s("staging2"), mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::AlreadyExists,
        "staged",
    );
    h.publish(&id, &staging, &target, mount_cap(""), false)
        .await
        .unwrap();
    h.publish(&id, &staging, &target, mount_cap(""), false)
        .await
        .unwrap();
    expect_err(
        h.publish(&id, &staging, &target, mount_cap(""), true)
            .await
            .map(tonic::Response::new),
        Code::AlreadyExists,
        "target_path",
    );
    assert!(mount::is_mounted(std::path::Path::new(&target)));

    // Stats: bytes and inodes; missing / unknown arguments.
    let stats = |vol: &str, path: &str| NodeGetVolumeStatsRequest {
        volume_id: vol.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    let s = h
        .node
        .node_get_volume_stats(stats(&id, &target))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.usage.len(), 2);
    assert!(s.usage[0].total > 0 && s.usage[0].total <= 32 * MIB);
    assert!(s.usage[1].total > 0);
    assert!(!s.volume_condition.unwrap().abnormal);
    expect_err(
        h.node.node_get_volume_stats(stats("", &target)).await,
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        h.node.node_get_volume_stats(stats(&id, "")).await,
        Code::InvalidArgument,
        "volume_path",
    );
    expect_err(
        h.node
            .node_get_volume_stats(stats("id", "/some/path"))
            .await,
        Code::NotFound,
        "id",
    );
    expect_err(
        h.node.node_get_volume_stats(stats(&id, "some/path")).await,
        Code::NotFound,
        "some/path",
    );
    expect_err(
        h.node
            .node_get_volume_stats(stats(&id, "/path/does/not/exist"))
            .await,
        Code::NotFound,
        "not",
    );

    // Unstaging while published is refused; then tear down twice each.
    expect_err(
        h.unstage(&id, &staging).await.map(tonic::Response::new),
        Code::FailedPrecondition,
        "published",
    );
    expect_err(
        h.delete(&id).await.map(tonic::Response::new),
        Code::FailedPrecondition,
        "staged",
    );
    h.unpublish(&id, &target).await.unwrap();
    assert!(
        !std::path::Path::new(&target).exists(),
        "NodeUnpublishVolume removes the target"
    );
    h.unpublish(&id, &target).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
    assert!(!mount::is_mounted(std::path::Path::new(&staging)));
    let image = h.pool.join("volumes");
    assert!(
        loopdev::all_attached()
            .iter()
            .all(|(_, b)| !b.starts_with(&image)),
        "loop device released"
    );
    h.delete(&id).await.unwrap();
}

use csi_driver::backend::local::loopdev;
use csi_driver::mount;

#[tokio::test]
async fn node_expand_grows_xfs_online() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("grow-xfs", 300 * MIB, mount_cap("xfs")).await;
    let id = v.volume_id.clone();
    let staging = h.path_s("staging");
    let target = h.path_s("target");
    h.stage(&id, &staging, mount_cap("xfs")).await.unwrap();
    h.publish(&id, &staging, &target, mount_cap("xfs"), false)
        .await
        .unwrap();
    let before = mount::usage(std::path::Path::new(&target)).unwrap().0 .0;
    let exp = |vol: &str, path: &str, q: i64| NodeExpandVolumeRequest {
        volume_id: vol.into(),
        volume_path: path.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: q,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    expect_err(
        h.node.node_expand_volume(exp("", &target, 400 * MIB)).await,
        Code::InvalidArgument,
        "volume_id",
    );
    expect_err(
        h.node.node_expand_volume(exp(&id, "", 400 * MIB)).await,
        Code::InvalidArgument,
        "volume_path",
    );
    expect_err(
        h.node
            .node_expand_volume(exp("id", &target, 400 * MIB))
            .await,
        Code::NotFound,
        "id",
    );
    // Like csi-sanity: NodeExpandVolume straight after publish, no controller call.
    let r = h
        .node
        .node_expand_volume(exp(&id, &target, 400 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 400 * MIB);
    let after = mount::usage(std::path::Path::new(&target)).unwrap().0 .0;
    assert!(
        after > before + 90 * MIB as u64,
        "filesystem grew: {before} -> {after}"
    );
    h.unpublish(&id, &target).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
}

#[tokio::test]
async fn ext4_grows_offline_when_the_kernel_refuses_online() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("grow-ext4", 32 * MIB, mount_cap("ext4")).await;
    let id = v.volume_id.clone();
    let staging = h.path_s("staging");
    let target = h.path_s("target");
    h.stage(&id, &staging, mount_cap("ext4")).await.unwrap();
    h.publish(&id, &staging, &target, mount_cap("ext4"), false)
        .await
        .unwrap();
    let r = h
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: 64 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await;
    match r {
        // Hosts with CAP_SYS_RESOURCE grow ext4 online.
        Ok(r) => assert_eq!(r.into_inner().capacity_bytes, 64 * MIB),
        Err(s) => {
            assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
            assert!(s.message().contains("CAP_SYS_RESOURCE"), "{}", s.message());
        }
    }
    // After unstage + stage the filesystem has the new size either way.
    h.unpublish(&id, &target).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
    h.stage(&id, &staging, mount_cap("ext4")).await.unwrap();
    let total = mount::usage(std::path::Path::new(&staging)).unwrap().0 .0;
    assert!(total > 48 * MIB as u64, "ext4 grew to {total}");
    h.unstage(&id, &staging).await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_on_one_volume_are_aborted() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("busy", 512 * MIB, mount_cap("xfs")).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut node = h.node.clone();
        let req = NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: h.path_s(&format!("staging{i}")),
            volume_capability: Some(mount_cap("xfs")),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            node.node_stage_volume(req).await.map(|_| ())
        }));
    }
    let mut ok = 0;
    let mut aborted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(s) if s.code() == Code::Aborted => aborted += 1,
            Err(s) => assert_eq!(s.code(), Code::AlreadyExists, "{}", s.message()),
        }
    }
    assert_eq!(ok, 1, "exactly one stage wins");
    assert!(aborted >= 1, "a concurrent call gets ABORTED");
}

#[tokio::test]
async fn stale_socket_is_replaced_and_sigterm_is_clean() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    assert_eq!(h.stop(), Some(0), "clean exit on SIGTERM\n{}", h.log());
    assert!(!h.socket.exists(), "socket removed on shutdown");
    // Leave a dead socket behind: the next start removes it.
    let l = std::os::unix::net::UnixListener::bind(&h.socket).unwrap();
    drop(l);
    assert!(h.socket.exists());
    h.restart().await;
    h.identity.probe(ProbeRequest {}).await.unwrap();
}

#[tokio::test]
async fn secrets_and_parameters_are_checked_but_not_logged() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let mut r = create_req("secret", 16 * MIB, mount_cap(""));
    r.secrets = HashMap::from([("password".to_string(), "hunter2-s3cr3t".to_string())]);
    r.parameters = HashMap::from([("backend".to_string(), "local".to_string())]);
    h.controller.create_volume(r).await.unwrap();
    assert!(!h.log().contains("hunter2-s3cr3t"));
}

#[tokio::test]
async fn sparse_volumes_need_room_in_the_pool_not_free_space() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let s = nix::sys::statvfs::statvfs(h.dir.as_path()).expect("statvfs");
    let total = s.blocks() as i64 * s.fragment_size() as i64;
    let free = s.blocks_available() as i64 * s.fragment_size() as i64;
    // Larger than what is free, within the filesystem: a sparse image fits.
    let size = ((free + total) / 2 / MIB) * MIB;
    if size <= free {
        eprintln!("skipped: the pool filesystem is almost empty, cannot ask for more than is free");
        return;
    }
    let v = h.create("bigger-than-free", size, mount_cap("")).await;
    assert_eq!(v.capacity_bytes, size);
    h.delete(&v.volume_id).await.expect("delete");
}

#[tokio::test]
async fn single_node_single_writer_allows_one_target() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let staging = h.path_s("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for (mode, second) in [
        (Mode::SingleNodeSingleWriter, Some(Code::FailedPrecondition)),
        (Mode::SingleNodeMultiWriter, None),
    ] {
        let cap = mount_cap_mode("", mode);
        let v = h
            .create(&format!("snsw-{}", mode as i32), 16 * MIB, cap.clone())
            .await;
        let id = v.volume_id.clone();
        h.stage(&id, &staging, cap.clone()).await.unwrap();
        let (t1, t2) = (h.path_s("t1"), h.path_s("t2"));
        h.publish(&id, &staging, &t1, cap.clone(), false)
            .await
            .unwrap();
        h.publish(&id, &staging, &t1, cap.clone(), false)
            .await
            .expect("the same target again is idempotent");
        let r = h.publish(&id, &staging, &t2, cap.clone(), false).await;
        match second {
            Some(want) => assert_eq!(code(r.map(tonic::Response::new)), want, "{mode:?}"),
            None => {
                r.expect("a second target");
                h.unpublish(&id, &t2).await.unwrap();
            }
        }
        h.unpublish(&id, &t1).await.unwrap();
        h.unstage(&id, &staging).await.unwrap();
        h.delete(&id).await.unwrap();
    }
}
