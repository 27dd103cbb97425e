//! Test harness: starts the real `berth-csi` binary on a unix socket in a
//! private directory and talks to it with the generated tonic clients.
//! Everything a test makes (mounts, loop devices, files, the process) is
//! removed by `Drop`, also when the test fails.

#![allow(dead_code)]
// Test support: a fixture that cannot be set up fails the test, like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod guest;
pub mod nfs_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use csi_driver::backend::local::loopdev;
use csi_driver::mount;
use hyper_util::rt::TokioIo;
use proto::v1::controller_client::ControllerClient;
use proto::v1::identity_client::IdentityClient;
use proto::v1::node_client::NodeClient;
use proto::v1::volume_capability::{access_mode, AccessMode, AccessType, BlockVolume, MountVolume};
use proto::v1::*;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

pub const MIB: i64 = 1 << 20;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running driver in its own directory.
pub struct Harness {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub pool: PathBuf,
    pub node_id: String,
    pub extra_args: Vec<String>,
    /// Network namespace the driver runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    child: Option<Child>,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

pub fn require_root() -> bool {
    if netns_fixture::is_root() {
        return true;
    }
    eprintln!("skipping: needs root (loop devices and mounts)");
    false
}

fn spawn(h: &Harness) -> Child {
    let bin = env!("CARGO_BIN_EXE_berth-csi");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.dir.join("driver.log"))
        .expect("driver log");
    let mut cmd = match &h.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.as_str(), bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--endpoint")
        .arg(format!("unix://{}", h.socket.display()))
        .arg("--node-id")
        .arg(&h.node_id)
        .arg("--state-dir")
        .arg(&h.state)
        .arg("--local-pool")
        .arg(&h.pool)
        .args(&h.extra_args)
        .env("BERTH_CSI_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting berth-csi")
}

pub async fn connect(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "berth-csi did not start listening on {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .expect("connecting to berth-csi")
}

impl Harness {
    /// Starts a driver with default flags.
    pub async fn start() -> Harness {
        Self::start_with(&[]).await
    }

    /// Starts a driver with extra flags.
    pub async fn start_with(extra: &[&str]) -> Harness {
        Self::start_in(None, extra).await
    }

    /// Starts a driver inside network namespace `netns` (so it reaches
    /// servers there), talking to it over its unix socket as usual.
    pub async fn start_in(netns: Option<&str>, extra: &[&str]) -> Harness {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/berth-csi-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("csi.sock");
        let state = dir.join("state");
        let pool = dir.join("pool");
        let mut h = Harness {
            dir,
            socket: socket.clone(),
            state,
            pool,
            node_id: format!("node-{n}"),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            netns: netns.map(str::to_string),
            child: None,
            identity: IdentityClient::new(Channel::from_static("http://[::]:1").connect_lazy()),
            controller: ControllerClient::new(Channel::from_static("http://[::]:1").connect_lazy()),
            node: NodeClient::new(Channel::from_static("http://[::]:1").connect_lazy()),
        };
        h.child = Some(spawn(&h));
        h.reconnect().await;
        h
    }

    async fn reconnect(&mut self) {
        let ch = connect(&self.socket).await;
        self.identity = IdentityClient::new(ch.clone());
        self.controller = ControllerClient::new(ch.clone());
        self.node = NodeClient::new(ch);
    }

    /// A path inside the test directory (for staging and targets).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn path_s(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// Sends SIGTERM and waits; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a crash.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the driver again on the same state, pool and socket.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.child = Some(spawn(self));
        self.reconnect().await;
    }

    /// The driver's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("driver.log")).unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.crash();
        // Unmount everything under the test directory, deepest first.
        for _ in 0..4 {
            let mut ms: Vec<PathBuf> = mount::mounts()
                .into_iter()
                .map(|m| m.target)
                .filter(|t| t.starts_with(&self.dir))
                .collect();
            if ms.is_empty() {
                break;
            }
            ms.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for m in ms {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for (dev, backing) in loopdev::all_attached() {
            if backing.starts_with(&self.dir) {
                let _ = loopdev::detach(&dev, &backing);
            }
        }
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---- request builders

pub fn mount_cap(fs: &str) -> VolumeCapability {
    mount_cap_mode(fs, access_mode::Mode::SingleNodeWriter)
}

pub fn mount_cap_mode(fs: &str, mode: access_mode::Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn create_req(name: &str, size: i64, cap: VolumeCapability) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}

pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Asserts an error with `code` whose message mentions `needle`.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, Status>,
    c: Code,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("expected {c:?} mentioning {needle:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), c, "message: {}", s.message());
            assert!(
                s.message().contains(needle),
                "{:?} does not mention {needle:?}",
                s.message()
            );
        }
    }
}

impl Harness {
    pub async fn create(&mut self, name: &str, size: i64, cap: VolumeCapability) -> Volume {
        self.controller
            .create_volume(create_req(name, size, cap))
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .unwrap()
    }

    pub async fn stage(
        &mut self,
        vol: &str,
        staging: &str,
        cap: VolumeCapability,
    ) -> Result<(), Status> {
        self.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.into(),
                volume_capability: Some(cap),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn publish(
        &mut self,
        vol: &str,
        staging: &str,
        target: &str,
        cap: VolumeCapability,
        readonly: bool,
    ) -> Result<(), Status> {
        self.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.into(),
                target_path: target.into(),
                volume_capability: Some(cap),
                readonly,
                publish_context: HashMap::new(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn unpublish(&mut self, vol: &str, target: &str) -> Result<(), Status> {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: vol.into(),
                target_path: target.into(),
            })
            .await
            .map(|_| ())
    }

    pub async fn unstage(&mut self, vol: &str, staging: &str) -> Result<(), Status> {
        self.node
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.into(),
            })
            .await
            .map(|_| ())
    }

    pub async fn delete(&mut self, vol: &str) -> Result<(), Status> {
        self.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: vol.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    pub async fn node_info(&mut self) -> NodeGetInfoResponse {
        self.node
            .node_get_info(NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}
