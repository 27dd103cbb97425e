//! Netlink attributes (struct nlattr): a writer for nested TLVs and a
//! parser that walks them without allocating.

use crate::sys::{NLA_F_NESTED, NLA_TYPE_MASK};

const NLA_HDRLEN: usize = 4;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends attributes to a byte buffer. Integers in nf_tables attributes
/// are big-endian.
#[derive(Default, Debug, Clone)]
pub(crate) struct AttrWriter {
    pub(crate) buf: Vec<u8>,
}

impl AttrWriter {
    pub(crate) fn new() -> AttrWriter {
        AttrWriter { buf: Vec::new() }
    }

    pub(crate) fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + data.len();
        // Attribute lengths are u16; everything this crate sends is far
        // smaller (names, keys, comments of at most 128 bytes).
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string.
    pub(crate) fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(ty, &v)
    }

    pub(crate) fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub(crate) fn i32(&mut self, ty: u16, v: i32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A nested attribute whose payload `f` writes.
    pub(crate) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut AttrWriter)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        let mut inner = AttrWriter {
            buf: std::mem::take(&mut self.buf),
        };
        f(&mut inner);
        self.buf = inner.buf;
        let len = u16::try_from(self.buf.len() - start).unwrap_or(u16::MAX);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

/// Iterates over the attributes in `data`: (type without flags, payload).
/// Stops at the first truncated attribute.
pub(crate) fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            return None;
        }
        let payload = &rest[NLA_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((ty, payload))
    })
}

/// The payload of the first attribute of type `ty`.
pub(crate) fn find(data: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(data).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// A NUL-terminated string attribute.
pub(crate) fn as_str(p: &[u8]) -> String {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

pub(crate) fn as_u32_be(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// Renders attributes as `[len,type]` headers followed by the payload in
/// 32-bit hex words, descending into nested attributes: the layout of
/// `nft --debug=mnl`, so encodings can be compared with what nft sends.
pub(crate) fn render(data: &[u8], out: &mut Vec<String>) {
    let mut rest = data;
    while rest.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let raw = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < NLA_HDRLEN || len > rest.len() {
            out.push(format!("<bad attribute length {len}>"));
            return;
        }
        out.push(format!("[{len},{}]", raw & NLA_TYPE_MASK));
        let payload = &rest[NLA_HDRLEN..len];
        if raw & NLA_F_NESTED != 0 {
            render(payload, out);
        } else {
            for w in payload.chunks(4) {
                let mut word = String::new();
                for i in 0..4 {
                    word.push_str(&format!("{:02x}", w.get(i).copied().unwrap_or(0)));
                }
                out.push(word);
            }
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_and_parse_round_trip() {
        let mut w = AttrWriter::new();
        w.str(1, "berth-nat").nest(3, |n| {
            n.u32(1, 7).bytes(2, &[1, 2, 3]);
        });
        // "berth-nat\0" is 10 bytes: 4 + 10 = 14, padded to 16.
        assert_eq!(&w.buf[0..4], &[14, 0, 1, 0]);
        assert_eq!(w.buf.len(), 16 + 4 + 8 + 8);
        let top: Vec<_> = attrs(&w.buf).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(as_str(top[0].1), "berth-nat");
        assert_eq!(top[1].0, 3, "the nested flag is masked off");
        let inner = top[1].1;
        assert_eq!(find(inner, 1).and_then(as_u32_be), Some(7));
        assert_eq!(find(inner, 2), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        assert_eq!(attrs(&[8, 0, 1, 0, 0]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
    }
}
