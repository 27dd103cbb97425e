//! Daemons started by tests, stopped by PID; polling; small environment checks.

use std::path::PathBuf;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

/// How long [`ChildGuard`] waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Stop `child`: SIGTERM, up to `grace` to exit, then SIGKILL; reaped either way.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child, not yet
    // reaped (try_wait just saw it running), so it cannot name another process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kill `child` now (SIGKILL to it and to the process group it leads, if it leads one) and
/// reap it. SIGKILL also ends a stopped (paused) process.
pub fn kill_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) has no memory-safety preconditions; `-pid` names the process group whose
    // id is our unreaped child's pid, which exists only when that child leads it.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process (daemon) stopped on drop by PID: SIGTERM, up to [`STOP_GRACE`] to exit,
/// then SIGKILL.
#[derive(Debug, Default)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Guard `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    /// The child's PID while it is guarded.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Whether the child still runs.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop it now (SIGTERM, grace, SIGKILL); the guard then holds nothing.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            stop_child(&mut c, STOP_GRACE);
        }
    }

    /// Kill it now ([`kill_child`], like a crash); the guard then holds nothing.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            kill_child(&mut c);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns the last value.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether this process runs as root (the fixtures need it: namespaces, links, mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Find `name` in `PATH` and the sbin directories (which a non-login `PATH` may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A test peer (csi-sanity, cnitool, crictl, the grpcio venv, ...) that
/// scripts/test-peers.sh installs under `$BERTH_TOOLS_DIR` (default
/// /var/cache/berth-tools), e.g. `bin/cnitool`. Panics, saying how to get
/// it, when it is missing: CI always installs them, so a missing peer is a
/// broken setup, not a reason to skip.
pub fn test_peer(relative: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-tools"));
    let p = dir.join(relative);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-peers.sh (scripts/test.sh does)",
        p.display()
    );
    p
}
