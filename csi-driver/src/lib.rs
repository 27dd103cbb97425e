//! The `berth-csi` driver: identity, controller and node services. Filled by the CSI issue.
