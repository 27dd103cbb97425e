//! The memory allocator of the shipped CNI plugins, which are linked with
//! musl (scripts/lib.sh, `build_static`).
//!
//! Why musl: every pod start execs a plugin, and glibc's start-up detects
//! the CPU's caches with about a hundred CPUID instructions, each a trap to
//! the hypervisor on a virtual machine (9 µs each on the VM the benchmarks
//! run on). musl's start-up executes none.
//!
//! Why not musl's own allocator: it maps and unmaps memory all through a
//! run, and SQLite allocates a lot; it made an ADD slower than glibc's
//! start-up had. mimalloc replaces it for Rust and C (SQLite) alike
//! (`override`), with transparent huge pages off (`no_thp`): for a process
//! that lives a few milliseconds, faulting in and zeroing a 2 MiB page per
//! arena cost a third of its CPU. Measured in BENCHMARKS.md ("musl and
//! mimalloc for the CNI plugins").
//!
//! Declared here, in the skeleton every plugin links, so that each plugin
//! binary gets it without a line of its own; glibc builds (tests, the
//! development build) keep the system allocator.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
