//! `berth-overlay`: the CNI plugin for the cluster network. It reads the
//! node's lease from the subnet file and attaches the pod with the bridge
//! library and `berth-host-local` on the node subnet: gateway on the
//! bridge, default route, a route to the whole cluster network, the pods'
//! MTU the agent chose, and masquerade only for traffic leaving the cluster
//! network.

use std::path::PathBuf;

use cni_bridge::BridgePlugin;
use cni_core::{CniError, CniResult, Command, NetConf, Plugin, PluginInfo, Request};
use serde_json::{json, Map, Value};

use crate::error::OverlayError;
use crate::subnet_file::SubnetInfo;

pub const INFO: PluginInfo = PluginInfo {
    name: "berth-overlay",
    version: env!("CARGO_PKG_VERSION"),
    description: "attaches pods to the node's subnet of a VXLAN overlay run by berth-overlayd",
};

pub const DEFAULT_SUBNET_FILE: &str = "/run/berth/subnet.env";

/// Keys passed through to the bridge unchanged.
const PASS_THROUGH: &[&str] = &[
    "hairpinMode",
    "promiscMode",
    "macspoofchk",
    "portIsolation",
    "ipMasqBackend",
    "ipamInProcess",
    "enabledad",
    "runtimeConfig",
    "args",
    "prevResult",
    "capabilities",
    "dns",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

pub struct OverlayPlugin;

fn subnet_file(conf: &NetConf) -> PathBuf {
    PathBuf::from(
        conf.raw
            .get("subnetFile")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SUBNET_FILE),
    )
}

/// The configuration handed to the bridge library (and, through it, to
/// berth-host-local). `command` decides the MTU: ADD gives a new pod the
/// node's current one (the subnet file's) unless the conflist names one;
/// for every other command only the conflist's counts, so that a pod made
/// before the node's pod MTU changed (`--pod-mtu`, an underlay MTU change)
/// is not reported broken by CHECK: it keeps working at its own MTU.
pub fn bridge_config(
    conf: &NetConf,
    info: Option<&SubnetInfo>,
    command: Command,
) -> Result<Vec<u8>, OverlayError> {
    let raw = &conf.raw;
    let data_dir = raw
        .get("dataDir")
        .and_then(Value::as_str)
        .unwrap_or("/var/lib/cni/berth");
    let mut out = Map::new();
    out.insert("cniVersion".into(), conf.version_str().into());
    out.insert("name".into(), conf.name.clone().into());
    out.insert("type".into(), "berth-bridge".into());
    out.insert(
        "bridge".into(),
        raw.get("bridge")
            .cloned()
            .unwrap_or_else(|| cni_bridge::DEFAULT_BRIDGE.into()),
    );
    out.insert("isGateway".into(), true.into());
    out.insert("isDefaultGateway".into(), true.into());
    out.insert(
        "ipMasq".into(),
        raw.get("ipMasq").cloned().unwrap_or(Value::Bool(true)),
    );
    out.insert("dataDir".into(), data_dir.into());
    for k in PASS_THROUGH {
        if let Some(v) = raw.get(*k) {
            out.insert((*k).into(), v.clone());
        }
    }
    let mut ipam = Map::new();
    ipam.insert(
        "type".into(),
        raw.get("ipamType")
            .cloned()
            .unwrap_or_else(|| "berth-host-local".into()),
    );
    ipam.insert("dataDir".into(), data_dir.into());
    let node_mtu = info
        .filter(|_| command == Command::Add)
        .map(|i| i.mtu.into());
    if let Some(mtu) = raw.get("mtu").cloned().or(node_mtu) {
        out.insert("mtu".into(), mtu);
    }
    if let Some(info) = info {
        let mut ranges = vec![json!([{ "subnet": info.subnet.to_string() }])];
        let mut routes = vec![json!({ "dst": info.network.to_string() })];
        let mut exclude = vec![json!(info.network.to_string())];
        if let (Some(n6), Some(s6)) = (info.network6, info.subnet6) {
            ranges.push(json!([{ "subnet": s6.to_string() }]));
            routes.push(json!({ "dst": n6.to_string() }));
            exclude.push(json!(n6.to_string()));
        }
        ipam.insert("ranges".into(), Value::Array(ranges));
        ipam.insert("routes".into(), Value::Array(routes));
        out.insert("ipMasqExclude".into(), Value::Array(exclude));
    }
    out.insert("ipam".into(), Value::Object(ipam));
    serde_json::to_vec(&Value::Object(out))
        .map_err(|e| OverlayError::Io(format!("building the bridge configuration: {e}")))
}

fn delegate_request(req: &Request, info: Option<&SubnetInfo>) -> Result<Request, OverlayError> {
    let stdin = bridge_config(&req.config, info, req.command)?;
    let config = NetConf::parse(&stdin)?;
    Ok(Request {
        command: req.command,
        env: req.env.clone(),
        config,
        stdin,
    })
}

fn read_info(req: &Request) -> Result<Option<SubnetInfo>, OverlayError> {
    let path = subnet_file(&req.config);
    SubnetInfo::read(&path).map_err(|e| OverlayError::SubnetFile(e.to_string()))
}

/// The bridge request for a command that needs the node's lease; without
/// it the error is `missing(path of the subnet file)`.
fn with_agent(
    req: &Request,
    missing: fn(PathBuf) -> OverlayError,
) -> Result<Request, OverlayError> {
    let info = read_info(req)?.ok_or_else(|| missing(subnet_file(&req.config)))?;
    delegate_request(req, Some(&info))
}

/// The bridge request for a command that works without the agent: the
/// bridge records and the IPAM store are enough to undo an attachment.
fn without_agent(req: &Request) -> Result<Request, OverlayError> {
    let info = read_info(req).ok().flatten();
    delegate_request(req, info.as_ref())
}

fn agent_not_ready(path: PathBuf) -> OverlayError {
    OverlayError::AgentNotReady { path }
}

impl Plugin for OverlayPlugin {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        BridgePlugin.add(&with_agent(req, agent_not_ready)?)
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        BridgePlugin.del(&without_agent(req)?)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        BridgePlugin.check(&with_agent(req, agent_not_ready)?)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        BridgePlugin.gc(&without_agent(req)?)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        // STATUS says "not available" rather than "try again": the runtime
        // polls it, and the agent's absence is the node's state.
        let d = with_agent(req, |path| OverlayError::AgentMissing { path })?;
        BridgePlugin.status(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_config_uses_the_node_subnet_and_excludes_the_cluster_network() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"pods","type":"berth-overlay","hairpinMode":true}"#,
        )
        .expect("conf");
        let info = SubnetInfo {
            node: "n".into(),
            network: "10.244.0.0/16".parse().expect("n"),
            subnet: "10.244.3.0/24".parse().expect("n"),
            network6: None,
            subnet6: None,
            mtu: 1450,
            vni: 1,
        };
        let cfg = |conf: &NetConf, command| -> Value {
            serde_json::from_slice(&bridge_config(conf, Some(&info), command).expect("cfg"))
                .expect("json")
        };
        let v = cfg(&conf, Command::Add);
        assert_eq!(v["type"], "berth-bridge");
        assert_eq!(v["mtu"], 1450);
        // CHECK holds a pod only to the conflist's MTU, not the node's
        // current one, which may have changed since the pod was made.
        assert!(cfg(&conf, Command::Check).get("mtu").is_none());
        let named = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"pods","type":"berth-overlay","mtu":1400}"#,
        )
        .expect("conf");
        for command in [Command::Add, Command::Check] {
            assert_eq!(cfg(&named, command)["mtu"], 1400, "{command:?}");
        }
        assert_eq!(v["hairpinMode"], true);
        assert_eq!(v["ipMasq"], true);
        assert_eq!(v["ipMasqExclude"][0], "10.244.0.0/16");
        assert_eq!(v["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(v["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
    }
}
