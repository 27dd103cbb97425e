//! The driver's records in SQLite (`<state-dir>/berth-csi.db`): volumes,
//! snapshots, controller publications, node stagings and node publications.
//! Each change is one transaction. Rows carry a `state` column so that an
//! operation interrupted by a crash can be finished or rolled back on start.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use sqlite_store::{Db, Durability, Lock, Open, Spec};

use crate::error::{Error, Result};

/// A volume record.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Insertion order; pagination key.
    pub seq: i64,
    /// `local:<node>:<hex>`.
    pub id: String,
    /// The CO's name (unique).
    pub name: String,
    /// Size of the image in bytes.
    pub size: u64,
    /// `mount`, `block` or `both`: the access types asked for at creation.
    pub access: String,
    /// Filesystem asked for at creation (empty: decided at stage).
    pub fs_type: String,
    /// Canonical creation parameters (idempotency).
    pub params: String,
    /// `snapshot`, `volume` or empty.
    pub source_kind: String,
    /// Id of the content source.
    pub source_id: String,
    /// `creating`, `ready` or `deleting`.
    pub state: String,
    /// The image grew and the filesystem has not yet: grow it at next stage.
    pub fs_grow_pending: bool,
}

/// A snapshot record.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Insertion order; pagination key.
    pub seq: i64,
    /// `snap:<node>:<hex>`.
    pub id: String,
    /// The CO's name (unique).
    pub name: String,
    /// Volume it was taken from.
    pub source_volume_id: String,
    /// Size of the source volume at the time.
    pub size: u64,
    /// Creation time, nanoseconds since the epoch.
    pub created_ns: i64,
    /// `creating`, `ready` or `deleting`.
    pub state: String,
}

/// A ControllerPublishVolume record.
#[derive(Clone, Debug)]
pub struct ControllerPublication {
    /// Volume.
    pub volume_id: String,
    /// Node.
    pub node_id: String,
    /// Published read-only.
    pub readonly: bool,
    /// Capability as published (debug form), for compatibility checks.
    pub capability: String,
}

/// A NodeStageVolume record.
#[derive(Clone, Debug)]
pub struct Staging {
    /// Volume.
    pub volume_id: String,
    /// Staging path.
    pub path: String,
    /// `/dev/loopN` attached to the image.
    pub loop_device: String,
    /// `mount` or `block`.
    pub access: String,
    /// Filesystem mounted at the staging path (mount access).
    pub fs_type: String,
    /// Mount flags (JSON list).
    pub flags: String,
    /// `staging`, `staged` or `unstaging`.
    pub state: String,
}

/// A NodePublishVolume record.
#[derive(Clone, Debug)]
pub struct Publication {
    /// Target path.
    pub target: String,
    /// Volume.
    pub volume_id: String,
    /// Read-only bind.
    pub readonly: bool,
    /// `mount` or `block`.
    pub access: String,
    /// Read-only loop device made for a read-only block publish.
    pub ro_loop: String,
    /// `publishing`, `published` or `unpublishing`.
    pub state: String,
}

/// The store.
pub struct State {
    db: Mutex<Db>,
}

/// The state store as [`sqlite_store`] opens it: one driver process owns it
/// (no lock file); every commit is on disk before the RPC answers, since a
/// volume outlives a power loss.
const SPEC: Spec = Spec {
    db_file: "berth-csi.db",
    lock: Lock::None,
    durability: Durability::Full,
    migrations: &[SCHEMA_V1],
};

/// Version 1 of the schema.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS volumes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    access TEXT NOT NULL,
    fs_type TEXT NOT NULL,
    params TEXT NOT NULL,
    source_kind TEXT NOT NULL,
    source_id TEXT NOT NULL,
    state TEXT NOT NULL,
    fs_grow_pending INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    source_volume_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_source ON snapshots(source_volume_id);
CREATE TABLE IF NOT EXISTS controller_publications (
    volume_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    readonly INTEGER NOT NULL,
    capability TEXT NOT NULL,
    PRIMARY KEY (volume_id, node_id)
);
CREATE TABLE IF NOT EXISTS stagings (
    volume_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    loop_device TEXT NOT NULL,
    access TEXT NOT NULL,
    fs_type TEXT NOT NULL,
    flags TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS publications (
    target TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL,
    readonly INTEGER NOT NULL,
    access TEXT NOT NULL,
    ro_loop TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS publications_by_volume ON publications(volume_id);
";

fn volume(r: &Row) -> rusqlite::Result<Volume> {
    Ok(Volume {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        access: r.get(4)?,
        fs_type: r.get(5)?,
        params: r.get(6)?,
        source_kind: r.get(7)?,
        source_id: r.get(8)?,
        state: r.get(9)?,
        fs_grow_pending: r.get(10)?,
    })
}
const VOLUME_COLS: &str =
    "seq, id, name, size, access, fs_type, params, source_kind, source_id, state, fs_grow_pending";

fn snapshot(r: &Row) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        source_volume_id: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        created_ns: r.get(5)?,
        state: r.get(6)?,
    })
}
const SNAPSHOT_COLS: &str = "seq, id, name, source_volume_id, size, created_ns, state";

fn staging(r: &Row) -> rusqlite::Result<Staging> {
    Ok(Staging {
        volume_id: r.get(0)?,
        path: r.get(1)?,
        loop_device: r.get(2)?,
        access: r.get(3)?,
        fs_type: r.get(4)?,
        flags: r.get(5)?,
        state: r.get(6)?,
    })
}
const STAGING_COLS: &str = "volume_id, path, loop_device, access, fs_type, flags, state";

fn publication(r: &Row) -> rusqlite::Result<Publication> {
    Ok(Publication {
        target: r.get(0)?,
        volume_id: r.get(1)?,
        readonly: r.get(2)?,
        access: r.get(3)?,
        ro_loop: r.get(4)?,
        state: r.get(5)?,
    })
}
const PUBLICATION_COLS: &str = "target, volume_id, readonly, access, ro_loop, state";

impl State {
    /// Opens (and creates) `<dir>/berth-csi.db`.
    pub fn open(dir: &Path) -> Result<State> {
        let db = Db::open(dir, &SPEC, Open::Create)
            .map_err(|e| Error::Internal(format!("state store: {e}")))?
            .ok_or_else(|| {
                Error::Internal(format!(
                    "state store in {} vanished while opening",
                    dir.display()
                ))
            })?;
        Ok(State { db: Mutex::new(db) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&mut db.conn)?)
    }

    /// Whether the store answers a query (Probe).
    pub fn healthy(&self) -> bool {
        self.with(|c| c.query_row("SELECT count(*) FROM volumes", [], |r| r.get::<_, i64>(0)))
            .is_ok()
    }

    // ---- volumes

    /// Inserts a volume in state `creating`.
    pub fn insert_volume(&self, v: &Volume) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO volumes (id, name, size, access, fs_type, params, source_kind, source_id, state, fs_grow_pending)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'creating', 0)",
                params![v.id, v.name, v.size as i64, v.access, v.fs_type, v.params, v.source_kind, v.source_id],
            )
            .map(|_| ())
        })
    }

    /// Sets a volume's state.
    pub fn set_volume_state(&self, id: &str, state: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE volumes SET state = ?2 WHERE id = ?1",
                params![id, state],
            )
            .map(|_| ())
        })
    }

    /// Records a new size (and whether the filesystem still has to follow).
    pub fn set_volume_size(&self, id: &str, size: u64, fs_grow_pending: bool) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE volumes SET size = ?2, fs_grow_pending = ?3 WHERE id = ?1",
                params![id, size as i64, fs_grow_pending],
            )
            .map(|_| ())
        })
    }

    /// Clears the pending filesystem growth flag.
    pub fn clear_fs_grow(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("UPDATE volumes SET fs_grow_pending = 0 WHERE id = ?1", [id])
                .map(|_| ())
        })
    }

    /// Deletes a volume row with its controller publications.
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM controller_publications WHERE volume_id = ?1",
                [id],
            )?;
            tx.execute("DELETE FROM volumes WHERE id = ?1", [id])?;
            tx.commit()
        })
    }

    /// A volume by id.
    pub fn volume(&self, id: &str) -> Result<Option<Volume>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {VOLUME_COLS} FROM volumes WHERE id = ?1"),
                [id],
                volume,
            )
            .optional()
        })
    }

    /// A volume by name.
    pub fn volume_by_name(&self, name: &str) -> Result<Option<Volume>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {VOLUME_COLS} FROM volumes WHERE name = ?1"),
                [name],
                volume,
            )
            .optional()
        })
    }

    /// Ready volumes after `after_seq`, at most `limit` (0 = all).
    pub fn list_volumes(&self, after_seq: i64, limit: usize) -> Result<Vec<Volume>> {
        let lim = if limit == 0 { -1 } else { limit as i64 };
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {VOLUME_COLS} FROM volumes WHERE state = 'ready' AND seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = st.query_map(params![after_seq, lim], volume)?;
            rows.collect()
        })
    }

    /// Every volume in any state (reconciliation).
    pub fn all_volumes(&self) -> Result<Vec<Volume>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {VOLUME_COLS} FROM volumes ORDER BY seq"))?;
            let rows = st.query_map([], volume)?;
            rows.collect()
        })
    }

    // ---- snapshots

    /// Marks a snapshot ready with its final size.
    pub fn finish_snapshot(&self, id: &str, size: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE snapshots SET size = ?2, state = 'ready' WHERE id = ?1",
                params![id, size as i64],
            )
            .map(|_| ())
        })
    }

    /// Inserts a snapshot in state `creating`.
    pub fn insert_snapshot(&self, s: &Snapshot) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO snapshots (id, name, source_volume_id, size, created_ns, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'creating')",
                params![
                    s.id,
                    s.name,
                    s.source_volume_id,
                    s.size as i64,
                    s.created_ns
                ],
            )
            .map(|_| ())
        })
    }

    /// Sets a snapshot's state.
    pub fn set_snapshot_state(&self, id: &str, state: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE snapshots SET state = ?2 WHERE id = ?1",
                params![id, state],
            )
            .map(|_| ())
        })
    }

    /// Deletes a snapshot row.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", [id])
                .map(|_| ())
        })
    }

    /// A snapshot by id.
    pub fn snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE id = ?1"),
                [id],
                snapshot,
            )
            .optional()
        })
    }

    /// A snapshot by name.
    pub fn snapshot_by_name(&self, name: &str) -> Result<Option<Snapshot>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {SNAPSHOT_COLS} FROM snapshots WHERE name = ?1"),
                [name],
                snapshot,
            )
            .optional()
        })
    }

    /// Ready snapshots after `after_seq` matching the filters, at most `limit` (0 = all).
    pub fn list_snapshots(
        &self,
        after_seq: i64,
        limit: usize,
        snapshot_id: Option<&str>,
        source: Option<&str>,
    ) -> Result<Vec<Snapshot>> {
        let lim = if limit == 0 { -1 } else { limit as i64 };
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {SNAPSHOT_COLS} FROM snapshots WHERE state = 'ready' AND seq > ?1
                   AND (?2 IS NULL OR id = ?2) AND (?3 IS NULL OR source_volume_id = ?3)
                 ORDER BY seq LIMIT ?4"
            ))?;
            let rows = st.query_map(params![after_seq, snapshot_id, source, lim], snapshot)?;
            rows.collect()
        })
    }

    /// Every snapshot in any state (reconciliation).
    pub fn all_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {SNAPSHOT_COLS} FROM snapshots ORDER BY seq"
            ))?;
            let rows = st.query_map([], snapshot)?;
            rows.collect()
        })
    }

    // ---- controller publications

    /// Publications of a volume.
    pub fn controller_publications(&self, volume_id: &str) -> Result<Vec<ControllerPublication>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT volume_id, node_id, readonly, capability FROM controller_publications WHERE volume_id = ?1",
            )?;
            let rows = st.query_map([volume_id], |r| {
                Ok(ControllerPublication {
                    volume_id: r.get(0)?,
                    node_id: r.get(1)?,
                    readonly: r.get(2)?,
                    capability: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Number of volumes published to a node.
    pub fn count_node_publications(&self, node_id: &str) -> Result<i64> {
        self.with(|c| {
            c.query_row(
                "SELECT count(*) FROM controller_publications WHERE node_id = ?1",
                [node_id],
                |r| r.get(0),
            )
        })
    }

    /// Records a publication.
    pub fn insert_controller_publication(&self, p: &ControllerPublication) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO controller_publications (volume_id, node_id, readonly, capability)
                 VALUES (?1, ?2, ?3, ?4)",
                params![p.volume_id, p.node_id, p.readonly, p.capability],
            )
            .map(|_| ())
        })
    }

    /// Removes publications of a volume (to one node, or all when `node_id` is None).
    pub fn delete_controller_publication(
        &self,
        volume_id: &str,
        node_id: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM controller_publications WHERE volume_id = ?1 AND (?2 IS NULL OR node_id = ?2)",
                params![volume_id, node_id],
            )
            .map(|_| ())
        })
    }

    // ---- stagings

    /// The staging of a volume.
    pub fn staging(&self, volume_id: &str) -> Result<Option<Staging>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {STAGING_COLS} FROM stagings WHERE volume_id = ?1"),
                [volume_id],
                staging,
            )
            .optional()
        })
    }

    /// Every staging (reconciliation, stats).
    pub fn all_stagings(&self) -> Result<Vec<Staging>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {STAGING_COLS} FROM stagings"))?;
            let rows = st.query_map([], staging)?;
            rows.collect()
        })
    }

    /// Inserts or replaces a staging.
    pub fn put_staging(&self, s: &Staging) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO stagings (volume_id, path, loop_device, access, fs_type, flags, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![s.volume_id, s.path, s.loop_device, s.access, s.fs_type, s.flags, s.state],
            )
            .map(|_| ())
        })
    }

    /// Removes a staging.
    pub fn delete_staging(&self, volume_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM stagings WHERE volume_id = ?1", [volume_id])
                .map(|_| ())
        })
    }

    // ---- publications

    /// The publication at a target path.
    pub fn publication(&self, target: &str) -> Result<Option<Publication>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {PUBLICATION_COLS} FROM publications WHERE target = ?1"),
                [target],
                publication,
            )
            .optional()
        })
    }

    /// Publications of a volume.
    pub fn publications_of(&self, volume_id: &str) -> Result<Vec<Publication>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {PUBLICATION_COLS} FROM publications WHERE volume_id = ?1"
            ))?;
            let rows = st.query_map([volume_id], publication)?;
            rows.collect()
        })
    }

    /// Every publication (reconciliation).
    pub fn all_publications(&self) -> Result<Vec<Publication>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {PUBLICATION_COLS} FROM publications"))?;
            let rows = st.query_map([], publication)?;
            rows.collect()
        })
    }

    /// Inserts or replaces a publication.
    pub fn put_publication(&self, p: &Publication) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO publications (target, volume_id, readonly, access, ro_loop, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![p.target, p.volume_id, p.readonly, p.access, p.ro_loop, p.state],
            )
            .map(|_| ())
        })
    }

    /// Removes a publication.
    pub fn delete_publication(&self, target: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM publications WHERE target = ?1", [target])
                .map(|_| ())
        })
    }
}
