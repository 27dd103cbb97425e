use clap::Parser;

/// berth-overlay is a CNI plugin: a container runtime runs it with CNI_COMMAND
/// and the other CNI_* variables set and the network configuration on stdin.
/// It needs berth-overlayd running on the node. Run with no arguments it
/// prints what it is.
#[derive(Parser)]
#[command(
    name = "berth-overlay",
    version,
    about = "CNI plugin: attaches pods to this node's subnet of the Berth VXLAN overlay"
)]
struct Cli {}

fn main() {
    if std::env::args_os().len() > 1 {
        let _ = Cli::parse();
        return;
    }
    cni_core::skel::run(
        &cni_overlay::plugin::OverlayPlugin,
        &cni_overlay::plugin::INFO,
    )
}
