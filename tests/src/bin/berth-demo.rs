//! `berth-demo`: Berth doing its whole job on one machine, in namespaces it
//! creates (never the root network namespace), step by step with timings:
//! hosts on an underlay running `berth-overlayd`, pods attached with
//! `berth-overlay` pinging each other across hosts, then `berth-csi`
//! provisioning a volume that a pod writes to, a snapshot, and a restore.
//! Everything is torn down at the end, on error, and on Ctrl-C.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_tests::netns::{spawn_in_netns, Netns, Underlay};
use berth_tests::{bin_dir, conf_bytes, CniRun};
use hyper_util::rt::TokioIo;
use proto::v1::controller_client::ControllerClient;
use proto::v1::node_client::NodeClient;
use proto::v1::{
    volume_capability, volume_content_source, CapacityRange, ControllerPublishVolumeRequest,
    ControllerUnpublishVolumeRequest, CreateSnapshotRequest, CreateVolumeRequest,
    DeleteSnapshotRequest, DeleteVolumeRequest, NodeGetInfoRequest, NodePublishVolumeRequest,
    NodeStageVolumeRequest, NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, VolumeCapability,
    VolumeContentSource,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

/// Raised by SIGINT/SIGTERM (installed in `main`).
static INTERRUPTED: std::sync::OnceLock<&'static AtomicBool> = std::sync::OnceLock::new();

fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

type Res<T> = Result<T, String>;

/// Prints "[n] what (where) ... 123 ms", with a progress line every second
/// while a step runs longer than that.
struct Steps {
    n: usize,
    log: Vec<(String, Duration, bool)>,
    t0: Instant,
}

impl Steps {
    fn run<T>(&mut self, what: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
        if interrupted() {
            return Err("interrupted".into());
        }
        self.n += 1;
        println!("[{}] {what}", self.n);
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        let label = what.to_string();
        let start = Instant::now();
        let ticker = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !d2.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(1) && !d2.load(Ordering::SeqCst) {
                    println!(
                        "    ... still {label} ({:.0} s)",
                        start.elapsed().as_secs_f64()
                    );
                    last = Instant::now();
                }
            }
        });
        let r = f();
        let took = start.elapsed();
        done.store(true, Ordering::SeqCst);
        let _ = ticker.join();
        match &r {
            Ok(_) => println!("    ok, {} ms", took.as_millis()),
            Err(e) => println!("    FAILED after {} ms: {e}", took.as_millis()),
        }
        self.log.push((what.to_string(), took, r.is_ok()));
        if interrupted() {
            return Err("interrupted".into());
        }
        r
    }
}

use berth_tests::netns::ChildGuard as Daemon;

struct Node {
    ns: Netns,
    ip: String,
    subnet_file: PathBuf,
    data_dir: PathBuf,
    _daemon: Option<Daemon>,
}

fn preflight() -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("berth-demo must run as root: it creates network namespaces, a VXLAN overlay, loop devices and mounts".into());
    }
    for bin in [
        "berth-overlayd",
        "berth-overlay",
        "berth-bridge",
        "berth-host-local",
        "berth-csi",
    ] {
        if !bin_dir().join(bin).exists() {
            return Err(format!(
                "{} is missing: build first (cargo build --release --workspace)",
                bin_dir().join(bin).display()
            ));
        }
    }
    let probe = Netns::try_create("bdprobe")
        .map_err(|e| format!("network namespaces are not available: {e}"))?;
    probe
        .try_exec(&[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ])
        .map_err(|e| format!("the kernel cannot create veth pairs: {e}"))?;
    probe
        .try_exec(&[
            "ip", "link", "add", "vx0", "type", "vxlan", "id", "9", "dstport", "8472", "dev", "v0",
        ])
        .map_err(|e| format!("the kernel has no VXLAN support: {e}"))?;
    if !Path::new("/dev/loop-control").exists() {
        return Err("/dev/loop-control is missing: the kernel has no loop device support (needed for local volumes)".into());
    }
    Ok(())
}

fn ping(from: &Netns, to: &str) -> bool {
    from.output(&["ping", "-c", "1", "-W", "1", to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn csi_channel(socket: &Path) -> Res<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            return Err(format!("berth-csi did not listen on {}", socket.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .map_err(|e| format!("connecting to berth-csi: {e}"))
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: "ext4".into(),
                ..Default::default()
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn main() {
    let short = std::env::args().any(|a| a == "--short");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: berth-demo [--short]\n\nRuns the Berth demo in namespaces it creates (root). --short: two hosts instead of three.");
        return;
    }
    let _ = INTERRUPTED.set(berth_common::signals::stop_flag());
    let mut steps = Steps {
        n: 0,
        log: Vec::new(),
        t0: Instant::now(),
    };
    let result = run(&mut steps, if short { 2 } else { 3 });
    // Everything the demo made is dropped (torn down) before this point.
    println!("\nSummary");
    for (what, took, ok) in &steps.log {
        println!(
            "  {:>6} ms  {}  {what}",
            took.as_millis(),
            if *ok { "ok  " } else { "FAIL" }
        );
    }
    println!("  total {:.1} s", steps.t0.elapsed().as_secs_f64());
    match result {
        Ok(()) => println!("\nDemo done: everything it created has been removed."),
        Err(e) => {
            if interrupted() {
                println!("\nInterrupted: everything the demo created has been removed.");
            } else {
                eprintln!("\nberth-demo: {e}\n(everything the demo created has been removed)");
            }
            std::process::exit(1);
        }
    }
}

fn run(steps: &mut Steps, hosts: usize) -> Res<()> {
    steps.run(
        "checking privileges and kernel features (netns, veth, VXLAN, loop devices)",
        preflight,
    )?;
    let dir = tempfile::Builder::new()
        .prefix("berth-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let ul = steps.run(
        "creating the underlay: a bridge in its own network namespace",
        || Underlay::try_create("bdul", "br-ul", None),
    )?;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=hosts {
        let node = steps.run(
            &format!("host {i}: network namespace on the underlay at 172.31.250.{i}"),
            || {
                let ns = Netns::try_create("bdh")?;
                let ip = format!("172.31.250.{i}");
                ul.try_attach(&ns, &format!("u{i}"), "eth0", &[&format!("{ip}/24")])?;
                let d = dir.path().join(format!("host{i}"));
                Ok(Node {
                    ns,
                    ip,
                    subnet_file: d.join("subnet.env"),
                    data_dir: d.join("data"),
                    _daemon: None,
                })
            },
        )?;
        nodes.push(node);
    }
    let store = format!("dir:{}", dir.path().join("leases").display());
    for (i, n) in nodes.iter_mut().enumerate() {
        let subnet = steps.run(
            &format!(
                "host {}: starting berth-overlayd (embedded store), waiting for its subnet",
                i + 1
            ),
            || {
                let mut cmd = Command::new(bin_dir().join("berth-overlayd"));
                cmd.args([
                    "--node-name",
                    &format!("host{}", i + 1),
                    "--network",
                    "10.244.0.0/16",
                    "--iface",
                    "eth0",
                    "--store",
                    &store,
                ])
                .arg("--subnet-file")
                .arg(&n.subnet_file)
                .args(["--resync-interval", "2s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
                n._daemon = Some(Daemon(Some(
                    spawn_in_netns(n.ns.path(), cmd).map_err(|e| e.to_string())?,
                )));
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    if let Ok(t) = std::fs::read_to_string(&n.subnet_file) {
                        if let Some(s) = t.lines().find_map(|l| l.strip_prefix("BERTH_SUBNET=")) {
                            return Ok(s.to_string());
                        }
                    }
                    if Instant::now() > deadline {
                        return Err("no subnet file after 15 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            },
        )?;
        println!("    host {} leased {subnet} (underlay {})", i + 1, n.ip);
    }
    let mut pods: Vec<(Netns, String)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let pod = steps.run(&format!("host {}: attaching a pod with berth-overlay (CNI ADD)", i + 1), || {
            let pod = Netns::try_create("bdpod")?;
            let conf = json!({"cniVersion":"1.1.0","name":"demo","type":"berth-overlay","subnetFile":n.subnet_file,"dataDir":n.data_dir});
            let out = CniRun::new(bin_dir().join("berth-overlay"))
                .in_netns(n.ns.path())
                .command("ADD")
                .container_id(pod.name())
                .netns(&pod.path_str())
                .ifname("eth0")
                .cni_path(bin_dir())
                .stdin(conf_bytes(&conf))
                .run()
                .map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(out.describe());
            }
            let addr = out.addresses().into_iter().next().ok_or("no address in the result")?;
            Ok((pod, berth_tests::strip_prefix_len(&addr).to_string()))
        })?;
        println!("    pod on host {} has {}", i + 1, pod.1);
        pods.push(pod);
    }
    steps.run(
        &format!(
            "every pod pings every other pod across hosts ({} pairs)",
            pods.len() * (pods.len() - 1)
        ),
        || {
            for (i, (from, _)) in pods.iter().enumerate() {
                for (j, (_, to)) in pods.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let t = Instant::now();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !ping(from, to) {
                        if Instant::now() > deadline {
                            return Err(format!("pod on host {} cannot reach {to}", i + 1));
                        }
                    }
                    println!(
                        "    host {} pod -> {to} (host {}): reply in {} ms",
                        i + 1,
                        j + 1,
                        t.elapsed().as_millis()
                    );
                }
            }
            Ok(())
        },
    )?;

    // Storage.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let csi_dir = dir.path().join("csi");
    std::fs::create_dir_all(&csi_dir).map_err(|e| e.to_string())?;
    let socket = csi_dir.join("csi.sock");
    let _csi = steps.run(
        "starting berth-csi (local-disk backend) on host 1's unix socket",
        || {
            let log =
                std::fs::File::create(csi_dir.join("berth-csi.log")).map_err(|e| e.to_string())?;
            let child = Command::new(bin_dir().join("berth-csi"))
                .arg("--endpoint")
                .arg(format!("unix://{}", socket.display()))
                .args(["--node-id", "host1"])
                .arg("--state-dir")
                .arg(csi_dir.join("state"))
                .arg("--local-pool")
                .arg(csi_dir.join("pool"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting berth-csi: {e}"))?;
            Ok(Daemon(Some(child)))
        },
    )?;
    let pod_dir = csi_dir.join("pods/pod1/volumes/data");
    let pod1 = &pods[0].0;
    let result = rt.block_on(storage(steps, &socket, &csi_dir, &pod_dir, pod1));
    // Tear the volumes down even when a step failed half way.
    rt.block_on(storage_cleanup(&socket, &csi_dir));
    result
}

struct Vol {
    id: String,
    staging: String,
    target: String,
}

async fn storage(
    steps: &mut Steps,
    socket: &Path,
    csi_dir: &Path,
    pod_dir: &Path,
    pod: &Netns,
) -> Res<()> {
    let ch = csi_channel(socket).await?;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let node_id = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .node_id;
    let mut timed = |what: &str, t: Instant, ok: bool| {
        steps.n += 1;
        println!(
            "[{}] {what}\n    {} {} ms",
            steps.n,
            if ok { "ok," } else { "FAILED after" },
            t.elapsed().as_millis()
        );
        steps.log.push((what.to_string(), t.elapsed(), ok));
    };
    let mut vols: Vec<Vol> = Vec::new();
    async fn provision(
        ctl: &mut ControllerClient<Channel>,
        node: &mut NodeClient<Channel>,
        node_id: &str,
        name: &str,
        source: Option<VolumeContentSource>,
        staging: &Path,
        target: &Path,
    ) -> Res<Vol> {
        let v = ctl
            .create_volume(CreateVolumeRequest {
                name: name.into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![mount_cap()],
                volume_content_source: source,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("CreateVolume: {e}"))?
            .into_inner()
            .volume
            .ok_or("CreateVolume returned no volume")?;
        let pc = ctl
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                node_id: node_id.into(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("ControllerPublishVolume: {e}"))?
            .into_inner()
            .publish_context;
        std::fs::create_dir_all(staging).map_err(|e| e.to_string())?;
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap()),
            publish_context: pc.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("NodeStageVolume: {e}"))?;
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_cap()),
            publish_context: pc,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("NodePublishVolume: {e}"))?;
        Ok(Vol {
            id: v.volume_id,
            staging: staging.display().to_string(),
            target: target.display().to_string(),
        })
    }
    let t = Instant::now();
    let v = provision(
        &mut ctl,
        &mut node,
        &node_id,
        "demo-data",
        None,
        &csi_dir.join("staging/data"),
        pod_dir,
    )
    .await;
    timed("berth-csi: CreateVolume 64 MiB ext4, ControllerPublish, NodeStage (loop device + mkfs + mount), NodePublish into pod 1's directory", t, v.is_ok());
    let v = v?;
    println!("    volume {} is mounted at {}", v.id, v.target);
    vols.push(v);
    let path = pod_dir.join("hello.txt");
    let t = Instant::now();
    let script = format!(
        "echo 'written by pod 1 before the snapshot' > {p} && sync && cat {p}",
        p = path.display()
    );
    let out = pod
        .output(&["sh", "-c", &script])
        .map_err(|e| e.to_string())?;
    let ok = out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("before the snapshot");
    timed("pod 1 writes a file on the volume and reads it back", t, ok);
    if !ok {
        return Err(format!(
            "pod write/read failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!(
        "    pod 1 read: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let t = Instant::now();
    let snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: vols[0].id.clone(),
            name: "demo-snap".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("CreateSnapshot: {e}"));
    timed("berth-csi: CreateSnapshot of the volume", t, snap.is_ok());
    let snap_id = snap?
        .into_inner()
        .snapshot
        .ok_or("no snapshot")?
        .snapshot_id;
    let later = format!("echo 'written after the snapshot' > {}", path.display());
    pod.output(&["sh", "-c", &later])
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let source = VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap_id.clone(),
            },
        )),
    };
    let restored = provision(
        &mut ctl,
        &mut node,
        &node_id,
        "demo-restored",
        Some(source),
        &csi_dir.join("staging/restored"),
        &csi_dir.join("pods/pod1/volumes/restored"),
    )
    .await;
    timed(
        "berth-csi: CreateVolume from the snapshot, stage and publish it",
        t,
        restored.is_ok(),
    );
    let restored = restored?;
    let text = std::fs::read_to_string(Path::new(&restored.target).join("hello.txt"))
        .map_err(|e| e.to_string())?;
    vols.push(restored);
    let ok = text.contains("before the snapshot");
    println!("    restored volume holds: {}", text.trim());
    if !ok {
        return Err("the restored volume does not hold the snapshot's data".into());
    }
    let _ = ctl
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap_id,
            ..Default::default()
        })
        .await;
    let _ = std::fs::write(
        csi_dir.join("volumes.json"),
        serde_json::to_string(
            &vols
                .iter()
                .map(|v| json!({"id": v.id, "staging": v.staging, "target": v.target}))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default(),
    );
    Ok(())
}

/// Unpublishes, unstages and deletes every volume the demo created, even
/// after a failure (it lists what the driver knows).
async fn storage_cleanup(socket: &Path, csi_dir: &Path) {
    let Ok(ch) = csi_channel(socket).await else {
        return;
    };
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let node_id = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .map(|r| r.into_inner().node_id)
        .unwrap_or_default();
    let known: HashMap<&str, (PathBuf, PathBuf)> = HashMap::from([
        (
            "data",
            (
                csi_dir.join("staging/data"),
                csi_dir.join("pods/pod1/volumes/data"),
            ),
        ),
        (
            "restored",
            (
                csi_dir.join("staging/restored"),
                csi_dir.join("pods/pod1/volumes/restored"),
            ),
        ),
    ]);
    let vols = ctl
        .list_volumes(proto::v1::ListVolumesRequest::default())
        .await
        .map(|r| r.into_inner().entries)
        .unwrap_or_default();
    for e in vols {
        let Some(v) = e.volume else { continue };
        for (staging, target) in known.values() {
            let _ = node
                .node_unpublish_volume(NodeUnpublishVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    target_path: target.display().to_string(),
                })
                .await;
            let _ = node
                .node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    staging_target_path: staging.display().to_string(),
                })
                .await;
        }
        let _ = ctl
            .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                node_id: node_id.clone(),
                ..Default::default()
            })
            .await;
        let _ = ctl
            .delete_volume(DeleteVolumeRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            })
            .await;
    }
    if let Ok(snaps) = ctl
        .list_snapshots(proto::v1::ListSnapshotsRequest::default())
        .await
    {
        for e in snaps.into_inner().entries {
            if let Some(s) = e.snapshot {
                let _ = ctl
                    .delete_snapshot(DeleteSnapshotRequest {
                        snapshot_id: s.snapshot_id,
                        ..Default::default()
                    })
                    .await;
            }
        }
    }
}
