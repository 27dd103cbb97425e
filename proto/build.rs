//! Compiles the `.proto` files in pure Rust: protox parses them (google/protobuf
//! well-known imports are built in), tonic-prost-build generates messages,
//! clients and servers from the resulting descriptor set.
//!
//! - `proto/csi.proto`: the CSI spec (`csi.v1`);
//! - `proto/pluginregistration.proto`: the kubelet's plugin registration API
//!   (`pluginregistration`), which berth-csi serves to register itself.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/csi.proto", "proto/pluginregistration.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
