//! `berth-bench`: benchmarks for Berth's plugins.
//!
//! ```text
//! berth-bench <subcommand> [options]
//! berth-bench ipam [--iterations N] [--sizes 0,1000,5000,20000] [--concurrency 100]
//!                  [--reference /usr/lib/cni/host-local] [--ours <bin_dir>/berth-host-local]
//!                  [--markdown FILE]
//! ```
//!
//! A benchmark prints figures and the targets beside them; it never fails because of speed.
//! It exits non-zero only when it cannot run (bad options, missing binary, I/O errors).
//! A new subcommand is a module with `run(&[String]) -> Result<(), String>` and a row in
//! [`SUBCOMMANDS`].

use std::process::ExitCode;

/// A benchmark subcommand: name, one-line description, entry point.
struct Subcommand {
    name: &'static str,
    about: &'static str,
    run: fn(&[String]) -> Result<(), String>,
}

const SUBCOMMANDS: &[Subcommand] = &[Subcommand {
    name: "ipam",
    about: "berth-host-local vs the reference host-local: ADD/DEL latency against store size, concurrent ADDs",
    run: ipam::run,
}];

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
    use std::fs;
    use std::io::Write;
    use std::net::Ipv4Addr;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use berth_tests::bench::{self, markdown_table, median, ms, opt_f, ratio, text_table};
    use berth_tests::{
        bin_dir, conf_bytes, host_local_conf_value, prefill_reference_v4, wait_output, CniOutput, CniRun,
        HOST_LOCAL_BIN, REFERENCE_HOST_LOCAL,
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
        let flags = bench::parse_flags(args, &["iterations", "sizes", "concurrency", "reference", "ours", "markdown"], &["help"])?;
        if flags.contains_key("help") {
            print!("{HELP}");
            return Ok(None);
        }
        let num = |k: &str, default: usize| -> Result<usize, String> {
            match flags.get(k) {
                Some(v) => v.trim().parse().map_err(|_| format!("--{k}: not a number: {v:?}")),
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
                .map(|s| s.trim().parse::<u32>().map_err(|_| format!("--sizes: not a number: {s:?}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![0, 1000, 5000, 20000],
        };
        if sizes.is_empty() {
            return Err("--sizes is empty".into());
        }
        if let Some(big) = sizes.iter().find(|s| **s > MAX_PREFILL) {
            return Err(format!("--sizes: {big} does not fit in {SUBNET} (max {MAX_PREFILL})"));
        }
        let reference_path = flags.get("reference").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(REFERENCE_HOST_LOCAL));
        let reference = if reference_path.is_file() {
            Some(reference_path)
        } else {
            eprintln!("note: reference plugin {} not found; timing ours only", reference_path.display());
            None
        };
        let ours = flags.get("ours").map(PathBuf::from).unwrap_or_else(|| bin_dir().join(HOST_LOCAL_BIN));
        if !ours.is_file() {
            return Err(format!("{} not found: build it with `cargo build --release -p ipam` or pass --ours", ours.display()));
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
            let dir = tempfile::Builder::new().prefix("berth-bench-").tempdir().map_err(|e| format!("tempdir: {e}"))?;
            let ipam = json!({
                "type": "host-local",
                "dataDir": dir.path().to_string_lossy(),
                "ranges": [[{ "subnet": SUBNET }]],
            });
            let conf = conf_bytes(&host_local_conf_value(CNI_VERSION, NETWORK, ipam));
            Ok(Target { plugin, _dir: dir, conf })
        }

        fn network_dir(&self) -> PathBuf {
            self._dir.path().join(NETWORK)
        }

        fn cmd(&self, command: &str, container: &str) -> CniRun {
            let cni_path = self.plugin.bin.parent().map(Path::to_path_buf).unwrap_or_default();
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
            self.cmd(command, container).run().map_err(|e| format!("cannot run {}: {e}", self.plugin.bin.display()))
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
                self.first_error = Some(format!("{what}: exit {:?}: {} {}", out.exit_code(), out.stdout_text().trim(), out.stderr_text().trim()));
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

    fn bench_size(size: u32, iterations: usize, ours: &Plugin, reference: Option<&Plugin>) -> Result<SizeResult, String> {
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
        eprintln!("size {size}: prefilled (and synced) in {:.1} s", prefill_start.elapsed().as_secs_f64());

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
        Ok(SizeResult { size, ours: ours_s, reference: ref_s, ours_first_call })
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
                first_error.get_or_insert_with(|| format!("exit {:?}: {} {}", o.exit_code(), o.stdout_text().trim(), o.stderr_text().trim()));
            }
        }
        Ok(ConcResult { label: plugin.label, wall, errors, distinct: addrs.len(), first_error })
    }

    fn med(v: &[Duration]) -> Option<Duration> {
        median(v)
    }

    fn ms_opt(d: Option<Duration>) -> String {
        d.map(ms).unwrap_or_else(|| "n/a".into())
    }

    fn ratio_opt(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => None,
        }
    }

    fn target_line(what: &str, value: Option<f64>, op: &str, target: f64) -> String {
        let verdict = match value {
            Some(v) if (op == "<=" && v <= target) => "met",
            Some(_) => "NOT met",
            None => "not measured",
        };
        format!("{what}: {} (target {op} {target}) -> {verdict}", opt_f(value, 3))
    }

    pub fn run(args: &[String]) -> Result<(), String> {
        let Some(opts) = parse(args)? else { return Ok(()) };
        let ours = Plugin { label: "ours", bin: opts.ours.clone() };
        let reference = opts.reference.clone().map(|bin| Plugin { label: "reference", bin });
        println!("berth-bench ipam: ours = {}", ours.bin.display());
        match &reference {
            Some(r) => println!("                  reference = {}", r.bin.display()),
            None => println!("                  reference = (not found, skipped)"),
        }
        println!("                  {} iterations per size, sizes {:?}, cniVersion {CNI_VERSION}, subnet {SUBNET}\n", opts.iterations, opts.sizes);

        let mut results = Vec::new();
        for &size in &opts.sizes {
            let r = bench_size(size, opts.iterations, &ours, reference.as_ref())?;
            for (label, s) in std::iter::once(("ours", &r.ours)).chain(r.reference.iter().map(|s| ("reference", s))) {
                if let Some(e) = &s.first_error {
                    eprintln!("size {size}: {label}: {} error(s); first: {e}", s.errors);
                }
            }
            results.push(r);
        }

        // Baseline for flatness: size 0 if measured, else the smallest size.
        let base = results.iter().find(|r| r.size == 0).or_else(|| results.iter().min_by_key(|r| r.size));
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
            let (ra, rd) = r.reference.as_ref().map(|s| (med(&s.add), med(&s.del))).unwrap_or((None, None));
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
                format!("{}/{}", r.ours.errors, r.reference.as_ref().map(|s| s.errors.to_string()).unwrap_or_else(|| "-".into())),
            ]);
        }
        println!("ADD and DEL medians over {} iterations (flat = ours(size) / ours({base_size})):", opts.iterations);
        print!("{}", text_table(&header, &rows));

        let mut conc = Vec::new();
        if opts.concurrency > 0 {
            conc.push(bench_concurrency(&ours, opts.concurrency)?);
            if let Some(r) = &reference {
                conc.push(bench_concurrency(r, opts.concurrency)?);
            }
        }
        let conc_header = ["plugin", "concurrent ADDs", "wall ms", "errors", "distinct addresses"];
        let conc_rows: Vec<Vec<String>> = conc
            .iter()
            .map(|c| vec![c.label.to_string(), opts.concurrency.to_string(), ms(c.wall), c.errors.to_string(), c.distinct.to_string()])
            .collect();
        if !conc.is_empty() {
            println!("\nConcurrency: {} ADDs spawned at once on an empty store:", opts.concurrency);
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
            let (a, d) = (ratio_opt(med(&r.ours.add), base_add), ratio_opt(med(&r.ours.del), base_del));
            targets.push(target_line(&format!("ours ADD at 20000 / ours ADD at {base_size}"), a, "<=", FLAT_TARGET));
            targets.push(target_line(&format!("ours DEL at 20000 / ours DEL at {base_size}"), d, "<=", FLAT_TARGET));
        } else {
            targets.push("flatness target (ours at 20000 within 1.5x of ours at 0): size 20000 not measured".into());
        }
        if let Some(r) = at(5000) {
            let rs = r.reference.as_ref();
            let a = ratio_opt(med(&r.ours.add), rs.and_then(|s| med(&s.add)));
            let d = ratio_opt(med(&r.ours.del), rs.and_then(|s| med(&s.del)));
            targets.push(target_line("ours/reference ADD at 5000", a, "<=", RATIO_TARGET));
            targets.push(target_line("ours/reference DEL at 5000", d, "<=", RATIO_TARGET));
        } else {
            targets.push("ratio target (ours/reference at 5000 <= 0.1): size 5000 not measured".into());
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
                md.push_str(&format!("\n{} ADDs spawned at once on an empty store:\n\n", opts.concurrency));
                md.push_str(&markdown_table(&conc_header, &conc_rows));
            }
            md.push_str("\nTargets:\n\n");
            for t in &targets {
                md.push_str(&format!("- {t}\n"));
            }
            md.push('\n');
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--markdown {}: {e}", path.display()))?;
            f.write_all(md.as_bytes()).map_err(|e| format!("--markdown {}: {e}", path.display()))?;
            println!("\nmarkdown section appended to {}", path.display());
        }
        Ok(())
    }
}
