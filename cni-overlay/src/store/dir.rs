//! The embedded lease store: one SQLite database in a directory shared by
//! the nodes (processes) of one machine. Every change is one IMMEDIATE
//! transaction, so two nodes taking the same subnet at the same instant
//! cannot both win; a revision counter lets watchers notice changes with a
//! cheap read.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use sqlite_store::{Db, Durability, Lock, Open, Spec};

use crate::error::OverlayError;
use crate::lease::{now, Lease};
use crate::store::LeaseStore;

/// The lease store as [`sqlite_store`] opens it. Setting up the schema and
/// the WAL journal races badly between processes opening a new store
/// together, so that part takes the lock; the daemons then share the
/// database through SQLite's own locking.
const SPEC: Spec = Spec {
    db_file: "leases.db",
    lock: Lock::WhileSettingUp("leases.lock"),
    durability: Durability::Normal,
    migrations: &[SCHEMA_V1],
};

/// Version 1 of the schema.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS leases (
    network    TEXT NOT NULL,    -- which cluster network (several overlays may share a store)
    subnet     TEXT NOT NULL,
    node       TEXT NOT NULL,
    lease      TEXT NOT NULL,    -- the whole lease as JSON
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (network, subnet),
    UNIQUE (network, node)
);
CREATE TABLE IF NOT EXISTS revision (network TEXT PRIMARY KEY, rev INTEGER NOT NULL);
";

pub struct DirStore {
    db: Db,
    network: String,
}

impl DirStore {
    pub fn open(dir: &Path, network: &str) -> Result<DirStore, OverlayError> {
        let err = |m: String| OverlayError::Store {
            store: format!("dir:{}", dir.display()),
            msg: m,
        };
        let db = Db::open(dir, &SPEC, Open::Create)
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("the database vanished while opening".into()))?;
        Ok(DirStore {
            db,
            network: network.to_string(),
        })
    }

    /// One IMMEDIATE transaction, and the store's name for errors raised in it.
    fn begin(&mut self) -> Result<(rusqlite::Transaction<'_>, String), OverlayError> {
        let store = self.describe();
        let tx = self
            .db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| OverlayError::Store {
                store: store.clone(),
                msg: e.to_string(),
            })?;
        Ok((tx, store))
    }

    fn err(&self, e: impl std::fmt::Display) -> OverlayError {
        OverlayError::Store {
            store: self.describe(),
            msg: e.to_string(),
        }
    }

    fn bump(tx: &rusqlite::Transaction<'_>, network: &str) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO revision (network, rev) VALUES (?1, 1)
             ON CONFLICT (network) DO UPDATE SET rev = rev + 1",
            params![network],
        )?;
        Ok(())
    }

    fn revision(&self) -> Result<u64, OverlayError> {
        let r: Option<i64> = self
            .db
            .conn
            .query_row(
                "SELECT rev FROM revision WHERE network = ?1",
                params![self.network],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(r.unwrap_or(0) as u64)
    }
}

impl LeaseStore for DirStore {
    fn list(&mut self) -> Result<(Vec<Lease>, u64), OverlayError> {
        let rev = self.revision()?;
        let mut st = self
            .db
            .conn
            .prepare_cached(
                "SELECT lease FROM leases WHERE network = ?1 AND expires_at > ?2 ORDER BY subnet",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![self.network, now()], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let text = r.map_err(|e| self.err(e))?;
            match serde_json::from_str::<Lease>(&text) {
                Ok(l) => out.push(l),
                Err(e) => eprintln!(
                    "berth-overlayd: ignoring an unreadable lease in {}: {e}",
                    self.db.path().display()
                ),
            }
        }
        // Expiry is part of the revision: fold the earliest expiry in, so a
        // lease timing out counts as a change for watchers.
        Ok((out, rev))
    }

    fn try_acquire(&mut self, lease: &Lease) -> Result<bool, OverlayError> {
        let network = self.network.clone();
        let json = serde_json::to_string(lease).map_err(|e| self.err(e))?;
        let subnet = lease.subnet.to_string();
        let (tx, store) = self.begin()?;
        let result = (|| -> rusqlite::Result<bool> {
            let t = now();
            let expired = tx.execute(
                "DELETE FROM leases WHERE network = ?1 AND expires_at <= ?2",
                params![network, t],
            )?;
            let holder: Option<String> = tx
                .query_row(
                    "SELECT node FROM leases WHERE network = ?1 AND subnet = ?2",
                    params![network, subnet],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(h) = &holder {
                if h != &lease.node {
                    if expired > 0 {
                        Self::bump(&tx, &network)?;
                        tx.commit()?;
                    }
                    return Ok(false);
                }
            }
            // A node holds one subnet: drop any other it had.
            tx.execute(
                "DELETE FROM leases WHERE network = ?1 AND node = ?2 AND subnet <> ?3",
                params![network, lease.node, subnet],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO leases (network, subnet, node, lease, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![network, subnet, lease.node, json, lease.expires_at],
            )?;
            Self::bump(&tx, &network)?;
            tx.commit()?;
            Ok(true)
        })();
        result.map_err(|e| OverlayError::Store {
            store,
            msg: e.to_string(),
        })
    }

    fn renew(&mut self, lease: &Lease) -> Result<(), OverlayError> {
        let json = serde_json::to_string(lease).map_err(|e| self.err(e))?;
        let n = self
            .db
            .conn
            .execute(
                "UPDATE leases SET lease = ?1, expires_at = ?2 WHERE network = ?3 AND subnet = ?4 AND node = ?5",
                params![json, lease.expires_at, self.network, lease.subnet.to_string(), lease.node],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            let holder: Option<String> = self
                .db
                .conn
                .query_row(
                    "SELECT node FROM leases WHERE network = ?1 AND subnet = ?2",
                    params![self.network, lease.subnet.to_string()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            return Err(OverlayError::LeaseLost {
                subnet: lease.subnet.to_string(),
                holder: holder.unwrap_or_else(|| "nobody (it expired)".into()),
            });
        }
        Ok(())
    }

    fn release(&mut self, lease: &Lease) -> Result<(), OverlayError> {
        let network = self.network.clone();
        let (tx, store) = self.begin()?;
        tx.execute(
            "DELETE FROM leases WHERE network = ?1 AND subnet = ?2 AND node = ?3",
            params![network, lease.subnet.to_string(), lease.node],
        )
        .and_then(|_| Self::bump(&tx, &network))
        .and_then(|_| tx.commit())
        .map_err(|e| OverlayError::Store {
            store,
            msg: e.to_string(),
        })
    }

    fn wait_change(&mut self, since: u64, timeout: Duration) -> Result<u64, OverlayError> {
        let deadline = Instant::now() + timeout;
        loop {
            let rev = self.revision()?;
            if rev != since || Instant::now() >= deadline {
                return Ok(rev);
            }
            std::thread::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    fn describe(&self) -> String {
        format!(
            "dir:{}",
            self.db
                .path()
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, subnet: &str, ttl: i64) -> Lease {
        Lease {
            node: node.into(),
            subnet: subnet.parse().expect("net"),
            subnet6: None,
            public_ip: "192.0.2.1".parse().expect("ip"),
            vtep_mac: "02:00:00:00:00:01".into(),
            expires_at: now() + ttl,
        }
    }

    #[test]
    fn compare_and_swap_and_expiry() {
        let d = std::env::temp_dir().join(format!("berth-dirstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut a = DirStore::open(&d, "10.244.0.0/16").expect("open");
        let mut b = DirStore::open(&d, "10.244.0.0/16").expect("open");
        assert!(a.try_acquire(&lease("a", "10.244.1.0/24", 60)).expect("a"));
        assert!(!b.try_acquire(&lease("b", "10.244.1.0/24", 60)).expect("b"));
        assert!(b.try_acquire(&lease("b", "10.244.2.0/24", 60)).expect("b2"));
        let (l, r1) = a.list().expect("list");
        assert_eq!(l.len(), 2);
        // b's lease expires: a can take it.
        assert!(b.renew(&lease("b", "10.244.2.0/24", -1)).is_ok());
        assert_eq!(a.list().expect("list").0.len(), 1);
        assert!(a.try_acquire(&lease("c", "10.244.2.0/24", 60)).expect("c"));
        assert!(matches!(
            b.renew(&lease("b", "10.244.2.0/24", 60)),
            Err(OverlayError::LeaseLost { .. })
        ));
        a.release(&lease("a", "10.244.1.0/24", 60))
            .expect("release");
        let (_, r2) = a.list().expect("list");
        assert_ne!(r1, r2);
        assert_eq!(
            b.wait_change(r2, Duration::from_millis(10)).expect("wait"),
            r2
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
