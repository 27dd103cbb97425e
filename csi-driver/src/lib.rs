//! `berth-csi`: a CSI driver (spec v1.10) serving Identity, Controller and
//! Node on one unix socket, over a local-disk storage engine (image files in
//! a pool directory, attached through loop devices) and a SQLite state store.
//!
//! Layout: one module per service ([`identity`], [`controller`], [`node`]),
//! the storage engine in [`engine`], records in [`state`], argument checks in
//! [`validate`], restart reconciliation in [`reconcile`], and the socket
//! server in [`server`]. Errors are typed ([`error::Error`]) and turned into
//! gRPC statuses in one place.

pub mod config;
pub mod controller;
pub mod engine;
pub mod error;
pub mod identity;
pub mod locks;
pub mod metrics;
pub mod nfs;
pub mod node;
pub mod reconcile;
pub mod server;
pub mod state;
pub mod validate;

use std::path::Path;
use std::sync::Arc;

use config::Config;
use engine::local::Pool;
use error::{Error, Result};
use locks::Locks;
use state::State;

/// Shared by every service: configuration, records, pool, locks.
pub struct Driver {
    /// Configuration.
    pub config: Config,
    /// Records.
    pub state: State,
    /// Image files.
    pub pool: Pool,
    /// In-flight operations.
    pub locks: Locks,
}

impl Driver {
    /// Opens the state store and the pool.
    pub fn open(mut config: Config) -> Result<Arc<Driver>> {
        config.validate()?;
        let state = State::open(&config.state_dir)?;
        let pool = Pool::open(&config.pool_dir)?;
        // The kernel reports loop backing files by their resolved path; keep
        // the pool's resolved path so they compare equal through symlinks.
        let pool = match std::fs::canonicalize(&config.pool_dir) {
            Ok(real) if real != config.pool_dir => {
                config.pool_dir = real;
                Pool::open(&config.pool_dir)?
            }
            _ => pool,
        };
        Ok(Arc::new(Driver {
            config,
            state,
            pool,
            locks: Locks::default(),
        }))
    }

    /// Directories no CO-supplied path may point into.
    pub fn own_dirs(&self) -> [&Path; 2] {
        [
            self.config.state_dir.as_path(),
            self.config.pool_dir.as_path(),
        ]
    }

    /// Lock key of a volume.
    pub fn vol_key(id: &str) -> String {
        format!("volume/{id}")
    }
}

/// Runs blocking engine work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
}

/// Nanoseconds since the epoch.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
