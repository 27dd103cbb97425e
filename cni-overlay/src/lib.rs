//! VXLAN overlay: lease store, node agent and the `berth-overlay` plugin. Filled by the overlay issue.
