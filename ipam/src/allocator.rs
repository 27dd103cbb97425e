//! Choosing addresses: one per range set, requested addresses honoured,
//! otherwise round robin from the last reservation, as the reference does.

use std::net::IpAddr;

use crate::config::IpamConfig;
use crate::error::IpamError;
use crate::range::{to_u128, RangeSet};
use crate::store::{addr_of, Allocation, Sql};

/// Who is asking, stamped on every row.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    /// Digest of the request, to recognise a retry.
    pub request: String,
    pub boot_id: String,
    pub now: i64,
}

pub use berth_common::digest;

/// Finds the next free address of a set, starting after the last one
/// handed out and wrapping around once.
fn next_free(
    sql: &Sql<'_>,
    set: &RangeSet,
    last: Option<IpAddr>,
) -> Result<Option<IpAddr>, IpamError> {
    let n = set.ranges.len();
    // Where to start: just after `last` if it is inside this set.
    let (first_idx, first_from) = match last.and_then(|l| {
        set.ranges
            .iter()
            .position(|r| r.contains(l))
            .map(|i| (i, to_u128(l)))
    }) {
        Some((i, l)) if l < set.ranges[i].end_n() => (i, l + 1),
        Some((i, _)) => ((i + 1) % n, set.ranges[(i + 1) % n].start_n()),
        None => (0, set.ranges[0].start_n()),
    };
    for step in 0..n {
        let idx = (first_idx + step) % n;
        let r = &set.ranges[idx];
        let lo = if step == 0 { first_from } else { r.start_n() };
        if let Some(found) = sql.find_free(r, lo, r.end_n())? {
            return Ok(Some(addr_of(r, found)));
        }
    }
    // Wrap: the part of the first range before where we started.
    let r = &set.ranges[first_idx];
    if first_from > r.start_n() {
        if let Some(found) = sql.find_free(r, r.start_n(), first_from - 1)? {
            return Ok(Some(addr_of(r, found)));
        }
    }
    Ok(None)
}

/// Allocates one address per range set for `att` inside the caller's
/// transaction. Returns (range set index, address) pairs in set order.
pub fn allocate(
    sql: &Sql<'_>,
    cfg: &IpamConfig,
    att: &Attachment,
) -> Result<Vec<(usize, IpAddr)>, IpamError> {
    // Match requested addresses to range sets first, so a bad request fails
    // before anything is written.
    let mut wanted: Vec<Option<IpAddr>> = vec![None; cfg.range_sets.len()];
    for req in &cfg.requested {
        let Some(i) = cfg.range_sets.iter().position(|s| s.contains(req.addr)) else {
            return Err(IpamError::OutOfRange {
                addr: req.addr.to_string(),
                source_name: req.source.to_string(),
                ranges: cfg.describe(),
            });
        };
        if let Some(prev) = wanted[i] {
            return Err(IpamError::Requested(format!(
                "requested addresses {prev} and {} are both in range set {i} ({}): one address per range set",
                req.addr, cfg.range_sets[i]
            )));
        }
        if let Some(r) = cfg.range_sets[i].range_for(req.addr) {
            if r.is_reserved(to_u128(req.addr)) {
                return Err(IpamError::InUse {
                    addr: req.addr.to_string(),
                    holder: "the network (gateway, network or broadcast address)".into(),
                    ifname: "reserved".into(),
                });
            }
        }
        wanted[i] = Some(req.addr);
    }

    let mut out = Vec::with_capacity(cfg.range_sets.len());
    for (i, set) in cfg.range_sets.iter().enumerate() {
        let addr = match wanted[i] {
            Some(addr) => {
                if let Some(holder) = sql.holder_of(addr)? {
                    return Err(IpamError::InUse {
                        addr: addr.to_string(),
                        holder: holder.container_id,
                        ifname: holder.ifname,
                    });
                }
                addr
            }
            None => {
                let last = sql.last_reserved(i)?;
                next_free(sql, set, last)?.ok_or_else(|| IpamError::Exhausted {
                    index: i,
                    ranges: set.to_string(),
                })?
            }
        };
        sql.insert(&Allocation {
            address: addr,
            range_set: Some(i),
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
            netns: att.netns.clone(),
            request: att.request.clone(),
            boot_id: att.boot_id.clone(),
            created_at: att.now,
        })?;
        sql.set_last_reserved(i, addr)?;
        out.push((i, addr));
    }
    Ok(out)
}

/// Whether any range set still has a free address.
pub fn any_free(sql: &Sql<'_>, cfg: &IpamConfig) -> Result<bool, IpamError> {
    for set in &cfg.range_sets {
        if next_free(sql, set, None)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpamConfig;
    use crate::store::Store;
    use cni_core::NetConf;
    use serde_json::json;

    fn cfg(ipam: serde_json::Value, args: &str) -> IpamConfig {
        let c = NetConf::parse(
            json!({"cniVersion":"1.0.0","name":"n","ipam":ipam})
                .to_string()
                .as_bytes(),
        )
        .expect("netconf");
        IpamConfig::from_netconf(&c, args).expect("cfg")
    }

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/x".into(),
            request: "r".into(),
            boot_id: "b".into(),
            now: 1,
        }
    }

    #[test]
    fn round_robin_skips_gateway_and_wraps() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = Store::open_for_write(dir.path()).expect("open");
        let path = store.db_path();
        let c = cfg(json!({"subnet":"10.0.0.0/29"}), "");
        let tx = store.begin().expect("tx");
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        // .1 is the gateway; usable .2-.6
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                allocate(&sql, &c, &att(&format!("c{i}"))).expect("alloc")[0]
                    .1
                    .to_string(),
            );
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert!(matches!(
            allocate(&sql, &c, &att("full")),
            Err(IpamError::Exhausted { .. })
        ));
        // Free .3: round robin wraps from .6 and finds it.
        sql.release("c1", Some("eth0")).expect("release");
        assert_eq!(
            allocate(&sql, &c, &att("again")).expect("alloc")[0]
                .1
                .to_string(),
            "10.0.0.3"
        );
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = Store::open_for_write(dir.path()).expect("open");
        let path = store.db_path();
        let c = cfg(json!({"subnet":"10.0.0.0/24"}), "");
        let tx = store.begin().expect("tx");
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        let a = allocate(&sql, &c, &att("a")).expect("a")[0].1;
        sql.release("a", Some("eth0")).expect("rel");
        let b = allocate(&sql, &c, &att("b")).expect("b")[0].1;
        assert_ne!(a, b);
    }

    #[test]
    fn multi_range_sets_and_requests() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = Store::open_for_write(dir.path()).expect("open");
        let path = store.db_path();
        let c = cfg(
            json!({"ranges":[[{"subnet":"10.0.0.0/30"},{"subnet":"10.0.1.0/24","rangeStart":"10.0.1.100"}],[{"subnet":"fd00::/120"}]]}),
            "IP=fd00::42",
        );
        let tx = store.begin().expect("tx");
        let sql = Sql {
            tx: &tx,
            path: &path,
        };
        let got = allocate(&sql, &c, &att("a")).expect("a");
        assert_eq!(got[0].1.to_string(), "10.0.0.2");
        assert_eq!(got[1].1.to_string(), "fd00::42");
        // The /30 has one usable address: the next goes to the second range.
        let c2 = cfg(
            json!({"ranges":[[{"subnet":"10.0.0.0/30"},{"subnet":"10.0.1.0/24","rangeStart":"10.0.1.100"}],[{"subnet":"fd00::/120"}]]}),
            "",
        );
        let got = allocate(&sql, &c2, &att("b")).expect("b");
        assert_eq!(got[0].1.to_string(), "10.0.1.100");
        assert_eq!(got[1].1.to_string(), "fd00::43");
        // A requested address that is held is refused.
        let c3 = cfg(json!({"ranges":[[{"subnet":"fd00::/120"}]]}), "IP=fd00::42");
        assert!(matches!(
            allocate(&sql, &c3, &att("c")),
            Err(IpamError::InUse { .. })
        ));
        let c4 = cfg(json!({"ranges":[[{"subnet":"fd00::/120"}]]}), "IP=fd00::1");
        assert!(matches!(
            allocate(&sql, &c4, &att("c")),
            Err(IpamError::InUse { .. })
        ));
        let c5 = cfg(json!({"ranges":[[{"subnet":"fd00::/120"}]]}), "IP=10.9.9.9");
        assert!(matches!(
            allocate(&sql, &c5, &att("c")),
            Err(IpamError::OutOfRange { .. })
        ));
    }

    #[test]
    fn digest_is_stable_and_order_sensitive() {
        assert_eq!(digest(&[b"a", b"b"]), digest(&[b"a", b"b"]));
        assert_ne!(digest(&[b"ab", b""]), digest(&[b"a", b"b"]));
    }
}
