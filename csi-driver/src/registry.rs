//! The one place a backend is chosen: by the prefix of a volume or snapshot
//! id for calls on an existing object, by the StorageClass parameter
//! `backend` for CreateVolume and GetCapacity. Backends are registered in
//! [`Registry::open`], one line each; the first is the default.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::local::LocalBackend;
use crate::backend::nfs::NfsBackend;
use crate::backend::{self, Backend};
use crate::driver::Driver;
use crate::error::Result;

/// The registered backends.
pub struct Registry {
    /// In registration order; never empty, the first is the default.
    backends: Vec<Arc<dyn Backend>>,
}

impl Registry {
    /// Opens every backend over the shared driver.
    pub fn open(d: &Arc<Driver>) -> Result<Registry> {
        let backends: Vec<Arc<dyn Backend>> = vec![
            Arc::new(LocalBackend::open(d.clone())?),
            Arc::new(NfsBackend::new(d.clone())),
        ];
        let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
        backend::set_registered(names.join(", "));
        Ok(Registry { backends })
    }

    fn default_backend(&self) -> &Arc<dyn Backend> {
        &self.backends[0]
    }

    /// The backend of a volume id: the one whose prefix it has, otherwise
    /// the default (which answers ids it never issued with NOT_FOUND, or OK
    /// for the idempotent calls).
    pub fn for_volume_id(&self, id: &str) -> &Arc<dyn Backend> {
        self.backends
            .iter()
            .find(|b| b.owns_volume_id(id))
            .unwrap_or(self.default_backend())
    }

    /// The backend of a snapshot id, like [`Registry::for_volume_id`].
    pub fn for_snapshot_id(&self, id: &str) -> &Arc<dyn Backend> {
        self.backends
            .iter()
            .find(|b| b.owns_snapshot_id(id))
            .unwrap_or(self.default_backend())
    }

    /// The backend StorageClass parameters select with `backend` (none: the
    /// default). A name no backend has selects the default too, whose
    /// parameter check refuses it in its turn (after the name, capability
    /// and range checks), naming the registered backends.
    pub fn for_parameters(&self, map: &HashMap<String, String>) -> &Arc<dyn Backend> {
        map.get("backend")
            .and_then(|name| self.backends.iter().find(|b| b.name() == name))
            .unwrap_or(self.default_backend())
    }

    /// Start-up reconciliation of every backend (blocking).
    pub fn reconcile(&self) -> Result<()> {
        for b in &self.backends {
            b.reconcile()?;
        }
        Ok(())
    }

    /// Whether every backend's storage is usable.
    pub fn healthy(&self) -> bool {
        self.backends.iter().all(|b| b.healthy())
    }
}
