//! Registration with a kubelet without node-driver-registrar
//! (`--kubelet-registration-dir`).
//!
//! The kubelet watches `<kubelet-root>/plugins_registry/` for sockets. For
//! each new one it calls `Registration/GetInfo`; for a "CSIPlugin" it checks
//! the name and versions, dials the CSI endpoint it was given, calls
//! NodeGetInfo, updates the node's CSINode object and reports the outcome
//! with `Registration/NotifyRegistrationStatus`. When the socket file goes
//! away it deregisters the plugin, so [`Registrar::withdraw`] is how a
//! shutdown tells the kubelet.
//!
//! The service answers from the resolved flags only; it needs nothing from
//! the driver's state, so the kubelet gets an answer even while a backend
//! is slow.

use std::path::PathBuf;

use proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt as _;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::config::{KubeletRegistration, DRIVER_NAME};
use crate::error::{Error, Result};

/// `PluginInfo.type` of a CSI driver (the kubelet's `CSIPlugin`).
pub const PLUGIN_TYPE: &str = "CSIPlugin";

/// `PluginInfo.supported_versions`: the CSI versions we offer. The kubelet
/// takes the highest 1.x in the list (it refuses 2.x and 0.x), and CSI 1.x
/// minor versions are compatible, so "1.0.0" is what node-driver-registrar
/// sends too.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// How long [`Registrar::stop`] waits for the kubelet's open calls before
/// dropping them; registration calls are tiny, so this only bounds a
/// kubelet that keeps its connection open.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The `Registration` service.
pub struct RegistrationService {
    endpoint: String,
}

impl RegistrationService {
    /// Tells the kubelet to reach the CSI service at `endpoint` (a unix
    /// socket path as the kubelet sees it).
    pub fn new(endpoint: impl Into<String>) -> Self {
        RegistrationService {
            endpoint: endpoint.into(),
        }
    }

    /// What GetInfo answers.
    pub fn plugin_info(&self) -> PluginInfo {
        PluginInfo {
            r#type: PLUGIN_TYPE.to_string(),
            name: DRIVER_NAME.to_string(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _req: Request<InfoRequest>,
    ) -> std::result::Result<Response<PluginInfo>, Status> {
        tracing::debug!(endpoint = %self.endpoint, "kubelet asked for the plugin info");
        Ok(Response::new(self.plugin_info()))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> std::result::Result<Response<RegistrationStatusResponse>, Status> {
        let status = req.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = DRIVER_NAME, endpoint = %self.endpoint, "registered with the kubelet");
        } else {
            // The kubelet's own log is on another process (often another
            // machine's journal); this line puts the reason next to ours.
            tracing::error!(
                driver = DRIVER_NAME,
                error = %status.error,
                "the kubelet refused the registration"
            );
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

type ServeResult = std::result::Result<(), tonic::transport::Error>;

/// The registration socket while it is served. Dropping it removes the
/// socket too (an early error return of `serve` must not leave the plugin
/// registered with nothing behind it).
pub struct Registrar {
    socket: PathBuf,
    withdrawn: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<ServeResult>>,
}

impl Registrar {
    /// Creates the registration socket (replacing a stale one) and serves
    /// the `Registration` service on it from the current tokio runtime.
    /// Called once the CSI socket listens, because the kubelet dials the
    /// CSI endpoint as soon as GetInfo has answered.
    pub fn start(reg: &KubeletRegistration) -> Result<Registrar> {
        let socket = reg.socket.clone();
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        crate::server::clear_stale_socket(&socket, "--kubelet-registration-dir")?;
        let listener = UnixListener::bind(&socket)
            .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let service = RegistrationService::new(reg.endpoint.clone());
        // The kubelet (grpc-go) sends "localhost" as :authority, which h2
        // takes; the rewrite is for C-core and Java clients (debugging tools)
        // that send the socket path, as on the CSI socket.
        let incoming = UnixListenerStream::new(listener)
            .map(|conn| conn.map(crate::uds_authority::AuthorityFix::new));
        let task = tokio::spawn(
            Server::builder()
                .add_service(RegistrationServer::new(service))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.await;
                }),
        );
        tracing::info!(socket = %socket.display(), endpoint = %reg.endpoint, "serving kubelet plugin registration");
        Ok(Registrar {
            socket,
            withdrawn: false,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Removes the registration socket, which makes the kubelet deregister
    /// the plugin. The CSI socket keeps serving meanwhile, so calls the
    /// kubelet already started can still finish.
    pub fn withdraw(&mut self) {
        if self.withdrawn {
            return;
        }
        self.withdrawn = true;
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {
                tracing::info!(socket = %self.socket.display(), "removed the registration socket; the kubelet deregisters the plugin")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.socket.display(), error = %e, "removing the registration socket")
            }
        }
    }

    /// Withdraws the socket, then stops the server (bounded wait).
    pub async fn stop(mut self) {
        self.withdraw();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "registration server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "registration server task failed"),
            Err(_) => task.abort(),
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.withdraw();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_info_names_the_driver_and_endpoint() {
        let info = RegistrationService::new("/var/lib/kubelet/plugins/csi.berth.dev/csi.sock")
            .plugin_info();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, DRIVER_NAME);
        assert_eq!(
            info.endpoint,
            "/var/lib/kubelet/plugins/csi.berth.dev/csi.sock"
        );
        assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
    }
}
