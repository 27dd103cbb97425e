//! The context every layer shares: configuration, records, in-flight locks.
//! It knows no backend; each backend keeps its own resources (the local
//! pool, NFS sessions) beside a handle to this.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::locks::Locks;
use crate::state::State;

/// Shared by every service and backend: configuration, records, locks.
pub struct Driver {
    /// Configuration.
    pub config: Config,
    /// Records.
    pub state: State,
    /// In-flight operations.
    pub locks: Locks,
}

impl Driver {
    /// Checks the configuration, opens the state store and makes sure the
    /// pool directory exists (so its resolved path can be kept).
    pub fn open(mut config: Config) -> Result<Arc<Driver>> {
        config.validate()?;
        let state = State::open(&config.state_dir)?;
        std::fs::create_dir_all(&config.pool_dir)
            .map_err(|e| Error::io(format!("creating {}", config.pool_dir.display()), e))?;
        // The kernel reports loop backing files by their resolved path; keep
        // the pool's resolved path so they compare equal through symlinks.
        if let Ok(real) = std::fs::canonicalize(&config.pool_dir) {
            config.pool_dir = real;
        }
        Ok(Arc::new(Driver {
            config,
            state,
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

/// Runs blocking work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Whether this process runs as root (reserved NFS source ports, tests).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}
