//! The NFS backend's type: a handle to the shared driver (it opens
//! nothing until a call).

use std::sync::Arc;

use crate::driver::Driver;

/// The StorageClass `backend` value of this backend.
pub const NAME: &str = "nfs";

/// The NFS backend. Derefs to the shared [`Driver`].
pub struct NfsBackend {
    driver: Arc<Driver>,
}

impl std::ops::Deref for NfsBackend {
    type Target = Driver;
    fn deref(&self) -> &Driver {
        &self.driver
    }
}

impl NfsBackend {
    /// The backend over the shared driver (it opens nothing until a call).
    pub fn new(driver: Arc<Driver>) -> NfsBackend {
        NfsBackend { driver }
    }
}
