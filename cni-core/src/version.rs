//! CNI specification versions and the rules that depend on them.

use std::fmt;
use std::str::FromStr;

use crate::error::{CniError, ErrorCode};

/// A CNI specification version this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version, oldest first.
pub const ALL_VERSIONS: [SpecVersion; 7] = [
    SpecVersion::V0_1_0,
    SpecVersion::V0_2_0,
    SpecVersion::V0_3_0,
    SpecVersion::V0_3_1,
    SpecVersion::V0_4_0,
    SpecVersion::V1_0_0,
    SpecVersion::V1_1_0,
];

impl SpecVersion {
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_1_0 => "0.1.0",
            SpecVersion::V0_2_0 => "0.2.0",
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The result layout a version uses.
    pub fn result_family(self) -> ResultFamily {
        match self {
            SpecVersion::V0_1_0 | SpecVersion::V0_2_0 => ResultFamily::Legacy,
            SpecVersion::V0_3_0 | SpecVersion::V0_3_1 | SpecVersion::V0_4_0 => ResultFamily::V03,
            SpecVersion::V1_0_0 | SpecVersion::V1_1_0 => ResultFamily::V1,
        }
    }

    pub fn supports_check(self) -> bool {
        self >= SpecVersion::V0_4_0
    }

    pub fn supports_gc_and_status(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// The comma-separated list printed by `--help` and the about text.
    pub fn all_joined() -> String {
        ALL_VERSIONS
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses a `cniVersion` value; an empty string means 0.1.0, as the
    /// spec's first version had no version field at all.
    pub fn parse_config_version(s: &str) -> Result<SpecVersion, CniError> {
        if s.is_empty() {
            return Ok(SpecVersion::V0_1_0);
        }
        s.parse().map_err(|_| {
            CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion \"{s}\" is not supported; supported versions: {}",
                    SpecVersion::all_joined()
                ),
            )
        })
    }
}

/// Result layouts: 0.1/0.2 (`ip4`/`ip6`), 0.3.x/0.4.0 (`ips[].version`), 1.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFamily {
    Legacy,
    V03,
    V1,
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown CNI spec version {0:?}")]
pub struct UnknownVersion(pub String);

impl FromStr for SpecVersion {
    type Err = UnknownVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_VERSIONS
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVersion(s.to_string()))
    }
}

impl serde::Serialize for SpecVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_version_and_orders_them() {
        for (i, v) in ALL_VERSIONS.iter().enumerate() {
            assert_eq!(v.as_str().parse::<SpecVersion>().ok(), Some(*v));
            if i > 0 {
                assert!(ALL_VERSIONS[i - 1] < *v);
            }
        }
        assert!("1.2.0".parse::<SpecVersion>().is_err());
        assert!("1.0".parse::<SpecVersion>().is_err());
    }

    #[test]
    fn command_rules_follow_the_spec() {
        assert!(!SpecVersion::V0_3_1.supports_check());
        assert!(SpecVersion::V0_4_0.supports_check());
        assert!(!SpecVersion::V1_0_0.supports_gc_and_status());
        assert!(SpecVersion::V1_1_0.supports_gc_and_status());
    }

    #[test]
    fn unknown_config_version_is_code_1() {
        let e = SpecVersion::parse_config_version("9.9.9").unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion.as_u32());
        assert!(e.msg.contains("9.9.9"));
        assert_eq!(
            SpecVersion::parse_config_version("").ok(),
            Some(SpecVersion::V0_1_0)
        );
    }
}
