//! Metrics and health are scraped over HTTP while the real driver serves
//! calls: RPC counters by method and code, volumes and bytes provisioned.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::{Read, Write};

use common::*;

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[tokio::test]
async fn rpc_counts_volumes_and_health_are_scraped() {
    if !require_root() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut h = Harness::start_with(&["--metrics-addr", &addr]).await;
    h.create("m1", 64 * MIB, mount_cap("")).await;
    h.create("m2", 32 * MIB, mount_cap("")).await;
    let bad = h
        .controller
        .create_volume(proto::v1::CreateVolumeRequest::default())
        .await;
    assert!(bad.is_err());
    let m = get(&addr, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("berth_csi_rpc_total{method=\"Controller/CreateVolume\",code=\"OK\"} 2"),
        "{m}"
    );
    assert!(
        m.contains(
            "berth_csi_rpc_total{method=\"Controller/CreateVolume\",code=\"InvalidArgument\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("berth_csi_rpc_duration_seconds_count{method=\"Controller/CreateVolume\",code=\"OK\"} 2"), "{m}");
    assert!(m.contains("berth_csi_volumes 2"), "{m}");
    assert!(
        m.contains(&format!("berth_csi_volume_bytes_provisioned {}", 96 * MIB)),
        "{m}"
    );
    assert!(get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
}
