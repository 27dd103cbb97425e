//! `berth-overlayd`: lease a subnet, own the VXLAN device, keep every peer
//! programmed, repair drift, renew, and give the subnet back on shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use host_net::netlink::{mac_to_string, parse_mac, Netlink};
use ipnetwork::IpNetwork;

use crate::error::OverlayError;
use crate::lease::{now, stable_mac, Lease, NetworkPlan};
use crate::pod_mtu::{MtuContext, PodMtu};
use crate::store::LeaseStore;
use crate::subnet_file::SubnetInfo;
use crate::vxlan::{self, DeviceSpec, KernelView, PeerPath};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub plan: NetworkPlan,
    pub iface: Option<String>,
    pub public_ip: Option<IpAddr>,
    pub vni: u32,
    pub port: u16,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub resync: Duration,
    /// DirectRouting: peers on a subnet directly connected to the underlay
    /// interface get a plain route via their underlay address instead of
    /// VXLAN.
    pub direct_routing: bool,
    /// The pods' MTU (the subnet file's), see [`crate::pod_mtu`].
    pub pod_mtu: PodMtu,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("berth-overlayd: {}", msg.as_ref());
}

/// Counters for status and metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub renewals: u64,
    pub repairs: u64,
    pub peers: usize,
}

pub struct Agent {
    cfg: AgentConfig,
    store: Box<dyn LeaseStore>,
    nl: Netlink,
    lease: Lease,
    dev: u32,
    underlay: host_net::netlink::Link,
    local: IpAddr,
    mac: [u8; 6],
    /// The MTU written for the pods, resolved once at start.
    pod_mtu: u32,
    programmed: HashMap<String, Lease>,
    /// The path each programmed peer was programmed on.
    paths: HashMap<String, PeerPath>,
    pub stats: Stats,
    /// Shared with the metrics endpoint.
    pub metrics: crate::metrics::Handle,
}

impl Agent {
    /// Validates the environment, takes a lease and sets up the device.
    pub fn start(cfg: AgentConfig, mut store: Box<dyn LeaseStore>) -> Result<Agent, OverlayError> {
        let mut nl = Netlink::new()?;
        let (underlay, found_ip) = vxlan::underlay(&mut nl, cfg.iface.as_deref())?;
        let local = cfg.public_ip.unwrap_or(found_ip);
        // Checked before the lease is taken: a bad --pod-mtu configures nothing.
        let pod_mtu = cfg.pod_mtu.resolve(MtuContext {
            underlay_name: &underlay.name,
            underlay_mtu: underlay.mtu,
            vxlan_mtu: vxlan::mtu_for(underlay.mtu, local),
            direct_routing: cfg.direct_routing,
            ipv6: cfg.plan.network6.is_some(),
        })?;
        let mac = stable_mac(&cfg.node, cfg.vni);
        let lease = acquire(&cfg, store.as_mut(), local, &mac)?;
        log(format!(
            "node {} holds {} (store {})",
            cfg.node,
            lease.subnet,
            store.describe()
        ));
        log(format!(
            "pods get MTU {pod_mtu} (--pod-mtu {}{})",
            cfg.pod_mtu,
            if cfg.direct_routing {
                ", DirectRouting"
            } else {
                ""
            }
        ));
        let mut agent = Agent {
            cfg,
            store,
            nl,
            dev: 0,
            underlay,
            local,
            mac,
            pod_mtu,
            lease,
            programmed: HashMap::new(),
            paths: HashMap::new(),
            stats: Stats::default(),
            metrics: Default::default(),
        };
        // Nothing half-configured: if the device or the subnet file cannot be
        // set up, give the subnet back before failing.
        if let Err(e) = agent.setup_device().and_then(|_| agent.write_subnet_file()) {
            let _ = agent.store.release(&agent.lease);
            return Err(e);
        }
        Ok(agent)
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    fn setup_device(&mut self) -> Result<(), OverlayError> {
        let dev = vxlan::ensure_device(
            &mut self.nl,
            &DeviceSpec {
                vni: self.cfg.vni,
                port: self.cfg.port,
                local: self.local,
                underlay: &self.underlay,
                mac: self.mac,
                lease: &self.lease,
            },
        )?;
        if self.dev != 0 && self.dev != dev.index {
            // A new device has none of the old peer state.
            self.programmed.clear();
            self.paths.clear();
        }
        self.dev = dev.index;
        Ok(())
    }

    fn write_subnet_file(&self) -> Result<(), OverlayError> {
        SubnetInfo {
            node: self.cfg.node.clone(),
            network: self.cfg.plan.network,
            subnet: self.lease.subnet,
            network6: self.cfg.plan.network6,
            subnet6: self.lease.subnet6,
            mtu: self.pod_mtu,
            vni: self.cfg.vni,
        }
        .write(&self.cfg.subnet_file)
    }

    /// Applies the current set of leases: programs new or changed peers and
    /// removes the ones that are gone.
    pub fn reconcile(&mut self, leases: &[Lease]) -> Result<(), OverlayError> {
        let peers: HashMap<String, Lease> = leases
            .iter()
            .filter(|l| l.node != self.cfg.node && l.subnet != self.lease.subnet)
            .map(|l| (l.node.clone(), l.clone()))
            .collect();
        let connected = if self.cfg.direct_routing {
            vxlan::connected_subnets(&mut self.nl, self.underlay.index)?
        } else {
            Vec::new()
        };
        let (direct_routing, underlay) = (self.cfg.direct_routing, self.underlay.index);
        let path_of = |p: &Lease| vxlan::path_for(direct_routing, &connected, underlay, p);
        let gone: Vec<Lease> = self
            .programmed
            .iter()
            .filter(|(n, l)| {
                peers
                    .get(*n)
                    .map(|p| !same_endpoint(p, l) || self.paths.get(*n) != Some(&path_of(p)))
                    .unwrap_or(true)
            })
            .map(|(_, l)| l.clone())
            .collect();
        for l in gone {
            let path = self.paths.remove(&l.node).unwrap_or(PeerPath::Vxlan);
            vxlan::unprogram_peer(&mut self.nl, self.dev, &l, path)?;
            self.programmed.remove(&l.node);
            log(format!(
                "peer {} ({}, {}) removed",
                l.node,
                l.subnet,
                path.name()
            ));
        }
        for (n, p) in &peers {
            if self
                .programmed
                .get(n)
                .map(|l| same_endpoint(l, p))
                .unwrap_or(false)
            {
                continue;
            }
            let path = path_of(p);
            vxlan::program_peer(&mut self.nl, self.dev, p, path)?;
            self.programmed.insert(n.clone(), p.clone());
            self.paths.insert(n.clone(), path);
            log(format!(
                "peer {} ({} at {}) programmed ({})",
                p.node,
                p.subnet,
                p.public_ip,
                path.name()
            ));
        }
        self.stats.peers = self.programmed.len();
        self.publish(true);
        Ok(())
    }

    /// Copies the counters to the metrics endpoint.
    fn publish(&mut self, store_up: bool) {
        if let Ok(mut m) = self.metrics.lock() {
            m.node = self.cfg.node.clone();
            m.subnet = self.lease.subnet.to_string();
            m.peers = self.programmed.len();
            m.renewals = self.stats.renewals;
            m.repairs = self.stats.repairs;
            m.reconciles += 1;
            m.store_up = store_up;
            m.device_up = self.dev != 0;
        }
    }

    /// Compares the kernel with what should be there and repairs: a missing
    /// device is recreated, missing entries come back, stale ones go.
    pub fn resync(&mut self) -> Result<usize, OverlayError> {
        let mut repairs = 0;
        let present = self
            .nl
            .link_by_index(self.dev)?
            .filter(|l| l.name == vxlan::device_name(self.cfg.vni));
        if present.is_none() {
            // Every peer is programmed again below: the new device's state
            // is missing, the direct routes are still in place.
            log("VXLAN device missing: recreating it");
            self.dev = 0;
            self.setup_device()?;
            repairs += 1;
        } else {
            self.setup_device()?;
        }
        let dev = self.dev;
        let view = KernelView::read(&mut self.nl, dev)?;
        let wanted: Vec<(Lease, PeerPath)> = self
            .programmed
            .values()
            .map(|l| {
                let path = self.paths.get(&l.node).copied().unwrap_or(PeerPath::Vxlan);
                (l.clone(), path)
            })
            .collect();
        for (p, path) in &wanted {
            let state = view.state_on(p, *path);
            if !state.complete() {
                vxlan::program_peer(&mut self.nl, dev, p, *path)?;
                log(format!(
                    "repaired peer {} ({}, {})",
                    p.node,
                    path.name(),
                    state.describe()
                ));
                repairs += 1;
            }
        }
        let wanted_routes: Vec<host_net::netlink::RouteSpec> = wanted
            .iter()
            .flat_map(|(p, path)| vxlan::peer_routes(dev, p, *path))
            .collect();
        // Stale kernel state: routes, neighbours and FDB entries on our
        // device that no current peer explains.
        let mine_v4 = IpNetwork::V4(self.lease.subnet);
        for r in &view.routes {
            let explained = r.dst == mine_v4
                || r.dst.prefix() == 32 && Some(r.dst.ip()) == Some(self.lease.vtep_ip())
                || wanted_routes
                    .iter()
                    .any(|w| w.oif == Some(dev) && w.dst == r.dst)
                || r.gw.is_none();
            if !explained {
                let _ = self.nl.del_route(r);
                repairs += 1;
            }
        }
        // Stale direct routes: only ours (marked by their protocol).
        for r in &view.direct {
            let explained = wanted_routes.iter().any(|w| {
                w.protocol == Some(vxlan::DIRECT_ROUTE_PROTO)
                    && w.dst == r.dst
                    && w.gw == r.gw
                    && w.oif == r.oif
            });
            if !explained {
                let _ = self.nl.del_route(r);
                log(format!(
                    "removed stale direct route {} via {}",
                    r.dst,
                    r.gw.map(|g| g.to_string()).unwrap_or_default()
                ));
                repairs += 1;
            }
        }
        for ip in view.neighbours.keys() {
            let explained = wanted.iter().any(|(p, path)| {
                (path.vxlan_v4(p) && p.vtep_ip() == *ip)
                    || (path.vxlan_v6(p) && p.vtep_ip6() == Some(*ip))
            });
            if !explained {
                let _ = self.nl.del_neighbour(dev, *ip);
                repairs += 1;
            }
        }
        for (mac, dst) in &view.fdb {
            let explained = wanted
                .iter()
                .any(|(p, path)| path.needs_fdb(p) && &p.vtep_mac == mac && &p.public_ip == dst);
            if !explained && mac != "00:00:00:00:00:00" {
                if let Some(m) = parse_mac(mac) {
                    let _ = self.nl.del_fdb(dev, &m, *dst);
                    repairs += 1;
                }
            }
        }
        self.stats.repairs += repairs as u64;
        if let Ok(mut m) = self.metrics.lock() {
            m.repairs = self.stats.repairs;
            m.device_up = true;
        }
        Ok(repairs)
    }

    fn renew(&mut self) -> Result<(), OverlayError> {
        self.lease.expires_at = now() + self.cfg.lease_ttl.as_secs() as i64;
        match self.store.renew(&self.lease) {
            Ok(()) => {
                self.stats.renewals += 1;
                Ok(())
            }
            Err(OverlayError::LeaseLost { subnet, holder }) => {
                log(format!(
                    "lease on {subnet} lost to {holder}; acquiring again"
                ));
                let prev = self.lease.subnet;
                self.lease = acquire(&self.cfg, self.store.as_mut(), self.local, &self.mac)?;
                if self.lease.subnet != prev {
                    log(format!("now holding {} instead of {prev}: pods on the old subnet lose connectivity", self.lease.subnet));
                }
                self.setup_device()?;
                self.write_subnet_file()
            }
            Err(e) => Err(e),
        }
    }

    /// Runs until `stop` is set; then releases the lease.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), OverlayError> {
        let (leases, mut rev) = self.store.list()?;
        self.reconcile(&leases)?;
        let renew_every = (self.cfg.lease_ttl / 3).max(Duration::from_secs(1));
        let mut next_renew = Instant::now() + renew_every;
        let mut next_resync = Instant::now() + self.cfg.resync;
        let mut store_ok = true;
        while !stop.load(Ordering::SeqCst) {
            let slice = Duration::from_millis(200);
            match self.store.wait_change(rev, slice) {
                Ok(r) => {
                    if !store_ok {
                        log("lease store reachable again");
                        store_ok = true;
                    }
                    if r != rev {
                        match self.store.list() {
                            Ok((leases, r2)) => {
                                rev = r2;
                                self.reconcile(&leases)?;
                            }
                            Err(e) => log(format!("listing leases: {e}")),
                        }
                    }
                }
                Err(e) => {
                    // Keep the programmed state: pod traffic keeps flowing
                    // while the store is away.
                    if let Ok(mut m) = self.metrics.lock() {
                        m.store_up = false;
                    }
                    if store_ok {
                        log(format!(
                            "lease store unreachable, keeping the current peers: {e}"
                        ));
                        store_ok = false;
                    }
                    std::thread::sleep(slice);
                }
            }
            if Instant::now() >= next_renew && store_ok {
                match self.renew() {
                    Ok(()) => next_renew = Instant::now() + renew_every,
                    Err(e) => {
                        if let Ok(mut m) = self.metrics.lock() {
                            m.renew_failures += 1;
                        }
                        log(format!("renewing the lease: {e}"))
                    }
                }
            }
            if Instant::now() >= next_resync {
                if store_ok {
                    if let Ok((leases, r2)) = self.store.list() {
                        rev = r2;
                        if let Err(e) = self.reconcile(&leases) {
                            log(format!("reconcile: {e}"));
                        }
                    }
                }
                if let Err(e) = self.resync() {
                    log(format!("resync: {e}"));
                }
                next_resync = Instant::now() + self.cfg.resync;
            }
        }
        log(format!("stopping: releasing {}", self.lease.subnet));
        self.store.release(&self.lease)
    }
}

fn same_endpoint(a: &Lease, b: &Lease) -> bool {
    a.subnet == b.subnet
        && a.subnet6 == b.subnet6
        && a.public_ip == b.public_ip
        && a.vtep_mac == b.vtep_mac
}

/// Takes a subnet: this node's unexpired lease if the store still has it,
/// else the subnet of the previous run (subnet file), else the first free
/// candidate.
pub fn acquire(
    cfg: &AgentConfig,
    store: &mut dyn LeaseStore,
    local: IpAddr,
    mac: &[u8; 6],
) -> Result<Lease, OverlayError> {
    let plan = &cfg.plan;
    let make = |i: u64| -> Option<Lease> {
        Some(Lease {
            node: cfg.node.clone(),
            subnet: plan.subnet(i)?,
            subnet6: plan.subnet6(i),
            public_ip: local,
            vtep_mac: mac_to_string(mac),
            expires_at: now() + cfg.lease_ttl.as_secs() as i64,
        })
    };
    if let Some((v4, v6)) = store.assigned_subnets(&cfg.node)? {
        return acquire_assigned(cfg, store, local, mac, v4, v6);
    }
    let (leases, _) = store.list()?;
    let mut preferred = Vec::new();
    if let Some(l) = leases.iter().find(|l| l.node == cfg.node) {
        preferred.extend(plan.index_of(&l.subnet));
    }
    if let Ok(Some(prev)) = SubnetInfo::read(&cfg.subnet_file) {
        if prev.network == plan.network {
            preferred.extend(plan.index_of(&prev.subnet));
        }
    }
    let taken: std::collections::HashSet<_> = leases
        .iter()
        .filter(|l| l.node != cfg.node)
        .map(|l| l.subnet)
        .collect();
    for i in preferred.into_iter().chain(plan.candidates(&cfg.node)) {
        let Some(lease) = make(i) else { continue };
        if taken.contains(&lease.subnet) {
            continue;
        }
        if store.try_acquire(&lease)? {
            return Ok(lease);
        }
    }
    Err(OverlayError::Exhausted {
        network: plan.network.to_string(),
        len: plan.subnet_len,
    })
}

/// Takes the subnets the store assigned (the kube store: the Node's pod
/// CIDRs, chosen by kube-controller-manager), which must lie in the cluster
/// network this agent was given.
fn acquire_assigned(
    cfg: &AgentConfig,
    store: &mut dyn LeaseStore,
    local: IpAddr,
    mac: &[u8; 6],
    v4: ipnetwork::Ipv4Network,
    v6: Option<ipnetwork::Ipv6Network>,
) -> Result<Lease, OverlayError> {
    let plan = &cfg.plan;
    if !(plan.network.contains(v4.network()) && v4.prefix() >= plan.network.prefix()) {
        return Err(OverlayError::config(
            "--network",
            format!(
                "node {}'s pod CIDR {v4} is outside the cluster network {}: give berth-overlayd \
                 kube-controller-manager's --cluster-cidr",
                cfg.node, plan.network
            ),
        ));
    }
    let subnet6 = match (v6, plan.network6) {
        (Some(s), Some(n)) if n.contains(s.network()) => Some(s),
        (Some(s), Some(n)) => {
            return Err(OverlayError::config(
                "--network",
                format!("node {}'s IPv6 pod CIDR {s} is outside {n}", cfg.node),
            ))
        }
        // Single-stack overlay on a dual-stack node: IPv6 pods are not ours.
        (Some(_), None) | (None, _) => None,
    };
    let lease = Lease {
        node: cfg.node.clone(),
        subnet: v4,
        subnet6,
        public_ip: local,
        vtep_mac: mac_to_string(mac),
        expires_at: now() + cfg.lease_ttl.as_secs() as i64,
    };
    if store.try_acquire(&lease)? {
        Ok(lease)
    } else {
        Err(OverlayError::LeaseLost {
            subnet: v4.to_string(),
            holder: format!("node {}'s spec.podCIDRs changed", cfg.node),
        })
    }
}
