//! End-to-end tests with real container runtimes driving `berth-bridge` + `berth-host-local`:
//! podman 4 (CNI backend) and containerd 1.6 (`ctr run --cni`).
//!
//! Each test creates a host netns and runs the runtime inside it and inside a private mount
//! namespace (see `berth_tests::runtime`): podman's configuration, storage and run root, the
//! containerd daemon's config, root, state and socket all live in the test's tempdir; `/run`,
//! `/var/lib` and `/dev/shm` are private tmpfs; `ctr`'s fixed `/etc/cni/net.d` and
//! `/opt/cni/bin` are the test's. Guards kill every process of that mount namespace (daemons,
//! shims, conmon, containers) by PID and delete the namespaces on drop.
//!
//! The image is Debian's busybox-static packed as a rootfs tar, `podman import`ed (and for ctr,
//! `podman save`d and `ctr images import`ed). A missing runtime binary fails the test with the
//! package to install: scripts/lib.sh installs them.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::netns::*;
use berth_tests::runtime::{busybox_rootfs_tar, Containerd, Podman};
use berth_tests::{bin_dir, read_allocations, store_path, unique_name, HOST_LOCAL_BIN};
use serde_json::{json, Value};

const IMAGE: &str = "localhost/berth-busybox:test";
const NETWORK: &str = "berthnet";
const T: Duration = Duration::from_secs(90);

fn plugins() -> (PathBuf, PathBuf) {
    let bridge = bridge_bin();
    let ipam = bin_dir().join(HOST_LOCAL_BIN);
    require_bin(&bridge);
    require_bin(&ipam);
    (bridge, ipam)
}

/// The conflist: berth-bridge (gateway, masquerade) + berth-host-local, data dirs under `dir`.
fn conflist(dir: &Path, subnet: &str, bridge_type: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": bridge_type,
            "bridge": "berth0",
            "isGateway": true,
            "ipMasq": true,
            "dataDir": dir.join("bridge-data").to_string_lossy(),
            "ipam": {
                "type": HOST_LOCAL_BIN,
                "dataDir": dir.join("ipam-data").to_string_lossy(),
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }],
    })
}

/// What the plugins left in the host netns and the stores.
fn leftovers(host: &Host, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let veths = host.veths();
    if !veths.is_empty() {
        out.push(format!("veths in the host netns: {veths:?}"));
    }
    let nat = host.nat_elements();
    if !nat.is_empty() {
        out.push(format!("{} NAT element(s): {nat:?}", nat.len()));
    }
    let ipam_db = store_path(&dir.join("ipam-data"), NETWORK);
    if ipam_db.exists() {
        match read_allocations(&ipam_db) {
            Ok(rows) if !rows.is_empty() => out.push(format!("IPAM addresses held: {rows:?}")),
            Ok(_) => {}
            Err(e) => out.push(format!("cannot read {}: {e}", ipam_db.display())),
        }
    }
    match read_attachment_records(&records_path(&dir.join("bridge-data"), NETWORK)) {
        Ok(rows) if !rows.is_empty() => out.push(format!("attachment records left: {rows:?}")),
        Ok(_) => {}
        Err(e) => out.push(format!("cannot read the records: {e}")),
    }
    out
}

/// The bridge must exist in the test's host netns, never in the root netns.
fn assert_bridge_in_host_only(host: &Host) {
    assert!(
        host.link("berth0").is_some(),
        "berth0 was not created in the test's host netns: {:?}",
        host.link_names()
    );
    // Read-only look at the root netns: this process's /sys belongs to it.
    assert!(
        !Path::new("/sys/class/net/berth0").exists(),
        "berth0 appeared in the ROOT netns: the runtime escaped the host netns"
    );
}

/// The conflist `type` naming `bin` (its file name), so BERTH_BRIDGE can point elsewhere.
fn plugin_type(bin: &Path) -> String {
    bin.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn podman_with_image(host: &Host, dir: &Path) -> Podman {
    let bridge_dir = bridge_bin()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(bin_dir);
    let podman = Podman::new(
        host,
        &dir.join("podman"),
        &[bridge_dir, bin_dir(), PathBuf::from(REFERENCE_CNI_DIR)],
    )
    .unwrap_or_else(|e| panic!("podman set-up: {e}"));
    let tar = busybox_rootfs_tar(dir).unwrap_or_else(|e| panic!("busybox image: {e}"));
    podman
        .ok(&["import", &tar.to_string_lossy(), IMAGE], T)
        .unwrap_or_else(|e| panic!("{e}"));
    podman
}

/// While `run` executes (a container that lives a couple of seconds), watch the host netns:
/// returns what `run` returned and whether a veth and a NAT element of the attachment were seen,
/// so the "nothing left" checks afterwards are known to cover real state.
fn watching_host<T: Send>(host: &Host, run: impl FnOnce() -> T + Send) -> (T, bool, bool) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let r = run();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        let (mut saw_veth, mut saw_nat) = (false, false);
        while !(done.load(std::sync::atomic::Ordering::SeqCst) || (saw_veth && saw_nat)) {
            saw_veth |= !host.veths().is_empty();
            saw_nat |= !host.nat_elements().is_empty();
            std::thread::sleep(Duration::from_millis(100));
        }
        (
            worker.join().expect("runtime thread panicked"),
            saw_veth,
            saw_nat,
        )
    })
}

/// Check a container's output: an address in `prefix` on eth0, and the ping marker.
fn check_container_output(stdout: &str, prefix: &str, what: &str) {
    assert!(
        stdout.contains(prefix),
        "{what}: eth0 has no address in {prefix}*; container output:\n{stdout}"
    );
    assert!(
        stdout.contains("PING-OK"),
        "{what}: the container could not ping its gateway; container output:\n{stdout}"
    );
}

#[test]
fn podman_container_gets_address_and_pings_gateway() {
    let (_bridge, _ipam) = plugins();
    let host = Host::new();
    let dir = tempfile::Builder::new()
        .prefix("berth-podman-")
        .tempdir()
        .expect("tempdir");
    let podman = podman_with_image(&host, dir.path());
    podman
        .write_conflist(
            NETWORK,
            &conflist(dir.path(), "10.94.0.0/24", &plugin_type(&bridge_bin())),
        )
        .unwrap();

    let start = Instant::now();
    let script = "ip -o -4 addr show dev eth0; ping -c1 -W2 10.94.0.1 && echo PING-OK; sleep 2";
    let cgroup_parent = podman.cgroup_parent_arg();
    let args = [
        "run",
        "--rm",
        &cgroup_parent,
        "--network",
        NETWORK,
        "--cap-add",
        "NET_RAW",
        IMAGE,
        "sh",
        "-c",
        script,
    ];
    let (out, saw_veth, saw_nat) = watching_host(&host, || podman.run(&args, T));
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "podman run failed ({:?}):\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("podman container output:\n{stdout}");
    check_container_output(&stdout, "10.94.0.", "podman");
    assert!(
        saw_veth && saw_nat,
        "while the container ran, the host netns showed veth: {saw_veth}, NAT element: {saw_nat}"
    );
    assert_bridge_in_host_only(&host);
    let left = leftovers(&host, dir.path());
    assert!(
        left.is_empty(),
        "after `podman run --rm`:\n- {}",
        left.join("\n- ")
    );
    eprintln!("podman run --rm took {:?}", start.elapsed());
}

/// Dropped in field order: runtimes (processes killed) before the host netns and the tempdir.
struct CtrEnv {
    containerd: Containerd,
    _podman: Podman,
    host: Host,
    dir: tempfile::TempDir,
}

fn ctr_env(subnet: &str) -> CtrEnv {
    let (bridge, ipam) = plugins();
    let host = Host::new();
    let dir = tempfile::Builder::new()
        .prefix("berth-ctr-")
        .tempdir()
        .expect("tempdir");
    let podman = podman_with_image(&host, dir.path());
    let archive = dir.path().join("image.tar");
    podman
        .ok(
            &[
                "save",
                "--format",
                "docker-archive",
                "-o",
                &archive.to_string_lossy(),
                IMAGE,
            ],
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));

    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let list = conflist(dir.path(), subnet, &plugin_type(&bridge));
    std::fs::write(
        conf_dir.join("10-berth.conflist"),
        serde_json::to_vec_pretty(&list).unwrap(),
    )
    .unwrap();
    let loopback = Path::new(REFERENCE_CNI_DIR).join("loopback");
    let containerd = Containerd::start(
        &host,
        &dir.path().join("containerd"),
        &conf_dir,
        &[bridge, ipam, loopback],
    )
    .unwrap_or_else(|e| panic!("containerd set-up: {e}"));
    containerd
        .ok(
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                &archive.to_string_lossy(),
            ],
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let images = containerd.ok(&["images", "ls", "-q"], T).unwrap();
    assert!(
        images.lines().any(|l| l.trim() == IMAGE),
        "image {IMAGE} not in containerd after import: {images}"
    );
    CtrEnv {
        containerd,
        _podman: podman,
        host,
        dir,
    }
}

fn ctr_run(env: &CtrEnv, id: &str, script: &str) -> String {
    let out = env
        .containerd
        .run(
            &[
                "run",
                "--rm",
                "--cni",
                "--snapshotter",
                "native",
                IMAGE,
                id,
                "sh",
                "-c",
                script,
            ],
            T,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctr run --rm --cni {id} failed ({:?}):\nstdout: {stdout}\nstderr: {}\ncontainerd log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        env.containerd.log_tail()
    );
    stdout
}

#[test]
fn ctr_container_gets_address_and_pings_gateway() {
    let env = ctr_env("10.95.0.0/24");
    let id = unique_name("ctr");
    let script = "ip -o -4 addr show dev eth0; ping -c1 -W2 10.95.0.1 && echo PING-OK; sleep 2";
    let (stdout, saw_veth, saw_nat) = watching_host(&env.host, || ctr_run(&env, &id, script));
    check_container_output(&stdout, "10.95.0.", "ctr run --cni");
    assert!(
        saw_veth && saw_nat,
        "while the container ran, the host netns showed veth: {saw_veth}, NAT element: {saw_nat}"
    );
    assert_bridge_in_host_only(&env.host);
    let left = leftovers(&env.host, env.dir.path());
    assert!(
        left.is_empty(),
        "after `ctr run --rm --cni` (DEL runs after the netns is gone):\n- {}",
        left.join("\n- ")
    );
}

#[test]
fn ctr_run_rm_twenty_times_leaves_nothing() {
    let env = ctr_env("10.96.0.0/24");
    let start = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let id = format!("{}-{i}", unique_name("loop"));
        let stdout = ctr_run(&env, &id, "ip -o -4 addr show dev eth0");
        let addr = stdout
            .split_whitespace()
            .find(|w| w.starts_with("10.96.0."))
            .unwrap_or_else(|| panic!("run {i}: no address in 10.96.0.0/24 on eth0: {stdout}"))
            .to_string();
        seen.insert(addr);
        // Check after every run, so a leak is pinned to the run that caused it.
        let left = leftovers(&env.host, env.dir.path());
        assert!(
            left.is_empty(),
            "after run {i} of `ctr run --rm --cni`:\n- {}",
            left.join("\n- ")
        );
    }
    assert_bridge_in_host_only(&env.host);
    eprintln!(
        "20 x ctr run --rm --cni in {:?}; {} distinct addresses handed out",
        start.elapsed(),
        seen.len()
    );
}
