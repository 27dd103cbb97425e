//! The spec's error object and its well-known codes.

use serde::Serialize;
use std::fmt;

/// Error codes defined by the CNI spec (1-99 are reserved to it), plus the
/// plugin-specific codes Berth uses (>= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnv,
    IoFailure,
    DecodingFailure,
    InvalidNetworkConfig,
    TryAgainLater,
    PluginNotAvailable,
    LimitedConnectivity,
    /// Berth: no free address left in a range set.
    RangeExhausted,
    /// Berth: a requested address is outside every configured range.
    RequestedOutOfRange,
    /// Berth: a requested address is held by another attachment.
    AddressInUse,
    /// Berth: a second ADD for the same attachment that is not a retry.
    DuplicateAllocation,
    /// Berth: the on-disk store failed.
    Store,
    /// Berth: a kernel (netlink, nftables, sysctl) operation failed.
    Kernel,
    /// Berth: CHECK found state that differs from what ADD set up.
    CheckFailed,
    /// Anything else; matches the reference plugins' "internal" code.
    Internal,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnv => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::RangeExhausted => 100,
            ErrorCode::RequestedOutOfRange => 101,
            ErrorCode::AddressInUse => 102,
            ErrorCode::DuplicateAllocation => 103,
            ErrorCode::Store => 104,
            ErrorCode::Kernel => 105,
            ErrorCode::CheckFailed => 106,
            ErrorCode::Internal => 999,
        }
    }
}

/// The error object a plugin prints on stdout (exit status 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code.as_u32(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidNetworkConfig, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidEnv, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, msg)
    }

    /// The JSON printed on stdout, with the version the caller asked for.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("cniVersion".into(), cni_version.into());
        obj.insert("code".into(), self.code.into());
        obj.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            obj.insert("details".into(), self.details.clone().into());
        }
        serde_json::Value::Object(obj).to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_spec_fields() {
        let e = CniError::new(ErrorCode::InvalidEnv, "CNI_IFNAME is missing").with_details("x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).expect("json");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_IFNAME is missing");
        assert_eq!(v["details"], "x");
        let bare = CniError::new(ErrorCode::TryAgainLater, "later").to_json("1.0.0");
        assert!(!bare.contains("details"));
    }

    #[test]
    fn codes_match_the_spec() {
        let spec = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnv, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::DecodingFailure, 6),
            (ErrorCode::InvalidNetworkConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::PluginNotAvailable, 50),
            (ErrorCode::LimitedConnectivity, 51),
        ];
        for (c, n) in spec {
            assert_eq!(c.as_u32(), n);
        }
        assert!(ErrorCode::RangeExhausted.as_u32() >= 100);
        assert!(ErrorCode::Internal.as_u32() >= 100);
    }
}
