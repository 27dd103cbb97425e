//! A gRPC C-core client (Python grpcio, pinned in tests/tools/versions.txt
//! and installed by scripts/test-peers.sh) runs a whole volume lifecycle
//! against the real driver over its unix socket. C-core sends the socket
//! path as the HTTP/2 `:authority`; without berth-csi's rewrite of it every
//! call is reset with PROTOCOL_ERROR.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn python() -> PathBuf {
    // The venv scripts/test-peers.sh makes holds grpcio and grpcio-tools.
    netns_fixture::test_peer("venv/bin/python")
}

fn lifecycle(endpoint: &str, h: &Harness) -> std::process::Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = h.path("python");
    std::fs::create_dir_all(&work).unwrap();
    Command::new(python())
        .arg(root.join("tests/python/csi_lifecycle.py"))
        .arg(endpoint)
        .arg(root.join("proto/proto"))
        .arg(&work)
        .output()
        .expect("running the Python client")
}

#[tokio::test]
#[ignore = "conformance: scripts/test.sh runs it as its own step"]
async fn grpcio_client_runs_a_whole_volume_lifecycle() {
    if !require_root() {
        return;
    }
    let h = Harness::start().await;
    // Both spellings C-core accepts for a unix socket.
    for endpoint in [
        format!("unix://{}", h.socket.display()),
        format!("unix:{}", h.socket.display()),
    ] {
        let out = lifecycle(&endpoint, &h);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("--- {endpoint}\n{text}");
        assert!(
            out.status.success() && text.contains("lifecycle: ok"),
            "the grpcio client failed on {endpoint}:\n{text}\ndriver log:\n{}",
            h.log()
        );
    }
}
