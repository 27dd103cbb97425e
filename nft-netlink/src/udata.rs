//! nft's userdata: TLVs of one type byte, one length byte and the value,
//! stored by the kernel without looking at them. nft keeps set comments
//! and key byte order in the set's userdata and element comments in the
//! element's.

use crate::sys::*;

/// The longest comment nft accepts (NFT_USERDATA_MAXLEN is 256 for the
/// whole TLV area; nft limits comments to 128 bytes).
pub const MAX_COMMENT: usize = 127;

fn push_tlv(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    out.push(value.len().min(255) as u8);
    out.extend_from_slice(&value[..value.len().min(255)]);
}

fn comment_value(c: &str) -> Vec<u8> {
    let mut v: Vec<u8> = c.as_bytes().iter().copied().take(MAX_COMMENT).collect();
    v.push(0);
    v
}

/// An element's userdata holding only a comment.
pub fn elem_comment(c: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_tlv(&mut out, NFTNL_UDATA_SET_ELEM_COMMENT, &comment_value(c));
    out
}

/// A set's userdata as nft writes it for `type A` or `type A . B`: the key
/// byte order (0 for a concatenation, whose fields carry their own), for a
/// concatenation an empty typeof description, then the comment.
pub fn set_udata(concat: bool, big_endian: bool, comment: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let order = match (concat, big_endian) {
        (true, _) => 0,
        (false, true) => BYTEORDER_BIG_ENDIAN,
        (false, false) => BYTEORDER_HOST_ENDIAN,
    };
    push_tlv(&mut out, NFTNL_UDATA_SET_KEYBYTEORDER, &order.to_ne_bytes());
    if concat {
        // A nested TLV list: the key expression's type (nft's EXPR_CONCAT,
        // 13) and no subexpressions.
        let mut nested = Vec::new();
        push_tlv(&mut nested, 0, &13u32.to_ne_bytes());
        push_tlv(&mut nested, 1, &[]);
        push_tlv(&mut out, NFTNL_UDATA_SET_KEY_TYPEOF, &nested);
    }
    if let Some(c) = comment {
        push_tlv(&mut out, NFTNL_UDATA_SET_COMMENT, &comment_value(c));
    }
    out
}

/// The comment in an element's userdata, if any.
pub fn parse_elem_comment(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let ty = rest[0];
        let len = rest[1] as usize;
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_SET_ELEM_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_comment_round_trips() {
        let u = elem_comment("berth:n:c1:eth0");
        assert_eq!(u[0], 0);
        assert_eq!(u[1], 16, "15 bytes and the NUL");
        assert_eq!(parse_elem_comment(&u).as_deref(), Some("berth:n:c1:eth0"));
        assert_eq!(parse_elem_comment(&[5, 1, 9]), None);
        assert_eq!(parse_elem_comment(&[0, 9, 1]), None, "truncated");
    }

    #[test]
    fn set_userdata_matches_nft() {
        // What nft 1.0.6 sends for `type ifname; comment "pod ports ..."`.
        let u = set_udata(false, false, Some("pod ports under MAC spoof check"));
        let mut want = vec![0, 4, 1, 0, 0, 0, 7, 32];
        want.extend_from_slice(b"pod ports under MAC spoof check\0");
        assert_eq!(u, want);
        let c = set_udata(true, true, None);
        assert_eq!(c, vec![0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]);
    }
}
