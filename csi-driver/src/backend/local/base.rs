//! The local backend's type: the shared driver and the pool. Every other
//! module of the backend works on it.

use std::sync::Arc;

use super::pool::Pool;
use crate::driver::{blocking, Driver};
use crate::error::Result;

/// The StorageClass `backend` value of this backend (also the default).
pub const NAME: &str = "local";

/// The local backend: the shared driver and the pool. Derefs to the
/// [`Driver`] (configuration, records, locks), so its code reads
/// `d.state`, `d.config`, `d.pool`.
#[derive(Clone)]
pub struct LocalBackend {
    driver: Arc<Driver>,
    /// Image files.
    pub pool: Pool,
}

impl std::ops::Deref for LocalBackend {
    type Target = Driver;
    fn deref(&self) -> &Driver {
        &self.driver
    }
}

impl LocalBackend {
    /// Opens (creating) the pool at `--local-pool`.
    pub fn open(driver: Arc<Driver>) -> Result<LocalBackend> {
        let pool = Pool::open(&driver.config.pool_dir)?;
        Ok(LocalBackend { driver, pool })
    }

    /// Runs blocking work with this backend on the blocking pool.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalBackend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        blocking(move || f(&me)).await
    }
}
