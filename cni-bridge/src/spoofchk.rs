//! MAC spoof check: frames entering the bridge from a pod's port must carry
//! the pod's MAC. One shared nftables table in the bridge family; each
//! attachment contributes two set elements (its port, and port . MAC).

use crate::error::BridgeError;
use crate::nft;

pub const TABLE: &str = "berth-spoofchk";

fn header() -> String {
    format!(
        "add table bridge {t}
add set bridge {t} ports {{ type ifname; comment \"pod ports under MAC spoof check\"; }}
add set bridge {t} allowed {{ type ifname . ether_addr; comment \"pod port . the only source MAC it may send\"; }}
",
        t = TABLE
    )
}

pub fn add_script(port: &str, mac: &str, comment: &str) -> String {
    let mut s = header();
    s.push_str(&format!(
        "add chain bridge {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}
flush chain bridge {t} prerouting
add rule bridge {t} prerouting iifname @ports iifname . ether saddr != @allowed drop
add element bridge {t} ports {{ \"{port}\" comment \"{c}\" }}
add element bridge {t} allowed {{ \"{port}\" . {mac} comment \"{c}\" }}
",
        t = TABLE,
        c = nft::comment(comment)
    ));
    s
}

pub fn del_script(port: &str, mac: &str) -> String {
    let mut s = header();
    s.push_str(&format!(
        "add element bridge {t} ports {{ \"{port}\" }}
add element bridge {t} allowed {{ \"{port}\" . {mac} }}
delete element bridge {t} ports {{ \"{port}\" }}
delete element bridge {t} allowed {{ \"{port}\" . {mac} }}
",
        t = TABLE
    ));
    s
}

pub fn add(port: &str, mac: &str, comment: &str) -> Result<(), BridgeError> {
    nft::run(&add_script(port, mac, comment))
}

pub fn del(port: &str, mac: &str) -> Result<(), BridgeError> {
    nft::run(&del_script(port, mac))
}

pub fn present(port: &str, mac: &str) -> bool {
    nft::succeeds(&[
        "get",
        "element",
        "bridge",
        TABLE,
        "allowed",
        &format!("{{ \"{port}\" . {mac} }}"),
    ])
}

/// Elements of one of the table's sets, as (port, mac, comment) or, for
/// `ports`, (port, "", comment), read from `nft -j`.
pub fn list(set: &str) -> Vec<(String, String, String)> {
    let Some(v) = crate::nft::list_json(&["list", "set", "bridge", TABLE, set]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (val, comment) in crate::nft::set_elements(&v) {
        match val {
            serde_json::Value::String(port) => out.push((port, String::new(), comment)),
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::Array(parts)) = o.get("concat") {
                    let port = parts
                        .first()
                        .and_then(|p| p.as_str())
                        .unwrap_or_default()
                        .to_string();
                    let mac = parts
                        .get(1)
                        .and_then(|p| p.as_str())
                        .unwrap_or_default()
                        .to_string();
                    out.push((port, mac, comment));
                }
            }
            _ => {}
        }
    }
    out
}

/// Removes a port's entries when its MAC is not known.
pub fn del_port(port: &str) -> Result<(), BridgeError> {
    let macs: Vec<String> = list("allowed")
        .into_iter()
        .filter(|(p, _, _)| p == port)
        .map(|(_, m, _)| m)
        .collect();
    if macs.is_empty() {
        if list("ports").iter().any(|(p, _, _)| p == port) {
            return nft::run(&format!(
                "delete element bridge {TABLE} ports {{ \"{port}\" }}\n"
            ));
        }
        return Ok(());
    }
    for mac in macs {
        del(port, &mac)?;
    }
    Ok(())
}
