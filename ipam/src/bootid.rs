//! The kernel's boot id, stamped on every allocation.

/// The current boot id, or "" when it cannot be read (then nothing is ever
/// reclaimed by boot). `BERTH_BOOT_ID` overrides it so tests can simulate a
/// reboot.
pub fn current() -> String {
    if let Ok(v) = std::env::var("BERTH_BOOT_ID") {
        return v.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
