//! `berth-csi`: a CSI driver (spec v1.10) serving Identity, Controller and
//! Node on one unix socket, over storage backends (local image files on
//! loop devices; subdirectories of NFS exports) and a SQLite state store.
//!
//! Layers, each using only the ones before it:
//! 1. generic: [`error`], [`config`], [`state`], [`locks`], [`driver`] (the
//!    shared context), [`validate`] (generic argument checks), [`mount`]
//!    (kernel mounts), [`csi`] (CSI messages both layers build);
//! 2. [`backend`]: the [`backend::Backend`] interface, and the backends
//!    [`backend::local`] and [`backend::nfs`], each with its own rules;
//! 3. [`registry`]: the one place a backend is chosen for a call;
//! 4. services: [`identity`], [`controller`], [`node`] check the generic
//!    arguments once and call the chosen backend; [`metrics`];
//! 5. [`server`]: the socket, service registration by mode, shutdown;
//!    [`registration`]: registering with a kubelet (optional).
//!
//! Errors are typed ([`error::Error`]) and turned into gRPC statuses in one
//! place.

pub mod backend;
pub mod config;
pub mod controller;
pub mod csi;
pub mod driver;
pub mod error;
pub mod identity;
pub mod locks;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod registration;
pub mod registry;
pub mod server;
pub mod state;
mod uds_authority;
pub mod validate;

pub use driver::Driver;

/// The NFS backend under its former path (`csi_driver::nfs::params` is
/// used by the workspace's manifest tests).
pub use backend::nfs;
