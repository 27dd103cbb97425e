//! How every Berth store opens its SQLite database, written once: the
//! address store (`berth-host-local`), the attachment records
//! (`berth-bridge`, `berth-overlay`), the embedded lease store
//! (`berth-overlayd`) and the CSI driver's state.
//!
//! The rules, each with its reason:
//! - **Lock file.** Short-lived plugin processes serialize on an exclusive
//!   `flock` of a file beside the database: the kernel hands it to the next
//!   waiter the moment the holder exits, even on SIGKILL, so no stale lock
//!   survives a crash. A store either holds it from the moment its
//!   connection is open until it is dropped ([`Lock::WhileOpen`], writers
//!   of one short transaction), around each of its writes
//!   ([`Lock::PerWrite`], a plugin that writes a few times during one run
//!   and should not hold other plugins up in between), or only while a
//!   migration sets the journal and schema up ([`Lock::WhileSettingUp`],
//!   long-lived daemons that then rely on SQLite's own locking). The
//!   connection is opened before the lock is taken (see [`Db::open`]).
//! - **WAL journal**, set once per file before the first transaction:
//!   readers never block the writer, and a crash never loses a commit.
//! - **Busy timeout** [`BUSY_TIMEOUT`].
//! - **Schema version** in `PRAGMA user_version`; `migrations[i]` takes a
//!   database from version `i` to `i + 1`, each in one IMMEDIATE
//!   transaction with the version bump; a database newer than the code is
//!   refused rather than misread.
//! - **Checkpoints**: SQLite would checkpoint the WAL (two fsyncs) whenever
//!   the last connection closes, that is at every plugin exit. Instead the
//!   close checkpoints only once the WAL has grown past
//!   [`WAL_CHECKPOINT_BYTES`], which keeps both exits and the next opener's
//!   WAL recovery cheap; SQLite's automatic checkpoint still runs during a
//!   long-lived connection.
//! - **Compile-time options** of the bundled SQLite (no up-front page cache
//!   block, no allocation statistics) are set for the whole workspace in
//!   `.cargo/config.toml`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// How long a statement waits for another connection's lock before failing.
///
/// Writers are serialized by the lock file first, so SQLite only makes a
/// connection wait for a checkpoint, a reader such as an operator's
/// `sqlite3`, or a daemon's transaction: each well under a second. Thirty
/// seconds covers the worst pile-up seen in tests (hundreds of concurrent
/// plugin processes on two cores) and still fails with an error that names
/// the database well before kubelet's CRI request timeout (two minutes)
/// would abandon the call without one.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Above this size the WAL is folded back into the database on close.
pub const WAL_CHECKPOINT_BYTES: u64 = 256 * 1024;

/// When the lock file is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// From open until the handle is dropped: one writer at a time.
    WhileOpen(&'static str),
    /// While a migration sets the journal mode and the schema up, then
    /// around each write the caller brackets with [`Db::write_lock`]. One
    /// connection serves the whole run: its later opens would each pay
    /// SQLite's start-up and WAL index rebuild again.
    PerWrite(&'static str),
    /// Only while a migration sets the journal mode and the schema up.
    WhileSettingUp(&'static str),
    /// Never: one process owns the database.
    None,
}

/// How much a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: an application crash loses nothing, a power
    /// loss can drop the last commits. For records of pods that die with
    /// the machine.
    Normal,
    /// `synchronous=FULL`: every commit is on disk when it returns. For
    /// records that outlive a power loss (volumes).
    Full,
}

/// What a store is: its file names, schema history and policies.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Database file name inside the store's directory.
    pub db_file: &'static str,
    pub lock: Lock,
    pub durability: Durability,
    /// `migrations[i]` upgrades version `i` to `i + 1`; the current version
    /// is `migrations.len()`.
    pub migrations: &'static [&'static str],
}

/// What the caller intends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Create the directory and the database if missing; migrate.
    Create,
    /// Open only if the database exists (else `Ok(None)`); migrate.
    Existing,
    /// Open only if it exists, never take the lock or migrate: for
    /// inspection while plugins keep working.
    Inspect,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: schema version {found} is newer than this program understands ({known})", path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

impl StoreError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Sql { path, .. }
            | StoreError::TooNew { path, .. } => path,
        }
    }

    /// What went wrong, without the path (for callers that name the file
    /// their own way).
    pub fn detail(&self) -> String {
        match self {
            StoreError::Io { source, .. } => source.to_string(),
            StoreError::Sql { source, .. } => source.to_string(),
            StoreError::TooNew { found, known, .. } => {
                format!("schema version {found} is newer than this program understands ({known})")
            }
        }
    }
}

/// An open database, holding its lock as the [`Spec`] says.
pub struct Db {
    pub conn: Connection,
    path: PathBuf,
    // Held for its flock; released when the handle drops, after the checkpoint.
    lock: Option<File>,
    // Lock::PerWrite: the lock file, open and unlocked between writes.
    per_write: Option<(File, PathBuf)>,
    // Inspecting handles leave the WAL to the writers.
    checkpoint_on_close: bool,
}

impl Db {
    /// Opens the store `spec` in `dir`. `Ok(None)` only for [`Open::Existing`]
    /// and [`Open::Inspect`] when there is no database yet.
    ///
    /// The connection is opened, and the schema version read, before the
    /// lock file is taken: opening a WAL database while no other connection
    /// has it open rebuilds its index from the whole WAL, and done under the
    /// lock that work would hold every other plugin on the host up. Waiting
    /// for the lock with the connection open also keeps the index valid for
    /// the next opener. The lock is taken for setup only when the schema
    /// needs a migration, which re-reads the version under it.
    pub fn open(dir: &Path, spec: &Spec, how: Open) -> Result<Option<Db>, StoreError> {
        let path = dir.join(spec.db_file);
        if how != Open::Create && !path.exists() {
            return Ok(None);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        if how == Open::Create {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let lock_file = match (spec.lock, how) {
            (_, Open::Inspect) | (Lock::None, _) => None,
            (Lock::WhileOpen(name) | Lock::PerWrite(name) | Lock::WhileSettingUp(name), _) => {
                let lock_path = dir.join(name);
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(io(&lock_path))?;
                Some((f, lock_path))
            }
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if how == Open::Create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Sql {
            path: path.clone(),
            source,
        })?;
        let mut db = Db {
            conn,
            path,
            lock: None,
            per_write: None,
            checkpoint_on_close: how != Open::Inspect,
        };
        let migrate = !db.configure(spec)? && how != Open::Inspect;
        let Some((file, lock_path)) = lock_file else {
            if migrate {
                db.migrate(spec)?;
            }
            return Ok(Some(db));
        };
        if let Lock::WhileOpen(_) = spec.lock {
            file.lock().map_err(io(&lock_path))?;
            if migrate {
                db.migrate(spec)?;
            }
            db.lock = Some(file);
            return Ok(Some(db));
        }
        if migrate {
            file.lock().map_err(io(&lock_path))?;
            let migrated = db.migrate(spec);
            file.unlock().map_err(io(&lock_path))?;
            migrated?;
        }
        if let Lock::PerWrite(_) = spec.lock {
            db.per_write = Some((file, lock_path));
        }
        Ok(Some(db))
    }

    /// Connection settings, then the schema version: whether it is current.
    /// A database newer than the code is refused.
    fn configure(&self, spec: &Spec) -> Result<bool, StoreError> {
        let sql = |e| self.err(e);
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        let sync = match spec.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        self.conn
            .pragma_update(None, "synchronous", sync)
            .map_err(sql)?;
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(sql)?;
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        is_current(&self.path, found, spec)
    }

    /// WAL journal and the missing schema steps, in one IMMEDIATE
    /// transaction with the version bump.
    fn migrate(&mut self, spec: &Spec) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sql {
            path: path.clone(),
            source,
        };
        let conn = &mut self.conn;
        let _: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Re-read inside the transaction: another process may have migrated
        // while this one waited for the write lock.
        let mut version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        is_current(&path, version, spec)?;
        for step in spec
            .migrations
            .iter()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(step).map_err(sql)?;
            version += 1;
        }
        tx.pragma_update(None, "user_version", version)
            .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps a rusqlite error with this database's path.
    pub fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// For [`Lock::PerWrite`] stores: the lock file's flock, held until the
    /// guard drops; bracket each write transaction with it. None for other
    /// stores (they hold the lock already, or rely on SQLite's locking) and
    /// for inspecting handles.
    pub fn write_lock(&self) -> Result<Option<WriteLock<'_>>, StoreError> {
        let Some((file, path)) = &self.per_write else {
            return Ok(None);
        };
        file.lock().map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Some(WriteLock { file }))
    }

    /// Checkpoints and truncates the WAL if it grew past [`WAL_CHECKPOINT_BYTES`].
    /// Best effort: a busy database is simply checkpointed by a later process.
    pub fn checkpoint_if_large(&self) {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let big = std::fs::metadata(&wal)
            .map(|m| m.len() > WAL_CHECKPOINT_BYTES)
            .unwrap_or(false);
        if big {
            // A checkpoint is a write: under the lock, as the others.
            let _guard = self.write_lock();
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
}

/// Whether a database at schema version `found` is current for `spec`
/// (else it needs migrating); one newer than the code is refused.
fn is_current(path: &Path, found: i64, spec: &Spec) -> Result<bool, StoreError> {
    let known = i64::try_from(spec.migrations.len()).unwrap_or(i64::MAX);
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    Ok(found == known)
}

/// The flock of a [`Lock::PerWrite`] store, released on drop.
pub struct WriteLock<'a> {
    file: &'a File,
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        // Closing the store or exiting releases it too.
        let _ = self.file.unlock();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.checkpoint_on_close {
            self.checkpoint_if_large();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "CREATE TABLE t (a INTEGER PRIMARY KEY);";
    const V2: &str = "ALTER TABLE t ADD COLUMN b TEXT NOT NULL DEFAULT '';";

    fn spec(migrations: &'static [&'static str]) -> Spec {
        with_lock(Lock::WhileOpen("x.lock"), migrations)
    }

    fn with_lock(lock: Lock, migrations: &'static [&'static str]) -> Spec {
        Spec {
            db_file: "x.db",
            lock,
            durability: Durability::Normal,
            migrations,
        }
    }

    fn version(db: &Db) -> i64 {
        db.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn creates_migrates_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        assert!(Db::open(&sub, &spec(&[V1]), Open::Existing)
            .unwrap()
            .is_none());
        let db = Db::open(&sub, &spec(&[V1]), Open::Create).unwrap().unwrap();
        assert_eq!(version(&db), 1);
        let mode: String = db
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        db.conn.execute("INSERT INTO t (a) VALUES (7)", []).unwrap();
        drop(db);
        // An upgrade keeps the rows and applies only the missing step.
        let db = Db::open(&sub, &spec(&[V1, V2]), Open::Existing)
            .unwrap()
            .unwrap();
        assert_eq!(version(&db), 2);
        let b: String = db
            .conn
            .query_row("SELECT b FROM t WHERE a = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(b, "");
        drop(db);
        // Older code meets a newer database: refused, naming the file.
        let e = Db::open(&sub, &spec(&[V1]), Open::Create).err().unwrap();
        assert!(
            matches!(
                e,
                StoreError::TooNew {
                    found: 2,
                    known: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("x.db"), "{e}");
    }

    #[test]
    fn inspect_takes_no_lock_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Db::open(dir.path(), &spec(&[V1]), Open::Create)
            .unwrap()
            .unwrap();
        // The writer holds the lock; an inspecting open must not wait for it.
        let reader = Db::open(dir.path(), &spec(&[V1, V2]), Open::Inspect)
            .unwrap()
            .unwrap();
        assert_eq!(version(&reader), 1);
        drop(writer);
    }

    #[test]
    fn lock_while_open_serializes_writers() {
        let dir = tempfile::tempdir().unwrap();
        let first = Db::open(dir.path(), &spec(&[V1]), Open::Create)
            .unwrap()
            .unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _second = Db::open(&path, &spec(&[V1]), Open::Existing)
                .unwrap()
                .unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "second writer got in while the first held the lock"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn lock_while_setting_up_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = with_lock(Lock::WhileSettingUp("x.lock"), &[V1]);
        let _a = Db::open(dir.path(), &s, Open::Create).unwrap().unwrap();
        // Would block forever if the first handle still held the lock.
        let _b = Db::open(dir.path(), &s, Open::Create).unwrap().unwrap();
    }

    #[test]
    fn lock_per_write_is_held_only_around_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = with_lock(Lock::PerWrite("x.lock"), &[V1]);
        let a = Db::open(dir.path(), &s, Open::Create).unwrap().unwrap();
        // Open, a second handle sets up without waiting for the first.
        let b = Db::open(dir.path(), &s, Open::Existing).unwrap().unwrap();
        let guard = a.write_lock().unwrap().expect("a write lock");
        a.conn.execute("INSERT INTO t (a) VALUES (1)", []).unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let c = Db::open(&path, &s, Open::Existing).unwrap().unwrap();
            let _g = c.write_lock().unwrap().expect("a write lock");
            tx.send(()).unwrap();
        });
        // c opens without waiting (its schema is current), then waits for the lock.
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a second writer got the lock during a write"
        );
        drop(guard);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        // The row is there for every handle; inspecting handles get no lock.
        let n: i64 = b
            .conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let i = Db::open(dir.path(), &s, Open::Inspect).unwrap().unwrap();
        assert!(i.write_lock().unwrap().is_none());
    }

    #[test]
    fn current_schema_opens_while_a_writer_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = with_lock(Lock::PerWrite("x.lock"), &[V1]);
        let a = Db::open(dir.path(), &s, Open::Create).unwrap().unwrap();
        let _guard = a.write_lock().unwrap().expect("a write lock");
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let b = Db::open(&path, &s, Open::Existing).unwrap().unwrap();
            tx.send(version(&b)).unwrap();
        });
        // Nothing to migrate: the open must not wait for a's write.
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1));
        t.join().unwrap();
    }

    #[test]
    fn concurrent_first_opens_migrate_once() {
        for lock in [Lock::WhileOpen("x.lock"), Lock::PerWrite("x.lock")] {
            let dir = tempfile::tempdir().unwrap();
            let s = with_lock(lock, &[V1, V2]);
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let path = dir.path().join("sub");
                    std::thread::spawn(move || {
                        let db = Db::open(&path, &s, Open::Create).unwrap().unwrap();
                        let _g = db.write_lock().unwrap();
                        db.conn
                            .execute("INSERT INTO t (a, b) VALUES (?1, 'x')", [i])
                            .unwrap();
                        version(&db)
                    })
                })
                .collect();
            for t in threads {
                assert_eq!(t.join().unwrap(), 2, "{lock:?}");
            }
            let db = Db::open(&dir.path().join("sub"), &s, Open::Inspect)
                .unwrap()
                .unwrap();
            let n: i64 = db
                .conn
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 8, "{lock:?}: a row was lost");
            let mode: String = db
                .conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal", "{lock:?}");
        }
    }

    #[test]
    fn large_wal_is_truncated_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &spec(&[V1]), Open::Create)
            .unwrap()
            .unwrap();
        db.conn
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE big (x BLOB);")
            .unwrap();
        for _ in 0..100 {
            db.conn
                .execute("INSERT INTO big VALUES (zeroblob(8192))", [])
                .unwrap();
        }
        let wal = dir.path().join("x.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > WAL_CHECKPOINT_BYTES);
        drop(db);
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    }
}
