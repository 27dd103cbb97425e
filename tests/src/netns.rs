//! Kernel-level fixtures for the main CNI plugins (`berth-bridge`, and the reference `bridge`
//! to validate the harness).
//!
//! Network safety: nothing here touches the root network namespace. A [`Host`] is a network
//! namespace the test creates (`ip netns add`, unique name per process and call); the plugin
//! under test runs inside it ([`CniRun::in_netns`]: the child enters the namespace between fork
//! and exec). A [`Pod`] is another namespace the plugin attaches. An [`Outside`] is a third
//! namespace wired to a host by a veth pair whose both ends live in test namespaces; it stands
//! for "the rest of the world" in masquerade tests and has no route back to any pod subnet.
//! Every namespace is deleted by its guard on drop (also when the test panics), and with it
//! every link, address, route, sysctl and nft/iptables rule inside. Data directories are
//! tempdirs, removed on drop too.
//!
//! The namespaces themselves, entering them (pre-exec `setns` for commands, [`in_netns`] for
//! threads that need a socket inside), veth links, [`wait_until`] and [`ChildGuard`] are the
//! shared `netns-fixture` crate, re-exported here; this module adds what is CNI-specific: the
//! hosts and pods, plugin runs, and the state readers of [`NetnsInspect`] (links, addresses,
//! routes, nft sets, iptables chains, bridge VLANs).
//!
//! Functions named `try_*` or returning `Result` do not panic; the rest are test fixtures and
//! panic with a message saying what failed, as an assertion would.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    bin_dir, conf_bytes, merge_top_level, read_allocations, store_path, unique_name, Allocation,
    CniOutput, CniRun,
};

/// File name of the plugin under test.
pub const BRIDGE_BIN: &str = "berth-bridge";

/// The reference bridge plugin shipped by Debian's containernetworking-plugins.
pub const REFERENCE_BRIDGE: &str = "/usr/lib/cni/bridge";

/// Directory of the reference plugins.
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";

/// Name of the shared nftables NAT table of berth-bridge (family inet).
pub const NAT_TABLE: &str = "berth-nat";

/// The NAT sets of [`NAT_TABLE`].
pub const NAT_SETS: [&str; 4] = ["masq4", "local4", "masq6", "local6"];

/// Name of the MAC spoof-check table of berth-bridge (family bridge).
pub const SPOOF_TABLE: &str = "berth-spoofchk";

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The main plugin under test: `BERTH_BRIDGE` when set (e.g. `/usr/lib/cni/bridge` to validate
/// the harness against the reference), else `<bin_dir>/berth-bridge`.
pub fn bridge_bin() -> PathBuf {
    match std::env::var_os("BERTH_BRIDGE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => bin_dir().join(BRIDGE_BIN),
    }
}

/// Whether `plugin` is the reference bridge (file name `bridge`): berth-only checks (the nft
/// table layout, the records, error codes, berth-only keys) are skipped for it.
pub fn is_reference(plugin: &Path) -> bool {
    plugin.file_name().is_some_and(|n| n == "bridge")
}

/// Panic with a useful message when `path` is not an existing file.
pub fn require_bin(path: &Path) {
    assert!(
        path.is_file(),
        "{} not found: build the workspace with `cargo build --release --workspace` (or point BERTH_BRIDGE / \
         BERTH_BIN_DIR at a build)",
        path.display()
    );
}

/// `CNI_PATH` for the tests: our binaries first, then the reference plugins (for `host-local`
/// as IPAM and `loopback`).
pub fn default_cni_path() -> String {
    format!("{}:{REFERENCE_CNI_DIR}", bin_dir().display())
}

// ---------------------------------------------------------------------------------------------
// Namespaces: the shared fixture, and what the CNI tests read from a namespace
// ---------------------------------------------------------------------------------------------

pub use netns_fixture::{
    describe_output, in_netns, output_in_netns, spawn_in_netns, wait_until, ChildGuard, Netns,
    NsFiles, Underlay, NETNS_DIR,
};

/// `argv` inside `ns`, its stdout parsed as JSON (empty output: an empty list); panics when
/// the command fails or prints something else.
fn ip_json(ns: &Netns, argv: &[&str]) -> Value {
    let text = ns.exec(argv);
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "`{}` in {}: not JSON ({e}): {text}",
            argv.join(" "),
            ns.name()
        )
    })
}

/// State readers for a test namespace (links, addresses, routes, VLANs, nft sets, iptables
/// chains), on top of the shared [`Netns`] fixture; in scope with `use berth_tests::netns::*`.
/// They panic with the command's output when it fails, as an assertion would.
pub trait NetnsInspect {
    /// The namespace to read.
    fn netns(&self) -> &Netns;

    /// `ip -j -d link show`: every link with details.
    fn links(&self) -> Vec<Value> {
        match ip_json(self.netns(), &["ip", "-j", "-d", "link", "show"]) {
            Value::Array(v) => v,
            other => panic!(
                "ip -j link show in {}: not a list: {other}",
                self.netns().name()
            ),
        }
    }

    /// One link by name, with details; None when absent.
    fn link(&self, name: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["ifname"] == json!(name))
    }

    /// One link by name; panics when absent.
    fn link_or_panic(&self, name: &str) -> Value {
        self.link(name).unwrap_or_else(|| {
            panic!(
                "no link {name} in netns {}; links: {}",
                self.netns().name(),
                self.link_names().join(", ")
            )
        })
    }

    /// Names of every link.
    fn link_names(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// Names of every link of `kind` (`veth`, `bridge`, ...).
    fn links_of_kind(&self, kind: &str) -> Vec<String> {
        self.links()
            .iter()
            .filter(|l| l["linkinfo"]["info_kind"] == json!(kind))
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// Every veth in this namespace.
    fn veths(&self) -> Vec<String> {
        self.links_of_kind("veth")
    }

    /// Addresses on `dev` (without prefix length), both families, global and link scope.
    fn addrs(&self, dev: &str) -> Vec<(IpAddr, u8, String)> {
        let v = ip_json(self.netns(), &["ip", "-j", "addr", "show", "dev", dev]);
        let mut out = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                else {
                    continue;
                };
                if let Ok(ip) = local.parse::<IpAddr>() {
                    out.push((ip, len as u8, a["scope"].as_str().unwrap_or("").to_string()));
                }
            }
        }
        out
    }

    /// Global-scope addresses on `dev`.
    fn global_addrs(&self, dev: &str) -> Vec<IpAddr> {
        self.addrs(dev)
            .into_iter()
            .filter(|(_, _, s)| s == "global")
            .map(|(ip, _, _)| ip)
            .collect()
    }

    /// `ip -j [-6] route show table all`: every route of the family.
    fn routes(&self, v6: bool) -> Vec<Value> {
        let fam = if v6 { "-6" } else { "-4" };
        match ip_json(self.netns(), &["ip", "-j", fam, "route", "show"]) {
            Value::Array(v) => v,
            other => panic!("ip route in {}: not a list: {other}", self.netns().name()),
        }
    }

    /// The default route of the family, if any.
    fn default_route(&self, v6: bool) -> Option<Value> {
        self.routes(v6)
            .into_iter()
            .find(|r| r["dst"] == json!("default"))
    }

    /// `bridge -j vlan show`: per port, the VLAN entries.
    fn bridge_vlans(&self) -> Vec<Value> {
        match ip_json(self.netns(), &["bridge", "-j", "vlan", "show"]) {
            Value::Array(v) => v,
            other => panic!(
                "bridge vlan show in {}: not a list: {other}",
                self.netns().name()
            ),
        }
    }

    /// The elements of an nft set (as JSON values), `Ok(None)` when the table or set does not
    /// exist.
    fn nft_set_elements(
        &self,
        family: &str,
        table: &str,
        set: &str,
    ) -> Result<Option<Vec<Value>>, String> {
        let argv = ["nft", "-j", "list", "set", family, table, set];
        let out = self
            .netns()
            .output(&argv)
            .map_err(|e| format!("cannot run nft (install nftables): {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") || err.contains("does not exist") {
                return Ok(None);
            }
            return Err(format!(
                "in netns {}: {}",
                self.netns().name(),
                describe_output(&argv, &out)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("nft -j output is not JSON: {e}"))?;
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(s) = item.get("set") {
                return Ok(Some(s["elem"].as_array().cloned().unwrap_or_default()));
            }
        }
        Ok(Some(Vec::new()))
    }

    /// `nft -j list ruleset` of this namespace (for failure messages and table checks).
    fn nft_ruleset(&self) -> Value {
        ip_json(self.netns(), &["nft", "-j", "list", "ruleset"])
    }

    /// `nft list ruleset` as text (for failure messages).
    fn nft_ruleset_text(&self) -> String {
        self.netns()
            .try_exec(&["nft", "list", "ruleset"])
            .unwrap_or_else(|e| e)
    }

    /// `iptables -t nat -S` (or ip6tables): one line per chain and rule.
    fn nat_rules(&self, v6: bool) -> Vec<String> {
        let prog = if v6 { "ip6tables" } else { "iptables" };
        match self.netns().try_exec(&[prog, "-w", "-t", "nat", "-S"]) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) => panic!("{prog} -t nat -S failed (install iptables): {e}"),
        }
    }

    /// Flush the neighbour cache of `dev`.
    fn flush_neigh(&self, dev: &str) {
        self.netns().exec(&["ip", "neigh", "flush", "dev", dev]);
    }
}

impl NetnsInspect for Netns {
    fn netns(&self) -> &Netns {
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Host, Pod, Outside
// ---------------------------------------------------------------------------------------------

/// The node: a fresh network namespace (only `lo`, forwarding off) in which plugins run.
pub struct Host {
    /// The namespace.
    pub ns: Netns,
}

impl Host {
    /// A new, empty host namespace.
    pub fn new() -> Host {
        Host {
            ns: Netns::create("bth"),
        }
    }

    /// Run a CNI plugin inside this host (the `CniRun` is moved into the namespace).
    pub fn run_plugin(&self, run: CniRun) -> CniOutput {
        let run = run.in_netns(self.ns.path());
        run.run()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", run.program().display()))
    }

    /// The host-side names of every NAT set element of berth-bridge's table, as JSON text,
    /// tagged with the set name; empty when the table does not exist.
    pub fn nat_elements(&self) -> Vec<String> {
        let mut out = Vec::new();
        for set in NAT_SETS {
            match self.ns.nft_set_elements("inet", NAT_TABLE, set) {
                Ok(Some(elems)) => out.extend(elems.iter().map(|e| format!("{set}: {e}"))),
                Ok(None) => {}
                Err(e) => panic!("reading nft set {set}: {e}"),
            }
        }
        out
    }

    /// The elements of berth-bridge's spoof-check sets (`ports`, `allowed`), as JSON text.
    pub fn spoof_elements(&self) -> Vec<String> {
        let mut out = Vec::new();
        for set in ["ports", "allowed"] {
            match self.ns.nft_set_elements("bridge", SPOOF_TABLE, set) {
                Ok(Some(elems)) => out.extend(elems.iter().map(|e| format!("{set}: {e}"))),
                Ok(None) => {}
                Err(e) => panic!("reading nft set {set}: {e}"),
            }
        }
        out
    }

    /// iptables nat lines (both families) that mention a `BERTH-MASQ-` chain.
    pub fn berth_iptables_lines(&self) -> Vec<String> {
        let mut out = self.ns.nat_rules(false);
        out.extend(self.ns.nat_rules(true));
        out.retain(|l| l.contains("BERTH-MASQ-"));
        out
    }

    /// Ports of bridge `bridge`.
    pub fn bridge_ports(&self, bridge: &str) -> Vec<String> {
        self.ns
            .links()
            .iter()
            .filter(|l| l["master"] == json!(bridge))
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A pod sandbox: a network namespace, a container id and the interface name to attach.
pub struct Pod {
    /// The namespace (CNI_NETNS is its path).
    pub ns: Netns,
    /// CNI_CONTAINERID.
    pub id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    result: std::sync::Mutex<Option<Value>>,
}

impl Pod {
    /// A pod with interface `eth0`.
    pub fn new() -> Pod {
        Pod::with_ifname("eth0")
    }

    /// A pod with another interface name.
    pub fn with_ifname(ifname: &str) -> Pod {
        Pod {
            ns: Netns::create("btp"),
            id: unique_name("ctr"),
            ifname: ifname.to_string(),
            result: std::sync::Mutex::new(None),
        }
    }

    /// The result of the last successful [`BridgeNet::add_ok`] of this pod (cleared by
    /// [`BridgeNet::del_ok`]).
    pub fn result(&self) -> Option<Value> {
        self.result.lock().map(|r| r.clone()).unwrap_or(None)
    }

    fn set_result(&self, v: Option<Value>) {
        if let Ok(mut r) = self.result.lock() {
            *r = v;
        }
    }

    /// The attached interface (with details); panics when absent.
    pub fn iface(&self) -> Value {
        self.ns.link_or_panic(&self.ifname)
    }

    /// MAC of the attached interface (lowercase).
    pub fn mac(&self) -> String {
        self.iface()["address"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase()
    }

    /// Global addresses of the attached interface.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.ns.global_addrs(&self.ifname)
    }

    /// Set the interface's MAC (down, change, up).
    pub fn set_mac(&self, mac: &str) {
        self.ns
            .exec(&["ip", "link", "set", "dev", &self.ifname, "down"]);
        self.ns
            .exec(&["ip", "link", "set", "dev", &self.ifname, "address", mac]);
        self.ns
            .exec(&["ip", "link", "set", "dev", &self.ifname, "up"]);
    }
}

impl Default for Pod {
    fn default() -> Self {
        Pod::new()
    }
}

impl Deref for Pod {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A namespace standing for the outside world, wired to a [`Host`] by a veth pair: `uplink0`
/// in the host (203.0.113.1/24, 2001:db8:ff::1/64), `eth0` here (203.0.113.2/24,
/// 2001:db8:ff::2/64). It has no route to any pod subnet, so a pod reaches it only when the
/// host masquerades.
pub struct Outside {
    /// The namespace.
    pub ns: Netns,
}

impl Outside {
    /// The host's address on the uplink.
    pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// The outside host's address.
    pub const V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    /// The host's IPv6 address on the uplink.
    pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
    /// The outside host's IPv6 address.
    pub const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);

    /// Create the namespace and the link (both ends in test namespaces).
    pub fn connect(host: &Host) -> Outside {
        let ns = Netns::create("bto");
        host.add_veth("uplink0", &ns, "eth0");
        host.configure("uplink0", &["203.0.113.1/24", "2001:db8:ff::1/64"]);
        ns.configure("eth0", &["203.0.113.2/24", "2001:db8:ff::2/64"]);
        Outside { ns }
    }

    /// Open a TCP connection from namespace `from` to this outside host (`v6` picks the family)
    /// and return the source address the outside host sees, or why it failed.
    pub fn observe_source(
        &self,
        from: &Netns,
        v6: bool,
        timeout: Duration,
    ) -> Result<IpAddr, String> {
        let addr: IpAddr = if v6 { Self::V6.into() } else { Self::V4.into() };
        let listener = self
            .ns
            .run(|| TcpListener::bind(SocketAddr::new(addr, 0)))
            .and_then(|r| r)
            .map_err(|e| format!("listen in the outside netns: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let target = SocketAddr::new(addr, port);
        let stream = from
            .run(|| TcpStream::connect_timeout(&target, timeout))
            .map_err(|e| format!("enter {}: {e}", from.name()))?
            .map_err(|e| format!("connect from {} to {target}: {e}", from.name()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match listener.accept() {
                Ok((_conn, peer)) => {
                    drop(stream);
                    return Ok(peer.ip());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept in the outside netns: {e}")),
            }
        }
    }
}

impl Deref for Outside {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

// ---------------------------------------------------------------------------------------------
// Network configuration and plugin runs
// ---------------------------------------------------------------------------------------------

/// `{"type":"berth-host-local", "ranges":[[{"subnet":s1}], [{"subnet":s2}], ...]}` (one range
/// set per subnet); `dataDir` is added by [`BridgeNet`].
pub fn host_local_ipam(subnets: &[&str]) -> Value {
    json!({
        "type": "berth-host-local",
        "ranges": subnets.iter().map(|s| json!([{ "subnet": s }])).collect::<Vec<_>>(),
    })
}

/// One row of berth-bridge's `attachments` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRecord {
    /// Container id.
    pub container_id: String,
    /// Pod interface name.
    pub ifname: String,
    /// Netns path at ADD time.
    pub netns: String,
    /// Bridge name.
    pub bridge: String,
    /// Host veth name.
    pub host_veth: String,
    /// Pod MAC.
    pub pod_mac: String,
    /// Addresses, as stored.
    pub ips: String,
}

/// `<dataDir>/<network>/attachments.db`.
pub fn records_path(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network).join("attachments.db")
}

/// Every row of `attachments` (read-only). `Ok(empty)` when the file does not exist.
pub fn read_attachment_records(db: &Path) -> rusqlite::Result<Vec<AttachmentRecord>> {
    use rusqlite::OpenFlags;
    if !db.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut stmt = conn.prepare(
        "SELECT CAST(container_id AS TEXT), CAST(ifname AS TEXT), CAST(netns AS TEXT), CAST(bridge AS TEXT), \
         CAST(host_veth AS TEXT), CAST(pod_mac AS TEXT), CAST(ips AS TEXT) FROM attachments",
    )?;
    let rows = stmt.query_map([], |r| {
        let s = |i: usize| -> rusqlite::Result<String> {
            Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
        };
        Ok(AttachmentRecord {
            container_id: s(0)?,
            ifname: s(1)?,
            netns: s(2)?,
            bridge: s(3)?,
            host_veth: s(4)?,
            pod_mac: s(5)?,
            ips: s(6)?,
        })
    })?;
    rows.collect()
}

/// A bridge network private to one test: unique name, its own tempdir holding the bridge
/// `dataDir` (`<tmp>/bridge`) and the IPAM `dataDir` (`<tmp>/ipam`).
pub struct BridgeNet {
    /// Network name (unique).
    pub name: String,
    /// cniVersion.
    pub cni_version: String,
    /// Every top-level key except `cniVersion` and `name`.
    pub conf: Value,
    /// Plugin binary.
    pub plugin: PathBuf,
    /// CNI_PATH.
    pub cni_path: String,
    dir: tempfile::TempDir,
}

impl BridgeNet {
    /// A network for the plugin under test ([`bridge_bin`]): `{"type":"berth-bridge",
    /// "bridge":"berth0","dataDir":..}` with the keys of `keys` merged over it. When `keys`
    /// has an `ipam` object with a `type`, its `dataDir` is set unless given.
    pub fn new(cni_version: &str, keys: Value) -> BridgeNet {
        BridgeNet::with_plugin(bridge_bin(), cni_version, keys)
    }

    /// The same with another plugin binary.
    pub fn with_plugin(plugin: PathBuf, cni_version: &str, keys: Value) -> BridgeNet {
        require_bin(&plugin);
        let dir = tempfile::Builder::new()
            .prefix("berth-bridge-test-")
            .tempdir()
            .expect("create a tempdir");
        let mut conf = json!({
            "type": "berth-bridge",
            "bridge": "berth0",
            "dataDir": dir.path().join("bridge").to_string_lossy(),
        });
        merge_top_level(&mut conf, &keys);
        let ipam_dir = dir.path().join("ipam").to_string_lossy().into_owned();
        if let Some(ipam) = conf.get_mut("ipam").and_then(Value::as_object_mut) {
            if ipam.contains_key("type") {
                ipam.entry("dataDir").or_insert_with(|| json!(ipam_dir));
            }
        }
        BridgeNet {
            name: unique_name("net"),
            cni_version: cni_version.to_string(),
            conf,
            plugin,
            cni_path: default_cni_path(),
            dir,
        }
    }

    /// Whether the plugin is the reference bridge.
    pub fn is_reference(&self) -> bool {
        is_reference(&self.plugin)
    }

    /// The bridge's `dataDir`.
    pub fn data_dir(&self) -> PathBuf {
        self.conf["dataDir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.path().join("bridge"))
    }

    /// The IPAM's `dataDir` (None for L2-only networks).
    pub fn ipam_data_dir(&self) -> Option<PathBuf> {
        self.conf["ipam"]["dataDir"].as_str().map(PathBuf::from)
    }

    /// The tempdir owned by this network (for test files).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configured bridge name.
    pub fn bridge(&self) -> String {
        self.conf["bridge"].as_str().unwrap_or("berth0").to_string()
    }

    /// The full configuration.
    pub fn conf_value(&self) -> Value {
        let mut v = json!({ "cniVersion": self.cni_version, "name": self.name });
        merge_top_level(&mut v, &self.conf);
        v
    }

    /// The configuration with more top-level keys, as bytes.
    pub fn conf_with(&self, extra: Value) -> Vec<u8> {
        let mut v = self.conf_value();
        merge_top_level(&mut v, &extra);
        conf_bytes(&v)
    }

    /// A run of `command` for `pod` (not yet placed in a host; [`Host::run_plugin`] does).
    pub fn cmd(&self, command: &str, pod: &Pod) -> CniRun {
        CniRun::new(&self.plugin)
            .command(command)
            .container_id(&pod.id)
            .netns(&pod.path_str())
            .ifname(&pod.ifname)
            .cni_path(&self.cni_path)
            .stdin(self.conf_with(json!({})))
    }

    /// ADD `pod` through `host`.
    pub fn add(&self, host: &Host, pod: &Pod) -> CniOutput {
        host.run_plugin(self.cmd("ADD", pod))
    }

    /// ADD that must succeed; returns the result (also kept in the pod, [`Pod::result`]).
    pub fn add_ok(&self, host: &Host, pod: &Pod) -> Value {
        let out = self.add(host, pod);
        assert_plugin_ok(&out, &format!("ADD {} ({})", pod.id, self.plugin.display()));
        let res = out
            .json
            .clone()
            .unwrap_or_else(|| panic!("ADD {}: stdout is not JSON: {}", pod.id, out.describe()));
        pod.set_result(Some(res.clone()));
        res
    }

    /// DEL `pod` (no prevResult).
    pub fn del(&self, host: &Host, pod: &Pod) -> CniOutput {
        host.run_plugin(self.cmd("DEL", pod))
    }

    /// DEL that must succeed.
    pub fn del_ok(&self, host: &Host, pod: &Pod) {
        let out = self.del(host, pod);
        assert_plugin_ok(&out, &format!("DEL {}", pod.id));
        pod.set_result(None);
    }

    /// CHECK `pod` with `prev` as prevResult.
    pub fn check(&self, host: &Host, pod: &Pod, prev: &Value) -> CniOutput {
        host.run_plugin(
            self.cmd("CHECK", pod)
                .stdin(self.conf_with(json!({ "prevResult": prev }))),
        )
    }

    /// GC with `cni.dev/valid-attachments` = `valid` (container, ifname).
    pub fn gc(&self, host: &Host, valid: &[(&str, &str)]) -> CniOutput {
        let list: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({ "containerID": c, "ifname": i }))
            .collect();
        let run = CniRun::new(&self.plugin)
            .command("GC")
            .cni_path(&self.cni_path)
            .stdin(self.conf_with(json!({ "cni.dev/valid-attachments": list })));
        host.run_plugin(run)
    }

    /// STATUS.
    pub fn status(&self, host: &Host) -> CniOutput {
        let run = CniRun::new(&self.plugin)
            .command("STATUS")
            .cni_path(&self.cni_path)
            .stdin(self.conf_with(json!({})));
        host.run_plugin(run)
    }

    /// berth-bridge's attachment records of this network.
    pub fn records(&self) -> Vec<AttachmentRecord> {
        let db = records_path(&self.data_dir(), &self.name);
        read_attachment_records(&db)
            .unwrap_or_else(|e| panic!("cannot read records {}: {e}", db.display()))
    }

    /// Addresses the IPAM plugin holds for this network: rows of the berth-host-local store,
    /// or the reservation files of the reference host-local (`ipam.type` `host-local`).
    pub fn ipam_held(&self) -> Vec<Allocation> {
        let Some(dir) = self.ipam_data_dir() else {
            return Vec::new();
        };
        if self.conf["ipam"]["type"] == json!("host-local") {
            return reference_reservations(&dir.join(&self.name));
        }
        let db = store_path(&dir, &self.name);
        if !db.exists() {
            return Vec::new();
        }
        read_allocations(&db)
            .unwrap_or_else(|e| panic!("cannot read IPAM store {}: {e}", db.display()))
    }
}

/// The reservations of a reference host-local network directory: files named by an address,
/// content `<container>\r\n<ifname>`.
pub fn reference_reservations(dir: &Path) -> Vec<Allocation> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<IpAddr>().is_err() {
            continue;
        }
        let content = fs::read_to_string(e.path()).unwrap_or_default();
        let mut lines = content.lines();
        out.push(Allocation {
            address: name,
            container_id: lines.next().unwrap_or("").trim().to_string(),
            ifname: lines.next().unwrap_or("").trim().to_string(),
        });
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// Assert a plugin run succeeded (exit 0, no panic, not hung).
pub fn assert_plugin_ok(out: &CniOutput, what: &str) {
    assert!(!out.timed_out, "{what}: plugin hung: {}", out.describe());
    assert!(
        !out.panicked(),
        "{what}: plugin panicked: {}",
        out.describe()
    );
    assert!(out.success(), "{what}: plugin failed: {}", out.describe());
}

// ---------------------------------------------------------------------------------------------
// Result helpers
// ---------------------------------------------------------------------------------------------

/// `ips[].address` of a 0.3.0+ result, parsed.
pub fn result_ips(result: &Value) -> Vec<(IpAddr, u8)> {
    crate::result_addresses(result)
        .iter()
        .filter_map(|a| crate::parse_cidr(a))
        .collect()
}

/// The first IPv4 address of a result.
pub fn result_v4(result: &Value) -> Option<IpAddr> {
    result_ips(result)
        .into_iter()
        .map(|(ip, _)| ip)
        .find(IpAddr::is_ipv4)
}

/// The first IPv6 address of a result.
pub fn result_v6(result: &Value) -> Option<IpAddr> {
    result_ips(result)
        .into_iter()
        .map(|(ip, _)| ip)
        .find(IpAddr::is_ipv6)
}

/// `interfaces[1].name`: the host veth.
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[1].name: {result}"))
        .to_string()
}

/// The gateway of the first address of the family in a result.
pub fn result_gateway(result: &Value, v6: bool) -> Option<IpAddr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let gw: IpAddr = ip["gateway"].as_str()?.parse().ok()?;
        (gw.is_ipv6() == v6).then_some(gw)
    })
}

/// Lines of `elems` mentioning `needle`.
pub fn mentioning<'a>(elems: &'a [String], needle: &str) -> Vec<&'a String> {
    elems.iter().filter(|e| e.contains(needle)).collect()
}

/// Collects failed expectations so a test reports all of them at once.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    /// New, empty.
    pub fn new() -> Self {
        Failures(Vec::new())
    }

    /// Record `msg` unless `ok`.
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    /// Record a failure.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    /// Panic listing every failure, if any.
    pub fn assert_none(self, context: &str) {
        if !self.0.is_empty() {
            panic!(
                "{context}: {} failed expectation(s):\n- {}",
                self.0.len(),
                self.0.join("\n- ")
            );
        }
    }
}
