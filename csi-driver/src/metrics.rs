//! Prometheus metrics and health for `berth-csi` on `--metrics-addr` (off by
//! default): every gRPC call counted and timed by method and status code (a
//! tower layer around the server), plus the volumes and snapshots the state
//! store holds and the bytes they were provisioned with.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use berth_common::metrics_http::family;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::driver::Driver;

/// Latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// RPC counters shared by the layer and the HTTP endpoint.
#[derive(Default)]
pub struct RpcMetrics {
    by_call: Mutex<BTreeMap<(String, String), Series>>,
}

/// gRPC status numbers to their names.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Cancelled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

impl RpcMetrics {
    pub fn observe(&self, path: &str, code: &str, secs: f64) {
        // "/csi.v1.Controller/CreateVolume" -> "Controller/CreateVolume"
        let method = path
            .trim_start_matches('/')
            .trim_start_matches("csi.v1.")
            .to_string();
        let Ok(mut m) = self.by_call.lock() else {
            return;
        };
        let s = m.entry((method, code_name(code).to_string())).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        let Ok(m) = self.by_call.lock() else { return };
        let counts: Vec<(String, String)> = m
            .iter()
            .map(|((method, code), s)| {
                (
                    format!("method=\"{method}\",code=\"{code}\""),
                    s.count.to_string(),
                )
            })
            .collect();
        family(
            out,
            "berth_csi_rpc_total",
            "counter",
            "gRPC calls by method and status code.",
            &counts,
        );
        out.push_str("# HELP berth_csi_rpc_duration_seconds gRPC call latency by method and status code.\n# TYPE berth_csi_rpc_duration_seconds histogram\n");
        for ((method, code), s) in m.iter() {
            let l = format!("method=\"{method}\",code=\"{code}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                out.push_str(&format!(
                    "berth_csi_rpc_duration_seconds_bucket{{{l},le=\"{b}\"}} {}\n",
                    s.buckets[i]
                ));
            }
            out.push_str(&format!(
                "berth_csi_rpc_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}\n",
                s.count
            ));
            out.push_str(&format!(
                "berth_csi_rpc_duration_seconds_sum{{{l}}} {}\n",
                s.sum
            ));
            out.push_str(&format!(
                "berth_csi_rpc_duration_seconds_count{{{l}}} {}\n",
                s.count
            ));
        }
    }
}

/// The tower layer that times every call.
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<RpcMetrics>);

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, RB> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            // Errors are "trailers-only" responses with grpc-status in the
            // headers; a success carries it in the trailers: absent here = OK.
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string(),
                Err(_) => "2".to_string(),
            };
            metrics.observe(&path, &code, started.elapsed().as_secs_f64());
            r
        })
    }
}

/// Renders the whole scrape.
pub fn render(driver: &Driver, rpc: &RpcMetrics) -> String {
    let mut out = String::new();
    rpc.render(&mut out);
    let vols = driver.state.all_volumes().unwrap_or_default();
    let snaps = driver.state.all_snapshots().unwrap_or_default();
    let bytes: u64 = vols.iter().map(|v| v.size).sum();
    family(
        &mut out,
        "berth_csi_volumes",
        "gauge",
        "Volumes in the state store.",
        &[(String::new(), vols.len().to_string())],
    );
    family(
        &mut out,
        "berth_csi_volume_bytes_provisioned",
        "gauge",
        "Sum of the provisioned sizes of all volumes.",
        &[(String::new(), bytes.to_string())],
    );
    family(
        &mut out,
        "berth_csi_snapshots",
        "gauge",
        "Snapshots in the state store.",
        &[(String::new(), snaps.len().to_string())],
    );
    family(
        &mut out,
        "berth_csi_state_healthy",
        "gauge",
        "1 when the state store answers.",
        &[(String::new(), u8::from(driver.state.healthy()).to_string())],
    );
    out
}

struct Endpoints {
    driver: Arc<Driver>,
    rpc: Arc<RpcMetrics>,
}

impl berth_common::metrics_http::Endpoints for Endpoints {
    fn metrics(&self) -> String {
        render(&self.driver, &self.rpc)
    }

    fn health(&self) -> Result<(), String> {
        if self.driver.state.healthy() && self.driver.config.pool_dir.is_dir() {
            Ok(())
        } else {
            Err("state store or pool unusable".into())
        }
    }
}

/// Serves /metrics and /healthz on `addr`.
pub fn serve(
    addr: SocketAddr,
    driver: Arc<Driver>,
    rpc: Arc<RpcMetrics>,
) -> std::io::Result<SocketAddr> {
    berth_common::metrics_http::serve_endpoints(addr, Endpoints { driver, rpc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_become_counters_and_histograms() {
        let m = RpcMetrics::default();
        m.observe("/csi.v1.Controller/CreateVolume", "0", 0.004);
        m.observe("/csi.v1.Controller/CreateVolume", "3", 0.2);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("berth_csi_rpc_total{method=\"Controller/CreateVolume\",code=\"OK\"} 1")
        );
        assert!(out.contains("code=\"InvalidArgument\"} 1"));
        assert!(out.contains("berth_csi_rpc_duration_seconds_bucket{method=\"Controller/CreateVolume\",code=\"OK\",le=\"0.005\"} 1"));
    }
}
