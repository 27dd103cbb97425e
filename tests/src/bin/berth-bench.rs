//! `berth-bench`: benchmarks for Berth's plugins.
//!
//! ```text
//! berth-bench <subcommand> [options]
//! berth-bench ipam [--iterations N] [--sizes 0,1000,5000,20000] [--concurrency 100]
//!                  [--reference /usr/lib/cni/host-local] [--ours <bin_dir>/berth-host-local]
//!                  [--markdown FILE]
//! berth-bench bridge [--iterations N] [--concurrency 100] [--masq] [--ours PATH] [--ours-ipam PATH]
//!                    [--reference PATH] [--reference-ipam PATH] [--markdown FILE]
//! berth-bench cri [--sandboxes N] [--ours PATH] [--ours-ipam PATH] [--reference PATH]
//!                 [--reference-ipam PATH] [--markdown FILE]
//! berth-bench kubelet [--pods N] [--rounds R] [--markdown FILE]
//! ```
//!
//! A benchmark prints figures and the targets beside them; it never fails because of speed.
//! It exits non-zero only when it cannot run (bad options, missing binary, I/O errors).
//! A new subcommand is a module with `run(&[String]) -> Result<(), String>` and a row in
//! [`SUBCOMMANDS`].

use std::process::ExitCode;

#[path = "bench/cri.rs"]
mod cri;
#[path = "bench/kubelet.rs"]
mod kubelet;
#[path = "bench/overlay.rs"]
mod overlay;
#[path = "bench/report.rs"]
mod report;

fn run_report(args: &[String]) -> Result<(), String> {
    report::run(
        args,
        ipam::run,
        bridge::run,
        overlay::run,
        cri::run,
        kubelet::run,
    )
}

/// A benchmark subcommand: name, one-line description, entry point.
struct Subcommand {
    name: &'static str,
    about: &'static str,
    run: fn(&[String]) -> Result<(), String>,
}

const SUBCOMMANDS: &[Subcommand] = &[
    Subcommand {
        name: "report",
        about: "run every benchmark and write BENCHMARKS.md plus the SVG charts in bench/ (root)",
        run: run_report,
    },
    Subcommand {
        name: "ipam",
        about: "berth-host-local vs the reference host-local: ADD/DEL latency against store size, concurrent ADDs",
        run: ipam::run,
    },
    Subcommand {
        name: "overlay",
        about: "overlay throughput (iperf3): Berth VXLAN, DirectRouting and a flannel-style reference vs the underlay; convergence with 10 hosts, 1,000 peers (root)",
        run: overlay::run,
    },
    Subcommand {
        name: "bridge",
        about: "berth-bridge + berth-host-local vs bridge + host-local: ADD/DEL latency, parallel ADDs, peak RSS (root)",
        run: bridge::run,
    },
    Subcommand {
        name: "cri",
        about: "pod sandboxes through containerd's CRI plugin (crictl runp, stopp + rmp), ours vs reference bridge + host-local (root)",
        run: cri::run,
    },
    Subcommand {
        name: "kubelet",
        about: "pods with a PVC each through a real kubelet, created at once: time to all Ready, per-pod p50/p99, ours vs reference bridge + host-local (root)",
        run: kubelet::run,
    },
];

fn usage() -> String {
    let mut s = String::from("usage: berth-bench <subcommand> [options]\n\nsubcommands:\n");
    for sc in SUBCOMMANDS {
        s.push_str(&format!("  {:<10} {}\n", sc.name, sc.about));
    }
    s.push_str("\n`berth-bench <subcommand> --help` describes its options.\n");
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((name, rest)) = args.split_first() else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    if matches!(name.as_str(), "-h" | "--help" | "help") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let Some(sc) = SUBCOMMANDS.iter().find(|sc| sc.name == name) else {
        eprintln!("berth-bench: unknown subcommand {name:?}\n");
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    match (sc.run)(rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench {}: {e}", sc.name);
            ExitCode::FAILURE
        }
    }
}

mod ipam {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use berth_tests::bench::{
        self, markdown_table, median, ms, ms_opt, opt_f, ratio_opt, text_table,
    };
    use berth_tests::{
        bin_dir, conf_bytes, host_local_conf_value, prefill_reference_v4, wait_output, CniOutput,
        CniRun, HOST_LOCAL_BIN, REFERENCE_HOST_LOCAL,
    };
    use serde_json::json;

    const NETWORK: &str = "berth-bench";
    const SUBNET: &str = "10.128.0.0/16";
    const FIRST_HOST: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 2);
    /// Addresses in the /16 after the gateway, minus broadcast.
    const MAX_PREFILL: u32 = 65_533 - 1_000;
    const CNI_VERSION: &str = "1.0.0"; // the newest the reference 1.1.x speaks
    const RUN_TIMEOUT: Duration = Duration::from_secs(600);
    const FLAT_TARGET: f64 = 1.5;
    const RATIO_TARGET: f64 = 0.1;

    const HELP: &str = "\
usage: berth-bench ipam [options]

Times ADD and DEL of berth-host-local (ours) against the reference host-local, on stores
prefilled with S reservations in the reference on-disk format, then 100 concurrent ADDs.

options:
  --iterations N        timed ADD+DEL pairs per plugin and size (default 30)
  --sizes LIST          comma-separated prefill sizes (default 0,1000,5000,20000)
  --concurrency N       ADDs spawned at once on an empty store (default 100; 0 skips)
  --reference PATH      reference host-local (default /usr/lib/cni/host-local; skipped if absent)
  --ours PATH           berth-host-local (default <bin_dir>/berth-host-local)
  --markdown FILE       also append a markdown section (machine, date, command, tables) to FILE
";

    struct Opts {
        iterations: usize,
        sizes: Vec<u32>,
        concurrency: usize,
        reference: Option<PathBuf>,
        ours: PathBuf,
        markdown: Option<PathBuf>,
    }

    fn parse(args: &[String]) -> Result<Option<Opts>, String> {
        let flags = bench::parse_flags(
            args,
            &[
                "iterations",
                "sizes",
                "concurrency",
                "reference",
                "ours",
                "markdown",
            ],
            &["help"],
        )?;
        if flags.contains_key("help") {
            print!("{HELP}");
            return Ok(None);
        }
        let num = |k: &str, default: usize| -> Result<usize, String> {
            match flags.get(k) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("--{k}: not a number: {v:?}")),
                None => Ok(default),
            }
        };
        let iterations = num("iterations", 30)?;
        if iterations == 0 {
            return Err("--iterations must be at least 1".into());
        }
        let sizes = match flags.get("sizes") {
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("--sizes: not a number: {s:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![0, 1000, 5000, 20000],
        };
        if sizes.is_empty() {
            return Err("--sizes is empty".into());
        }
        if let Some(big) = sizes.iter().find(|s| **s > MAX_PREFILL) {
            return Err(format!(
                "--sizes: {big} does not fit in {SUBNET} (max {MAX_PREFILL})"
            ));
        }
        let reference_path = flags
            .get("reference")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(REFERENCE_HOST_LOCAL));
        let reference = if reference_path.is_file() {
            Some(reference_path)
        } else {
            eprintln!(
                "note: reference plugin {} not found; timing ours only",
                reference_path.display()
            );
            None
        };
        let ours = flags
            .get("ours")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir().join(HOST_LOCAL_BIN));
        if !ours.is_file() {
            return Err(format!(
                "{} not found: build it with `cargo build --release -p ipam` or pass --ours",
                ours.display()
            ));
        }
        Ok(Some(Opts {
            iterations,
            sizes,
            concurrency: num("concurrency", 100)?,
            reference,
            ours,
            markdown: flags.get("markdown").map(PathBuf::from),
        }))
    }

    /// One plugin under test.
    struct Plugin {
        label: &'static str,
        bin: PathBuf,
    }

    /// A plugin bound to its own data directory.
    struct Target<'a> {
        plugin: &'a Plugin,
        _dir: tempfile::TempDir,
        conf: Vec<u8>,
    }

    impl<'a> Target<'a> {
        fn new(plugin: &'a Plugin) -> Result<Self, String> {
            let dir = tempfile::Builder::new()
                .prefix("berth-bench-")
                .tempdir()
                .map_err(|e| format!("tempdir: {e}"))?;
            let ipam = json!({
                "type": "host-local",
                "dataDir": dir.path().to_string_lossy(),
                "ranges": [[{ "subnet": SUBNET }]],
            });
            let conf = conf_bytes(&host_local_conf_value(CNI_VERSION, NETWORK, ipam));
            Ok(Target {
                plugin,
                _dir: dir,
                conf,
            })
        }

        fn network_dir(&self) -> PathBuf {
            self._dir.path().join(NETWORK)
        }

        fn cmd(&self, command: &str, container: &str) -> CniRun {
            let cni_path = self
                .plugin
                .bin
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            CniRun::new(&self.plugin.bin)
                .command(command)
                .container_id(container)
                .ifname("eth0")
                .netns("/var/run/netns/berth-bench")
                .cni_path(cni_path)
                .stdin(self.conf.clone())
                .timeout(RUN_TIMEOUT)
        }

        fn exec(&self, command: &str, container: &str) -> Result<CniOutput, String> {
            self.cmd(command, container)
                .run()
                .map_err(|e| format!("cannot run {}: {e}", self.plugin.bin.display()))
        }
    }

    #[derive(Default)]
    struct Samples {
        add: Vec<Duration>,
        del: Vec<Duration>,
        errors: usize,
        first_error: Option<String>,
    }

    impl Samples {
        fn record(&mut self, out: &CniOutput, what: &str) -> bool {
            if out.success() {
                return true;
            }
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!(
                    "{what}: exit {:?}: {} {}",
                    out.exit_code(),
                    out.stdout_text().trim(),
                    out.stderr_text().trim()
                ));
            }
            false
        }
    }

    struct SizeResult {
        size: u32,
        ours: Samples,
        reference: Option<Samples>,
        ours_first_call: Duration,
    }

    struct ConcResult {
        label: &'static str,
        wall: Duration,
        errors: usize,
        distinct: usize,
        first_error: Option<String>,
    }

    fn bench_size(
        size: u32,
        iterations: usize,
        ours: &Plugin,
        reference: Option<&Plugin>,
    ) -> Result<SizeResult, String> {
        let ours_t = Target::new(ours)?;
        let ref_t = reference.map(Target::new).transpose()?;
        let prefill_start = Instant::now();
        for t in std::iter::once(&ours_t).chain(ref_t.iter()) {
            prefill_reference_v4(&t.network_dir(), FIRST_HOST, size, "bench-prefill-", "eth0")
                .map_err(|e| format!("prefill {}: {e}", t.network_dir().display()))?;
        }
        // Flush the prefill to disk before timing: thousands of dirty files would otherwise make
        // the first fsyncs (ours commits with fsync) pay for writing back the prefill.
        // SAFETY: sync(2) has no preconditions and cannot fail.
        unsafe { libc::sync() };
        eprintln!(
            "size {size}: prefilled (and synced) in {:.1} s",
            prefill_start.elapsed().as_secs_f64()
        );

        // Untimed warm-up. For ours the first call imports the reference files into SQLite; the
        // reference gets the same ADD+DEL so both stores have seen one call.
        let mut warm = Samples::default();
        let first = ours_t.exec("ADD", "bench-warmup")?;
        let ours_first_call = first.elapsed;
        warm.record(&first, "ours warm-up ADD");
        warm.record(&ours_t.exec("DEL", "bench-warmup")?, "ours warm-up DEL");
        if let Some(t) = &ref_t {
            warm.record(&t.exec("ADD", "bench-warmup")?, "reference warm-up ADD");
            warm.record(&t.exec("DEL", "bench-warmup")?, "reference warm-up DEL");
        }
        if let Some(e) = warm.first_error {
            return Err(format!("size {size}: warm-up failed: {e}"));
        }

        let mut ours_s = Samples::default();
        let mut ref_s = ref_t.as_ref().map(|_| Samples::default());
        for i in 0..iterations {
            let container = format!("bench-{size}-{i}");
            // Alternate which plugin goes first so drift in machine load hits both equally.
            let ours_first = i % 2 == 0;
            for turn in 0..2 {
                let run_ours = (turn == 0) == ours_first;
                let (t, s) = if run_ours {
                    (&ours_t, &mut ours_s)
                } else {
                    match (&ref_t, ref_s.as_mut()) {
                        (Some(t), Some(s)) => (t, s),
                        _ => continue,
                    }
                };
                let add = t.exec("ADD", &container)?;
                if s.record(&add, "ADD") {
                    s.add.push(add.elapsed);
                }
                let del = t.exec("DEL", &container)?;
                if s.record(&del, "DEL") {
                    s.del.push(del.elapsed);
                }
            }
        }
        Ok(SizeResult {
            size,
            ours: ours_s,
            reference: ref_s,
            ours_first_call,
        })
    }

    fn bench_concurrency(plugin: &Plugin, n: usize) -> Result<ConcResult, String> {
        let t = Target::new(plugin)?;
        let ids: Vec<String> = (0..n).map(|i| format!("bench-conc-{i}")).collect();
        let start = Instant::now();
        let mut children = Vec::with_capacity(n);
        let mut errors = 0;
        let mut first_error = None;
        for id in &ids {
            match t.cmd("ADD", id).spawn() {
                Ok(c) => children.push(c),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("spawn: {e}"));
                }
            }
        }
        let mut outs = Vec::with_capacity(children.len());
        for c in children {
            match wait_output(c, RUN_TIMEOUT) {
                Ok(o) => outs.push(o),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("wait: {e}"));
                }
            }
        }
        let wall = start.elapsed();
        let mut addrs = BTreeSet::new();
        for o in &outs {
            if o.success() {
                addrs.extend(o.addresses());
            } else {
                errors += 1;
                first_error.get_or_insert_with(|| {
                    format!(
                        "exit {:?}: {} {}",
                        o.exit_code(),
                        o.stdout_text().trim(),
                        o.stderr_text().trim()
                    )
                });
            }
        }
        Ok(ConcResult {
            label: plugin.label,
            wall,
            errors,
            distinct: addrs.len(),
            first_error,
        })
    }

    fn med(v: &[Duration]) -> Option<Duration> {
        median(v)
    }

    fn target_line(what: &str, value: Option<f64>, op: &str, target: f64) -> String {
        let verdict = match value {
            Some(v) if (op == "<=" && v <= target) => "met",
            Some(_) => "NOT met",
            None => "not measured",
        };
        format!(
            "{what}: {} (target {op} {target}) -> {verdict}",
            opt_f(value, 3)
        )
    }

    pub fn run(args: &[String]) -> Result<(), String> {
        let Some(opts) = parse(args)? else {
            return Ok(());
        };
        let ours = Plugin {
            label: "ours",
            bin: opts.ours.clone(),
        };
        let reference = opts.reference.clone().map(|bin| Plugin {
            label: "reference",
            bin,
        });
        println!("berth-bench ipam: ours = {}", ours.bin.display());
        match &reference {
            Some(r) => println!("                  reference = {}", r.bin.display()),
            None => println!("                  reference = (not found, skipped)"),
        }
        println!("                  {} iterations per size, sizes {:?}, cniVersion {CNI_VERSION}, subnet {SUBNET}\n", opts.iterations, opts.sizes);

        let mut results = Vec::new();
        for &size in &opts.sizes {
            let r = bench_size(size, opts.iterations, &ours, reference.as_ref())?;
            for (label, s) in std::iter::once(("ours", &r.ours))
                .chain(r.reference.iter().map(|s| ("reference", s)))
            {
                if let Some(e) = &s.first_error {
                    eprintln!("size {size}: {label}: {} error(s); first: {e}", s.errors);
                }
            }
            results.push(r);
        }

        // Baseline for flatness: size 0 if measured, else the smallest size.
        let base = results
            .iter()
            .find(|r| r.size == 0)
            .or_else(|| results.iter().min_by_key(|r| r.size));
        let base_size = base.map(|b| b.size).unwrap_or(0);
        let base_add = base.and_then(|b| med(&b.ours.add));
        let base_del = base.and_then(|b| med(&b.ours.del));

        let header = [
            "size",
            "ours ADD ms",
            "ours DEL ms",
            "ref ADD ms",
            "ref DEL ms",
            "ADD ours/ref",
            "DEL ours/ref",
            "ADD flat",
            "DEL flat",
            "ours 1st call ms",
            "errors ours/ref",
        ];
        let mut rows = Vec::new();
        for r in &results {
            let (oa, od) = (med(&r.ours.add), med(&r.ours.del));
            let (ra, rd) = r
                .reference
                .as_ref()
                .map(|s| (med(&s.add), med(&s.del)))
                .unwrap_or((None, None));
            rows.push(vec![
                r.size.to_string(),
                ms_opt(oa),
                ms_opt(od),
                ms_opt(ra),
                ms_opt(rd),
                opt_f(ratio_opt(oa, ra), 3),
                opt_f(ratio_opt(od, rd), 3),
                opt_f(ratio_opt(oa, base_add), 2),
                opt_f(ratio_opt(od, base_del), 2),
                ms(r.ours_first_call),
                format!(
                    "{}/{}",
                    r.ours.errors,
                    r.reference
                        .as_ref()
                        .map(|s| s.errors.to_string())
                        .unwrap_or_else(|| "-".into())
                ),
            ]);
        }
        println!(
            "ADD and DEL medians over {} iterations (flat = ours(size) / ours({base_size})):",
            opts.iterations
        );
        print!("{}", text_table(&header, &rows));

        let mut conc = Vec::new();
        if opts.concurrency > 0 {
            conc.push(bench_concurrency(&ours, opts.concurrency)?);
            if let Some(r) = &reference {
                conc.push(bench_concurrency(r, opts.concurrency)?);
            }
        }
        let conc_header = [
            "plugin",
            "concurrent ADDs",
            "wall ms",
            "errors",
            "distinct addresses",
        ];
        let conc_rows: Vec<Vec<String>> = conc
            .iter()
            .map(|c| {
                vec![
                    c.label.to_string(),
                    opts.concurrency.to_string(),
                    ms(c.wall),
                    c.errors.to_string(),
                    c.distinct.to_string(),
                ]
            })
            .collect();
        if !conc.is_empty() {
            println!(
                "\nConcurrency: {} ADDs spawned at once on an empty store:",
                opts.concurrency
            );
            print!("{}", text_table(&conc_header, &conc_rows));
            for c in &conc {
                if let Some(e) = &c.first_error {
                    eprintln!("concurrency: {}: first error: {e}", c.label);
                }
            }
        }

        // Targets (printed, never asserted).
        let at = |size: u32| results.iter().find(|r| r.size == size);
        let mut targets = Vec::new();
        if let Some(r) = at(20000) {
            let (a, d) = (
                ratio_opt(med(&r.ours.add), base_add),
                ratio_opt(med(&r.ours.del), base_del),
            );
            targets.push(target_line(
                &format!("ours ADD at 20000 / ours ADD at {base_size}"),
                a,
                "<=",
                FLAT_TARGET,
            ));
            targets.push(target_line(
                &format!("ours DEL at 20000 / ours DEL at {base_size}"),
                d,
                "<=",
                FLAT_TARGET,
            ));
        } else {
            targets.push(
                "flatness target (ours at 20000 within 1.5x of ours at 0): size 20000 not measured"
                    .into(),
            );
        }
        if let Some(r) = at(5000) {
            let rs = r.reference.as_ref();
            let a = ratio_opt(med(&r.ours.add), rs.and_then(|s| med(&s.add)));
            let d = ratio_opt(med(&r.ours.del), rs.and_then(|s| med(&s.del)));
            targets.push(target_line(
                "ours/reference ADD at 5000",
                a,
                "<=",
                RATIO_TARGET,
            ));
            targets.push(target_line(
                "ours/reference DEL at 5000",
                d,
                "<=",
                RATIO_TARGET,
            ));
        } else {
            targets.push(
                "ratio target (ours/reference at 5000 <= 0.1): size 5000 not measured".into(),
            );
        }
        println!("\nTargets:");
        for t in &targets {
            println!("  {t}");
        }

        if let Some(path) = &opts.markdown {
            let mut md = String::new();
            md.push_str("## IPAM: berth-host-local vs reference host-local\n\n");
            md.push_str(&bench::machine_markdown());
            md.push_str(&format!(
                "- ours: `{}`\n- reference: `{}`\n- {} iterations per size; cniVersion {CNI_VERSION}; one /16 ({SUBNET}); prefilled reservations in the reference on-disk format; each call is a fresh exec; ours and reference alternate each iteration\n\n",
                ours.bin.display(),
                reference.as_ref().map(|r| r.bin.display().to_string()).unwrap_or_else(|| "not found".into()),
                opts.iterations
            ));
            md.push_str(&format!("Median ADD and DEL (ms); flat = ours(size) / ours({base_size}); \"ours 1st call\" is the untimed warm-up ADD that imports the prefilled files.\n\n"));
            md.push_str(&markdown_table(&header, &rows));
            if !conc.is_empty() {
                md.push_str(&format!(
                    "\n{} ADDs spawned at once on an empty store:\n\n",
                    opts.concurrency
                ));
                md.push_str(&markdown_table(&conc_header, &conc_rows));
            }
            md.push_str("\nTargets:\n\n");
            for t in &targets {
                md.push_str(&format!("- {t}\n"));
            }
            md.push('\n');
            bench::append_markdown(path, &md)?;
        }
        Ok(())
    }
}

mod bridge {
    //! `berth-bench bridge`: the main plugin side by side with the reference, through the same
    //! exec harness (`CniRun` entering a fresh host netns between fork and exec, so the timed
    //! and measured process is the plugin itself), each plugin in its own host netns.

    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use berth_tests::bench::{
        self, markdown_table, median, ms, ms_opt, opt_f, ratio_opt, text_table,
    };
    use berth_tests::netns::{Host, Netns, BRIDGE_BIN, REFERENCE_BRIDGE};
    use berth_tests::{
        bin_dir, conf_bytes, wait_output, CniOutput, CniRun, HOST_LOCAL_BIN, REFERENCE_HOST_LOCAL,
    };
    use serde_json::{json, Value};

    const NETWORK: &str = "berth-bench";
    const SUBNET: &str = "10.128.0.0/16";
    const CNI_VERSION: &str = "1.0.0"; // the newest the reference speaks
    const RUN_TIMEOUT: Duration = Duration::from_secs(300);
    // Goals of issue 17 (nftables over netlink instead of exec'ing nft).
    const ADD_TARGET: f64 = 0.6;
    const ADD_MASQ_TARGET: f64 = 0.4;
    /// What ipMasq may add to our ADD and to our DEL, in ms.
    const MASQ_COST_TARGET_MS: f64 = 2.0;
    const RSS_TARGET: f64 = 1.0;
    const CONCURRENCY_TARGET: f64 = 0.3;

    const HELP: &str = "\
usage: berth-bench bridge [options]   (root: creates network namespaces, never touches the root one)

Times berth-bridge + berth-host-local (ours) against the reference bridge + host-local, each in
its own fresh host netns, cniVersion 1.0.0, isGateway true: median ADD, DEL and ADD+DEL over N
iterations (ours and reference alternate; with --masq both rows run in the same iterations), 100 pods attached in parallel on a fresh host (wall
time, errors), and the peak RSS of the plugin process of an ADD (VmHWM at its exit, under
ptrace; wait4's ru_maxrss is printed too).

options:
  --iterations N          timed ADD+DEL pairs per plugin and row (default 30)
  --concurrency N         pods attached at once on a fresh host (default 100; 0 skips)
  --concurrency-rounds N  rounds of that, ours and reference alternating (default 5; median)
  --masq                  add a second row with ipMasq true (ours: nftables; reference: iptables)
                          and the cost of ipMasq to our ADD and DEL (row true - row false)
  --ours PATH             berth-bridge (default <bin_dir>/berth-bridge)
  --ours-ipam PATH        berth-host-local (default <bin_dir>/berth-host-local)
  --reference PATH        reference bridge (default /usr/lib/cni/bridge)
  --reference-ipam PATH   reference host-local (default /usr/lib/cni/host-local)
  --markdown FILE         also append a markdown section (machine, date, command, tables) to FILE
";

    struct Opts {
        iterations: usize,
        concurrency: usize,
        concurrency_rounds: usize,
        masq: bool,
        ours: Plugin,
        reference: Plugin,
        markdown: Option<PathBuf>,
    }

    /// A main plugin and its IPAM (found through CNI_PATH = the IPAM's directory).
    #[derive(Clone)]
    struct Plugin {
        label: &'static str,
        bin: PathBuf,
        ipam: PathBuf,
    }

    impl Plugin {
        fn ipam_type(&self) -> String {
            self.ipam
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }
        fn cni_path(&self) -> String {
            self.ipam
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        }
    }

    fn parse(args: &[String]) -> Result<Option<Opts>, String> {
        let flags = bench::parse_flags(
            args,
            &[
                "iterations",
                "concurrency",
                "concurrency-rounds",
                "ours",
                "ours-ipam",
                "reference",
                "reference-ipam",
                "markdown",
            ],
            &["help", "masq"],
        )?;
        if flags.contains_key("help") {
            print!("{HELP}");
            return Ok(None);
        }
        let num = |k: &str, default: usize| -> Result<usize, String> {
            match flags.get(k) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("--{k}: not a number: {v:?}")),
                None => Ok(default),
            }
        };
        let path = |k: &str, default: PathBuf| -> Result<PathBuf, String> {
            let p = flags.get(k).map(PathBuf::from).unwrap_or(default);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{} not found (--{k}); build with `cargo build --release --workspace` or install containernetworking-plugins", p.display()))
            }
        };
        let iterations = num("iterations", 30)?;
        if iterations == 0 {
            return Err("--iterations must be at least 1".into());
        }
        let ours = Plugin {
            label: "ours",
            bin: path("ours", bin_dir().join(BRIDGE_BIN))?,
            ipam: path("ours-ipam", bin_dir().join(HOST_LOCAL_BIN))?,
        };
        let reference = Plugin {
            label: "reference",
            bin: path("reference", PathBuf::from(REFERENCE_BRIDGE))?,
            ipam: path("reference-ipam", PathBuf::from(REFERENCE_HOST_LOCAL))?,
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (it creates network namespaces)".into());
        }
        Ok(Some(Opts {
            iterations,
            concurrency: num("concurrency", 100)?,
            concurrency_rounds: num("concurrency-rounds", 5)?,
            masq: flags.contains_key("masq"),
            ours,
            reference,
            markdown: flags.get("markdown").map(PathBuf::from),
        }))
    }

    /// A plugin bound to its own fresh host netns, pod netns and data directory.
    struct Target {
        plugin: Plugin,
        host: Host,
        pod: Netns,
        _dir: tempfile::TempDir,
        conf: Vec<u8>,
    }

    impl Target {
        fn new(plugin: &Plugin, masq: bool) -> Result<Target, String> {
            let dir = tempfile::Builder::new()
                .prefix("berth-bench-bridge-")
                .tempdir()
                .map_err(|e| format!("tempdir: {e}"))?;
            let host = Host {
                ns: Netns::try_create("bbh")?,
            };
            let pod = Netns::try_create("bbp")?;
            let conf: Value = json!({
                "cniVersion": CNI_VERSION,
                "name": NETWORK,
                "type": plugin.bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                "bridge": "berth0",
                "isGateway": true,
                "ipMasq": masq,
                "dataDir": dir.path().join("bridge").to_string_lossy(),
                "ipam": {
                    "type": plugin.ipam_type(),
                    "dataDir": dir.path().join("ipam").to_string_lossy(),
                    "ranges": [[{ "subnet": SUBNET }]],
                },
            });
            Ok(Target {
                plugin: plugin.clone(),
                host,
                pod,
                _dir: dir,
                conf: conf_bytes(&conf),
            })
        }

        /// The plugin run inside the host netns, entered between fork and exec.
        fn cmd(&self, command: &str, container: &str, netns: &Path) -> CniRun {
            self.cmd_here(command, container, netns)
                .in_netns(self.host.ns.path())
        }

        /// The plugin run for a caller already in the host netns: spawned without a `pre_exec`
        /// hook, so std uses posix_spawn (a vfork) instead of forking the harness.
        fn cmd_here(&self, command: &str, container: &str, netns: &Path) -> CniRun {
            CniRun::new(&self.plugin.bin)
                .command(command)
                .container_id(container)
                .netns(&netns.to_string_lossy())
                .ifname("eth0")
                .cni_path(self.plugin.cni_path())
                .stdin(self.conf.clone())
                .timeout(RUN_TIMEOUT)
        }

        fn exec(&self, command: &str, container: &str) -> Result<CniOutput, String> {
            self.cmd(command, container, self.pod.path())
                .run()
                .map_err(|e| format!("cannot run {}: {e}", self.plugin.bin.display()))
        }
    }

    #[derive(Default)]
    struct Samples {
        add: Vec<Duration>,
        del: Vec<Duration>,
        pair: Vec<Duration>,
        /// ru_maxrss (wait4) of the timed ADD execs.
        rss_kb: Vec<u64>,
        /// VmHWM of the plugin process at exit, from the untimed measurement ADDs.
        hwm_kb: Vec<u64>,
        errors: usize,
        first_error: Option<String>,
    }

    impl Samples {
        fn record(&mut self, out: &CniOutput, what: &str) -> bool {
            if out.success() {
                return true;
            }
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!(
                    "{what}: exit {:?}: {} {}",
                    out.exit_code(),
                    out.stdout_text().trim(),
                    out.stderr_text().trim()
                ));
            }
            false
        }
        fn peak_rss(&self) -> Option<u64> {
            self.rss_kb.iter().copied().max()
        }
        fn peak_hwm(&self) -> Option<u64> {
            self.hwm_kb.iter().copied().max()
        }
    }

    struct RowResult {
        masq: bool,
        ours: Samples,
        reference: Samples,
        /// ru_maxrss of /bin/true exec'd the same way: what wait4 reports for any child of
        /// this harness, whatever the program (the pre-exec address space counts).
        floor: Option<u64>,
    }

    /// Untimed ADDs per plugin and row for the VmHWM measurement.
    const RSS_RUNS: usize = 5;

    /// The rows for each of `masqs`, measured together: every iteration runs each row's ADD+DEL
    /// for ours and the reference (alternating the order), so a slow phase of the machine (a
    /// namespace torn down in the background, another job) hits every row alike and the
    /// difference between rows is what ipMasq costs.
    fn bench_rows(opts: &Opts, masqs: &[bool]) -> Result<Vec<RowResult>, String> {
        let mut targets = Vec::new();
        for &m in masqs {
            targets.push([
                Target::new(&opts.ours, m)?,
                Target::new(&opts.reference, m)?,
            ]);
        }
        // Untimed warm-up: creates the bridge, NAT tables and stores, fills the page cache.
        for t in targets.iter().flatten() {
            for cmd in ["ADD", "DEL"] {
                let out = t.exec(cmd, "bench-warmup")?;
                if !out.success() {
                    return Err(format!(
                        "{} warm-up {cmd} failed: {}",
                        t.plugin.label,
                        out.describe()
                    ));
                }
            }
        }
        let mut samples: Vec<[Samples; 2]> = masqs
            .iter()
            .map(|_| [Samples::default(), Samples::default()])
            .collect();
        for i in 0..opts.iterations {
            let container = format!("bench-{i}");
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for (ts, ss) in targets.iter().zip(samples.iter_mut()) {
                for k in order {
                    let (t, s) = (&ts[k], &mut ss[k]);
                    let add = t.exec("ADD", &container)?;
                    let add_ok = s.record(&add, "ADD");
                    if add_ok {
                        s.add.push(add.elapsed);
                        if let Some(kb) = add.max_rss_kb {
                            s.rss_kb.push(kb);
                        }
                    }
                    let del = t.exec("DEL", &container)?;
                    if s.record(&del, "DEL") {
                        s.del.push(del.elapsed);
                        if add_ok {
                            s.pair.push(add.elapsed + del.elapsed);
                        }
                    }
                }
            }
        }
        // Untimed: the plugin's own peak RSS, read at its exit stop under ptrace.
        for i in 0..RSS_RUNS {
            let container = format!("bench-rss-{i}");
            for (ts, ss) in targets.iter().zip(samples.iter_mut()) {
                for (t, s) in ts.iter().zip(ss.iter_mut()) {
                    let (add, hwm) = t
                        .cmd("ADD", &container, t.pod.path())
                        .run_peak_rss()
                        .map_err(|e| format!("cannot run {}: {e}", t.plugin.bin.display()))?;
                    if s.record(&add, "ADD (RSS run)") {
                        s.hwm_kb.extend(hwm);
                    }
                    let del = t.exec("DEL", &container)?;
                    s.record(&del, "DEL (RSS run)");
                }
            }
        }
        let floor = {
            let t = &targets[0][0];
            let out = CniRun::new("/bin/true")
                .in_netns(t.host.ns.path())
                .run()
                .map_err(|e| format!("/bin/true: {e}"))?;
            out.max_rss_kb
        };
        Ok(masqs
            .iter()
            .zip(samples)
            .map(|(&masq, [ours, reference])| RowResult {
                masq,
                ours,
                reference,
                floor,
            })
            .collect())
    }

    /// The parallel ADD/DEL runs of one plugin, one entry per round.
    struct ConcResult {
        label: &'static str,
        walls: Vec<Duration>,
        /// CPU (user + system) of the plugins and their children during the ADDs.
        cpus: Vec<Duration>,
        errors: usize,
        /// Distinct addresses handed out, fewest over the rounds.
        distinct: usize,
        del_walls: Vec<Duration>,
        del_errors: usize,
        first_error: Option<String>,
    }

    impl ConcResult {
        fn new(label: &'static str) -> ConcResult {
            ConcResult {
                label,
                walls: Vec::new(),
                cpus: Vec::new(),
                errors: 0,
                distinct: usize::MAX,
                del_walls: Vec::new(),
                del_errors: 0,
                first_error: None,
            }
        }

        fn wall(&self) -> Option<Duration> {
            median(&self.walls)
        }

        fn spread(&self) -> String {
            match (self.walls.iter().min(), self.walls.iter().max()) {
                (Some(a), Some(b)) => format!("{}-{}", ms(*a), ms(*b)),
                _ => "n/a".into(),
            }
        }
    }

    /// User + system time of this process's waited-for descendants so far.
    fn children_cpu() -> Duration {
        use nix::sys::resource::{getrusage, UsageWho};
        let Ok(ru) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
            return Duration::ZERO;
        };
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::from_micros(u64::try_from(t.tv_sec() * 1_000_000 + t.tv_usec()).unwrap_or(0))
        };
        tv(ru.user_time()) + tv(ru.system_time())
    }

    /// `rounds` rounds of [`bench_concurrency`], ours and the reference alternating which
    /// goes first, so a warm or busy machine does not favour one side.
    fn concurrency_rounds(opts: &Opts) -> Result<[ConcResult; 2], String> {
        let mut out = [
            ConcResult::new(opts.ours.label),
            ConcResult::new(opts.reference.label),
        ];
        let plugins = [&opts.ours, &opts.reference];
        for round in 0..opts.concurrency_rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                bench_concurrency(plugins[i], opts.concurrency, &mut out[i])?;
            }
        }
        Ok(out)
    }

    /// Spawns every `step`-th of the pods from `first` on, from a thread inside the host netns
    /// (the children inherit it); the children, and the errors of those that did not start.
    fn spawn_share(
        t: &Target,
        command: &str,
        ids: &[String],
        pods: &[Netns],
        first: usize,
        step: usize,
    ) -> (Vec<std::process::Child>, Vec<String>) {
        let spawned = t.host.ns.run(|| {
            let mut children = Vec::new();
            let mut errs = Vec::new();
            for (id, pod) in ids.iter().zip(pods).skip(first).step_by(step) {
                match t.cmd_here(command, id, pod.path()).spawn() {
                    Ok(c) => children.push(c),
                    Err(e) => errs.push(format!("spawn: {e}")),
                }
            }
            (children, errs)
        });
        spawned.unwrap_or_else(|e| (Vec::new(), vec![format!("entering the host netns: {e}")]))
    }

    fn bench_concurrency(plugin: &Plugin, n: usize, acc: &mut ConcResult) -> Result<(), String> {
        let t = Target::new(plugin, false)?;
        let pods: Vec<Netns> = (0..n)
            .map(|_| Netns::try_create("bbc"))
            .collect::<Result<_, _>>()?;
        let ids: Vec<String> = (0..n).map(|i| format!("bench-conc-{i}")).collect();
        let mut errors = 0;
        let mut first_error = None;
        let run_all = |command: &str,
                       errors: &mut usize,
                       first_error: &mut Option<String>|
         -> (Duration, Vec<CniOutput>) {
            // The spawning threads join the host netns and the children inherit it, as they
            // would from a runtime running there. A `pre_exec` setns per child instead makes
            // std fork the harness for each one (page tables copied, copy-on-write faults
            // after). One spawning thread per CPU, as a runtime starts each pod's CNI call
            // from its own goroutine: one thread alone is blocked for every child's exec
            // (posix_spawn is a vfork), and then sets the pace for both plugins.
            let spawners = std::thread::available_parallelism()
                .map(|p| p.get())
                .unwrap_or(1)
                .clamp(1, n.max(1));
            let start = Instant::now();
            let (children, spawn_errors) = std::thread::scope(|s| {
                let handles: Vec<_> = (0..spawners)
                    .map(|k| {
                        let (t, ids, pods) = (&t, &ids, &pods);
                        s.spawn(move || spawn_share(t, command, ids, pods, k, spawners))
                    })
                    .collect();
                let mut children = Vec::with_capacity(n);
                let mut errs = Vec::new();
                for h in handles {
                    let (c, e) = h.join().unwrap_or_else(|_| {
                        (Vec::new(), vec!["a spawning thread panicked".into()])
                    });
                    children.extend(c);
                    errs.extend(e);
                }
                (children, errs)
            });
            for e in spawn_errors {
                *errors += 1;
                first_error.get_or_insert(e);
            }
            let mut outs = Vec::with_capacity(children.len());
            for c in children {
                match wait_output(c, RUN_TIMEOUT) {
                    Ok(o) => outs.push(o),
                    Err(e) => {
                        *errors += 1;
                        first_error.get_or_insert_with(|| format!("wait: {e}"));
                    }
                }
            }
            (start.elapsed(), outs)
        };
        let cpu_before = children_cpu();
        let (wall, outs) = run_all("ADD", &mut errors, &mut first_error);
        let cpu = children_cpu().saturating_sub(cpu_before);
        let mut addrs = BTreeSet::new();
        for o in &outs {
            if o.success() {
                addrs.extend(o.addresses());
            } else {
                errors += 1;
                first_error.get_or_insert_with(|| {
                    format!(
                        "ADD exit {:?}: {} {}",
                        o.exit_code(),
                        o.stdout_text().trim(),
                        o.stderr_text().trim()
                    )
                });
            }
        }
        let mut del_errors = 0;
        let (del_wall, douts) = run_all("DEL", &mut del_errors, &mut first_error);
        for o in &douts {
            if !o.success() {
                del_errors += 1;
                first_error.get_or_insert_with(|| {
                    format!("DEL exit {:?}: {}", o.exit_code(), o.stdout_text().trim())
                });
            }
        }
        acc.walls.push(wall);
        acc.cpus.push(cpu);
        acc.errors += errors;
        acc.distinct = acc.distinct.min(addrs.len());
        acc.del_walls.push(del_wall);
        acc.del_errors += del_errors;
        if acc.first_error.is_none() {
            acc.first_error = first_error;
        }
        Ok(())
    }

    /// Peak RSS of the IPAM plugin alone (ADD then DEL, outside any netns: host-local does not
    /// touch the kernel), to tell the main plugin's share in ru_maxrss (which covers the IPAM
    /// child the main plugin waited for).
    fn ipam_alone_rss(plugin: &Plugin) -> Result<Option<u64>, String> {
        let dir = tempfile::Builder::new()
            .prefix("berth-bench-ipam-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let conf = conf_bytes(&json!({
            "cniVersion": CNI_VERSION, "name": NETWORK, "type": "bench",
            "ipam": { "type": plugin.ipam_type(), "dataDir": dir.path().to_string_lossy(), "ranges": [[{ "subnet": SUBNET }]] },
        }));
        let mut peak = None;
        for (cmd, id) in [
            ("ADD", "rss-0"),
            ("DEL", "rss-0"),
            ("ADD", "rss-1"),
            ("DEL", "rss-1"),
        ] {
            let (out, hwm) = CniRun::new(&plugin.ipam)
                .command(cmd)
                .container_id(id)
                .netns("/var/run/netns/berth-bench")
                .ifname("eth0")
                .cni_path(plugin.cni_path())
                .stdin(conf.clone())
                .run_peak_rss()
                .map_err(|e| format!("{}: {e}", plugin.ipam.display()))?;
            if cmd == "ADD" && out.success() {
                peak = peak.max(hwm);
            }
        }
        Ok(peak)
    }

    fn med(v: &[Duration]) -> Option<Duration> {
        median(v)
    }

    /// Median wall time of `ip link add <veth pair>` and `ip link del` in a scratch netns: the
    /// kernel's share of an ADD and a DEL (deleting a veth waits for RCU grace periods), plus
    /// the exec of `ip` (compare with /bin/true's exec).
    fn kernel_floor(iterations: usize) -> Result<[Option<Duration>; 3], String> {
        let ns = Netns::try_create("bbk")?;
        let (mut add, mut del, mut noop) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations.clamp(5, 30) {
            for (argv, v) in [
                (
                    &[
                        "ip", "link", "add", "fa0", "type", "veth", "peer", "name", "fb0",
                    ][..],
                    &mut add,
                ),
                (&["ip", "link", "del", "fa0"][..], &mut del),
                (&["true"][..], &mut noop),
            ] {
                let t = Instant::now();
                ns.try_exec(argv)?;
                v.push(t.elapsed());
            }
        }
        Ok([med(&add), med(&del), med(&noop)])
    }

    fn mib(kb: Option<u64>) -> String {
        kb.map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into())
    }

    fn target_line(what: &str, value: Option<f64>, target: f64) -> String {
        let verdict = match value {
            Some(v) if v <= target => "met",
            Some(_) => "NOT met",
            None => "not measured",
        };
        format!(
            "{what}: {} (target <= {target}) -> {verdict}",
            opt_f(value, 3)
        )
    }

    pub fn run(args: &[String]) -> Result<(), String> {
        let Some(opts) = parse(args)? else {
            return Ok(());
        };
        println!(
            "berth-bench bridge: ours      = {} + {}",
            opts.ours.bin.display(),
            opts.ours.ipam.display()
        );
        println!(
            "                    reference = {} + {}",
            opts.reference.bin.display(),
            opts.reference.ipam.display()
        );
        println!(
            "                    {} iterations, cniVersion {CNI_VERSION}, isGateway true, subnet {SUBNET}, each plugin in its own fresh host netns\n",
            opts.iterations
        );

        let masqs: &[bool] = if opts.masq { &[false, true] } else { &[false] };
        let rows = bench_rows(&opts, masqs)?;
        for r in &rows {
            for (label, s) in [("ours", &r.ours), ("reference", &r.reference)] {
                if let Some(e) = &s.first_error {
                    eprintln!(
                        "ipMasq {}: {label}: {} error(s); first: {e}",
                        r.masq, s.errors
                    );
                }
            }
        }
        let ipam_rss = [
            ipam_alone_rss(&opts.ours)?,
            ipam_alone_rss(&opts.reference)?,
        ];
        let [k_add, k_del, k_noop] = kernel_floor(opts.iterations)?;
        let floor_line = format!(
            "kernel floor (scratch netns, median): `ip link add` veth pair {} ms, `ip link del` veth {} ms, exec of `true` {} ms",
            ms_opt(k_add),
            ms_opt(k_del),
            ms_opt(k_noop)
        );

        let header = [
            "ipMasq",
            "plugin",
            "ADD ms",
            "DEL ms",
            "ADD+DEL ms",
            "plugin RSS MiB",
            "ru_maxrss MiB",
            "IPAM alone MiB",
            "errors",
        ];
        let mut table = Vec::new();
        for r in &rows {
            for (i, (label, s)) in [("ours", &r.ours), ("reference", &r.reference)]
                .into_iter()
                .enumerate()
            {
                table.push(vec![
                    r.masq.to_string(),
                    label.to_string(),
                    ms_opt(med(&s.add)),
                    ms_opt(med(&s.del)),
                    ms_opt(med(&s.pair)),
                    mib(s.peak_hwm()),
                    mib(s.peak_rss()),
                    mib(ipam_rss[i]),
                    s.errors.to_string(),
                ]);
            }
        }
        let kb_ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
            _ => None,
        };
        let ratio_header = [
            "ipMasq",
            "ADD ours/ref",
            "DEL ours/ref",
            "ADD+DEL ours/ref",
            "plugin RSS ours/ref (target <= 1.0)",
            "ru_maxrss ours/ref",
        ];
        let mut ratio_rows = Vec::new();
        let mut targets = Vec::new();
        for r in &rows {
            let pair = ratio_opt(med(&r.ours.pair), med(&r.reference.pair));
            let rss = kb_ratio(r.ours.peak_hwm(), r.reference.peak_hwm());
            ratio_rows.push(vec![
                r.masq.to_string(),
                opt_f(ratio_opt(med(&r.ours.add), med(&r.reference.add)), 3),
                opt_f(ratio_opt(med(&r.ours.del), med(&r.reference.del)), 3),
                opt_f(pair, 3),
                opt_f(rss, 3),
                opt_f(kb_ratio(r.ours.peak_rss(), r.reference.peak_rss()), 3),
            ]);
            targets.push(target_line(
                &format!("ipMasq {}: ADD ours/reference", r.masq),
                ratio_opt(med(&r.ours.add), med(&r.reference.add)),
                if r.masq { ADD_MASQ_TARGET } else { ADD_TARGET },
            ));
            targets.push(target_line(
                &format!("ipMasq {}: plugin peak RSS ours/reference", r.masq),
                rss,
                RSS_TARGET,
            ));
        }
        // What ipMasq costs our plugin: the same medians with and without it.
        if let [plain, masq] = &rows[..] {
            let cost = |a: &[Duration], b: &[Duration]| match (med(a), med(b)) {
                (Some(a), Some(b)) => Some((a.as_secs_f64() - b.as_secs_f64()) * 1000.0),
                _ => None,
            };
            for (what, c) in [
                ("ADD", cost(&masq.ours.add, &plain.ours.add)),
                ("DEL", cost(&masq.ours.del, &plain.ours.del)),
            ] {
                targets.push(target_line(
                    &format!("ipMasq cost to our {what} (ms, median with - without)"),
                    c,
                    MASQ_COST_TARGET_MS,
                ));
            }
        }
        println!("Medians over {} iterations. RSS columns:", opts.iterations);
        println!("  plugin RSS = VmHWM of the plugin process itself at exit (ptrace exit stop; {RSS_RUNS} untimed ADDs, max)");
        println!(
            "  ru_maxrss  = wait4 of the timed ADDs (max): also covers the IPAM child and the harness's pre-exec address space \
             (/bin/true exec'd the same way: {} MiB)",
            mib(rows[0].floor)
        );
        print!("{}", text_table(&header, &table));
        println!("{floor_line}");
        println!("\nRatios:");
        print!("{}", text_table(&ratio_header, &ratio_rows));

        let conc: Vec<ConcResult> = if opts.concurrency > 0 && opts.concurrency_rounds > 0 {
            concurrency_rounds(&opts)?.into()
        } else {
            Vec::new()
        };
        let conc_header = [
            "plugin",
            "pods",
            "ADD wall ms (median)",
            "ADD wall ms (min-max)",
            "ADD CPU ms (median)",
            "ADD errors",
            "distinct addresses",
            "DEL wall ms (median)",
            "DEL errors",
        ];
        let conc_rows: Vec<Vec<String>> = conc
            .iter()
            .map(|c| {
                vec![
                    c.label.to_string(),
                    opts.concurrency.to_string(),
                    ms_opt(c.wall()),
                    c.spread(),
                    ms_opt(median(&c.cpus)),
                    c.errors.to_string(),
                    c.distinct.to_string(),
                    ms_opt(median(&c.del_walls)),
                    c.del_errors.to_string(),
                ]
            })
            .collect();
        if !conc.is_empty() {
            println!("\n{} pods attached at once on a fresh host (bridge not yet created), then detached at once; {} rounds, ours and reference alternating which goes first:", opts.concurrency, opts.concurrency_rounds);
            print!("{}", text_table(&conc_header, &conc_rows));
            for c in &conc {
                if let Some(e) = &c.first_error {
                    eprintln!("concurrency: {}: first error: {e}", c.label);
                }
            }
            if let [o, r] = &conc[..] {
                targets.push(target_line(
                    &format!("{} parallel ADDs wall ours/reference", opts.concurrency),
                    ratio_opt(o.wall(), r.wall()),
                    CONCURRENCY_TARGET,
                ));
            }
        }
        println!("\nTargets (printed, never asserted):");
        for t in &targets {
            println!("  {t}");
        }

        if let Some(path) = &opts.markdown {
            let mut md = String::new();
            md.push_str(
                "## Bridge: berth-bridge + berth-host-local vs reference bridge + host-local\n\n",
            );
            md.push_str(&bench::machine_markdown());
            md.push_str(&format!(
                "- ours: `{}` + `{}`\n- reference: `{}` + `{}`\n- {} iterations; cniVersion {CNI_VERSION}; isGateway true; {SUBNET}; each plugin in its own fresh host netns, entered between fork and exec (the timed process is the plugin); ours and reference alternate each iteration, and the ipMasq rows run in the same iterations; warm-up ADD+DEL untimed\n- plugin RSS: `VmHWM` of the plugin process itself, read at its ptrace exit stop (max of {RSS_RUNS} untimed ADDs); \"IPAM alone\": the same for the IPAM plugin exec'd by itself\n- ru_maxrss: max `ru_maxrss` from wait4 over the timed ADD execs; it also covers the IPAM child and the address space the child had before exec (Linux folds it in at exec): /bin/true exec'd the same way reports {} MiB\n\n",
                opts.ours.bin.display(),
                opts.ours.ipam.display(),
                opts.reference.bin.display(),
                opts.reference.ipam.display(),
                opts.iterations,
                mib(rows[0].floor)
            ));
            md.push_str(&markdown_table(&header, &table));
            md.push_str(&format!("\n{floor_line}\n\n"));
            md.push_str(&markdown_table(&ratio_header, &ratio_rows));
            if !conc.is_empty() {
                md.push_str(&format!(
                    "\n{} pods attached at once on a fresh host, then detached at once, spawned by one thread per CPU in the host netns (posix_spawn); {} rounds, ours and reference alternating which goes first; CPU is user + system of the plugins and their children (getrusage RUSAGE_CHILDREN):\n\n",
                    opts.concurrency, opts.concurrency_rounds
                ));
                md.push_str(&markdown_table(&conc_header, &conc_rows));
            }
            md.push_str("\nTargets:\n\n");
            for t in &targets {
                md.push_str(&format!("- {t}\n"));
            }
            md.push('\n');
            bench::append_markdown(path, &md)?;
        }
        Ok(())
    }
}
