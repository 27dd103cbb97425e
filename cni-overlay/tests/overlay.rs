//! Overlay integration tests: several "hosts" (network namespaces on an
//! underlay bridge that lives in its own namespace), each running the real
//! `berth-overlayd`, pods attached with the real `berth-overlay`, and real
//! traffic between them. Nothing touches the root network namespace: every
//! link is created directly inside the test's namespaces, and guards remove
//! namespaces and kill daemons even when a test fails. Needs root.
//!
//! The namespaces, the underlay bridge and the daemon guards are the shared
//! `netns-fixture` crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netns_fixture::{is_root, unique_name, wait_until as eventually, ChildGuard, Netns, Underlay};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: overlay tests create network namespaces and need root");
            return;
        }
    };
}

fn bin(name: &str) -> PathBuf {
    match name {
        "berth-overlayd" => PathBuf::from(env!("CARGO_BIN_EXE_berth-overlayd")),
        "berth-overlay" => PathBuf::from(env!("CARGO_BIN_EXE_berth-overlay")),
        other => PathBuf::from(env!("CARGO_BIN_EXE_berth-overlay")).with_file_name(other),
    }
}

/// A daemon stopped (SIGTERM, then SIGKILL) on drop, with its log.
struct Daemon {
    guard: ChildGuard,
    log: PathBuf,
}

impl Daemon {
    fn new(child: Child, log: PathBuf) -> Daemon {
        Daemon {
            guard: ChildGuard::new(child),
            log,
        }
    }

    fn stop(&mut self) {
        self.guard.stop();
    }

    fn kill9(&mut self) {
        self.guard.kill();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Host {
    ns: Netns,
    ip: String,
    subnet_file: PathBuf,
    data_dir: PathBuf,
    daemon: Option<Daemon>,
    node: String,
}

struct Cluster {
    ul: Underlay,
    hosts: Vec<Host>,
    dir: PathBuf,
    store: String,
    etcd: Option<Daemon>,
    resync: &'static str,
    /// Extra berth-overlayd flags for every host.
    extra: Vec<String>,
    /// The pods' `mtu` in the conflist; None: the subnet file's.
    pod_mtu: Option<u32>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(d) = h.daemon.as_mut() {
                d.stop();
            }
        }
        if let Some(e) = self.etcd.as_mut() {
            e.stop();
        }
        self.hosts.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn new(n: usize, use_etcd: bool) -> Cluster {
        let ul = Underlay::create("bul", "br-ul", Some("172.31.250.254/24"));
        let dir = std::env::temp_dir().join(unique_name("berth-ovl"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut c = Cluster {
            ul,
            hosts: Vec::new(),
            store: format!("dir:{}", dir.join("store").display()),
            dir,
            etcd: None,
            resync: "1s",
            extra: Vec::new(),
            pod_mtu: None,
        };
        if use_etcd {
            c.start_etcd();
            c.store = "etcd:http://172.31.250.254:2379".into();
        }
        for _ in 0..n {
            c.add_host();
        }
        c
    }

    fn start_etcd(&mut self) {
        assert!(
            Path::new("/usr/bin/etcd").exists(),
            "etcd is not installed (Debian package etcd-server)"
        );
        let log = self.dir.join("etcd.log");
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args([
                "--listen-client-urls",
                "http://172.31.250.254:2379",
                "--advertise-client-urls",
                "http://172.31.250.254:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        let child = self.ul.spawn(cmd).expect("starting etcd");
        self.etcd = Some(Daemon::new(child, log));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The client port accepts connections once etcd serves.
            if self
                .ul
                .try_exec(&["bash", "-c", "exec 3<>/dev/tcp/172.31.250.254/2379"])
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                self.etcd.as_ref().map(|d| d.log_text()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn add_host(&mut self) -> usize {
        let i = self.hosts.len() + 1;
        let ns = Netns::create("bh");
        let ip = format!("172.31.250.{i}");
        self.ul
            .attach(&ns, &format!("u{i}"), "eth0", &[&format!("{ip}/24")]);
        let hdir = self.dir.join(format!("h{i}"));
        self.hosts.push(Host {
            ns,
            ip,
            subnet_file: hdir.join("subnet.env"),
            data_dir: hdir.join("data"),
            daemon: None,
            node: format!("node{i}"),
        });
        i - 1
    }

    fn daemon_cmd(&self, i: usize, extra: &[&str]) -> Command {
        let h = &self.hosts[i];
        let mut cmd = Command::new(bin("berth-overlayd"));
        h.ns.command(&mut cmd).expect("enter the host netns");
        cmd.args([
            "--node-name",
            &h.node,
            "--network",
            "10.244.0.0/16",
            "--store",
            &self.store,
            "--iface",
            "eth0",
        ])
        .arg("--subnet-file")
        .arg(&h.subnet_file)
        .args(["--lease-ttl", "30s", "--resync-interval", self.resync])
        .args(&self.extra)
        .args(extra);
        cmd
    }

    fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    fn start_with(&mut self, i: usize, extra: &[&str]) {
        let log = self.dir.join(format!(
            "overlayd-{i}-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let child = self
            .daemon_cmd(i, extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("starting berth-overlayd");
        self.hosts[i].daemon = Some(Daemon::new(child, log));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.hosts[i].subnet_file.exists() {
            assert!(
                Instant::now() < deadline,
                "berth-overlayd on host {i} wrote no subnet file: {}",
                self.hosts[i]
                    .daemon
                    .as_ref()
                    .map(|d| d.log_text())
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every daemon's log, for failure messages.
    fn logs(&self) -> String {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                format!(
                    "--- host {i} ---\n{}",
                    h.daemon.as_ref().map(|d| d.log_text()).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
            + &self
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let mut out = format!("--- kernel of host {i} ---\n");
                    for cmd in [
                        &["ip", "-d", "link", "show", "berth.1"][..],
                        &["ip", "route"],
                        &["ip", "neigh", "show", "dev", "berth.1"],
                        &["bridge", "fdb", "show", "dev", "berth.1"],
                        &["ip", "addr", "show", "berth.1"],
                    ] {
                        out.push_str(&h.ns.try_exec(cmd).unwrap_or_else(|e| e));
                    }
                    out
                })
                .collect::<String>()
    }

    /// `key` of host `i`'s subnet file; None while the file or the key is missing.
    fn subnet_env(&self, i: usize, key: &str) -> Option<String> {
        let t = std::fs::read_to_string(&self.hosts[i].subnet_file).ok()?;
        t.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }

    fn subnet(&self, i: usize) -> String {
        self.subnet_env(i, "BERTH_SUBNET").expect("BERTH_SUBNET")
    }

    fn cni(&self, i: usize, cmd: &str, pod: &Netns, container: &str) -> (i32, Value) {
        self.cni_prev(i, cmd, pod, container, None)
    }

    /// [`Cluster::cni`] with a `prevResult` (CHECK).
    fn cni_prev(
        &self,
        i: usize,
        cmd: &str,
        pod: &Netns,
        container: &str,
        prev: Option<&Value>,
    ) -> (i32, Value) {
        let h = &self.hosts[i];
        let mut conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "pods", "type": "berth-overlay",
            "subnetFile": h.subnet_file, "dataDir": h.data_dir,
        });
        if let Some(m) = self.pod_mtu {
            conf["mtu"] = m.into();
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let mut run = Command::new(bin("berth-overlay"));
        h.ns.command(&mut run).expect("enter the host netns");
        let mut child = run
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin("berth-overlay").parent().expect("bin dir"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running berth-overlay");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(conf.to_string().as_bytes())
                .expect("write config");
        }
        let out = child.wait_with_output().expect("wait");
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), v)
    }

    /// Attaches a pod on host `i`; returns (pod netns, its IPv4 address).
    fn pod(&self, i: usize) -> (Netns, String) {
        let pod = Netns::create("bp");
        let (code, v) = self.cni(i, "ADD", &pod, pod.name());
        assert_eq!(code, 0, "ADD on host {i} failed: {v}");
        let addr = v["ips"][0]["address"]
            .as_str()
            .expect("address")
            .split('/')
            .next()
            .expect("ip")
            .to_string();
        (pod, addr)
    }

    fn status(&self, i: usize) -> Value {
        let h = &self.hosts[i];
        let out = h.ns.exec(&[
            bin("berth-overlayd").to_str().expect("utf8"),
            "status",
            "--json",
            "--node-name",
            &h.node,
            "--network",
            "10.244.0.0/16",
            "--store",
            &self.store,
        ]);
        serde_json::from_str(&out).expect("status JSON")
    }
}

fn pings(from: &Netns, to: &str) -> bool {
    from.ping(to.parse::<IpAddr>().expect("an IP address"), 2)
}

fn routes_via_vxlan(h: &Host) -> Vec<String> {
    let out =
        h.ns.try_exec(&["ip", "-j", "route", "show", "dev", "berth.1"])
            .unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r.get("gateway").is_some())
                .filter_map(|r| r["dst"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Every pod pings every other (5 s each); `logs()` goes into the failure.
fn every_pod_reaches_every_pod(pods: &[(Netns, String)], logs: &dyn Fn() -> String) {
    for (i, (from, _)) in pods.iter().enumerate() {
        for (j, (_, to)) in pods.iter().enumerate() {
            if i != j {
                assert!(
                    eventually(Duration::from_secs(5), || pings(from, to)),
                    "pod on host {i} cannot reach pod {to} on host {j}:\n{}",
                    logs()
                );
            }
        }
    }
}

fn full_mesh(c: &mut Cluster) {
    for i in 0..c.hosts.len() {
        c.start(i);
    }
    let pods: Vec<(Netns, String)> = (0..c.hosts.len()).map(|i| c.pod(i)).collect();
    let subnets: Vec<String> = (0..c.hosts.len()).map(|i| c.subnet(i)).collect();
    let mut sorted = subnets.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        subnets.len(),
        "two nodes share a subnet: {subnets:?}"
    );
    every_pod_reaches_every_pod(&pods, &String::new);
    // Every peer is behind VXLAN: the pods get the VXLAN MTU (--pod-mtu auto
    // without DirectRouting), so no frame is too big for the tunnel.
    for (pod, _) in &pods {
        assert_eq!(link_mtu(pod, "eth0"), 1450);
    }
    // Pods keep their own source address across hosts (no masquerade
    // inside the cluster network): host 1's pod is pinged by the others,
    // and the status view shows every peer programmed.
    for i in 0..c.hosts.len() {
        let s = c.status(i);
        let peers = s["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), c.hosts.len() - 1, "{s}");
        for p in peers {
            assert_eq!(p["state"], "programmed", "{s}");
        }
    }
}

#[test]
fn dir_store_three_hosts_every_pod_reaches_every_pod() {
    need_root!();
    let mut c = Cluster::new(3, false);
    full_mesh(&mut c);
}

#[test]
fn etcd_store_three_hosts_every_pod_reaches_every_pod_and_survives_etcd_outage() {
    need_root!();
    let mut c = Cluster::new(3, true);
    full_mesh(&mut c);
    let (p0, _) = c.pod(0);
    let (_p1, a1) = c.pod(1);
    // etcd goes away: traffic keeps flowing on what is programmed.
    if let Some(e) = c.etcd.as_mut() {
        e.kill9();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(pings(&p0, &a1), "pod traffic stopped while etcd was down");
    // etcd comes back: a new node joins and becomes reachable.
    c.start_etcd();
    let n = c.add_host();
    c.start(n);
    let (pn, an) = c.pod(n);
    assert!(
        eventually(Duration::from_secs(10), || pings(&p0, &an)),
        "new node's pod unreachable after etcd came back"
    );
    assert!(
        eventually(Duration::from_secs(5), || pings(&pn, &a1)),
        "new node cannot reach the old ones"
    );
}

#[test]
fn stopped_node_is_removed_by_peers_and_gets_its_subnet_back() {
    need_root!();
    let mut c = Cluster::new(3, false);
    for i in 0..3 {
        c.start(i);
    }
    let (p0, _) = c.pod(0);
    let s2 = c.subnet(2);
    assert!(eventually(Duration::from_secs(5), || routes_via_vxlan(
        &c.hosts[0]
    )
    .contains(&s2)));
    // Clean stop: the lease is released and every peer removes route,
    // neighbour and FDB entry.
    if let Some(d) = c.hosts[2].daemon.as_mut() {
        d.stop();
    }
    for i in 0..2 {
        assert!(
            eventually(Duration::from_secs(5), || !routes_via_vxlan(&c.hosts[i])
                .contains(&s2)),
            "host {i} still routes {s2} after node 2 stopped"
        );
        let neigh = c.hosts[i]
            .ns
            .exec(&["ip", "neigh", "show", "dev", "berth.1"]);
        let vtep = s2.split('/').next().expect("ip");
        assert!(
            !neigh.contains(&format!("{vtep} ")),
            "neighbour for {vtep} left on host {i}"
        );
        let fdb = c.hosts[i]
            .ns
            .exec(&["bridge", "fdb", "show", "dev", "berth.1"]);
        assert!(
            !fdb.contains(&c.hosts[2].ip),
            "FDB entry for host 2 left on host {i}"
        );
    }
    // Restart: same subnet, reachable again.
    c.start(2);
    assert_eq!(c.subnet(2), s2);
    let (_p2, a2) = c.pod(2);
    assert!(
        eventually(Duration::from_secs(5), || pings(&p0, &a2)),
        "restarted node unreachable:\n{}",
        c.logs()
    );
}

#[test]
fn two_nodes_joining_at_the_same_instant_get_distinct_subnets() {
    need_root!();
    for round in 0..3 {
        let mut c = Cluster::new(2, false);
        // Both nodes remember the same subnet from a "previous run", so both
        // go for it first: only the store's compare-and-swap can keep them apart.
        for h in &c.hosts {
            std::fs::create_dir_all(h.subnet_file.parent().expect("dir")).expect("mkdir");
            std::fs::write(
                &h.subnet_file,
                "BERTH_NODE=old\nBERTH_NETWORK=10.244.0.0/16\nBERTH_SUBNET=10.244.42.0/24\nBERTH_MTU=1450\n",
            )
            .expect("seed subnet file");
        }
        let logs: Vec<PathBuf> = (0..2)
            .map(|i| c.dir.join(format!("race-{round}-{i}.log")))
            .collect();
        let children: Vec<Child> = (0..2)
            .map(|i| {
                c.daemon_cmd(i, &[])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&logs[i]).expect("log"))
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for (i, ch) in children.into_iter().enumerate() {
            c.hosts[i].daemon = Some(Daemon::new(ch, logs[i].clone()));
        }
        let written = |h: &Host| {
            std::fs::read_to_string(&h.subnet_file)
                .map(|t| t.contains("BERTH_NODE=node"))
                .unwrap_or(false)
        };
        assert!(
            eventually(Duration::from_secs(10), || c.hosts.iter().all(written)),
            "a node did not start:\n{}",
            c.logs()
        );
        assert_ne!(
            c.subnet(0),
            c.subnet(1),
            "round {round}: both nodes got the same subnet"
        );
        let mine: Vec<String> = (0..2).map(|i| c.subnet(i)).collect();
        assert!(
            mine.contains(&"10.244.42.0/24".to_string()),
            "neither node got the contested subnet: {mine:?}"
        );
    }
}

#[test]
fn drift_is_repaired_by_the_resync() {
    need_root!();
    let mut c = Cluster::new(2, false);
    c.start(0);
    c.start(1);
    let (p0, _) = c.pod(0);
    let (_p1, a1) = c.pod(1);
    assert!(eventually(Duration::from_secs(5), || pings(&p0, &a1)));
    let s1 = c.subnet(1);
    // A peer route deleted by hand comes back.
    let h0 = &c.hosts[0];
    assert!(h0.ns.try_exec(&["ip", "route", "del", &s1]).is_ok());
    assert!(!routes_via_vxlan(h0).contains(&s1));
    assert!(
        eventually(Duration::from_secs(5), || routes_via_vxlan(&c.hosts[0])
            .contains(&s1)),
        "route not repaired"
    );
    // A deleted FDB entry comes back.
    let fdb = |h: &Host| h.ns.exec(&["bridge", "fdb", "show", "dev", "berth.1"]);
    let line = fdb(&c.hosts[0])
        .lines()
        .find(|l| l.contains(&c.hosts[1].ip))
        .expect("fdb entry")
        .to_string();
    let mac = line.split_whitespace().next().expect("mac").to_string();
    assert!(c.hosts[0]
        .ns
        .try_exec(&[
            "bridge",
            "fdb",
            "del",
            &mac,
            "dev",
            "berth.1",
            "dst",
            &c.hosts[1].ip
        ])
        .is_ok());
    assert!(
        eventually(Duration::from_secs(5), || fdb(&c.hosts[0])
            .contains(&c.hosts[1].ip)),
        "FDB entry not repaired"
    );
    // A deleted device is recreated, with its peers.
    assert!(c.hosts[0]
        .ns
        .try_exec(&["ip", "link", "del", "berth.1"])
        .is_ok());
    assert!(
        eventually(Duration::from_secs(8), || pings(&p0, &a1)),
        "device not recreated:\n{}",
        c.logs()
    );
}

#[test]
fn bad_input_fails_cleanly() {
    need_root!();
    let mut c = Cluster::new(1, false);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--network", "172.31.0.0/16"], "overlaps"),
        (
            vec!["--network", "10.244.0.0/16", "--subnet-len", "16"],
            "--subnet-len",
        ),
        (
            vec!["--network", "10.244.0.0/16", "--subnet-len", "30"],
            "--subnet-len",
        ),
        (vec!["--network", "10.244.1.0/16"], "host bits"),
        (vec!["--network", "fd00::/48"], "IPv4"),
        // The pods' MTU is checked against the underlay (eth0: 1500) before
        // a subnet is taken.
        (
            vec!["--network", "10.244.0.0/16", "--pod-mtu", "9000"],
            "--pod-mtu: 9000 is above the MTU of the underlay interface eth0 (1500)",
        ),
        (
            vec!["--network", "10.244.0.0/16", "--pod-mtu", "60"],
            "--pod-mtu: 60 is below the minimum of 68",
        ),
        (
            vec!["--network", "10.244.0.0/16", "--pod-mtu", "jumbo"],
            "--pod-mtu",
        ),
    ];
    let h = &c.hosts[0];
    for (args, needle) in cases {
        let mut cmd = Command::new(bin("berth-overlayd"));
        h.ns.command(&mut cmd).expect("enter the host netns");
        cmd.args(["--node-name", "x", "--store", &c.store, "--iface", "eth0"]);
        cmd.arg("--subnet-file").arg(&h.subnet_file);
        // The last --network wins only if it is the sole one; these cases give exactly one.
        cmd.args(&args);
        let out = cmd.output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(needle),
            "{args:?}: message {err:?} does not mention {needle:?}"
        );
    }
    // Unreachable etcd: fails within a bounded time, configures nothing.
    c.store = "etcd:http://172.31.250.254:2399".into();
    let t = Instant::now();
    let out = c.daemon_cmd(0, &[]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = &c.hosts[0];
    assert!(!h.subnet_file.exists(), "a subnet file was written");
    assert!(
        h.ns.try_exec(&["ip", "link", "show", "berth.1"]).is_err(),
        "a VXLAN device was left behind"
    );
}

#[test]
fn plugin_without_the_agent_says_try_later_and_del_still_works() {
    need_root!();
    let c = Cluster::new(1, false);
    let pod = Netns::create("bp");
    let (code, v) = c.cni(0, "ADD", &pod, "c1");
    assert_eq!(code, 1);
    assert_eq!(v["code"], 11, "{v}");
    assert!(
        v["msg"].as_str().unwrap_or_default().contains("not ready"),
        "{v}"
    );
    let (code, v) = c.cni(0, "DEL", &pod, "c1");
    assert_eq!(code, 0, "{v}");
}

/// Receives one UDP datagram inside `ns` on `port` (the socket is bound
/// before `send` runs) and returns the source address the receiver saw.
fn udp_source_seen(ns: &Netns, bind: &str, port: u16, send: impl FnOnce()) -> Option<String> {
    let sock = ns
        .run(|| std::net::UdpSocket::bind((bind, port)))
        .expect("enter netns")
        .ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    send();
    let mut buf = [0u8; 64];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(_, from)| from.ip().to_string())
}

#[test]
fn cluster_traffic_keeps_pod_addresses_and_outside_traffic_is_masqueraded() {
    need_root!();
    let mut c = Cluster::new(2, false);
    c.start(0);
    c.start(1);
    let (p0, a0) = c.pod(0);
    let (p1, a1) = c.pod(1);
    assert!(eventually(Duration::from_secs(5), || pings(&p0, &a1)));
    // Pod to pod across hosts: the receiver sees the sender's pod address.
    let seen = udp_source_seen(&p1, &a1, 4789, || {
        p0.exec(&["bash", "-c", &format!("echo hi > /dev/udp/{a1}/4789")]);
    });
    assert_eq!(
        seen.as_deref(),
        Some(a0.as_str()),
        "pod-to-pod traffic was not sent with the pod's own address"
    );
    // Pod to a host outside the cluster network (the underlay's own
    // address): masqueraded to the node's underlay address.
    let seen = udp_source_seen(&c.ul, "172.31.250.254", 4790, || {
        p0.exec(&["bash", "-c", "echo hi > /dev/udp/172.31.250.254/4790"]);
    });
    assert_eq!(
        seen.as_deref(),
        Some(c.hosts[0].ip.as_str()),
        "traffic leaving the cluster network was not masqueraded"
    );
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6() {
    need_root!();
    let mut c = Cluster::new(2, false);
    c.extra = vec!["--network".into(), "fd00:244::/56".into()];
    c.start(0);
    c.start(1);
    let (p0, _) = c.pod(0);
    let p1 = Netns::create("bp");
    let (code, v) = c.cni(1, "ADD", &p1, p1.name());
    assert_eq!(code, 0, "{v}");
    let v6 = v["ips"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|i| i["address"].as_str().filter(|s| s.contains(':')))
        })
        .expect("an IPv6 address")
        .split('/')
        .next()
        .expect("ip")
        .to_string();
    assert!(v6.starts_with("fd00:244:"), "{v6}");
    let ping6 = || pings(&p0, &v6);
    assert!(
        eventually(Duration::from_secs(10), ping6),
        "IPv6 pod-to-pod across hosts failed:\n{}",
        c.logs()
    );
}

#[test]
fn metrics_and_health_are_served_when_asked() {
    need_root!();
    let mut c = Cluster::new(2, false);
    c.start_with(0, &["--metrics-addr", "127.0.0.1:9464"]);
    c.start(1);
    let get = |path: &str| {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/9464; printf 'GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
        );
        c.hosts[0]
            .ns
            .try_exec(&["bash", "-c", &script])
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(5), || get("/metrics")
            .contains("berth_overlay_peers_programmed 1")),
        "metrics never showed the peer: {}",
        get("/metrics")
    );
    let m = get("/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for name in [
        "berth_overlay_lease_renewals_total",
        "berth_overlay_resync_repairs_total",
        "berth_overlay_store_up 1",
        "berth_overlay_lease_info{",
    ] {
        assert!(m.contains(name), "{name} missing from {m}");
    }
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
}

/// libcni's cnitool, pinned in tests/tools/versions.txt and built by
/// scripts/test-peers.sh (the test script runs it first).
fn cnitool() -> PathBuf {
    netns_fixture::test_peer("bin/cnitool")
}

/// Runs `cnitool <cmd> <net> <pod netns>` in host `i`'s netns the way an
/// operator would: NETCONFPATH holds the one conflist, CNI_PATH our plugins.
/// libcni caches results under /var/lib/cni; the network names are unique
/// per run, and [`forget_cnitool_cache`] removes this run's entries.
fn cnitool_run(
    c: &Cluster,
    i: usize,
    confdir: &Path,
    cmd: &str,
    net: &str,
    pod: &Netns,
) -> (bool, String) {
    let mut run = Command::new(cnitool());
    c.hosts[i]
        .ns
        .command(&mut run)
        .expect("enter the host netns");
    let out = run
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NETCONFPATH", confdir)
        .env("CNI_PATH", bin("berth-bridge").parent().expect("bin dir"))
        .args([cmd, net])
        .arg(pod.path())
        .output()
        .expect("running cnitool");
    status_and_text(&out)
}

/// Whether a command succeeded, and its stdout followed by its stderr.
fn status_and_text(out: &std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn forget_cnitool_cache(net: &str) {
    for sub in ["results", "gc"] {
        let Ok(rd) = std::fs::read_dir(Path::new("/var/lib/cni").join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{net}-"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// add, check, status, del, add again, gc (no list: libcni DELs what it
/// cached, then the plugins' GC keeps nothing), del again: every step exits
/// 0 and nothing is left on the host.
fn cnitool_lifecycle(c: &Cluster, i: usize, version: &str, plugin: Value, net: &str) {
    let confdir = c.dir.join(format!("netconf-{net}"));
    std::fs::create_dir_all(&confdir).expect("conf dir");
    let conflist = serde_json::json!({ "cniVersion": version, "name": net, "plugins": [plugin] });
    std::fs::write(confdir.join("10-berth.conflist"), conflist.to_string()).expect("conflist");
    let pod = Netns::create("bp");
    let step = |cmd: &str| {
        let (ok, out) = cnitool_run(c, i, &confdir, cmd, net, &pod);
        println!(
            "cnitool {cmd} {net} (cniVersion {version}): {}",
            if ok { "ok" } else { "FAILED" }
        );
        assert!(
            ok,
            "cnitool {cmd} {net} at {version} failed:\n{out}\n{}",
            c.logs()
        );
        out
    };
    let added: Value = serde_json::from_str(&step("add")).expect("ADD result JSON");
    assert!(
        added["ips"][0]["address"].is_string(),
        "no address in {added}"
    );
    step("check");
    step("status");
    step("del");
    step("add");
    // Pod veths: every veth of the host but its underlay link (eth0).
    let veths = || {
        c.hosts[i]
            .ns
            .try_exec(&["ip", "-o", "link", "show", "type", "veth"])
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                !l.split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .starts_with("eth0@")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!veths().trim().is_empty(), "the second ADD made no veth");
    step("gc");
    assert!(
        veths().trim().is_empty(),
        "veths left after gc: {}",
        veths()
    );
    let db = c.hosts[i].data_dir.join(net).join("ipam.db");
    let held = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM allocations")
        .output()
        .expect("sqlite3");
    assert_eq!(
        String::from_utf8_lossy(&held.stdout).trim(),
        "0",
        "addresses still held in {} after gc",
        db.display()
    );
    step("del");
    forget_cnitool_cache(net);
}

#[test]
#[ignore = "conformance: scripts/test.sh runs it as its own step"]
fn cnitool_drives_bridge_and_overlay_at_every_version() {
    let mut c = Cluster::new(1, false);
    c.start(0);
    let h = &c.hosts[0];
    for (n, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let bridge = serde_json::json!({
            "type": "berth-bridge", "bridge": format!("cnit{n}"), "isGateway": true, "ipMasq": true,
            "dataDir": h.data_dir,
            "ipam": { "type": "berth-host-local", "dataDir": h.data_dir,
                      "ranges": [[{ "subnet": format!("10.99.{n}.0/24") }]] }
        });
        cnitool_lifecycle(&c, 0, version, bridge, &unique_name("ctb"));
        let overlay = serde_json::json!({
            "type": "berth-overlay", "subnetFile": h.subnet_file, "dataDir": h.data_dir,
        });
        cnitool_lifecycle(&c, 0, version, overlay, &unique_name("cto"));
    }
}

/// The route the host has to `dst` (a subnet), as `ip -j route show` prints it.
fn route_to(h: &Host, dst: &str) -> Option<Value> {
    let out = h.ns.try_exec(&["ip", "-j", "route", "show", dst]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v.as_array()?.first().cloned()
}

/// Whether `dst` is routed directly: via `gw` on eth0, marked as berth's (protocol 183).
fn routed_direct(h: &Host, dst: &str, gw: &str) -> bool {
    route_to(h, dst)
        .map(|r| {
            r["dev"] == "eth0"
                && r["gateway"] == gw
                && r["protocol"].as_str().map(|p| p == "183").unwrap_or(false)
        })
        .unwrap_or(false)
}

fn tx_packets(h: &Host, dev: &str) -> u64 {
    let out = h.ns.exec(&["ip", "-j", "-s", "link", "show", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j -s link");
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

/// `count` quick pings; true when all came back.
fn ping_burst(from: &Netns, to: &str, count: usize) -> bool {
    from.output(&[
        "ping",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        "-n",
        to,
    ])
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// Hosts 0 and 1 with `--direct-routing` on one L2 underlay (172.31.250.0/24),
/// host 2 on another (172.31.251.0/24) behind a router namespace, all three
/// agents started. Bind all three: the cluster, bound last, drops first, so
/// its daemons stop before the router and the second underlay they run
/// across go.
fn mixed_l2_and_routed() -> (Underlay, Netns, Cluster) {
    let ul2 = Underlay::create("bul", "br-ul2", None);
    let router = Netns::create("brt");
    let mut c = Cluster::new(2, false);
    c.extra = vec!["--direct-routing".into()];
    c.ul.attach(&router, "ur", "eth0", &["172.31.250.253/24"]);
    ul2.attach(&router, "ur", "eth1", &["172.31.251.254/24"]);
    router
        .set_sysctl("net/ipv4/ip_forward", "1")
        .expect("ip_forward in the router netns");
    for h in &c.hosts {
        h.ns.exec(&[
            "ip",
            "route",
            "add",
            "172.31.251.0/24",
            "via",
            "172.31.250.253",
        ]);
    }
    let ns = Netns::create("bh");
    ul2.attach(&ns, "u3", "eth0", &["172.31.251.3/24"]);
    ns.exec(&["ip", "route", "add", "default", "via", "172.31.251.254"]);
    let hdir = c.dir.join("h3");
    c.hosts.push(Host {
        ns,
        ip: "172.31.251.3".into(),
        subnet_file: hdir.join("subnet.env"),
        data_dir: hdir.join("data"),
        daemon: None,
        node: "node3".into(),
    });
    for i in 0..3 {
        c.start(i);
    }
    (ul2, router, c)
}

/// Mixed topology, every agent with --direct-routing: hosts 0 and 1 on one
/// L2 underlay (172.31.250.0/24), host 2 on another (172.31.251.0/24) behind
/// a router namespace. 0 <-> 1 go direct and unencapsulated, 0/1 <-> 2 over
/// VXLAN; resync repairs a deleted direct route and removes stale ones of
/// ours only; a stopped peer's direct route goes.
#[test]
fn direct_routing_on_one_l2_and_vxlan_across_a_router() {
    need_root!();
    let (_ul2, _router, mut c) = mixed_l2_and_routed();
    let pods: Vec<(Netns, String)> = (0..3).map(|i| c.pod(i)).collect();
    every_pod_reaches_every_pod(&pods, &|| c.logs());
    let (s1, s2) = (c.subnet(1), c.subnet(2));
    let h0 = &c.hosts[0];
    assert!(
        routed_direct(h0, &s1, "172.31.250.2"),
        "host 0 does not route {s1} directly: {:?}\n{}",
        route_to(h0, &s1),
        c.logs()
    );
    let r2 = route_to(h0, &s2).expect("route to host 2's subnet");
    assert_eq!(r2["dev"], "berth.1", "{r2}");
    assert!(routes_via_vxlan(h0).contains(&s2));
    assert!(!routes_via_vxlan(h0).contains(&s1));
    // No VXLAN state for the direct peer.
    let fdb = h0.ns.exec(&["bridge", "fdb", "show", "dev", "berth.1"]);
    assert!(!fdb.contains("172.31.250.2"), "{fdb}");
    assert!(fdb.contains("172.31.251.3"), "{fdb}");
    // Status: direct for host 1, vxlan for host 2, both programmed.
    let s = c.status(0);
    for p in s["peers"].as_array().expect("peers") {
        assert_eq!(p["state"], "programmed", "{s}");
        let want = if p["node"] == "node2" {
            "direct"
        } else {
            "vxlan"
        };
        assert_eq!(p["path"], want, "{s}");
    }
    // The direct path is unencapsulated: host 0's VXLAN device sends
    // nothing for pod 0 -> pod 1, and every packet for pod 0 -> pod 2.
    let (tx0, eth0) = (tx_packets(h0, "berth.1"), tx_packets(h0, "eth0"));
    assert!(ping_burst(&pods[0].0, &pods[1].1, 50));
    let (tx1, eth1) = (tx_packets(h0, "berth.1"), tx_packets(h0, "eth0"));
    assert!(
        tx1 - tx0 < 5,
        "{} packets went through berth.1 on the direct path",
        tx1 - tx0
    );
    assert!(eth1 - eth0 >= 50, "only {} packets on eth0", eth1 - eth0);
    assert!(ping_burst(&pods[0].0, &pods[2].1, 50));
    let tx2 = tx_packets(h0, "berth.1");
    assert!(
        tx2 - tx1 >= 50,
        "only {} packets through berth.1 to the routed host",
        tx2 - tx1
    );
    // A direct route deleted by hand is repaired by the resync.
    assert!(h0.ns.try_exec(&["ip", "route", "del", &s1]).is_ok());
    assert!(route_to(h0, &s1).is_none());
    assert!(
        eventually(Duration::from_secs(5), || routed_direct(
            &c.hosts[0],
            &s1,
            "172.31.250.2"
        )),
        "direct route not repaired:\n{}",
        c.logs()
    );
    // A stale direct route of berth's (its protocol) goes; someone
    // else's route on the underlay stays.
    h0.ns.exec(&[
        "ip",
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        "172.31.250.2",
        "dev",
        "eth0",
        "proto",
        "183",
    ]);
    h0.ns.exec(&[
        "ip",
        "route",
        "add",
        "10.244.251.0/24",
        "via",
        "172.31.250.2",
        "dev",
        "eth0",
    ]);
    assert!(
        eventually(Duration::from_secs(5), || route_to(
            &c.hosts[0],
            "10.244.250.0/24"
        )
        .is_none()),
        "stale direct route left:\n{}",
        c.logs()
    );
    assert!(route_to(&c.hosts[0], "10.244.251.0/24").is_some());
    assert!(pings(&pods[0].0, &pods[1].1));
    // A peer that stops takes its direct route with it.
    if let Some(d) = c.hosts[1].daemon.as_mut() {
        d.stop();
    }
    assert!(
        eventually(Duration::from_secs(5), || route_to(&c.hosts[0], &s1)
            .is_none()),
        "host 0 still routes {s1} after node 1 stopped: {:?}",
        route_to(&c.hosts[0], &s1)
    );
    assert!(pings(&pods[0].0, &pods[2].1));
}

fn link_mtu(ns: &Netns, dev: &str) -> u64 {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j link");
    v[0]["mtu"].as_u64().expect("mtu")
}

/// One ping of `size` payload bytes with DF set (no fragmentation anywhere);
/// returns ping's success and its output.
fn df_ping(from: &Netns, to: &str, size: usize) -> (bool, String) {
    let out = from
        .output(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            "-n",
            to,
        ])
        .expect("ping");
    status_and_text(&out)
}

/// Sends `bytes` over one TCP connection from `client` to `server_ip` and
/// returns how many the server read before the sender's FIN (30 s at most
/// for each read or write: a path MTU black hole stalls, it does not hang).
/// The sockets are made inside the pods' namespaces and used from here.
fn tcp_bulk(server: &Netns, client: &Netns, server_ip: &str, bytes: u64) -> u64 {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let stall = Some(Duration::from_secs(30));
    let listener = server
        .run(|| TcpListener::bind("0.0.0.0:0"))
        .expect("enter the server pod")
        .expect("listen");
    let port = listener.local_addr().expect("port").port();
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(stall)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let addr: SocketAddr = format!("{server_ip}:{port}").parse().expect("address");
    let mut s = client
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("enter the client pod")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_write_timeout(stall).expect("write timeout");
    let chunk = vec![0x5a_u8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&chunk)
            .unwrap_or_else(|e| panic!("sending to {addr} after {sent} bytes: {e}"));
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    reader
        .join()
        .expect("reader thread")
        .unwrap_or_else(|e| panic!("receiving from the client: {e}"))
}

/// DirectRouting with the agents' default `--pod-mtu auto`, which gives the
/// pods the underlay's MTU (nothing in the conflist): full-size frames cross
/// the direct path unfragmented, and the peer behind the router, still on
/// VXLAN (MTU 1450), is reached by path MTU discovery: the node answers a
/// too-big packet with ICMP "fragmentation needed" naming 1450, and bulk TCP
/// gets through both ways on both paths.
#[test]
fn direct_routing_pods_at_the_underlay_mtu_reach_vxlan_peers_by_path_mtu_discovery() {
    need_root!();
    let (_ul2, _router, mut c) = mixed_l2_and_routed();
    let pods: Vec<(Netns, String)> = (0..3).map(|i| c.pod(i)).collect();
    every_pod_reaches_every_pod(&pods, &|| c.logs());
    assert_eq!(c.subnet_env(0, "BERTH_MTU").as_deref(), Some("1500"));
    for (pod, _) in &pods {
        assert_eq!(link_mtu(pod, "eth0"), 1500);
    }
    // The bridge too: forwarded traffic to the pods leaves through it.
    assert_eq!(link_mtu(&c.hosts[0].ns, "berth0"), 1500);
    assert_eq!(link_mtu(&c.hosts[0].ns, "berth.1"), 1450);
    // 1472 + 28 bytes of headers = 1500, DF set: the direct path carries it.
    let (ok, out) = df_ping(&pods[0].0, &pods[1].1, 1472);
    assert!(
        ok,
        "a full-size frame did not cross the direct path:\n{out}"
    );
    // The VXLAN path refuses it with its MTU (an ICMP error from the node on
    // the first try, the pod's cached path MTU after that)...
    let (ok, out) = df_ping(&pods[0].0, &pods[2].1, 1472);
    assert!(!ok, "1500 bytes crossed a 1450 path unfragmented?\n{out}");
    assert!(
        out.contains("mtu = 1450") || out.contains("mtu=1450"),
        "no path MTU of 1450 reported:\n{out}"
    );
    // ... and carries what fits.
    let (ok, out) = df_ping(&pods[0].0, &pods[2].1, 1422);
    assert!(ok, "1450 bytes did not cross the VXLAN path:\n{out}");
    // Bulk TCP, each pair's first connection from the side that has not
    // learnt the path MTU yet.
    const BYTES: u64 = 8 << 20;
    for (from, to) in [(2, 0), (0, 2), (1, 0), (0, 1), (2, 1)] {
        let got = tcp_bulk(&pods[to].0, &pods[from].0, &pods[to].1, BYTES);
        assert!(
            got == BYTES,
            "pod {from} -> pod {to}: {got} of {BYTES} bytes:\n{}",
            c.logs()
        );
    }
    // A conflist `mtu` wins over the agent's: this pod keeps the VXLAN MTU
    // (as pods made before an upgrade to `auto` do). The kernel then lowers
    // the node's bridge to its smallest port, so traffic into host 0's
    // full-size pods learns 1450 from host 0 too: mixed MTUs on one node
    // cost that node's pods the full-size frames, never connectivity.
    c.pod_mtu = Some(1450);
    let (small, small_ip) = c.pod(0);
    assert_eq!(link_mtu(&small, "eth0"), 1450);
    assert!(pings(&small, &pods[1].1));
    assert!(pings(&pods[2].0, &small_ip));
    for (from, to) in [(1, 0), (0, 1)] {
        let got = tcp_bulk(&pods[to].0, &pods[from].0, &pods[to].1, BYTES);
        assert!(
            got == BYTES,
            "pod {from} -> pod {to} beside a 1450 pod: {got} of {BYTES} bytes"
        );
    }
}

/// The node's pod MTU changes under running pods (say an upgrade that
/// turns `--pod-mtu auto` on with DirectRouting, or an operator going back to
/// `vxlan`): a pod keeps the MTU it was made with, CHECK still passes for it
/// (the MTU it is held to is the conflist's, and this one names none), it
/// still reaches the new pods, and new pods get the new MTU.
#[test]
fn pods_keep_their_mtu_and_pass_check_when_the_node_pod_mtu_changes() {
    need_root!();
    let mut c = Cluster::new(1, false);
    let env_mtu = |c: &Cluster| c.subnet_env(0, "BERTH_MTU");
    c.start_with(0, &["--pod-mtu=vxlan"]);
    assert_eq!(env_mtu(&c).as_deref(), Some("1450"));
    let old = Netns::create("bp");
    let (code, added) = c.cni(0, "ADD", &old, old.name());
    assert_eq!(code, 0, "ADD: {added}");
    assert_eq!(link_mtu(&old, "eth0"), 1450);
    if let Some(d) = c.hosts[0].daemon.as_mut() {
        d.stop();
    }
    c.start_with(0, &["--pod-mtu=underlay"]);
    assert!(
        eventually(Duration::from_secs(10), || env_mtu(&c).as_deref()
            == Some("1500")),
        "the restarted agent did not write the new MTU:\n{}",
        c.logs()
    );
    let (code, v) = c.cni_prev(0, "CHECK", &old, old.name(), Some(&added));
    assert_eq!(code, 0, "CHECK of the 1450 pod after the change: {v}");
    let (new, new_ip) = c.pod(0);
    assert_eq!(link_mtu(&new, "eth0"), 1500);
    assert_eq!(link_mtu(&old, "eth0"), 1450);
    assert!(pings(&old, &new_ip), "{}", c.logs());
    // A conflist that names an MTU still holds the pod to it.
    c.pod_mtu = Some(1500);
    let (code, v) = c.cni_prev(0, "CHECK", &old, old.name(), Some(&added));
    assert_ne!(code, 0, "CHECK passed a 1450 pod against mtu 1500: {v}");
    assert_eq!(v["code"], 106, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("MTU is 1450, config says 1500"),
        "{v}"
    );
}

/// A peer switches between direct and VXLAN when this host's underlay
/// subnets change (here: its /24 replaced by a /32 plus a route, and back),
/// and the old kind's entries go.
#[test]
fn direct_routing_switches_to_vxlan_and_back_when_the_underlay_subnet_changes() {
    need_root!();
    let mut c = Cluster::new(2, false);
    c.extra = vec!["--direct-routing".into()];
    c.start(0);
    c.start(1);
    let (p0, _) = c.pod(0);
    let (_p1, a1) = c.pod(1);
    assert!(eventually(Duration::from_secs(5), || pings(&p0, &a1)));
    let s1 = c.subnet(1);
    let peer_ip = c.hosts[1].ip.clone();
    assert!(routed_direct(&c.hosts[0], &s1, &peer_ip), "{}", c.logs());
    let fdb = |h: &Host| h.ns.exec(&["bridge", "fdb", "show", "dev", "berth.1"]);
    // 172.31.250.2 is no longer on a connected subnet of host 0's eth0.
    let h0 = &c.hosts[0];
    h0.ns
        .exec(&["ip", "addr", "add", "172.31.250.1/32", "dev", "eth0"]);
    h0.ns
        .exec(&["ip", "addr", "del", "172.31.250.1/24", "dev", "eth0"]);
    h0.ns
        .exec(&["ip", "route", "replace", "172.31.250.0/24", "dev", "eth0"]);
    assert!(
        eventually(Duration::from_secs(5), || routes_via_vxlan(&c.hosts[0])
            .contains(&s1)),
        "peer not moved to VXLAN:\n{}",
        c.logs()
    );
    assert!(!routed_direct(&c.hosts[0], &s1, &peer_ip));
    assert!(fdb(&c.hosts[0]).contains(&peer_ip));
    assert!(eventually(Duration::from_secs(5), || pings(&p0, &a1)));
    // Back on the /24: direct again, the VXLAN entries gone.
    c.hosts[0]
        .ns
        .exec(&["ip", "addr", "add", "172.31.250.1/24", "dev", "eth0"]);
    assert!(
        eventually(Duration::from_secs(5), || routed_direct(
            &c.hosts[0],
            &s1,
            &peer_ip
        )),
        "peer not moved back to a direct route:\n{}",
        c.logs()
    );
    assert!(!routes_via_vxlan(&c.hosts[0]).contains(&s1));
    assert!(!fdb(&c.hosts[0]).contains(&peer_ip));
    let vtep = s1.split('/').next().expect("ip").to_string();
    let neigh = c.hosts[0]
        .ns
        .exec(&["ip", "neigh", "show", "dev", "berth.1"]);
    assert!(!neigh.contains(&format!("{vtep} ")), "{neigh}");
    assert!(eventually(Duration::from_secs(5), || pings(&p0, &a1)));
}
