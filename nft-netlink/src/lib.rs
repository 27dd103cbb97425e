//! nftables programmed through netlink (NETLINK_NETFILTER), without the
//! `nft` binary and without libnftnl: just what Berth's rules need.
//!
//! - [`Batch`]: one transaction (NFNL_MSG_BATCH_BEGIN .. BATCH_END) of
//!   tables, base chains, chain flushes, rules, named sets (plain keys and
//!   concatenations, `flags interval` on a concatenation for the kernel's
//!   pipapo sets) and set elements with nft-compatible comments.
//! - [`Socket`]: commits a batch with every message acknowledged (the
//!   first failure is reported with its errno and the message it belongs
//!   to), looks up one element (`nft get element`) and dumps a set's
//!   elements with their comments (`nft list set`) and dumps a chain's rules
//!   ([`rule_matches`] compares one with the expressions that made it).
//! - [`Expr`]: the rule expressions (meta, payload, cmp, bitwise, lookup,
//!   masq, verdicts), with the same bytecode nft generates so that
//!   `nft list ruleset` prints the rules in their usual text form.
//!
//! The wire format comes from the kernel's uapi headers (nfnetlink.h,
//! nf_tables.h) and nft's userdata TLVs (comments, key byte order).

mod attr;
mod batch;
mod expr;
mod socket;
pub mod sys;
mod udata;

pub use batch::{
    datatype, Batch, Element, Family, Hook, SetSpec, HOOK_POSTROUTING, HOOK_PREROUTING,
    NFT_SET_CONCAT, NFT_SET_INTERVAL, PRIORITY_SRCNAT,
};
pub use expr::{
    rule_matches, CmpOp, Expr, ExprDump, MetaKey, PayloadBase, Reg, RuleDump, Verdict, REG32_01,
    REG_1, REG_2,
};
pub use socket::Socket;
pub use udata::MAX_COMMENT;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nftables netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {}{}", std::io::Error::from_raw_os_error(*errno), reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Kernel {
        /// The operation in nft syntax, e.g. `add element inet berth-nat masq4`.
        what: String,
        /// The kernel's errno (positive).
        errno: i32,
        /// The kernel's extended-ack message, when it gave one.
        reason: Option<String>,
    },
    #[error("nftables netlink: {0}")]
    Decode(String),
}

impl Error {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The table, set or element does not exist.
    pub fn is_missing(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }
}
