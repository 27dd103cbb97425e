fn main() {
    cni_core::skel::main(
        &cni_overlay::plugin::OverlayPlugin,
        &cni_overlay::plugin::INFO,
        Some("It needs berth-overlayd running on the node."),
    )
}
