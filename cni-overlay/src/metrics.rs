//! Prometheus metrics and a health endpoint for `berth-overlayd`, served on
//! `--metrics-addr` (off by default).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the agent reports; shared with the HTTP thread.
#[derive(Debug, Default, Clone)]
pub struct Shared {
    pub node: String,
    pub subnet: String,
    pub peers: usize,
    pub renewals: u64,
    pub renew_failures: u64,
    pub repairs: u64,
    pub reconciles: u64,
    pub store_up: bool,
    pub device_up: bool,
}

pub type Handle = Arc<Mutex<Shared>>;

pub fn render(s: &Shared) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        o.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "berth_overlay_peers_programmed",
        "gauge",
        "Peers whose route, neighbour and FDB entry are programmed.",
        s.peers.to_string(),
    );
    metric(
        "berth_overlay_lease_renewals_total",
        "counter",
        "Successful lease renewals.",
        s.renewals.to_string(),
    );
    metric(
        "berth_overlay_lease_renew_failures_total",
        "counter",
        "Failed lease renewals.",
        s.renew_failures.to_string(),
    );
    metric(
        "berth_overlay_resync_repairs_total",
        "counter",
        "Kernel entries repaired or removed by the periodic resync.",
        s.repairs.to_string(),
    );
    metric(
        "berth_overlay_reconciles_total",
        "counter",
        "Times the lease set was applied to the kernel.",
        s.reconciles.to_string(),
    );
    metric(
        "berth_overlay_store_up",
        "gauge",
        "1 when the lease store answered the last request.",
        u8::from(s.store_up).to_string(),
    );
    metric(
        "berth_overlay_device_up",
        "gauge",
        "1 when the VXLAN device exists.",
        u8::from(s.device_up).to_string(),
    );
    o.push_str(&format!(
        "# HELP berth_overlay_lease_info This node's lease.\n# TYPE berth_overlay_lease_info gauge\nberth_overlay_lease_info{{node=\"{}\",subnet=\"{}\"}} 1\n",
        s.node.replace('"', ""),
        s.subnet
    ));
    o
}

struct Endpoints(Handle);

impl berth_common::metrics_http::Endpoints for Endpoints {
    fn metrics(&self) -> String {
        render(&self.0.lock().map(|s| s.clone()).unwrap_or_default())
    }

    fn health(&self) -> Result<(), String> {
        let up = self.0.lock().map(|s| s.device_up).unwrap_or(false);
        if up {
            Ok(())
        } else {
            Err("VXLAN device not up".into())
        }
    }
}

/// Starts serving on `addr` in a background thread.
pub fn serve(addr: SocketAddr, shared: Handle) -> std::io::Result<SocketAddr> {
    berth_common::metrics_http::serve_endpoints(addr, Endpoints(shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn serves_metrics_and_health() {
        let shared: Handle = Arc::new(Mutex::new(Shared {
            node: "n1".into(),
            subnet: "10.244.1.0/24".into(),
            peers: 3,
            device_up: true,
            store_up: true,
            ..Default::default()
        }));
        let addr = serve("127.0.0.1:0".parse().expect("addr"), shared.clone()).expect("serve");
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        };
        let m = get("/metrics");
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("berth_overlay_peers_programmed 3"));
        assert!(m.contains("subnet=\"10.244.1.0/24\""));
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        shared.lock().expect("lock").device_up = false;
        assert!(get("/healthz").starts_with("HTTP/1.1 503"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
