//! The NFS backend's controller against a real NFS server: nfs-ganesha
//! (VFS FSAL) with rpcbind in a test network namespace, and berth-csi in
//! that namespace speaking NFSv3 from user space. What the controller does
//! is checked on the export directory itself, on the host.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::nfs_server::NfsServer;
use common::*;
use proto::v1::volume_capability::access_mode::Mode;
use proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use proto::v1::*;
use tonic::Code;

/// Starts ganesha and a driver in its namespace; `None` (test skipped with
/// the reason printed) when this machine cannot run them.
async fn setup(extra: &[&str]) -> Option<(NfsServer, Harness)> {
    if !require_root() {
        return None;
    }
    let srv = match NfsServer::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    let h = Harness::start_in(Some(srv.netns()), extra).await;
    Some((srv, h))
}

fn params(srv: &NfsServer, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = [
        ("backend", "nfs"),
        ("server", srv.addr()),
        ("share", srv.share()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

fn nfs_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn nfs_req(name: &str, p: HashMap<String, String>) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 64 * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![nfs_cap(Mode::MultiNodeMultiWriter)],
        parameters: p,
        ..Default::default()
    }
}

async fn create(h: &mut Harness, req: CreateVolumeRequest) -> Result<Volume, tonic::Status> {
    h.controller
        .create_volume(req)
        .await
        .map(|r| r.into_inner().volume.expect("volume in response"))
}

async fn delete(h: &mut Harness, id: &str) -> Result<(), tonic::Status> {
    h.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn snapshot(h: &mut Harness, source: &str, name: &str) -> Snapshot {
    h.controller
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: source.into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot in response")
}

async fn validate(
    h: &mut Harness,
    volume_id: &str,
    cap: VolumeCapability,
) -> ValidateVolumeCapabilitiesResponse {
    h.controller
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: volume_id.into(),
            volume_capabilities: vec![cap],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner()
}

async fn condition(h: &mut Harness, volume_id: &str) -> VolumeCondition {
    h.controller
        .controller_get_volume(ControllerGetVolumeRequest {
            volume_id: volume_id.into(),
        })
        .await
        .expect("get")
        .into_inner()
        .status
        .and_then(|s| s.volume_condition)
        .expect("condition")
}

fn from_volume(id: &str) -> Option<VolumeContentSource> {
    Some(VolumeContentSource {
        r#type: Some(SourceType::Volume(VolumeSource {
            volume_id: id.into(),
        })),
    })
}

fn from_snapshot(id: &str) -> Option<VolumeContentSource> {
    Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: id.into(),
        })),
    })
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// Everything below `root`, as (relative path, kind, mode, uid, content or
/// link target), sorted: two trees are equal when these are.
fn tree(root: &Path) -> Vec<(String, char, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let (kind, data) = if m.file_type().is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .expect("readlink")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ('d', Vec::new())
            } else {
                ('f', std::fs::read(&p).expect("read"))
            };
            let mode = if kind == 'l' {
                0
            } else {
                m.permissions().mode() & 0o7777
            };
            out.push((rel, kind, mode, m.uid(), data));
        }
    }
    out.sort();
    out
}

/// A tree with what an archive has to get right: nested directories, a
/// multi-chunk file, an empty file, modes, an owner, a symlink, and names
/// longer than a tar header holds.
fn fill(dir: &Path) {
    use std::os::unix::fs::{chown, symlink};
    std::fs::create_dir_all(dir.join("a/b/c")).expect("mkdir");
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(dir.join("a/big.bin"), &big).expect("write");
    std::fs::write(dir.join("a/b/c/empty"), b"").expect("write");
    std::fs::write(dir.join("secret"), b"only the owner").expect("write");
    std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    chown(dir.join("secret"), Some(1234), Some(1234)).expect("chown");
    symlink("a/big.bin", dir.join("link")).expect("symlink");
    let long = "n".repeat(120);
    std::fs::create_dir_all(dir.join(&long)).expect("mkdir long");
    std::fs::write(dir.join(&long).join(format!("{long}.txt")), b"long names").expect("write");
    symlink("x".repeat(150), dir.join("longlink")).expect("symlink long");
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_volumes_are_subdirectories_with_each_delete_policy() {
    let Some((srv, mut h)) = setup(&[]).await else {
        return;
    };
    let export = srv.export_dir().to_path_buf();

    // Plain create: a subdirectory named after the volume, mode as asked.
    let v = create(
        &mut h,
        nfs_req("vol-a", params(&srv, &[("mountPermissions", "0750")])),
    )
    .await
    .expect("create");
    assert!(v.volume_id.starts_with("nfs#"), "{}", v.volume_id);
    assert!(
        v.accessible_topology.is_empty(),
        "NFS volumes are reachable from every node"
    );
    assert_eq!(
        v.volume_context.get("server").map(String::as_str),
        Some(srv.addr())
    );
    assert_eq!(
        v.volume_context.get("subDir").map(String::as_str),
        Some("vol-a")
    );
    assert!(export.join("vol-a").is_dir(), "{}", h.log());
    assert_eq!(mode_of(&export.join("vol-a")), 0o750);

    // Idempotent; a different size under the same name is refused.
    let again = create(
        &mut h,
        nfs_req("vol-a", params(&srv, &[("mountPermissions", "0750")])),
    )
    .await
    .expect("repeat");
    assert_eq!(again.volume_id, v.volume_id);
    let mut bigger = nfs_req("vol-a", params(&srv, &[("mountPermissions", "0750")]));
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 1 << 40,
        limit_bytes: 0,
    });
    assert_eq!(code(create(&mut h, bigger).await), Code::AlreadyExists);

    // subDir templates from the provisioner's metadata.
    let mut p = params(
        &srv,
        &[("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}")],
    );
    p.insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    p.insert("csi.storage.k8s.io/pvc/namespace".into(), "team".into());
    let t = create(&mut h, nfs_req("pvc-1234", p))
        .await
        .expect("templated");
    assert!(export.join("team/data").is_dir());
    assert_eq!(mode_of(&export.join("team/data")), 0o777, "default mode");

    // A second volume whose subDir is taken by another is refused.
    let clash = create(
        &mut h,
        nfs_req("other", params(&srv, &[("subDir", "vol-a")])),
    )
    .await;
    assert_eq!(code(clash), Code::AlreadyExists);

    // A volume name of the maximum length (128) gives a valid id: the
    // subdirectory is a prefix of the name plus a digest, the same each time.
    let long_name = "l".repeat(128);
    let long = create(&mut h, nfs_req(&long_name, params(&srv, &[])))
        .await
        .expect("maximum-length name");
    assert!(long.volume_id.len() <= 128, "{}", long.volume_id);
    let sub = long.volume_context.get("subDir").cloned().expect("subDir");
    assert!(sub.starts_with("lll") && sub.len() < 128, "{sub}");
    assert!(export.join(&sub).is_dir());
    let again = create(&mut h, nfs_req(&long_name, params(&srv, &[])))
        .await
        .expect("again");
    assert_eq!(again.volume_id, long.volume_id, "idempotent");
    delete(&mut h, &long.volume_id).await.expect("delete long");
    assert!(!export.join(&sub).exists());
    // An explicit subDir that is too long stays an error naming it.
    let e = create(
        &mut h,
        nfs_req("explicit", params(&srv, &[("subDir", &long_name)])),
    )
    .await
    .expect_err("too long a subDir");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("parameters[subDir]"),
        "{}",
        e.message()
    );

    // onDelete=delete (default) removes the data.
    std::fs::write(export.join("vol-a/f"), b"x").expect("write");
    delete(&mut h, &v.volume_id).await.expect("delete");
    assert!(!export.join("vol-a").exists());
    delete(&mut h, &v.volume_id)
        .await
        .expect("delete is idempotent");
    delete(&mut h, &t.volume_id)
        .await
        .expect("delete templated");
    assert!(!export.join("team/data").exists());
    assert!(
        export.join("team").is_dir(),
        "parents made for a template are shared and stay"
    );

    // onDelete=retain keeps it; archive renames it.
    let r = create(
        &mut h,
        nfs_req("keep", params(&srv, &[("onDelete", "retain")])),
    )
    .await
    .expect("retain");
    std::fs::write(export.join("keep/f"), b"kept").expect("write");
    delete(&mut h, &r.volume_id).await.expect("delete retained");
    assert_eq!(std::fs::read(export.join("keep/f")).expect("kept"), b"kept");
    let a = create(
        &mut h,
        nfs_req("arch", params(&srv, &[("onDelete", "archive")])),
    )
    .await
    .expect("archive");
    std::fs::write(export.join("arch/f"), b"archived").expect("write");
    delete(&mut h, &a.volume_id).await.expect("delete archived");
    assert!(!export.join("arch").exists());
    assert_eq!(
        std::fs::read(export.join("archived-arch/f")).expect("archived"),
        b"archived"
    );

    // ListVolumes shows NFS volumes (the retained and archived ones are gone
    // from the driver's view).
    let listed = h
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.entries.iter().all(|e| e
        .volume
        .as_ref()
        .is_some_and(|v| v.volume_id != r.volume_id)));

    // GetCapacity: the export's free space as the server reports it.
    let cap = h
        .controller
        .get_capacity(GetCapacityRequest {
            volume_capabilities: vec![nfs_cap(Mode::MultiNodeMultiWriter)],
            parameters: params(&srv, &[]),
            ..Default::default()
        })
        .await
        .expect("capacity")
        .into_inner();
    let st = nix::sys::statvfs::statvfs(&export).expect("statvfs");
    let free = st.blocks_available() as i64 * st.fragment_size() as i64;
    let diff = (cap.available_capacity - free).abs();
    assert!(
        diff < 256 * MIB,
        "server says {} bytes free, statvfs of the export says {free}",
        cap.available_capacity
    );

    // Multi-node modes are fine for NFS volumes; block is not.
    let vv = create(&mut h, nfs_req("vv", params(&srv, &[])))
        .await
        .expect("create");
    for (mode, ok) in [
        (Mode::MultiNodeMultiWriter, true),
        (Mode::MultiNodeReaderOnly, true),
        (Mode::SingleNodeWriter, true),
    ] {
        let r = validate(&mut h, &vv.volume_id, nfs_cap(mode)).await;
        assert_eq!(r.confirmed.is_some(), ok, "{mode:?}: {}", r.message);
    }
    let block = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let r = validate(&mut h, &vv.volume_id, block).await;
    assert!(
        r.confirmed.is_none() && r.message.contains("block"),
        "{}",
        r.message
    );
    // A local-disk volume still refuses multi-node modes.
    let local = h.create("local", 16 * MIB, mount_cap("ext4")).await;
    let r = validate(
        &mut h,
        &local.volume_id,
        mount_cap_mode("ext4", Mode::MultiNodeMultiWriter),
    )
    .await;
    assert!(r.confirmed.is_none(), "local volumes stay single-node");

    // ControllerPublishVolume: nothing to attach. With --publish-nodes=self
    // (the default) only this driver's node is known; the capability is
    // still checked with the NFS rules.
    let publish = |node: &str, mode: Mode, readonly: bool| ControllerPublishVolumeRequest {
        volume_id: vv.volume_id.clone(),
        node_id: node.into(),
        volume_capability: Some(nfs_cap(mode)),
        readonly,
        ..Default::default()
    };
    let e = h
        .controller
        .controller_publish_volume(publish("a-node-elsewhere", Mode::MultiNodeReaderOnly, true))
        .await
        .expect_err("unknown node");
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let own = h.node_id.clone();
    for _ in 0..2 {
        let published = h
            .controller
            .controller_publish_volume(publish(&own, Mode::MultiNodeReaderOnly, true))
            .await
            .expect("controller publish (and its idempotent retry)")
            .into_inner();
        assert_eq!(
            published
                .publish_context
                .get("readonly")
                .map(String::as_str),
            Some("true")
        );
    }
    // The same node with another readonly flag or capability: ALREADY_EXISTS.
    for (mode, readonly) in [
        (Mode::MultiNodeReaderOnly, false),
        (Mode::MultiNodeMultiWriter, true),
    ] {
        let e = h
            .controller
            .controller_publish_volume(publish(&own, mode, readonly))
            .await
            .expect_err("incompatible publish");
        assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    }
    h.controller
        .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: vv.volume_id.clone(),
            node_id: own.clone(),
            ..Default::default()
        })
        .await
        .expect("unpublish");
    h.controller
        .controller_publish_volume(publish(&own, Mode::MultiNodeMultiWriter, false))
        .await
        .expect("publish again after unpublish");
    // With --publish-nodes=any the CO vouches for node ids.
    h.extra_args.push("--publish-nodes=any".into());
    h.restart().await;
    h.controller
        .controller_publish_volume(publish("a-node-elsewhere", Mode::MultiNodeReaderOnly, true))
        .await
        .expect("any node with --publish-nodes=any");
    let e = h
        .controller
        .controller_publish_volume(ControllerPublishVolumeRequest {
            volume_id: vv.volume_id.clone(),
            node_id: "a-node-elsewhere".into(),
            volume_capability: Some(mount_cap_mode("ext4", Mode::MultiNodeMultiWriter)),
            ..Default::default()
        })
        .await
        .expect_err("ext4 capability on an NFS volume");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());

    // ControllerGetVolume reports the directory's presence.
    let cond = condition(&mut h, &vv.volume_id).await;
    assert!(!cond.abnormal, "{}", cond.message);
    std::fs::remove_dir(export.join("vv")).expect("remove behind the driver's back");
    let cond = condition(&mut h, &vv.volume_id).await;
    assert!(cond.abnormal, "a missing directory is abnormal");
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_clone_snapshot_and_restore_keep_the_tree() {
    let Some((srv, mut h)) = setup(&[]).await else {
        return;
    };
    let export = srv.export_dir().to_path_buf();
    let src = create(&mut h, nfs_req("src", params(&srv, &[])))
        .await
        .expect("create");
    fill(&export.join("src"));
    let original = tree(&export.join("src"));

    // Clone: the same tree in a new subdirectory.
    let mut req = nfs_req("clone", params(&srv, &[]));
    req.volume_content_source = from_volume(&src.volume_id);
    let clone = create(&mut h, req).await.expect("clone");
    assert!(clone.content_source.is_some());
    assert_eq!(tree(&export.join("clone")), original, "{}", h.log());

    // Snapshot: an archive on the share that tar itself reads.
    let snap = snapshot(&mut h, &src.volume_id, "snap-1").await;
    assert!(snap.ready_to_use && snap.size_bytes > 3 * 1024 * 1024);
    let archives: Vec<_> = std::fs::read_dir(export.join(".berth-snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archives[0])
        .output()
        .expect("tar");
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.contains("a/big.bin") && names.contains(&"n".repeat(120)),
        "{names}"
    );
    let again = h
        .controller
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: src.volume_id.clone(),
            name: "snap-1".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot again")
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!(again.snapshot_id, snap.snapshot_id);

    // Later writes to the source are not in a restore of the snapshot.
    std::fs::write(export.join("src/later"), b"after the snapshot").expect("write");
    std::fs::write(export.join("src/a/big.bin"), b"overwritten").expect("write");
    let mut req = nfs_req("restored", params(&srv, &[]));
    req.volume_content_source = from_snapshot(&snap.snapshot_id);
    create(&mut h, req).await.expect("restore");
    assert_eq!(tree(&export.join("restored")), original, "{}", h.log());

    let listed = h
        .controller
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.entries.iter().any(|e| e
        .snapshot
        .as_ref()
        .is_some_and(|s| s.snapshot_id == snap.snapshot_id)));

    // Deleting the snapshot removes its archive; restoring it then is NOT_FOUND.
    h.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete snapshot");
    assert!(!archives[0].exists());
    assert!(
        !export.join(".berth-snapshots").exists(),
        "the snapshot directory goes with its last archive"
    );
    let mut req = nfs_req("restored-2", params(&srv, &[]));
    req.volume_content_source = from_snapshot(&snap.snapshot_id);
    assert_eq!(code(create(&mut h, req).await), Code::NotFound);
    assert!(
        !export.join("restored-2").exists(),
        "nothing made for a failed restore"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_server_that_stops_gives_timely_errors_and_nothing_hangs() {
    let Some((mut srv, mut h)) = setup(&["--nfs-timeout", "2"]).await else {
        return;
    };
    let export = srv.export_dir().to_path_buf();
    let src = create(&mut h, nfs_req("src", params(&srv, &[])))
        .await
        .expect("create");
    for i in 0..400 {
        std::fs::write(export.join(format!("src/f{i}")), vec![i as u8; 64 * 1024]).expect("write");
    }

    // The server stops (SIGSTOP) while a clone is copying.
    let mut req = nfs_req("clone", params(&srv, &[]));
    req.volume_content_source = from_volume(&src.volume_id);
    let mut c = h.controller.clone();
    let call = tokio::spawn(async move {
        let t = Instant::now();
        (c.create_volume(req).await, t)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let copied = std::fs::read_dir(export.join("clone"))
            .map(|d| d.count())
            .unwrap_or(0);
        if copied > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clone never started: {}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    srv.pause().expect("pause");
    let (r, started) = call.await.expect("join");
    let took = started.elapsed();
    assert_eq!(code(r), Code::DeadlineExceeded, "{}", h.log());
    // Generous: the bound is 2 s per NFS call; the point is that the call
    // ends at all while the server is stopped.
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // The driver answers other calls while the server is stopped, and a
    // fresh call to the stopped server also ends.
    h.identity.probe(ProbeRequest {}).await.expect("probe");
    assert_eq!(
        code(delete(&mut h, &src.volume_id).await),
        Code::DeadlineExceeded
    );
    assert!(
        export.join("src").is_dir(),
        "nothing deleted while the server was stopped"
    );

    // Back: the interrupted clone is redone from scratch on retry.
    srv.resume().expect("resume");
    let mut req = nfs_req("clone", params(&srv, &[]));
    req.volume_content_source = from_volume(&src.volume_id);
    create(&mut h, req)
        .await
        .expect("retry after the server is back");
    assert_eq!(tree(&export.join("clone")), tree(&export.join("src")));

    // Gone for good: UNAVAILABLE, quickly, and the process is fine.
    srv.kill();
    let t = Instant::now();
    let r = create(&mut h, nfs_req("after-kill", params(&srv, &[]))).await;
    assert!(
        matches!(code(r), Code::Unavailable | Code::DeadlineExceeded),
        "{}",
        h.log()
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    h.identity
        .probe(ProbeRequest {})
        .await
        .expect("probe after the server died");
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_bad_input_names_the_field_and_makes_nothing() {
    let Some((srv, mut h)) = setup(&["--nfs-timeout", "3"]).await else {
        return;
    };
    let export = srv.export_dir().to_path_buf();
    let before = tree(&export);
    type Case<'a> = (Vec<(&'a str, &'a str)>, Code, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("server", "")],
            Code::InvalidArgument,
            "parameters[server]",
        ),
        (
            vec![("share", "")],
            Code::InvalidArgument,
            "parameters[share]",
        ),
        (
            vec![("share", "export")],
            Code::InvalidArgument,
            "parameters[share]",
        ),
        (
            vec![("subDir", "../escape")],
            Code::InvalidArgument,
            "parameters[subDir]",
        ),
        (
            vec![("subDir", "a/../../escape")],
            Code::InvalidArgument,
            "parameters[subDir]",
        ),
        (
            vec![("subDir", "${pvc.metadata.name}")],
            Code::InvalidArgument,
            "parameters[subDir]",
        ),
        (
            vec![("onDelete", "shred")],
            Code::InvalidArgument,
            "parameters[onDelete]",
        ),
        (
            vec![("mountPermissions", "rwx")],
            Code::InvalidArgument,
            "parameters[mountPermissions]",
        ),
        (
            vec![("mountOptions", "vers=4.1,addr=192.0.2.1")],
            Code::InvalidArgument,
            "parameters[mountOptions]",
        ),
        (
            vec![("preallocate", "true")],
            Code::InvalidArgument,
            "parameters[preallocate]",
        ),
        (
            vec![("share", "/no-such-export")],
            Code::FailedPrecondition,
            "/no-such-export",
        ),
        // No route from the server's namespace to this address: refused at once.
        (
            vec![("server", "192.0.2.1")],
            Code::Unavailable,
            "192.0.2.1",
        ),
    ];
    for (extra, want, field) in &cases {
        let mut p = params(&srv, &[]);
        for (k, v) in extra {
            if v.is_empty() {
                p.remove(*k);
            } else {
                p.insert(k.to_string(), v.to_string());
            }
        }
        let e = create(&mut h, nfs_req("bad", p)).await.expect_err(field);
        assert_eq!(e.code(), *want, "{field}: {}", e.message());
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }

    // Capabilities: block and foreign filesystem types.
    let mut req = nfs_req("bad", params(&srv, &[]));
    req.volume_capabilities = vec![VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }];
    let e = create(&mut h, req).await.expect_err("block");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("volume_capabilities[0].block"),
        "{}",
        e.message()
    );
    let mut req = nfs_req("bad", params(&srv, &[]));
    req.volume_capabilities = vec![mount_cap_mode("ext4", Mode::MultiNodeMultiWriter)];
    let e = create(&mut h, req).await.expect_err("ext4");
    assert!(
        e.message().contains("volume_capabilities[0].mount.fs_type"),
        "{}",
        e.message()
    );

    // A local-disk volume or snapshot cannot seed an NFS volume; a source
    // id that names nothing is NOT_FOUND.
    let local = h.create("local-src", 16 * MIB, mount_cap("ext4")).await;
    let local_snap = snapshot(&mut h, &local.volume_id, "local-snap").await;
    for (source, want) in [
        (
            from_snapshot(&local_snap.snapshot_id),
            Code::InvalidArgument,
        ),
        (from_volume(&local.volume_id), Code::InvalidArgument),
        (from_snapshot("snap-node-1-abc"), Code::NotFound),
        (from_volume("no-such-volume"), Code::NotFound),
    ] {
        let mut req = nfs_req("bad", params(&srv, &[]));
        req.volume_content_source = source.clone();
        let e = create(&mut h, req).await.expect_err("foreign source");
        assert_eq!(e.code(), want, "{source:?}: {}", e.message());
    }
    assert!(!export.join("bad").exists());
    h.controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: local_snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete local snapshot");
    delete(&mut h, &local.volume_id)
        .await
        .expect("delete local volume");

    // Ids with the NFS prefix that do not parse: INVALID_ARGUMENT naming the field.
    for id in [
        "nfs#",
        "nfs#10.0.2.2#%2Fexport#x",
        "nfs#10.0.2.2#%2Fexport#%2E%2E#d",
    ] {
        let e = delete(&mut h, id).await.expect_err(id);
        assert_eq!(e.code(), Code::InvalidArgument, "{id}: {}", e.message());
        assert!(e.message().starts_with("volume_id"), "{}", e.message());
        let e = h
            .controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: id.replace("nfs#", "nfssnap#"),
                ..Default::default()
            })
            .await
            .expect_err(id);
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    // Node side, checked before anything is mounted.
    let good = create(&mut h, nfs_req("node-checks", params(&srv, &[])))
        .await
        .expect("create");
    let target = h.path_s("target");
    let pub_req = |id: &str, target: &str, cap: VolumeCapability| NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
        volume_capability: Some(cap),
        ..Default::default()
    };
    let block = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    };
    let with_flag = VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags: vec!["clientaddr=192.0.2.9".into()],
            ..Default::default()
        })),
    };
    for (req, field) in [
        (
            pub_req(&good.volume_id, &target, block),
            "volume_capability.block",
        ),
        (
            pub_req(&good.volume_id, &target, with_flag),
            "volume_capability.mount.mount_flags[0]",
        ),
        (
            pub_req(
                &good.volume_id,
                "relative/dir",
                nfs_cap(Mode::MultiNodeMultiWriter),
            ),
            "target_path",
        ),
        (
            pub_req(
                &good.volume_id,
                "/a/../etc",
                nfs_cap(Mode::MultiNodeMultiWriter),
            ),
            "target_path",
        ),
        (
            pub_req("nfs#x", &target, nfs_cap(Mode::MultiNodeMultiWriter)),
            "volume_id",
        ),
    ] {
        let e = h.node.node_publish_volume(req).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    // This host's kernel has no NFS client (TESTBED.md): a real publish says
    // so instead of failing obscurely. Where the kernel has one, it mounts.
    let has_nfs = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("nfs");
    let r = h
        .node
        .node_publish_volume(pub_req(
            &good.volume_id,
            &target,
            nfs_cap(Mode::MultiNodeMultiWriter),
        ))
        .await;
    if has_nfs {
        r.expect("publish on a kernel with NFS");
    } else {
        let e = r.expect_err("no NFS client here");
        assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        assert!(e.message().contains("no NFS client"), "{}", e.message());
    }
    h.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: good.volume_id.clone(),
            target_path: target.clone(),
        })
        .await
        .expect("unpublish");
    assert!(!Path::new(&target).exists(), "target removed");
    delete(&mut h, &good.volume_id).await.expect("delete");

    assert_eq!(
        tree(&export),
        before,
        "failed calls left something on the export"
    );
    assert!(
        h.controller
            .list_volumes(ListVolumesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .entries
            .is_empty(),
        "failed calls left records"
    );
}
