//! Fault injection for crash tests.
//!
//! With `BERTH_FAULT_PAUSE=<point>` in the environment, a plugin that reaches
//! `pause(<point>)` says so on stderr and sleeps, so a test can SIGKILL it at
//! exactly that point. Without the variable this is one `getenv`.

use std::io::Write;
use std::time::Duration;

pub fn pause(point: &str) {
    let Ok(want) = std::env::var("BERTH_FAULT_PAUSE") else {
        return;
    };
    if want != point {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "berth-fault: paused at {point}");
    let _ = err.flush();
    drop(err);
    std::thread::sleep(Duration::from_secs(600));
}
