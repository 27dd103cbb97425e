//! The `berth-host-local` CNI commands.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use cni_core::{CniError, CniResult, ErrorCode, IpConfig, Plugin, PluginInfo, Request};
use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::allocator::{allocate, any_free, digest, Attachment};
use crate::bootid;
use crate::config::{IpamConfig, DEFAULT_DATA_DIR};
use crate::dns::read_resolv_conf;
use crate::error::IpamError;
use crate::migrate::import_reference;
use crate::store::{Allocation, Sql, Store};

pub const INFO: PluginInfo = PluginInfo {
    name: "berth-host-local",
    version: env!("CARGO_PKG_VERSION"),
    description: "host-local IP address management with a crash-safe, concurrent SQLite store",
};

pub struct HostLocal;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The store directory of a configuration, worked out without validating
/// the ranges, so DEL works even when the ranges no longer parse.
fn store_dir_loose(req: &Request) -> PathBuf {
    let data_dir = req
        .config
        .ipam
        .as_ref()
        .and_then(|m| m.get("dataDir"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_DATA_DIR);
    PathBuf::from(data_dir).join(&req.config.name)
}

fn build_result(
    cfg: &IpamConfig,
    held: &[(usize, std::net::IpAddr)],
) -> Result<CniResult, IpamError> {
    let mut res = CniResult {
        routes: cfg.routes.clone(),
        ..Default::default()
    };
    for (i, addr) in held {
        let Some(range) = cfg.range_sets.get(*i).and_then(|s| s.range_for(*addr)) else {
            continue;
        };
        let address = IpNetwork::new(*addr, range.subnet.prefix())
            .map_err(|e| IpamError::Io(format!("building result for {addr}: {e}")))?;
        res.ips.push(IpConfig {
            address,
            gateway: Some(range.gateway),
            interface: None,
        });
    }
    if let Some(path) = &cfg.resolv_conf {
        res.dns = read_resolv_conf(path)?;
    }
    Ok(res)
}

/// For each range set, the address `held` has in it (if any).
fn per_set(cfg: &IpamConfig, held: &[Allocation]) -> Vec<Option<std::net::IpAddr>> {
    cfg.range_sets
        .iter()
        .map(|s| held.iter().map(|a| a.address).find(|a| s.contains(*a)))
        .collect()
}

impl HostLocal {
    fn add_inner(&self, req: &Request) -> Result<CniResult, IpamError> {
        let cfg = IpamConfig::from_netconf(&req.config, &req.env.args)?;
        let boot_id = bootid::current();
        let mut store = Store::open_for_write(&cfg.store_dir)?;
        let path = store.db_path();
        let tx = store.begin()?;
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        import_reference(&sql, &cfg, &boot_id)?;
        sql.reclaim_other_boots(&boot_id)?;

        let request = digest(&[
            &req.stdin,
            req.env.args.as_bytes(),
            req.env.netns.as_bytes(),
        ]);
        let held = sql.held_by(&req.env.container_id, &req.env.ifname)?;
        let held_here = per_set(&cfg, &held);
        if held_here.iter().any(Option::is_some) {
            // A retry of an ADD whose result was lost (same netns, same
            // config and args) gets the same addresses; anything else is a
            // duplicate the spec forbids.
            let relevant: Vec<&Allocation> = held
                .iter()
                .filter(|a| cfg.range_sets.iter().any(|s| s.contains(a.address)))
                .collect();
            let is_retry = held_here.iter().all(Option::is_some)
                && relevant
                    .iter()
                    .all(|a| a.request == request && a.netns == req.env.netns);
            if !is_retry {
                let list: Vec<String> = relevant.iter().map(|a| a.address.to_string()).collect();
                return Err(IpamError::Duplicate {
                    container: req.env.container_id.clone(),
                    ifname: req.env.ifname.clone(),
                    held: list.join(", "),
                });
            }
            let pairs: Vec<(usize, std::net::IpAddr)> = held_here
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.map(|a| (i, a)))
                .collect();
            let result = build_result(&cfg, &pairs)?;
            tx.commit().map_err(|source| IpamError::Store {
                path: path.clone(),
                source,
            })?;
            return Ok(result);
        }

        let att = Attachment {
            container_id: req.env.container_id.clone(),
            ifname: req.env.ifname.clone(),
            netns: req.env.netns.clone(),
            request,
            boot_id,
            now: now(),
        };
        let got = allocate(&sql, &cfg, &att)?;
        // Read resolv.conf before committing so a bad path fails the ADD
        // without holding addresses.
        let result = build_result(&cfg, &got)?;
        berth_common::fault::pause("ipam-before-commit");
        tx.commit().map_err(|source| IpamError::Store {
            path: path.clone(),
            source,
        })?;
        berth_common::fault::pause("ipam-after-commit");
        Ok(result)
    }

    fn del_inner(&self, req: &Request) -> Result<(), IpamError> {
        // A configuration whose ranges no longer parse must not keep an
        // address held forever: fall back to the store directory alone.
        let cfg = IpamConfig::from_netconf(&req.config, &req.env.args).ok();
        let Some(dir) = store_to_open(req, cfg.as_ref()) else {
            return Ok(());
        };
        let mut store = Store::open_for_write(&dir)?;
        let path = store.db_path();
        let tx = store.begin()?;
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        if let Some(cfg) = &cfg {
            import_reference(&sql, cfg, &bootid::current())?;
        }
        sql.release(&req.env.container_id, Some(&req.env.ifname))?;
        tx.commit().map_err(|source| IpamError::Store {
            path: path.clone(),
            source,
        })?;
        Ok(())
    }

    fn check_inner(&self, req: &Request) -> Result<(), IpamError> {
        let cfg = IpamConfig::from_netconf(&req.config, &req.env.args)?;
        let mut store = Store::open_for_write(&cfg.store_dir)?;
        let path = store.db_path();
        let tx = store.begin()?;
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        import_reference(&sql, &cfg, &bootid::current())?;
        let held = sql.held_by(&req.env.container_id, &req.env.ifname)?;
        let held_here: Vec<std::net::IpAddr> = per_set(&cfg, &held).into_iter().flatten().collect();
        tx.commit().map_err(|source| IpamError::Store {
            path: path.clone(),
            source,
        })?;
        if held_here.is_empty() {
            return Err(IpamError::NotHeld(format!(
                "container {} interface {} holds no address in network {}",
                req.env.container_id, req.env.ifname, cfg.network
            )));
        }
        if let Some(prev) = &req.config.prev_result {
            let prev = CniResult::from_json(prev, req.config.version)
                .map_err(|e| IpamError::config("prevResult", e.msg))?;
            for ipc in &prev.ips {
                let addr = ipc.address.ip();
                if !cfg.range_sets.iter().any(|s| s.contains(addr)) {
                    continue;
                }
                if !held_here.contains(&addr) {
                    return Err(IpamError::NotHeld(format!(
                        "prevResult address {addr} is not held by container {} interface {} (it holds {})",
                        req.env.container_id,
                        req.env.ifname,
                        held_here.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    fn gc_inner(&self, req: &Request) -> Result<(), IpamError> {
        let valid = valid_attachments(&req.config.raw)?;
        let cfg = IpamConfig::from_netconf(&req.config, "").ok();
        let Some(dir) = store_to_open(req, cfg.as_ref()) else {
            return Ok(());
        };
        let mut store = Store::open_for_write(&dir)?;
        let path = store.db_path();
        let tx = store.begin()?;
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        let boot_id = bootid::current();
        if let Some(cfg) = &cfg {
            import_reference(&sql, cfg, &boot_id)?;
        }
        sql.reclaim_other_boots(&boot_id)?;
        let gone = sql.gc(&valid)?;
        tx.commit().map_err(|source| IpamError::Store {
            path: path.clone(),
            source,
        })?;
        for a in gone {
            eprintln!(
                "berth-host-local: GC released {} of {}/{}",
                a.address, a.container_id, a.ifname
            );
        }
        Ok(())
    }

    fn status_inner(&self, req: &Request) -> Result<(), IpamError> {
        let cfg = IpamConfig::from_netconf(&req.config, "")?;
        let unavailable =
            |e: IpamError| IpamError::Unavailable(format!("address store unusable: {e}"));
        let mut store = Store::open_for_write(&cfg.store_dir).map_err(unavailable)?;
        let path = store.db_path();
        let tx = store.begin().map_err(unavailable)?;
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        let boot_id = bootid::current();
        import_reference(&sql, &cfg, &boot_id).map_err(unavailable)?;
        sql.reclaim_other_boots(&boot_id).map_err(unavailable)?;
        let free = any_free(&sql, &cfg).map_err(unavailable)?;
        tx.commit().map_err(|source| {
            unavailable(IpamError::Store {
                path: path.clone(),
                source,
            })
        })?;
        if !free {
            return Err(IpamError::Unavailable(format!(
                "every range set is exhausted: {}",
                cfg.describe()
            )));
        }
        Ok(())
    }
}

/// The store directory DEL and GC work on (from the configuration, or the
/// directory alone when the ranges no longer parse), or None when there is
/// nothing to open there: no store and no reference directory to import.
fn store_to_open(req: &Request, cfg: Option<&IpamConfig>) -> Option<PathBuf> {
    let dir = cfg
        .map(|c| c.store_dir.clone())
        .unwrap_or_else(|| store_dir_loose(req));
    let needs_import = cfg.is_some_and(|c| c.reference_dir.is_dir());
    (dir.join(crate::store::DB_FILE).exists() || needs_import).then_some(dir)
}

/// Reads `cni.dev/valid-attachments` (see `cni_core::config::valid_attachments`).
pub fn valid_attachments(
    raw: &serde_json::Map<String, Value>,
) -> Result<Vec<(String, String)>, IpamError> {
    cni_core::config::valid_attachments(raw).map_err(|e| {
        let (field, msg) = e
            .msg
            .split_once(": ")
            .unwrap_or(("cni.dev/valid-attachments", e.msg.as_str()));
        IpamError::config(field, msg)
    })
}

impl Plugin for HostLocal {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.add_inner(req).map_err(CniError::from)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.del_inner(req).map_err(CniError::from)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.check_inner(req).map_err(CniError::from)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.gc_inner(req).map_err(CniError::from)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        self.status_inner(req).map_err(|e| match e {
            IpamError::Config { .. } => CniError::from(e),
            other => CniError::new(ErrorCode::PluginNotAvailable, other.to_string()),
        })
    }
}
