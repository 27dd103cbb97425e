//! Bad input: every malformed request is refused with INVALID_ARGUMENT (or
//! the spec's code) and a message naming the field, before anything on the
//! node is touched. Needs root (starts the driver); skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::HashMap;

use common::*;
use proto::v1::volume_capability::{AccessType, MountVolume};
use proto::v1::*;
use tonic::Code;

#[tokio::test]
async fn path_traversal_in_ids_is_refused_everywhere() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let staging = h.path_s("staging");
    let target = h.path_s("target");
    for bad in ["../../etc/passwd", "local:n:../x", "a/b", "..", ".hidden"] {
        expect_err(
            h.delete(bad).await.map(tonic::Response::new),
            Code::InvalidArgument,
            "volume_id",
        );
        expect_err(
            h.controller
                .controller_get_volume(ControllerGetVolumeRequest {
                    volume_id: bad.into(),
                })
                .await,
            Code::InvalidArgument,
            "volume_id",
        );
        expect_err(
            h.stage(bad, &staging, mount_cap(""))
                .await
                .map(tonic::Response::new),
            Code::InvalidArgument,
            "volume_id",
        );
        expect_err(
            h.publish(bad, &staging, &target, mount_cap(""), false)
                .await
                .map(tonic::Response::new),
            Code::InvalidArgument,
            "volume_id",
        );
        expect_err(
            h.controller
                .create_snapshot(CreateSnapshotRequest {
                    name: "s".into(),
                    source_volume_id: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "source_volume_id",
        );
        expect_err(
            h.controller
                .delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "snapshot_id",
        );
        let mut r = create_req("clone", 16 * MIB, mount_cap(""));
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource {
                    volume_id: bad.into(),
                },
            )),
        });
        expect_err(
            h.controller.create_volume(r).await,
            Code::InvalidArgument,
            "volume_content_source.volume.volume_id",
        );
    }
    // Nothing was created anywhere.
    assert_eq!(
        std::fs::read_dir(h.pool.join("volumes")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn relative_and_escaping_paths_are_refused() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("paths", 16 * MIB, mount_cap("")).await;
    let id = v.volume_id.clone();
    let staging = h.path_s("staging");
    expect_err(
        h.stage(&id, "relative/staging", mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "staging_target_path",
    );
    expect_err(
        h.stage(&id, "/tmp/../etc", mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "staging_target_path",
    );
    let pool_path = h.pool.join("volumes").to_string_lossy().into_owned();
    expect_err(
        h.stage(&id, &pool_path, mount_cap(""))
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "staging_target_path",
    );
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    expect_err(
        h.publish(&id, &staging, "relative/target", mount_cap(""), false)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "target_path",
    );
    let state_path = h.state.join("x").to_string_lossy().into_owned();
    expect_err(
        h.publish(&id, &staging, &state_path, mount_cap(""), false)
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "target_path",
    );
    expect_err(
        h.unpublish(&id, "relative/target")
            .await
            .map(tonic::Response::new),
        Code::InvalidArgument,
        "target_path",
    );
    h.unstage(&id, &staging).await.unwrap();
}

#[tokio::test]
async fn sizes_fs_types_flags_and_parameters() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let c = &mut h.controller;
    // Negative sizes.
    let mut r = create_req("neg", -1, mount_cap(""));
    expect_err(
        c.create_volume(r.clone()).await,
        Code::InvalidArgument,
        "capacity_range.required_bytes",
    );
    r.capacity_range = Some(CapacityRange {
        required_bytes: 0,
        limit_bytes: -5,
    });
    expect_err(
        c.create_volume(r.clone()).await,
        Code::InvalidArgument,
        "capacity_range.limit_bytes",
    );
    r.capacity_range = Some(CapacityRange {
        required_bytes: 32 * MIB,
        limit_bytes: 16 * MIB,
    });
    expect_err(
        c.create_volume(r).await,
        Code::InvalidArgument,
        "capacity_range.limit_bytes",
    );
    // Unknown filesystem and mount flags.
    expect_err(
        c.create_volume(create_req("fs", 16 * MIB, mount_cap("ntfs")))
            .await,
        Code::InvalidArgument,
        "volume_capabilities[0].mount.fs_type",
    );
    let mut cap = mount_cap("");
    cap.access_type = Some(AccessType::Mount(MountVolume {
        mount_flags: vec!["noatime".into(), "bogus-option".into()],
        ..Default::default()
    }));
    expect_err(
        c.create_volume(create_req("flags", 16 * MIB, cap)).await,
        Code::InvalidArgument,
        "volume_capabilities[0].mount.mount_flags[1]",
    );
    // Missing access type / mode.
    let mut cap = mount_cap("");
    cap.access_mode = None;
    expect_err(
        c.create_volume(create_req("mode", 16 * MIB, cap)).await,
        Code::InvalidArgument,
        "access_mode",
    );
    let mut cap = mount_cap("");
    cap.access_type = None;
    expect_err(
        c.create_volume(create_req("type", 16 * MIB, cap)).await,
        Code::InvalidArgument,
        "access_type",
    );
    // Unknown parameters, wrong backend, bad values.
    for (k, v, field) in [
        ("colour", "blue", "parameters[colour]"),
        ("backend", "ceph", "parameters[backend]"),
        ("preallocate", "maybe", "parameters[preallocate]"),
    ] {
        let mut r = create_req("params", 16 * MIB, mount_cap(""));
        r.parameters = HashMap::from([(k.to_string(), v.to_string())]);
        expect_err(c.create_volume(r).await, Code::InvalidArgument, field);
    }
    // Control characters in a name.
    expect_err(
        c.create_volume(create_req("bad\u{1}name", 16 * MIB, mount_cap("")))
            .await,
        Code::InvalidArgument,
        "name",
    );
    // Expansion: zero and negative sizes.
    let v = h.create("exp", 16 * MIB, mount_cap("")).await;
    let c = &mut h.controller;
    for (q, l, field) in [
        (0, 0, "capacity_range.required_bytes"),
        (-1, 0, "capacity_range.required_bytes"),
    ] {
        expect_err(
            c.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: v.volume_id.clone(),
                capacity_range: Some(CapacityRange {
                    required_bytes: q,
                    limit_bytes: l,
                }),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            field,
        );
    }
    // Nothing but that one volume exists.
    assert_eq!(
        std::fs::read_dir(h.pool.join("volumes")).unwrap().count(),
        1
    );
}
