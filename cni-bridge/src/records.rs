//! Per-attachment records: what ADD created, so DEL and GC can undo it even
//! when the pod's network namespace is gone and no prevResult is passed.
//! Written before the first side effect, completed after the last one,
//! removed after teardown. SQLite, one file per network; writers serialize
//! on a `flock` and keep it only for one short transaction. A plugin run
//! opens the records once and writes them up to three times.

use std::path::Path;

use rusqlite::{params, OptionalExtension};
use sqlite_store::{Db, Durability, Lock, Open, Spec, StoreError};

use crate::error::BridgeError;

pub const DB_FILE: &str = "attachments.db";
const LOCK_FILE: &str = "attachments.lock";

/// The records as [`sqlite_store`] opens them: unlike the IPAM store's, the
/// lock is held only around each write, since ADD writes before and after
/// the IPAM call and the kernel work and must not hold other pods up
/// meanwhile.
const SPEC: Spec = Spec {
    db_file: DB_FILE,
    lock: Lock::PerWrite(LOCK_FILE),
    durability: Durability::Normal,
    migrations: &[SCHEMA_V1],
};

/// Version 1 of the schema.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS attachments (
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,
    netns        TEXT NOT NULL,
    bridge       TEXT NOT NULL,
    host_veth    TEXT NOT NULL,
    pod_mac      TEXT NOT NULL DEFAULT '',
    ips          TEXT NOT NULL DEFAULT '',   -- comma-separated CIDRs given to the pod
    masq         TEXT NOT NULL DEFAULT '',   -- '', 'nftables' or 'iptables'
    spoofchk     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (container_id, ifname)
) WITHOUT ROWID;
";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub bridge: String,
    pub host_veth: String,
    pub pod_mac: String,
    pub ips: Vec<String>,
    pub masq: String,
    pub spoofchk: bool,
    pub created_at: i64,
}

pub struct Records {
    db: Db,
}

fn store_err(e: StoreError) -> BridgeError {
    BridgeError::Records {
        path: e.path().display().to_string(),
        msg: e.detail(),
    }
}

impl Records {
    fn err(&self, e: rusqlite::Error) -> BridgeError {
        store_err(self.db.err(e))
    }

    /// Opens the records of one network for writing, or None when `create`
    /// is false and there are none.
    pub fn open(dir: &Path, create: bool) -> Result<Option<Records>, BridgeError> {
        let how = if create { Open::Create } else { Open::Existing };
        Ok(Db::open(dir, &SPEC, how)
            .map_err(store_err)?
            .map(|db| Records { db }))
    }

    pub fn put(&self, r: &Record) -> Result<(), BridgeError> {
        let _lock = self.db.write_lock().map_err(store_err)?;
        self.db.conn
            .execute(
                "INSERT OR REPLACE INTO attachments
                 (container_id, ifname, netns, bridge, host_veth, pod_mac, ips, masq, spoofchk, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    r.container_id,
                    r.ifname,
                    r.netns,
                    r.bridge,
                    r.host_veth,
                    r.pod_mac,
                    r.ips.join(","),
                    r.masq,
                    r.spoofchk,
                    r.created_at
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn get(&self, container: &str, ifname: &str) -> Result<Option<Record>, BridgeError> {
        self.db.conn
            .query_row(
                "SELECT container_id, ifname, netns, bridge, host_veth, pod_mac, ips, masq, spoofchk, created_at
                 FROM attachments WHERE container_id = ?1 AND ifname = ?2",
                params![container, ifname],
                row_to_record,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn delete(&self, container: &str, ifname: &str) -> Result<(), BridgeError> {
        let _lock = self.db.write_lock().map_err(store_err)?;
        self.db
            .conn
            .execute(
                "DELETE FROM attachments WHERE container_id = ?1 AND ifname = ?2",
                params![container, ifname],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<Record>, BridgeError> {
        let mut st = self
            .db
            .conn
            .prepare(
                "SELECT container_id, ifname, netns, bridge, host_veth, pod_mac, ips, masq, spoofchk, created_at
                 FROM attachments ORDER BY created_at",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], row_to_record).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let ips: String = row.get(6)?;
    Ok(Record {
        container_id: row.get(0)?,
        ifname: row.get(1)?,
        netns: row.get(2)?,
        bridge: row.get(3)?,
        host_veth: row.get(4)?,
        pod_mac: row.get(5)?,
        ips: ips
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        masq: row.get(7)?,
        spoofchk: row.get(8)?,
        created_at: row.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_round_trip() {
        let dir = std::env::temp_dir().join(format!("berth-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(Records::open(&dir, false).expect("open").is_none());
        let r = Records::open(&dir, true).expect("open").expect("created");
        let rec = Record {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            bridge: "berth0".into(),
            host_veth: "veth0123abcd".into(),
            ips: vec!["10.0.0.2/24".into(), "fd00::2/64".into()],
            masq: "nftables".into(),
            spoofchk: true,
            created_at: 7,
            ..Default::default()
        };
        r.put(&rec).expect("put");
        assert_eq!(r.get("c1", "eth0").expect("get"), Some(rec.clone()));
        assert_eq!(r.all().expect("all").len(), 1);
        r.delete("c1", "eth0").expect("delete");
        assert!(r.get("c1", "eth0").expect("get").is_none());
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
