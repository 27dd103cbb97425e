//! Integration tests for `berth-host-local`, the drop-in replacement for the reference CNI
//! `host-local` IPAM plugin.
//!
//! These need no privileges: host-local touches no kernel state, so CNI_NETNS is any string and
//! every test keeps its store in its own tempdir (`ipam.dataDir`). The binary under test is
//! `<bin_dir>/berth-host-local` (build it with `cargo build --release -p ipam`), or
//! `BERTH_HOST_LOCAL` when set.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_tests::fixture::{assert_cni_error, check_cni_error, run_or_panic, HostLocalNet, NETNS};
use berth_tests::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    parse_ip_loose(s).unwrap_or_else(|| panic!("bad address literal in test: {s}"))
}

fn ranges(subnets: &[&str]) -> Value {
    Value::Array(subnets.iter().map(|s| json!([{ "subnet": s }])).collect())
}

fn ipam_v4(subnet: &str) -> Value {
    json!({ "ranges": ranges(&[subnet]) })
}

fn version_at_least(v: &str, min: &str) -> bool {
    let pos = |x: &str| {
        SPEC_VERSIONS
            .iter()
            .position(|s| *s == x)
            .unwrap_or_else(|| panic!("unknown spec version {x}"))
    };
    pos(v) >= pos(min)
}

fn ctr() -> String {
    unique_name("ctr")
}

fn boot_id() -> String {
    // uuid-shaped, unique per call
    let n = unique_name("b");
    let hex: String = n
        .bytes()
        .map(|b| format!("{:x}", b % 16))
        .collect::<String>();
    let mut h = format!("{hex:0>12}");
    h.truncate(12);
    format!("0badb007-0000-4000-8000-{h}")
}

fn attachments(list: &[(&str, &str)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(c, i)| json!({ "containerID": c, "ifname": i }))
            .collect(),
    )
}

fn gc_run(net: &HostLocalNet, key: &str, valid: &[(&str, &str)]) -> CniRun {
    let mut extra = serde_json::Map::new();
    extra.insert(key.to_string(), attachments(valid));
    net.bare("GC").stdin(net.conf_with(Value::Object(extra)))
}

fn gc(net: &HostLocalNet, key: &str, valid: &[(&str, &str)]) -> CniOutput {
    run_or_panic(&gc_run(net, key, valid))
}

fn held_ips(net: &HostLocalNet) -> BTreeSet<IpAddr> {
    net.allocations().iter().map(|a| ip(a.ip())).collect()
}

fn assert_ok(out: &CniOutput, what: &str) {
    assert!(!out.panicked(), "{what}: panicked: {}", out.describe());
    assert!(out.success(), "{what}: failed: {}", out.describe());
}

// ---------------------------------------------------------------------------------------------
// a) every spec version
// ---------------------------------------------------------------------------------------------

fn check_spec_version(v: &str) {
    let subnet = "10.20.0.0/24";
    let net = HostLocalNet::new(
        v,
        json!({ "ranges": ranges(&[subnet]), "routes": [{ "dst": "0.0.0.0/0" }] }),
    );
    let c = ctr();

    // ADD: result in this version's shape.
    let out = net.add(&c);
    assert_ok(&out, &format!("ADD {v}"));
    let res = out
        .json
        .clone()
        .unwrap_or_else(|| panic!("ADD {v}: stdout not JSON: {}", out.describe()));
    if version_at_least(v, "0.3.0") {
        assert_eq!(res["cniVersion"], json!(v), "ADD {v}: cniVersion: {res}");
        assert!(
            res.get("ip4").is_none() && res.get("ip6").is_none(),
            "ADD {v}: 0.2.0 keys in result: {res}"
        );
        let ips = res["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("ADD {v}: no ips array: {res}"));
        assert_eq!(ips.len(), 1, "ADD {v}: {res}");
        let addr = ips[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("ADD {v}: no ips[0].address: {res}"));
        let (a, len) =
            parse_cidr(addr).unwrap_or_else(|| panic!("ADD {v}: address not CIDR: {addr}"));
        assert_eq!(len, 24, "ADD {v}: {res}");
        assert!(subnet_contains(subnet, a), "ADD {v}: {a} not in {subnet}");
        assert_eq!(ips[0]["gateway"], json!("10.20.0.1"), "ADD {v}: {res}");
        if version_at_least(v, "1.0.0") {
            assert!(
                ips[0].get("version").is_none(),
                "ADD {v}: 1.x results have no ips[].version: {res}"
            );
        } else {
            assert_eq!(
                ips[0]["version"],
                json!("4"),
                "ADD {v}: ips[].version: {res}"
            );
        }
        assert_eq!(
            res["routes"],
            json!([{ "dst": "0.0.0.0/0" }]),
            "ADD {v}: routes: {res}"
        );
    } else {
        if let Some(cv) = res.get("cniVersion") {
            assert_eq!(cv, &json!(v), "ADD {v}: cniVersion: {res}");
        }
        assert!(
            res.get("ips").is_none(),
            "ADD {v}: 0.3.0 keys in a {v} result: {res}"
        );
        let ip4 = res
            .get("ip4")
            .unwrap_or_else(|| panic!("ADD {v}: no ip4: {res}"));
        let addr = ip4["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("ADD {v}: no ip4.ip: {res}"));
        let (a, len) =
            parse_cidr(addr).unwrap_or_else(|| panic!("ADD {v}: ip4.ip not CIDR: {addr}"));
        assert_eq!(len, 24);
        assert!(subnet_contains(subnet, a), "ADD {v}: {a} not in {subnet}");
        assert_eq!(ip4["gateway"], json!("10.20.0.1"), "ADD {v}: {res}");
        assert_eq!(
            ip4["routes"],
            json!([{ "dst": "0.0.0.0/0" }]),
            "ADD {v}: ip4.routes: {res}"
        );
        assert!(
            res.get("ip6").is_none_or(Value::is_null),
            "ADD {v}: unexpected ip6: {res}"
        );
    }
    assert_eq!(
        net.allocations_of(&c).len(),
        1,
        "ADD {v}: store rows: {:?}",
        net.allocations()
    );

    // CHECK with prevResult.
    let check = run_or_panic(
        &net.cmd("CHECK", &c, "eth0")
            .stdin(net.conf_with(json!({ "prevResult": res.clone() }))),
    );
    if version_at_least(v, "0.4.0") {
        assert_ok(&check, &format!("CHECK {v}"));
        // The same prevResult claimed by another interface is not held: CHECK fails.
        let wrong = run_or_panic(
            &net.cmd("CHECK", &c, "eth9")
                .stdin(net.conf_with(json!({ "prevResult": res.clone() }))),
        );
        assert!(
            !wrong.success() && !wrong.panicked(),
            "CHECK {v} on an interface holding nothing must fail: {}",
            wrong.describe()
        );
        assert!(
            wrong.error_code().is_some(),
            "CHECK {v}: error JSON expected: {}",
            wrong.describe()
        );
        // A prevResult naming an address the attachment does not hold fails too.
        let mut forged = res.clone();
        if let Some(addr) = forged.pointer_mut("/ips/0/address") {
            *addr = json!("10.20.0.200/24");
        } else if let Some(addr) = forged.pointer_mut("/ip4/ip") {
            *addr = json!("10.20.0.200/24");
        }
        let forged_check = run_or_panic(
            &net.cmd("CHECK", &c, "eth0")
                .stdin(net.conf_with(json!({ "prevResult": forged }))),
        );
        assert!(
            !forged_check.success() && !forged_check.panicked(),
            "CHECK {v} with an address not held must fail: {}",
            forged_check.describe()
        );
    } else {
        let t = assert_cni_error(&check, 1, &format!("CHECK at {v}"));
        assert!(!t.trim().is_empty());
    }

    // GC and STATUS.
    if version_at_least(v, "1.1.0") {
        let kept = gc(&net, "cni.dev/valid-attachments", &[(&c, "eth0")]);
        assert_ok(&kept, "GC listing the attachment");
        assert_eq!(
            net.allocations_of(&c).len(),
            1,
            "GC released a listed attachment: {:?}",
            net.allocations()
        );
        let status = run_or_panic(&net.bare("STATUS"));
        assert_ok(&status, "STATUS");
        assert!(
            status.stdout_text().trim().is_empty(),
            "STATUS prints nothing when usable: {}",
            status.describe()
        );
    } else {
        let g = gc(&net, "cni.dev/valid-attachments", &[]);
        assert_cni_error(&g, 1, &format!("GC at {v}"));
        assert_eq!(
            net.allocations_of(&c).len(),
            1,
            "a refused GC at {v} must not release anything"
        );
        let s = run_or_panic(&net.bare("STATUS"));
        assert_cni_error(&s, 1, &format!("STATUS at {v}"));
    }

    // DEL.
    let del = net.del(&c);
    assert_ok(&del, &format!("DEL {v}"));
    assert!(
        net.allocations().is_empty(),
        "DEL {v} left rows: {:?}",
        net.allocations()
    );

    if version_at_least(v, "0.4.0") {
        // After DEL the prevResult is no longer held.
        let stale = run_or_panic(
            &net.cmd("CHECK", &c, "eth0")
                .stdin(net.conf_with(json!({ "prevResult": res.clone() }))),
        );
        assert!(
            !stale.success() && !stale.panicked(),
            "CHECK {v} after DEL must fail: {}",
            stale.describe()
        );
    }
    if version_at_least(v, "1.1.0") {
        // GC with an empty list frees everything.
        let c2 = ctr();
        net.add_ok(&c2, 1);
        let g = gc(&net, "cni.dev/valid-attachments", &[]);
        assert_ok(&g, "GC with no valid attachments");
        assert!(
            net.allocations().is_empty(),
            "GC [] left rows: {:?}",
            net.allocations()
        );
    }

    // VERSION.
    let ver = run_or_panic(
        &CniRun::new(&net.plugin)
            .command("VERSION")
            .stdin(serde_json::to_vec(&json!({ "cniVersion": v })).unwrap_or_default()),
    );
    assert_ok(&ver, &format!("VERSION {v}"));
    let vj = ver
        .json
        .clone()
        .unwrap_or_else(|| panic!("VERSION: not JSON: {}", ver.describe()));
    assert_eq!(
        vj["supportedVersions"],
        json!(SPEC_VERSIONS),
        "VERSION: {vj}"
    );
    let cv = vj["cniVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("VERSION: no cniVersion: {vj}"));
    assert!(
        SPEC_VERSIONS.contains(&cv),
        "VERSION: cniVersion {cv} not a spec version"
    );
}

macro_rules! spec_version_tests {
    ($($name:ident => $v:expr),* $(,)?) => {
        $( #[test] fn $name() { check_spec_version($v); } )*
    };
}

spec_version_tests! {
    spec_0_1_0_add_check_del_gc_status_version => "0.1.0",
    spec_0_2_0_add_check_del_gc_status_version => "0.2.0",
    spec_0_3_0_add_check_del_gc_status_version => "0.3.0",
    spec_0_3_1_add_check_del_gc_status_version => "0.3.1",
    spec_0_4_0_add_check_del_gc_status_version => "0.4.0",
    spec_1_0_0_add_check_del_gc_status_version => "1.0.0",
    spec_1_1_0_add_check_del_gc_status_version => "1.1.0",
}

// ---------------------------------------------------------------------------------------------
// b) allocation behaviour
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv4_address_gateway_and_prefix() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.21.0.0/24"));
    let out = net.add(&ctr());
    assert_ok(&out, "ADD");
    let res = out.json.clone().unwrap_or_default();
    let addr = res["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (a, len) = parse_cidr(&addr).unwrap_or_else(|| panic!("bad address in {res}"));
    assert_eq!(len, 24);
    assert!(subnet_contains("10.21.0.0/24", a));
    assert!(
        ![ip("10.21.0.0"), ip("10.21.0.1"), ip("10.21.0.255")].contains(&a),
        "handed out network/gateway/broadcast: {a}"
    );
    assert_eq!(res["ips"][0]["gateway"], json!("10.21.0.1"));
}

#[test]
fn ipv6_allocation() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("fd00:21::/64"));
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let out = net.add(&ctr());
        assert_ok(&out, "ADD v6");
        let res = out.json.clone().unwrap_or_default();
        let addr = res["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (a, len) = parse_cidr(&addr).unwrap_or_else(|| panic!("bad address in {res}"));
        assert!(
            a.is_ipv6() && len == 64 && subnet_contains("fd00:21::/64", a),
            "{res}"
        );
        assert_ne!(a, ip("fd00:21::"), "handed out the subnet address");
        assert_ne!(a, ip("fd00:21::1"), "handed out the gateway");
        assert_eq!(res["ips"][0]["gateway"], json!("fd00:21::1"));
        assert!(seen.insert(a), "address {a} handed out twice");
    }
}

#[test]
fn dual_stack_one_address_per_range_set() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": ranges(&["10.22.0.0/24", "fd00:22::/64"]) }),
    );
    let c = ctr();
    let addrs = net.add_ok(&c, 2);
    assert_eq!(addrs.iter().filter(|a| a.is_ipv4()).count(), 1, "{addrs:?}");
    assert_eq!(addrs.iter().filter(|a| a.is_ipv6()).count(), 1, "{addrs:?}");
    assert!(addrs.iter().any(|a| subnet_contains("10.22.0.0/24", *a)));
    assert!(addrs.iter().any(|a| subnet_contains("fd00:22::/64", *a)));
    assert_eq!(net.allocations_of(&c).len(), 2, "{:?}", net.allocations());
    assert_ok(&net.del(&c), "DEL");
    assert!(net.allocations().is_empty());
}

#[test]
fn pre_0_3_results_carry_ip4_and_ip6() {
    for v in ["0.1.0", "0.2.0"] {
        let net = HostLocalNet::new(
            v,
            json!({ "ranges": ranges(&["10.22.1.0/24", "fd00:22:1::/64"]) }),
        );
        let out = net.add(&ctr());
        assert_ok(&out, &format!("ADD {v} dual-stack"));
        let res = out.json.clone().unwrap_or_default();
        let v4 = parse_cidr(res["ip4"]["ip"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("{v}: ip4.ip: {res}"));
        let v6 = parse_cidr(res["ip6"]["ip"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("{v}: ip6.ip: {res}"));
        assert!(
            subnet_contains("10.22.1.0/24", v4.0) && v4.1 == 24,
            "{v}: {res}"
        );
        assert!(
            subnet_contains("fd00:22:1::/64", v6.0) && v6.1 == 64,
            "{v}: {res}"
        );
        assert_eq!(res["ip4"]["gateway"], json!("10.22.1.1"), "{v}: {res}");
        assert_eq!(res["ip6"]["gateway"], json!("fd00:22:1::1"), "{v}: {res}");
    }
}

#[test]
fn legacy_single_range_config() {
    let net = HostLocalNet::new(
        "0.3.1",
        json!({ "subnet": "10.23.0.0/24", "rangeStart": "10.23.0.100", "rangeEnd": "10.23.0.101", "gateway": "10.23.0.254" }),
    );
    let out = net.add(&ctr());
    assert_ok(&out, "ADD legacy");
    let res = out.json.clone().unwrap_or_default();
    assert_eq!(res["ips"][0]["address"], json!("10.23.0.100/24"), "{res}");
    assert_eq!(res["ips"][0]["gateway"], json!("10.23.0.254"), "{res}");
    assert_eq!(net.add_ok(&ctr(), 1), vec![ip("10.23.0.101")]);
    let third = net.add(&ctr());
    assert_cni_error(&third, 100, "legacy range exhausted");
}

#[test]
fn range_start_and_end_are_honoured() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.24.0.0/24", "rangeStart": "10.24.0.10", "rangeEnd": "10.24.0.12" }]] }),
    );
    let mut got = BTreeSet::new();
    for _ in 0..3 {
        got.extend(net.add_ok(&ctr(), 1));
    }
    let want: BTreeSet<IpAddr> = ["10.24.0.10", "10.24.0.11", "10.24.0.12"]
        .iter()
        .map(|s| ip(s))
        .collect();
    assert_eq!(got, want);
    let out = net.add(&ctr());
    let msg = assert_cni_error(&out, 100, "range 10-12 exhausted");
    assert!(
        msg.contains("10.24.0.0/24"),
        "msg should name the subnet: {msg}"
    );
}

#[test]
fn default_gateway_is_never_handed_out() {
    // /29: .0 network, .1 gateway, .7 broadcast -> .2 .. .6 usable.
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.25.0.0/29"));
    let mut got = BTreeSet::new();
    for _ in 0..5 {
        got.extend(net.add_ok(&ctr(), 1));
    }
    let want: BTreeSet<IpAddr> = (2..=6).map(|i| ip(&format!("10.25.0.{i}"))).collect();
    assert_eq!(got, want);
    assert_cni_error(&net.add(&ctr()), 100, "/29 exhausted");
}

#[test]
fn explicit_gateway_inside_range_is_skipped() {
    // Reference host-local with gateway .3 in a /29 hands out .1 .2 .4 .5 .6.
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.26.0.0/29", "gateway": "10.26.0.3" }]] }),
    );
    let mut got = BTreeSet::new();
    for _ in 0..5 {
        let c = ctr();
        let out = net.add(&c);
        assert_ok(&out, "ADD");
        assert_eq!(
            out.json.clone().unwrap_or_default()["ips"][0]["gateway"],
            json!("10.26.0.3")
        );
        got.extend(out.addresses().iter().map(|a| ip(a)));
    }
    let want: BTreeSet<IpAddr> = [1, 2, 4, 5, 6]
        .iter()
        .map(|i| ip(&format!("10.26.0.{i}")))
        .collect();
    assert_eq!(got, want);
    assert_cni_error(&net.add(&ctr()), 100, "/29 with gateway .3 exhausted");
}

#[test]
fn round_robin_does_not_reuse_released_address_immediately() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.27.0.0/24", "rangeStart": "10.27.0.10", "rangeEnd": "10.27.0.20" }]] }),
    );
    let a = ctr();
    let first = net.add_ok(&a, 1);
    assert_eq!(first, vec![ip("10.27.0.10")]);
    assert_ok(&net.del(&a), "DEL");
    let second = net.add_ok(&ctr(), 1);
    assert_ne!(second, first, "a released address came straight back");
    assert_eq!(
        second,
        vec![ip("10.27.0.11")],
        "round robin continues after the last reservation"
    );
    assert_eq!(net.add_ok(&ctr(), 1), vec![ip("10.27.0.12")]);
}

#[test]
fn round_robin_wraps_around_to_released_addresses() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.28.0.0/24", "rangeStart": "10.28.0.10", "rangeEnd": "10.28.0.12" }]] }),
    );
    let a = ctr();
    assert_eq!(net.add_ok(&a, 1), vec![ip("10.28.0.10")]);
    assert_eq!(net.add_ok(&ctr(), 1), vec![ip("10.28.0.11")]);
    assert_ok(&net.del(&a), "DEL");
    assert_eq!(net.add_ok(&ctr(), 1), vec![ip("10.28.0.12")]);
    assert_eq!(
        net.add_ok(&ctr(), 1),
        vec![ip("10.28.0.10")],
        "wrap around to the freed address"
    );
}

#[test]
fn requested_ip_via_cni_args() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": ranges(&["10.29.0.0/24", "fd00:29::/64"]) }),
    );
    let c = ctr();
    let out = run_or_panic(
        &net.cmd("ADD", &c, "eth0")
            .cni_args("IP=10.29.0.50,fd00:29::50"),
    );
    assert_ok(&out, "ADD with CNI_ARGS IP=");
    let got: BTreeSet<String> = out.addresses().into_iter().collect();
    let want: BTreeSet<String> = ["10.29.0.50/24".to_string(), "fd00:29::50/64".to_string()].into();
    assert_eq!(got, want, "{}", out.describe());

    let single = HostLocalNet::new("0.4.0", ipam_v4("10.29.1.0/24"));
    let out = run_or_panic(&single.cmd("ADD", &ctr(), "eth0").cni_args("IP=10.29.1.77"));
    assert_ok(&out, "ADD with CNI_ARGS IP= (single)");
    assert_eq!(out.addresses(), vec!["10.29.1.77/24".to_string()]);
}

#[test]
fn requested_ip_via_args_cni_ips() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.30.0.0/24"));
    let with_prefix = run_or_panic(
        &net.cmd("ADD", &ctr(), "eth0")
            .stdin(net.conf_with(json!({ "args": { "cni": { "ips": ["10.30.0.60/24"] } } }))),
    );
    assert_ok(&with_prefix, "args.cni.ips with prefix");
    assert_eq!(with_prefix.addresses(), vec!["10.30.0.60/24".to_string()]);
    let bare = run_or_panic(
        &net.cmd("ADD", &ctr(), "eth0")
            .stdin(net.conf_with(json!({ "args": { "cni": { "ips": ["10.30.0.61"] } } }))),
    );
    assert_ok(&bare, "args.cni.ips without prefix");
    assert_eq!(bare.addresses(), vec!["10.30.0.61/24".to_string()]);
}

#[test]
fn requested_ip_via_runtime_config_ips() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.31.0.0/24"));
    let out = run_or_panic(
        &net.cmd("ADD", &ctr(), "eth0")
            .stdin(net.conf_with(json!({ "runtimeConfig": { "ips": ["10.31.0.70/24"] } }))),
    );
    assert_ok(&out, "runtimeConfig.ips");
    assert_eq!(out.addresses(), vec!["10.31.0.70/24".to_string()]);
}

#[test]
fn requested_ip_in_use_is_refused_102() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.32.0.0/24"));
    let a = ctr();
    let first = run_or_panic(&net.cmd("ADD", &a, "eth0").cni_args("IP=10.32.0.50"));
    assert_ok(&first, "first request");
    let b = ctr();
    let second = run_or_panic(&net.cmd("ADD", &b, "eth0").cni_args("IP=10.32.0.50"));
    assert_cni_error(&second, 102, "same address requested twice");
    assert!(
        net.allocations_of(&b).is_empty(),
        "refused ADD left rows: {:?}",
        net.allocations()
    );
    assert_eq!(net.allocations_of(&a).len(), 1);

    // The gateway is never handed out, not even on request (the code is not pinned down).
    let g = ctr();
    let gw = run_or_panic(&net.cmd("ADD", &g, "eth0").cni_args("IP=10.32.0.1"));
    assert!(
        !gw.success() && !gw.panicked() && gw.error_code().is_some(),
        "requesting the gateway must fail: {}",
        gw.describe()
    );
    assert!(net.allocations_of(&g).is_empty());
}

#[test]
fn requested_ip_outside_ranges_is_refused_101() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.33.0.0/24"));
    let c = ctr();
    let out = run_or_panic(&net.cmd("ADD", &c, "eth0").cni_args("IP=10.99.0.5"));
    let msg = assert_cni_error(&out, 101, "address outside every range");
    assert!(
        msg.contains("10.99.0.5"),
        "msg should name the address: {msg}"
    );
    // rangeStart/rangeEnd bound the range too, not just the subnet.
    let narrow = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.33.1.0/24", "rangeStart": "10.33.1.10", "rangeEnd": "10.33.1.20" }]] }),
    );
    let out = run_or_panic(
        &narrow
            .cmd("ADD", &ctr(), "eth0")
            .stdin(narrow.conf_with(json!({ "runtimeConfig": { "ips": ["10.33.1.30"] } }))),
    );
    let msg = assert_cni_error(
        &out,
        101,
        "address in subnet but outside rangeStart..rangeEnd",
    );
    assert!(msg.contains("10.33.1.30"), "{msg}");
}

#[test]
fn runtime_config_ip_ranges_replace_ranges() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.34.0.0/24"));
    let conf =
        net.conf_with(json!({ "runtimeConfig": { "ipRanges": [[{ "subnet": "10.34.9.0/24" }]] } }));
    let out = run_or_panic(&net.cmd("ADD", &ctr(), "eth0").stdin(conf));
    assert_ok(&out, "ADD with runtimeConfig.ipRanges");
    let res = out.json.clone().unwrap_or_default();
    let a = ip(res["ips"][0]["address"].as_str().unwrap_or_default());
    assert!(
        subnet_contains("10.34.9.0/24", a),
        "ipRanges not used: {res}"
    );
    assert_eq!(res["ips"][0]["gateway"], json!("10.34.9.1"));
}

fn write_resolv_conf(dir: &Path) -> PathBuf {
    let p = dir.join("resolv.conf");
    std::fs::write(
        &p,
        "# written by the berth tests\nnameserver 10.1.1.1\nnameserver fd00::53\ndomain example.com\nsearch a.example b.example\noptions ndots:5 timeout:2\n",
    )
    .expect("write resolv.conf");
    p
}

fn expected_dns() -> Value {
    json!({
        "nameservers": ["10.1.1.1", "fd00::53"],
        "domain": "example.com",
        "search": ["a.example", "b.example"],
        "options": ["ndots:5", "timeout:2"],
    })
}

#[test]
fn routes_and_resolv_conf_in_result() {
    let routes = json!([{ "dst": "0.0.0.0/0" }, { "dst": "192.168.0.0/16", "gw": "10.35.0.254" }]);
    for v in ["0.2.0", "0.3.1", "1.0.0", "1.1.0"] {
        let mut net = HostLocalNet::new(
            v,
            json!({ "ranges": ranges(&["10.35.0.0/24"]), "routes": routes.clone() }),
        );
        let rc = write_resolv_conf(net.data_dir());
        net.ipam["resolvConf"] = json!(rc.to_string_lossy());
        let out = net.add(&ctr());
        assert_ok(&out, &format!("ADD {v} with routes + resolvConf"));
        let res = out.json.clone().unwrap_or_default();
        assert_eq!(res["dns"], expected_dns(), "{v}: dns: {res}");
        if version_at_least(v, "0.3.0") {
            assert_eq!(res["routes"], routes, "{v}: routes: {res}");
        } else {
            assert_eq!(res["ip4"]["routes"], routes, "{v}: ip4.routes: {res}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// c) concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn two_hundred_concurrent_adds_then_dels() {
    const N: usize = 200;
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.70.0.0/16"));
    let ids: Vec<String> = (0..N)
        .map(|i| format!("{}-{i}", unique_name("conc")))
        .collect();
    let children: Vec<_> = ids
        .iter()
        .map(|c| {
            net.cmd("ADD", c, "eth0")
                .spawn()
                .expect("spawn berth-host-local ADD (is it built?)")
        })
        .collect();
    let outs: Vec<CniOutput> = children
        .into_iter()
        .map(|ch| wait_output(ch, Duration::from_secs(300)).expect("wait for ADD"))
        .collect();
    let mut addrs = BTreeSet::new();
    let mut failures = Vec::new();
    for (c, out) in ids.iter().zip(&outs) {
        if !out.success() || out.panicked() {
            failures.push(format!("{c}: {}", out.describe()));
            continue;
        }
        let got = out.addresses();
        assert_eq!(got.len(), 1, "{c}: {}", out.describe());
        let a = ip(&got[0]);
        assert!(subnet_contains("10.70.0.0/16", a), "{a} outside the subnet");
        assert!(
            addrs.insert(a),
            "address {a} handed out twice (second to {c})"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {N} concurrent ADDs failed; first: {}",
        failures.len(),
        failures[0]
    );
    assert_eq!(addrs.len(), N);
    assert_eq!(net.allocations().len(), N, "store rows after {N} ADDs");

    let children: Vec<_> = ids
        .iter()
        .map(|c| {
            net.cmd("DEL", c, "eth0")
                .spawn()
                .expect("spawn berth-host-local DEL")
        })
        .collect();
    let outs: Vec<CniOutput> = children
        .into_iter()
        .map(|ch| wait_output(ch, Duration::from_secs(300)).expect("wait for DEL"))
        .collect();
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| !o.success() || o.panicked())
        .map(CniOutput::describe)
        .collect();
    assert!(
        failed.is_empty(),
        "{} concurrent DELs failed; first: {}",
        failed.len(),
        failed[0]
    );
    assert!(
        net.allocations().is_empty(),
        "rows left after {N} DELs: {:?}",
        net.allocations()
    );
    assert_eq!(
        integrity_check(&net.store()).expect("integrity_check"),
        "ok"
    );
}

// ---------------------------------------------------------------------------------------------
// d) DEL
// ---------------------------------------------------------------------------------------------

#[test]
fn del_is_repeatable_and_tolerates_unknown_containers() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.36.0.0/24"));
    let keep = ctr();
    net.add_ok(&keep, 1);
    let c = ctr();
    net.add_ok(&c, 1);
    assert_ok(&net.del(&c), "first DEL");
    assert_ok(&net.del(&c), "second DEL");
    assert_ok(&net.del(&ctr()), "DEL of a container never added");
    assert_ok(
        &net.del_if(&keep, "eth1"),
        "DEL of another interface of a live container",
    );
    let rows = net.allocations();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].container_id, keep);
    assert_eq!(rows[0].ifname, "eth0");

    // DEL on a network whose store was never created.
    let fresh = HostLocalNet::new("1.0.0", ipam_v4("10.36.1.0/24"));
    assert_ok(&fresh.del(&ctr()), "DEL on a fresh network");
    // DEL without CNI_NETNS (the netns may be gone): allowed by the spec.
    let out = run_or_panic(&net.cmd("DEL", &keep, "eth0").without_env("CNI_NETNS"));
    assert_ok(&out, "DEL without CNI_NETNS");
    assert!(net.allocations().is_empty());
}

// ---------------------------------------------------------------------------------------------
// e) exhaustion
// ---------------------------------------------------------------------------------------------

#[test]
fn exhausted_range_gives_100_naming_the_subnet() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.9.0.0/30"));
    assert_eq!(net.add_ok(&ctr(), 1), vec![ip("10.9.0.2")]);
    let c = ctr();
    let msg = assert_cni_error(&net.add(&c), 100, "/30 exhausted");
    assert!(
        msg.contains("10.9.0.0/30"),
        "msg should name the subnet: {msg}"
    );
    assert!(net.allocations_of(&c).is_empty());
}

#[test]
fn dual_stack_exhaustion_of_one_set_allocates_nothing() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": ranges(&["10.37.0.0/30", "fd00:37::/64"]) }),
    );
    net.add_ok(&ctr(), 2);
    let c = ctr();
    let msg = assert_cni_error(&net.add(&c), 100, "v4 set exhausted in a dual-stack config");
    assert!(msg.contains("10.37.0.0/30"), "{msg}");
    assert!(
        net.allocations_of(&c).is_empty(),
        "the v6 address of a failed ADD must not stay held: {:?}",
        net.allocations()
    );
}

#[test]
fn status_reports_exhaustion_with_50() {
    let net = HostLocalNet::new("1.1.0", ipam_v4("10.38.0.0/30"));
    assert_ok(
        &run_or_panic(&net.bare("STATUS")),
        "STATUS on an empty network",
    );
    net.add_ok(&ctr(), 1);
    let out = run_or_panic(&net.bare("STATUS"));
    assert_cni_error(&out, 50, "STATUS with every range set exhausted");
    // Not every set exhausted -> still usable.
    let dual = HostLocalNet::new(
        "1.1.0",
        json!({ "ranges": ranges(&["10.38.1.0/30", "fd00:38::/64"]) }),
    );
    dual.add_ok(&ctr(), 2);
    let s = run_or_panic(&dual.bare("STATUS"));
    assert_ok(&s, "STATUS with one of two range sets exhausted");
}

#[test]
fn status_with_unusable_store_is_50() {
    let mut net = HostLocalNet::new("1.1.0", ipam_v4("10.39.0.0/24"));
    let blocker = net.data_dir().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("write blocker file");
    net.ipam["dataDir"] = json!(blocker.join("sub").to_string_lossy());
    assert_cni_error(
        &run_or_panic(&net.bare("STATUS")),
        50,
        "STATUS with a dataDir under a regular file",
    );
}

// ---------------------------------------------------------------------------------------------
// f) crashes
// ---------------------------------------------------------------------------------------------

const PAUSE_WAIT: Duration = Duration::from_secs(60);

#[test]
fn sigkill_before_commit_leaves_nothing() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.40.0.0/24"));
    let before = ctr();
    net.add_ok(&before, 1);
    let victim = ctr();
    let mut child = net
        .cmd("ADD", &victim, "eth0")
        .env("BERTH_FAULT_PAUSE", "ipam-before-commit")
        .spawn_watched()
        .expect("spawn berth-host-local");
    child
        .wait_for_fault_pause("ipam-before-commit", PAUSE_WAIT)
        .expect("plugin should pause at ipam-before-commit");
    // A concurrent ADD started while the transaction is open must wait for it, not fail.
    let waiter_id = ctr();
    let waiter = net
        .cmd("ADD", &waiter_id, "eth0")
        .spawn()
        .expect("spawn a concurrent ADD");
    std::thread::sleep(Duration::from_millis(300));
    let killed = child.kill().expect("SIGKILL");
    assert!(
        killed.exit_code().is_none(),
        "plugin should have died by SIGKILL: {}",
        killed.describe()
    );
    let waited = wait_output(waiter, Duration::from_secs(60)).expect("wait for the concurrent ADD");
    assert_ok(
        &waited,
        "ADD that started while another transaction was open (held 300 ms, then killed)",
    );
    assert_eq!(net.allocations_of(&waiter_id).len(), 1);

    // The next plugin run must not be blocked by the dead transaction.
    let next = ctr();
    let out = run_or_panic(
        &net.cmd("ADD", &next, "eth0")
            .timeout(Duration::from_secs(60)),
    );
    assert_ok(&out, "ADD after a killed transaction");
    assert_eq!(integrity_check(&net.store()).expect("open store"), "ok");
    assert!(
        net.allocations_of(&victim).is_empty(),
        "uncommitted allocation survived: {:?}",
        net.allocations()
    );
    assert_eq!(net.allocations_of(&before).len(), 1);
    assert_eq!(net.allocations_of(&next).len(), 1);
    // The killed container's retry (as a runtime would after a timeout) works.
    net.add_ok(&victim, 1);
}

fn kill_after_commit(net: &HostLocalNet, victim: &str) -> IpAddr {
    let mut child = net
        .cmd("ADD", victim, "eth0")
        .env("BERTH_FAULT_PAUSE", "ipam-after-commit")
        .spawn_watched()
        .expect("spawn berth-host-local");
    child
        .wait_for_fault_pause("ipam-after-commit", PAUSE_WAIT)
        .expect("plugin should pause at ipam-after-commit");
    let killed = child.kill().expect("SIGKILL");
    assert!(
        killed.exit_code().is_none(),
        "plugin should have died by SIGKILL: {}",
        killed.describe()
    );
    assert!(
        killed.stdout.is_empty(),
        "no result may be printed before the pause point: {}",
        killed.describe()
    );
    assert_eq!(integrity_check(&net.store()).expect("open store"), "ok");
    let rows = net.allocations_of(victim);
    assert_eq!(
        rows.len(),
        1,
        "committed allocation should be held: {:?}",
        net.allocations()
    );
    ip(rows[0].ip())
}

#[test]
fn sigkill_after_commit_is_held_then_del_frees_it() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.41.0.0/24"));
    let victim = ctr();
    let held = kill_after_commit(&net, &victim);
    // Nobody else gets the held address.
    let other = net.add_ok(&ctr(), 1);
    assert!(
        !other.contains(&held),
        "address {held} of the killed ADD handed out again"
    );
    assert_ok(&net.del(&victim), "DEL after a lost ADD result");
    assert!(
        net.allocations_of(&victim).is_empty(),
        "{:?}",
        net.allocations()
    );
}

#[test]
fn sigkill_after_commit_then_identical_retry_gets_the_same_address() {
    // The runtime lost the result (plugin killed after commit) and retries the same ADD.
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.41.1.0/24"));
    let victim = ctr();
    let held = kill_after_commit(&net, &victim);
    net.add_ok(&ctr(), 1); // move the round-robin cursor
    let retry = net.add(&victim);
    assert_ok(&retry, "identical retry after a lost result");
    assert_eq!(
        retry.addresses().iter().map(|a| ip(a)).collect::<Vec<_>>(),
        vec![held]
    );
    assert_eq!(net.allocations_of(&victim).len(), 1);
}

#[test]
fn sigkill_after_commit_then_gc_frees_it() {
    let net = HostLocalNet::new("1.1.0", ipam_v4("10.42.0.0/24"));
    let victim = ctr();
    kill_after_commit(&net, &victim);
    assert_ok(&gc(&net, "cni.dev/valid-attachments", &[]), "GC []");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
}

// ---------------------------------------------------------------------------------------------
// GC
// ---------------------------------------------------------------------------------------------

#[test]
fn gc_releases_everything_not_listed() {
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let net = HostLocalNet::new("1.1.0", ipam_v4("10.43.0.0/24"));
        let (a, b, c) = (ctr(), ctr(), ctr());
        net.add_ok(&a, 1);
        net.add_ok(&b, 1);
        assert_ok(&net.add_if(&c, "eth1"), "ADD eth1");
        assert_ok(&net.add_if(&c, "eth2"), "ADD eth2");
        let out = gc(
            &net,
            key,
            &[(&a, "eth0"), (&c, "eth2"), ("never-added", "eth0")],
        );
        assert_ok(&out, &format!("GC with {key}"));
        let left: BTreeSet<(String, String)> = net
            .allocations()
            .into_iter()
            .map(|r| (r.container_id, r.ifname))
            .collect();
        let want: BTreeSet<(String, String)> = [
            (a.clone(), "eth0".to_string()),
            (c.clone(), "eth2".to_string()),
        ]
        .into();
        assert_eq!(left, want, "GC with {key}");
    }
}

// ---------------------------------------------------------------------------------------------
// g) reboots
// ---------------------------------------------------------------------------------------------

#[test]
fn reboot_reclaims_older_boot_allocations_only() {
    // /30: exactly one usable address (.2), so the second ADD succeeds only if the first
    // container's allocation from the previous boot was reclaimed.
    let net = HostLocalNet::new("1.1.0", ipam_v4("10.44.0.0/30"));
    let (boot_a, boot_b) = (boot_id(), boot_id());
    let first = ctr();
    assert_ok(
        &run_or_panic(
            &net.cmd("ADD", &first, "eth0")
                .env("BERTH_BOOT_ID", boot_a.clone()),
        ),
        "ADD under boot A",
    );
    let second = ctr();
    let out = run_or_panic(
        &net.cmd("ADD", &second, "eth0")
            .env("BERTH_BOOT_ID", boot_b.clone()),
    );
    assert_ok(
        &out,
        "ADD under boot B (needs the boot-A allocation reclaimed)",
    );
    assert_eq!(out.addresses(), vec!["10.44.0.2/30".to_string()]);
    let rows = net.allocations();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].container_id, second);

    // Same boot: never reclaimed, whatever runs.
    let third = ctr();
    let out = run_or_panic(
        &net.cmd("ADD", &third, "eth0")
            .env("BERTH_BOOT_ID", boot_b.clone()),
    );
    assert_cni_error(
        &out,
        100,
        "boot-B allocation must not be reclaimed under boot B",
    );
    assert_ok(
        &run_or_panic(
            &net.cmd("DEL", &first, "eth0")
                .env("BERTH_BOOT_ID", boot_b.clone()),
        ),
        "DEL of the reclaimed container",
    );
    let status = run_or_panic(&net.bare("STATUS").env("BERTH_BOOT_ID", boot_b.clone()));
    assert_cni_error(
        &status,
        50,
        "STATUS under boot B with the only address held by boot B",
    );
    let g = run_or_panic(
        &gc_run(&net, "cni.dev/valid-attachments", &[(&second, "eth0")])
            .env("BERTH_BOOT_ID", boot_b.clone()),
    );
    assert_ok(&g, "GC under boot B");
    let rows = net.allocations();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].container_id, second);
}

#[test]
fn status_under_a_new_boot_reclaims_old_allocations() {
    let net = HostLocalNet::new("1.1.0", ipam_v4("10.45.0.0/30"));
    let (boot_a, boot_b) = (boot_id(), boot_id());
    assert_ok(
        &run_or_panic(
            &net.cmd("ADD", &ctr(), "eth0")
                .env("BERTH_BOOT_ID", boot_a.clone()),
        ),
        "ADD under boot A",
    );
    assert_cni_error(
        &run_or_panic(&net.bare("STATUS").env("BERTH_BOOT_ID", boot_a)),
        50,
        "STATUS under boot A, exhausted",
    );
    let s = run_or_panic(&net.bare("STATUS").env("BERTH_BOOT_ID", boot_b));
    assert_ok(&s, "STATUS under boot B reclaims boot A");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
}

// ---------------------------------------------------------------------------------------------
// h) duplicate ADD
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_add_retry_returns_same_addresses() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": ranges(&["10.46.0.0/24", "fd00:46::/64"]) }),
    );
    let c = ctr();
    let first = net.add(&c);
    assert_ok(&first, "first ADD");
    net.add_ok(&ctr(), 2); // move the round-robin cursor
    let retry = net.add(&c);
    assert_ok(&retry, "identical retry");
    let (a, b): (BTreeSet<String>, BTreeSet<String>) = (
        first.addresses().into_iter().collect(),
        retry.addresses().into_iter().collect(),
    );
    assert_eq!(a, b, "a retry must return the same addresses");
    assert_eq!(
        net.allocations_of(&c).len(),
        2,
        "a retry must not allocate more: {:?}",
        net.allocations()
    );

    // Also with CNI_ARGS, as long as they are identical.
    let d = ctr();
    let r1 = run_or_panic(&net.cmd("ADD", &d, "eth0").cni_args("IP=10.46.0.200"));
    assert_ok(&r1, "ADD with IP=");
    net.add_ok(&ctr(), 2);
    let r2 = run_or_panic(&net.cmd("ADD", &d, "eth0").cni_args("IP=10.46.0.200"));
    assert_ok(&r2, "identical retry with IP=");
    assert_eq!(r1.addresses(), r2.addresses());
}

#[test]
fn duplicate_add_with_other_netns_or_config_is_103() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.47.0.0/24"));
    let c = ctr();
    let held = net.add_ok(&c, 1);

    let other_ns = run_or_panic(
        &net.cmd("ADD", &c, "eth0")
            .netns("/var/run/netns/some-other-pod"),
    );
    assert_cni_error(&other_ns, 103, "same container+ifname, other netns");

    let mut changed = net.conf_value();
    changed["ipam"]["routes"] = json!([{ "dst": "0.0.0.0/0" }]);
    let other_conf = run_or_panic(&net.cmd("ADD", &c, "eth0").stdin(conf_bytes(&changed)));
    assert_cni_error(&other_conf, 103, "same container+ifname, other config");

    let other_args = run_or_panic(&net.cmd("ADD", &c, "eth0").cni_args("IP=10.47.0.99"));
    assert_cni_error(&other_args, 103, "same container+ifname, other CNI_ARGS");

    let rows = net.allocations_of(&c);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        ip(rows[0].ip()),
        held[0],
        "the original allocation must survive refused duplicates"
    );
}

#[test]
fn same_container_second_interface_gets_its_own_address() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.48.0.0/24"));
    let c = ctr();
    let a = net.add_if(&c, "eth0");
    let b = net.add_if(&c, "net1");
    assert_ok(&a, "eth0");
    assert_ok(&b, "net1");
    assert_ne!(a.addresses(), b.addresses());
    assert_ok(&net.del_if(&c, "net1"), "DEL net1");
    let rows = net.allocations_of(&c);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].ifname, "eth0");
}

// ---------------------------------------------------------------------------------------------
// i) bad input
// ---------------------------------------------------------------------------------------------

struct Case {
    what: &'static str,
    run: CniRun,
    code: u64,
    /// The error text must contain at least one of these (empty: no requirement).
    mentions: Vec<String>,
}

#[test]
fn bad_input_is_rejected_with_the_right_code() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.49.0.0/24"));
    // A fresh container per case, so one case cannot make another a duplicate ADD.
    let add = || net.cmd("ADD", &ctr(), "eth0");
    let with_ipam = |ipam: Value| {
        let mut v = net.conf_value();
        let data_dir = v["ipam"]["dataDir"].clone();
        v["ipam"] = ipam;
        v["ipam"]["dataDir"] = data_dir;
        v["ipam"]["type"] = json!("host-local");
        conf_bytes(&v)
    };
    let blocker = net.data_dir().join("regular-file");
    std::fs::write(&blocker, b"not a directory").expect("write blocker");
    let bad_dir = blocker.join("data");
    let mut unwritable = net.conf_value();
    unwritable["ipam"]["dataDir"] = json!(bad_dir.to_string_lossy());
    let mut no_name = net.conf_value();
    no_name.as_object_mut().map(|o| o.remove("name"));
    let mut bad_version = net.conf_value();
    bad_version["cniVersion"] = json!("9.9.9");

    let m = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case { what: "malformed JSON", run: add().stdin(&b"{\"cniVersion\": \"1.0.0\", \"name\": "[..]), code: 6, mentions: vec![] },
        Case { what: "empty stdin", run: add().stdin(Vec::new()), code: 6, mentions: vec![] },
        Case { what: "unknown cniVersion", run: add().stdin(conf_bytes(&bad_version)), code: 1, mentions: m(&["9.9.9"]) },
        Case { what: "unknown CNI_COMMAND", run: net.cmd("FOO", &ctr(), "eth0"), code: 4, mentions: m(&["CNI_COMMAND"]) },
        Case { what: "missing CNI_CONTAINERID", run: add().without_env("CNI_CONTAINERID"), code: 4, mentions: m(&["CNI_CONTAINERID"]) },
        Case { what: "invalid CNI_CONTAINERID", run: add().container_id("bad id!/x"), code: 4, mentions: m(&["CNI_CONTAINERID"]) },
        Case { what: "missing CNI_IFNAME", run: add().without_env("CNI_IFNAME"), code: 4, mentions: m(&["CNI_IFNAME"]) },
        Case { what: "CNI_IFNAME too long", run: add().ifname("eth0123456789abcd"), code: 4, mentions: m(&["CNI_IFNAME"]) },
        Case { what: "CNI_IFNAME with a slash", run: add().ifname("eth/0"), code: 4, mentions: m(&["CNI_IFNAME"]) },
        Case { what: "missing CNI_NETNS on ADD", run: add().without_env("CNI_NETNS"), code: 4, mentions: m(&["CNI_NETNS"]) },
        Case {
            what: "invalid subnet",
            run: add().stdin(with_ipam(json!({ "ranges": [[{ "subnet": "10.0.0.0/33" }]] }))),
            code: 7,
            mentions: m(&["subnet"]),
        },
        Case {
            what: "rangeStart outside subnet",
            run: add().stdin(with_ipam(json!({ "ranges": [[{ "subnet": "10.49.1.0/24", "rangeStart": "10.50.0.5" }]] }))),
            code: 7,
            mentions: m(&["rangeStart"]),
        },
        Case {
            what: "rangeEnd before rangeStart",
            run: add().stdin(with_ipam(json!({ "ranges": [[{ "subnet": "10.49.1.0/24", "rangeStart": "10.49.1.50", "rangeEnd": "10.49.1.10" }]] }))),
            code: 7,
            mentions: m(&["rangeEnd", "rangeStart"]),
        },
        Case {
            what: "overlapping range sets",
            run: add().stdin(with_ipam(json!({ "ranges": [[{ "subnet": "10.49.2.0/24" }], [{ "subnet": "10.49.2.0/25" }]] }))),
            code: 7,
            mentions: m(&["ranges", "overlap"]),
        },
        // (A gateway outside the subnet is accepted by the reference, so it is not an error here.)
        Case {
            what: "gateway not an address",
            run: add().stdin(with_ipam(json!({ "ranges": [[{ "subnet": "10.49.3.0/24", "gateway": "bogus" }]] }))),
            code: 7,
            mentions: m(&["gateway"]),
        },
        Case { what: "no ranges and no subnet", run: add().stdin(with_ipam(json!({}))), code: 7, mentions: m(&["ranges", "subnet"]) },
        Case {
            what: "ranges is not a list",
            run: add().stdin(with_ipam(json!({ "ranges": "10.0.0.0/24" }))),
            code: 7,
            mentions: m(&["ranges"]),
        },
        Case { what: "missing name", run: add().stdin(conf_bytes(&no_name)), code: 7, mentions: m(&["name"]) },
        Case { what: "requested IP outside every range", run: add().cni_args("IP=192.0.2.9"), code: 101, mentions: m(&["192.0.2.9"]) },
        Case {
            what: "dataDir under a regular file",
            run: add().stdin(conf_bytes(&unwritable)),
            code: 5,
            mentions: vec!["dataDir".to_string(), blocker.to_string_lossy().into_owned()],
        },
    ];

    let mut failures = Vec::new();
    for case in cases {
        let out = run_or_panic(&case.run);
        match check_cni_error(&out, case.code) {
            Err(why) => failures.push(format!(
                "[{}] expected code {}: {why}: {}",
                case.what,
                case.code,
                out.describe()
            )),
            Ok(text) => {
                println!("[{}] code {}: {}", case.what, case.code, text.trim());
                if !case.mentions.is_empty()
                    && !case.mentions.iter().any(|m| text.contains(m.as_str()))
                {
                    failures.push(format!(
                        "[{}] message should mention one of {:?}: {text}",
                        case.what, case.mentions
                    ));
                }
            }
        }
    }
    let rows = read_allocations(&net.store()).unwrap_or_default();
    assert!(rows.is_empty(), "rejected ADDs left rows: {rows:?}");
    assert!(
        failures.is_empty(),
        "{} bad-input case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn garbage_input_never_panics() {
    let net = HostLocalNet::new("1.1.0", ipam_v4("10.51.0.0/24"));
    let dd = net.data_dir().to_string_lossy().into_owned();
    let with = |ipam: Value, extra: Value| {
        let mut v = json!({ "cniVersion": "1.1.0", "name": net.name, "type": "x", "ipam": ipam });
        if v["ipam"].is_object() {
            v["ipam"]["dataDir"] = json!(dd);
        }
        merge_top_level(&mut v, &extra);
        conf_bytes(&v)
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut bodies: Vec<Vec<u8>> = vec![
        b"null".to_vec(),
        b"[]".to_vec(),
        b"42".to_vec(),
        b"\"str\"".to_vec(),
        vec![0xff, 0xfe, 0x00, b'{'],
        deep.into_bytes(),
        br#"{"cniVersion":"1.1.0"}"#.to_vec(),
        br#"{"cniVersion":1}"#.to_vec(),
        br#"{"cniVersion":"1.1.0","name":"x","ipam":null}"#.to_vec(),
        format!(r#"{{"cniVersion":"","name":"x","ipam":{{"dataDir":"{dd}"}}}}"#).into_bytes(),
        format!(r#"{{"cniVersion":"1.1.0","name":"","ipam":{{"dataDir":"{dd}","subnet":"10.51.8.0/24"}}}}"#).into_bytes(),
        format!(r#"{{"cniVersion":"1.1.0","name":"../../escape","ipam":{{"dataDir":"{dd}/x/y/z","subnet":"10.51.8.0/24"}}}}"#).into_bytes(),
    ];
    let ipams = [
        json!({ "ranges": [[]] }),
        json!({ "ranges": [] }),
        json!({ "ranges": [[{}]] }),
        json!({ "ranges": [[{ "subnet": "" }]] }),
        json!({ "ranges": [[{ "subnet": 7 }]] }),
        json!({ "ranges": [[{ "subnet": "::/0" }]] }),
        json!({ "ranges": [[{ "subnet": "0.0.0.0/0" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.1.0/32" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.1.0/31" }]] }),
        json!({ "ranges": [[{ "subnet": "fd00:51::/128" }]] }),
        json!({ "ranges": [[{ "subnet": "fd00:51::/127" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.2.7/24" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.3.0/24", "rangeStart": "300.1.1.1" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.3.0/24", "rangeStart": "fd00::1" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.3.0/24", "gateway": "10.51.3.0" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.3.0/24" }, { "subnet": "fd00:52::/64" }]] }),
        json!({ "ranges": [[{ "subnet": "10.51.4.0/24" }]], "routes": "x" }),
        json!({ "ranges": [[{ "subnet": "10.51.4.0/24" }]], "routes": [{ "dst": "nope" }] }),
        json!({ "ranges": [[{ "subnet": "10.51.4.0/24" }]], "resolvConf": "/nonexistent/resolv.conf" }),
        json!({ "ranges": [[{ "subnet": "10.51.4.0/24" }]], "resolvConf": 5 }),
        json!({ "subnet": "10.51.5.0/24", "ranges": [[{ "subnet": "10.51.6.0/24" }]] }),
        json!({ "subnet": [1, 2] }),
    ];
    for ipam in &ipams {
        bodies.push(with(ipam.clone(), json!({})));
    }
    let good = json!({ "ranges": [[{ "subnet": "10.51.9.0/24" }]] });
    for extra in [
        json!({ "runtimeConfig": { "ips": [5] } }),
        json!({ "runtimeConfig": { "ips": ["garbage"] } }),
        json!({ "runtimeConfig": { "ipRanges": "x" } }),
        json!({ "runtimeConfig": { "ipRanges": [[{ "subnet": "bad" }]] } }),
        json!({ "args": { "cni": { "ips": "x" } } }),
        json!({ "args": { "cni": { "ips": ["10.51.9.5/99"] } } }),
        json!({ "prevResult": "x" }),
        json!({ "prevResult": { "ips": [{ "address": "garbage" }] } }),
        json!({ "cni.dev/valid-attachments": "x" }),
        json!({ "cni.dev/valid-attachments": [{ "containerID": 5 }] }),
    ] {
        bodies.push(with(good.clone(), extra));
    }
    let cni_args = [
        "",
        "IP=",
        "IP=garbage",
        "IP=10.51.9.5,,",
        "=;;;=",
        "IgnoreUnknown=1;IP=10.51.9.6;X=y",
    ];

    let mut failures = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        for command in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
            let args = cni_args[i % cni_args.len()];
            let run = net
                .cmd(command, &format!("garbage-{i}"), "eth0")
                .cni_args(args)
                .stdin(body.clone())
                .timeout(Duration::from_secs(60));
            let out = run_or_panic(&run);
            let ok = !out.panicked()
                && !out.timed_out
                && match out.exit_code() {
                    Some(0) => true,
                    Some(1) => out.error_code().is_some(),
                    _ => false,
                };
            if !ok {
                failures.push(format!(
                    "{command} body #{i} ({}) CNI_ARGS={args:?}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]),
                    out.describe()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} run(s) panicked, hung or exited oddly:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// j) migration from the reference on-disk format
// ---------------------------------------------------------------------------------------------

fn list_json(net: &HostLocalNet, extra: &[&str]) -> Vec<Value> {
    let dd = net.data_dir().to_string_lossy().into_owned();
    let mut args = vec!["list", "--data-dir", dd.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = net.cli(&args);
    assert_ok(&out, "list --json");
    match out.json.clone() {
        Some(Value::Array(v)) => v,
        _ => panic!("list --json did not print a JSON array: {}", out.describe()),
    }
}

fn listed(entries: &[Value]) -> BTreeSet<(String, String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                strip_prefix_len(e["address"].as_str().unwrap_or_default()).to_string(),
                e["containerId"].as_str().unwrap_or_default().to_string(),
                e["ifname"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn migration_imports_reference_dir() {
    let net = HostLocalNet::new(
        "1.0.0",
        json!({ "ranges": [[{ "subnet": "10.52.0.0/24", "rangeStart": "10.52.0.2", "rangeEnd": "10.52.0.5" }]] }),
    );
    let dir = net.network_dir();
    write_reference_reservation(&dir, "10.52.0.2", "ref-a", Some("eth0")).expect("write");
    write_reference_reservation(&dir, "10.52.0.3", "ref-b", None).expect("write");
    write_reference_reservation(&dir, "10.52.0.4", "ref-c", Some("eth1")).expect("write");
    write_reference_last_reserved(&dir, 0, "10.52.0.4").expect("write");
    write_reference_lock(&dir).expect("write");

    // Only .5 is free.
    let fresh = ctr();
    assert_eq!(
        net.add_ok(&fresh, 1),
        vec![ip("10.52.0.5")],
        "imported addresses must stay held"
    );
    assert_cni_error(&net.add(&ctr()), 100, "range full after import");

    let rows: BTreeSet<(String, String)> = net
        .allocations()
        .into_iter()
        .map(|r| (r.ip().to_string(), r.container_id))
        .collect();
    for (a, c) in [
        ("10.52.0.2", "ref-a"),
        ("10.52.0.3", "ref-b"),
        ("10.52.0.4", "ref-c"),
    ] {
        assert!(
            rows.contains(&(a.to_string(), c.to_string())),
            "{a} of {c} not imported: {rows:?}"
        );
    }

    let entries = list_json(&net, &["--network", &net.name]);
    for e in &entries {
        for key in ["network", "address", "containerId", "ifname", "ageSeconds"] {
            assert!(e.get(key).is_some(), "list entry without {key}: {e}");
        }
        assert_eq!(e["network"], json!(net.name));
    }
    let l = listed(&entries);
    assert!(
        l.contains(&("10.52.0.2".into(), "ref-a".into(), "eth0".into())),
        "{l:?}"
    );
    assert!(
        l.contains(&("10.52.0.4".into(), "ref-c".into(), "eth1".into())),
        "{l:?}"
    );
    assert!(
        l.iter().any(|(a, c, _)| a == "10.52.0.3" && c == "ref-b"),
        "{l:?}"
    );
    assert!(
        l.contains(&("10.52.0.5".into(), fresh.clone(), "eth0".into())),
        "{l:?}"
    );

    // DEL of an imported container frees its address (and the import does not come back).
    assert_ok(&net.del("ref-a"), "DEL ref-a");
    assert_eq!(net.add_ok(&ctr(), 1), vec![ip("10.52.0.2")]);
    assert_ok(&net.del_if("ref-c", "eth1"), "DEL ref-c eth1");
    // Legacy files carry no ifname: the reference releases them by container id alone.
    assert_ok(&net.del("ref-b"), "DEL ref-b");
    let held = held_ips(&net);
    assert!(
        !held.contains(&ip("10.52.0.3")) && !held.contains(&ip("10.52.0.4")),
        "{held:?}"
    );
}

/// Removes the listed trees, then the listed directories if they are empty (used for parent
/// directories the test itself created).
struct RemoveOnDrop {
    trees: Vec<PathBuf>,
    created_dirs: Vec<PathBuf>,
}
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.trees {
            let _ = std::fs::remove_dir_all(p);
        }
        for p in &self.created_dirs {
            let _ = std::fs::remove_dir(p);
        }
    }
}

#[test]
fn migration_from_default_reference_location() {
    // Without ipam.dataDir the reference keeps its files in /var/lib/cni/networks/<name>. This
    // test writes there (and our default store under /var/lib/cni), so it runs only as root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to write /var/lib/cni/networks");
        return;
    }
    let name = unique_name("mig");
    let ref_dir = Path::new("/var/lib/cni/networks").join(&name);
    // Parents that do not exist yet are ours to remove afterwards (deepest first).
    let created_dirs: Vec<PathBuf> = [
        "/var/lib/cni/networks",
        "/var/lib/cni/berth",
        "/var/lib/cni",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| !p.exists())
    .collect();
    let _cleanup = RemoveOnDrop {
        trees: vec![ref_dir.clone(), Path::new("/var/lib/cni/berth").join(&name)],
        created_dirs,
    };
    write_reference_reservation(&ref_dir, "10.53.0.2", "ref-x", Some("eth0")).expect("write");
    write_reference_last_reserved(&ref_dir, 0, "10.53.0.2").expect("write");
    write_reference_lock(&ref_dir).expect("write");
    let conf = host_local_conf(
        "1.0.0",
        &name,
        json!({ "type": "host-local", "ranges": [[{ "subnet": "10.53.0.0/29", "rangeStart": "10.53.0.2", "rangeEnd": "10.53.0.3" }]] }),
    );
    let run = |cmd: &str, c: &str| {
        run_or_panic(
            &CniRun::new(host_local_bin())
                .command(cmd)
                .container_id(c)
                .ifname("eth0")
                .netns(NETNS)
                .cni_path(bin_dir())
                .stdin(conf.clone()),
        )
    };
    let out = run("ADD", "new-one");
    assert_ok(&out, "ADD with the default dataDir");
    assert_eq!(
        out.addresses(),
        vec!["10.53.0.3/29".to_string()],
        "the imported .2 must stay held"
    );
    assert_cni_error(&run("ADD", "new-two"), 100, "full after import");
    assert_ok(&run("DEL", "ref-x"), "DEL imported container");
    let again = run("ADD", "new-two");
    assert_ok(&again, "ADD after releasing the imported address");
    assert_eq!(again.addresses(), vec!["10.53.0.2/29".to_string()]);
    for c in ["new-one", "new-two"] {
        assert_ok(&run("DEL", c), "cleanup DEL");
    }
}

// ---------------------------------------------------------------------------------------------
// k) operator CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn cli_list_and_release_round_trip() {
    let net = HostLocalNet::new("1.0.0", ipam_v4("10.54.0.0/24"));
    let (a, b) = (ctr(), ctr());
    net.add_ok(&a, 1);
    assert_ok(&net.add_if(&b, "eth0"), "ADD b eth0");
    assert_ok(&net.add_if(&b, "eth1"), "ADD b eth1");
    let rows = net.allocations();
    assert_eq!(rows.len(), 3);

    let entries = list_json(&net, &["--network", &net.name]);
    assert_eq!(entries.len(), 3, "{entries:?}");
    let want: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| (r.ip().to_string(), r.container_id.clone(), r.ifname.clone()))
        .collect();
    assert_eq!(listed(&entries), want);
    for e in &entries {
        assert_eq!(e["network"], json!(net.name));
        let age = e["ageSeconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("ageSeconds not a number: {e}"));
        assert!((0.0..3600.0).contains(&age), "ageSeconds {age}");
    }
    // Without --network: every network under the data dir.
    assert_eq!(listed(&list_json(&net, &[])), want);

    // Text form names every address and container.
    let dd = net.data_dir().to_string_lossy().into_owned();
    let text = net.cli(&["list", "--data-dir", &dd, "--network", &net.name]);
    assert_ok(&text, "list (text)");
    for r in &rows {
        assert!(
            text.stdout_text().contains(r.ip()) && text.stdout_text().contains(&r.container_id),
            "{}",
            text.describe()
        );
    }

    let rel = net.cli(&[
        "release",
        "--network",
        &net.name,
        "--container",
        &b,
        "--ifname",
        "eth1",
        "--data-dir",
        &dd,
    ]);
    assert_ok(&rel, "release one interface");
    let left: BTreeSet<(String, String)> = net
        .allocations()
        .into_iter()
        .map(|r| (r.container_id, r.ifname))
        .collect();
    assert_eq!(
        left,
        [
            (a.clone(), "eth0".to_string()),
            (b.clone(), "eth0".to_string())
        ]
        .into()
    );
    let rel = net.cli(&[
        "release",
        "--network",
        &net.name,
        "--container",
        &b,
        "--data-dir",
        &dd,
    ]);
    assert_ok(&rel, "release a whole container");
    let left: Vec<String> = net
        .allocations()
        .into_iter()
        .map(|r| r.container_id)
        .collect();
    assert_eq!(left, vec![a.clone()]);
    assert_eq!(list_json(&net, &["--network", &net.name]).len(), 1);

    let unknown = net.cli(&[
        "release",
        "--network",
        &net.name,
        "--container",
        "nobody",
        "--data-dir",
        &dd,
    ]);
    assert!(
        !unknown.panicked() && !unknown.timed_out,
        "{}",
        unknown.describe()
    );
    let bad = net.cli(&["release", "--container", &a, "--data-dir", &dd]);
    assert!(
        !bad.success() && !bad.panicked(),
        "release without --network must fail: {}",
        bad.describe()
    );
    assert_eq!(
        net.allocations().len(),
        1,
        "a refused release must not release"
    );
}

#[test]
fn cli_version_help_and_about() {
    let bin = host_local_bin();
    let version = run_or_panic(&CniRun::new(&bin).arg("--version"));
    assert_ok(&version, "--version");
    assert!(
        version.stdout_text().contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.describe()
    );

    let help = run_or_panic(&CniRun::new(&bin).arg("--help"));
    assert_ok(&help, "--help");
    let h = help.stdout_text();
    assert!(
        h.contains("list") && h.contains("release"),
        "--help should describe list and release: {h}"
    );

    // Run by hand: no CNI_COMMAND, no arguments.
    let about = run_or_panic(&CniRun::new(&bin));
    assert_ok(&about, "about");
    let text = format!("{}{}", about.stdout_text(), about.stderr_text());
    for needle in [
        "berth-host-local",
        env!("CARGO_PKG_VERSION"),
        "1.1.0",
        "0.4.0",
    ] {
        assert!(
            text.contains(needle),
            "about text should contain {needle:?}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// l) same config as the reference host-local
// ---------------------------------------------------------------------------------------------

fn sorted_values(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn same_config_as_reference_host_local() {
    let Some(reference) = reference_host_local() else {
        eprintln!("skipped: reference host-local not installed at {REFERENCE_HOST_LOCAL}");
        return;
    };
    for v in ["0.3.1", "0.4.0", "1.0.0"] {
        let ipam = json!({
            "ranges": [
                [{ "subnet": "10.60.0.0/24", "gateway": "10.60.0.254" }],
                [{ "subnet": "fd00:60::/64", "rangeStart": "fd00:60::100", "rangeEnd": "fd00:60::1ff" }]
            ],
            "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }, { "dst": "172.16.0.0/12", "gw": "10.60.0.254" }],
        });
        let mut ours = HostLocalNet::new(v, ipam.clone());
        let mut theirs = HostLocalNet::with_plugin(reference.clone(), v, ipam);
        theirs.name = ours.name.clone();
        let rc = write_resolv_conf(ours.data_dir());
        ours.ipam["resolvConf"] = json!(rc.to_string_lossy());
        theirs.ipam["resolvConf"] = json!(rc.to_string_lossy());

        let c = ctr();
        let o = ours.add(&c);
        let t = theirs.add(&c);
        assert_ok(&t, &format!("reference ADD {v}"));
        assert_ok(&o, &format!("our ADD {v}"));
        let (oj, tj) = (
            o.json.clone().unwrap_or_default(),
            t.json.clone().unwrap_or_default(),
        );
        for family_v4 in [true, false] {
            let pick = |j: &Value| {
                j["ips"]
                    .as_array()
                    .and_then(|ips| {
                        ips.iter().find(|e| {
                            e["address"]
                                .as_str()
                                .and_then(parse_cidr)
                                .is_some_and(|(a, _)| a.is_ipv4() == family_v4)
                        })
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        panic!(
                            "{v}: no {} address in {j}",
                            if family_v4 { "IPv4" } else { "IPv6" }
                        )
                    })
            };
            let (oe, te) = (pick(&oj), pick(&tj));
            let (oa, ol) = parse_cidr(oe["address"].as_str().unwrap_or_default())
                .unwrap_or_else(|| panic!("{oe}"));
            let (ta, tl) = parse_cidr(te["address"].as_str().unwrap_or_default())
                .unwrap_or_else(|| panic!("{te}"));
            let subnet = if family_v4 {
                "10.60.0.0/24"
            } else {
                "fd00:60::/64"
            };
            assert!(
                subnet_contains(subnet, oa) && subnet_contains(subnet, ta),
                "{v}: ours {oa}, reference {ta}, subnet {subnet}"
            );
            assert_eq!(
                ol, tl,
                "{v}: prefix length differs: ours {oe}, reference {te}"
            );
            assert_eq!(
                oe["gateway"], te["gateway"],
                "{v}: gateway differs: ours {oe}, reference {te}"
            );
            assert_eq!(
                oe.get("version"),
                te.get("version"),
                "{v}: ips[].version differs"
            );
            assert_eq!(oa, ta, "{v}: first allocation differs (round robin like the reference): ours {oe}, reference {te}");
        }
        assert_eq!(
            sorted_values(&oj["routes"]),
            sorted_values(&tj["routes"]),
            "{v}: routes differ:\nours {oj}\nreference {tj}"
        );
        assert_eq!(
            oj["dns"], tj["dns"],
            "{v}: dns differs:\nours {oj}\nreference {tj}"
        );
        assert_eq!(oj["cniVersion"], tj["cniVersion"]);
    }
}
