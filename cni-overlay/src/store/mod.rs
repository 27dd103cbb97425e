//! Where leases live. Three backends behind one trait: a directory holding a
//! SQLite database (the embedded default, for the nodes of one machine),
//! etcd v3, and the Kubernetes API (Nodes' pod CIDRs and annotations).

pub mod dir;
pub mod etcd;
pub mod kube;

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
    /// The subnets something else assigned to `node` (the kube store: the
    /// Node's `spec.podCIDRs`), waiting until they exist; None when this
    /// store lets the agent choose.
    fn assigned_subnets(
        &mut self,
        _node: &str,
    ) -> Result<Option<(ipnetwork::Ipv4Network, Option<ipnetwork::Ipv6Network>)>, OverlayError>
    {
        Ok(None)
    }
}

/// What opening a store may need besides its `--store` value.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// This node's name (the kube store writes its Node's annotations).
    pub node: String,
    /// `--kubeconfig` (the kube store, outside a pod).
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Opens a store from its `--store` value: `kube`, `dir:PATH` or
/// `etcd:URL[,URL]`.
pub fn open(
    spec: &str,
    key_prefix: &str,
    o: &OpenOptions,
) -> Result<Box<dyn LeaseStore>, OverlayError> {
    if spec == "kube" {
        return Ok(Box::new(kube::KubeStore::open(&kube::KubeOptions {
            kubeconfig: o.kubeconfig.clone(),
            node: o.node.clone(),
        })?));
    }
    if o.kubeconfig.is_some() {
        return Err(OverlayError::config(
            "--kubeconfig",
            format!("only the kube store uses a kubeconfig, and --store is {spec:?}"),
        ));
    }
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
        format!("{spec:?} is none of kube, dir:PATH, etcd:URL"),
    ))
}
