//! The bridge configuration: every key of the reference `bridge` plugin with
//! the same meaning and default (except the bridge name, `berth0`), plus
//! Berth's own camelCase keys.

use std::path::PathBuf;

use cni_core::{Dns, NetConf};
use host_net::netlink::parse_mac;
use serde_json::{Map, Value};

use crate::error::BridgeError;

pub const DEFAULT_BRIDGE: &str = "berth0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/berth";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    Nftables,
    Iptables,
}

impl MasqBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            MasqBackend::Nftables => "nftables",
            MasqBackend::Iptables => "iptables",
        }
    }

    pub fn parse(s: &str) -> Option<MasqBackend> {
        match s {
            "nftables" => Some(MasqBackend::Nftables),
            "iptables" => Some(MasqBackend::Iptables),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BridgeConf {
    pub network: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub masq_backend: MasqBackend,
    /// 0: the kernel's default.
    pub mtu: u32,
    pub hairpin: bool,
    pub promisc: bool,
    /// Access VLAN (untagged, PVID) of the pod's port; 0 = none.
    pub vlan: u16,
    /// Tagged VLANs of the pod's port.
    pub vlan_trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    pub enable_dad: bool,
    pub mac_spoof_check: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// The pod interface's MAC, if the runtime chose one.
    pub mac: Option<[u8; 6]>,
    pub dns: Option<Dns>,
    /// `ipam.type`; None for an L2-only network (`"ipam": {}`).
    pub ipam_type: Option<String>,
    /// `ipamInProcess` (Berth, default true): run berth-host-local's code in
    /// this process rather than exec it from CNI_PATH.
    pub ipam_in_process: bool,
    /// Where per-attachment records live: `<dataDir>/<network>/`.
    pub data_dir: PathBuf,
    /// `ipMasqExclude` (Berth): destinations never masqueraded; default the
    /// pod's own subnet. The overlay sets the whole cluster network here.
    pub masq_exclude: Vec<ipnetwork::IpNetwork>,
}

fn get_bool(raw: &Map<String, Value>, key: &str, default: bool) -> Result<bool, BridgeError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(BridgeError::config(key, "must be true or false")),
    }
}

fn get_u64(raw: &Map<String, Value>, key: &str) -> Result<Option<u64>, BridgeError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            BridgeError::config(key, format!("must be a non-negative integer, not {v}"))
        }),
    }
}

fn get_str<'a>(raw: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, BridgeError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
        Some(_) => Err(BridgeError::config(key, "must be a string")),
    }
}

fn vlan_id(v: &Value, field: &str) -> Result<u16, BridgeError> {
    v.as_u64()
        .filter(|n| (1..=4094).contains(n))
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| BridgeError::config(field, format!("{v} is not a VLAN id (1-4094)")))
}

fn parse_trunk(v: Option<&Value>) -> Result<Vec<u16>, BridgeError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| BridgeError::config("vlanTrunk", "must be a list"))?;
    let mut out = std::collections::BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let f = format!("vlanTrunk[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| BridgeError::config(&f, "must be an object"))?;
        match (obj.get("minID"), obj.get("maxID")) {
            (Some(min), Some(max)) => {
                let min = vlan_id(min, &format!("{f}.minID"))?;
                let max = vlan_id(max, &format!("{f}.maxID"))?;
                if max < min {
                    return Err(BridgeError::config(
                        &f,
                        format!("minID {min} is greater than maxID {max}"),
                    ));
                }
                out.extend(min..=max);
            }
            (Some(_), None) => {
                return Err(BridgeError::config(
                    format!("{f}.maxID"),
                    "is required with minID",
                ))
            }
            (None, Some(_)) => {
                return Err(BridgeError::config(
                    format!("{f}.minID"),
                    "is required with maxID",
                ))
            }
            (None, None) => {}
        }
        if let Some(id) = obj.get("id") {
            out.insert(vlan_id(id, &format!("{f}.id"))?);
        }
    }
    Ok(out.into_iter().collect())
}

fn mac_from(s: &str, field: &str) -> Result<[u8; 6], BridgeError> {
    let mac = parse_mac(&s.to_ascii_lowercase())
        .ok_or_else(|| BridgeError::config(field, format!("{s:?} is not a MAC address")))?;
    if mac[0] & 1 == 1 {
        return Err(BridgeError::config(
            field,
            format!("{s} is a multicast MAC address"),
        ));
    }
    Ok(mac)
}

impl BridgeConf {
    pub fn parse(conf: &NetConf, cni_args: &str) -> Result<BridgeConf, BridgeError> {
        let raw = &conf.raw;
        let bridge = get_str(raw, "bridge")?
            .unwrap_or(DEFAULT_BRIDGE)
            .to_string();
        cni_core::env::validate_ifname(&bridge).map_err(|_| {
            BridgeError::config(
                "bridge",
                format!("{bridge:?} is not a valid interface name"),
            )
        })?;
        let is_default_gateway = get_bool(raw, "isDefaultGateway", false)?;
        let is_gateway = get_bool(raw, "isGateway", false)? || is_default_gateway;
        let mtu = match get_u64(raw, "mtu")? {
            None | Some(0) => 0,
            Some(m) if (68..=65535).contains(&m) => m as u32,
            Some(m) => {
                return Err(BridgeError::config(
                    "mtu",
                    format!("{m} is outside 68-65535"),
                ))
            }
        };
        let vlan = match get_u64(raw, "vlan")? {
            None | Some(0) => 0,
            Some(v) if v <= 4094 => v as u16,
            Some(v) => {
                return Err(BridgeError::config(
                    "vlan",
                    format!("{v} is not a VLAN id (0-4094)"),
                ))
            }
        };
        let vlan_trunk = parse_trunk(raw.get("vlanTrunk"))?;
        if vlan != 0 && !vlan_trunk.is_empty() {
            return Err(BridgeError::config(
                "vlanTrunk",
                "cannot be set together with vlan: a port is either an access port or a trunk",
            ));
        }
        let hairpin = get_bool(raw, "hairpinMode", false)?;
        let promisc = get_bool(raw, "promiscMode", false)?;
        if hairpin && promisc {
            return Err(BridgeError::config(
                "hairpinMode",
                "cannot be set together with promiscMode",
            ));
        }
        let masq_backend = match get_str(raw, "ipMasqBackend")? {
            // nftables is programmed over netlink: no binary to look for.
            None => MasqBackend::Nftables,
            Some(s) => MasqBackend::parse(s).ok_or_else(|| {
                BridgeError::config(
                    "ipMasqBackend",
                    format!("{s:?} is not \"nftables\" or \"iptables\""),
                )
            })?,
        };
        let ipam_type = match &conf.ipam {
            None => None,
            Some(m) => match m.get("type") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(BridgeError::config("ipam.type", "must be a string")),
            },
        };
        let disable_container_interface = get_bool(raw, "disableContainerInterface", false)?;
        if disable_container_interface && ipam_type.is_some() {
            return Err(BridgeError::config(
                "disableContainerInterface",
                "cannot be used with IPAM: a pod interface that stays down cannot carry addresses",
            ));
        }
        // MAC: CNI_ARGS, then args.cni.mac, then runtimeConfig.mac; the last one set wins.
        let mut mac = None;
        if let Some(m) = cni_core::env::cni_arg(cni_args, "MAC").filter(|s| !s.is_empty()) {
            mac = Some(mac_from(&m, "CNI_ARGS MAC")?);
        }
        if let Some(m) = conf
            .cni_arg("mac")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            mac = Some(mac_from(m, "args.cni.mac")?);
        }
        if let Some(m) = conf
            .runtime_config
            .get("mac")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            mac = Some(mac_from(m, "runtimeConfig.mac")?);
        }
        let dns = match &conf.dns {
            None => None,
            Some(v) => {
                let d = Dns::from_json(v, "dns").map_err(|e| BridgeError::config("dns", e.msg))?;
                (!d.is_empty()).then_some(d)
            }
        };
        let data_dir = PathBuf::from(get_str(raw, "dataDir")?.unwrap_or(DEFAULT_DATA_DIR));
        let masq_exclude = match raw.get("ipMasqExclude") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let f = format!("ipMasqExclude[{i}]");
                    let s = v
                        .as_str()
                        .ok_or_else(|| BridgeError::config(&f, "must be a CIDR string"))?;
                    let n: ipnetwork::IpNetwork = s.parse().map_err(|e| {
                        BridgeError::config(&f, format!("{s:?} is not a CIDR: {e}"))
                    })?;
                    Ok(n)
                })
                .collect::<Result<_, BridgeError>>()?,
            Some(_) => {
                return Err(BridgeError::config(
                    "ipMasqExclude",
                    "must be a list of CIDRs",
                ))
            }
        };
        Ok(BridgeConf {
            network: conf.name.clone(),
            bridge,
            is_gateway,
            is_default_gateway,
            force_address: get_bool(raw, "forceAddress", false)?,
            ip_masq: get_bool(raw, "ipMasq", false)?,
            masq_backend,
            mtu,
            hairpin,
            promisc,
            vlan,
            vlan_trunk,
            preserve_default_vlan: get_bool(raw, "preserveDefaultVlan", true)?,
            enable_dad: get_bool(raw, "enabledad", false)?,
            mac_spoof_check: get_bool(raw, "macspoofchk", false)?,
            disable_container_interface,
            port_isolation: get_bool(raw, "portIsolation", false)?,
            mac,
            dns,
            ipam_type,
            ipam_in_process: get_bool(raw, "ipamInProcess", true)?,
            data_dir,
            masq_exclude,
        })
    }

    pub fn vlan_filtering(&self) -> bool {
        self.vlan != 0 || !self.vlan_trunk.is_empty()
    }

    pub fn records_dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value, args: &str) -> Result<BridgeConf, BridgeError> {
        let c = NetConf::parse(v.to_string().as_bytes()).expect("netconf");
        BridgeConf::parse(&c, args)
    }

    fn field_of(r: Result<BridgeConf, BridgeError>) -> String {
        match r {
            Err(BridgeError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_reference_except_the_bridge_name() {
        let c = parse(json!({"cniVersion":"1.0.0","name":"n","type":"berth-bridge","ipam":{"type":"host-local"}}), "").expect("ok");
        assert_eq!(c.bridge, "berth0");
        assert!(!c.is_gateway && !c.ip_masq && !c.hairpin && !c.promisc);
        assert!(c.preserve_default_vlan);
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.records_dir(), PathBuf::from("/var/lib/cni/berth/n"));
    }

    #[test]
    fn default_gateway_implies_gateway_and_l2_only_has_no_ipam() {
        let c = parse(
            json!({"cniVersion":"1.0.0","name":"n","isDefaultGateway":true,"ipam":{}}),
            "",
        )
        .expect("ok");
        assert!(c.is_gateway);
        assert!(c.ipam_type.is_none());
    }

    #[test]
    fn trunk_ranges_and_ids_are_merged_and_sorted() {
        let c = parse(json!({"cniVersion":"1.0.0","name":"n","vlanTrunk":[{"id":42},{"minID":100,"maxID":102},{"id":101}]}), "").expect("ok");
        assert_eq!(c.vlan_trunk, vec![42, 100, 101, 102]);
        assert!(c.vlan_filtering());
    }

    #[test]
    fn mac_precedence_runtime_config_wins() {
        let c = parse(
            json!({"cniVersion":"1.0.0","name":"n","args":{"cni":{"mac":"02:00:00:00:00:02"}},"runtimeConfig":{"mac":"02:00:00:00:00:03"}}),
            "MAC=02:00:00:00:00:01",
        )
        .expect("ok");
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 3]));
        let c = parse(
            json!({"cniVersion":"1.0.0","name":"n"}),
            "IgnoreUnknown=1;MAC=02:00:00:00:00:01",
        )
        .expect("ok");
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = |extra: Value| {
            let mut v = json!({"cniVersion":"1.0.0","name":"n"});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        assert_eq!(field_of(parse(base(json!({"vlan":5000})), "")), "vlan");
        assert_eq!(
            field_of(parse(base(json!({"vlan":3,"vlanTrunk":[{"id":4}]})), "")),
            "vlanTrunk"
        );
        assert_eq!(
            field_of(parse(
                base(json!({"vlanTrunk":[{"minID":9,"maxID":3}]})),
                ""
            )),
            "vlanTrunk[0]"
        );
        assert_eq!(
            field_of(parse(base(json!({"vlanTrunk":[{"minID":9}]})), "")),
            "vlanTrunk[0].maxID"
        );
        assert_eq!(field_of(parse(base(json!({"mtu":20})), "")), "mtu");
        assert_eq!(
            field_of(parse(
                base(json!({"hairpinMode":true,"promiscMode":true})),
                ""
            )),
            "hairpinMode"
        );
        assert_eq!(
            field_of(parse(base(json!({"ipMasqBackend":"pf"})), "")),
            "ipMasqBackend"
        );
        assert_eq!(
            field_of(parse(base(json!({"bridge":"a-bridge-name-too-long"})), "")),
            "bridge"
        );
        assert_eq!(
            field_of(parse(base(json!({"isGateway":"yes"})), "")),
            "isGateway"
        );
        assert_eq!(
            field_of(parse(base(json!({"runtimeConfig":{"mac":"zz"}})), "")),
            "runtimeConfig.mac"
        );
        assert_eq!(
            field_of(parse(
                base(json!({"runtimeConfig":{"mac":"01:00:00:00:00:01"}})),
                ""
            )),
            "runtimeConfig.mac"
        );
        assert_eq!(
            field_of(parse(
                base(json!({"disableContainerInterface":true,"ipam":{"type":"host-local"}})),
                ""
            )),
            "disableContainerInterface"
        );
        assert_eq!(
            field_of(parse(json!({"cniVersion":"1.0.0","name":"n"}), "MAC=nope")),
            "CNI_ARGS MAC"
        );
    }
}
