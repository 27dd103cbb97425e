//! Kubelet plugin registration (`--kubelet-registration-dir`): the real
//! driver is asked the questions the kubelet asks, over the registration
//! socket, with the generated client, and withdraws the socket on SIGTERM.
//! The tests that start a serving driver need root (like the rest of the
//! harness) and skip otherwise; the flag checks need nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hyper_util::rt::TokioIo;
use proto::pluginregistration::registration_client::RegistrationClient;
use proto::pluginregistration::{InfoRequest, RegistrationStatus};
use proto::v1::node_client::NodeClient;
use proto::v1::{GetPluginInfoRequest, NodeGetInfoRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const REG_SOCKET: &str = "csi.berth.dev-reg.sock";

/// Waits (bounded) for `path` to be a socket.
async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dials a unix socket the way the kubelet does: grpc-go over a plain path,
/// with "localhost" as the :authority.
async fn dial_like_kubelet(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .expect("dialing the socket")
}

fn reg_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-reg-")
        .tempdir()
        .expect("registration dir")
}

#[tokio::test]
async fn registers_like_the_kubelet_expects_and_withdraws_on_sigterm() {
    if !require_root() {
        return;
    }
    let reg = reg_dir();
    let reg_socket = reg.path().join(REG_SOCKET);
    // A socket left by a killed run: nothing answers on it, so it is replaced.
    drop(std::os::unix::net::UnixListener::bind(&reg_socket).unwrap());
    assert!(reg_socket.exists());

    let mut h =
        Harness::start_with(&["--kubelet-registration-dir", reg.path().to_str().unwrap()]).await;
    wait_for_socket(&reg_socket).await;
    let mut client = RegistrationClient::new(dial_like_kubelet(&reg_socket).await);

    // GetInfo: the four fields the kubelet checks.
    let info = client
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    let identity_name = h
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .name;
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "csi.berth.dev");
    assert_eq!(
        info.name, identity_name,
        "same name as Identity/GetPluginInfo"
    );
    assert_eq!(PathBuf::from(&info.endpoint), h.socket);
    assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);

    // What the kubelet does next: dial that endpoint and ask for NodeGetInfo.
    let node_info = NodeClient::new(dial_like_kubelet(Path::new(&info.endpoint)).await)
        .node_get_info(NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo on the registered endpoint")
        .into_inner();
    assert_eq!(node_info.node_id, h.node_id);

    // NotifyRegistrationStatus, accepted and refused: both answered, both logged.
    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("NotifyRegistrationStatus(registered)");
    let refusal = "plugin csi.berth.dev: test refusal 7f3a";
    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: false,
            error: refusal.into(),
        })
        .await
        .expect("NotifyRegistrationStatus(refused)");
    let log = h.log();
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("registered with the kubelet")),
        "no info line for the registration:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(refusal)),
        "no error line with the kubelet's error text:\n{log}"
    );

    // SIGTERM: a clean exit, and the registration socket is gone (the kubelet
    // deregisters the plugin when it disappears).
    drop(client);
    assert_eq!(h.stop(), Some(0), "driver log:\n{}", h.log());
    assert!(
        !reg_socket.exists(),
        "{} is still there after SIGTERM",
        reg_socket.display()
    );
    assert!(!h.socket.exists(), "the CSI socket is still there");
}

#[tokio::test]
async fn registration_endpoint_flag_is_what_getinfo_sends() {
    if !require_root() {
        return;
    }
    let reg = reg_dir();
    let reg_socket = reg.path().join(REG_SOCKET);
    // The path the kubelet would see if the socket's directory were mounted
    // elsewhere in its mount namespace.
    let seen = "/var/lib/kubelet/plugins/csi.berth.dev/csi.sock";
    let mut h = Harness::start_with(&[
        "--mode",
        "node",
        "--kubelet-registration-dir",
        reg.path().to_str().unwrap(),
        "--kubelet-registration-endpoint",
        seen,
    ])
    .await;
    wait_for_socket(&reg_socket).await;
    let info = RegistrationClient::new(dial_like_kubelet(&reg_socket).await)
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.endpoint, seen);
    assert_eq!(h.stop(), Some(0), "driver log:\n{}", h.log());
    assert!(!reg_socket.exists());
}

#[test]
fn a_registration_socket_in_use_is_not_taken_over() {
    if !require_root() {
        return;
    }
    let reg = reg_dir();
    let reg_socket = reg.path().join(REG_SOCKET);
    // Someone (a node-driver-registrar) answers there: connects succeed.
    let _live = std::os::unix::net::UnixListener::bind(&reg_socket).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let csi_socket = scratch.path().join("csi.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-csi"))
        .arg("--endpoint")
        .arg(format!("unix://{}", csi_socket.display()))
        .args(["--node-id", "n1", "--state-dir"])
        .arg(scratch.path().join("state"))
        .arg("--kubelet-registration-dir")
        .arg(reg.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting berth-csi");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berth-csi kept running next to a live registration socket");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another process is serving on") && stderr.contains(REG_SOCKET),
        "{stderr}"
    );
    assert!(
        reg_socket.exists(),
        "the other process's socket was removed"
    );
    assert!(!csi_socket.exists(), "the CSI socket was left behind");
}

/// Runs berth-csi with `args` (plus a node id and a state dir that must stay
/// untouched) and returns (exit code, stderr).
fn run_refused(args: &[&str]) -> (Option<i32>, String) {
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_berth-csi"))
        .args(["--node-id", "n1", "--state-dir"])
        .arg(&state)
        .args(args)
        .output()
        .expect("running berth-csi");
    assert!(!state.exists(), "a refused start created its state dir");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn registration_dir_in_controller_mode_exits_2_naming_the_flag() {
    let reg = reg_dir();
    let socket = reg.path().join("csi.sock");
    let (code, stderr) = run_refused(&[
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "--mode",
        "controller",
        "--kubelet-registration-dir",
        reg.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--kubelet-registration-dir"), "{stderr}");
    assert!(stderr.contains("--mode"), "{stderr}");
    assert!(!reg.path().join(REG_SOCKET).exists());
    assert!(!socket.exists());
}

#[test]
fn registration_with_a_tcp_endpoint_needs_the_endpoint_flag() {
    let reg = reg_dir();
    let (code, stderr) = run_refused(&[
        "--endpoint",
        "tcp://127.0.0.1:1",
        "--kubelet-registration-dir",
        reg.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--kubelet-registration-endpoint"),
        "{stderr}"
    );
}

#[test]
fn relative_registration_endpoint_exits_2() {
    let reg = reg_dir();
    let (code, stderr) = run_refused(&[
        "--kubelet-registration-dir",
        reg.path().to_str().unwrap(),
        "--kubelet-registration-endpoint",
        "csi.sock",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--kubelet-registration-endpoint"),
        "{stderr}"
    );
}
