//! The network-namespace test fixture every Berth test crate shares.
//!
//! What it holds, and nothing Berth-specific (it depends on no Berth crate, so any crate can
//! take it as a dev-dependency without a cycle):
//! - [`Netns`]: a named network namespace with a per-run name ([`unique_name`]), `lo` up,
//!   removed on drop (also when the test panics) together with every process still inside it;
//!   commands, children and closures run inside it ([`Netns::exec`], [`Netns::spawn`],
//!   [`Netns::run`]), its sysctls, veth pairs to other test namespaces ([`Netns::add_veth`]);
//! - [`Underlay`]: a namespace holding a bridge that other test namespaces are plugged into by
//!   veth pairs (the "physical network" of multi-host tests);
//! - entering namespaces between fork and exec ([`NsFiles`], [`command_in_netns`],
//!   [`spawn_in_netns`], [`output_in_netns`]) and on a scoped thread ([`in_netns`]);
//! - [`ChildGuard`]: a daemon stopped by PID on drop (SIGTERM, a grace period, SIGKILL), and
//!   [`kill_child`] / [`stop_child`] for guards that order their own teardown;
//! - small helpers: [`wait_until`], [`is_root`], [`find_program`], [`reap_stale`].
//!
//! Network safety: nothing here configures the root network namespace. Every link, address,
//! route and sysctl is made inside a namespace the test created (a veth pair is created inside
//! one test namespace with its peer moved straight into another), names carry a per-run
//! suffix so parallel runs never collide, and the guards delete what they created.
//!
//! Functions named `try_*` or returning `Result` do not panic; the others are test fixtures and
//! panic with a message saying what failed, as an assertion would.

// Test-support code: a fixture that cannot be set up fails the test, like an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod enter;
mod netns;
mod process;

pub use enter::{
    command_in_netns, in_netns, output_in_netns, own_mount_namespace, spawn_in_netns, NsFiles,
};
pub use netns::{describe_output, netns_path, reap_stale, unique_name, Netns, Underlay, NETNS_DIR};
pub use process::{
    find_program, is_root, kill_child, stop_child, test_peer, wait_until, ChildGuard, STOP_GRACE,
};
