//! Address ranges and range sets, with the reference host-local's defaults:
//! the gateway defaults to the subnet's first address, a range starts after
//! the network address and ends before the IPv4 broadcast address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::error::IpamError;

/// An address as a number, IPv4 mapped into ::ffff:0:0/96 so both families
/// share one ordered key space in the store.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(n: u128, v4: bool) -> IpAddr {
    let v6 = Ipv6Addr::from(n);
    if v4 {
        if let Some(a) = v6.to_ipv4_mapped() {
            return IpAddr::V4(a);
        }
    }
    IpAddr::V6(v6)
}

/// The 16-byte big-endian key stored for an address: byte order = numeric order.
pub fn key(ip: IpAddr) -> [u8; 16] {
    to_u128(ip).to_be_bytes()
}

/// One range of a range set, canonicalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
    /// Whether `gateway` was configured (results report it either way).
    pub gateway_set: bool,
}

impl Range {
    pub fn is_v4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    pub fn start_n(&self) -> u128 {
        to_u128(self.start)
    }

    pub fn end_n(&self) -> u128 {
        to_u128(self.end)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_v4() && {
            let n = to_u128(ip);
            n >= self.start_n() && n <= self.end_n()
        }
    }

    /// Addresses that are never handed out: the gateway, the network
    /// address and (IPv4) the broadcast address.
    pub fn is_reserved(&self, n: u128) -> bool {
        n == to_u128(self.gateway)
            || n == to_u128(self.subnet.network())
            || (self.is_v4() && n == to_u128(self.subnet.broadcast()))
    }

    /// Number of addresses between start and end, including both.
    pub fn size(&self) -> u128 {
        self.end_n() - self.start_n() + 1
    }

    /// Reads and canonicalizes a range object at JSON path `field`.
    pub fn from_json(v: &Value, field: &str) -> Result<Range, IpamError> {
        let obj = v
            .as_object()
            .ok_or_else(|| IpamError::config(field, "must be an object"))?;
        let get_str = |k: &str| -> Result<Option<String>, IpamError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(IpamError::config(
                    format!("{field}.{k}"),
                    "must be a string",
                )),
            }
        };
        let subnet_s = get_str("subnet")?
            .ok_or_else(|| IpamError::config(format!("{field}.subnet"), "is required"))?;
        let gateway = parse_ip_opt(get_str("gateway")?, &format!("{field}.gateway"))?;
        let start = parse_ip_opt(get_str("rangeStart")?, &format!("{field}.rangeStart"))?;
        let end = parse_ip_opt(get_str("rangeEnd")?, &format!("{field}.rangeEnd"))?;
        Range::new(&subnet_s, start, end, gateway, field)
    }

    /// Builds a range from its parts, applying the defaults and checks.
    pub fn new(
        subnet_s: &str,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
        field: &str,
    ) -> Result<Range, IpamError> {
        let sfield = format!("{field}.subnet");
        if !subnet_s.contains('/') {
            return Err(IpamError::config(
                &sfield,
                format!("{subnet_s:?} is not a CIDR subnet (no prefix length)"),
            ));
        }
        let subnet: IpNetwork = subnet_s.parse().map_err(|e| {
            IpamError::config(&sfield, format!("{subnet_s:?} is not a valid subnet: {e}"))
        })?;
        if subnet.ip() != subnet.network() {
            return Err(IpamError::config(
                &sfield,
                format!(
                    "{subnet_s} has host bits set; the network address is {}/{}",
                    subnet.network(),
                    subnet.prefix()
                ),
            ));
        }
        let bits: u8 = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > bits - 2 {
            return Err(IpamError::config(
                &sfield,
                format!("{subnet_s} is too small to allocate from"),
            ));
        }
        let first = to_u128(subnet.network()) + 1;
        let last_addr = to_u128(if subnet.is_ipv4() {
            subnet.broadcast()
        } else {
            IpAddr::V6(last_v6(&subnet))
        });
        let last = if subnet.is_ipv4() {
            last_addr - 1
        } else {
            last_addr
        };
        let v4 = subnet.is_ipv4();
        let in_subnet = |ip: IpAddr| ip.is_ipv4() == v4 && subnet.contains(ip);
        for (name, ip) in [
            ("gateway", gateway),
            ("rangeStart", start),
            ("rangeEnd", end),
        ] {
            if let Some(ip) = ip {
                if ip.is_ipv4() != v4 {
                    return Err(IpamError::config(
                        format!("{field}.{name}"),
                        format!("{ip} is not of the same address family as subnet {subnet}"),
                    ));
                }
                if name != "gateway" && !in_subnet(ip) {
                    return Err(IpamError::config(
                        format!("{field}.{name}"),
                        format!("{ip} is outside subnet {subnet}"),
                    ));
                }
            }
        }
        let start_n = start.map(to_u128).unwrap_or(first);
        let end_n = end.map(to_u128).unwrap_or(last);
        if start_n > end_n {
            return Err(IpamError::config(
                format!("{field}.rangeStart"),
                format!(
                    "{} is after rangeEnd {}",
                    from_u128(start_n, v4),
                    from_u128(end_n, v4)
                ),
            ));
        }
        Ok(Range {
            subnet,
            start: from_u128(start_n, v4),
            end: from_u128(end_n, v4),
            gateway: gateway.unwrap_or_else(|| from_u128(first, v4)),
            gateway_set: gateway.is_some(),
        })
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_v4() == other.is_v4()
            && self.start_n() <= other.end_n()
            && other.start_n() <= self.end_n()
    }
}

fn last_v6(net: &IpNetwork) -> Ipv6Addr {
    let base = to_u128(net.network());
    let host_bits = 128 - u32::from(net.prefix());
    let mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Ipv6Addr::from(base | mask)
}

fn parse_ip_opt(s: Option<String>, field: &str) -> Result<Option<IpAddr>, IpamError> {
    match s {
        None => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(Some)
            .map_err(|_| IpamError::config(field, format!("{s:?} is not an IP address"))),
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}-{}", self.subnet, self.start, self.end)
    }
}

/// A list of ranges from which one address is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn is_v4(&self) -> bool {
        self.ranges.first().map(Range::is_v4).unwrap_or(true)
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.ranges.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Reads a list of range sets (`ranges` or `runtimeConfig.ipRanges`) at `field`.
pub fn parse_range_sets(v: &Value, field: &str) -> Result<Vec<RangeSet>, IpamError> {
    let sets = v
        .as_array()
        .ok_or_else(|| IpamError::config(field, "must be a list of range sets"))?;
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let sfield = format!("{field}[{i}]");
        let ranges = set
            .as_array()
            .ok_or_else(|| IpamError::config(&sfield, "must be a list of ranges"))?;
        if ranges.is_empty() {
            return Err(IpamError::config(&sfield, "is an empty range set"));
        }
        let ranges = ranges
            .iter()
            .enumerate()
            .map(|(j, r)| Range::from_json(r, &format!("{sfield}[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(RangeSet { ranges });
    }
    Ok(out)
}

/// Checks the rules between ranges: one family per set, and no range
/// overlapping another in the same or another set. `names[i]` is the JSON
/// path of set `i`, used in messages.
pub fn validate_sets(sets: &[RangeSet], names: &[String]) -> Result<(), IpamError> {
    for (i, set) in sets.iter().enumerate() {
        let v4 = set.is_v4();
        for (j, r) in set.ranges.iter().enumerate() {
            if r.is_v4() != v4 {
                return Err(IpamError::config(
                    format!("{}[{j}]", names[i]),
                    "mixes address families: every range of a range set must be IPv4 or every one IPv6",
                ));
            }
            for (k, other) in set.ranges.iter().enumerate().take(j) {
                if r.overlaps(other) {
                    return Err(IpamError::config(
                        format!("{}[{j}]", names[i]),
                        format!("range {r} overlaps {}[{k}] ({other})", names[i]),
                    ));
                }
            }
        }
        for (k, prev) in sets.iter().enumerate().take(i) {
            for r in &set.ranges {
                for o in &prev.ranges {
                    if r.overlaps(o) {
                        return Err(IpamError::config(
                            &names[i],
                            format!("range set overlaps {} ({r} and {o})", names[k]),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

pub fn v4_unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv4_defaults_match_the_reference() {
        let r = Range::from_json(&json!({"subnet":"10.1.2.0/24"}), "r").expect("ok");
        assert_eq!(r.start, ip("10.1.2.1"));
        assert_eq!(r.end, ip("10.1.2.254"));
        assert_eq!(r.gateway, ip("10.1.2.1"));
        assert!(r.is_reserved(to_u128(ip("10.1.2.1"))));
        assert!(r.is_reserved(to_u128(ip("10.1.2.0"))));
        assert!(r.is_reserved(to_u128(ip("10.1.2.255"))));
        assert!(!r.is_reserved(to_u128(ip("10.1.2.2"))));
    }

    #[test]
    fn ipv6_defaults_run_to_the_last_address() {
        let r = Range::from_json(&json!({"subnet":"fd00:1::/120"}), "r").expect("ok");
        assert_eq!(r.start, ip("fd00:1::1"));
        assert_eq!(r.end, ip("fd00:1::ff"));
        assert_eq!(r.size(), 255);
    }

    #[test]
    fn bad_ranges_name_their_field() {
        let cases = [
            (json!({"subnet":"10.0.0.0/33"}), "r.subnet"),
            (json!({"subnet":"10.0.0.0"}), "r.subnet"),
            (json!({"subnet":"10.0.0.1/24"}), "r.subnet"),
            (json!({"subnet":"10.0.0.0/31"}), "r.subnet"),
            (
                json!({"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}),
                "r.rangeStart",
            ),
            (
                json!({"subnet":"10.0.0.0/24","rangeEnd":"10.9.0.5"}),
                "r.rangeEnd",
            ),
            (
                json!({"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.5"}),
                "r.rangeStart",
            ),
            (
                json!({"subnet":"10.0.0.0/24","gateway":"fd00::1"}),
                "r.gateway",
            ),
            (
                json!({"subnet":"10.0.0.0/24","gateway":"nope"}),
                "r.gateway",
            ),
            (json!({}), "r.subnet"),
        ];
        for (v, field) in cases {
            match Range::from_json(&v, "r") {
                Err(IpamError::Config { field: f, .. }) => assert_eq!(f, field, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn overlapping_sets_are_refused() {
        let v = json!([[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]);
        let sets = parse_range_sets(&v, "ipam.ranges").expect("parse");
        let names = vec!["ipam.ranges[0]".to_string(), "ipam.ranges[1]".to_string()];
        let e = validate_sets(&sets, &names).unwrap_err().to_string();
        assert!(
            e.contains("ipam.ranges[1]") && e.contains("ipam.ranges[0]"),
            "{e}"
        );
        let mixed = json!([[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]);
        let sets = parse_range_sets(&mixed, "ipam.ranges").expect("parse");
        assert!(validate_sets(&sets, &names[..1]).is_err());
        let ok = json!([[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]);
        let sets = parse_range_sets(&ok, "ipam.ranges").expect("parse");
        assert!(validate_sets(&sets, &names).is_ok());
    }

    #[test]
    fn keys_order_like_addresses() {
        assert!(key(ip("10.0.0.2")) < key(ip("10.0.0.10")));
        assert!(key(ip("10.0.0.255")) < key(ip("10.0.1.0")));
        assert_eq!(from_u128(to_u128(ip("10.0.0.7")), true), ip("10.0.0.7"));
        assert_eq!(from_u128(to_u128(ip("fd00::7")), false), ip("fd00::7"));
    }
}
