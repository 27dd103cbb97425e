use clap::Parser;

/// berth-bridge is a CNI plugin: a container runtime runs it with CNI_COMMAND
/// and the other CNI_* variables set and the network configuration on stdin.
/// Run with no arguments it prints what it is.
#[derive(Parser)]
#[command(
    name = "berth-bridge",
    version,
    about = "CNI plugin: attaches pods to a Linux bridge with a veth pair"
)]
struct Cli {}

fn main() {
    if std::env::args_os().len() > 1 {
        let _ = Cli::parse();
        return;
    }
    cni_core::skel::run(&cni_bridge::BridgePlugin, &cni_bridge::INFO)
}
