//! `berth-bench report`: runs every benchmark, writes BENCHMARKS.md (the
//! machine, the commands, each section's tables) and the SVG charts it links
//! beside it in `bench/`. Nothing in the report is typed by hand.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::bench;
use berth_tests::bin_dir;
use berth_tests::svg::{bars, log_lines, markdown_rows, Series, OTHER, OURS, REFERENCE};

const HELP: &str = "\
usage: berth-bench report [--out BENCHMARKS.md] [--quick]   (root)

Runs ipam, bridge (with --masq), overlay, cri, kubelet and the CSI lifecycle benchmark, then writes the
report and the charts bench/*.svg next to it. --quick: fewer iterations (for a smoke run, not for
the record).
";

fn f(cell: &str) -> f64 {
    cell.split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0)
}

fn section(
    name: &str,
    run: fn(&[String]) -> Result<(), String>,
    args: &[&str],
    tmp: &Path,
) -> Result<String, String> {
    let path = tmp.join(format!("{name}.md"));
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.push("--markdown".into());
    a.push(path.display().to_string());
    println!("==> berth-bench {name} {}", args.join(" "));
    run(&a)?;
    fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
}

fn csi_section(quick: bool) -> Result<(String, f64, f64, f64), String> {
    let bin = bin_dir().join("berth-csi-bench");
    let args: Vec<&str> = if quick {
        vec!["--runs", "3", "--concurrent", "10"]
    } else {
        vec!["--runs", "20", "--concurrent", "50"]
    };
    println!("==> berth-csi-bench {}", args.join(" "));
    let out = Command::new(&bin)
        .args(&args)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "berth-csi-bench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let num_after = |line: &str, key: &str| -> f64 { line.split(key).nth(1).map(f).unwrap_or(0.0) };
    let lifecycle = text
        .lines()
        .find(|l| l.starts_with("lifecycle"))
        .unwrap_or_default();
    let conc = text
        .lines()
        .find(|l| l.contains("concurrent CreateVolume"))
        .unwrap_or_default();
    let median = num_after(lifecycle, "median ");
    let wall = num_after(conc, "wall ");
    let per_call = num_after(conc, "median ");
    let md = format!(
        "## CSI: berth-csi lifecycle and concurrent CreateVolume\n\n{}- command: `{} {}`\n\n| figure | measured |\n|---|---|\n| {} | median {median:.1} ms |\n| {} | wall {wall:.1} ms |\n\n```text\n{}```\n",
        bench::machine_markdown(),
        bin.display(),
        args.join(" "),
        "lifecycle (create, controller publish, stage, publish, unpublish, unstage, controller unpublish, delete)",
        conc.split(':').next().unwrap_or("concurrent CreateVolume"),
        text
    );
    Ok((md, median, wall, per_call))
}

/// The NFS backend's figures (berth-csi-bench --nfs), embedded as printed.
fn nfs_section(quick: bool) -> Result<String, String> {
    let bin = bin_dir().join("berth-csi-bench");
    let args: Vec<&str> = if quick {
        vec!["--nfs", "--runs", "3", "--nfs-files", "8"]
    } else {
        vec!["--nfs", "--runs", "20"]
    };
    println!("==> berth-csi-bench {}", args.join(" "));
    let out = Command::new(&bin)
        .args(&args)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "berth-csi-bench --nfs failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (figures, table): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| !l.starts_with('|'));
    Ok(format!(
        "## CSI: NFS backend (controller over user-space NFSv3 against nfs-ganesha)\n\n{}- command: `{} {}`\n- the server: nfs-ganesha (VFS FSAL) in a scratch network namespace on this machine, reached over loopback; the local tools run on the export's own filesystem with no network, so the ratio is the whole cost of working over NFS from user space (no reference CSI NFS driver runs here)\n\n{}\n\n```text\n{}\n```\n",
        bench::machine_markdown(),
        bin.display(),
        args.join(" "),
        table.join("\n"),
        figures.join("\n")
    ))
}

pub fn run(
    args: &[String],
    ipam: fn(&[String]) -> Result<(), String>,
    bridge: fn(&[String]) -> Result<(), String>,
    overlay: fn(&[String]) -> Result<(), String>,
    cri: fn(&[String]) -> Result<(), String>,
    kubelet: fn(&[String]) -> Result<(), String>,
) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return Ok(());
    }
    let flags = bench::parse_flags(args, &["out"], &["quick"])?;
    let quick = flags.contains_key("quick");
    // The CRI section needs crictl (a test peer): say so before the long sections run, not
    // after them.
    berth_tests::cri::crictl_bin()?;
    let out = PathBuf::from(
        flags
            .get("out")
            .cloned()
            .unwrap_or_else(|| "BENCHMARKS.md".into()),
    );
    let charts = out.parent().unwrap_or(Path::new(".")).join("bench");
    fs::create_dir_all(&charts).map_err(|e| e.to_string())?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;

    let ipam_md = if quick {
        section(
            "ipam",
            ipam,
            &["--iterations", "5", "--sizes", "0,1000,5000"],
            tmp.path(),
        )?
    } else {
        section("ipam", ipam, &[], tmp.path())?
    };
    let bridge_md = section(
        "bridge",
        bridge,
        if quick {
            &["--iterations", "5", "--masq"]
        } else {
            &["--masq"]
        },
        tmp.path(),
    )?;
    let overlay_md = section(
        "overlay",
        overlay,
        if quick {
            &["--seconds", "2", "--hosts", "4", "--peers", "200"]
        } else {
            &[]
        },
        tmp.path(),
    )?;
    let cri_md = section(
        "cri",
        cri,
        if quick { &["--sandboxes", "4"] } else { &[] },
        tmp.path(),
    )?;
    let kubelet_md = section(
        "kubelet",
        kubelet,
        if quick { &["--pods", "8"] } else { &[] },
        tmp.path(),
    )?;
    let (csi_md, lifecycle, wall, per_call) = csi_section(quick)?;
    let nfs_md = nfs_section(quick)?;

    // Charts.
    let rows = markdown_rows(&ipam_md, "| size |");
    let header_skip: Vec<&Vec<String>> = rows.iter().skip(1).collect();
    let sizes: Vec<String> = header_skip.iter().map(|r| r[0].clone()).collect();
    let col = |i: usize| header_skip.iter().map(|r| f(&r[i])).collect::<Vec<f64>>();
    fs::write(
        charts.join("ipam-latency.svg"),
        log_lines(
            "IPAM ADD latency as reservations grow (median, log scale)",
            "ms",
            &sizes,
            &[
                Series {
                    name: "berth-host-local ADD".into(),
                    color: OURS,
                    values: col(1),
                },
                Series {
                    name: "reference host-local ADD".into(),
                    color: REFERENCE,
                    values: col(3),
                },
            ],
        ),
    )
    .map_err(|e| e.to_string())?;

    let brows = markdown_rows(&bridge_md, "| ipMasq | plugin |");
    let pick = |masq: &str, plugin: &str, c: usize| {
        brows
            .iter()
            .find(|r| {
                r.first().map(|x| x == masq).unwrap_or(false)
                    && r.get(1).map(|x| x == plugin).unwrap_or(false)
            })
            .map(|r| f(&r[c]))
            .unwrap_or(0.0)
    };
    let cats: Vec<String> = [
        "ADD",
        "DEL",
        "ADD+DEL",
        "ADD (ipMasq)",
        "DEL (ipMasq)",
        "ADD+DEL (ipMasq)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let series_for = |plugin: &str| -> Vec<f64> {
        vec![
            pick("false", plugin, 2),
            pick("false", plugin, 3),
            pick("false", plugin, 4),
            pick("true", plugin, 2),
            pick("true", plugin, 3),
            pick("true", plugin, 4),
        ]
    };
    fs::write(
        charts.join("bridge-latency.svg"),
        bars(
            "Bridge plugin latency, median (berth-bridge + berth-host-local vs bridge + host-local)",
            "ms",
            &cats,
            &[
                Series { name: "berth".into(), color: OURS, values: series_for("ours") },
                Series { name: "reference".into(), color: REFERENCE, values: series_for("reference") },
            ],
        ),
    )
    .map_err(|e| e.to_string())?;

    let orow = markdown_rows(&overlay_md, "| figure |");
    let tput = orow
        .iter()
        .find(|r| r[0].starts_with("throughput"))
        .map(|r| r[1].clone())
        .unwrap_or_default();
    let parts: Vec<f64> = tput
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|x| x.parse().ok())
        .collect();
    let (ov, un) = (
        parts.first().copied().unwrap_or(0.0),
        parts.get(1).copied().unwrap_or(0.0),
    );
    fs::write(
        charts.join("overlay-throughput.svg"),
        bars(
            "Pod-to-pod across hosts over VXLAN vs host-to-host on the underlay (iperf3)",
            "Gbit/s",
            &["TCP throughput".to_string()],
            &[
                Series {
                    name: "overlay (pod to pod)".into(),
                    color: OURS,
                    values: vec![ov],
                },
                Series {
                    name: "underlay (host to host)".into(),
                    color: OTHER,
                    values: vec![un],
                },
            ],
        ),
    )
    .map_err(|e| e.to_string())?;
    fs::write(
        charts.join("csi-lifecycle.svg"),
        bars(
            "berth-csi latency (median lifecycle; concurrent CreateVolume)",
            "ms",
            &[
                "volume lifecycle".to_string(),
                "concurrent CreateVolume, wall".to_string(),
                "CreateVolume, per call".to_string(),
            ],
            &[Series {
                name: "berth-csi".into(),
                color: OURS,
                values: vec![lifecycle, wall, per_call],
            }],
        ),
    )
    .map_err(|e| e.to_string())?;

    let mut doc = String::from(
        "# Benchmarks\n\nGenerated by `./scripts/bench.sh` (which runs `berth-bench report`): every figure and chart below\ncomes from one run of the benchmarks on the machine described in each section, our binaries and\nthe reference implementations side by side, alternating, by direct exec the way a runtime calls a\nplugin (the CRI section: through containerd's CRI plugin, driven by crictl). Benchmarks print\nand record; no test asserts a speed.\n\n",
    );
    doc.push_str("![IPAM latency](bench/ipam-latency.svg)\n![Bridge latency](bench/bridge-latency.svg)\n![Overlay throughput](bench/overlay-throughput.svg)\n![CSI latency](bench/csi-lifecycle.svg)\n\n");
    for s in [
        &ipam_md,
        &bridge_md,
        &overlay_md,
        &cri_md,
        &kubelet_md,
        &csi_md,
        &nfs_md,
    ] {
        doc.push_str(s);
        doc.push('\n');
    }
    fs::write(&out, doc).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("wrote {} and {}/*.svg", out.display(), charts.display());
    Ok(())
}
