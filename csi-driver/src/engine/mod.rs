//! The storage engine: the `local` backend (image files in a pool), loop
//! devices, and mounts. Services call into these after validating requests
//! and taking the per-volume lock.

pub mod local;
pub mod loopdev;
pub mod mount;
