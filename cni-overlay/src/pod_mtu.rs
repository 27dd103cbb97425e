//! The MTU the agent gives pods (the subnet file's `BERTH_MTU`, which
//! berth-overlay applies to each pod's veth pair unless the conflist sets
//! `mtu`).
//!
//! Without DirectRouting every peer is behind VXLAN, so pods get the VXLAN
//! MTU and never send a frame the tunnel cannot carry. With DirectRouting the
//! default is the underlay's MTU: frames to peers on the same L2 then go out
//! full-size, and a packet too big for a peer still on VXLAN is answered by
//! the sending pod's own node (ICMP "fragmentation needed" / "packet too
//! big" from the forward path, since the VXLAN device has the smaller MTU),
//! so path MTU discovery never depends on ICMP crossing the network.

use std::fmt;
use std::str::FromStr;

use crate::error::OverlayError;

/// IPv6's minimum link MTU: a pod network with IPv6 needs at least this.
const IPV6_MIN_MTU: u32 = 1280;
/// IPv4's minimum (RFC 791).
const IPV4_MIN_MTU: u32 = 68;

/// `--pod-mtu`: how the pods' MTU is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodMtu {
    /// The underlay's MTU with DirectRouting, the VXLAN MTU without.
    Auto,
    /// The VXLAN device's MTU (underlay - 50 for IPv4, - 70 for IPv6), as flannel gives pods.
    Vxlan,
    /// The underlay interface's MTU.
    Underlay,
    /// A number, at most the underlay's MTU.
    Fixed(u32),
}

impl FromStr for PodMtu {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" | "" => Ok(PodMtu::Auto),
            "vxlan" => Ok(PodMtu::Vxlan),
            "underlay" => Ok(PodMtu::Underlay),
            n => n
                .parse::<u32>()
                .map(PodMtu::Fixed)
                .map_err(|_| format!("{s:?} is not auto, vxlan, underlay or a number of bytes")),
        }
    }
}

impl fmt::Display for PodMtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodMtu::Auto => f.write_str("auto"),
            PodMtu::Vxlan => f.write_str("vxlan"),
            PodMtu::Underlay => f.write_str("underlay"),
            PodMtu::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// What a choice is resolved against on this node.
#[derive(Debug, Clone, Copy)]
pub struct MtuContext<'a> {
    pub underlay_name: &'a str,
    pub underlay_mtu: u32,
    pub vxlan_mtu: u32,
    pub direct_routing: bool,
    /// The cluster has an IPv6 network: pods need IPv6's minimum MTU.
    pub ipv6: bool,
}

impl PodMtu {
    /// The pods' MTU on this node, or a configuration error naming
    /// `--pod-mtu`.
    pub fn resolve(self, c: MtuContext<'_>) -> Result<u32, OverlayError> {
        let mtu = match self {
            PodMtu::Auto if c.direct_routing => c.underlay_mtu,
            PodMtu::Auto | PodMtu::Vxlan => c.vxlan_mtu,
            PodMtu::Underlay => c.underlay_mtu,
            PodMtu::Fixed(n) => n,
        };
        // A pod frame larger than the underlay's could go nowhere but
        // fragmentation on the node; below the minimum the pod loses IP.
        if mtu > c.underlay_mtu {
            return Err(OverlayError::config(
                "--pod-mtu",
                format!(
                    "{mtu} is above the MTU of the underlay interface {} ({})",
                    c.underlay_name, c.underlay_mtu
                ),
            ));
        }
        let min = if c.ipv6 { IPV6_MIN_MTU } else { IPV4_MIN_MTU };
        if mtu < min {
            return Err(OverlayError::config(
                "--pod-mtu",
                format!(
                    "{mtu} is below the minimum of {min}{}",
                    if c.ipv6 {
                        " for a network with IPv6"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(mtu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(direct_routing: bool) -> MtuContext<'static> {
        MtuContext {
            underlay_name: "eth0",
            underlay_mtu: 1500,
            vxlan_mtu: 1450,
            direct_routing,
            ipv6: false,
        }
    }

    #[test]
    fn auto_follows_direct_routing() {
        assert_eq!(PodMtu::Auto.resolve(ctx(false)).unwrap(), 1450);
        assert_eq!(PodMtu::Auto.resolve(ctx(true)).unwrap(), 1500);
        assert_eq!(PodMtu::Vxlan.resolve(ctx(true)).unwrap(), 1450);
        assert_eq!(PodMtu::Underlay.resolve(ctx(false)).unwrap(), 1500);
        assert_eq!(PodMtu::Fixed(1400).resolve(ctx(true)).unwrap(), 1400);
    }

    #[test]
    fn parses_words_and_numbers() {
        assert_eq!("auto".parse::<PodMtu>(), Ok(PodMtu::Auto));
        assert_eq!("".parse::<PodMtu>(), Ok(PodMtu::Auto));
        assert_eq!("vxlan".parse::<PodMtu>(), Ok(PodMtu::Vxlan));
        assert_eq!("underlay".parse::<PodMtu>(), Ok(PodMtu::Underlay));
        assert_eq!("9000".parse::<PodMtu>(), Ok(PodMtu::Fixed(9000)));
        let e = "jumbo".parse::<PodMtu>().unwrap_err();
        assert!(e.contains("jumbo") && e.contains("underlay"), "{e}");
        for p in [
            PodMtu::Auto,
            PodMtu::Vxlan,
            PodMtu::Underlay,
            PodMtu::Fixed(1400),
        ] {
            assert_eq!(p.to_string().parse::<PodMtu>(), Ok(p));
        }
    }

    #[test]
    fn refuses_what_the_node_cannot_carry() {
        let e = PodMtu::Fixed(9000)
            .resolve(ctx(true))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--pod-mtu: 9000") && e.contains("eth0") && e.contains("1500"),
            "{e}"
        );
        let e = PodMtu::Fixed(60)
            .resolve(ctx(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pod-mtu") && e.contains("68"), "{e}");
        let mut c = ctx(false);
        c.ipv6 = true;
        let e = PodMtu::Fixed(1000).resolve(c).unwrap_err().to_string();
        assert!(e.contains("1280") && e.contains("IPv6"), "{e}");
        assert_eq!(PodMtu::Fixed(1280).resolve(c).unwrap(), 1280);
    }
}
