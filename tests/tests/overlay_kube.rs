//! berth-overlayd with the Kubernetes API as its store (`--store=kube`), against the real
//! kube-apiserver and kube-controller-manager of [`berth_tests::cluster`]: no etcd of the
//! overlay's own. kube-controller-manager (`--allocate-node-cidrs --cluster-cidr=10.244.0.0/16`)
//! gives each Node its `spec.podCIDRs`; each agent publishes its VTEP as `berth.dev/`
//! annotations on its Node and watches the others.
//!
//! Topology: the control plane on an underlay netns (its bridge end is the router), three hosts
//! (netns) on that underlay, each with an agent authenticated as the shipped `berth-cni`
//! ServiceAccount (its RBAC from deploy/kubernetes), and a pod (netns) per host attached with
//! the real `berth-overlay`. The Nodes are created through the API (no kubelet is needed for the
//! overlay: the agent only reads Nodes). Nothing is configured in the root netns; the guards
//! stop the agents by PID and delete every netns, also on failure.

// Test code: a failed setup step should stop the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::cluster::{ControlPlane, DEFAULT_ADDRESS};
use berth_tests::netns::*;
use berth_tests::{bin_dir, conf_bytes, CniRun};
use netns_fixture::{spawn_in_netns, ChildGuard};
use serde_json::{json, Value};

const NETWORK: &str = "10.244.0.0/16";
const SETTLE: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The control plane on an underlay whose bridge end (`.254`) routes to it.
struct Cluster {
    cp: ControlPlane,
    ul: Underlay,
    prefix: &'static str,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(ns_prefix: &str, prefix: &'static str) -> Cluster {
        let ul = Underlay::create(ns_prefix, "br-ul", Some(&format!("{prefix}.254/24")));
        let dir = tempfile::Builder::new()
            .prefix("berth-kube-store-")
            .tempdir()
            .unwrap();
        let cp = ControlPlane::start(ul.ns.path(), &dir.path().join("cp"), DEFAULT_ADDRESS)
            .unwrap_or_else(|e| panic!("control plane: {e}"));
        // The shipped ServiceAccount and its RBAC (not the DaemonSet: the agents run here as
        // processes).
        cp.kubectl(&[
            "apply",
            "-f",
            &root()
                .join("deploy/kubernetes/00-namespace.yaml")
                .to_string_lossy(),
        ])
        .unwrap();
        let text =
            fs::read_to_string(root().join("deploy/kubernetes/11-cni-daemonset.yaml")).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
                .contains(&v["kind"].as_str().unwrap_or_default())
            {
                cp.apply(&v).unwrap();
            }
        }
        Cluster {
            cp,
            ul,
            prefix,
            dir,
        }
    }

    /// A kubeconfig of the ServiceAccount `ns/name`.
    fn kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{ns}-{name}.kubeconfig"));
        self.cp.service_account_kubeconfig(ns, name, &p).unwrap();
        p
    }
}

struct Host {
    name: String,
    ns: Netns,
    ip: String,
    subnet_file: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    agent: Option<ChildGuard>,
    pod: Option<(Netns, String)>,
}

impl Host {
    fn create(c: &Cluster, i: u8) -> Host {
        let ns = Netns::create("bks");
        let ip = format!("{}.{i}", c.prefix);
        c.ul.attach(&ns, &format!("u{i}"), "eth0", &[&format!("{ip}/24")]);
        ns.try_exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("{}.254", c.prefix),
        ])
        .unwrap();
        let d = c.dir.path().join(format!("host{i}"));
        fs::create_dir_all(&d).unwrap();
        Host {
            name: format!("host{i}"),
            ns,
            ip,
            subnet_file: d.join("subnet.env"),
            data_dir: d.join("data"),
            log: d.join("agent.log"),
            agent: None,
            pod: None,
        }
    }

    fn agent_command(&self, kubeconfig: Option<&Path>) -> Command {
        self.agent_command_on(kubeconfig, NETWORK)
    }

    fn agent_command_on(&self, kubeconfig: Option<&Path>, network: &str) -> Command {
        let mut cmd = Command::new(bin_dir().join("berth-overlayd"));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args([
                "--store=kube",
                &format!("--node-name={}", self.name),
                &format!("--network={network}"),
                "--iface=eth0",
                "--resync-interval=2s",
                "--lease-ttl=30s",
            ])
            .arg("--subnet-file")
            .arg(&self.subnet_file);
        if let Some(k) = kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        cmd
    }

    fn start_agent(&mut self, kubeconfig: &Path) {
        let mut cmd = self.agent_command(Some(kubeconfig));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.agent = Some(ChildGuard::new(
            spawn_in_netns(self.ns.path(), cmd).unwrap(),
        ));
    }

    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn subnet(&self) -> Option<String> {
        fs::read_to_string(&self.subnet_file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("BERTH_SUBNET="))
            .map(str::to_string)
    }

    /// Attach a pod; its netns and IPv4 address.
    fn attach_pod(&mut self) {
        let pod = Netns::create("bkp");
        let conf = json!({"cniVersion": "1.1.0", "name": "pods", "type": "berth-overlay",
            "subnetFile": self.subnet_file, "dataDir": self.data_dir});
        let out = CniRun::new(bin_dir().join("berth-overlay"))
            .in_netns(self.ns.path())
            .command("ADD")
            .container_id(pod.name())
            .netns(&pod.path_str())
            .ifname("eth0")
            .cni_path(bin_dir())
            .stdin(conf_bytes(&conf))
            .run()
            .unwrap();
        assert!(out.success(), "ADD on {}: {}", self.name, out.describe());
        let addr = out
            .addresses()
            .into_iter()
            .find(|a| !a.contains(':'))
            .expect("an IPv4 address");
        let ip = berth_tests::strip_prefix_len(&addr).to_string();
        self.pod = Some((pod, ip));
    }

    fn pod_ip(&self) -> &str {
        &self.pod.as_ref().unwrap().1
    }

    fn pings(&self, ip: &str) -> bool {
        self.pod
            .as_ref()
            .unwrap()
            .0
            .try_exec(&["ping", "-c", "1", "-W", "1", ip])
            .is_ok()
    }

    /// What this host's VXLAN device holds for `peer`: (route, neighbour, FDB entry).
    fn programmed(&self, peer: &Host) -> (bool, bool, bool) {
        let subnet = peer.subnet().unwrap_or_default();
        let routes = self
            .ns
            .try_exec(&["ip", "route", "show", "dev", "berth.1"])
            .unwrap_or_default();
        let neigh = self
            .ns
            .try_exec(&["ip", "neigh", "show", "dev", "berth.1"])
            .unwrap_or_default();
        let fdb = self
            .ns
            .try_exec(&["bridge", "fdb", "show", "dev", "berth.1"])
            .unwrap_or_default();
        (
            !subnet.is_empty() && routes.contains(&subnet),
            neigh.contains(&peer.vtep_mac()),
            fdb.contains(&format!("dst {}", peer.ip)),
        )
    }

    /// The MAC of this host's VXLAN device (`<no device>` when there is none).
    fn vtep_mac(&self) -> String {
        self.ns
            .try_exec(&["ip", "-j", "link", "show", "berth.1"])
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v[0]["address"].as_str().map(str::to_string))
            .unwrap_or_else(|| "<no device>".into())
    }
}

fn annotation(cp: &ControlPlane, node: &str, key: &str) -> String {
    let n = cp.get_json(&["node", node]).unwrap_or(Value::Null);
    n["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn create_node(cp: &ControlPlane, name: &str) {
    cp.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        .unwrap();
}

fn all_ping(hosts: &[Host]) -> Result<(), String> {
    for a in hosts {
        for b in hosts {
            if a.name != b.name && !a.pings(b.pod_ip()) {
                return Err(format!("{} pod -> {} pod {}", a.name, b.name, b.pod_ip()));
            }
        }
    }
    Ok(())
}

#[test]
fn kube_store_three_hosts_follow_the_nodes() {
    assert!(netns_fixture::is_root(), "run as root");
    let mut c = Cluster::start("bku", "172.31.247");
    let kc = c.kubeconfig("berth-system", "berth-cni");
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::create(&c, i)).collect();
    // An agent started before its Node exists waits for it (and says so).
    hosts[0].start_agent(&kc);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        hosts[0].subnet().is_none(),
        "no subnet before the Node has a pod CIDR"
    );
    for h in &hosts {
        create_node(&c.cp, &h.name);
    }
    for h in hosts.iter_mut().skip(1) {
        h.start_agent(&kc);
    }
    let logs = |hosts: &[Host]| -> String {
        hosts
            .iter()
            .map(|h| format!("--- {}:\n{}", h.name, h.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for h in &hosts {
        let ok = wait_until(SETTLE, || h.subnet().is_some());
        assert!(ok, "{} wrote no subnet file\n{}", h.name, logs(&hosts));
        let cidr =
            c.cp.kubectl(&["get", "node", &h.name, "-o=jsonpath={.spec.podCIDR}"])
                .unwrap();
        assert_eq!(
            h.subnet().unwrap(),
            cidr.trim(),
            "{}: the subnet is the Node's pod CIDR",
            h.name
        );
        assert_eq!(
            annotation(&c.cp, &h.name, "berth.dev/vtep-mac"),
            h.vtep_mac()
        );
        assert_eq!(annotation(&c.cp, &h.name, "berth.dev/public-ip"), h.ip);
        assert_eq!(annotation(&c.cp, &h.name, "berth.dev/backend"), "vxlan");
    }
    assert!(
        hosts[0].log().contains("waiting for Node host1"),
        "the early agent said what it waits for:\n{}",
        hosts[0].log()
    );
    for h in hosts.iter_mut() {
        h.attach_pod();
    }
    let mut last = String::new();
    let ok = wait_until(SETTLE, || all_ping(&hosts).map_err(|e| last = e).is_ok());
    assert!(ok, "pods across all hosts: {last}\n{}", logs(&hosts));

    // An annotation changed by hand is put back.
    let real = hosts[0].vtep_mac();
    c.cp.kubectl(&[
        "annotate",
        "node",
        "host1",
        "--overwrite",
        "berth.dev/vtep-mac=02:00:00:00:00:01",
    ])
    .unwrap();
    let repaired = wait_until(SETTLE, || {
        annotation(&c.cp, "host1", "berth.dev/vtep-mac") == real
    });
    assert!(
        repaired,
        "host1's annotation was not repaired\n{}",
        hosts[0].log()
    );
    assert!(
        wait_until(SETTLE, || all_ping(&hosts).is_ok()),
        "after the repair"
    );

    // The API server stopped: traffic keeps flowing on what is programmed.
    c.cp.stop_apiserver();
    std::thread::sleep(Duration::from_secs(3));
    all_ping(&hosts).unwrap_or_else(|e| panic!("with the API server down: {e}"));
    for h in hosts.iter_mut() {
        assert!(
            h.agent.as_mut().unwrap().running(),
            "{} kept running",
            h.name
        );
    }
    c.cp.start_apiserver().unwrap();
    // Back: the agents' watches resume without a restart. Deleting host3's Node shows it: the
    // others drop its route, neighbour and FDB entry.
    let before = hosts[0].programmed(&hosts[2]);
    assert_eq!(before, (true, true, true), "host1 has host3 programmed");
    let mut deleted = false;
    for _ in 0..20 {
        if c.cp
            .kubectl(&["delete", "node", "host3", "--wait=true"])
            .is_ok()
        {
            deleted = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(deleted, "delete node host3");
    for h in &hosts[..2] {
        let gone = wait_until(SETTLE, || h.programmed(&hosts[2]) == (false, false, false));
        assert!(
            gone,
            "{} still has host3: {:?}\n{}",
            h.name,
            h.programmed(&hosts[2]),
            h.log()
        );
    }
    assert!(
        !hosts[0].pings(hosts[2].pod_ip()),
        "host3's pod is unreachable once its Node is gone"
    );
    assert!(
        hosts[0].pings(hosts[1].pod_ip()),
        "host1 -> host2 still works"
    );

    // An agent restarted: same subnet, same MAC, peers untouched.
    let (subnet, mac) = (hosts[0].subnet(), hosts[0].vtep_mac());
    hosts[0].stop_agent();
    assert_eq!(
        annotation(&c.cp, "host1", "berth.dev/vtep-mac"),
        mac,
        "a stopped agent leaves its annotations (peers keep their routes)"
    );
    assert!(
        hosts[1].pings(hosts[0].pod_ip()),
        "host2 -> host1 while host1's agent is down"
    );
    hosts[0].start_agent(&kc);
    let back = wait_until(SETTLE, || hosts[0].log().matches("holds").count() >= 2);
    assert!(back, "the agent came back\n{}", hosts[0].log());
    assert_eq!(hosts[0].subnet(), subnet);
    assert_eq!(hosts[0].vtep_mac(), mac);
    assert!(
        hosts[0].pings(hosts[1].pod_ip()),
        "host1 -> host2 after the restart"
    );
    for h in hosts.iter_mut() {
        h.stop_agent();
    }
    drop(c.dir);
}

#[test]
fn kube_store_bad_input_exits_1_naming_what_is_missing() {
    assert!(netns_fixture::is_root(), "run as root");
    let c = Cluster::start("bkv", "172.31.246");
    let h = Host::create(&c, 1);
    create_node(&c.cp, "host1");
    let run = |cmd: Command| -> (i32, String) {
        let mut cmd = cmd;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn_in_netns(h.ns.path(), cmd).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let nothing_configured = |what: &str| {
        assert!(
            h.ns.try_exec(&["ip", "link", "show", "berth.1"]).is_err(),
            "{what}: no VXLAN device"
        );
        assert!(!h.subnet_file.exists(), "{what}: no subnet file");
        assert!(
            annotation(&c.cp, "host1", "berth.dev/vtep-mac").is_empty(),
            "{what}: nothing published"
        );
    };
    // No kubeconfig at all (not in a pod, no --kubeconfig, no $KUBECONFIG).
    let (code, err) = run(h.agent_command(None));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--kubeconfig") && err.contains("KUBERNETES_SERVICE_HOST"),
        "{err}"
    );
    nothing_configured("no kubeconfig");
    // A kubeconfig file that does not exist.
    let (code, err) = run(h.agent_command(Some(Path::new("/nonexistent/kubeconfig"))));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    // An API server nobody runs (a closed port on the underlay router).
    let good = c.kubeconfig("berth-system", "berth-cni");
    let text = fs::read_to_string(&good).unwrap();
    let unreachable = c.dir.path().join("unreachable.kubeconfig");
    fs::write(&unreachable, text.replace(":6443", ":1")).unwrap();
    let (code, err) = run(h.agent_command(Some(&unreachable)));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unreachable") && err.contains(":1"), "{err}");
    nothing_configured("unreachable server");
    // A ServiceAccount without the RBAC: forbidden, and the message says what is needed.
    berth_tests::kubelet::wait_default_service_account(&c.cp).unwrap();
    let nobody = c.kubeconfig("default", "default");
    let (code, err) = run(h.agent_command(Some(&nobody)));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("forbidden") && err.contains("get, list, watch and patch on nodes"),
        "{err}"
    );
    nothing_configured("forbidden");
    // A pod CIDR outside --network: refused before anything is set up.
    let (code, err) = run(h.agent_command_on(Some(&good), "10.99.0.0/16"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("outside the cluster network"), "{err}");
    nothing_configured("pod CIDR outside --network");
}
