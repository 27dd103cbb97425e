//! A small synchronous rtnetlink client: the link, address, route, bridge
//! port, VLAN, neighbour, FDB and VXLAN operations Berth needs, with kernel
//! errors kept as errno so callers can tolerate EEXIST / ENOENT precisely.
//!
//! Synchronous on purpose: a CNI plugin makes a handful of requests and
//! exits, so an async runtime would only add start-up time.
//!
//! One socket type ([`Netlink`]) with its operations split by the object
//! they change: one module each for links, bridges (ports and VLANs),
//! addresses, routes, neighbours with FDB entries, and VXLAN devices.

mod addresses;
mod bridge;
mod links;
mod neighbours;
mod routes;
mod vxlan;

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use links::{mac_to_string, parse_mac, Link};
pub use routes::RouteSpec;
pub use vxlan::VxlanInfo;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("netlink: {0}")]
    Decode(String),
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

pub(crate) fn family_of(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// One open rtnetlink socket, bound to the namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    // Replies are read into this, one recv each (see `request`).
    rbuf: Vec<u8>,
}

/// Room for any reply datagram this module asks for: the kernel caps a dump's
/// datagrams at 32 KiB, and a single link, address or route is far smaller.
const RECV_BUF: usize = 64 * 1024;

impl Netlink {
    pub fn new() -> Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Extended acks make kernel errors carry a reason; best effort.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink {
            sock,
            seq: 1,
            rbuf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends one request and collects the replies: the messages of a dump,
    /// or nothing for an acknowledged change. `op` names the operation in
    /// errors.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(NetlinkError::Socket)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            // One recv into a buffer that fits any reply, rather than a peek
            // for the size and then the read: half the syscalls, no allocation
            // per reply. MSG_TRUNC makes the kernel report the datagram's
            // real size, so a larger one is an error rather than cut short.
            self.rbuf.clear();
            let n = self
                .sock
                .recv(&mut self.rbuf, libc::MSG_TRUNC)
                .map_err(NetlinkError::Socket)?;
            if n > self.rbuf.len() {
                return Err(NetlinkError::Decode(format!(
                    "{op}: a reply of {n} bytes does not fit the {RECV_BUF}-byte buffer"
                )));
            }
            let data = &self.rbuf[..n];
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetlinkError::Decode(format!("{op}: {e}")))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode(format!("{op}: zero-length message")));
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn change(&mut self, msg: RouteNetlinkMessage, extra: u16, op: &str) -> Result<()> {
        self.request(msg, NLM_F_ACK | extra, op).map(|_| ())
    }
}
