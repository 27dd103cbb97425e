//! CSI v1.10 wire definitions. Filled by the CSI issue.
