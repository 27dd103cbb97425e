//! One nftables transaction: the messages between NFNL_MSG_BATCH_BEGIN and
//! NFNL_MSG_BATCH_END. The kernel applies all of them or none.

use crate::attr::AttrWriter;
use crate::expr::Expr;
use crate::sys::*;
use crate::udata;

/// nf_tables families (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ipv4 = 2,
    Bridge = 7,
    Ipv6 = 10,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ipv4 => "ip",
            Family::Bridge => "bridge",
            Family::Ipv6 => "ip6",
        }
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter`, `nat` or `route`.
    pub chain_type: &'static str,
    /// NF_INET_* / NF_BR_* hook number (prerouting 0, postrouting 4).
    pub hooknum: u32,
    pub priority: i32,
    /// The policy is `accept` when true, `drop` otherwise.
    pub accept: bool,
}

pub const HOOK_PREROUTING: u32 = 0;
pub const HOOK_POSTROUTING: u32 = 4;
/// `priority srcnat` in the ip/ip6/inet families.
pub const PRIORITY_SRCNAT: i32 = 100;

/// nft's data type ids, as the set key type of `nft list` (TYPE_*); a
/// concatenation's type is the field types shifted by 6 bits each.
pub mod datatype {
    pub const IPADDR: u32 = 7;
    pub const IP6ADDR: u32 = 8;
    pub const ETHERADDR: u32 = 9;
    pub const IFNAME: u32 = 41;

    pub fn concat(types: &[u32]) -> u32 {
        types.iter().fold(0, |acc, t| (acc << 6) | t)
    }
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec<'a> {
    pub family: Family,
    pub table: &'a str,
    pub name: &'a str,
    /// nft's type id of the key (see [`datatype`]).
    pub key_type: u32,
    /// Length of each field of the key in bytes (unpadded: 4 for an IPv4
    /// address, 6 for a MAC, 16 for an interface name). One entry for a
    /// plain key; more for a concatenation.
    pub fields: &'a [u32],
    /// `flags interval`.
    pub interval: bool,
    /// How nft prints the key: big-endian (addresses) or host order
    /// (interface names). Only used for a key that is not a concatenation.
    pub key_big_endian: bool,
    pub comment: Option<&'a str>,
}

pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_CONCAT: u32 = 0x80;

impl SetSpec<'_> {
    /// The key length: each field padded to 32 bits.
    pub fn key_len(&self) -> u32 {
        self.fields.iter().map(|f| (f + 3) & !3).sum()
    }

    fn is_concat(&self) -> bool {
        self.fields.len() > 1
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.interval {
            f |= NFT_SET_INTERVAL;
            if self.is_concat() {
                f |= NFT_SET_CONCAT;
            }
        }
        f
    }
}

/// A set element: its key (fields padded to 32 bits each), the end of its
/// range for an interval set of concatenations, and its comment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub comment: Option<String>,
    /// NFT_SET_ELEM_* flags as the kernel reported them (0 when building).
    pub flags: u32,
}

impl Element {
    pub fn new(key: Vec<u8>) -> Element {
        Element {
            key,
            ..Default::default()
        }
    }

    pub fn range(key: Vec<u8>, key_end: Vec<u8>) -> Element {
        Element {
            key,
            key_end: Some(key_end),
            ..Default::default()
        }
    }

    pub fn with_comment(mut self, comment: Option<&str>) -> Element {
        self.comment = comment.map(str::to_string);
        self
    }

    pub(crate) fn encode(&self, w: &mut AttrWriter, with_comment: bool) {
        w.nest(NFTA_LIST_ELEM, |e| {
            e.nest(NFTA_SET_ELEM_KEY, |k| {
                k.bytes(NFTA_DATA_VALUE, &self.key);
            });
            if let Some(end) = &self.key_end {
                e.nest(NFTA_SET_ELEM_KEY_END, |k| {
                    k.bytes(NFTA_DATA_VALUE, end);
                });
            }
            if let (true, Some(c)) = (with_comment, &self.comment) {
                e.bytes(NFTA_SET_ELEM_USERDATA, &udata::elem_comment(c));
            }
        });
    }
}

/// Elements per message stop once their list passes this many bytes, well
/// under the 64 KiB an attribute can hold (one element is at most a few
/// hundred bytes: two keys of at most 64 bytes and a comment).
const MAX_ELEMENTS_BYTES: usize = 32 * 1024;

/// One message of a batch, kept with a description for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) ty: u16,
    pub(crate) family: Family,
    pub(crate) flags: u16,
    pub(crate) attrs: Vec<u8>,
    pub(crate) what: String,
}

/// The messages of one transaction, in order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) msgs: Vec<Msg>,
    /// The sets this batch adds, as (family, table, name, NFTA_SET_ID), so
    /// that rules can name them by id too, as nft does.
    sets: Vec<(Family, String, String, u32)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Each message as `SUBSYS MSGTYPE FAMILY-HEADER ATTRS...` in the layout
    /// of `nft --debug=mnl` (see the crate's tests).
    pub fn render(&self) -> Vec<String> {
        self.msgs
            .iter()
            .map(|m| {
                let mut parts = vec![
                    NFNL_SUBSYS_NFTABLES.to_string(),
                    m.ty.to_string(),
                    format!("{:02x}000000", m.family as u8),
                ];
                crate::attr::render(&m.attrs, &mut parts);
                parts.join(" ")
            })
            .collect()
    }

    /// What each message does, in order (nft syntax, for errors and tests).
    pub fn describe(&self) -> Vec<&str> {
        self.msgs.iter().map(|m| m.what.as_str()).collect()
    }

    /// The NFTA_SET_ID of a set this batch adds.
    fn set_id(&self, family: Family, table: &str, name: &str) -> Option<u32> {
        self.sets
            .iter()
            .find(|(f, t, n, _)| *f == family && t == table && n == name)
            .map(|s| s.3)
    }

    fn push(&mut self, ty: u16, family: Family, flags: u16, w: AttrWriter, what: String) {
        self.msgs.push(Msg {
            ty,
            family,
            flags,
            attrs: w.buf,
            what,
        });
    }

    /// `add table FAMILY NAME` (no error if it exists).
    pub fn add_table(&mut self, family: Family, name: &str) {
        let mut w = AttrWriter::new();
        w.str(NFTA_TABLE_NAME, name).u32(NFTA_TABLE_FLAGS, 0);
        let what = format!("add table {} {name}", family.as_str());
        self.push(NFT_MSG_NEWTABLE, family, NLM_F_CREATE, w, what);
    }

    /// `add chain FAMILY TABLE NAME { type .. hook .. priority ..; policy ..; }`
    pub fn add_chain(&mut self, family: Family, table: &str, name: &str, hook: &Hook) {
        let mut w = AttrWriter::new();
        w.str(NFTA_CHAIN_TABLE, table)
            .str(NFTA_CHAIN_NAME, name)
            .str(NFTA_CHAIN_TYPE, hook.chain_type)
            .u32(NFTA_CHAIN_POLICY, u32::from(hook.accept))
            .nest(NFTA_CHAIN_HOOK, |h| {
                h.u32(NFTA_HOOK_HOOKNUM, hook.hooknum)
                    .i32(NFTA_HOOK_PRIORITY, hook.priority);
            });
        let what = format!("add chain {} {table} {name}", family.as_str());
        self.push(NFT_MSG_NEWCHAIN, family, NLM_F_CREATE, w, what);
    }

    /// `flush chain FAMILY TABLE NAME`: delete all its rules.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        let mut w = AttrWriter::new();
        w.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
        let what = format!("flush chain {} {table} {chain}", family.as_str());
        self.push(NFT_MSG_DELRULE, family, 0, w, what);
    }

    /// `add rule FAMILY TABLE CHAIN ...` (appended).
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, exprs: &[Expr]) {
        let set_id = |name: &str| self.set_id(family, table, name);
        let mut w = AttrWriter::new();
        w.str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain)
            .nest(NFTA_RULE_EXPRESSIONS, |l| {
                for e in exprs {
                    e.encode(l, &set_id);
                }
            });
        let what = format!("add rule {} {table} {chain}", family.as_str());
        self.push(
            NFT_MSG_NEWRULE,
            family,
            NLM_F_CREATE | NLM_F_APPEND,
            w,
            what,
        );
    }

    /// `add set FAMILY TABLE NAME { type ..; [flags interval;] comment ..; }`
    pub fn add_set(&mut self, s: &SetSpec) {
        let mut w = AttrWriter::new();
        w.str(NFTA_SET_TABLE, s.table)
            .str(NFTA_SET_NAME, s.name)
            .u32(NFTA_SET_FLAGS, s.flags())
            .u32(NFTA_SET_KEY_TYPE, s.key_type)
            .u32(NFTA_SET_KEY_LEN, s.key_len())
            .u32(NFTA_SET_ID, self.sets.len() as u32 + 1);
        self.sets.push((
            s.family,
            s.table.to_string(),
            s.name.to_string(),
            self.sets.len() as u32 + 1,
        ));
        if s.interval && s.is_concat() {
            w.nest(NFTA_SET_DESC, |d| {
                d.nest(NFTA_SET_DESC_CONCAT, |c| {
                    for f in s.fields {
                        c.nest(NFTA_LIST_ELEM, |e| {
                            e.u32(NFTA_SET_FIELD_LEN, *f);
                        });
                    }
                });
            });
        }
        w.bytes(
            NFTA_SET_USERDATA,
            &udata::set_udata(s.is_concat(), s.key_big_endian, s.comment),
        );
        let what = format!("add set {} {} {}", s.family.as_str(), s.table, s.name);
        self.push(NFT_MSG_NEWSET, s.family, NLM_F_CREATE, w, what);
    }

    fn elements(
        &mut self,
        (ty, flags, verb): (u16, u16, &str),
        family: Family,
        table: &str,
        set: &str,
        elems: &[Element],
    ) {
        // An attribute's length is 16 bits: long lists go in several messages
        // of the same transaction.
        let mut rest = elems;
        while !rest.is_empty() {
            let mut w = AttrWriter::new();
            w.str(NFTA_SET_ELEM_LIST_TABLE, table)
                .str(NFTA_SET_ELEM_LIST_SET, set);
            if let Some(id) = self.set_id(family, table, set) {
                w.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            let mut taken = 0;
            w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                let start = l.buf.len();
                for e in rest {
                    if taken > 0 && l.buf.len() - start > MAX_ELEMENTS_BYTES {
                        break;
                    }
                    e.encode(l, ty == NFT_MSG_NEWSETELEM);
                    taken += 1;
                }
            });
            rest = &rest[taken..];
            let what = format!("{verb} element {} {table} {set}", family.as_str());
            self.push(ty, family, flags, w, what);
        }
    }

    /// `add element FAMILY TABLE SET { ... }` (no error for one that exists).
    pub fn add_elements(&mut self, family: Family, table: &str, set: &str, elems: &[Element]) {
        self.elements(
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add"),
            family,
            table,
            set,
            elems,
        );
    }

    /// `delete element FAMILY TABLE SET { ... }` (ENOENT for a missing one).
    pub fn del_elements(&mut self, family: Family, table: &str, set: &str, elems: &[Element]) {
        self.elements((NFT_MSG_DELSETELEM, 0, "delete"), family, table, set, elems);
    }

    /// The batch as sent: BATCH_BEGIN, each message (with NLM_F_ACK and
    /// sequence numbers `seq+1..`), BATCH_END (`seq` and `seq+n+1`).
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.msgs.iter().map(|m| m.attrs.len() + 20).sum::<usize>());
        put_msg(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        for (i, m) in self.msgs.iter().enumerate() {
            put_msg(
                &mut out,
                (NFNL_SUBSYS_NFTABLES << 8) | m.ty,
                NLM_F_REQUEST | NLM_F_ACK | m.flags,
                seq.wrapping_add(1 + i as u32),
                m.family as u8,
                0,
                &m.attrs,
            );
        }
        put_msg(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq.wrapping_add(1 + self.msgs.len() as u32),
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        out
    }
}

/// Appends one nfnetlink message: nlmsghdr, nfgenmsg, attributes.
pub(crate) fn put_msg(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = (NLMSG_HDRLEN + 4 + attrs.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(NFNETLINK_V0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_element_lists_are_split_into_valid_messages() {
        let els: Vec<Element> = (0..3000u32)
            .map(|i| Element::new(i.to_be_bytes().to_vec()).with_comment(Some("berth:net:c:eth0")))
            .collect();
        let mut b = Batch::new();
        b.add_elements(Family::Inet, "t", "s", &els);
        assert!(b.len() > 1, "one message for 3000 elements");
        let mut total = 0;
        for m in &b.msgs {
            let list = crate::attr::find(&m.attrs, NFTA_SET_ELEM_LIST_ELEMENTS).expect("list");
            assert!(m.attrs.len() < 65535);
            total += crate::attr::attrs(list).count();
        }
        assert_eq!(total, 3000, "every element in exactly one message");
    }
}
