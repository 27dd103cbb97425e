fn main() {
    cni_core::skel::main(&cni_bridge::BridgePlugin, &cni_bridge::INFO, None)
}
