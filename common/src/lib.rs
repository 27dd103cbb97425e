//! Small pieces that both the CNI side (plugins, `berth-overlayd`) and the
//! CSI driver use, kept apart from the CNI protocol so that `berth-csi`
//! does not depend on it: the metrics and health HTTP responder
//! ([`metrics_http`]), a stable digest ([`digest()`]), the fault points
//! crash tests stop processes at ([`fault`]), and the stop-on-signal flag
//! of long-running programs ([`signals`]).

pub mod fault;
pub mod metrics_http;
pub mod signals;

/// Stable 64-bit FNV-1a of some byte strings, as 16 hex digits. Used where a
/// value must hash the same across processes and program versions (std's
/// hasher promises neither).
pub fn digest(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_is_stable_and_separates_parts() {
        // Fixed value: records written by older binaries must still match.
        assert_eq!(super::digest(&[b"a"]), "089bc907b544c769");
        assert_ne!(super::digest(&[b"ab", b"c"]), super::digest(&[b"a", b"bc"]));
        assert_eq!(super::digest(&[]).len(), 16);
    }
}
