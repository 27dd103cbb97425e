//! Results: one typed value (the 1.1.0 superset) that can be read from and
//! written to every spec version's layout.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::error::{CniError, ErrorCode};
use crate::version::{ResultFamily, SpecVersion};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// Reported from 1.1.0 on.
    pub mtu: Option<u32>,
    pub sandbox: String,
    /// 1.1.0: a socket path for userspace interfaces.
    pub socket_path: String,
    /// 1.1.0: PCI id of a device interface.
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet (host bits kept).
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// The 1.1.0 route attributes; dropped for older versions.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if !self.domain.is_empty() {
            m.insert("domain".into(), json!(self.domain));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }

    /// Reads a `dns` object (the same in every version).
    pub fn from_json(v: &Value, field: &str) -> Result<Dns, CniError> {
        let strings = |k: &str| -> Result<Vec<String>, CniError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|s| {
                        s.as_str().map(String::from).ok_or_else(|| {
                            CniError::invalid_config(format!(
                                "{field}.{k}: must be a list of strings"
                            ))
                        })
                    })
                    .collect(),
                Some(_) => Err(CniError::invalid_config(format!(
                    "{field}.{k}: must be a list of strings"
                ))),
            }
        };
        if !v.is_object() && !v.is_null() {
            return Err(CniError::invalid_config(format!(
                "{field}: must be an object"
            )));
        }
        Ok(Dns {
            nameservers: strings("nameservers")?,
            domain: v
                .get("domain")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            search: strings("search")?,
            options: strings("options")?,
        })
    }
}

/// A plugin's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

fn decode_err(field: &str, what: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::DecodingFailure, format!("{field}: {what}"))
}

fn parse_net(v: &Value, field: &str) -> Result<IpNetwork, CniError> {
    let s = v
        .as_str()
        .ok_or_else(|| decode_err(field, "must be a CIDR string"))?;
    if !s.contains('/') {
        return Err(decode_err(field, format!("{s:?} has no prefix length")));
    }
    s.parse::<IpNetwork>()
        .map_err(|e| decode_err(field, format!("{s:?} is not a CIDR address: {e}")))
}

fn parse_opt_ip(v: Option<&Value>, field: &str) -> Result<Option<IpAddr>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| decode_err(field, format!("{s:?} is not an IP address"))),
        Some(_) => Err(decode_err(field, "must be a string")),
    }
}

fn opt_u32(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

fn route_from_json(v: &Value, field: &str) -> Result<Route, CniError> {
    let dst = parse_net(
        v.get("dst").unwrap_or(&Value::Null),
        &format!("{field}.dst"),
    )?;
    Ok(Route {
        dst,
        gw: parse_opt_ip(v.get("gw"), &format!("{field}.gw"))?,
        mtu: opt_u32(v.get("mtu")),
        advmss: opt_u32(v.get("advmss")),
        priority: opt_u32(v.get("priority")),
        table: opt_u32(v.get("table")),
        scope: opt_u32(v.get("scope")),
    })
}

fn route_to_json(r: &Route, version: SpecVersion) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), r.dst.to_string().into());
    if let Some(gw) = r.gw {
        m.insert("gw".into(), gw.to_string().into());
    }
    if version >= SpecVersion::V1_1_0 {
        for (k, v) in [
            ("mtu", r.mtu),
            ("advmss", r.advmss),
            ("priority", r.priority),
            ("table", r.table),
            ("scope", r.scope),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
    }
    Value::Object(m)
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], CniError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(decode_err(key, "must be a list")),
    }
}

impl CniResult {
    /// Reads a result in any version. `default_version` is used when the
    /// object carries no `cniVersion` of its own.
    pub fn from_json(v: &Value, default_version: SpecVersion) -> Result<CniResult, CniError> {
        if !v.is_object() {
            return Err(decode_err("result", "must be a JSON object"));
        }
        let version = match v.get("cniVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => SpecVersion::parse_config_version(s)?,
            _ => default_version,
        };
        let dns = match v.get("dns") {
            Some(d) if !d.is_null() => {
                Dns::from_json(d, "dns").map_err(|e| decode_err("dns", e.msg))?
            }
            _ => Dns::default(),
        };
        let mut res = CniResult {
            dns,
            ..Default::default()
        };
        if version.result_family() == ResultFamily::Legacy {
            for key in ["ip4", "ip6"] {
                let Some(ipc) = v.get(key).filter(|x| !x.is_null()) else {
                    continue;
                };
                let address =
                    parse_net(ipc.get("ip").unwrap_or(&Value::Null), &format!("{key}.ip"))?;
                let gateway = parse_opt_ip(ipc.get("gateway"), &format!("{key}.gateway"))?;
                res.ips.push(IpConfig {
                    address,
                    gateway,
                    interface: None,
                });
                for (i, r) in array(ipc, "routes")?.iter().enumerate() {
                    res.routes
                        .push(route_from_json(r, &format!("{key}.routes[{i}]"))?);
                }
            }
            return Ok(res);
        }
        for (i, itf) in array(v, "interfaces")?.iter().enumerate() {
            let s = |k: &str| {
                itf.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            if !itf.is_object() {
                return Err(decode_err(&format!("interfaces[{i}]"), "must be an object"));
            }
            res.interfaces.push(Interface {
                name: s("name"),
                mac: s("mac"),
                mtu: opt_u32(itf.get("mtu")),
                sandbox: s("sandbox"),
                socket_path: s("socketPath"),
                pci_id: s("pciID"),
            });
        }
        for (i, ipc) in array(v, "ips")?.iter().enumerate() {
            let field = format!("ips[{i}]");
            let address = parse_net(
                ipc.get("address").unwrap_or(&Value::Null),
                &format!("{field}.address"),
            )?;
            let gateway = parse_opt_ip(ipc.get("gateway"), &format!("{field}.gateway"))?;
            let interface = match ipc.get("interface") {
                None | Some(Value::Null) => None,
                Some(n) => {
                    let idx = n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            decode_err(&format!("{field}.interface"), "must be an index")
                        })?;
                    Some(idx)
                }
            };
            res.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for (i, r) in array(v, "routes")?.iter().enumerate() {
            res.routes
                .push(route_from_json(r, &format!("routes[{i}]"))?);
        }
        Ok(res)
    }

    /// Writes the result in the layout of `version`, echoing `version_str`
    /// as `cniVersion`.
    pub fn to_json(&self, version: SpecVersion) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.as_str().into());
        match version.result_family() {
            ResultFamily::Legacy => {
                // 0.1/0.2 carry one address per family; routes go with the
                // family of their destination.
                for (key, want_v4) in [("ip4", true), ("ip6", false)] {
                    let Some(ipc) = self.ips.iter().find(|c| c.address.is_ipv4() == want_v4) else {
                        continue;
                    };
                    let mut o = Map::new();
                    o.insert("ip".into(), ipc.address.to_string().into());
                    if let Some(gw) = ipc.gateway {
                        o.insert("gateway".into(), gw.to_string().into());
                    }
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == want_v4)
                        .map(|r| route_to_json(r, version))
                        .collect();
                    if !routes.is_empty() {
                        o.insert("routes".into(), Value::Array(routes));
                    }
                    m.insert(key.into(), Value::Object(o));
                }
            }
            family => {
                if !self.interfaces.is_empty() {
                    let itfs = self
                        .interfaces
                        .iter()
                        .map(|i| {
                            let mut o = Map::new();
                            o.insert("name".into(), i.name.clone().into());
                            if !i.mac.is_empty() {
                                o.insert("mac".into(), i.mac.clone().into());
                            }
                            if version >= SpecVersion::V1_1_0 {
                                if let Some(mtu) = i.mtu {
                                    o.insert("mtu".into(), mtu.into());
                                }
                            }
                            if !i.sandbox.is_empty() {
                                o.insert("sandbox".into(), i.sandbox.clone().into());
                            }
                            if version >= SpecVersion::V1_1_0 {
                                if !i.socket_path.is_empty() {
                                    o.insert("socketPath".into(), i.socket_path.clone().into());
                                }
                                if !i.pci_id.is_empty() {
                                    o.insert("pciID".into(), i.pci_id.clone().into());
                                }
                            }
                            Value::Object(o)
                        })
                        .collect();
                    m.insert("interfaces".into(), Value::Array(itfs));
                }
                if !self.ips.is_empty() {
                    let ips = self
                        .ips
                        .iter()
                        .map(|c| {
                            let mut o = Map::new();
                            if family == ResultFamily::V03 {
                                o.insert(
                                    "version".into(),
                                    if c.address.is_ipv4() { "4" } else { "6" }.into(),
                                );
                            }
                            if let Some(i) = c.interface {
                                o.insert("interface".into(), i.into());
                            }
                            o.insert("address".into(), c.address.to_string().into());
                            if let Some(gw) = c.gateway {
                                o.insert("gateway".into(), gw.to_string().into());
                            }
                            Value::Object(o)
                        })
                        .collect();
                    m.insert("ips".into(), Value::Array(ips));
                }
                if !self.routes.is_empty() {
                    m.insert(
                        "routes".into(),
                        Value::Array(
                            self.routes
                                .iter()
                                .map(|r| route_to_json(r, version))
                                .collect(),
                        ),
                    );
                }
            }
        }
        m.insert("dns".into(), self.dns.to_json());
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "berth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: Some(1450),
                    sandbox: "/var/run/netns/p".into(),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().expect("net"),
                    gateway: Some("10.1.0.1".parse().expect("ip")),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().expect("net"),
                    gateway: Some("fd00::1".parse().expect("ip")),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route {
                    mtu: Some(1400),
                    ..Route::new("0.0.0.0/0".parse().expect("net"), None)
                },
                Route::new(
                    "::/0".parse().expect("net"),
                    Some("fd00::1".parse().expect("ip")),
                ),
            ],
            dns: Dns {
                nameservers: vec!["10.1.0.53".into()],
                search: vec!["svc".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v1_1_has_mtu_and_route_attributes_v1_0_does_not() {
        let r = sample();
        let v11 = r.to_json(SpecVersion::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["routes"][0]["mtu"], 1400);
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = r.to_json(SpecVersion::V1_0_0);
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert!(v10["routes"][0].get("mtu").is_none());
        assert_eq!(v10["cniVersion"], "1.0.0");
    }

    #[test]
    fn v03_family_has_ip_versions() {
        for v in [
            SpecVersion::V0_3_0,
            SpecVersion::V0_3_1,
            SpecVersion::V0_4_0,
        ] {
            let j = sample().to_json(v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert_eq!(j["cniVersion"], v.as_str());
        }
    }

    #[test]
    fn legacy_family_splits_by_address_family() {
        let j = sample().to_json(SpecVersion::V0_2_0);
        assert_eq!(j["ip4"]["ip"], "10.1.0.5/24");
        assert_eq!(j["ip4"]["gateway"], "10.1.0.1");
        assert_eq!(j["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(j["ip6"]["ip"], "fd00::5/64");
        assert_eq!(j["ip6"]["routes"][0]["gw"], "fd00::1");
        assert!(j.get("ips").is_none());
        assert_eq!(j["dns"]["nameservers"][0], "10.1.0.53");
    }

    #[test]
    fn round_trips_through_every_version() {
        for v in crate::version::ALL_VERSIONS {
            let j = sample().to_json(v);
            let back = CniResult::from_json(&j, SpecVersion::V1_1_0).expect("parse back");
            assert_eq!(back.ips.len(), 2, "{v}");
            assert_eq!(back.ips[0].address, sample().ips[0].address, "{v}");
            assert_eq!(back.routes.len(), 2, "{v}");
            assert_eq!(back.dns, sample().dns, "{v}");
            if v >= SpecVersion::V1_1_0 {
                assert_eq!(back, sample());
            }
        }
    }

    #[test]
    fn bad_results_are_decode_errors_naming_the_field() {
        let e = CniResult::from_json(
            &json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}),
            SpecVersion::V1_0_0,
        );
        let e = e.unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("ips[0].address"), "{}", e.msg);
        let e = CniResult::from_json(&json!({"ip4":{"ip":"x"}}), SpecVersion::V0_2_0).unwrap_err();
        assert!(e.msg.contains("ip4.ip"));
    }
}
