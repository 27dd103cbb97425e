//! Where leases live. Two backends behind one trait: a directory holding a
//! SQLite database (the embedded default, for the nodes of one machine) and
//! etcd v3 (real clusters).

pub mod dir;
pub mod etcd;

use std::time::Duration;

use crate::error::OverlayError;
use crate::lease::Lease;

pub trait LeaseStore: Send {
    /// Every unexpired lease and a revision that changes whenever the set of
    /// leases does.
    fn list(&mut self) -> Result<(Vec<Lease>, u64), OverlayError>;
    /// Takes `lease.subnet` for `lease.node` if it is free, expired or already
    /// this node's (compare-and-swap). Ok(false) when another node holds it.
    fn try_acquire(&mut self, lease: &Lease) -> Result<bool, OverlayError>;
    /// Extends this node's lease; `LeaseLost` if it is no longer ours.
    fn renew(&mut self, lease: &Lease) -> Result<(), OverlayError>;
    /// Gives the subnet back.
    fn release(&mut self, lease: &Lease) -> Result<(), OverlayError>;
    /// Returns when the revision differs from `since`, or after `timeout`.
    fn wait_change(&mut self, since: u64, timeout: Duration) -> Result<u64, OverlayError>;
    /// A name for messages.
    fn describe(&self) -> String;
}

/// Opens a store from its `--store` value: `dir:PATH` or `etcd:URL[,URL]`.
pub fn open(spec: &str, key_prefix: &str) -> Result<Box<dyn LeaseStore>, OverlayError> {
    if let Some(path) = spec.strip_prefix("dir:") {
        if path.is_empty() {
            return Err(OverlayError::config(
                "--store",
                "dir: needs a path, e.g. dir:/var/lib/berth/overlay",
            ));
        }
        return Ok(Box::new(dir::DirStore::open(
            std::path::Path::new(path),
            key_prefix,
        )?));
    }
    if let Some(urls) = spec.strip_prefix("etcd:") {
        let endpoints: Vec<String> = urls
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if endpoints.is_empty() {
            return Err(OverlayError::config(
                "--store",
                "etcd: needs at least one URL, e.g. etcd:http://10.0.0.1:2379",
            ));
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(OverlayError::config(
                    "--store",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        return Ok(Box::new(etcd::EtcdStore::open(&endpoints, key_prefix)?));
    }
    Err(OverlayError::config(
        "--store",
        format!("{spec:?} is neither dir:PATH nor etcd:URL"),
    ))
}
