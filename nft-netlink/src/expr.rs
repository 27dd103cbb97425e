//! Rule expressions: the handful of nf_tables expressions Berth's rules
//! are made of, encoded as `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA }`.

use crate::attr::AttrWriter;
use crate::sys::*;

/// A 128-bit data register (`NFT_REG_1`..`NFT_REG_4`); concatenations are
/// laid out in 32-bit registers, which alias them (`NFT_REG32_00` = 8 is
/// the first word of `NFT_REG_1`).
pub type Reg = u32;
pub const REG_1: Reg = 1;
pub const REG_2: Reg = 2;
/// The second 32-bit word of `NFT_REG_1` (`NFT_REG32_01`).
pub const REG32_01: Reg = 9;

/// Where a payload expression reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    LinkLayer = 0,
    Network = 1,
    Transport = 2,
}

/// `meta` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// Input interface name (16 bytes).
    IifName = 6,
    /// Network protocol family of the packet (`meta nfproto`, 1 byte).
    NfProto = 15,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `[ meta load KEY => reg DREG ]`
    Meta { key: MetaKey, dreg: Reg },
    /// `[ payload load LEN @ BASE + OFFSET => reg DREG ]`
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    /// `[ cmp OP reg SREG DATA ]`
    Cmp { sreg: Reg, op: CmpOp, data: Vec<u8> },
    /// `[ bitwise reg DREG = ( reg SREG & MASK ) ^ XOR ]`; mask and xor
    /// have the same length.
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `[ lookup reg SREG set SET ]`, or its negation with `invert`.
    Lookup {
        sreg: Reg,
        set: String,
        invert: bool,
    },
    /// `[ masq ]` with no port range or flags.
    Masq,
    /// `[ immediate reg 0 VERDICT ]`
    Verdict(Verdict),
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Masq => "masq",
            Expr::Verdict(_) => "immediate",
        }
    }

    fn data(&self, w: &mut AttrWriter, set_id: &dyn Fn(&str) -> Option<u32>) {
        match self {
            Expr::Meta { key, dreg } => {
                w.u32(NFTA_META_KEY, *key as u32).u32(NFTA_META_DREG, *dreg);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                w.u32(NFTA_PAYLOAD_DREG, *dreg)
                    .u32(NFTA_PAYLOAD_BASE, *base as u32)
                    .u32(NFTA_PAYLOAD_OFFSET, *offset)
                    .u32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                w.u32(NFTA_CMP_SREG, *sreg)
                    .u32(NFTA_CMP_OP, *op as u32)
                    .nest(NFTA_CMP_DATA, |d| {
                        d.bytes(NFTA_DATA_VALUE, data);
                    });
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                w.u32(NFTA_BITWISE_SREG, *sreg)
                    .u32(NFTA_BITWISE_DREG, *dreg)
                    .u32(NFTA_BITWISE_LEN, mask.len() as u32)
                    .nest(NFTA_BITWISE_MASK, |d| {
                        d.bytes(NFTA_DATA_VALUE, mask);
                    })
                    .nest(NFTA_BITWISE_XOR, |d| {
                        d.bytes(NFTA_DATA_VALUE, xor);
                    });
            }
            Expr::Lookup { sreg, set, invert } => {
                w.u32(NFTA_LOOKUP_SREG, *sreg).str(NFTA_LOOKUP_SET, set);
                if let Some(id) = set_id(set) {
                    w.u32(NFTA_LOOKUP_SET_ID, id);
                }
                if *invert {
                    w.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                }
            }
            Expr::Masq => {}
            Expr::Verdict(v) => {
                w.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                    .nest(NFTA_IMMEDIATE_DATA, |d| {
                        d.nest(NFTA_DATA_VERDICT, |v2| {
                            v2.u32(NFTA_VERDICT_CODE, *v as u32);
                        });
                    });
            }
        }
    }

    /// Encodes the expression; `set_id` gives the NFTA_SET_ID of a set
    /// added earlier in the same batch (the kernel finds the set by name
    /// first, by id if the name is not found).
    pub(crate) fn encode(&self, w: &mut AttrWriter, set_id: &dyn Fn(&str) -> Option<u32>) {
        w.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, self.name())
                .nest(NFTA_EXPR_DATA, |d| self.data(d, set_id));
        });
    }

    /// `[ cmp OP reg SREG DATA ]` after `[ bitwise ... ]` for an address
    /// prefix match (`ip daddr != 224.0.0.0/4`): loads must already be in
    /// `reg`. Byte-aligned prefixes shorter than the address are matched on
    /// their bytes only by the caller (a shorter payload load), as nft does.
    pub fn prefix_match(reg: Reg, addr: &[u8], prefix_len: u32, op: CmpOp) -> Vec<Expr> {
        let mut mask = vec![0u8; addr.len()];
        for (i, m) in mask.iter_mut().enumerate() {
            let bits = prefix_len.saturating_sub(8 * i as u32).min(8);
            *m = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        }
        let data: Vec<u8> = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
        vec![
            Expr::Bitwise {
                sreg: reg,
                dreg: reg,
                mask,
                xor: vec![0; addr.len()],
            },
            Expr::Cmp {
                sreg: reg,
                op,
                data,
            },
        ]
    }
}

/// One expression of a rule as the kernel reports it: its name and the
/// attributes of its data (type, payload with nested headers canonical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprDump {
    pub name: String,
    pub leaves: Vec<(Vec<u16>, Vec<u8>)>,
}

/// A rule's expressions as the kernel reports them.
pub type RuleDump = Vec<ExprDump>;

/// `data` with the NLA_F_NESTED bit cleared in every attribute header, if it is
/// a well-formed sequence of attributes; else `data` itself. The kernel
/// reports nested data attributes (NFTA_CMP_DATA, ...) without the bit that
/// we set, so both sides are compared in this form.
fn canon(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return data.to_vec();
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 4 || len > rest.len() {
            return data.to_vec();
        }
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        out.extend_from_slice(&rest[0..2]);
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend(canon(&rest[4..len]));
        let next = crate::attr::align4(len);
        if next > rest.len() {
            if next - rest.len() > 3 {
                return data.to_vec();
            }
            rest = &[];
        } else {
            out.extend_from_slice(&rest[len..next]);
            rest = &rest[next..];
        }
    }
    out
}

fn leaves(data: &[u8], out: &mut Vec<(Vec<u16>, Vec<u8>)>) {
    for (ty, payload) in crate::attr::attrs(data) {
        out.push((vec![ty], canon(payload)));
    }
}

/// Parses the content of NFTA_RULE_EXPRESSIONS.
pub(crate) fn parse_exprs(list: &[u8]) -> RuleDump {
    crate::attr::attrs(list)
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .map(|(_, e)| {
            let name = crate::attr::find(e, NFTA_EXPR_NAME)
                .map(crate::attr::as_str)
                .unwrap_or_default();
            let mut out = Vec::new();
            if let Some(d) = crate::attr::find(e, NFTA_EXPR_DATA) {
                leaves(d, &mut out);
            }
            ExprDump { name, leaves: out }
        })
        .collect()
}

/// Whether a rule the kernel reported is `expected`: the same expressions in
/// the same order, each carrying every attribute we would send with the same
/// value (the kernel may report more, such as defaults; a set id is a
/// batch-local name and is not compared).
pub fn rule_matches(expected: &[Expr], dumped: &[ExprDump]) -> bool {
    let mut w = AttrWriter::new();
    for e in expected {
        e.encode(&mut w, &|_| None);
    }
    let want = parse_exprs(&w.buf);
    want.len() == dumped.len()
        && want
            .iter()
            .zip(dumped)
            .all(|(w, d)| w.name == d.name && w.leaves.iter().all(|leaf| d.leaves.contains(leaf)))
}
