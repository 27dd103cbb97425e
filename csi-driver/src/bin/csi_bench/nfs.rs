//! `berth-csi-bench --nfs`: the NFS backend's controller against
//! nfs-ganesha in a scratch network namespace (the same fixture the tests
//! use). Figures: CreateVolume + DeleteVolume of an empty volume, and clone,
//! snapshot and restore of a tree of files, each beside the same work done
//! by local tools (`cp -a`, `tar -c`, `tar -x`) on the export's own
//! filesystem, which needs no network: the ratio is the price of doing it
//! over NFS from user space.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1::controller_client::ControllerClient;
use proto::v1::volume_capability::{access_mode, AccessMode, AccessType, MountVolume};
use proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use proto::v1::*;
use tonic::transport::Channel;

use super::nfs_server::NfsServer;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn params(srv: &NfsServer) -> HashMap<String, String> {
    [
        ("backend", "nfs"),
        ("server", srv.addr()),
        ("share", srv.share()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn req(srv: &NfsServer, name: &str, source: Option<SourceType>) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        parameters: params(srv),
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    }
}

fn timed_cmd(cmd: &mut Command) -> Res<Duration> {
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).status()?;
    if !st.success() {
        return Err(format!("{cmd:?} failed: {st}").into());
    }
    Ok(t.elapsed())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Runs the NFS figures and prints them.
pub async fn run(dir: &Path, runs: usize, files: usize, file_mib: usize) -> Res<()> {
    let srv = NfsServer::start()?;
    let bin = std::env::current_exe()?.with_file_name("berth-csi");
    let socket = dir.join("csi.sock");
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--endpoint=unix://{}", socket.display()))
        .args(["--node-id", "bench", "--mode", "controller"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("BERTH_CSI_LOG", "warn")
        .stdin(Stdio::null());
    // Killed with the server's namespace when `srv` drops.
    let _child = srv.spawn_in_netns(&mut cmd)?;
    let ch: Channel = super::connect(&socket).await?;
    let mut ctl = ControllerClient::new(ch);
    let export = srv.export_dir().to_path_buf();

    let mut cycle = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let v = ctl
            .create_volume(req(&srv, &format!("empty-{i}"), None))
            .await?
            .into_inner()
            .volume
            .ok_or("no volume")?;
        ctl.delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id,
            ..Default::default()
        })
        .await?;
        cycle.push(t.elapsed());
    }
    println!("nfs create+delete (empty volume): {}", super::stats(cycle));

    let src = ctl
        .create_volume(req(&srv, "src", None))
        .await?
        .into_inner()
        .volume
        .ok_or("no volume")?;
    let block: Vec<u8> = (0..(file_mib << 20)).map(|i| (i % 251) as u8).collect();
    for i in 0..files {
        std::fs::create_dir_all(export.join(format!("src/d{}", i % 8)))?;
        std::fs::write(export.join(format!("src/d{}/f{i}", i % 8)), &block)?;
    }
    let bytes = (files * (file_mib << 20)) as u64;
    println!(
        "tree: {files} files of {file_mib} MiB in 8 directories ({} MiB)",
        bytes >> 20
    );

    let t = Instant::now();
    ctl.create_volume(req(
        &srv,
        "clone",
        Some(SourceType::Volume(VolumeSource {
            volume_id: src.volume_id.clone(),
        })),
    ))
    .await?;
    let clone = t.elapsed();
    let t = Instant::now();
    let snap = ctl
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: src.volume_id.clone(),
            name: "snap".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .snapshot
        .ok_or("no snapshot")?;
    let snapshot = t.elapsed();
    let t = Instant::now();
    ctl.create_volume(req(
        &srv,
        "restored",
        Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    ))
    .await?;
    let restore = t.elapsed();

    // The same work by local tools on the export's filesystem.
    let local_clone = timed_cmd(
        Command::new("cp")
            .arg("-a")
            .arg(export.join("src"))
            .arg(export.join("local-clone")),
    )?;
    let tarball = dir.join("local.tar");
    let local_snap = timed_cmd(
        Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(export.join("src"))
            .arg("."),
    )?;
    std::fs::create_dir_all(export.join("local-restore"))?;
    let local_restore = timed_cmd(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(export.join("local-restore")),
    )?;

    println!("| operation | berth-csi over NFS | local tool on the export's filesystem | ratio (ours / local time) |");
    println!("|---|---|---|---|");
    for (name, ours, local, tool) in [
        (
            "clone (CreateVolume from a volume)",
            clone,
            local_clone,
            "cp -a",
        ),
        (
            "snapshot (CreateSnapshot, tar archive)",
            snapshot,
            local_snap,
            "tar -c",
        ),
        (
            "restore (CreateVolume from the snapshot)",
            restore,
            local_restore,
            "tar -x",
        ),
    ] {
        println!(
            "| {name} | {:.0} ms, {:.0} MiB/s | {tool}: {:.0} ms, {:.0} MiB/s | {:.2} |",
            ours.as_secs_f64() * 1000.0,
            mbps(bytes, ours),
            local.as_secs_f64() * 1000.0,
            mbps(bytes, local),
            ours.as_secs_f64() / local.as_secs_f64()
        );
    }
    Ok(())
}
