//! One-time import of a reference host-local directory (one file per
//! address, named by the address, holding "containerid\r\nifname" or, in the
//! oldest format, just the container id), so switching a network's IPAM
//! `type` from `host-local` to `berth-host-local` keeps running pods'
//! addresses. The reference files are left untouched.

use std::net::IpAddr;
use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::config::IpamConfig;
use crate::error::IpamError;
use crate::store::{Allocation, Sql};

const META_KEY: &str = "reference_import";

/// Imports `cfg.reference_dir` unless it was imported before or does not
/// exist. Returns the number of addresses imported.
pub fn import_reference(
    sql: &Sql<'_>,
    cfg: &IpamConfig,
    boot_id: &str,
) -> Result<usize, IpamError> {
    let dir = &cfg.reference_dir;
    if !dir.is_dir() || sql.meta(META_KEY)?.is_some() {
        return Ok(0);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        IpamError::Io(format!(
            "reading reference host-local directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut imported = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(idx) = name.strip_prefix("last_reserved_ip.") {
            if let (Ok(i), Ok(text)) = (idx.parse::<usize>(), std::fs::read_to_string(entry.path()))
            {
                if let Ok(addr) = text.trim().parse::<IpAddr>() {
                    sql.set_last_reserved(i, addr)?;
                }
            }
            continue;
        }
        let Ok(addr) = name.parse::<IpAddr>() else {
            continue;
        };
        if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        let Some((container, ifname)) = read_reservation(&entry.path()) else {
            continue;
        };
        if sql.holder_of(addr)?.is_some() {
            continue;
        }
        let created_at = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0);
        sql.insert(&Allocation {
            address: addr,
            range_set: cfg.range_sets.iter().position(|s| s.contains(addr)),
            container_id: container,
            ifname,
            netns: String::new(),
            request: "imported".into(),
            // Imported rows count as this boot's: we cannot tell a live
            // pod's file from a stale one, and freeing a live pod's address
            // is the one thing that must not happen. DEL and GC free them.
            boot_id: boot_id.to_string(),
            created_at,
        })?;
        imported += 1;
    }
    sql.set_meta(META_KEY, &dir.display().to_string())?;
    if imported > 0 {
        eprintln!(
            "berth-host-local: imported {imported} reservations from {}",
            dir.display()
        );
    }
    Ok(imported)
}

fn read_reservation(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let container = lines.next()?.to_string();
    let ifname = lines.next().unwrap_or("").to_string();
    Some((container, ifname))
}
