//! Bridge + veth attachment for `berth-bridge`. Filled by the bridge issue.
