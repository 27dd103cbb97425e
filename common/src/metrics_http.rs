//! A minimal HTTP/1.1 responder for Prometheus metrics and health checks,
//! shared by `berth-overlayd` and `berth-csi`: a few fixed read-only paths
//! do not justify a full HTTP stack. One connection at a time, each answered
//! and closed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A response: status line text (e.g. "200 OK"), content type, body.
pub type Reply = (&'static str, &'static str, String);

/// Maps a request path to a reply.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

fn respond(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, ctype, body) = handler(path);
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Serves `handler` on `addr` from a background thread; returns the bound address.
pub fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                respond(conn, &handler);
            }
        })?;
    Ok(local)
}

/// What a daemon exposes: its metrics in the Prometheus text format, and
/// its health (`Err` says what is wrong).
pub trait Endpoints: Send + Sync + 'static {
    fn metrics(&self) -> String;
    fn health(&self) -> Result<(), String>;
}

/// Serves `/metrics` and `/healthz` (also `/health`) of `e` on `addr`; any
/// other path is a 404 that names the two.
pub fn serve_endpoints(addr: SocketAddr, e: impl Endpoints) -> std::io::Result<SocketAddr> {
    let handler: Handler = Arc::new(move |path: &str| match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", e.metrics()),
        "/healthz" | "/health" => match e.health() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".to_string(),
        ),
    });
    serve(addr, handler)
}

/// Writes one metric family in the Prometheus text format.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, value) in samples {
        if labels.is_empty() {
            out.push_str(&format!("{name} {value}\n"));
        } else {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn answers_paths() {
        let h: Handler = Arc::new(|p: &str| match p {
            "/metrics" => ("200 OK", "text/plain", "up 1\n".to_string()),
            _ => ("404 Not Found", "text/plain", String::new()),
        });
        let addr = serve("127.0.0.1:0".parse().expect("addr"), h).expect("serve");
        let get = |p: &str| {
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut o = String::new();
            s.read_to_string(&mut o).expect("read");
            o
        };
        assert!(get("/metrics?x=1").contains("up 1"));
        assert!(get("/other").starts_with("HTTP/1.1 404"));
    }
}
