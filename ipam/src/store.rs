//! The on-disk address store: one SQLite database per network.
//!
//! Writers serialize on an exclusive `flock` of `<dir>/lock` (the kernel
//! hands it over the moment the holder exits, even on SIGKILL) and then run
//! one IMMEDIATE transaction, so every change is atomic. The journal is WAL
//! with `synchronous=NORMAL`: an application crash never loses a commit, and
//! a power loss can only lose the last commits, whose pods died with the
//! machine anyway (and whose boot is then over, see `reclaim_other_boots`).
//!
//! Addresses are keyed by a 16-byte big-endian number, so "the next free
//! address after X" is an index range walk that stops at the first gap: no
//! operation reads every reservation.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sqlite_store::{Db, Durability, Lock, Open, Spec, StoreError};

use crate::error::IpamError;
use crate::range::{from_u128, key, Range};

pub const DB_FILE: &str = "ipam.db";
pub const LOCK_FILE: &str = "lock";
/// Version 1 of the schema (`PRAGMA user_version` 1).
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS allocations (
    key          BLOB PRIMARY KEY,   -- address as 16 bytes, IPv4 mapped into ::ffff:0:0/96
    address      TEXT NOT NULL,      -- the same address, for people
    range_set    INTEGER,            -- index of the range set it came from (NULL: imported, outside the ranges)
    container_id TEXT NOT NULL,
    ifname       TEXT NOT NULL,      -- '' for records imported from the oldest reference format
    netns        TEXT NOT NULL DEFAULT '',
    request      TEXT NOT NULL DEFAULT '',  -- digest of the ADD request: tells a retry from a duplicate
    boot_id      TEXT NOT NULL DEFAULT '',  -- the kernel boot the address was allocated in
    created_at   INTEGER NOT NULL    -- unix seconds
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS allocations_by_attachment ON allocations (container_id, ifname);
CREATE TABLE IF NOT EXISTS last_reserved (
    range_set INTEGER PRIMARY KEY,
    key       BLOB NOT NULL,
    address   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// One held address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub address: IpAddr,
    pub range_set: Option<usize>,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub request: String,
    pub boot_id: String,
    pub created_at: i64,
}

/// The address store as [`sqlite_store`] opens it: the writer lock held for
/// the whole plugin run, one IMMEDIATE transaction per command.
pub const SPEC: Spec = Spec {
    db_file: DB_FILE,
    lock: Lock::WhileOpen(LOCK_FILE),
    durability: Durability::Normal,
    migrations: &[SCHEMA_V1],
};

/// An open store, holding the writer lock when opened for writing.
pub struct Store {
    pub db: Db,
    pub dir: PathBuf,
}

impl From<StoreError> for IpamError {
    fn from(e: StoreError) -> IpamError {
        match e {
            StoreError::Io { path, source } => IpamError::DataDir { path, source },
            StoreError::Sql { path, source } => IpamError::Store { path, source },
            e @ StoreError::TooNew { .. } => IpamError::Io(e.to_string()),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for writing: takes the
    /// writer lock and makes sure the schema exists.
    pub fn open_for_write(dir: &Path) -> Result<Store, IpamError> {
        let db = Db::open(dir, &SPEC, Open::Create)?.ok_or_else(|| {
            IpamError::Io(format!("{}: store vanished while opening", dir.display()))
        })?;
        Ok(Store {
            db,
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing store to read, without the writer lock. `None`
    /// when there is no store in `dir`.
    pub fn open_for_read(dir: &Path) -> Result<Option<Store>, IpamError> {
        Ok(Db::open(dir, &SPEC, Open::Inspect)?.map(|db| Store {
            db,
            dir: dir.to_path_buf(),
        }))
    }

    pub fn begin(&mut self) -> Result<Transaction<'_>, IpamError> {
        let path = self.dir.join(DB_FILE);
        self.db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| IpamError::Store { path, source })
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }
}

/// Wraps rusqlite errors for one store path.
pub struct Sql<'a> {
    pub tx: &'a Transaction<'a>,
    pub path: &'a Path,
}

fn row_to_alloc(r: &rusqlite::Row<'_>) -> rusqlite::Result<Allocation> {
    let address: String = r.get("address")?;
    let range_set: Option<i64> = r.get("range_set")?;
    Ok(Allocation {
        address: address
            .parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        range_set: range_set.and_then(|n| usize::try_from(n).ok()),
        container_id: r.get("container_id")?,
        ifname: r.get("ifname")?,
        netns: r.get("netns")?,
        request: r.get("request")?,
        boot_id: r.get("boot_id")?,
        created_at: r.get("created_at")?,
    })
}

const COLUMNS: &str =
    "address, range_set, container_id, ifname, netns, request, boot_id, created_at";

impl Sql<'_> {
    fn err(&self, source: rusqlite::Error) -> IpamError {
        IpamError::Store {
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// Addresses held by one attachment. Records imported without an
    /// interface name belong to every interface of their container.
    pub fn held_by(&self, container: &str, ifname: &str) -> Result<Vec<Allocation>, IpamError> {
        let mut st = self
            .tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM allocations WHERE container_id = ?1 AND (ifname = ?2 OR ifname = '') ORDER BY range_set, key"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![container, ifname], row_to_alloc)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn holder_of(&self, addr: IpAddr) -> Result<Option<Allocation>, IpamError> {
        let mut st = self
            .tx
            .prepare_cached(&format!("SELECT {COLUMNS} FROM allocations WHERE key = ?1"))
            .map_err(|e| self.err(e))?;
        st.query_row(params![&key(addr)[..]], row_to_alloc)
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn insert(&self, a: &Allocation) -> Result<(), IpamError> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO allocations (key, address, range_set, container_id, ifname, netns, request, boot_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(|e| self.err(e))?;
        st.execute(params![
            &key(a.address)[..],
            a.address.to_string(),
            a.range_set.and_then(|n| i64::try_from(n).ok()),
            a.container_id,
            a.ifname,
            a.netns,
            a.request,
            a.boot_id,
            a.created_at
        ])
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Releases what one attachment holds; returns how many addresses.
    pub fn release(&self, container: &str, ifname: Option<&str>) -> Result<usize, IpamError> {
        let n = match ifname {
            Some(ifname) => self.tx.execute(
                "DELETE FROM allocations WHERE container_id = ?1 AND (ifname = ?2 OR ifname = '')",
                params![container, ifname],
            ),
            None => self.tx.execute(
                "DELETE FROM allocations WHERE container_id = ?1",
                params![container],
            ),
        };
        n.map_err(|e| self.err(e))
    }

    pub fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT address FROM last_reserved WHERE range_set = ?1")
            .map_err(|e| self.err(e))?;
        let s: Option<String> = st
            .query_row(params![i64::try_from(set).unwrap_or(i64::MAX)], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(s.and_then(|s| s.parse().ok()))
    }

    pub fn set_last_reserved(&self, set: usize, addr: IpAddr) -> Result<(), IpamError> {
        let mut st = self
            .tx
            .prepare_cached("INSERT OR REPLACE INTO last_reserved (range_set, key, address) VALUES (?1, ?2, ?3)")
            .map_err(|e| self.err(e))?;
        st.execute(params![
            i64::try_from(set).unwrap_or(i64::MAX),
            &key(addr)[..],
            addr.to_string()
        ])
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The first usable, unheld address of `range` in `[lo, hi]`. Walks
    /// the index from `lo` and stops at the first gap.
    pub fn find_free(&self, range: &Range, lo: u128, hi: u128) -> Result<Option<u128>, IpamError> {
        if lo > hi {
            return Ok(None);
        }
        let mut cand = lo;
        let skip_reserved = |mut c: u128| {
            while c <= hi && range.is_reserved(c) {
                c += 1;
            }
            c
        };
        cand = skip_reserved(cand);
        if cand > hi {
            return Ok(None);
        }
        let mut st = self
            .tx
            .prepare_cached(
                "SELECT key FROM allocations WHERE key >= ?1 AND key <= ?2 ORDER BY key",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st
            .query(params![&cand.to_be_bytes()[..], &hi.to_be_bytes()[..]])
            .map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let k: Vec<u8> = row.get(0).map_err(|e| self.err(e))?;
            let Ok(bytes) = <[u8; 16]>::try_from(k.as_slice()) else {
                continue;
            };
            let held = u128::from_be_bytes(bytes);
            if held > cand {
                return Ok(Some(cand));
            }
            if held == cand {
                cand = skip_reserved(cand + 1);
                if cand > hi {
                    return Ok(None);
                }
            }
        }
        Ok(if cand <= hi { Some(cand) } else { None })
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>, IpamError> {
        let mut st = self
            .tx
            .prepare_cached("SELECT value FROM meta WHERE name = ?1")
            .map_err(|e| self.err(e))?;
        st.query_row(params![name], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), IpamError> {
        self.tx
            .execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                params![name, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// After a reboot every pod of the previous boot is gone, so its
    /// addresses are leaks. Only rows stamped with another, known boot id
    /// are released: rows of this boot never are, and nothing happens when
    /// the boot id cannot be read. The check costs one indexed read unless
    /// the boot changed since the last call.
    pub fn reclaim_other_boots(&self, boot_id: &str) -> Result<usize, IpamError> {
        if boot_id.is_empty() {
            return Ok(0);
        }
        if self.meta("boot_id")?.as_deref() == Some(boot_id) {
            return Ok(0);
        }
        let n = self
            .tx
            .execute(
                "DELETE FROM allocations WHERE boot_id <> ?1 AND boot_id <> ''",
                params![boot_id],
            )
            .map_err(|e| self.err(e))?;
        self.set_meta("boot_id", boot_id)?;
        Ok(n)
    }

    /// Releases every allocation whose (container, ifname) is not in
    /// `valid`. Returns the released allocations.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<Allocation>, IpamError> {
        self.tx
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS gc_valid (container_id TEXT, ifname TEXT, PRIMARY KEY (container_id, ifname));
                 DELETE FROM gc_valid;",
            )
            .map_err(|e| self.err(e))?;
        {
            let mut ins = self
                .tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO gc_valid (container_id, ifname) VALUES (?1, ?2)",
                )
                .map_err(|e| self.err(e))?;
            for (c, i) in valid {
                ins.execute(params![c, i]).map_err(|e| self.err(e))?;
            }
        }
        let cond = "NOT EXISTS (SELECT 1 FROM gc_valid v WHERE v.container_id = a.container_id
                    AND (v.ifname = a.ifname OR a.ifname = ''))";
        let mut st = self
            .tx
            .prepare(&format!("SELECT {COLUMNS} FROM allocations a WHERE {cond}"))
            .map_err(|e| self.err(e))?;
        let gone = st
            .query_map([], row_to_alloc)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        self.tx
            .execute(&format!("DELETE FROM allocations AS a WHERE {cond}"), [])
            .map_err(|e| self.err(e))?;
        Ok(gone)
    }
}

/// Every allocation, ordered by address (for the operator CLI).
pub fn list_all(conn: &Connection, path: &Path) -> Result<Vec<Allocation>, IpamError> {
    let err = |source| IpamError::Store {
        path: path.to_path_buf(),
        source,
    };
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM allocations ORDER BY key"))
        .map_err(err)?;
    let rows = st.query_map([], row_to_alloc).map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// Turns a number back into an address of the range's family.
pub fn addr_of(range: &Range, n: u128) -> IpAddr {
    from_u128(n, range.is_v4())
}
