//! `berth-bench kubelet`: pod start with a volume through a real kubelet. N pods, each with its
//! own PersistentVolumeClaim on berth-csi's ext4 StorageClass, created at once; the time until
//! every pod is Ready and each pod's own time to Ready, with berth-bridge + berth-host-local
//! and with the reference bridge + host-local as the CNI.
//!
//! Each side is a whole single-node cluster of [`berth_tests::kubelet`] (control plane,
//! kubelet, containerd's CRI plugin, berth-csi and the CSI sidecars) in its own fresh host
//! netns; the sides run one after another (ours first, then the reference; with `--rounds`
//! they alternate), since 2 × N pods starting at once on a small machine would make each side
//! the other's noise. The CSI driver is berth-csi on both sides: csi-driver-host-path, the
//! reference CSI driver, cannot be built here (the Go module proxy refuses its module, 403), so
//! the comparison isolates the CNI and the figures include the same volume work on both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::bench::{self, markdown_table, ms_opt, percentile, ratio_opt, text_table};
use berth_tests::cluster::{tool_version, ControlPlane, DEFAULT_ADDRESS};
use berth_tests::kubelet::{
    install_storage, pod, wait_default_service_account, Node, NodeOptions, Sidecars,
};
use berth_tests::netns::{Host, BRIDGE_BIN, REFERENCE_BRIDGE};
use berth_tests::{bin_dir, HOST_LOCAL_BIN, REFERENCE_HOST_LOCAL};
use serde_json::{json, Value};

use crate::cri::Plugin;

const SUBNET: &str = "10.244.0.0/24";
/// How long all pods get to become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

const HELP: &str = "\
usage: berth-bench kubelet [options]   (root: creates network namespaces, never touches the root one)

Pod start with a volume through a real kubelet (v1.34, containerd 1.6's CRI plugin): N pods,
each with its own 64Mi PersistentVolumeClaim on berth-csi's berth-local-ext4 StorageClass
(WaitForFirstConsumer), created at once by one `kubectl apply`. Measures the wall time until
every pod is Ready and each pod's time to Ready (p50, p99 by nearest rank), polled every
200 ms. The CNI is berth-bridge + berth-host-local (ours) or the reference bridge +
host-local, one conflist each (cniVersion 1.0.0, isGateway, ipMasq, one /24); each side is a
whole single-node cluster in its own fresh host netns, the sides one after another. The CSI
driver is berth-csi on both sides (csi-driver-host-path cannot be built here).

options:
  --pods N          pods (and claims) per side (default 30)
  --rounds R        measure each side R times, alternating (default 1)
  --markdown FILE   also append a markdown section (machine, date, command, tables) to FILE
";

/// One measured round of one side.
struct Round {
    /// Each pod's time from the apply to its first Ready.
    per_pod: Vec<Duration>,
    /// Until the last pod was Ready.
    all: Duration,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Ready pods of the `default` namespace by name.
fn ready_pods(cp: &ControlPlane) -> Result<Vec<String>, String> {
    let out = cp.kubectl(&["get", "pods", "-o", "json"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("kubectl get pods: {e}"))?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

fn measure(side: &Plugin, pods: usize) -> Result<Round, String> {
    let host = Host::new();
    let stores = tempfile::Builder::new()
        .prefix("berth-bench-kubelet-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let cp = ControlPlane::start(host.ns.path(), &stores.path().join("cp"), DEFAULT_ADDRESS)?;
    install_storage(&cp, &repo_root())?;
    let conflist = side.conflist(stores.path(), SUBNET);
    let plugins = [side.bin.clone(), side.ipam.clone()];
    let node = Node::start(
        &cp,
        &host,
        &NodeOptions {
            name: "node1",
            node_ip: DEFAULT_ADDRESS,
            conflist: Some(&conflist),
            plugins: &plugins,
            csi: true,
            max_pods: (pods + 10) as u32,
            fhs_paths: false,
        },
    )?;
    let _sidecars = Sidecars::start(&cp, &host, &node, stores.path())?;
    wait_default_service_account(&cp)?;
    let mut items = Vec::new();
    for i in 0..pods {
        let claim = format!("claim{i}");
        items.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": claim },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "berth-local-ext4",
                "resources": { "requests": { "storage": "64Mi" } },
            },
        }));
        items.push(pod(
            &format!("pod{i}"),
            "node1",
            "echo ok > /data/ready && exec sleep 3600",
            json!({
                "volumes": [{ "name": "vol", "persistentVolumeClaim": { "claimName": claim } }],
                "volumeMounts": [{ "name": "vol", "mountPath": "/data" }],
            }),
        ));
    }
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
    let t0 = Instant::now();
    cp.kubectl_stdin(&["apply", "-f", "-"], &list.to_string())?;
    let mut first_ready: std::collections::HashMap<String, Duration> = Default::default();
    while first_ready.len() < pods {
        if t0.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "{}: only {} of {pods} pods Ready after {READY_TIMEOUT:?}\n{}",
                side.label,
                first_ready.len(),
                node.logs()
            ));
        }
        let now = t0.elapsed();
        for name in ready_pods(&cp)? {
            first_ready.entry(name).or_insert(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let per_pod: Vec<Duration> = first_ready.values().copied().collect();
    let all = per_pod.iter().copied().max().unwrap_or_default();
    // The next side starts on a quiet machine: delete the pods and claims (berth-csi removes
    // the volumes) before the cluster goes.
    let _ = cp.kubectl(&["delete", "pods", "--all", "--wait=true", "--timeout=300s"]);
    let _ = cp.kubectl(&["delete", "pvc", "--all", "--wait=true", "--timeout=300s"]);
    Ok(Round { per_pod, all })
}

pub fn run(args: &[String]) -> Result<(), String> {
    let flags = bench::parse_flags(args, &["pods", "rounds", "markdown"], &["help"])?;
    if flags.contains_key("help") {
        print!("{HELP}");
        return Ok(());
    }
    let num = |k: &str, default: usize| -> Result<usize, String> {
        match flags.get(k) {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("--{k}: not a positive number: {v:?}")),
            None => Ok(default),
        }
    };
    let pods = num("pods", 30)?;
    let rounds = num("rounds", 1)?;
    let markdown = flags.get("markdown").map(PathBuf::from);
    let ours = Plugin {
        label: "ours",
        bin: bin_dir().join(BRIDGE_BIN),
        ipam: bin_dir().join(HOST_LOCAL_BIN),
        berth: true,
    };
    let reference = Plugin {
        label: "reference",
        bin: PathBuf::from(REFERENCE_BRIDGE),
        ipam: PathBuf::from(REFERENCE_HOST_LOCAL),
        berth: false,
    };
    for p in [&ours.bin, &ours.ipam, &reference.bin, &reference.ipam] {
        if !p.is_file() {
            return Err(format!(
                "{} not found: build with `cargo build --release --workspace`, install containernetworking-plugins",
                p.display()
            ));
        }
    }
    let mut results: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let side = if i == 0 { &ours } else { &reference };
            eprintln!(
                "kubelet bench: round {} {} ({pods} pods)",
                r + 1,
                side.label
            );
            let round = measure(side, pods)?;
            eprintln!(
                "kubelet bench: {} all Ready in {} ms",
                side.label,
                round.all.as_millis()
            );
            results[i].0.extend(round.per_pod);
            results[i].1.push(round.all);
        }
    }
    let stat = |i: usize| {
        let (per, all) = &results[i];
        (
            bench::median(all),
            percentile(per, 50.0),
            percentile(per, 99.0),
        )
    };
    let (o, f) = (stat(0), stat(1));
    let header = [
        "CNI",
        "all pods Ready ms",
        "per-pod p50 ms",
        "per-pod p99 ms",
    ];
    let row = |label: &str, s: (Option<Duration>, Option<Duration>, Option<Duration>)| {
        vec![label.to_string(), ms_opt(s.0), ms_opt(s.1), ms_opt(s.2)]
    };
    let table = vec![
        row("ours (berth-bridge + berth-host-local)", o),
        row("reference (bridge + host-local)", f),
    ];
    let ratio = |a, b| bench::opt_f(ratio_opt(a, b), 2);
    let ratio_header = ["ours / reference", "all Ready", "p50", "p99"];
    let ratio_rows = vec![vec![
        String::new(),
        ratio(o.0, f.0),
        ratio(o.1, f.1),
        ratio(o.2, f.2),
    ]];
    println!("kubelet: {pods} pods with a PVC each, created at once, {rounds} round(s) per side");
    print!("{}", text_table(&header, &table));
    print!("{}", text_table(&ratio_header, &ratio_rows));
    println!(
        "kubelet ratio all-ready = {} p50 = {} p99 = {}",
        ratio(o.0, f.0),
        ratio(o.1, f.1),
        ratio(o.2, f.2)
    );
    if let Some(path) = &markdown {
        let mut md = String::from("## Kubelet: pods with a volume each, created at once\n\n");
        md.push_str(&bench::machine_markdown());
        md.push_str(&format!(
            "- {} (kubelet, `cgroupDriver: cgroupfs`), containerd 1.6's CRI plugin, berth-csi with {} and {}\n\
             - {pods} pods, each with its own 64Mi claim on `berth-local-ext4` (WaitForFirstConsumer, ext4 on a loop device), created by one `kubectl apply`; time to Ready polled every 200 ms; {rounds} round(s) per side, sides one after another, each a fresh single-node cluster in its own host netns\n\
             - the CSI driver is berth-csi on both sides: csi-driver-host-path, the reference CSI driver, cannot be built here (the Go module proxy answers 403 for its module), so the ratio compares the CNI with the same volume work on both sides\n\n",
            tool_version("kubelet"),
            tool_version("csi-provisioner"),
            tool_version("csi-attacher"),
        ));
        md.push_str(&markdown_table(&header, &table));
        md.push('\n');
        md.push_str(&markdown_table(&ratio_header, &ratio_rows));
        md.push('\n');
        bench::append_markdown(path, &md)?;
    }
    Ok(())
}
