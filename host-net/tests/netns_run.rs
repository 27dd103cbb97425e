//! `NetNs::run` moves the calling thread into a namespace and back. Needs root: it creates
//! scratch netns (removed by their guards) and otherwise only reads the thread's namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use host_net::netlink::Netlink;
use host_net::netns::{read_sysctl, NetNs};
use netns_fixture::{is_root, Netns};

#[test]
fn run_enters_the_namespace_and_returns_even_after_a_panic() {
    if !is_root() {
        eprintln!("skipped: needs root to create a network namespace");
        return;
    }
    let scratch = Netns::create("bhn");
    let target = NetNs::open(scratch.path()).unwrap();
    let home = NetNs::current().unwrap().id();
    assert_ne!(home, target.id(), "the scratch netns is a new namespace");

    // Inside: the thread is in the scratch namespace, and what it opens there stays there.
    let (inside, mut nl, lo_forwarding) = target
        .run(|| {
            (
                NetNs::current().unwrap().id(),
                Netlink::new().unwrap(),
                read_sysctl("net/ipv4/conf/lo/forwarding").unwrap(),
            )
        })
        .unwrap();
    assert_eq!(inside, target.id());
    assert_eq!(lo_forwarding, "0");
    assert_eq!(NetNs::current().unwrap().id(), home, "back home after run");
    // The socket opened inside still talks to the scratch namespace: lo and nothing else.
    let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, vec!["lo".to_string()]);

    // A panic inside unwinds through run and still takes the thread home.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = target.run(|| panic!("deliberate"));
    }));
    assert!(caught.is_err());
    assert_eq!(
        NetNs::current().unwrap().id(),
        home,
        "back home after a panic"
    );

    // Nested: a run inside a run returns to the outer namespace, then home.
    let other = Netns::create("bhn");
    let other_ns = NetNs::open(other.path()).unwrap();
    let (mid, after_inner) = target
        .run(|| {
            let mid = other_ns.run(|| NetNs::current().unwrap().id()).unwrap();
            (mid, NetNs::current().unwrap().id())
        })
        .unwrap();
    assert_eq!(mid, other_ns.id());
    assert_eq!(after_inner, target.id());
    assert_eq!(NetNs::current().unwrap().id(), home);
}

#[test]
fn open_refuses_a_file_that_is_not_a_namespace() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let e = NetNs::open(file).unwrap_err();
    assert!(e.to_string().contains(file), "{e}");
    assert!(!e.is_missing());
    let missing = NetNs::open("/var/run/netns/berth-no-such-netns").unwrap_err();
    assert!(missing.is_missing(), "{missing}");
}
