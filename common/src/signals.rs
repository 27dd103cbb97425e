//! Stop on SIGTERM or SIGINT: the one place Berth's long-running programs
//! install a signal handler.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs handlers for SIGTERM and SIGINT that raise the returned flag;
/// the program polls it and shuts down in order.
pub fn stop_flag() -> &'static AtomicBool {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `signal` itself has no memory-safety
        // preconditions beyond a valid signal number and handler.
        unsafe {
            libc::signal(sig, handler);
        }
    }
    &STOP
}
