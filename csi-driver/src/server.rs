//! The gRPC server on a unix socket (or a TCP address): stale-socket handling, service
//! registration by mode, the optional kubelet registration socket, and a clean
//! stop on SIGTERM / SIGINT (the sockets are removed; volumes stay mounted for
//! the next start to pick up).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use proto::v1::controller_server::ControllerServer;
use proto::v1::identity_server::IdentityServer;
use proto::v1::node_server::NodeServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt as _;
use tonic::transport::Server;

use crate::config::Endpoint;
use crate::controller::ControllerService;
use crate::driver::{blocking, Driver};
use crate::error::{Error, Result};
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::registration::Registrar;
use crate::registry::Registry;

/// Removes a socket file left by a previous run; refuses to take over a
/// socket another live process still answers on, or a path that is not a
/// socket (an error naming `flag`, the option the path came from).
pub fn clear_stale_socket(path: &Path, flag: &str) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("inspecting {}", path.display()), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::invalid(
            flag,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::FailedPrecondition(format!(
            "another process is serving on {}",
            path.display()
        )));
    }
    tracing::info!(socket = %path.display(), "removing stale socket");
    std::fs::remove_file(path).map_err(|e| Error::io(format!("removing {}", path.display()), e))
}

enum Incoming {
    Unix(UnixListenerStream),
    Tcp(tokio_stream::wrappers::TcpListenerStream),
}

/// Reconciles the backends, then serves until SIGTERM or SIGINT.
pub async fn serve(driver: Arc<Driver>, backends: Arc<Registry>) -> Result<()> {
    {
        let b = backends.clone();
        blocking(move || b.reconcile()).await?;
    }
    let incoming = match &driver.config.endpoint {
        Endpoint::Unix(socket) => {
            if let Some(parent) = socket.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
            clear_stale_socket(socket, "--endpoint")?;
            let listener = UnixListener::bind(socket)
                .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
            Incoming::Unix(UnixListenerStream::new(listener))
        }
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
            Incoming::Tcp(tokio_stream::wrappers::TcpListenerStream::new(listener))
        }
    };
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::io("installing SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("installing SIGINT handler", e))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    };
    let mode = driver.config.mode;
    let rpc = Arc::new(crate::metrics::RpcMetrics::default());
    if let Some(addr) = driver.config.metrics_addr {
        let bound = crate::metrics::serve(addr, driver.clone(), rpc.clone())
            .map_err(|e| Error::io(format!("--metrics-addr: listening on {addr}"), e))?;
        tracing::info!(%bound, "metrics on /metrics, health on /healthz");
    }
    let mut builder = Server::builder().layer(crate::metrics::MetricsLayer(rpc));
    let router = builder
        .add_service(IdentityServer::new(IdentityService::new(
            driver.clone(),
            backends.clone(),
        )))
        .add_optional_service(mode.controller().then(|| {
            ControllerServer::new(ControllerService::new(driver.clone(), backends.clone()))
        }))
        .add_optional_service(
            mode.node()
                .then(|| NodeServer::new(NodeService::new(driver.clone(), backends.clone()))),
        );
    tracing::info!(endpoint = ?driver.config.endpoint, node = %driver.config.node_id, mode = ?mode, "serving");
    // The CSI socket is bound (connections queue until the server below
    // accepts them), so the kubelet can dial it as soon as it reads GetInfo.
    let mut registrar = match driver.config.kubelet_registration()? {
        Some(reg) => match Registrar::start(&reg) {
            Ok(r) => Some(r),
            Err(e) => {
                // Most likely a registrar still serving there: exit without
                // leaving our CSI socket behind for nobody to answer.
                if let Endpoint::Unix(socket) = &driver.config.endpoint {
                    let _ = std::fs::remove_file(socket);
                }
                return Err(e);
            }
        },
        None => None,
    };
    type Serving = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    >;
    let mut server: Serving = match incoming {
        // gRPC C-core and Java clients send the socket path as :authority,
        // which h2 refuses; the wrapper rewrites it (see uds_authority).
        Incoming::Unix(s) => Box::pin(router.serve_with_incoming_shutdown(
            s.map(|conn| conn.map(crate::uds_authority::AuthorityFix::new)),
            shutdown,
        )),
        Incoming::Tcp(s) => Box::pin(router.serve_with_incoming_shutdown(s, shutdown)),
    };
    let r = tokio::select! {
        r = &mut server => r,
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); drain(stop_tx, server, registrar.as_mut()).await }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); drain(stop_tx, server, registrar.as_mut()).await }
    };
    if let Some(registrar) = registrar {
        registrar.stop().await;
    }
    if let Endpoint::Unix(socket) = &driver.config.endpoint {
        let _ = std::fs::remove_file(socket);
    }
    r.map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

/// Withdraws the kubelet registration, stops accepting, lets running calls
/// finish for a grace period, then returns even if clients keep their
/// connections open (sidecars do).
async fn drain<F>(
    stop: tokio::sync::oneshot::Sender<()>,
    server: std::pin::Pin<Box<F>>,
    registrar: Option<&mut Registrar>,
) -> Result<(), tonic::transport::Error>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>> + ?Sized,
{
    // First, so the kubelet deregisters the driver while its CSI socket
    // still answers the calls already running.
    if let Some(registrar) = registrar {
        registrar.withdraw();
    }
    let _ = stop.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!("clients still connected after 5 s; exiting");
            Ok(())
        }
    }
}
