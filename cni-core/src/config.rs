//! Network configuration as a plugin receives it on stdin.
//!
//! The well-known keys are typed; every key is also kept in `raw` so a
//! plugin can read its own keys and nothing the runtime sent is lost.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::env::validate_network_name;
use crate::error::{CniError, ErrorCode};
use crate::version::SpecVersion;

/// One plugin's configuration, as found on stdin.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The `cniVersion` string exactly as sent (may be empty for 0.1.0).
    pub cni_version_raw: String,
    pub version: SpecVersion,
    pub name: String,
    pub plugin_type: String,
    /// The `ipam` object, if any (an empty object means "no IPAM").
    pub ipam: Option<Map<String, Value>>,
    pub dns: Option<Value>,
    pub capabilities: Map<String, Value>,
    pub runtime_config: Map<String, Value>,
    pub args: Option<Value>,
    pub prev_result: Option<Value>,
    /// Every key of the object, known or not.
    pub raw: Map<String, Value>,
}

fn opt_object(raw: &Map<String, Value>, key: &str) -> Result<Option<Map<String, Value>>, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(CniError::invalid_config(format!(
            "{key}: must be a JSON object"
        ))),
    }
}

fn opt_string(raw: &Map<String, Value>, key: &str) -> Result<String, CniError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(CniError::invalid_config(format!("{key}: must be a string"))),
    }
}

/// Parses stdin into a JSON object, with the spec's decode-failure code.
pub fn parse_json_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CniError::new(
            ErrorCode::DecodingFailure,
            "network configuration on stdin must be a JSON object",
        )),
        Err(e) => Err(CniError::new(
            ErrorCode::DecodingFailure,
            format!("network configuration on stdin is not valid JSON: {e}"),
        )),
    }
}

/// Reads just the version of a configuration, for error reporting before
/// the whole configuration is known to be valid.
pub fn peek_version(stdin: &[u8]) -> Option<SpecVersion> {
    let m = parse_json_object(stdin).ok()?;
    let s = m.get("cniVersion")?.as_str()?;
    s.parse().ok()
}

impl NetConf {
    /// Parses and validates a plugin configuration.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw = parse_json_object(stdin)?;
        let cni_version_raw = opt_string(&raw, "cniVersion")?;
        let version = SpecVersion::parse_config_version(&cni_version_raw)?;
        let name = opt_string(&raw, "name")?;
        validate_network_name(&name)?;
        let plugin_type = opt_string(&raw, "type")?;
        let ipam = opt_object(&raw, "ipam")?;
        let capabilities = opt_object(&raw, "capabilities")?.unwrap_or_default();
        let runtime_config = opt_object(&raw, "runtimeConfig")?.unwrap_or_default();
        let dns = raw.get("dns").filter(|v| !v.is_null()).cloned();
        let args = raw.get("args").filter(|v| !v.is_null()).cloned();
        let prev_result = raw.get("prevResult").filter(|v| !v.is_null()).cloned();
        Ok(NetConf {
            cni_version_raw,
            version,
            name,
            plugin_type,
            ipam,
            dns,
            capabilities,
            runtime_config,
            args,
            prev_result,
            raw,
        })
    }

    /// The `cniVersion` to echo in output.
    pub fn version_str(&self) -> &str {
        if self.cni_version_raw.is_empty() {
            self.version.as_str()
        } else {
            &self.cni_version_raw
        }
    }

    /// `args.cni.<key>`, the conventional place for per-attachment arguments.
    pub fn cni_arg(&self, key: &str) -> Option<&Value> {
        self.args.as_ref()?.get("cni")?.get(key)
    }

    /// Deserializes the whole configuration into a plugin's own type, with
    /// the error naming where it went wrong.
    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> Result<T, CniError> {
        serde_json::from_value(Value::Object(self.raw.clone()))
            .map_err(|e| CniError::invalid_config(format!("invalid network configuration: {e}")))
    }
}

/// Reads `cni.dev/valid-attachments` (or the older `cni.dev/attachments`)
/// from a GC request: the (containerID, ifname) pairs to keep.
///
/// A GC without the list keeps nothing: that is what libcni (v1.2 and later)
/// means by it. Its `GCNetworkList` with no arguments first DELs every
/// attachment it has cached for the network and then calls each plugin's GC
/// without the key, and `cnitool gc` does exactly that to clean a network
/// out. A runtime that wants attachments kept lists them.
pub fn valid_attachments(raw: &Map<String, Value>) -> Result<Vec<(String, String)>, CniError> {
    let (key, v) = match (
        raw.get("cni.dev/valid-attachments"),
        raw.get("cni.dev/attachments"),
    ) {
        (Some(v), _) => ("cni.dev/valid-attachments", v),
        (None, Some(v)) => ("cni.dev/attachments", v),
        (None, None) => return Ok(Vec::new()),
    };
    let list = v
        .as_array()
        .ok_or_else(|| CniError::invalid_config(format!("{key}: must be a list")))?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let c = a.get("containerID").and_then(Value::as_str);
            let f = a.get("ifname").and_then(Value::as_str);
            match (c, f) {
                (Some(c), Some(f)) => Ok((c.to_string(), f.to_string())),
                _ => Err(CniError::invalid_config(format!(
                    "{key}[{i}]: needs string fields containerID and ifname"
                ))),
            }
        })
        .collect()
}

/// A network configuration list (`.conflist`), as runtimes read it.
#[derive(Debug, Clone)]
pub struct ConfList {
    pub cni_version: String,
    /// `cniVersions` (spec 1.1.0): every version the list may be used with.
    pub cni_versions: Vec<String>,
    pub name: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    pub fn parse(bytes: &[u8]) -> Result<ConfList, CniError> {
        let raw = parse_json_object(bytes)?;
        let name = opt_string(&raw, "name")?;
        validate_network_name(&name)?;
        let cni_version = opt_string(&raw, "cniVersion")?;
        let cni_versions = match raw.get("cniVersions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| {
                        CniError::invalid_config("cniVersions: must be a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(CniError::invalid_config(
                    "cniVersions: must be a list of strings",
                ))
            }
        };
        let flag = |k: &str| raw.get(k).and_then(Value::as_bool).unwrap_or(false);
        let plugins = match raw.get("plugins") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.as_object().cloned().ok_or_else(|| {
                        CniError::invalid_config(format!("plugins[{i}]: must be a JSON object"))
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(CniError::invalid_config(
                    "plugins: must be a non-empty list",
                ))
            }
        };
        Ok(ConfList {
            cni_version,
            cni_versions,
            name,
            disable_check: flag("disableCheck"),
            disable_gc: flag("disableGC"),
            plugins,
        })
    }

    /// The version a runtime should use: the highest of `cniVersions` this
    /// crate knows, else `cniVersion`.
    pub fn effective_version(&self) -> Result<SpecVersion, CniError> {
        let best = self
            .cni_versions
            .iter()
            .filter_map(|v| v.parse::<SpecVersion>().ok())
            .max();
        match best {
            Some(v) => Ok(v),
            None => SpecVersion::parse_config_version(&self.cni_version),
        }
    }

    /// The configuration handed to plugin `i`: its own object plus the
    /// list's name and version, as the spec says runtimes build it.
    pub fn plugin_config(
        &self,
        i: usize,
        prev_result: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        let mut obj = self
            .plugins
            .get(i)
            .cloned()
            .ok_or_else(|| CniError::internal(format!("no plugin {i} in the list")))?;
        let version = self.effective_version()?;
        obj.insert("cniVersion".into(), version.as_str().into());
        obj.insert("name".into(), self.name.clone().into());
        if let Some(p) = prev_result {
            obj.insert("prevResult".into(), p.clone());
        }
        serde_json::to_vec(&Value::Object(obj)).map_err(|e| CniError::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn gc_without_a_list_keeps_nothing_and_a_list_is_read_from_either_key() {
        // libcni's GCNetworkList with no arguments sends no key at all.
        let none =
            valid_attachments(&raw(serde_json::json!({"name": "n"}))).expect("no list is valid");
        assert!(none.is_empty());
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let got = valid_attachments(&raw(serde_json::json!({
                key: [{"containerID": "c1", "ifname": "eth0"}]
            })))
            .expect("list");
            assert_eq!(got, vec![("c1".to_string(), "eth0".to_string())]);
        }
        let bad = valid_attachments(&raw(serde_json::json!({"cni.dev/valid-attachments": "x"})));
        assert_eq!(bad.expect_err("not a list").code, 7);
    }

    #[test]
    fn keeps_unknown_keys_and_types_known_ones() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"net1","type":"berth-bridge","bridge":"br9",
                "ipam":{"type":"host-local"},"runtimeConfig":{"mac":"aa:bb:cc:dd:ee:ff"},
                "args":{"cni":{"ips":["10.0.0.9"]}},"prevResult":{"ips":[]}}"#,
        )
        .expect("valid");
        assert_eq!(c.version, SpecVersion::V1_0_0);
        assert_eq!(c.plugin_type, "berth-bridge");
        assert_eq!(c.raw["bridge"], "br9");
        assert_eq!(
            c.ipam
                .as_ref()
                .and_then(|m| m.get("type"))
                .and_then(Value::as_str),
            Some("host-local")
        );
        assert_eq!(c.runtime_config["mac"], "aa:bb:cc:dd:ee:ff");
        assert_eq!(
            c.cni_arg("ips")
                .and_then(|v| v.get(0))
                .and_then(Value::as_str),
            Some("10.0.0.9")
        );
        assert!(c.prev_result.is_some());
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, 6);
        let e = NetConf::parse(br#"{"cniVersion":"0.9.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, 1);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("name"));
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":3}"#).unwrap_err();
        assert!(e.msg.starts_with("ipam"));
    }

    #[test]
    fn conflist_prefers_highest_known_cni_versions_entry() {
        let l = ConfList::parse(
            br#"{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0","7.0.0"],"name":"l",
                "plugins":[{"type":"a"},{"type":"b"}]}"#,
        )
        .expect("valid");
        assert_eq!(l.effective_version().ok(), Some(SpecVersion::V1_1_0));
        let p: Value =
            serde_json::from_slice(&l.plugin_config(1, None).expect("cfg")).expect("json");
        assert_eq!(p["type"], "b");
        assert_eq!(p["name"], "l");
        assert_eq!(p["cniVersion"], "1.1.0");
        assert_eq!(
            ConfList::parse(br#"{"name":"l","plugins":[]}"#)
                .unwrap_err()
                .code,
            7
        );
    }
}
