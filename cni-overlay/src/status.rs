//! `berth-overlayd status`: this node's lease and every peer with the state
//! of its kernel programming, read live from the store and the kernel.

use host_net::netlink::Netlink;
use serde_json::json;

use crate::error::OverlayError;
use crate::lease::now;
use crate::store::LeaseStore;
use crate::vxlan::{device_name, KernelView, PeerState};

pub fn render(
    store: &mut dyn LeaseStore,
    node: &str,
    vni: u32,
    as_json: bool,
) -> Result<String, OverlayError> {
    let (leases, rev) = store.list()?;
    let mut nl = Netlink::new()?;
    let dev = nl.link(&device_name(vni))?;
    let view = match &dev {
        Some(d) => Some(KernelView::read(&mut nl, d.index)?),
        None => None,
    };
    let t = now();
    let rows: Vec<(String, String, String, String, i64, String, &str)> = leases
        .iter()
        .map(|l| {
            let (state, path) = if l.node == node {
                ("this node".to_string(), "")
            } else {
                let s = view
                    .as_ref()
                    .map(|v| v.state_of(l))
                    .unwrap_or(PeerState::default());
                (s.describe(), if s.direct { "direct" } else { "vxlan" })
            };
            (
                l.node.clone(),
                l.subnet.to_string(),
                l.public_ip.to_string(),
                l.vtep_mac.clone(),
                l.expires_at - t,
                state,
                path,
            )
        })
        .collect();
    if as_json {
        let me = leases.iter().find(|l| l.node == node);
        let v = json!({
            "node": node,
            "store": store.describe(),
            "revision": rev,
            "device": dev.as_ref().map(|d| json!({"name": d.name, "index": d.index, "mtu": d.mtu, "up": d.up})),
            "lease": me,
            "peers": rows.iter().filter(|r| r.0 != node).map(|r| json!({
                "node": r.0, "subnet": r.1, "publicIP": r.2, "vtepMAC": r.3, "expiresIn": r.4, "state": r.5, "path": r.6,
            })).collect::<Vec<_>>(),
        });
        return Ok(format!("{v}\n"));
    }
    let mut out = format!(
        "node {node}, store {}, device {}\n",
        store.describe(),
        dev.as_ref()
            .map(|d| format!("{} (mtu {})", d.name, d.mtu))
            .unwrap_or_else(|| "missing".into())
    );
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    out.push_str(&format!(
        "{:<w$}  {:<18}  {:<15}  {:<17}  {:>8}  {:<6}  STATE\n",
        "NODE", "SUBNET", "PUBLIC IP", "VTEP MAC", "EXPIRES", "PATH"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<w$}  {:<18}  {:<15}  {:<17}  {:>7}s  {:<6}  {}\n",
            r.0, r.1, r.2, r.3, r.4, r.6, r.5
        ));
    }
    Ok(out)
}
