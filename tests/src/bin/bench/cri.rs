//! `berth-bench cri`: pod sandbox start and stop through containerd 1.6's CRI plugin, driven
//! by crictl (the path kubelet's pods take to CNI), with berth-bridge + berth-host-local and
//! with the reference bridge + host-local.
//!
//! Each plugin set gets its own containerd (the harness of [`berth_tests::cri`]) in its own
//! fresh host netns, both running side by side so that load on the machine hits both alike:
//! the sandboxes are started one after another (ours and reference alternate), then stopped and
//! removed one after another. What is timed is crictl's wall time, so the figures are the
//! whole RunPodSandbox / StopPodSandbox + RemovePodSandbox (runc, the shim, the snapshot, the
//! CNI ADD/DEL of loopback and the main plugin), of which the CNI plugin is one part.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_tests::bench::{
    self, markdown_table, median, ms_opt, opt_f, percentile, ratio_opt, text_table,
};
use berth_tests::cri::{crictl_bin, host_veths, Cri, Sandbox, Stores};
use berth_tests::netns::{records_path, Host, Netns, BRIDGE_BIN, REFERENCE_BRIDGE};
use berth_tests::runtime::require_tool;
use berth_tests::{bin_dir, store_path, HOST_LOCAL_BIN, REFERENCE_HOST_LOCAL};
use serde_json::{json, Value};

const NETWORK: &str = "berth-bench";
const SUBNET: &str = "10.128.0.0/16";
/// containerd 1.6's libcni fails every ADD whose result is 1.1.0.
const CNI_VERSION: &str = "1.0.0";
/// How long the teardown may take to show no leftovers.
const CLEAN_TIMEOUT: Duration = Duration::from_secs(5);

const HELP: &str = "\
usage: berth-bench cri [options]   (root: creates network namespaces, never touches the root one)

Pod sandboxes through containerd 1.6's CRI plugin, driven by crictl: berth-bridge +
berth-host-local (ours) and the reference bridge + host-local, each behind its own containerd
in its own fresh host netns (both running side by side), one conflist each: cniVersion 1.0.0,
isGateway true, ipMasq true, one IPv4 range 10.128.0.0/16 with a default route. After one
untimed warm-up sandbox per side, N sandboxes are started one after another with `crictl runp`
(ours and reference alternate), then each is stopped and removed with `crictl stopp` + `rmp`.
Prints the median and p90 of runp and of stopp+rmp (crictl wall time), the ratio
ours/reference, and the veths in each host while all N run and after the last rmp (must be 0).

options:
  --sandboxes N           sandboxes per plugin set (default 12)
  --ours PATH             berth-bridge (default <bin_dir>/berth-bridge)
  --ours-ipam PATH        berth-host-local (default <bin_dir>/berth-host-local)
  --reference PATH        reference bridge (default /usr/lib/cni/bridge)
  --reference-ipam PATH   reference host-local (default /usr/lib/cni/host-local)
  --markdown FILE         also append a markdown section (machine, date, command, tables) to FILE
";

/// A main plugin and its IPAM; the conflist's `type`s are their file names (the harness links
/// them by file name into containerd's CNI bin_dir).
pub(crate) struct Plugin {
    pub(crate) label: &'static str,
    pub(crate) bin: PathBuf,
    pub(crate) ipam: PathBuf,
    /// Ours: berth-bridge's `dataDir` and berth-host-local's SQLite store are checked after
    /// the teardown; reference: host-local's reservation files.
    pub(crate) berth: bool,
}

impl Plugin {
    fn type_of(p: &Path) -> String {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The conflist: the same keys for both, plus berth-bridge's `dataDir` for ours (the
    /// reference bridge keeps no state files).
    /// The conflist on the IPv4 range `subnet`, stores under `stores`.
    pub(crate) fn conflist(&self, stores: &Path, subnet: &str) -> Value {
        let mut main = json!({
            "type": Plugin::type_of(&self.bin),
            "bridge": "berth0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": Plugin::type_of(&self.ipam),
                "dataDir": stores.join("ipam-data").to_string_lossy(),
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        });
        if self.berth {
            main["dataDir"] = json!(stores.join("bridge-data").to_string_lossy());
        }
        json!({ "cniVersion": CNI_VERSION, "name": NETWORK, "plugins": [main] })
    }
}

struct Opts {
    sandboxes: usize,
    ours: Plugin,
    reference: Plugin,
    markdown: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let flags = bench::parse_flags(
        args,
        &[
            "sandboxes",
            "ours",
            "ours-ipam",
            "reference",
            "reference-ipam",
            "markdown",
        ],
        &["help"],
    )?;
    if flags.contains_key("help") {
        print!("{HELP}");
        return Ok(None);
    }
    let sandboxes = match flags.get("sandboxes") {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("--sandboxes: not a number: {v:?}"))?,
        None => 12,
    };
    if sandboxes == 0 {
        return Err("--sandboxes must be at least 1".into());
    }
    let path = |k: &str, default: PathBuf| -> Result<PathBuf, String> {
        let p = flags.get(k).map(PathBuf::from).unwrap_or(default);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{} not found (--{k}); build with `cargo build --release --workspace` or install containernetworking-plugins", p.display()))
        }
    };
    let ours = Plugin {
        label: "ours",
        bin: path("ours", bin_dir().join(BRIDGE_BIN))?,
        ipam: path("ours-ipam", bin_dir().join(HOST_LOCAL_BIN))?,
        berth: true,
    };
    let reference = Plugin {
        label: "reference",
        bin: path("reference", PathBuf::from(REFERENCE_BRIDGE))?,
        ipam: path("reference-ipam", PathBuf::from(REFERENCE_HOST_LOCAL))?,
        berth: false,
    };
    if Plugin::type_of(&ours.bin) == Plugin::type_of(&reference.bin)
        || Plugin::type_of(&ours.ipam) == Plugin::type_of(&reference.ipam)
    {
        // Not a hard limit (each side has its own bin_dir), but the tables would not say which
        // is which.
        eprintln!("note: ours and reference plugins have the same file names");
    }
    if !netns_fixture::is_root() {
        return Err("needs root (it creates network namespaces and runs containerd)".into());
    }
    Ok(Some(Opts {
        sandboxes,
        ours,
        reference,
        markdown: flags.get("markdown").map(PathBuf::from),
    }))
}

/// One plugin set behind its own containerd. Fields drop in order: containerd first, then the
/// host netns, then the plugins' stores.
struct Side<'a> {
    plugin: &'a Plugin,
    cri: Cri,
    host: Host,
    stores: tempfile::TempDir,
    pods: Vec<Sandbox>,
    runp: Vec<Duration>,
    stop_rm: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    veths_running: Option<usize>,
    veths_left: Option<usize>,
    leftovers: Vec<String>,
}

impl<'a> Side<'a> {
    fn start(plugin: &'a Plugin) -> Result<Side<'a>, String> {
        let host = Host {
            ns: Netns::try_create("bbcri")?,
        };
        let stores = tempfile::Builder::new()
            .prefix("berth-bench-cri-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let cri = Cri::start(
            &host,
            &plugin.conflist(stores.path(), SUBNET),
            &[plugin.bin.clone(), plugin.ipam.clone()],
        )
        .map_err(|e| format!("{}: {e}", plugin.label))?;
        // Untimed: the first sandbox also creates the bridge and the NAT table or chains.
        cri.runp("warmup")
            .and_then(|p| cri.stop_remove(&p))
            .map_err(|e| format!("{}: warm-up sandbox: {e}", plugin.label))?;
        Ok(Side {
            plugin,
            cri,
            host,
            stores,
            pods: Vec::new(),
            runp: Vec::new(),
            stop_rm: Vec::new(),
            errors: 0,
            first_error: None,
            veths_running: None,
            veths_left: None,
            leftovers: Vec::new(),
        })
    }

    fn error(&mut self, what: &str, e: String) {
        self.errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what}: {e}"));
    }

    fn runp(&mut self, i: usize) {
        match self.cri.runp_timed(&format!("pod{i}")) {
            Ok((pod, took)) => {
                self.runp.push(took);
                self.pods.push(pod);
            }
            Err(e) => self.error(&format!("runp pod{i}"), e),
        }
    }

    fn stop_remove(&mut self, i: usize) {
        let Some(pod) = self.pods.get(i).cloned() else {
            return; // its runp failed
        };
        match self.cri.stop_remove(&pod) {
            Ok(took) => self.stop_rm.push(took),
            Err(e) => self.error(&format!("stopp+rmp {}", pod.name), e),
        }
    }

    fn count_veths(&mut self) -> Option<usize> {
        match host_veths(&self.host) {
            Ok(v) => Some(v.len()),
            Err(e) => {
                self.error("counting veths", e);
                None
            }
        }
    }

    /// After the last rmp: veths left, and everything else [`Cri::leftovers`] looks at.
    fn check_clean(&mut self) {
        let dir = self.stores.path();
        let ipam_db = store_path(&dir.join("ipam-data"), NETWORK);
        let records = records_path(&dir.join("bridge-data"), NETWORK);
        let reference_ipam = dir.join("ipam-data").join(NETWORK);
        let stores = if self.plugin.berth {
            Stores {
                ipam_db: Some(&ipam_db),
                records: Some(&records),
                ..Stores::default()
            }
        } else {
            Stores {
                reference_ipam: Some(&reference_ipam),
                ..Stores::default()
            }
        };
        // Give the teardown the same grace the tests give it, then take the final count.
        let _ = self.cri.wait_clean(&self.host, &stores, CLEAN_TIMEOUT);
        self.leftovers = self.cri.leftovers(&self.host, &stores);
        self.veths_left = self.count_veths();
    }
}

fn count(n: Option<usize>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into())
}

/// `<program> --version`, first line; "unknown" when it cannot run.
fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: &[String]) -> Result<(), String> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    let n = opts.sandboxes;
    let containerd_version = version(&require_tool("containerd", "containerd")?);
    let crictl_version = version(&crictl_bin()?);
    println!(
        "berth-bench cri: ours      = {} + {}",
        opts.ours.bin.display(),
        opts.ours.ipam.display()
    );
    println!(
        "                 reference = {} + {}",
        opts.reference.bin.display(),
        opts.reference.ipam.display()
    );
    println!(
        "                 {containerd_version}; {crictl_version}; {n} sandboxes per side after one warm-up; cniVersion {CNI_VERSION}, isGateway, ipMasq, {SUBNET}\n"
    );

    let mut sides = [Side::start(&opts.ours)?, Side::start(&opts.reference)?];
    // Alternate which side goes first, sandbox by sandbox, so drift in machine load hits both.
    let order = |i: usize| if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
    for i in 0..n {
        for s in order(i) {
            sides[s].runp(i);
        }
    }
    for side in sides.iter_mut() {
        side.veths_running = side.count_veths();
    }
    for i in 0..n {
        for s in order(i) {
            sides[s].stop_remove(i);
        }
    }
    for side in sides.iter_mut() {
        side.check_clean();
    }

    let header = [
        "plugins",
        "sandboxes",
        "runp median ms",
        "runp p90 ms",
        "stopp+rmp median ms",
        "stopp+rmp p90 ms",
        "errors",
        "veths while running",
        "veths left",
    ];
    let table: Vec<Vec<String>> = sides
        .iter()
        .map(|s| {
            vec![
                s.plugin.label.to_string(),
                n.to_string(),
                ms_opt(median(&s.runp)),
                ms_opt(percentile(&s.runp, 90.0)),
                ms_opt(median(&s.stop_rm)),
                ms_opt(percentile(&s.stop_rm, 90.0)),
                s.errors.to_string(),
                count(s.veths_running),
                count(s.veths_left),
            ]
        })
        .collect();
    let [o, r] = &sides;
    let ratio_header = [
        "runp median ours/ref",
        "runp p90 ours/ref",
        "stopp+rmp median ours/ref",
        "stopp+rmp p90 ours/ref",
    ];
    let ratio_rows = vec![vec![
        opt_f(ratio_opt(median(&o.runp), median(&r.runp)), 3),
        opt_f(
            ratio_opt(percentile(&o.runp, 90.0), percentile(&r.runp, 90.0)),
            3,
        ),
        opt_f(ratio_opt(median(&o.stop_rm), median(&r.stop_rm)), 3),
        opt_f(
            ratio_opt(percentile(&o.stop_rm, 90.0), percentile(&r.stop_rm, 90.0)),
            3,
        ),
    ]];
    let mut notes = Vec::new();
    for s in &sides {
        if let Some(e) = &s.first_error {
            notes.push(format!(
                "{}: {} error(s); first: {e}",
                s.plugin.label, s.errors
            ));
        }
        if !s.leftovers.is_empty() {
            notes.push(format!(
                "{}: left behind after the last rmp: {}",
                s.plugin.label,
                s.leftovers.join("; ")
            ));
        }
    }

    println!("crictl wall time per sandbox, {n} sandboxes per side:");
    print!("{}", text_table(&header, &table));
    println!("\nRatios:");
    print!("{}", text_table(&ratio_header, &ratio_rows));
    for line in &notes {
        eprintln!("{line}");
    }

    if let Some(path) = &opts.markdown {
        let mut md = String::new();
        md.push_str("## CRI: pod sandbox start and stop through containerd's CRI plugin\n\n");
        md.push_str(&bench::machine_markdown());
        md.push_str(&format!(
            "- ours: `{}` + `{}`\n- reference: `{}` + `{}`\n- {containerd_version} (CRI plugin, runc, native snapshotter); {crictl_version}\n- each plugin set behind its own containerd in its own fresh host netns, both running side by side; conflist cniVersion {CNI_VERSION}, isGateway true, ipMasq true, one IPv4 range {SUBNET} with a default route\n- one untimed warm-up sandbox per side; then {n} sandboxes started one after another with `crictl runp` (ours and reference alternate), then each stopped and removed with `crictl stopp` + `crictl rmp`; times are crictl's wall time (crictl's start-up, containerd, the shim, runc and the CNI calls of loopback and the main plugin); p90 by nearest rank\n- veths counted in each host netns while all {n} ran and after the last rmp\n\n",
            opts.ours.bin.display(),
            opts.ours.ipam.display(),
            opts.reference.bin.display(),
            opts.reference.ipam.display(),
        ));
        md.push_str(&markdown_table(&header, &table));
        md.push('\n');
        md.push_str(&markdown_table(&ratio_header, &ratio_rows));
        if !notes.is_empty() {
            md.push_str("\nErrors and leftovers:\n\n");
            for line in &notes {
                md.push_str(&format!("- {line}\n"));
            }
        }
        md.push('\n');
        bench::append_markdown(path, &md)?;
    }
    Ok(())
}
