//! CSI v1.10 wire definitions (`csi.v1`), generated at build time from
//! `proto/csi.proto` with tonic + prost. Servers and clients for every CSI
//! service live in `csi::v1::{identity,controller,node,...}_{server,client}`.
//! From v1.12 it also has GetSnapshot and the GET_SNAPSHOT capability.
//!
//! Also the kubelet's plugin registration API (`pluginregistration`, from
//! `proto/pluginregistration.proto`): `pluginregistration::registration_{server,client}`.

/// The `csi` protobuf package.
pub mod csi {
    /// The `csi.v1` protobuf package: messages, enums, clients and servers.
    #[allow(clippy::all, missing_docs, rustdoc::all)]
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

pub use csi::v1;

/// The kubelet's plugin registration API (kubelet `pluginregistration/v1`,
/// protobuf package `pluginregistration`): a plugin serves `Registration`
/// on a socket in the kubelet's `plugins_registry/` directory.
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// The CSI spec version these definitions follow.
pub const CSI_SPEC_VERSION: &str = "1.10.0";
