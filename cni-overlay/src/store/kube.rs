//! The Kubernetes API as the lease store, for clusters that have no etcd of
//! their own for the overlay (the model is flannel's kube subnet manager).
//!
//! The subnets are not chosen here: kube-controller-manager
//! (`--allocate-node-cidrs --cluster-cidr`) writes each Node's
//! `spec.podCIDRs`, dual-stack included. Each agent publishes how to reach
//! its pods as annotations on its own Node (`berth.dev/backend`,
//! `berth.dev/vtep-mac`, `berth.dev/public-ip`), and every agent watches the
//! Nodes: a Node with a pod CIDR and those annotations is a lease. A lease
//! never expires while its Node exists; deleting the Node removes the peer.
//! Stopping an agent leaves its annotations, so that a restart or an upgrade
//! does not take its pods off the network.
//!
//! The watch runs on a runtime thread of its own and keeps a cache of every
//! Node; the agent's synchronous calls read the cache. While the API server
//! cannot be reached the cache (and so the kernel state) stays as it was, and
//! the store reports itself unreachable until the watch is back, when the
//! watcher lists again and the agent resyncs.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnetwork::{Ipv4Network, Ipv6Network};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config};
use tokio::runtime::Runtime;

use crate::error::OverlayError;
use crate::lease::Lease;
use crate::store::LeaseStore;

/// The annotation naming the backend (always `vxlan` today).
pub const ANN_BACKEND: &str = "berth.dev/backend";
/// The annotation holding the MAC of the node's VXLAN device.
pub const ANN_VTEP_MAC: &str = "berth.dev/vtep-mac";
/// The annotation holding the node's underlay address.
pub const ANN_PUBLIC_IP: &str = "berth.dev/public-ip";
const BACKEND: &str = "vxlan";

/// How long `open` waits for the API server's first answer and the first
/// complete list of Nodes.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the wait for this node's pod CIDR says what it waits for.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// What the store needs to know about one Node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NodeView {
    v4: Option<Ipv4Network>,
    v6: Option<Ipv6Network>,
    /// The `berth.dev/` annotations only (the rest changes all the time and
    /// is none of our business).
    annotations: BTreeMap<String, String>,
}

impl NodeView {
    fn of(n: &Node) -> NodeView {
        let mut cidrs: Vec<String> = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default();
        if cidrs.is_empty() {
            if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
                cidrs.push(c);
            }
        }
        let v4 = cidrs.iter().find_map(|c| c.parse::<Ipv4Network>().ok());
        let v6 = cidrs.iter().find_map(|c| c.parse::<Ipv6Network>().ok());
        let annotations = n
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("berth.dev/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        NodeView {
            v4,
            v6,
            annotations,
        }
    }

    /// The lease this Node stands for, if it has a pod CIDR and a complete,
    /// well-formed set of annotations.
    fn lease(&self, name: &str) -> Option<Lease> {
        if self.annotations.get(ANN_BACKEND).map(String::as_str) != Some(BACKEND) {
            return None;
        }
        let mac = self.annotations.get(ANN_VTEP_MAC)?;
        host_net::netlink::parse_mac(mac)?;
        let public_ip: IpAddr = self.annotations.get(ANN_PUBLIC_IP)?.parse().ok()?;
        Some(Lease {
            node: name.to_string(),
            subnet: self.v4?,
            subnet6: self.v6,
            public_ip,
            vtep_mac: mac.to_ascii_lowercase(),
            // Valid as long as the Node exists.
            expires_at: i64::MAX / 2,
        })
    }
}

/// The annotations that publish `l`.
fn annotations_for(l: &Lease) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANN_BACKEND.to_string(), BACKEND.to_string()),
        (ANN_VTEP_MAC.to_string(), l.vtep_mac.to_ascii_lowercase()),
        (ANN_PUBLIC_IP.to_string(), l.public_ip.to_string()),
    ])
}

#[derive(Default)]
struct Cache {
    nodes: BTreeMap<String, NodeView>,
    /// A complete list has been received since the last error.
    synced: bool,
    /// The last watch error, until the watch works again.
    error: Option<String>,
    revision: u64,
}

impl Cache {
    fn bump(&mut self) {
        let mut h = DefaultHasher::new();
        self.nodes.hash(&mut h);
        self.revision = h.finish();
    }
}

type SharedCache = Arc<(Mutex<Cache>, Condvar)>;

fn lock(c: &SharedCache) -> MutexGuard<'_, Cache> {
    // A panicking watcher thread cannot leave the map half-written (every
    // update is one insert or one swap), so a poisoned lock is still usable.
    c.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the store reaches the API server.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// A kubeconfig file (for hosts outside the cluster); else `$KUBECONFIG`,
    /// else the pod's ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: the Node whose annotations the agent writes.
    pub node: String,
}

pub struct KubeStore {
    rt: Runtime,
    api: Api<Node>,
    server: String,
    node: String,
    cache: SharedCache,
    /// What this agent published, once it has.
    mine: Option<Lease>,
}

fn store_err(server: &str, msg: impl Into<String>) -> OverlayError {
    OverlayError::Store {
        store: format!("kube:{server}"),
        msg: msg.into(),
    }
}

/// An API error as the operator needs to read it: what is missing, not only
/// the status code.
fn explain(server: &str, what: &str, e: &kube::Error) -> OverlayError {
    let msg = match e {
        kube::Error::Api(s) if s.code == 401 => format!(
            "{what}: unauthorized (401): the credentials are not accepted by {server}: {}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => format!(
            "{what}: forbidden (403): berth-overlayd needs get, list, watch and patch on nodes \
             (the ClusterRole berth-cni in deploy/kubernetes): {}",
            s.message
        ),
        kube::Error::Api(s) => format!("{what}: {} ({}): {}", s.reason, s.code, s.message),
        other => format!("{what}: the API server at {server} is unreachable: {other}"),
    };
    store_err(server, msg)
}

async fn load_config(o: &KubeOptions) -> Result<Config, OverlayError> {
    let file = o
        .kubeconfig
        .clone()
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from));
    if let Some(path) = file {
        let kc = Kubeconfig::read_from(&path).map_err(|e| {
            OverlayError::config(
                "--kubeconfig",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        return Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| OverlayError::config("--kubeconfig", format!("{}: {e}", path.display())));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return Err(OverlayError::config(
            "--kubeconfig",
            "the kube store needs a kubeconfig: not running in a pod (KUBERNETES_SERVICE_HOST \
             is unset), and neither --kubeconfig nor $KUBECONFIG is given",
        ));
    }
    Config::incluster().map_err(|e| {
        OverlayError::config(
            "--kubeconfig",
            format!("the pod's ServiceAccount configuration cannot be used: {e}"),
        )
    })
}

/// Keeps `cache` equal to the API server's Nodes, for as long as the store
/// lives (the runtime's drop ends it).
async fn watch_nodes(api: Api<Node>, cache: SharedCache) {
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<BTreeMap<String, NodeView>> = None;
    while let Some(ev) = stream.next().await {
        let mut c = lock(&cache);
        match ev {
            Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(n)) => {
                if let (Some(l), Some(name)) = (listing.as_mut(), n.metadata.name.clone()) {
                    l.insert(name, NodeView::of(&n));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listing.take() {
                    c.nodes = l;
                }
                c.synced = true;
                c.error = None;
                c.bump();
            }
            Ok(watcher::Event::Apply(n)) => {
                if let Some(name) = n.metadata.name.clone() {
                    c.nodes.insert(name, NodeView::of(&n));
                }
                c.error = None;
                c.bump();
            }
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = n.metadata.name.as_deref() {
                    c.nodes.remove(name);
                }
                c.bump();
            }
            Err(e) => c.error = Some(e.to_string()),
        }
        drop(c);
        cache.1.notify_all();
    }
}

impl KubeStore {
    /// Connects, checks that this agent may read Nodes, and waits for the
    /// first complete list. Fails (rather than waiting) when the API server
    /// cannot be reached or refuses us.
    pub fn open(o: &KubeOptions) -> Result<KubeStore, OverlayError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("berth-kube")
            .enable_all()
            .build()
            .map_err(|e| {
                OverlayError::Io(format!("starting the Kubernetes client runtime: {e}"))
            })?;
        let mut config = rt.block_on(load_config(o))?;
        config.connect_timeout = Some(Duration::from_secs(3));
        let server = config.cluster_url.to_string();
        let server = server.trim_end_matches('/').to_string();
        let client = {
            let _guard = rt.enter();
            Client::try_from(config).map_err(|e| store_err(&server, format!("client: {e}")))?
        };
        let api: Api<Node> = Api::all(client);
        let probe = rt
            .block_on(async { tokio::time::timeout(STARTUP_TIMEOUT, api.get_opt(&o.node)).await });
        match probe {
            Err(_) => {
                return Err(store_err(
                    &server,
                    format!("the API server at {server} did not answer within {STARTUP_TIMEOUT:?}"),
                ))
            }
            Ok(Err(e)) => return Err(explain(&server, &format!("get node {}", o.node), &e)),
            Ok(Ok(_)) => {}
        }
        let cache: SharedCache = Arc::new((Mutex::new(Cache::default()), Condvar::new()));
        rt.spawn(watch_nodes(api.clone(), cache.clone()));
        let store = KubeStore {
            rt,
            api,
            server,
            node: o.node.clone(),
            cache,
            mine: None,
        };
        store.wait_synced(STARTUP_TIMEOUT)?;
        Ok(store)
    }

    fn wait_synced(&self, timeout: Duration) -> Result<(), OverlayError> {
        let deadline = Instant::now() + timeout;
        let mut c = lock(&self.cache);
        loop {
            if c.synced {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = c.error.clone().unwrap_or_else(|| "no answer".into());
                return Err(store_err(
                    &self.server,
                    format!("cannot list and watch nodes: {why}"),
                ));
            }
            c = self
                .cache
                .1
                .wait_timeout(c, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// This node as the cache has it.
    fn own(&self) -> Option<NodeView> {
        lock(&self.cache).nodes.get(&self.node).cloned()
    }

    fn publish(&self, l: &Lease) -> Result<(), OverlayError> {
        let patch = serde_json::json!({ "metadata": { "annotations": annotations_for(l) } });
        let params = PatchParams::default();
        let r = self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                self.api.patch(&self.node, &params, &Patch::Merge(&patch)),
            )
            .await
        });
        match r {
            Err(_) => Err(store_err(
                &self.server,
                format!("patching node {}: no answer within 10 s", self.node),
            )),
            Ok(Err(e)) => Err(explain(
                &self.server,
                &format!("patch node {}", self.node),
                &e,
            )),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Puts our annotations back if someone changed or removed them.
    fn repair_own(&mut self) -> Result<(), OverlayError> {
        let Some(mine) = self.mine.clone() else {
            return Ok(());
        };
        let Some(own) = self.own() else {
            return Ok(());
        };
        let want = annotations_for(&mine);
        if own.annotations != want {
            eprintln!(
                "berth-overlayd: the berth.dev/ annotations of node {} were changed ({:?}): restoring them",
                self.node, own.annotations
            );
            self.publish(&mine)?;
        }
        Ok(())
    }
}

impl LeaseStore for KubeStore {
    fn list(&mut self) -> Result<(Vec<Lease>, u64), OverlayError> {
        let (leases, rev) = {
            let c = lock(&self.cache);
            if let Some(e) = &c.error {
                return Err(store_err(&self.server, e.clone()));
            }
            if !c.synced {
                return Err(store_err(&self.server, "the node list is not synced yet"));
            }
            let leases: Vec<Lease> = c
                .nodes
                .iter()
                .filter_map(|(name, v)| v.lease(name))
                .collect();
            (leases, c.revision)
        };
        self.repair_own()?;
        Ok((leases, rev))
    }

    fn assigned_subnets(
        &mut self,
        node: &str,
    ) -> Result<Option<(Ipv4Network, Option<Ipv6Network>)>, OverlayError> {
        let stop = berth_common::signals::stop_flag();
        let mut next_log = Instant::now();
        loop {
            let view = lock(&self.cache).nodes.get(node).cloned();
            match view {
                Some(NodeView {
                    v4: Some(v4), v6, ..
                }) => return Ok(Some((v4, v6))),
                Some(NodeView { v6: Some(_), .. }) => {
                    return Err(OverlayError::config(
                        "--store",
                        format!(
                            "node {node} has only an IPv6 pod CIDR; the overlay needs an IPv4 one"
                        ),
                    ))
                }
                other => {
                    if Instant::now() >= next_log {
                        if other.is_none() {
                            eprintln!("berth-overlayd: waiting for Node {node} to be registered with the API server");
                        } else {
                            eprintln!(
                                "berth-overlayd: waiting for Node {node} to get spec.podCIDRs \
                                 (from kube-controller-manager --allocate-node-cidrs --cluster-cidr)"
                            );
                        }
                        next_log = Instant::now() + WAIT_LOG_EVERY;
                    }
                }
            }
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(OverlayError::Io(format!(
                    "stopped while waiting for node {node}'s pod CIDR"
                )));
            }
            let c = lock(&self.cache);
            let _ = self.cache.1.wait_timeout(c, Duration::from_millis(500));
        }
    }

    fn try_acquire(&mut self, lease: &Lease) -> Result<bool, OverlayError> {
        if lease.node != self.node {
            return Err(store_err(
                &self.server,
                format!(
                    "this store publishes node {} only, not {}",
                    self.node, lease.node
                ),
            ));
        }
        let own = self.own();
        if own.as_ref().and_then(|v| v.v4) != Some(lease.subnet) {
            return Ok(false);
        }
        self.publish(lease)?;
        self.mine = Some(lease.clone());
        Ok(true)
    }

    fn renew(&mut self, lease: &Lease) -> Result<(), OverlayError> {
        let own = self.own();
        match own.as_ref().and_then(|v| v.v4) {
            Some(s) if s == lease.subnet => {}
            other => {
                return Err(OverlayError::LeaseLost {
                    subnet: lease.subnet.to_string(),
                    holder: match other {
                        Some(s) => format!("spec.podCIDRs of node {}, now {s}", self.node),
                        None => format!("nobody: node {} is gone", self.node),
                    },
                })
            }
        }
        self.mine = Some(lease.clone());
        self.repair_own()
    }

    fn release(&mut self, _lease: &Lease) -> Result<(), OverlayError> {
        // The subnet belongs to the Node, not to this process: peers keep
        // their routes until the Node is deleted, so a restart or upgrade of
        // the agent costs the pods nothing.
        Ok(())
    }

    fn wait_change(&mut self, since: u64, timeout: Duration) -> Result<u64, OverlayError> {
        let deadline = Instant::now() + timeout;
        let mut c = lock(&self.cache);
        loop {
            if let Some(e) = &c.error {
                return Err(store_err(&self.server, e.clone()));
            }
            if c.revision != since {
                return Ok(c.revision);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(c.revision);
            }
            c = self
                .cache
                .1
                .wait_timeout(c, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn describe(&self) -> String {
        format!("kube:{}", self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn node(cidrs: &[&str], ann: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .chain([("other.io/x".to_string(), "y".to_string())])
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(cidrs.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            status: None,
        }
    }

    const FULL: [(&str, &str); 3] = [
        (ANN_BACKEND, "vxlan"),
        (ANN_VTEP_MAC, "02:AA:bb:cc:dd:ee"),
        (ANN_PUBLIC_IP, "172.31.0.1"),
    ];

    #[test]
    fn a_node_with_cidrs_and_annotations_is_a_lease() {
        let v = NodeView::of(&node(&["10.244.3.0/24", "fd00:244:0:3::/64"], &FULL));
        let l = v.lease("n1").expect("a lease");
        assert_eq!(l.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(
            l.subnet6.map(|s| s.to_string()).as_deref(),
            Some("fd00:244:0:3::/64")
        );
        assert_eq!(l.vtep_mac, "02:aa:bb:cc:dd:ee");
        assert_eq!(l.public_ip.to_string(), "172.31.0.1");
        assert!(!v.annotations.contains_key("other.io/x"));
        assert_eq!(
            annotations_for(&l),
            v.annotations
                .clone()
                .into_iter()
                .map(|(k, v)| (k, v.to_ascii_lowercase()))
                .collect()
        );
    }

    #[test]
    fn incomplete_or_foreign_nodes_are_not_leases() {
        assert!(NodeView::of(&node(&[], &FULL)).lease("n1").is_none());
        assert!(NodeView::of(&node(&["10.244.3.0/24"], &FULL[..2]))
            .lease("n1")
            .is_none());
        let mut bad_mac = FULL;
        bad_mac[1].1 = "not-a-mac";
        assert!(NodeView::of(&node(&["10.244.3.0/24"], &bad_mac))
            .lease("n1")
            .is_none());
        let mut other_backend = FULL;
        other_backend[0].1 = "host-gw";
        assert!(NodeView::of(&node(&["10.244.3.0/24"], &other_backend))
            .lease("n1")
            .is_none());
    }

    #[test]
    fn revision_ignores_what_is_not_ours() {
        let mut c = Cache::default();
        c.nodes
            .insert("n1".into(), NodeView::of(&node(&["10.244.3.0/24"], &FULL)));
        c.bump();
        let r = c.revision;
        // Another unrelated annotation changes nothing we keep.
        let mut n = node(&["10.244.3.0/24"], &FULL);
        if let Some(a) = n.metadata.annotations.as_mut() {
            a.insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
        }
        c.nodes.insert("n1".into(), NodeView::of(&n));
        c.bump();
        assert_eq!(c.revision, r);
        c.nodes.insert(
            "n1".into(),
            NodeView::of(&node(&["10.244.3.0/24"], &FULL[..2])),
        );
        c.bump();
        assert_ne!(c.revision, r);
    }
}
