//! The NFS backend's node side, for real: this machine's kernel has no NFS
//! client, so each "node" is a QEMU guest (software emulation) booted from
//! Debian's cloud kernel, running berth-csi in node mode (a static build
//! when ./scripts/test.sh made one) on a TCP endpoint forwarded into the
//! NFS server's test namespace. The controller runs on the host in that
//! namespace. Skipped, with the reason printed, where QEMU or the guest
//! kernel cannot be had.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::guest::{Guest, GuestOptions};
use common::nfs_server::{is_skip, NfsServer};
use common::*;
use proto::v1::identity_client::IdentityClient;
use proto::v1::node_client::NodeClient;
use proto::v1::volume_capability::access_mode::Mode;
use proto::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use proto::v1::*;
use tonic::transport::Channel;
use tonic::Code;

const CSI_PORT: u16 = 10000;

/// The berth-csi binary for the guests: the static build if there is one
/// (`BERTH_CSI_GUEST_BIN` overrides), else this build with its libraries.
fn guest_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_CSI_GUEST_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let static_build = root.join("target/x86_64-unknown-linux-gnu/release/berth-csi");
    if static_build.exists() {
        return static_build;
    }
    PathBuf::from(env!("CARGO_BIN_EXE_berth-csi"))
}

fn boot(srv: &NfsServer, node: &str) -> Result<Guest, String> {
    let bin = guest_binary();
    eprintln!("guest {node}: berth-csi from {}", bin.display());
    let opts = GuestOptions::new()
        .file(&bin, "/bin/berth-csi")
        .daemon(format!(
            "/bin/berth-csi --endpoint tcp://0.0.0.0:{CSI_PORT} --mode node --node-id {node} \
             --state-dir /var/lib/berth-csi --nfs-timeout 3"
        ))
        .forward(CSI_PORT);
    Guest::boot(srv.netns(), opts)
}

/// Boots `n` guests at once; `None` (skip) when this machine cannot.
fn boot_guests(srv: &NfsServer, n: usize) -> Option<Vec<Guest>> {
    let results: Vec<Result<Guest, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| s.spawn(move || boot(srv, &format!("guest-{i}"))))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("boot thread panicked".into()))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(g) => {
                eprintln!(
                    "guest booted to a shell in {:.1?} ({})",
                    g.boot_time(),
                    g.kernel_version()
                );
                out.push(g)
            }
            Err(e) if is_skip(&e) => {
                eprintln!("{e}");
                return None;
            }
            Err(e) => panic!("guest did not boot: {e}"),
        }
    }
    Some(out)
}

/// A node client for the driver in a guest (waits for it to answer).
async fn node_client(g: &Guest) -> NodeClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = g.grpc_channel(CSI_PORT).await {
            if IdentityClient::new(ch.clone())
                .probe(ProbeRequest {})
                .await
                .is_ok()
            {
                return NodeClient::new(ch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "berth-csi in the guest did not answer: {:?}\n{}",
            g.daemon_log(),
            g.console()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn publish_req(v: &Volume, target: &str, readonly: bool, mode: Mode) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target.into(),
        volume_capability: Some(cap(mode)),
        readonly,
        volume_context: v.volume_context.clone(),
        ..Default::default()
    }
}

async fn publish(
    n: &mut NodeClient<Channel>,
    v: &Volume,
    target: &str,
    ro: bool,
) -> Result<(), tonic::Status> {
    let mode = if ro {
        Mode::MultiNodeReaderOnly
    } else {
        Mode::MultiNodeMultiWriter
    };
    n.node_publish_volume(publish_req(v, target, ro, mode))
        .await
        .map(|_| ())
}

async fn unpublish(
    n: &mut NodeClient<Channel>,
    v: &Volume,
    target: &str,
) -> Result<(), tonic::Status> {
    n.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: target.into(),
    })
    .await
    .map(|_| ())
}

async fn nfs_volume(h: &mut Harness, srv: &NfsServer, name: &str) -> Volume {
    let req = CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![cap(Mode::MultiNodeMultiWriter)],
        parameters: [
            ("backend", "nfs"),
            ("server", srv.addr()),
            ("share", srv.share()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    };
    h.controller
        .create_volume(req)
        .await
        .expect("create NFS volume")
        .into_inner()
        .volume
        .expect("volume")
}

fn nfs_mounts(g: &Guest) -> String {
    g.sh_ok("grep -E ' nfs4? ' /proc/mounts || true")
        .expect("mounts")
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_volume_is_shared_by_two_guest_nodes() {
    if !require_root() {
        return;
    }
    let srv = match NfsServer::start() {
        Ok(s) => s,
        Err(e) => return eprintln!("skipping: {e}"),
    };
    let Some(guests) = boot_guests(&srv, 2) else {
        return;
    };
    let (a, b) = (&guests[0], &guests[1]);
    let mut h = Harness::start_in(Some(srv.netns()), &[]).await;
    let v = nfs_volume(&mut h, &srv, "shared").await;
    let mut na = node_client(a).await;
    let mut nb = node_client(b).await;
    let export = srv.export_dir().join("shared");

    // Node A publishes and writes; the file is on the server.
    let pa = "/var/lib/kubelet/pods/pa/volumes/v";
    publish(&mut na, &v, pa, false)
        .await
        .unwrap_or_else(|e| panic!("publish on A: {e:?}\n{:?}", a.daemon_log()));
    let m = nfs_mounts(a);
    assert!(
        m.contains(pa) && m.contains("vers=4.1"),
        "NFS 4.1 by default: {m}"
    );
    a.sh_ok(&format!("echo from-a > {pa}/a.txt"))
        .expect("write on A");
    assert_eq!(
        std::fs::read_to_string(export.join("a.txt")).expect("on the server"),
        "from-a\n"
    );

    // Node B publishes the same volume, reads A's file, writes its own.
    let pb = "/var/lib/kubelet/pods/pb/volumes/v";
    publish(&mut nb, &v, pb, false).await.expect("publish on B");
    assert_eq!(
        b.sh_ok(&format!("cat {pb}/a.txt")).expect("read on B"),
        "from-a\n"
    );
    b.sh_ok(&format!("echo from-b > {pb}/b.txt"))
        .expect("write on B");
    assert_eq!(
        a.sh_ok(&format!("cat {pa}/b.txt")).expect("read on A"),
        "from-b\n"
    );

    // A second publish on A sees the same data.
    let pa2 = "/var/lib/kubelet/pods/pa2/volumes/v";
    publish(&mut na, &v, pa2, false)
        .await
        .expect("second publish on A");
    assert_eq!(
        a.sh_ok(&format!("cat {pa2}/b.txt")).expect("read"),
        "from-b\n"
    );

    // Read-only publish on B: reads work, writes fail.
    let pro = "/var/lib/kubelet/pods/pro/volumes/v";
    publish(&mut nb, &v, pro, true)
        .await
        .expect("read-only publish");
    assert_eq!(
        b.sh_ok(&format!("cat {pro}/a.txt")).expect("read ro"),
        "from-a\n"
    );
    let (rc, out) = b.sh(&format!("echo x > {pro}/x.txt")).expect("sh");
    assert!(
        rc != 0 && out.contains("Read-only"),
        "write to a read-only publish: {rc} {out}"
    );
    assert!(!export.join("x.txt").exists());

    // Idempotent publish; the same target with other flags is refused.
    publish(&mut na, &v, pa, false)
        .await
        .expect("publish again");
    let e = publish(&mut na, &v, pa, true)
        .await
        .expect_err("ro over rw");
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());

    // Volume stats: the export's real figures.
    let st = na
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: pa.into(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    let bytes = st
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .expect("bytes");
    let host = nix::sys::statvfs::statvfs(srv.export_dir()).expect("statvfs");
    let host_total = host.blocks() as i64 * host.fragment_size() as i64;
    assert!(
        (bytes.total - host_total).abs() <= host_total / 100,
        "guest sees {} bytes, the export's filesystem has {host_total}",
        bytes.total
    );
    assert!(!st.volume_condition.expect("condition").abnormal);

    // Unpublish everything: targets removed, no NFS mounts left; repeatable.
    for (mut n, t) in [
        (na.clone(), pa),
        (na.clone(), pa2),
        (nb.clone(), pb),
        (nb.clone(), pro),
    ] {
        unpublish(&mut n, &v, t).await.expect("unpublish");
        unpublish(&mut n, &v, t).await.expect("unpublish again");
    }
    for g in [a, b] {
        assert_eq!(nfs_mounts(g).trim(), "", "mounts left");
        for t in [pa, pa2, pb, pro] {
            let (rc, _) = g.sh(&format!("test -e {t}")).expect("sh");
            assert_ne!(rc, 0, "{t} left behind");
        }
    }
    assert_eq!(
        std::fs::read_to_string(export.join("b.txt")).expect("data stays"),
        "from-b\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nfs_stale_handles_are_remounted_and_dead_servers_unpublish() {
    if !require_root() {
        return;
    }
    let srv = match NfsServer::start() {
        Ok(s) => s,
        Err(e) => return eprintln!("skipping: {e}"),
    };
    let Some(guests) = boot_guests(&srv, 1) else {
        return;
    };
    let g = &guests[0];
    let mut h = Harness::start_in(Some(srv.netns()), &[]).await;
    let v = nfs_volume(&mut h, &srv, "stale").await;
    let mut n = node_client(g).await;
    let export = srv.export_dir().join("stale");

    let p1 = "/var/lib/kubelet/pods/p1/volumes/v";
    publish(&mut n, &v, p1, false).await.expect("publish");
    g.sh_ok(&format!("echo one > {p1}/f")).expect("write");

    // The directory is replaced on the server: the mount's handle is stale.
    std::fs::remove_dir_all(&export).expect("remove on the server");
    std::fs::create_dir(&export).expect("recreate");
    std::fs::write(export.join("g"), b"two").expect("write on the server");
    let (rc, out) = g.sh(&format!("ls {p1}")).expect("sh");
    assert!(
        rc != 0 && out.contains("Stale"),
        "expected a stale handle: {rc} {out}"
    );
    publish(&mut n, &v, p1, false)
        .await
        .expect("publish over a stale mount");
    assert_eq!(
        g.sh_ok(&format!("cat {p1}/g")).expect("read after remount"),
        "two"
    );
    let log = g.daemon_log().unwrap_or_default();
    assert!(
        log.contains("stale"),
        "the driver says why it remounted: {log}"
    );

    // The server stops answering: a publish check ends with
    // DEADLINE_EXCEEDED, unpublish still succeeds (lazy detach at worst).
    let p2 = "/var/lib/kubelet/pods/p2/volumes/v";
    publish(&mut n, &v, p2, false).await.expect("publish p2");
    srv.pause().expect("pause");
    let t = Instant::now();
    let e = publish(&mut n, &v, p2, false)
        .await
        .expect_err("server stopped");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    for p in [p1, p2] {
        unpublish(&mut n, &v, p)
            .await
            .expect("unpublish with the server stopped");
    }
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(nfs_mounts(g).trim(), "", "detached");
    for p in [p1, p2] {
        let (rc, _) = g.sh(&format!("test -e {p}")).expect("sh");
        assert_ne!(rc, 0, "{p} left behind");
    }
    srv.resume().expect("resume");
}
