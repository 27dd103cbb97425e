//! The host-local IPAM configuration, read exactly as the reference plugin
//! reads it, plus the per-attachment requests (CNI_ARGS, args, runtimeConfig).

use std::net::IpAddr;
use std::path::PathBuf;

use cni_core::result::Route;
use cni_core::NetConf;
use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::error::IpamError;
use crate::range::{parse_range_sets, validate_sets, Range, RangeSet};

/// Where our stores live unless `dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/berth";
/// Where the reference host-local keeps its files, for the one-time import.
pub const REFERENCE_DATA_DIR: &str = "/var/lib/cni/networks";

/// One requested address and where it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub addr: IpAddr,
    pub source: &'static str,
}

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub network: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
    /// The directory holding this network's store.
    pub store_dir: PathBuf,
    /// A reference host-local directory to import from on first use.
    pub reference_dir: PathBuf,
    pub requested: Vec<Requested>,
}

fn ipam_str(ipam: &Map<String, Value>, key: &str) -> Result<Option<String>, IpamError> {
    match ipam.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(IpamError::config(format!("ipam.{key}"), "must be a string")),
    }
}

/// Accepts "10.0.0.5" and "10.0.0.5/24" (the reference accepts both).
fn parse_requested(s: &str, field: &str) -> Result<IpAddr, IpamError> {
    let addr_part = s.split('/').next().unwrap_or(s);
    addr_part
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| IpamError::config(field, format!("{s:?} is not an IP address")))
}

fn requested_list(
    v: Option<&Value>,
    field: &str,
    source: &'static str,
) -> Result<Vec<Requested>, IpamError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = format!("{field}[{i}]");
                let s = s
                    .as_str()
                    .ok_or_else(|| IpamError::config(&f, "must be a string"))?;
                Ok(Requested {
                    addr: parse_requested(s, &f)?,
                    source,
                })
            })
            .collect(),
        Some(_) => Err(IpamError::config(field, "must be a list of addresses")),
    }
}

fn parse_routes(v: Option<&Value>) -> Result<Vec<Route>, IpamError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| IpamError::config("ipam.routes", "must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("ipam.routes[{i}]");
            let dst_s = r
                .get("dst")
                .and_then(Value::as_str)
                .ok_or_else(|| IpamError::config(format!("{f}.dst"), "is required"))?;
            if !dst_s.contains('/') {
                return Err(IpamError::config(
                    format!("{f}.dst"),
                    format!("{dst_s:?} has no prefix length"),
                ));
            }
            let dst: IpNetwork = dst_s.parse().map_err(|e| {
                IpamError::config(format!("{f}.dst"), format!("{dst_s:?} is not a CIDR: {e}"))
            })?;
            let gw = match r
                .get("gw")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                None => None,
                Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                    IpamError::config(format!("{f}.gw"), format!("{s:?} is not an IP address"))
                })?),
            };
            Ok(Route::new(dst, gw))
        })
        .collect()
}

impl IpamConfig {
    /// Reads the configuration of one invocation. `cni_args` is the raw
    /// `CNI_ARGS`.
    pub fn from_netconf(conf: &NetConf, cni_args: &str) -> Result<IpamConfig, IpamError> {
        let ipam = conf.ipam.clone().unwrap_or_default();

        // Legacy single range first, then `ranges`, as the reference does.
        let mut sets = Vec::new();
        let mut names = Vec::new();
        let ip_ranges = conf.runtime_config.get("ipRanges").filter(|v| !v.is_null());
        if let Some(rc) = ip_ranges {
            sets = parse_range_sets(rc, "runtimeConfig.ipRanges")?;
            names = (0..sets.len())
                .map(|i| format!("runtimeConfig.ipRanges[{i}]"))
                .collect();
        } else {
            if let Some(subnet) = ipam_str(&ipam, "subnet")? {
                let ip = |k: &str| -> Result<Option<IpAddr>, IpamError> {
                    match ipam_str(&ipam, k)? {
                        None => Ok(None),
                        Some(s) => s.parse().map(Some).map_err(|_| {
                            IpamError::config(
                                format!("ipam.{k}"),
                                format!("{s:?} is not an IP address"),
                            )
                        }),
                    }
                };
                let r = Range::new(
                    &subnet,
                    ip("rangeStart")?,
                    ip("rangeEnd")?,
                    ip("gateway")?,
                    "ipam",
                )?;
                sets.push(RangeSet { ranges: vec![r] });
                names.push("ipam".to_string());
            }
            if let Some(ranges) = ipam.get("ranges").filter(|v| !v.is_null()) {
                let more = parse_range_sets(ranges, "ipam.ranges")?;
                names.extend((0..more.len()).map(|i| format!("ipam.ranges[{i}]")));
                sets.extend(more);
            }
        }
        if sets.is_empty() {
            return Err(IpamError::config(
                "ipam.ranges",
                "no address ranges are configured (set ipam.ranges or ipam.subnet)",
            ));
        }
        validate_sets(&sets, &names)?;

        let routes = parse_routes(ipam.get("routes"))?;
        let resolv_conf = ipam_str(&ipam, "resolvConf")?.map(PathBuf::from);
        let data_dir = ipam_str(&ipam, "dataDir")?;
        let store_dir =
            PathBuf::from(data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)).join(&conf.name);
        let reference_dir = match ipam_str(&ipam, "referenceDataDir")? {
            Some(d) => PathBuf::from(d).join(&conf.name),
            None => match &data_dir {
                Some(d) => PathBuf::from(d).join(&conf.name),
                None => PathBuf::from(REFERENCE_DATA_DIR).join(&conf.name),
            },
        };

        let mut requested = Vec::new();
        if let Some(ips) = cni_core::env::cni_arg(cni_args, "IP") {
            for (i, s) in ips.split(',').filter(|s| !s.is_empty()).enumerate() {
                requested.push(Requested {
                    addr: parse_requested(s, &format!("CNI_ARGS IP[{i}]"))?,
                    source: "CNI_ARGS IP",
                });
            }
        }
        requested.extend(requested_list(
            conf.cni_arg("ips"),
            "args.cni.ips",
            "args.cni.ips",
        )?);
        requested.extend(requested_list(
            conf.runtime_config.get("ips"),
            "runtimeConfig.ips",
            "runtimeConfig.ips",
        )?);
        // The same address asked twice (say in CNI_ARGS and runtimeConfig) is one request.
        let mut seen = std::collections::HashSet::new();
        requested.retain(|r| seen.insert(r.addr));

        Ok(IpamConfig {
            network: conf.name.clone(),
            range_sets: sets,
            routes,
            resolv_conf,
            store_dir,
            reference_dir,
            requested,
        })
    }

    /// The ranges, for messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.range_sets.iter().map(|s| format!("[{s}]")).collect();
        parts.join(", ")
    }
}

/// Used in tests and docs: a minimal config object.
pub fn example_config(name: &str, subnet: &str) -> Value {
    json!({"cniVersion":"1.1.0","name":name,"type":"berth-host-local","ipam":{"type":"berth-host-local","subnet":subnet}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes()).expect("netconf")
    }

    #[test]
    fn legacy_range_comes_first_then_ranges() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","ipam":{
            "subnet":"10.1.0.0/24","rangeStart":"10.1.0.10",
            "ranges":[[{"subnet":"fd00::/64"}]],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.0.254"}],
            "dataDir":"/tmp/x","resolvConf":"/etc/r.conf"}}));
        let c = IpamConfig::from_netconf(&c, "").expect("ok");
        assert_eq!(c.range_sets.len(), 2);
        assert_eq!(c.range_sets[0].ranges[0].start.to_string(), "10.1.0.10");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.store_dir, PathBuf::from("/tmp/x/n"));
        assert_eq!(c.reference_dir, PathBuf::from("/tmp/x/n"));
    }

    #[test]
    fn requested_addresses_from_all_three_places() {
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.1.0.0/24"},
            "args":{"cni":{"ips":["10.1.0.7/24"]}},"runtimeConfig":{"ips":["fd00::9","10.1.0.7"]}}),
        );
        let c = IpamConfig::from_netconf(&c, "IgnoreUnknown=1;IP=10.1.0.5,10.1.0.6").expect("ok");
        let addrs: Vec<String> = c.requested.iter().map(|r| r.addr.to_string()).collect();
        assert_eq!(addrs, vec!["10.1.0.5", "10.1.0.6", "10.1.0.7", "fd00::9"]);
        assert_eq!(c.requested[2].source, "args.cni.ips");
    }

    #[test]
    fn runtime_ip_ranges_replace_ranges() {
        let c = conf(
            json!({"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.1.0.0/24"},
            "runtimeConfig":{"ipRanges":[[{"subnet":"10.2.0.0/16"}]]}}),
        );
        let c = IpamConfig::from_netconf(&c, "").expect("ok");
        assert_eq!(c.range_sets.len(), 1);
        assert_eq!(c.range_sets[0].ranges[0].subnet.to_string(), "10.2.0.0/16");
        assert_eq!(c.reference_dir, PathBuf::from("/var/lib/cni/networks/n"));
    }

    #[test]
    fn errors_name_fields() {
        let cases = [
            (json!({"subnet":"10.0.0.0/33"}), "ipam.subnet"),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.9.1"}]]}),
                "ipam.ranges[0][0].rangeStart",
            ),
            (
                json!({"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.128/25"}]]}),
                "ipam.ranges[1]",
            ),
            (json!({}), "ipam.ranges"),
            (
                json!({"subnet":"10.0.0.0/24","routes":[{"dst":"bad"}]}),
                "ipam.routes[0].dst",
            ),
            (json!({"subnet":"10.0.0.0/24","dataDir":7}), "ipam.dataDir"),
        ];
        for (ipam, field) in cases {
            let c = conf(json!({"cniVersion":"1.0.0","name":"n","ipam":ipam}));
            match IpamConfig::from_netconf(&c, "") {
                Err(IpamError::Config { field: f, .. }) => assert_eq!(f, field, "{ipam}"),
                other => panic!("{ipam}: {other:?}"),
            }
        }
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"}}));
        assert!(IpamConfig::from_netconf(&c, "IP=nope").is_err());
    }
}
