//! Leases: which node holds which subnet of the cluster network, and how to
//! reach its VTEP.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::error::OverlayError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    pub subnet: Ipv4Network,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Network>,
    /// The node's underlay address: VXLAN packets for its pods go there.
    pub public_ip: IpAddr,
    /// The MAC of the node's VXLAN device.
    pub vtep_mac: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Lease {
    /// The address the node puts on its VXLAN device: the subnet's first
    /// (network) address, used as the next hop for that subnet by peers.
    pub fn vtep_ip(&self) -> IpAddr {
        IpAddr::V4(self.subnet.network())
    }

    pub fn vtep_ip6(&self) -> Option<IpAddr> {
        self.subnet6.map(|s| IpAddr::V6(s.network()))
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The cluster network and how it is cut into node subnets.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub network6: Option<Ipv6Network>,
    pub subnet_len6: u8,
}

impl NetworkPlan {
    /// Validates the plan: the network must hold at least two node subnets
    /// and a node subnet must hold pods.
    pub fn new(
        network: Ipv4Network,
        subnet_len: u8,
        network6: Option<Ipv6Network>,
        subnet_len6: u8,
    ) -> Result<Self, OverlayError> {
        if network.ip() != network.network() {
            return Err(OverlayError::config(
                "--network",
                format!(
                    "{network} has host bits set; did you mean {}/{}?",
                    network.network(),
                    network.prefix()
                ),
            ));
        }
        if subnet_len > 28 {
            return Err(OverlayError::config(
                "--subnet-len",
                format!("/{subnet_len} leaves too few pod addresses per node (at most /28)"),
            ));
        }
        if subnet_len <= network.prefix() {
            return Err(OverlayError::config(
                "--subnet-len",
                format!(
                    "/{subnet_len} does not fit in --network {network}: it must be longer than /{}",
                    network.prefix()
                ),
            ));
        }
        if let Some(n6) = network6 {
            if n6.ip() != n6.network() {
                return Err(OverlayError::config(
                    "--network",
                    format!("{n6} has host bits set"),
                ));
            }
            if subnet_len6 <= n6.prefix() || subnet_len6 > 120 {
                return Err(OverlayError::config(
                    "--subnet-len6",
                    format!("/{subnet_len6} does not fit in {n6}"),
                ));
            }
        }
        Ok(NetworkPlan {
            network,
            subnet_len,
            network6,
            subnet_len6,
        })
    }

    pub fn subnet_count(&self) -> u64 {
        1u64 << u32::from(self.subnet_len - self.network.prefix()).min(63)
    }

    /// Node subnet number `i`.
    pub fn subnet(&self, i: u64) -> Option<Ipv4Network> {
        if i >= self.subnet_count() {
            return None;
        }
        let base = u32::from(self.network.network());
        let step = 1u32.checked_shl(u32::from(32 - self.subnet_len))?;
        let addr = base.checked_add(u32::try_from(i).ok()?.checked_mul(step)?)?;
        Ipv4Network::new(addr.into(), self.subnet_len).ok()
    }

    /// The index of a subnet in the plan.
    pub fn index_of(&self, s: &Ipv4Network) -> Option<u64> {
        if s.prefix() != self.subnet_len || !self.network.contains(s.network()) {
            return None;
        }
        let off = u32::from(s.network()) - u32::from(self.network.network());
        Some(u64::from(off >> (32 - self.subnet_len)))
    }

    /// The IPv6 subnet paired with IPv4 subnet number `i`.
    pub fn subnet6(&self, i: u64) -> Option<Ipv6Network> {
        let n6 = self.network6?;
        let bits = u32::from(self.subnet_len6 - n6.prefix());
        if bits < 64 && i >= (1u64 << bits) {
            return None;
        }
        let base = u128::from(n6.network());
        let addr =
            base.checked_add(u128::from(i).checked_shl(128 - u32::from(self.subnet_len6))?)?;
        Ipv6Network::new(addr.into(), self.subnet_len6).ok()
    }

    /// Candidate subnet numbers for a node, starting at a point derived
    /// from its name so that nodes joining together rarely race for one.
    pub fn candidates(&self, node: &str) -> Box<dyn Iterator<Item = u64>> {
        let n = self.subnet_count();
        if n <= 1 {
            return Box::new(0..n);
        }
        let h =
            u64::from_str_radix(&berth_common::digest(&[node.as_bytes()])[..12], 16).unwrap_or(0);
        // Subnet 0 comes last: its network address equals the cluster
        // network's, which confuses people reading routes.
        let others = n - 1;
        let start = h % others;
        Box::new(
            (0..others)
                .map(move |k| 1 + (start + k) % others)
                .chain(std::iter::once(0)),
        )
    }

    pub fn networks(&self) -> Vec<IpNetwork> {
        let mut v = vec![IpNetwork::V4(self.network)];
        if let Some(n6) = self.network6 {
            v.push(IpNetwork::V6(n6));
        }
        v
    }
}

/// A MAC for the node's VXLAN device that stays the same across restarts:
/// locally administered, derived from the node name and VNI.
pub fn stable_mac(node: &str, vni: u32) -> [u8; 6] {
    let h = berth_common::digest(&[node.as_bytes(), &vni.to_be_bytes()]);
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(net: &str, len: u8) -> Result<NetworkPlan, OverlayError> {
        NetworkPlan::new(net.parse().expect("net"), len, None, 64)
    }

    #[test]
    fn carves_subnets() {
        let p = plan("10.244.0.0/16", 24).expect("ok");
        assert_eq!(p.subnet_count(), 256);
        assert_eq!(
            p.subnet(3).map(|s| s.to_string()).as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(p.subnet(256), None);
        let s: Ipv4Network = "10.244.7.0/24".parse().expect("net");
        assert_eq!(p.index_of(&s), Some(7));
    }

    #[test]
    fn candidates_cover_every_subnet_once_and_avoid_zero_first() {
        let p = plan("10.244.0.0/20", 24).expect("ok");
        let c: Vec<u64> = p.candidates("node-a").collect();
        assert_eq!(c.len(), 16);
        let mut sorted = c.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 16);
        assert_ne!(c[0], 0);
    }

    #[test]
    fn bad_plans_name_the_flag() {
        for (net, len, flag) in [
            ("10.244.0.0/16", 16, "--subnet-len"),
            ("10.244.0.0/16", 30, "--subnet-len"),
            ("10.244.1.0/16", 24, "--network"),
        ] {
            match plan(net, len) {
                Err(OverlayError::Config { field, .. }) => assert_eq!(field, flag),
                other => panic!("{net}/{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn v6_subnets_pair_with_v4() {
        let p = NetworkPlan::new(
            "10.244.0.0/16".parse().expect("n"),
            24,
            Some("fd00:244::/56".parse().expect("n")),
            64,
        )
        .expect("ok");
        assert_eq!(
            p.subnet6(3).map(|s| s.to_string()).as_deref(),
            Some("fd00:244:0:3::/64")
        );
    }

    #[test]
    fn stable_mac_is_stable_and_local() {
        let a = stable_mac("n1", 1);
        assert_eq!(a, stable_mac("n1", 1));
        assert_ne!(a, stable_mac("n2", 1));
        assert_eq!(a[0] & 0x03, 0x02);
    }
}
