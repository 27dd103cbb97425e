//! The fixture on the real kernel (needs root; skipped otherwise): namespaces and everything in
//! them are gone after the guards drop, and nothing is configured in the caller's namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use netns_fixture::{is_root, wait_until, ChildGuard, Netns, Underlay};

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

#[test]
fn netns_is_removed_on_drop_with_the_processes_inside() {
    need_root!();
    let ns = Netns::create("bfx");
    let path = ns.path().to_path_buf();
    assert!(
        ns.exists()
            && ns
                .name()
                .starts_with(&format!("bfx-{}-", std::process::id()))
    );
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdin(Stdio::null());
    let mut child = ns.spawn(cmd).expect("spawn in netns");
    let pid = child.id();
    assert!(
        wait_until(Duration::from_secs(5), || ns.pids().contains(&pid)),
        "sleep is not in {}",
        ns.name()
    );
    drop(ns);
    assert!(!path.exists(), "{} left behind", path.display());
    // The guard killed it; reap it here.
    let status = child.wait().expect("wait");
    assert!(!status.success());
}

#[test]
fn sysctls_and_links_stay_inside_the_test_namespaces() {
    need_root!();
    let own = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read own sysctl");
    let a = Netns::create("bfxa");
    let b = Netns::create("bfxb");
    a.set_sysctl("net/ipv4/ip_forward", "1")
        .expect("set sysctl");
    assert_eq!(a.sysctl("net/ipv4/ip_forward").expect("read sysctl"), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read own sysctl"),
        own
    );
    a.add_veth("va", &b, "vb");
    a.configure("va", &["192.0.2.1/24"]);
    b.configure("vb", &["192.0.2.2/24"]);
    assert!(a.ping("192.0.2.2".parse::<IpAddr>().expect("ip"), 3));
    assert!(
        !PathBuf::from("/sys/class/net/va").exists(),
        "a veth end showed up in the caller's namespace"
    );
}

#[test]
fn underlay_links_hosts_and_the_child_guard_stops_a_daemon() {
    need_root!();
    let ul = Underlay::create("bfxul", "br-fx", Some("198.51.100.254/24"));
    let h1 = Netns::create("bfxh");
    let h2 = Netns::create("bfxh");
    ul.attach(&h1, "u1", "eth0", &["198.51.100.1/24"]);
    ul.attach(&h2, "u2", "eth0", &["198.51.100.2/24"]);
    assert!(h1.ping("198.51.100.2".parse().expect("ip"), 3));
    assert!(h2.ping("198.51.100.254".parse().expect("ip"), 3));
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdin(Stdio::null());
    let mut guard = ChildGuard::new(h1.spawn(cmd).expect("spawn"));
    let pid = guard.id().expect("pid");
    assert!(guard.running());
    guard.stop();
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "the daemon survived its guard"
    );
}
