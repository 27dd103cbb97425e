//! `berth-bench overlay`: the VXLAN overlay against the underlay it runs on.
//!
//! Hosts are network namespaces on a bridge that lives in its own namespace (the underlay), each
//! running the real `berth-overlayd` with the embedded store; pods are attached with the real
//! `berth-overlay`. Three figures: iperf3 throughput pod-to-pod across two hosts vs host-to-host
//! on the underlay (same run), convergence (a new node's start until every existing pod pings a
//! pod on it, with N hosts), and the time one node takes to program 1,000 peers (synthetic
//! leases in the store).
//!
//! The throughput run measures, side by side in alternating rounds, each path between two runs on
//! the underlay (its ratio is taken against those two, round by round): Berth's VXLAN,
//! Berth with `--direct-routing`, and a flannel-style VXLAN reference built by hand here (no
//! flannel binary: what flannel's vxlan backend and the bridge plugin program, see
//! [`flannel_ref`]), once without and once with flannel's MASQUERADE rule; Berth VXLAN and
//! DirectRouting with the pods' `ipMasq` false; and two routed references without NAT
//! ([`routed_ref`]): flannel host-gw style (DirectRouting's path with a bridge) and routed veths
//! without a bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::bench::{self, markdown_table, text_table};
use berth_tests::cluster::{ControlPlane, DEFAULT_ADDRESS};
use berth_tests::netns::{spawn_in_netns, Netns, Underlay};
use berth_tests::{bin_dir, conf_bytes, CniRun};
use serde_json::{json, Value};

const HELP: &str = "\
usage: berth-bench overlay [options]   (root: creates network namespaces, never touches the root one)

options:
  --hosts N          hosts in the convergence run (default 10)
  --peers N          synthetic peers programmed on one node (default 1000)
  --seconds N        iperf3 duration per run, after a 1 s warm-up it omits (default 5)
  --rounds N         throughput rounds; medians and min-max reported (default 5)
  --markdown FILE    also append a markdown section to FILE
";

const NETWORK: &str = "10.244.0.0/16";

/// The underlay veths' MTU (the kernel's default for veth).
const UNDERLAY_MTU: u32 = 1500;

use berth_tests::netns::ChildGuard as Proc;

struct Node {
    ns: Netns,
    ip: String,
    subnet_file: PathBuf,
    data_dir: PathBuf,
    daemon: Option<Proc>,
}

struct Cluster {
    ul: Underlay,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    /// The pods' `ipMasq` (berth-overlay's default: true).
    ip_masq: bool,
    /// The agents' store arguments; None for the embedded store in `dir`.
    store: Option<Vec<String>>,
}

impl Cluster {
    fn new() -> Result<Cluster, String> {
        let ul = Underlay::try_create("bbul", "br-ul", None)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        Ok(Cluster {
            ul,
            nodes: Vec::new(),
            dir,
            ip_masq: true,
            store: None,
        })
    }

    fn add_node(&mut self) -> Result<usize, String> {
        let i = self.nodes.len() + 1;
        let ns = Netns::try_create("bbh")?;
        let ip = format!("172.31.{}.{}", i / 250, i % 250 + 1);
        self.ul
            .try_attach(&ns, &format!("u{i}"), "eth0", &[&format!("{ip}/16")])?;
        let d = self.dir.path().join(format!("n{i}"));
        self.nodes.push(Node {
            ns,
            ip,
            subnet_file: d.join("subnet.env"),
            data_dir: d.join("data"),
            daemon: None,
        });
        Ok(i - 1)
    }

    fn spawn_daemon(&mut self, i: usize) -> Result<(), String> {
        self.spawn_daemon_with(i, &[])
    }

    fn spawn_daemon_with(&mut self, i: usize, extra: &[&str]) -> Result<(), String> {
        let n = &self.nodes[i];
        let mut cmd = Command::new(bin_dir().join("berth-overlayd"));
        cmd.args([
            "--node-name",
            &format!("node{}", i + 1),
            "--network",
            NETWORK,
            "--iface",
            "eth0",
        ])
        .args(match &self.store {
            Some(args) => args.clone(),
            None => vec![format!(
                "--store=dir:{}",
                self.dir.path().join("store").display()
            )],
        })
        .arg("--subnet-file")
        .arg(&n.subnet_file)
        .args(["--lease-ttl", "10m", "--resync-interval", "5s"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = spawn_in_netns(n.ns.path(), cmd)
            .map_err(|e| format!("starting berth-overlayd: {e}"))?;
        self.nodes[i].daemon = Some(Proc(Some(child)));
        Ok(())
    }

    fn wait_subnet(&self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.nodes[i].subnet_file.exists() {
            if Instant::now() > deadline {
                return Err(format!("node {i} wrote no subnet file"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Attaches a pod on node `i`; returns its netns and IPv4 address.
    fn pod(&self, i: usize) -> Result<(Netns, String), String> {
        let n = &self.nodes[i];
        let pod = Netns::try_create("bbp")?;
        let conf = json!({"cniVersion":"1.1.0","name":"pods","type":"berth-overlay",
            "subnetFile": n.subnet_file, "dataDir": n.data_dir, "ipMasq": self.ip_masq});
        let out = CniRun::new(bin_dir().join("berth-overlay"))
            .in_netns(n.ns.path())
            .command("ADD")
            .container_id(pod.name())
            .netns(&pod.path_str())
            .ifname("eth0")
            .cni_path(bin_dir())
            .stdin(conf_bytes(&conf))
            .run()
            .map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!("ADD on node {i}: {}", out.describe()));
        }
        let addr = out
            .addresses()
            .into_iter()
            .find(|a| !a.contains(':'))
            .ok_or("no IPv4 address in the result")?;
        Ok((pod, berth_tests::strip_prefix_len(&addr).to_string()))
    }
}

fn ping(from: &Netns, to: &str) -> bool {
    // A short timeout: convergence is measured by repeating this, so a
    // long wait on one lost probe would only blur the figure.
    from.output(&["ping", "-c", "1", "-W", "0.2", to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// iperf3 from `client` to `server_ip` where the server runs in `server`; Gbit/s.
fn iperf(server: &Netns, client: &Netns, server_ip: &str, seconds: u32) -> Result<f64, String> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let srv =
        Proc(Some(spawn_in_netns(server.path(), cmd).map_err(|e| {
            format!("iperf3 server: {e} (is iperf3 installed?)")
        })?));
    let deadline = Instant::now() + Duration::from_secs(5);
    let secs = seconds.to_string();
    loop {
        let out = client
            .output(&[
                "iperf3", "-c", server_ip, "-p", "5201", "-t", &secs, "-O", "1", "-J",
            ])
            .map_err(|e| e.to_string())?;
        // iperf3 -J can exit 0 with an "error" member (e.g. the server is
        // not listening yet): only a rate counts as success.
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            drop(srv);
            return Ok(bps / 1e9);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "iperf3 client failed: {} {}",
                v.get("error").cloned().unwrap_or(Value::Null),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod: its netns and IPv4 address.
type Pod = (Netns, String);

/// Two Berth hosts with a pod each, the agents started with `extra` flags,
/// the pods with `ipMasq`; returns the cluster and the pods once they reach
/// each other.
fn berth_pair(extra: &[&str], ip_masq: bool) -> Result<(Cluster, Pod, Pod), String> {
    let mut c = Cluster::new()?;
    c.ip_masq = ip_masq;
    for _ in 0..2 {
        let i = c.add_node()?;
        c.spawn_daemon_with(i, extra)?;
    }
    c.wait_subnet(0)?;
    c.wait_subnet(1)?;
    let p0 = c.pod(0)?;
    let p1 = c.pod(1)?;
    if !berth_tests::netns::wait_until(Duration::from_secs(10), || ping(&p0.0, &p1.1)) {
        return Err(format!("pods cannot reach each other (flags {extra:?})"));
    }
    Ok((c, p0, p1))
}

/// Two hand-built hosts with a pod each on their own underlay: what the
/// references below build.
struct RefPair {
    // Field order is drop order: pods, then hosts, then the underlay.
    pods: Vec<(Netns, String)>,
    _hosts: Vec<Netns>,
    _ul: Underlay,
}

impl RefPair {
    /// Host `i` (1 or 2) of a reference: a netns on `ul` at 172.31.0.i/16
    /// that forwards.
    fn host(ul: &Underlay, prefix: &str, i: u8) -> Result<(Netns, String), String> {
        let h = Netns::try_create(prefix)?;
        let ip = format!("172.31.0.{i}");
        ul.try_attach(&h, &format!("u{i}"), "eth0", &[&format!("{ip}/16")])?;
        h.set_sysctl("net/ipv4/ip_forward", "1")
            .map_err(|e| format!("ip_forward: {e}"))?;
        Ok((h, ip))
    }

    /// A pod on host `i` as the bridge plugin attaches it: a bridge `cni0`
    /// holding the gateway 10.244.i.1/24, the pod's veth on it, the pod at
    /// 10.244.i.2/24 with its default route via the gateway, all at `mtu`.
    fn bridged_pod(h: &Netns, prefix: &str, i: u8, mtu: u32) -> Result<(Netns, String), String> {
        let (gw, mtu) = (format!("10.244.{i}.1"), mtu.to_string());
        h.try_exec(&["ip", "link", "add", "cni0", "type", "bridge"])?;
        h.try_exec(&["ip", "addr", "add", &format!("{gw}/24"), "dev", "cni0"])?;
        h.try_exec(&["ip", "link", "set", "cni0", "mtu", &mtu, "up"])?;
        let pod = Netns::try_create(prefix)?;
        h.try_add_veth("veth0", &pod, "eth0")?;
        h.try_exec(&[
            "ip", "link", "set", "veth0", "mtu", &mtu, "master", "cni0", "up",
        ])?;
        let pod_ip = format!("10.244.{i}.2");
        pod.try_exec(&["ip", "link", "set", "eth0", "mtu", &mtu])?;
        pod.try_configure("eth0", &[&format!("{pod_ip}/24")])?;
        pod.try_exec(&["ip", "link", "set", "lo", "up"])?;
        pod.try_exec(&["ip", "route", "add", "default", "via", &gw])?;
        Ok((pod, pod_ip))
    }

    /// The MAC address of `dev` in `ns`.
    fn mac(ns: &Netns, dev: &str) -> Result<String, String> {
        let out = ns.try_exec(&["ip", "-j", "link", "show", dev])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        v[0]["address"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{dev} has no MAC"))
    }

    /// The pair once its pods reach each other (10 s at most).
    fn ready(self, what: &str) -> Result<RefPair, String> {
        if !berth_tests::netns::wait_until(Duration::from_secs(10), || {
            ping(&self.pods[0].0, &self.pods[1].1)
        }) {
            return Err(format!("{what}: pods cannot reach each other"));
        }
        Ok(self)
    }

    fn iperf(&self, seconds: u32) -> Result<f64, String> {
        iperf(&self.pods[1].0, &self.pods[0].0, &self.pods[1].1, seconds)
    }
}

/// A flannel-style VXLAN overlay built by hand, equivalent to what flannel's
/// vxlan backend plus the bridge CNI plugin program: per host a VXLAN device
/// `flannel.1` (VNI 1, dstport 8472, nolearning, MTU 1450) with the host's
/// /24's network address as /32, a bridge `cni0` holding the /24's first
/// address, one pod on a veth in the bridge (MTU 1450, default route via
/// cni0); per peer a permanent neighbour (peer VTEP IP -> peer VTEP MAC), an
/// FDB entry (peer VTEP MAC -> peer underlay IP) and the route `peer-subnet
/// via peer-vtep-ip dev flannel.1 onlink`. With `masquerade`, every host also
/// gets flannel's `-s NET ! -d NET -j MASQUERADE` (iptables, nat table), which
/// turns conntrack on for all its traffic.
fn flannel_ref(masquerade: bool) -> Result<RefPair, String> {
    let ul = Underlay::try_create("bbfu", "br-ul", None)?;
    let mut hosts = Vec::new();
    let mut pods = Vec::new();
    let mut macs = Vec::new();
    for i in 1..=2u8 {
        let (h, ip) = RefPair::host(&ul, "bbfh", i)?;
        let x = |argv: &[&str]| h.try_exec(argv).map(drop);
        x(&[
            "ip",
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &ip,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        x(&["ip", "link", "set", "flannel.1", "mtu", "1450"])?;
        x(&[
            "ip",
            "addr",
            "add",
            &format!("10.244.{i}.0/32"),
            "dev",
            "flannel.1",
        ])?;
        x(&["ip", "link", "set", "flannel.1", "up"])?;
        if masquerade {
            x(&[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                NETWORK,
                "!",
                "-d",
                NETWORK,
                "-j",
                "MASQUERADE",
            ])?;
        }
        let (pod, pod_ip) = RefPair::bridged_pod(&h, "bbfp", i, 1450)?;
        macs.push((ip, RefPair::mac(&h, "flannel.1")?));
        hosts.push(h);
        pods.push((pod, pod_ip));
    }
    for (i, h) in hosts.iter().enumerate() {
        for (j, (peer_ip, peer_mac)) in macs.iter().enumerate() {
            if i == j {
                continue;
            }
            let n = j + 1;
            let vtep = format!("10.244.{n}.0");
            h.try_exec(&[
                "ip",
                "neigh",
                "replace",
                &vtep,
                "lladdr",
                peer_mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ])?;
            h.try_exec(&[
                "bridge",
                "fdb",
                "append",
                peer_mac,
                "dev",
                "flannel.1",
                "dst",
                peer_ip,
                "self",
                "permanent",
            ])?;
            h.try_exec(&[
                "ip",
                "route",
                "add",
                &format!("10.244.{n}.0/24"),
                "via",
                &vtep,
                "dev",
                "flannel.1",
                "onlink",
            ])?;
        }
    }
    RefPair {
        pods,
        _hosts: hosts,
        _ul: ul,
    }
    .ready("flannel-style reference")
}

/// How a [`routed_ref`] attaches its pods.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attach {
    /// flannel's host-gw backend with the bridge plugin: the pod's veth on a
    /// bridge `cni0` that holds the /24's gateway address.
    Bridge,
    /// No bridge (as Calico attaches pods): the pod has a /32 and a default
    /// route via a link-local gateway that stands for the host's veth (a
    /// permanent neighbour with its MAC); the host routes the /32 to the veth.
    Veth,
}

/// A routed reference built by hand, both hosts on one L2: no encapsulation,
/// per peer a route `peer-subnet via peer-underlay-ip` (what flannel's host-gw
/// backend and Berth's DirectRouting program), MTU 1500, no NAT. With
/// [`Attach::Bridge`] its path is the one Berth's DirectRouting takes, hop for
/// hop; with [`Attach::Veth`] it is one bridge shorter on each host, which
/// tells how much of the gap to the underlay the bridge is.
fn routed_ref(attach: Attach) -> Result<RefPair, String> {
    let ul = Underlay::try_create("bbru", "br-ul", None)?;
    let mut hosts = Vec::new();
    let mut pods = Vec::new();
    for i in 1..=2u8 {
        let (h, _) = RefPair::host(&ul, "bbrh", i)?;
        let x = |argv: &[&str]| h.try_exec(argv).map(drop);
        let (pod, pod_ip) = match attach {
            Attach::Bridge => RefPair::bridged_pod(&h, "bbrp", i, UNDERLAY_MTU)?,
            Attach::Veth => {
                let pod = Netns::try_create("bbrp")?;
                h.try_add_veth("veth0", &pod, "eth0")?;
                let pod_ip = format!("10.244.{i}.2");
                pod.try_exec(&["ip", "link", "set", "lo", "up"])?;
                x(&["ip", "link", "set", "veth0", "up"])?;
                x(&[
                    "ip",
                    "route",
                    "add",
                    &format!("{pod_ip}/32"),
                    "dev",
                    "veth0",
                ])?;
                pod.try_configure("eth0", &[&format!("{pod_ip}/32")])?;
                pod.try_exec(&[
                    "ip",
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ])?;
                pod.try_exec(&["ip", "route", "add", "default", "via", "169.254.1.1"])?;
                // The gateway is the host's veth itself: a permanent
                // neighbour here stands for Calico's proxy ARP, which needs
                // a host route to 169.254.1.1 these hosts do not have.
                let mac = RefPair::mac(&h, "veth0")?;
                pod.try_exec(&[
                    "ip",
                    "neigh",
                    "replace",
                    "169.254.1.1",
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
                (pod, pod_ip)
            }
        };
        hosts.push(h);
        pods.push((pod, pod_ip));
    }
    for (i, h) in hosts.iter().enumerate() {
        let j = 1 - i;
        h.try_exec(&[
            "ip",
            "route",
            "add",
            &format!("10.244.{}.0/24", j + 1),
            "via",
            &format!("172.31.0.{}", j + 1),
        ])?;
    }
    RefPair {
        pods,
        _hosts: hosts,
        _ul: ul,
    }
    .ready(match attach {
        Attach::Bridge => "host-gw-style reference",
        Attach::Veth => "routed-veth reference",
    })
}

/// The setups the throughput run measures besides the underlay, in the order
/// of a round; [`Throughput`] indexes its runs by discriminant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Vxlan,
    FlannelNat,
    Flannel,
    VxlanNoMasq,
    Direct,
    DirectNoMasq,
    HostGw,
    RoutedVeth,
    /// Berth DirectRouting with the pods at the VXLAN MTU (`--pod-mtu=vxlan`, flannel's choice).
    DirectVxlanMtu,
}

const SETUPS: [Setup; 9] = [
    Setup::Vxlan,
    Setup::FlannelNat,
    Setup::Flannel,
    Setup::VxlanNoMasq,
    Setup::Direct,
    Setup::DirectNoMasq,
    Setup::HostGw,
    Setup::RoutedVeth,
    Setup::DirectVxlanMtu,
];

/// Every round's runs, Gbit/s. A path's ratio to the underlay is taken per
/// round against the mean of the two underlay runs just before and after it,
/// so a drift in the machine's speed over the minutes of a round (other load
/// on a shared host) cancels out instead of landing in one ratio.
struct Throughput {
    /// `underlay[r][i]` ran just before `runs[r][i]`; the last one closes the round.
    underlay: Vec<[f64; SETUPS.len() + 1]>,
    runs: Vec<[f64; SETUPS.len()]>,
}

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl Throughput {
    /// Median Gbit/s of a path.
    fn gbps(&self, p: Setup) -> f64 {
        Spread::of(self.runs.iter().map(|r| r[p as usize]).collect()).median
    }

    /// Median Gbit/s of all underlay runs.
    fn underlay_gbps(&self) -> f64 {
        Spread::of(self.underlay.iter().flatten().copied().collect()).median
    }

    /// One round's ratio of a path to the underlay runs beside it.
    fn ratio_in(&self, round: usize, p: Setup) -> f64 {
        let i = p as usize;
        let u = &self.underlay[round];
        self.runs[round][i] / ((u[i] + u[i + 1]) / 2.0)
    }

    /// A path's ratio to the underlay over the rounds.
    fn vs_underlay(&self, p: Setup) -> Spread {
        Spread::of((0..self.runs.len()).map(|r| self.ratio_in(r, p)).collect())
    }

    /// Setup `a` over setup `b`, each first taken relative to its own
    /// neighbouring underlay runs, over the rounds.
    fn versus(&self, a: Setup, b: Setup) -> Spread {
        Spread::of(
            (0..self.runs.len())
                .map(|r| self.ratio_in(r, a) / self.ratio_in(r, b))
                .collect(),
        )
    }
}

fn throughput(seconds: u32, rounds: usize) -> Result<Throughput, String> {
    let (c, (p0, _), (p1, a1)) = berth_pair(&[], true)?;
    let (_dc, (d0, _), (d1, da1)) = berth_pair(&["--direct-routing"], true)?;
    let (_nc, (n0, _), (n1, na1)) = berth_pair(&[], false)?;
    let (_dnc, (dn0, _), (dn1, dna1)) = berth_pair(&["--direct-routing"], false)?;
    let (_dmc, (dm0, _), (dm1, dma1)) = berth_pair(&["--direct-routing", "--pod-mtu=vxlan"], true)?;
    let flannel = flannel_ref(false)?;
    let flannel_nat = flannel_ref(true)?;
    let host_gw = routed_ref(Attach::Bridge)?;
    let routed_veth = routed_ref(Attach::Veth)?;
    let underlay = || iperf(&c.nodes[1].ns, &c.nodes[0].ns, &c.nodes[1].ip, seconds);
    let run = |p: Setup| match p {
        Setup::Vxlan => iperf(&p1, &p0, &a1, seconds),
        Setup::FlannelNat => flannel_nat.iperf(seconds),
        Setup::Flannel => flannel.iperf(seconds),
        Setup::VxlanNoMasq => iperf(&n1, &n0, &na1, seconds),
        Setup::Direct => iperf(&d1, &d0, &da1, seconds),
        Setup::DirectNoMasq => iperf(&dn1, &dn0, &dna1, seconds),
        Setup::HostGw => host_gw.iperf(seconds),
        Setup::RoutedVeth => routed_veth.iperf(seconds),
        Setup::DirectVxlanMtu => iperf(&dm1, &dm0, &dma1, seconds),
    };
    let mut t = Throughput {
        underlay: Vec::with_capacity(rounds),
        runs: Vec::with_capacity(rounds),
    };
    for _ in 0..rounds {
        let mut u = [0.0; SETUPS.len() + 1];
        let mut r = [0.0; SETUPS.len()];
        for (i, &p) in SETUPS.iter().enumerate() {
            u[i] = underlay()?;
            r[i] = run(p)?;
        }
        u[SETUPS.len()] = underlay()?;
        t.underlay.push(u);
        t.runs.push(r);
    }
    Ok(t)
}

fn convergence(hosts: usize) -> Result<Duration, String> {
    let mut c = Cluster::new()?;
    for _ in 0..hosts {
        c.add_node()?;
    }
    for i in 0..hosts - 1 {
        c.spawn_daemon(i)?;
    }
    let mut pods = Vec::new();
    for i in 0..hosts - 1 {
        c.wait_subnet(i)?;
        pods.push(c.pod(i)?);
    }
    let last = hosts - 1;
    let t0 = Instant::now();
    c.spawn_daemon(last)?;
    c.wait_subnet(last)?;
    let (_pn, an) = c.pod(last)?;
    all_reach(&pods, &an)?;
    Ok(t0.elapsed())
}

/// Returns once every pod of `pods` pings `addr` (30 s at most).
fn all_reach(pods: &[(Netns, String)], addr: &str) -> Result<(), String> {
    let mut pending: Vec<&Netns> = pods.iter().map(|(p, _)| p).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        pending.retain(|p| !ping(p, addr));
        if Instant::now() > deadline {
            return Err(format!(
                "{} pods still cannot reach the new node after 30 s",
                pending.len()
            ));
        }
    }
    Ok(())
}

/// Every Node's IPv4 pod CIDR is assigned (kube-controller-manager's node IPAM).
fn pod_cidrs_assigned(cp: &ControlPlane, n: usize) -> bool {
    cp.kubectl(&["get", "nodes", "-o=jsonpath={.items[*].spec.podCIDR}"])
        .map(|s| s.split_whitespace().count() == n)
        .unwrap_or(false)
}

/// [`convergence`] on the kube store: the agents watch Nodes on a real kube-apiserver (the
/// control plane of the tests, in the underlay netns) and take the subnets
/// kube-controller-manager assigned. The new node's Node object exists with its pod CIDR when
/// its agent starts, as it does once kubelet has registered. Also: Node created -> pod CIDR
/// assigned (kube-controller-manager's share of a join).
fn convergence_kube(hosts: usize) -> Result<(Duration, Duration), String> {
    let router = "172.31.255.254";
    let ul = Underlay::try_create("bbul", "br-ul", Some(&format!("{router}/16")))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cp = ControlPlane::start(ul.ns.path(), &dir.path().join("cp"), DEFAULT_ADDRESS)?;
    let mut c = Cluster {
        ul,
        nodes: Vec::new(),
        dir,
        ip_masq: true,
        store: Some(vec![
            "--store=kube".to_string(),
            format!("--kubeconfig={}", cp.admin.display()),
        ]),
    };
    for _ in 0..hosts {
        let i = c.add_node()?;
        c.nodes[i].ns.try_exec(&[
            "ip",
            "route",
            "add",
            &format!("{DEFAULT_ADDRESS}/32"),
            "via",
            router,
        ])?;
    }
    let node = |i: usize| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node{}", i + 1)}});
    for i in 0..hosts - 1 {
        cp.apply(&node(i))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pod_cidrs_assigned(&cp, hosts - 1) {
        if Instant::now() > deadline {
            return Err("kube-controller-manager assigned no pod CIDRs within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..hosts - 1 {
        c.spawn_daemon(i)?;
    }
    let mut pods = Vec::new();
    for i in 0..hosts - 1 {
        c.wait_subnet(i)?;
        pods.push(c.pod(i)?);
    }
    let last = hosts - 1;
    let t_node = Instant::now();
    cp.apply(&node(last))?;
    while !pod_cidrs_assigned(&cp, hosts) {
        if t_node.elapsed() > Duration::from_secs(60) {
            return Err("the new Node got no pod CIDR within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cidr = t_node.elapsed();
    let t0 = Instant::now();
    c.spawn_daemon(last)?;
    c.wait_subnet(last)?;
    let (_pn, an) = c.pod(last)?;
    all_reach(&pods, &an).map_err(|e| format!("kube store: {e}"))?;
    Ok((t0.elapsed(), cidr))
}

fn many_peers(peers: usize) -> Result<Duration, String> {
    use cni_overlay::lease::{now, Lease};
    use cni_overlay::store::dir::DirStore;
    use cni_overlay::store::LeaseStore;
    let mut c = Cluster::new()?;
    let i = c.add_node()?;
    let mut store =
        DirStore::open(&c.dir.path().join("store"), NETWORK).map_err(|e| e.to_string())?;
    // Peers in 10.244.0.0/16 as /28s would not fit 1000 with /24s; use /26 subnets of a /16.
    for k in 0..peers {
        let base = u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + ((k as u32 + 1) << 6);
        let l = Lease {
            node: format!("synthetic-{k}"),
            subnet: ipnetwork::Ipv4Network::new(base.into(), 26).map_err(|e| e.to_string())?,
            subnet6: None,
            public_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                172,
                30,
                (k / 250) as u8,
                (k % 250 + 1) as u8,
            )),
            vtep_mac: format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                (k >> 16) & 0xff,
                (k >> 8) & 0xff,
                k & 0xff
            ),
            expires_at: now() + 3600,
        };
        if !store.try_acquire(&l).map_err(|e| e.to_string())? {
            return Err(format!("synthetic lease {k} refused"));
        }
    }
    let n = &c.nodes[i];
    let mut cmd = Command::new(bin_dir().join("berth-overlayd"));
    cmd.args([
        "--node-name",
        "measured",
        "--network",
        NETWORK,
        "--subnet-len",
        "26",
        "--iface",
        "eth0",
    ])
    .arg("--store")
    .arg(format!("dir:{}", c.dir.path().join("store").display()))
    .arg("--subnet-file")
    .arg(&n.subnet_file)
    .args(["--lease-ttl", "10m", "--resync-interval", "60s"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let t0 = Instant::now();
    let child = spawn_in_netns(n.ns.path(), cmd).map_err(|e| e.to_string())?;
    let _guard = Proc(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out =
            n.ns.output(&["ip", "-4", "route", "show", "dev", "berth.1"])
                .map_err(|e| e.to_string())?;
        let routes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" via "))
            .count();
        if routes >= peers {
            return Ok(t0.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!("only {routes} of {peers} peer routes after 60 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return Ok(());
    }
    let flags = bench::parse_flags(
        args,
        &["hosts", "peers", "seconds", "rounds", "markdown"],
        &[],
    )?;
    let num = |k: &str, d: usize| -> Result<usize, String> {
        flags
            .get(k)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("--{k}: {v:?} is not a number"))
            })
            .unwrap_or(Ok(d))
    };
    let hosts = num("hosts", 10)?.max(2);
    let peers = num("peers", 1000)?;
    let seconds = num("seconds", 5)? as u32;
    let rounds = num("rounds", 5)?.max(1);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (it creates network namespaces)".into());
    }

    println!("berth-bench overlay: throughput ({seconds} s per run), convergence with {hosts} hosts, {peers} peers");
    let t = throughput(seconds, rounds)?;
    let underlay = t.underlay_gbps();
    let conv = convergence(hosts)?;
    let (conv_kube, cidr) = convergence_kube(hosts)?;
    let prog = many_peers(peers)?;

    let met = |ok: bool| if ok { "met" } else { "NOT met" }.to_string();
    // One throughput row: "A vs B = median (min-max)", then the target
    // (`none` when there is none) and whether the median meets it.
    let row = |what: String, a: f64, b: f64, s: Spread, target: f64, none: &str| {
        let measured = format!(
            "{a:.2} vs {b:.2} = {:.2}x ({:.2}-{:.2})",
            s.median, s.min, s.max
        );
        if target > 0.0 {
            vec![
                what,
                measured,
                format!(">= {target:.2}x"),
                met(s.median >= target),
            ]
        } else {
            vec![what, measured, none.to_string(), String::new()]
        }
    };
    let vs_underlay = |what: &str, p: Setup, target: f64| {
        row(
            format!("throughput pod-to-pod, {what}, vs host-to-host (Gbit/s)"),
            t.gbps(p),
            underlay,
            t.vs_underlay(p),
            target,
            "(reference)",
        )
    };
    let versus = |what: &str, a: Setup, b: Setup, target: f64| {
        row(
            format!("throughput {what} (Gbit/s)"),
            t.gbps(a),
            t.gbps(b),
            t.versus(a, b),
            target,
            "(no target)",
        )
    };
    let rows = vec![
        // First: the report's chart reads the first "throughput" row.
        vs_underlay("Berth VXLAN", Setup::Vxlan, 0.85),
        vs_underlay("Berth DirectRouting", Setup::Direct, 0.95),
        vs_underlay(
            "Berth DirectRouting, pods at the VXLAN MTU (`--pod-mtu=vxlan`, as flannel)",
            Setup::DirectVxlanMtu,
            0.0,
        ),
        vs_underlay(
            "Berth DirectRouting with ipMasq false",
            Setup::DirectNoMasq,
            0.0,
        ),
        vs_underlay(
            "host-gw-style (bridge + veth, route via the peer, no NAT)",
            Setup::HostGw,
            0.0,
        ),
        vs_underlay(
            "routed veth without a bridge (route via the peer, no NAT)",
            Setup::RoutedVeth,
            0.0,
        ),
        vs_underlay("flannel-style VXLAN, no NAT", Setup::Flannel, 0.0),
        vs_underlay(
            "flannel-style VXLAN + MASQUERADE",
            Setup::FlannelNat,
            0.0,
        ),
        vs_underlay(
            "Berth VXLAN with ipMasq false (no conntrack)",
            Setup::VxlanNoMasq,
            0.0,
        ),
        versus(
            "Berth VXLAN / flannel-style, both masquerading",
            Setup::Vxlan,
            Setup::FlannelNat,
            1.0,
        ),
        versus(
            "Berth VXLAN with ipMasq false / flannel-style without NAT (same settings)",
            Setup::VxlanNoMasq,
            Setup::Flannel,
            0.0,
        ),
        versus(
            "Berth VXLAN (masquerading) / flannel-style without NAT",
            Setup::Vxlan,
            Setup::Flannel,
            0.0,
        ),
        versus(
            "Berth DirectRouting with ipMasq false / host-gw-style (same settings: MTU 1500, no NAT)",
            Setup::DirectNoMasq,
            Setup::HostGw,
            0.0,
        ),
        vec![
            format!(
                "convergence: new node start -> every pod of {} hosts pings a pod on it",
                hosts - 1
            ),
            format!("{} ms", conv.as_millis()),
            "< 1000 ms".into(),
            if conv < Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
            .into(),
        ],
        vec![
            format!(
                "convergence on the kube store (kube-apiserver): new node's agent start -> every pod of {} hosts pings a pod on it",
                hosts - 1
            ),
            format!("{} ms", conv_kube.as_millis()),
            "< 1000 ms".into(),
            if conv_kube < Duration::from_secs(1) {
                "met"
            } else {
                "NOT met"
            }
            .into(),
        ],
        vec![
            "kube store: Node created -> pod CIDR assigned by kube-controller-manager".to_string(),
            format!("{} ms", cidr.as_millis()),
            "(reference)".into(),
            String::new(),
        ],
        vec![
            format!("one node programs {peers} peers (start -> all routes present)"),
            format!("{} ms", prog.as_millis()),
            "< 2000 ms".into(),
            if prog < Duration::from_secs(2) {
                "met"
            } else {
                "NOT met"
            }
            .into(),
        ],
    ];
    let header = ["figure", "measured", "target", ""];
    print!("{}", text_table(&header, &rows));
    if let Some(path) = flags.get("markdown") {
        let mut md =
            String::from("## Overlay: VXLAN vs underlay, convergence, peer programming\n\n");
        md.push_str(&bench::machine_markdown());
        md.push_str(&format!(
            "- hosts are network namespaces on a bridge in another namespace; embedded (dir) store, and for the kube-store convergence row a real kube-apiserver + kube-controller-manager (the tests' control plane) in the underlay namespace with `--store=kube`; iperf3 {seconds} s after a 1 s warm-up (`-O 1`), one TCP stream; {rounds} rounds, each running every path between two underlay runs; a path's ratio is its Gbit/s over the mean of those two underlay runs, and the table gives the median ratio over the rounds with its min-max in brackets (the Gbit/s are medians; a Berth / flannel ratio is the quotient of the two paths' ratios, round by round). Setups, in the order of a round: Berth VXLAN, the flannel-style reference with and without MASQUERADE, Berth VXLAN with the pods' `ipMasq: false`, Berth DirectRouting (`--direct-routing`, whose default `--pod-mtu auto` gives the pods the underlay's MTU 1500; peers still on VXLAN are reached by path MTU discovery) with and without `ipMasq` (berth-overlay masquerades by default, which puts conntrack on the path as flannel's rule does), two routed references without NAT, and Berth DirectRouting with the pods at the VXLAN MTU 1450 (`--pod-mtu=vxlan`, flannel's DirectRouting MTU)\n- routed references, built by the benchmark: both hosts on the one L2, per peer `peer-subnet via peer-underlay-ip`, MTU 1500; \"host-gw-style\" attaches the pod's veth to a bridge `cni0` (flannel's host-gw backend with the bridge plugin: DirectRouting's path hop for hop), \"routed veth\" has no bridge (a /32 in the pod, default route via 169.254.1.1, the host veth's MAC, as Calico attaches pods)\n- flannel-style reference, built by the benchmark (no flannel binary): per host `flannel.1` (VXLAN VNI 1, dstport 8472, nolearning, MTU 1450), bridge `cni0` with the pod's veth (MTU 1450), per peer a permanent neighbour + FDB entry + `via VTEP dev flannel.1 onlink` route; \"+ MASQUERADE\" adds `iptables -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE` in each host\n\n"
        ));
        md.push_str(&markdown_table(&header, &rows));
        md.push('\n');
        bench::append_markdown(Path::new(path), &md)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_gives_median_min_and_max() {
        let s = Spread::of(vec![0.97, 0.91, 0.95, 0.99, 0.93]);
        assert_eq!((s.median, s.min, s.max), (0.95, 0.91, 0.99));
        assert!(Spread::of(Vec::new()).median.is_nan());
    }

    #[test]
    fn setups_are_listed_in_declaration_order() {
        // Throughput indexes by discriminant and fills by position in SETUPS.
        for (i, &p) in SETUPS.iter().enumerate() {
            assert_eq!(p as usize, i);
        }
    }

    #[test]
    fn ratios_are_taken_against_the_neighbouring_underlay_runs() {
        // The machine slows down over round 0 (underlay 20 -> 10 Gbit/s):
        // each setup is compared with the underlay runs around it.
        let mut u0 = [0.0; SETUPS.len() + 1];
        for (i, u) in u0.iter_mut().enumerate() {
            *u = 20.0 - 10.0 * i as f64 / SETUPS.len() as f64;
        }
        let mut r0 = [0.0; SETUPS.len()];
        for (i, r) in r0.iter_mut().enumerate() {
            *r = 0.9 * (u0[i] + u0[i + 1]) / 2.0;
        }
        let t = Throughput {
            underlay: vec![u0, [10.0; SETUPS.len() + 1]],
            runs: vec![r0, [10.0; SETUPS.len()]],
        };
        assert!((t.ratio_in(0, Setup::Vxlan) - 0.9).abs() < 1e-9);
        assert!((t.ratio_in(0, Setup::DirectVxlanMtu) - 0.9).abs() < 1e-9);
        assert!((t.ratio_in(1, Setup::Direct) - 1.0).abs() < 1e-9);
        // Both setups at 0.9 of their underlay in round 0, 1.0 in round 1.
        let v = t.versus(Setup::Vxlan, Setup::FlannelNat);
        assert!((v.min - 1.0).abs() < 1e-9 && (v.max - 1.0).abs() < 1e-9);
        let d = t.vs_underlay(Setup::Direct);
        assert!((d.min - 0.9).abs() < 1e-9 && (d.max - 1.0).abs() < 1e-9);
    }
}
