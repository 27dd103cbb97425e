//! `berth-csi-bench`: prints latency figures of the real driver (never a
//! timed test). Starts `berth-csi` (next to this binary) in a scratch
//! directory, then measures
//!   1. the whole lifecycle of a 1 GiB ext4 volume (create, controller
//!      publish, stage, publish, unpublish, unstage, controller unpublish,
//!      delete), `--runs` times, and prints min / median / max;
//!   2. `--concurrent` CreateVolume calls at once (wall time, errors).
//!
//! With `--nfs`, the NFS backend instead (see `csi_bench/nfs.rs`).
//!
//! Everything it made is removed at the end, also on failure. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "csi_bench/nfs.rs"]
mod nfs;
// The NFS server fixture the tests use: ganesha + rpcbind in a scratch
// network namespace, removed on drop.
#[allow(dead_code)]
#[path = "../../tests/common/nfs_server.rs"]
mod nfs_server;
use csi_driver::backend::local::loopdev;
use csi_driver::mount;
use hyper_util::rt::TokioIo;
use proto::v1::controller_client::ControllerClient;
use proto::v1::node_client::NodeClient;
use proto::v1::volume_capability::{access_mode, AccessMode, AccessType, MountVolume};
use proto::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// Benchmarks berth-csi on this machine.
#[derive(Parser, Debug)]
#[command(name = "berth-csi-bench", version)]
struct Args {
    /// Lifecycle runs (the median is reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// CreateVolume calls sent at once.
    #[arg(long, default_value_t = 50)]
    concurrent: usize,
    /// Volume size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: i64,
    /// Filesystem for the lifecycle volume.
    #[arg(long, default_value = "ext4")]
    fs_type: String,
    /// Benchmark the NFS backend against nfs-ganesha in a scratch netns.
    #[arg(long)]
    nfs: bool,
    /// With --nfs: files in the tree that is cloned, snapshotted, restored.
    #[arg(long, default_value_t = 64)]
    nfs_files: usize,
    /// With --nfs: size of each file in MiB.
    #[arg(long, default_value_t = 1)]
    nfs_file_mib: usize,
    /// Scratch directory (removed at the end).
    #[arg(long, default_value = "/tmp/berth-csi-bench")]
    dir: PathBuf,
}

struct Scratch {
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut ms: Vec<PathBuf> = mount::mounts()
            .into_iter()
            .map(|m| m.target)
            .filter(|t| t.starts_with(&self.dir))
            .collect();
        ms.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in ms {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for (dev, backing) in loopdev::all_attached() {
            if backing.starts_with(&self.dir) {
                let _ = loopdev::detach(&dev, &backing);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(socket: &Path) -> Result<Channel, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            return Err("berth-csi did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = socket.to_path_buf();
    Ok(Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await?)
}

fn cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.1} ms, median {:.1} ms, max {:.1} ms ({} runs)",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !csi_driver::driver::running_as_root() {
        return Err("run as root (loop devices and mounts)".into());
    }
    let bin = std::env::current_exe()?.with_file_name("berth-csi");
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let mut scratch = Scratch {
        dir: args.dir.clone(),
        child: None,
    };
    if args.nfs {
        return nfs::run(&args.dir, args.runs, args.nfs_files, args.nfs_file_mib).await;
    }
    let socket = args.dir.join("csi.sock");
    scratch.child = Some(
        Command::new(&bin)
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .args(["--node-id", "bench"])
            .arg("--state-dir")
            .arg(args.dir.join("state"))
            .env("BERTH_CSI_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?,
    );
    let ch = connect(&socket).await?;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let size = args.size_mib << 20;
    let staging = args.dir.join("staging").to_string_lossy().into_owned();
    let target = args.dir.join("pod/target").to_string_lossy().into_owned();
    std::fs::create_dir_all(args.dir.join("pod"))?;

    let mut runs = Vec::new();
    for i in 0..args.runs {
        let t = Instant::now();
        let vol = ctl
            .create_volume(CreateVolumeRequest {
                name: format!("bench-{i}"),
                capacity_range: Some(CapacityRange {
                    required_bytes: size,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap(&args.fs_type)],
                ..Default::default()
            })
            .await?
            .into_inner()
            .volume
            .ok_or("no volume")?;
        let id = vol.volume_id;
        let ctx = ctl
            .controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: "bench".into(),
                volume_capability: Some(cap(&args.fs_type)),
                ..Default::default()
            })
            .await?
            .into_inner()
            .publish_context;
        node.node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.clone(),
            publish_context: ctx.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(cap(&args.fs_type)),
            ..Default::default()
        })
        .await?;
        node.node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.clone(),
            publish_context: ctx,
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(cap(&args.fs_type)),
            ..Default::default()
        })
        .await?;
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.clone(),
        })
        .await?;
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
        })
        .await?;
        ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "bench".into(),
            ..Default::default()
        })
        .await?;
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await?;
        runs.push(t.elapsed());
    }
    println!(
        "lifecycle of a {} MiB {} volume (create, controller publish, stage, publish, unpublish, unstage, controller unpublish, delete): {}",
        args.size_mib,
        args.fs_type,
        stats(runs)
    );

    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.concurrent {
        let mut c = ctl.clone();
        tasks.push(tokio::spawn(async move {
            let s = Instant::now();
            let r = c
                .create_volume(CreateVolumeRequest {
                    name: format!("concurrent-{i}"),
                    capacity_range: Some(CapacityRange {
                        required_bytes: size,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![cap("")],
                    ..Default::default()
                })
                .await;
            (
                r.map(|r| {
                    r.into_inner()
                        .volume
                        .map(|v| v.volume_id)
                        .unwrap_or_default()
                }),
                s.elapsed(),
            )
        }));
    }
    let mut ids = Vec::new();
    let mut each = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (r, d) = task.await?;
        each.push(d);
        match r {
            Ok(id) => ids.push(id),
            Err(s) => {
                errors += 1;
                eprintln!("CreateVolume failed: {:?} {}", s.code(), s.message());
            }
        }
    }
    let wall = t.elapsed();
    println!(
        "{} concurrent CreateVolume ({} MiB): wall {:.1} ms, {} errors; per call {}",
        args.concurrent,
        args.size_mib,
        wall.as_secs_f64() * 1000.0,
        errors,
        stats(each)
    );
    for id in ids {
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await?;
    }
    drop(scratch);
    Ok(())
}
