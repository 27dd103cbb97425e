//! Running `nft` scripts. Each script is one kernel transaction: it applies
//! whole or not at all.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::BridgeError;

pub fn nft_binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

/// Runs `script` with `nft -f -`.
pub fn run(script: &str) -> Result<(), BridgeError> {
    let mut child = Command::new(nft_binary())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BridgeError::Nat(format!("cannot run nft: {e}")))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(script.as_bytes())
            .map_err(|e| BridgeError::Nat(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BridgeError::Nat(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BridgeError::Nat(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
        )))
    }
}

/// Whether `nft <args>` succeeds (used for lookups such as `get element`).
pub fn succeeds(args: &[&str]) -> bool {
    Command::new(nft_binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Text for an nft comment: printable ASCII without quotes, at most 120 bytes.
pub fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(120)
        .collect()
}

/// Runs an nft listing with `-j` and parses it; None if it fails (for
/// example because the table does not exist).
pub fn list_json(args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new(nft_binary())
        .arg("-j")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The elements of every set in an `nft -j` listing, as (value, comment).
/// A value is the JSON nft uses: a string, or an object such as
/// `{"concat": [...]}` or `{"prefix": {...}}`.
pub fn set_elements(v: &serde_json::Value) -> Vec<(serde_json::Value, String)> {
    let mut out = Vec::new();
    let Some(items) = v.get("nftables").and_then(|x| x.as_array()) else {
        return out;
    };
    for item in items {
        let Some(elems) = item
            .get("set")
            .and_then(|s| s.get("elem"))
            .and_then(|e| e.as_array())
        else {
            continue;
        };
        for e in elems {
            match e.get("elem") {
                Some(inner) => {
                    let val = inner.get("val").cloned().unwrap_or(serde_json::Value::Null);
                    let c = inner
                        .get("comment")
                        .and_then(|c| c.as_str())
                        .unwrap_or_default()
                        .to_string();
                    out.push((val, c));
                }
                None => out.push((e.clone(), String::new())),
            }
        }
    }
    out
}

/// Renders an element value from `nft -j` back into nft syntax.
pub fn render_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::Array(parts)) = o.get("concat") {
                let parts: Option<Vec<String>> = parts.iter().map(render_value).collect();
                return parts.map(|p| p.join(" . "));
            }
            if let Some(p) = o.get("prefix") {
                let addr = p.get("addr").and_then(|a| a.as_str())?;
                let len = p.get("len").and_then(|l| l.as_u64())?;
                return Some(format!("{addr}/{len}"));
            }
            if let Some(serde_json::Value::Array(r)) = o.get("range") {
                let a = render_value(r.first()?)?;
                let b = render_value(r.get(1)?)?;
                return Some(format!("{a}-{b}"));
            }
            None
        }
        _ => None,
    }
}
