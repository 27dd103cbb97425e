//! csi-sanity (kubernetes-csi/csi-test) against the real `berth-csi`: the
//! whole suite on the local backend with the newest csi-sanity and the one
//! before it, and the Controller specs on the NFS backend against
//! nfs-ganesha in a test network namespace. Each run gets a fresh state
//! directory and pool (csi-sanity's ListVolumes count test expects none
//! but its own volumes).
//!
//! The tests are `#[ignore]`d: `scripts/test.sh` runs them as their own
//! step (`cargo test --release -p csi-driver --test sanity -- --ignored
//! --nocapture --test-threads=1`). The binaries come from
//! `scripts/test-peers.sh` (pinned in tests/tools/versions.txt) into
//! `$BERTH_TOOLS_DIR/bin` (default `/var/cache/berth-tools`); a missing
//! binary fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::nfs_server::NfsServer;
use common::*;

/// Fewest specs the full local run must execute (the floor).
const LOCAL_MIN_SPECS: u32 = 76;

/// The counts of ginkgo's summary.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    ran: u32,
    total: u32,
    passed: u32,
    failed: u32,
    pending: u32,
    skipped: u32,
}

/// Parses ginkgo's "Ran N of M Specs ..." and
/// "... N Passed | N Failed | N Pending | N Skipped" lines.
fn parse_summary(out: &str) -> Option<Summary> {
    let mut s = Summary::default();
    let ran = out.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("Ran ")?;
        let mut w = rest.split_whitespace();
        let ran = w.next()?.parse().ok()?;
        (w.next()? == "of").then_some(())?;
        let total = w.next()?.parse().ok()?;
        Some((ran, total))
    })?;
    (s.ran, s.total) = ran;
    let counts = out
        .lines()
        .rev()
        .find(|l| l.contains(" Passed | ") && l.contains(" Skipped"))?;
    let counts = counts.rsplit("-- ").next()?;
    for part in counts.split('|') {
        let mut w = part.split_whitespace();
        let n: u32 = w.next()?.parse().ok()?;
        match w.next()? {
            "Passed" => s.passed = n,
            "Failed" => s.failed = n,
            "Pending" => s.pending = n,
            "Skipped" => s.skipped = n,
            _ => return None,
        }
    }
    Some(s)
}

/// `$BERTH_TOOLS_DIR/bin/<name>`; panics (the test fails) when missing.
fn sanity_binary(name: &str) -> PathBuf {
    netns_fixture::test_peer(&format!("bin/{name}"))
}

/// Runs csi-sanity `bin` against the driver of `h` with `args` and returns
/// its summary, after printing the output and the counts.
fn run_sanity(label: &str, bin: &Path, h: &Harness, args: &[String]) -> Summary {
    let out_file = h.path(&format!("sanity-{label}.log"));
    let log = std::fs::File::create(&out_file).unwrap();
    let status = Command::new(bin)
        .arg(format!("--csi.endpoint=unix://{}", h.socket.display()))
        .arg(format!("--csi.stagingdir={}", h.path_s("sanity-staging")))
        .arg(format!("--csi.mountdir={}", h.path_s("sanity-target")))
        .arg("--ginkgo.no-color")
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("running csi-sanity");
    let out = std::fs::read_to_string(&out_file).unwrap_or_default();
    println!("{out}");
    let summary = parse_summary(&out).unwrap_or_else(|| {
        panic!(
            "{label}: no ginkgo summary in the output (exit {status})\ndriver log:\n{}",
            h.log()
        )
    });
    println!(
        "csi-sanity {label}: ran {} of {} specs: {} passed, {} failed, {} pending, {} skipped",
        summary.ran,
        summary.total,
        summary.passed,
        summary.failed,
        summary.pending,
        summary.skipped
    );
    if summary.failed > 0 || !status.success() {
        let failures: Vec<&str> = out.lines().filter(|l| l.contains("[FAIL]")).collect();
        panic!(
            "{label}: {} specs failed (exit {status}):\n{}\n(full output above; driver log in {})",
            summary.failed,
            failures.join("\n"),
            h.dir.join("driver.log").display()
        );
    }
    summary
}

/// Attach limit the local runs give the driver, so csi-sanity's attach
/// limit spec runs too.
const ATTACH_LIMIT: &str = "2";

async fn local_run(label: &str, binary: &str, extra: &[&str]) {
    let bin = sanity_binary(binary);
    if !require_root() {
        panic!("csi-sanity needs root (loop devices and mounts)");
    }
    // xfs: csi-sanity grows a published volume, which ext4 cannot do
    // without CAP_SYS_RESOURCE.
    let h = Harness::start_with(&[
        "--default-fs-type",
        "xfs",
        "--max-volumes-per-node",
        ATTACH_LIMIT,
    ])
    .await;
    let mut args = vec!["--csi.testnodevolumeattachlimit".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let s = run_sanity(label, &bin, &h, &args);
    assert!(
        s.ran >= LOCAL_MIN_SPECS,
        "{label}: only {} specs ran, expected at least {LOCAL_MIN_SPECS}",
        s.ran
    );
}

#[tokio::test]
#[ignore = "csi-sanity: run by scripts/test.sh as its own step"]
async fn local_backend_newest_csi_sanity() {
    local_run("local-v5.6", "csi-sanity", &[]).await;
}

#[tokio::test]
#[ignore = "csi-sanity: run by scripts/test.sh as its own step"]
async fn local_backend_csi_sanity_5_4() {
    // v5.4 predates GET_SNAPSHOT (CSI v1.12) and fails its capability
    // listing spec on any capability it does not know; that one spec is
    // left to v5.6 (and to tests/conformance.rs, which checks the list).
    local_run(
        "local-v5.4",
        "csi-sanity-5.4",
        &["--ginkgo.skip=ControllerGetCapabilities should return appropriate capabilities"],
    )
    .await;
}

#[tokio::test]
#[ignore = "csi-sanity: run by scripts/test.sh as its own step"]
async fn nfs_backend_controller_specs() {
    let bin = sanity_binary("csi-sanity");
    if !require_root() {
        panic!("csi-sanity needs root (network namespaces)");
    }
    let srv = NfsServer::start().unwrap_or_else(|e| panic!("NFS server fixture: {e}"));
    let h = Harness::start_in(Some(srv.netns()), &[]).await;
    let params = h.path("nfs-params.yaml");
    std::fs::write(
        &params,
        format!(
            "backend: nfs\nserver: {}\nshare: {}\n",
            srv.addr(),
            srv.share()
        ),
    )
    .unwrap();
    let s = run_sanity(
        "nfs-controller",
        &bin,
        &h,
        &[
            "--ginkgo.focus=Controller".to_string(),
            format!("--csi.testvolumeparameters={}", params.display()),
        ],
    );
    assert!(s.ran > 0, "no Controller specs ran");
    // csi-sanity removed what it made: the export is left as found.
    let left: Vec<String> = std::fs::read_dir(srv.export_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left on the export: {left:?}");
}

#[test]
fn parses_ginkgo_summaries() {
    let out = "...\nRan 80 of 97 Specs in 41.2 seconds\nSUCCESS! -- 80 Passed | 0 Failed | 1 Pending | 16 Skipped\nPASS\n";
    assert_eq!(
        parse_summary(out),
        Some(Summary {
            ran: 80,
            total: 97,
            passed: 80,
            failed: 0,
            pending: 1,
            skipped: 16
        })
    );
    let out =
        "Ran 3 of 5 Specs in 1 seconds\nFAIL! -- 2 Passed | 1 Failed | 0 Pending | 2 Skipped\n";
    assert_eq!(parse_summary(out).map(|s| s.failed), Some(1));
    assert_eq!(parse_summary("no summary"), None);
}
