//! The NETLINK_NETFILTER socket: commits batches with every message
//! acknowledged, looks up one element, dumps a set's elements.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket as NlSocket, SocketAddr};

use crate::attr::{self, AttrWriter};
use crate::batch::{put_msg, Batch, Element, Family};
use crate::expr::{parse_exprs, RuleDump};
use crate::sys::*;
use crate::udata;
use crate::Error;

/// How long to wait for the kernel's answer. The kernel processes a batch
/// while we send it, so its answers are queued by the time `send` returns;
/// the timeout only guards against a kernel that never answers.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// One reply message: its header and body (after nlmsghdr).
struct Reply {
    ty: u16,
    flags: u16,
    seq: u32,
    body: Vec<u8>,
}

/// An open nftables netlink socket in the namespace it was opened in.
pub struct Socket {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    pub fn new() -> Result<Socket, Error> {
        let mut sock = NlSocket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        sock.bind_auto().map_err(Error::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        // Errors carry the kernel's reason when it gives one; best effort.
        let _ = sock.set_ext_ack(true);
        set_recv_timeout(&sock, RECV_TIMEOUT).map_err(Error::Socket)?;
        // Sequence numbers only need to differ from this socket's earlier
        // requests; start from the clock like nft does.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            sock,
            seq,
            buf: vec![0u8; 64 * 1024],
        })
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    fn recv(&mut self) -> Result<Vec<Reply>, Error> {
        let n = loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Socket(e)),
            }
        };
        let mut out = Vec::new();
        let mut off = 0;
        let data = &self.buf[..n];
        while off + NLMSG_HDRLEN <= data.len() {
            let h = &data[off..];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if len < NLMSG_HDRLEN || off + len > data.len() {
                return Err(Error::Decode(format!("bad message length {len}")));
            }
            out.push(Reply {
                ty: u16::from_ne_bytes([h[4], h[5]]),
                flags: u16::from_ne_bytes([h[6], h[7]]),
                seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
                body: h[NLMSG_HDRLEN..len].to_vec(),
            });
            off += attr::align4(len);
        }
        Ok(out)
    }

    /// Sends `batch` as one transaction and checks every message's
    /// acknowledgement. The first error names the message it belongs to.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u32;
        let seq = self.next_seq(n + 2);
        let bytes = batch.encode(seq);
        // The whole batch is one datagram: it must fit the send buffer.
        if bytes.len() + 4096 > DEFAULT_SNDBUF {
            set_sndbuf(&self.sock, bytes.len() + 4096).map_err(Error::Socket)?;
        }
        self.sock.send(&bytes, 0).map_err(Error::Socket)?;
        let mut acked = vec![false; batch.len()];
        let mut first_err: Option<Error> = None;
        while acked.iter().any(|a| !a) {
            for r in self.recv()? {
                if r.ty != NLMSG_ERROR {
                    continue;
                }
                let (code, ext) = parse_error(&r);
                let idx = r.seq.wrapping_sub(seq);
                if idx == 0 || idx > n {
                    // The batch itself was refused (for example EPERM or
                    // ENOMEM): nothing was applied.
                    if code != 0 && r.seq == seq {
                        return Err(Error::Kernel {
                            what: "nftables batch".into(),
                            errno: code,
                            reason: ext,
                        });
                    }
                    continue;
                }
                let i = (idx - 1) as usize;
                acked[i] = true;
                if code != 0 && first_err.is_none() {
                    first_err = Some(Error::Kernel {
                        what: batch.msgs[i].what.clone(),
                        errno: code,
                        reason: ext,
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The element of `set` with `key` (`nft get element`), `None` when the
    /// table, the set or the element does not exist.
    pub fn get_element(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        key: &[u8],
    ) -> Result<Option<Element>, Error> {
        let mut w = AttrWriter::new();
        w.str(NFTA_SET_ELEM_LIST_TABLE, table)
            .str(NFTA_SET_ELEM_LIST_SET, set)
            .nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                Element::new(key.to_vec()).encode(l, false);
            });
        let what = format!("get element {} {table} {set}", family.as_str());
        match self.request(family, NFT_MSG_GETSETELEM, NLM_F_ACK, &w.buf, &what) {
            Ok(msgs) => Ok(msgs.iter().flat_map(|b| parse_elements(b)).next()),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every element of `set` with its comment (`nft list set`), `None`
    /// when the table or the set does not exist.
    pub fn dump_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Result<Option<Vec<Element>>, Error> {
        let mut w = AttrWriter::new();
        w.str(NFTA_SET_ELEM_LIST_TABLE, table)
            .str(NFTA_SET_ELEM_LIST_SET, set);
        let what = format!("list set {} {table} {set}", family.as_str());
        match self.request(family, NFT_MSG_GETSETELEM, NLM_F_DUMP, &w.buf, &what) {
            Ok(msgs) => Ok(Some(msgs.iter().flat_map(|b| parse_elements(b)).collect())),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The rules of `chain` in order, each as its expressions
    /// (`nft list chain`). The kernel answers a dump filtered on a chain or
    /// table that does not exist with no rules (or ENOENT: `None`).
    pub fn dump_rules(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<Option<Vec<RuleDump>>, Error> {
        let mut w = AttrWriter::new();
        w.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
        let what = format!("list chain {} {table} {chain}", family.as_str());
        match self.request(family, NFT_MSG_GETRULE, NLM_F_DUMP, &w.buf, &what) {
            Ok(msgs) => Ok(Some(
                msgs.iter()
                    .map(|b| {
                        attr::find(b, NFTA_RULE_EXPRESSIONS)
                            .map(parse_exprs)
                            .unwrap_or_default()
                    })
                    .collect(),
            )),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One request outside a batch; the bodies (after nfgenmsg) of its
    /// replies until the acknowledgement or NLMSG_DONE.
    fn request(
        &mut self,
        family: Family,
        ty: u16,
        flags: u16,
        attrs: &[u8],
        what: &str,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let seq = self.next_seq(1);
        let mut out = Vec::new();
        put_msg(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            seq,
            family as u8,
            0,
            attrs,
        );
        self.sock.send(&out, 0).map_err(Error::Socket)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut bodies = Vec::new();
        loop {
            for r in self.recv()? {
                if r.seq != seq {
                    continue;
                }
                match r.ty {
                    NLMSG_DONE => return Ok(bodies),
                    NLMSG_ERROR => {
                        let (code, reason) = parse_error(&r);
                        if code == 0 {
                            return Ok(bodies);
                        }
                        return Err(Error::Kernel {
                            what: what.to_string(),
                            errno: code,
                            reason,
                        });
                    }
                    _ => {
                        bodies.push(r.body.get(4..).unwrap_or_default().to_vec());
                        if !dump && flags & NLM_F_ACK == 0 && r.flags & NLM_F_MULTI == 0 {
                            return Ok(bodies);
                        }
                    }
                }
            }
        }
    }
}

/// The errno (positive, 0 for an acknowledgement) and the extended-ack
/// message of an NLMSG_ERROR.
fn parse_error(r: &Reply) -> (i32, Option<String>) {
    let Some(code) = r.body.get(..4) else {
        return (libc::EBADMSG, None);
    };
    let code = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    let mut reason = None;
    if r.flags & NLM_F_ACK_TLVS != 0 {
        // After the error code: the original message, whole or capped to
        // its header, then the TLVs.
        let orig_len = if r.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            r.body
                .get(4..8)
                .map(|l| u32::from_ne_bytes([l[0], l[1], l[2], l[3]]) as usize)
                .unwrap_or(NLMSG_HDRLEN)
        };
        if let Some(tlvs) = r.body.get(4 + attr::align4(orig_len)..) {
            reason = attr::find(tlvs, NLMSGERR_ATTR_MSG).map(attr::as_str);
        }
    }
    (code, reason)
}

/// The elements in a NEWSETELEM message body (after nfgenmsg).
pub(crate) fn parse_elements(body: &[u8]) -> Vec<Element> {
    let Some(list) = attr::find(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attr::attrs(list)
        .filter(|(t, _)| *t == NFTA_LIST_ELEM)
        .map(|(_, e)| {
            let value = |ty| {
                attr::find(e, ty)
                    .and_then(|k| attr::find(k, NFTA_DATA_VALUE))
                    .map(<[u8]>::to_vec)
            };
            Element {
                key: value(NFTA_SET_ELEM_KEY).unwrap_or_default(),
                key_end: value(NFTA_SET_ELEM_KEY_END),
                comment: attr::find(e, NFTA_SET_ELEM_USERDATA).and_then(udata::parse_elem_comment),
                flags: attr::find(e, NFTA_SET_ELEM_FLAGS)
                    .and_then(attr::as_u32_be)
                    .unwrap_or(0),
            }
        })
        .collect()
}

/// Below the kernel's default socket send buffer (net.core.wmem_default,
/// 212992 bytes) a batch needs no larger buffer.
const DEFAULT_SNDBUF: usize = 200 * 1024;

/// SO_SNDBUFFORCE (root may exceed net.core.wmem_max), else SO_SNDBUF.
fn set_sndbuf(sock: &NlSocket, size: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: the fd is this socket's, open for the call; `v` is a
        // c_int that outlives the call and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

fn set_recv_timeout(sock: &NlSocket, d: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // The field types are left to inference: libc deprecates naming them
    // on musl, whose time_t changed width. 2^30 s and 10^6 µs fit either.
    let tv = libc::timeval {
        tv_sec: d.as_secs().min(1 << 30).try_into().unwrap_or_default(),
        tv_usec: i32::try_from(d.subsec_micros()).unwrap_or_default().into(),
    };
    // SAFETY: the fd is this socket's, open for the call; `tv` is a valid
    // timeval that outlives the call and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
