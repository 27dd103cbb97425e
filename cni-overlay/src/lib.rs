//! The VXLAN overlay: subnet leases in a store (embedded or etcd), the
//! `berth-overlayd` node agent that programs the kernel for every peer, and
//! the `berth-overlay` CNI plugin that attaches pods to the node's subnet.

pub mod agent;
pub mod daemon;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod plugin;
pub mod pod_mtu;
pub mod status;
pub mod store;
pub mod subnet_file;
pub mod vxlan;

pub use error::OverlayError;

/// Parses durations such as `30s`, `5m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(std::time::Duration::from_secs(secs))
}
