//! Compiles `proto/csi.proto` in pure Rust: protox parses it (google/protobuf
//! well-known imports are built in), tonic-prost-build generates messages,
//! clients and servers from the resulting descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/csi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
