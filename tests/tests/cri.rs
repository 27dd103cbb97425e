//! Scenario "CRI": crictl drives containerd 1.6's CRI plugin (the path kubelet's pods take) with
//! Berth as the CNI.
//!
//! The harness is [`berth_tests::cri`] (shared with `berth-bench cri`): each test creates a host
//! netns and starts containerd with its CRI plugin in it, confined to a private mount namespace,
//! with one conflist and links to our plugins in its CNI `bin_dir`; the module doc there says
//! how, and what its guards remove. This file holds the scenarios: 20 sandboxes on
//! berth-bridge, pods surviving a containerd restart, and sandboxes on berth-overlay behind a
//! running berth-overlayd.
//!
//! Guards (also when a test fails): the [`Cri`] kills containerd, shims and containers by PID
//! and removes the pods' cgroup parents and any pod netns file that reached the real
//! /var/run/netns; berth-overlayd is stopped by PID; the test's netns are deleted; the
//! tempdirs are removed. Nothing is configured in the root netns.
//!
//! crictl is built by scripts/test-peers.sh into `$BERTH_TOOLS_DIR/bin` (default
//! /var/cache/berth-tools); a missing crictl fails the tests.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::bench::{median, ms};
use berth_tests::cri::{Cri, Sandbox, Stores};
use berth_tests::netns::*;
use berth_tests::{bin_dir, parse_cidr, read_allocations, store_path, v4_add, HOST_LOCAL_BIN};
use serde_json::{json, Value};

/// The network name of the bridge conflist.
const NETWORK: &str = "berthcri";
/// The bridge scenarios' pod subnet and gateway.
const SUBNET: &str = "10.97.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);

fn need_root() {
    assert!(
        netns_fixture::is_root(),
        "the CRI tests create namespaces and run containerd: run them as root"
    );
}

/// The harness returns `Err` with the whole story (command, output, containerd's log tail);
/// a test stops there with that message.
#[track_caller]
fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Our plugins by file name, in `bin_dir()`.
fn ours(names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|n| bin_dir().join(n)).collect()
}

/// Assert [`Cri::leftovers`] is (or soon becomes) empty.
fn assert_clean(
    host: &Host,
    cri: &Cri,
    (ipam_db, records): (&Path, &Path),
    uplinks: &[&str],
    context: &str,
) {
    let stores = Stores {
        ipam_db: Some(ipam_db),
        records: Some(records),
        reference_ipam: None,
        uplinks,
    };
    if let Err(e) = cri.wait_clean(host, &stores, Duration::from_secs(5)) {
        panic!("{context}: {e}");
    }
}

/// berth-bridge (gateway, masquerade) + berth-host-local on [`SUBNET`], stores under `dir`.
///
/// `cni_version` is 1.0.0 for containerd 1.6: its libcni fails every ADD of a 1.1.0
/// configuration with `unsupported CNI result version "1.1.0"`.
fn bridge_conflist(dir: &Path, cni_version: &str) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": NETWORK,
        "plugins": [{
            "type": BRIDGE_BIN,
            "bridge": "berth0",
            "isGateway": true,
            "ipMasq": true,
            "dataDir": dir.join("bridge-data").to_string_lossy(),
            "ipam": {
                "type": HOST_LOCAL_BIN,
                "dataDir": dir.join("ipam-data").to_string_lossy(),
                "ranges": [[{ "subnet": SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }],
    })
}

/// A directory for the plugins' stores that outlives the [`Cri`] (declared before it).
fn store_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-cri-stores-")
        .tempdir()
        .expect("tempdir")
}

fn assert_ping(cri: &Cri, cid: &str, addr: IpAddr, what: &str) {
    if let Err(e) = cri.ping_from(cid, addr) {
        panic!("{what}: {e}\n{}", cri.logs());
    }
}

/// The host netns reaches every pod.
fn assert_host_reaches(host: &Host, cri: &Cri, pods: &[Sandbox], what: &str) {
    for p in pods {
        assert!(
            host.ping(p.ip, 8),
            "{what}: host netns -> {} ({}) does not answer\n{}",
            p.name,
            p.ip,
            cri.logs()
        );
    }
}

/// `stopp` + `rmp` of every pod; the time each took.
fn stop_remove_all(cri: &Cri, pods: &[Sandbox]) -> Vec<Duration> {
    pods.iter().map(|p| ok(cri.stop_remove(p))).collect()
}

fn print_timings(test: &str, runp: &[Duration], stop_rm: &[Duration]) {
    let m = |v: &[Duration]| median(v).map(ms).unwrap_or_else(|| "-".into());
    println!(
        "cri-timings test={test} sandboxes={} runp_median_ms={} stopp_rmp_median_ms={}",
        runp.len(),
        m(runp),
        m(stop_rm)
    );
}

#[test]
fn cri_bridge_lifecycle_20_sandboxes() {
    need_root();
    let host = Host::new();
    let stores = store_dir();
    let cri = ok(Cri::start(
        &host,
        &bridge_conflist(stores.path(), "1.0.0"),
        &ours(&[BRIDGE_BIN, HOST_LOCAL_BIN]),
    ));
    let ipam_db = store_path(&stores.path().join("ipam-data"), NETWORK);
    let records = records_path(&stores.path().join("bridge-data"), NETWORK);

    let t_all = Instant::now();
    let mut pods = Vec::new();
    let mut runp_times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let pod = ok(cri.runp(&format!("pod{i}")));
        runp_times.push(t.elapsed());
        pods.push(pod);
    }
    let ips: HashSet<IpAddr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(
        ips.len(),
        20,
        "20 sandboxes got {} distinct addresses: {:?}",
        ips.len(),
        pods.iter().map(|p| p.ip).collect::<Vec<_>>()
    );
    for p in &pods {
        assert!(
            subnet_ok(SUBNET, p.ip),
            "{} got {} outside {SUBNET}",
            p.name,
            p.ip
        );
    }
    let held = read_allocations(&ipam_db).expect("read the IPAM store");
    assert_eq!(held.len(), 20, "IPAM store while 20 pods run: {held:?}");

    let c0 = ok(cri.container(&pods[0]));
    let c1 = ok(cri.container(&pods[1]));
    assert_ping(
        &cri,
        &c0,
        IpAddr::V4(GATEWAY),
        "container -> bridge gateway",
    );
    assert_ping(&cri, &c0, pods[1].ip, "container in pod0 -> pod1");
    assert_ping(&cri, &c1, pods[19].ip, "container in pod1 -> pod19");
    assert_host_reaches(&host, &cri, &pods, "bridge");

    let stop_times = stop_remove_all(&cri, &pods);
    assert_clean(
        &host,
        &cri,
        (&ipam_db, &records),
        &[],
        "after stopp + rmp of 20 sandboxes",
    );
    print_timings("bridge", &runp_times, &stop_times);
    println!(
        "cri bridge lifecycle: 20 sandboxes, 2 containers, pings, teardown in {:?}",
        t_all.elapsed()
    );
}

#[test]
fn cri_containerd_restart_keeps_pods() {
    need_root();
    let host = Host::new();
    let stores = store_dir();
    let mut cri = ok(Cri::start(
        &host,
        &bridge_conflist(stores.path(), "1.0.0"),
        &ours(&[BRIDGE_BIN, HOST_LOCAL_BIN]),
    ));
    let ipam_db = store_path(&stores.path().join("ipam-data"), NETWORK);
    let records = records_path(&stores.path().join("bridge-data"), NETWORK);

    let pods: Vec<Sandbox> = (0..3).map(|i| ok(cri.runp(&format!("pod{i}")))).collect();
    let ctrs: Vec<String> = pods.iter().map(|p| ok(cri.container(p))).collect();
    assert_ping(
        &cri,
        &ctrs[0],
        pods[1].ip,
        "before the restart: pod0 -> pod1",
    );

    ok(cri.restart());

    for (p, c) in pods.iter().zip(&ctrs) {
        let v = ok(cri.inspectp(&p.id));
        assert_eq!(
            v["status"]["state"],
            json!("SANDBOX_READY"),
            "{} after the restart: {}\n{}",
            p.name,
            v["status"],
            cri.logs()
        );
        assert_eq!(
            v["status"]["network"]["ip"].as_str(),
            Some(p.ip.to_string().as_str()),
            "{} changed its address across the containerd restart\n{}",
            p.name,
            cri.logs()
        );
        let state = ok(cri.crictl_json(&["inspect", "-o", "json", c]))["status"]["state"].clone();
        assert_eq!(
            state,
            json!("CONTAINER_RUNNING"),
            "container of {} after the restart\n{}",
            p.name,
            cri.logs()
        );
    }
    assert_ping(
        &cri,
        &ctrs[0],
        pods[1].ip,
        "after the restart: pod0 -> pod1",
    );
    assert_ping(
        &cri,
        &ctrs[1],
        pods[2].ip,
        "after the restart: pod1 -> pod2",
    );
    assert_ping(
        &cri,
        &ctrs[2],
        IpAddr::V4(GATEWAY),
        "after the restart: pod2 -> gateway",
    );
    assert_host_reaches(&host, &cri, &pods, "after the restart");
    // A sandbox made after the restart gets an address no running pod holds.
    let late = ok(cri.runp("late"));
    assert!(
        pods.iter().all(|p| p.ip != late.ip),
        "a sandbox made after the restart got {}, already held by a running pod",
        late.ip
    );

    for p in pods.iter().chain(std::iter::once(&late)) {
        ok(cri.stop_remove(p));
    }
    assert_clean(
        &host,
        &cri,
        (&ipam_db, &records),
        &[],
        "after a containerd restart and stopp + rmp of every sandbox",
    );
}

#[test]
fn cri_overlay_lifecycle() {
    need_root();
    let ul = Underlay::create("bcu", "br-ul", Some("172.31.251.254/24"));
    let host = Host::new();
    ul.attach(&host, "u1", "eth0", &["172.31.251.1/24"]);
    let stores = store_dir();
    let subnet_file = stores.path().join("subnet.env");
    let data_dir = stores.path().join("ovl-data");
    let agent_log = stores.path().join("overlayd.log");
    let overlayd = bin_dir().join("berth-overlayd");
    require_bin(&overlayd);
    let mut cmd = Command::new(&overlayd);
    cmd.args([
        "--node-name",
        "node1",
        "--network",
        "10.244.0.0/16",
        "--store",
        &format!("dir:{}", stores.path().join("lease-store").display()),
        "--iface",
        "eth0",
    ])
    .arg("--subnet-file")
    .arg(&subnet_file)
    .args(["--lease-ttl", "30s", "--resync-interval", "1s"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(&agent_log).unwrap());
    let mut agent = ChildGuard::new(host.spawn(cmd).expect("start berth-overlayd"));
    let agent_text = || fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(15), || subnet_file.exists()),
        "berth-overlayd wrote no subnet file: {}",
        agent_text()
    );
    let subnet = fs::read_to_string(&subnet_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("BERTH_SUBNET="))
        .expect("BERTH_SUBNET in the subnet file")
        .to_string();
    let gateway = match parse_cidr(&subnet) {
        Some((IpAddr::V4(base), _)) => IpAddr::V4(v4_add(base, 1)),
        other => panic!("node subnet {subnet}: {other:?}"),
    };
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [{
            "type": "berth-overlay",
            "subnetFile": subnet_file.to_string_lossy(),
            "dataDir": data_dir.to_string_lossy(),
        }],
    });
    let cri = ok(Cri::start(
        &host,
        &conflist,
        &ours(&["berth-overlay", BRIDGE_BIN, HOST_LOCAL_BIN]),
    ));
    let ipam_db = store_path(&data_dir, "pods");
    let records = records_path(&data_dir, "pods");

    let mut runp_times = Vec::new();
    let mut pods = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        pods.push(ok(cri.runp(&format!("opod{i}"))));
        runp_times.push(t.elapsed());
    }
    let ips: HashSet<IpAddr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), pods.len(), "addresses: {ips:?}");
    for p in &pods {
        assert!(
            subnet_ok(&subnet, p.ip),
            "{} got {} outside the node subnet {subnet}",
            p.name,
            p.ip
        );
    }
    let c0 = ok(cri.container(&pods[0]));
    let c1 = ok(cri.container(&pods[1]));
    assert_ping(&cri, &c0, gateway, "overlay: container -> gateway");
    assert_ping(&cri, &c0, pods[1].ip, "overlay: pod0 -> pod1");
    assert_ping(&cri, &c1, pods[4].ip, "overlay: pod1 -> pod4");
    assert_host_reaches(&host, &cri, &pods, "overlay");
    let stop_times = stop_remove_all(&cri, &pods);
    assert_clean(
        &host,
        &cri,
        (&ipam_db, &records),
        &["eth0"],
        "overlay: after stopp + rmp",
    );
    assert!(
        agent.running(),
        "berth-overlayd exited during the test: {}",
        agent_text()
    );
    print_timings("overlay", &runp_times, &stop_times);
    drop(cri);
    agent.stop();
}

fn subnet_ok(subnet: &str, ip: IpAddr) -> bool {
    berth_tests::subnet_contains(subnet, ip)
}
