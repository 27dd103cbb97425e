//! Data tests: what is written through a published volume is really there,
//! through other publishes, after republish, after driver restarts and
//! crashes, in snapshots and clones; read-only means read-only; a full
//! volume says ENOSPC; block volumes carry raw bytes. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::*;
use csi_driver::backend::local::loopdev;
use csi_driver::mount;
use proto::v1::volume_content_source::{SnapshotSource, Type as Src, VolumeSource};
use proto::v1::*;

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn data_survives_republish_restart_and_crash() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("data", 64 * MIB, mount_cap("")).await;
    let id = v.volume_id.clone();
    let (staging, a, b) = (h.path_s("staging"), h.path_s("a"), h.path_s("b"));
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    h.publish(&id, &staging, &a, mount_cap(""), false)
        .await
        .unwrap();
    write_synced(&Path::new(&a).join("hello.txt"), b"written through a");
    // A second publish sees it.
    h.publish(&id, &staging, &b, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(
        fs::read(Path::new(&b).join("hello.txt")).unwrap(),
        b"written through a"
    );
    // Unpublish + republish.
    h.unpublish(&id, &a).await.unwrap();
    h.publish(&id, &staging, &a, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(
        fs::read(Path::new(&a).join("hello.txt")).unwrap(),
        b"written through a"
    );
    // Clean restart: volumes stay mounted and usable.
    h.restart().await;
    assert_eq!(
        fs::read(Path::new(&b).join("hello.txt")).unwrap(),
        b"written through a"
    );
    write_synced(&Path::new(&b).join("after-restart.txt"), b"second");
    // Crash, then lose every mount and the loop device (as a reboot would).
    h.crash();
    for p in [&a, &b, &staging] {
        mount::unmount_all(Path::new(p)).unwrap();
    }
    let image_dir = h.pool.join("volumes");
    for (dev, backing) in loopdev::all_attached() {
        if backing.starts_with(&image_dir) {
            loopdev::detach(&dev, &backing).unwrap();
        }
    }
    assert!(!mount::is_mounted(Path::new(&a)));
    h.restart().await;
    // Reconciliation re-attached, re-mounted and re-bound everything.
    assert!(mount::is_mounted(Path::new(&a)), "{}", h.log());
    assert_eq!(
        fs::read(Path::new(&a).join("hello.txt")).unwrap(),
        b"written through a"
    );
    assert_eq!(
        fs::read(Path::new(&b).join("after-restart.txt")).unwrap(),
        b"second"
    );
    // And the driver still tears it all down normally.
    h.unpublish(&id, &a).await.unwrap();
    h.unpublish(&id, &b).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
    h.delete(&id).await.unwrap();
}

#[tokio::test]
async fn read_only_publish_refuses_writes() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("ro", 32 * MIB, mount_cap("")).await;
    let id = v.volume_id.clone();
    let (staging, rw, ro) = (h.path_s("staging"), h.path_s("rw"), h.path_s("ro"));
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    h.publish(&id, &staging, &rw, mount_cap(""), false)
        .await
        .unwrap();
    write_synced(&Path::new(&rw).join("f"), b"data");
    h.publish(&id, &staging, &ro, mount_cap(""), true)
        .await
        .unwrap();
    assert_eq!(fs::read(Path::new(&ro).join("f")).unwrap(), b"data");
    let e = fs::write(Path::new(&ro).join("g"), b"nope").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = OpenOptions::new()
        .write(true)
        .open(Path::new(&ro).join("f"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    h.unpublish(&id, &ro).await.unwrap();
    h.unpublish(&id, &rw).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
}

#[tokio::test]
async fn writing_past_the_size_fails_with_enospc() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("full", 16 * MIB, mount_cap("ext4")).await;
    let id = v.volume_id.clone();
    let (staging, t) = (h.path_s("staging"), h.path_s("t"));
    h.stage(&id, &staging, mount_cap("ext4")).await.unwrap();
    h.publish(&id, &staging, &t, mount_cap("ext4"), false)
        .await
        .unwrap();
    let mut f = fs::File::create(Path::new(&t).join("big")).unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    let mut err = None;
    for _ in 0..32 {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("a 16 MiB volume must not take 32 MiB");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    drop(f);
    // The pool file did not grow past the volume size.
    let image = fs::read_dir(h.pool.join("volumes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(fs::metadata(&image).unwrap().len(), 16 * MIB as u64);
    h.unpublish(&id, &t).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
}

#[tokio::test]
async fn snapshot_restore_and_clone_carry_the_right_data() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("snapdata", 32 * MIB, mount_cap("")).await;
    let id = v.volume_id.clone();
    let (staging, t) = (h.path_s("staging"), h.path_s("t"));
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    h.publish(&id, &staging, &t, mount_cap(""), false)
        .await
        .unwrap();
    write_synced(&Path::new(&t).join("state"), b"before snapshot");
    // Taken while mounted (the filesystem is frozen for the copy).
    let snap = h
        .controller
        .create_snapshot(CreateSnapshotRequest {
            name: "snap".into(),
            source_volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    write_synced(&Path::new(&t).join("state"), b"after snapshot!");
    write_synced(&Path::new(&t).join("later"), b"later file");
    // Restore.
    let mut r = create_req("restored", 32 * MIB, mount_cap(""));
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let restored = h
        .controller
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (s2, t2) = (h.path_s("staging2"), h.path_s("t2"));
    h.stage(&restored.volume_id, &s2, mount_cap(""))
        .await
        .unwrap();
    h.publish(&restored.volume_id, &s2, &t2, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(
        fs::read(Path::new(&t2).join("state")).unwrap(),
        b"before snapshot"
    );
    assert!(!Path::new(&t2).join("later").exists());
    // Clone of the live volume has the latest data.
    let mut r = create_req("cloned", 32 * MIB, mount_cap(""));
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(Src::Volume(VolumeSource {
            volume_id: id.clone(),
        })),
    });
    let cloned = h
        .controller
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (s3, t3) = (h.path_s("staging3"), h.path_s("t3"));
    h.stage(&cloned.volume_id, &s3, mount_cap(""))
        .await
        .unwrap();
    h.publish(&cloned.volume_id, &s3, &t3, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(
        fs::read(Path::new(&t3).join("state")).unwrap(),
        b"after snapshot!"
    );
    assert_eq!(
        fs::read(Path::new(&t3).join("later")).unwrap(),
        b"later file"
    );
    // Writes to the clone do not reach the source.
    write_synced(&Path::new(&t3).join("clone-only"), b"x");
    assert!(!Path::new(&t).join("clone-only").exists());
    for (vol, s, tt) in [
        (&restored.volume_id, &s2, &t2),
        (&cloned.volume_id, &s3, &t3),
        (&id, &staging, &t),
    ] {
        h.unpublish(vol, tt).await.unwrap();
        h.unstage(vol, s).await.unwrap();
    }
}

#[tokio::test]
async fn block_volumes_read_and_write_raw() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("raw", 16 * MIB, block_cap()).await;
    let id = v.volume_id.clone();
    let (staging, a, b, ro) = (
        h.path_s("staging"),
        h.path_s("dev/a"),
        h.path_s("dev/b"),
        h.path_s("dev/ro"),
    );
    // A block volume cannot be staged as a filesystem.
    assert_eq!(
        code(h.stage(&id, &staging, mount_cap("")).await),
        tonic::Code::InvalidArgument
    );
    h.stage(&id, &staging, block_cap()).await.unwrap();
    h.publish(&id, &staging, &a, block_cap(), false)
        .await
        .unwrap();
    h.publish(&id, &staging, &b, block_cap(), false)
        .await
        .unwrap();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let mut f = OpenOptions::new().read(true).write(true).open(&a).unwrap();
        f.seek(SeekFrom::Start(5 * MIB as u64)).unwrap();
        f.write_all(&pattern).unwrap();
        f.sync_all().unwrap();
        // The device is exactly the volume's size.
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 16 * MIB as u64);
    }
    let mut got = vec![0u8; 4096];
    let mut f = fs::File::open(&b).unwrap();
    f.seek(SeekFrom::Start(5 * MIB as u64)).unwrap();
    f.read_exact(&mut got).unwrap();
    assert_eq!(got, pattern);
    drop(f);
    // Read-only block publish: readable, not writable.
    h.publish(&id, &staging, &ro, block_cap(), true)
        .await
        .unwrap();
    let mut f = fs::File::open(&ro).unwrap();
    f.seek(SeekFrom::Start(5 * MIB as u64)).unwrap();
    f.read_exact(&mut got).unwrap();
    assert_eq!(got, pattern);
    // Depending on the kernel, opening for write or the write itself fails.
    let refused = match OpenOptions::new().write(true).open(&ro) {
        Err(e) => matches!(
            e.kind(),
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
        ),
        Ok(mut w) => w
            .write_all(&[0u8; 4096])
            .and_then(|_| w.sync_all())
            .is_err(),
    };
    assert!(refused, "a read-only block publish accepted a write");
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    assert_eq!(head, vec![0u8; 4096]);
    drop(f);
    // Stats for a block volume report its size.
    let s = h
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.usage[0].total, 16 * MIB);
    for t in [&a, &b, &ro] {
        h.unpublish(&id, t).await.unwrap();
        assert!(!Path::new(t).exists());
    }
    h.unstage(&id, &staging).await.unwrap();
    let images = h.pool.join("volumes");
    assert!(loopdev::all_attached()
        .iter()
        .all(|(_, b)| !b.starts_with(&images)));
}

/// A driver restarted in a new container sees the pool through a new
/// mount, and the kernel prints the backing paths of the loops its
/// predecessor bound as the predecessor saw them. Here the pool moves to a
/// bind mount at another path between two runs: the restarted driver must
/// adopt the loop device bound to each image (matched by device and inode),
/// not bind a second one.
#[tokio::test]
async fn restart_through_a_moved_pool_adopts_the_bound_loop() {
    if !require_root() {
        return;
    }
    let mut h = Harness::start().await;
    let v = h.create("moved", 64 * MIB, mount_cap("")).await;
    let id = v.volume_id.clone();
    let (staging, a) = (h.path_s("staging"), h.path_s("a"));
    h.stage(&id, &staging, mount_cap("")).await.unwrap();
    h.publish(&id, &staging, &a, mount_cap(""), false)
        .await
        .unwrap();
    write_synced(&Path::new(&a).join("kept.txt"), b"before the move");
    let image = fs::read_dir(h.pool.join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "img"))
        .expect("the volume's image");
    let image_id = loopdev::FileId::of(&image).unwrap();
    let bound = || -> Vec<std::path::PathBuf> {
        loopdev::all_attached()
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| loopdev::backing_id(d) == Some(image_id))
            .collect()
    };
    let before = bound();
    assert_eq!(before.len(), 1, "{before:?}");

    h.crash();
    let moved = h.path("pool-moved");
    fs::create_dir_all(&moved).unwrap();
    mount::bind(&h.pool, &moved, false).unwrap();
    let moved_image = moved.join("volumes").join(image.file_name().unwrap());
    assert_ne!(
        loopdev::backing_file(&before[0]).as_deref(),
        Some(moved_image.as_path()),
        "the kernel must still print the old path, or this test tests nothing"
    );
    assert_eq!(loopdev::find_for(&moved_image), before);
    assert!(loopdev::is_bound_to(&before[0], &moved_image));
    h.pool = moved.clone();
    h.restart().await;
    assert_eq!(bound(), before, "a second loop was bound: {}", h.log());
    assert_eq!(
        fs::read(Path::new(&a).join("kept.txt")).unwrap(),
        b"before the move"
    );
    // A second publish and the teardown go through the adopted device.
    let b = h.path_s("b");
    h.publish(&id, &staging, &b, mount_cap(""), false)
        .await
        .unwrap();
    assert_eq!(bound(), before);
    h.unpublish(&id, &a).await.unwrap();
    h.unpublish(&id, &b).await.unwrap();
    h.unstage(&id, &staging).await.unwrap();
    assert!(bound().is_empty(), "unstage left {:?}", bound());
    h.delete(&id).await.unwrap();
    assert!(loopdev::attached_under(&moved).is_empty());
}
