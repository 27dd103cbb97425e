//! The etcd v3 lease store, for real clusters. Each node subnet is a key
//! `/berth/overlay/<network>/leases/<subnet>` holding the lease as JSON and
//! attached to an etcd lease with the TTL, so a node that dies loses its
//! subnet when the TTL runs out and a clean shutdown revokes it at once.
//! Taking a subnet is a transaction that succeeds only if the key does not
//! exist (or still has the version this node saw), so two nodes joining at
//! the same instant can never share one.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use tokio::runtime::Runtime;

use crate::error::OverlayError;
use crate::lease::{now, Lease};
use crate::store::LeaseStore;

pub struct EtcdStore {
    rt: Runtime,
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    /// The etcd lease id behind this node's key.
    lease_id: Option<i64>,
}

impl EtcdStore {
    pub fn open(endpoints: &[String], network: &str) -> Result<EtcdStore, OverlayError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OverlayError::Io(format!("starting the etcd client runtime: {e}")))?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let store_name = format!("etcd:{}", endpoints.join(","));
        let mut client = rt
            .block_on(Client::connect(endpoints, Some(opts)))
            .map_err(|e| OverlayError::Store {
                store: store_name.clone(),
                msg: format!("cannot connect: {e}"),
            })?;
        // Fail fast on an unreachable cluster: connect() is lazy.
        rt.block_on(client.status())
            .map_err(|e| OverlayError::Store {
                store: store_name,
                msg: format!("etcd is unreachable: {e}"),
            })?;
        Ok(EtcdStore {
            rt,
            client,
            endpoints: endpoints.to_vec(),
            prefix: format!("/berth/overlay/{}/leases/", network.replace('/', "_")),
            lease_id: None,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> OverlayError {
        OverlayError::Store {
            store: self.describe(),
            msg: e.to_string(),
        }
    }

    fn key(&self, l: &Lease) -> String {
        format!("{}{}", self.prefix, l.subnet.to_string().replace('/', "_"))
    }

    fn ttl_of(l: &Lease) -> i64 {
        (l.expires_at - now()).max(5)
    }

    /// Keys and mod revisions under the prefix, as a fingerprint of the set.
    fn fingerprint(&mut self) -> Result<u64, OverlayError> {
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let resp = self
            .rt
            .block_on(self.client.get(self.prefix.clone(), Some(opts)))
            .map_err(|e| self.err(e))?;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for kv in resp.kvs() {
            let mut p = kv.key().to_vec();
            p.extend_from_slice(&kv.mod_revision().to_be_bytes());
            parts.push(p);
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        Ok(u64::from_str_radix(&berth_common::digest(&refs), 16).unwrap_or(0))
    }
}

impl LeaseStore for EtcdStore {
    fn list(&mut self) -> Result<(Vec<Lease>, u64), OverlayError> {
        let resp = self
            .rt
            .block_on(
                self.client
                    .get(self.prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for kv in resp.kvs() {
            let mut p = kv.key().to_vec();
            p.extend_from_slice(&kv.mod_revision().to_be_bytes());
            parts.push(p);
            match serde_json::from_slice::<Lease>(kv.value()) {
                Ok(l) => out.push(l),
                Err(e) => eprintln!(
                    "berth-overlayd: ignoring an unreadable lease {:?}: {e}",
                    kv.key_str().unwrap_or("?")
                ),
            }
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        Ok((
            out,
            u64::from_str_radix(&berth_common::digest(&refs), 16).unwrap_or(0),
        ))
    }

    fn try_acquire(&mut self, lease: &Lease) -> Result<bool, OverlayError> {
        let key = self.key(lease);
        let value = serde_json::to_vec(lease).map_err(|e| self.err(e))?;
        let current = self
            .rt
            .block_on(self.client.get(key.clone(), None))
            .map_err(|e| self.err(e))?;
        let compare = match current.kvs().first() {
            Some(kv) => {
                let holder = serde_json::from_slice::<Lease>(kv.value())
                    .map(|l| l.node)
                    .unwrap_or_default();
                if holder != lease.node {
                    return Ok(false);
                }
                Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())
            }
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        };
        let granted = self
            .rt
            .block_on(self.client.lease_grant(Self::ttl_of(lease), None))
            .map_err(|e| self.err(e))?;
        let txn = Txn::new().when(vec![compare]).and_then(vec![TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(granted.id())),
        )]);
        let resp = self
            .rt
            .block_on(self.client.txn(txn))
            .map_err(|e| self.err(e))?;
        if !resp.succeeded() {
            let _ = self.rt.block_on(self.client.lease_revoke(granted.id()));
            return Ok(false);
        }
        if let Some(old) = self.lease_id.replace(granted.id()) {
            if old != granted.id() {
                let _ = self.rt.block_on(self.client.lease_revoke(old));
            }
        }
        // One subnet per node: drop any other key this node held.
        let all = self
            .rt
            .block_on(
                self.client
                    .get(self.prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .map_err(|e| self.err(e))?;
        for kv in all.kvs() {
            if kv.key() == key.as_bytes() {
                continue;
            }
            if serde_json::from_slice::<Lease>(kv.value())
                .map(|l| l.node == lease.node)
                .unwrap_or(false)
            {
                let _ = self
                    .rt
                    .block_on(self.client.delete(kv.key().to_vec(), None));
            }
        }
        Ok(true)
    }

    fn renew(&mut self, lease: &Lease) -> Result<(), OverlayError> {
        let key = self.key(lease);
        let lost = |holder: String| OverlayError::LeaseLost {
            subnet: lease.subnet.to_string(),
            holder,
        };
        let Some(id) = self.lease_id else {
            return Err(lost("nobody (no etcd lease)".into()));
        };
        let ttl = self.rt.block_on(async {
            let (mut keeper, mut stream) = self.client.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.map(|r| r.ttl()).unwrap_or(0))
        });
        let ttl = ttl.map_err(|e| self.err(e))?;
        if ttl <= 0 {
            self.lease_id = None;
            return Err(lost("nobody (it expired)".into()));
        }
        let current = self
            .rt
            .block_on(self.client.get(key.clone(), None))
            .map_err(|e| self.err(e))?;
        let kv = current
            .kvs()
            .first()
            .ok_or_else(|| lost("nobody (the key is gone)".into()))?;
        let holder = serde_json::from_slice::<Lease>(kv.value())
            .map(|l| l.node)
            .unwrap_or_default();
        if holder != lease.node {
            return Err(lost(holder));
        }
        // Refresh the expiry shown to operators, only if the key is still ours.
        let value = serde_json::to_vec(lease).map_err(|e| self.err(e))?;
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(id)),
            )]);
        self.rt
            .block_on(self.client.txn(txn))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn release(&mut self, lease: &Lease) -> Result<(), OverlayError> {
        let key = self.key(lease);
        self.rt
            .block_on(self.client.delete(key, None))
            .map_err(|e| self.err(e))?;
        if let Some(id) = self.lease_id.take() {
            let _ = self.rt.block_on(self.client.lease_revoke(id));
        }
        Ok(())
    }

    fn wait_change(&mut self, since: u64, timeout: Duration) -> Result<u64, OverlayError> {
        let deadline = Instant::now() + timeout;
        loop {
            let fp = self.fingerprint()?;
            if fp != since || Instant::now() >= deadline {
                return Ok(fp);
            }
            std::thread::sleep(
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    fn describe(&self) -> String {
        format!("etcd:{}", self.endpoints.join(","))
    }
}
