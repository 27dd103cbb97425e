//! The operator commands of `berth-host-local`: `list` and `release`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::DEFAULT_DATA_DIR;
use crate::error::IpamError;
use crate::store::{list_all, Sql, Store, DB_FILE};

#[derive(Parser, Debug)]
#[command(
    name = "berth-host-local",
    version,
    about = "host-local IPAM for CNI with a crash-safe SQLite store",
    long_about = "berth-host-local is a CNI IPAM plugin. A container runtime runs it with CNI_COMMAND set and the \
network configuration on stdin; run by hand with no arguments it prints what it is. The subcommands below are \
for operators: they read and change the same store the plugin uses."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// List held addresses with their container, interface and age.
    List {
        /// The plugin's dataDir.
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Only this network (default: every network in the data dir).
        #[arg(long)]
        network: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Release the addresses of a container (all its interfaces, or one).
    Release {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        network: String,
        #[arg(long)]
        container: String,
        #[arg(long)]
        ifname: Option<String>,
    },
}

fn networks(data_dir: &Path, only: Option<&str>) -> Result<Vec<String>, IpamError> {
    if let Some(n) = only {
        cni_core::env::validate_network_name(n)
            .map_err(|e| IpamError::config("--network", e.msg))?;
        return Ok(vec![n.to_string()]);
    }
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(IpamError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(DB_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    out.sort();
    Ok(out)
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), IpamError> {
    let io = |e: std::io::Error| IpamError::Io(format!("writing output: {e}"));
    match cli.command {
        CliCommand::List {
            data_dir,
            network,
            json,
        } => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let boot = crate::bootid::current();
            let mut rows = Vec::new();
            for net in networks(&data_dir, network.as_deref())? {
                let Some(store) = Store::open_for_read(&data_dir.join(&net))? else {
                    continue;
                };
                for a in list_all(&store.db.conn, &store.db_path())? {
                    rows.push((net.clone(), a));
                }
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(n, a)| {
                        json!({
                            "network": n, "address": a.address.to_string(), "containerId": a.container_id,
                            "ifname": a.ifname, "netns": a.netns, "createdAt": a.created_at,
                            "ageSeconds": (now - a.created_at).max(0), "bootId": a.boot_id,
                            "currentBoot": a.boot_id == boot,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(v)).map_err(io)?;
            } else {
                let w = |f: &dyn Fn(&(String, crate::store::Allocation)) -> usize, min: usize| {
                    rows.iter().map(f).max().unwrap_or(0).max(min)
                };
                let (wn, wa, wc) = (
                    w(&|r| r.0.len(), 7),
                    w(&|r| r.1.address.to_string().len(), 7),
                    w(&|r| r.1.container_id.len(), 9),
                );
                writeln!(
                    out,
                    "{:<wn$}  {:<wa$}  {:<wc$}  {:<15}  {:>5}",
                    "NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "AGE"
                )
                .map_err(io)?;
                for (n, a) in &rows {
                    writeln!(
                        out,
                        "{:<wn$}  {:<wa$}  {:<wc$}  {:<15}  {:>5}{}",
                        n,
                        a.address.to_string(),
                        a.container_id,
                        if a.ifname.is_empty() { "-" } else { &a.ifname },
                        human_age((now - a.created_at).max(0)),
                        if a.boot_id != boot && !a.boot_id.is_empty() {
                            "  (previous boot)"
                        } else {
                            ""
                        }
                    )
                    .map_err(io)?;
                }
            }
        }
        CliCommand::Release {
            data_dir,
            network,
            container,
            ifname,
        } => {
            let dir = data_dir.join(&networks(&data_dir, Some(&network))?[0]);
            if !dir.join(DB_FILE).is_file() {
                return Err(IpamError::Io(format!(
                    "no store for network {network} in {}",
                    data_dir.display()
                )));
            }
            let mut store = Store::open_for_write(&dir)?;
            let path = store.db_path();
            let tx = store.begin()?;
            let n = Sql {
                tx: &tx,
                path: &path,
            }
            .release(&container, ifname.as_deref())?;
            tx.commit().map_err(|source| IpamError::Store {
                path: path.clone(),
                source,
            })?;
            writeln!(
                out,
                "released {n} address{} of container {container}",
                if n == 1 { "" } else { "es" }
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

fn human_age(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
