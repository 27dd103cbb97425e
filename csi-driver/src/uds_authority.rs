//! Accepts gRPC clients that send a unix socket path as the HTTP/2 `:authority`.
//!
//! gRPC C-core (Python, C++, Ruby), grpc-java and older grpc-go send the socket
//! path (`/run/csi/csi.sock`, or percent-encoded `%2Frun%2Fcsi%2Fcsi.sock`) as
//! `:authority` when dialing `unix://...`. That is not a valid URI authority,
//! and h2 (under hyper and tonic) resets every such stream with PROTOCOL_ERROR
//! before the request reaches any service (h2 `src/server.rs`,
//! `Peer::convert_poll_message`); no h2, hyper or tonic option relaxes it.
//!
//! [`AuthorityFix`] wraps an accepted connection and rewrites, in the bytes the
//! client sends, every `:authority` that `http::uri::Authority` rejects into
//! `localhost` (what grpc-go and Kubernetes send over unix sockets). Valid
//! authorities, every other header and every other frame pass unchanged.
//!
//! How it stays correct:
//! - HPACK state is per connection and per direction, and header blocks are
//!   never interleaved (a HEADERS without END_HEADERS must be followed only by
//!   CONTINUATION frames of the same stream, RFC 9113 §6.10). The shim reads
//!   the client-to-server bytes in order, joins HEADERS + CONTINUATION into the
//!   whole block and decodes every block with one `loona_hpack::Decoder`, so its
//!   dynamic table mirrors the client's encoder exactly (size updates
//!   included, capped at the 4096 bytes h2 advertises by default).
//! - Every block is re-encoded with "literal without indexing, new name"
//!   only. That representation neither reads nor changes the dynamic table, so
//!   h2's decoder table stays empty and can never disagree with ours; the
//!   client's table size updates need not be forwarded (an encoder may keep
//!   its table unused).
//! - The new block goes out as one HEADERS (same stream, END_STREAM and
//!   priority kept, padding dropped) plus CONTINUATION frames, each at most
//!   16384 bytes, the smallest SETTINGS_MAX_FRAME_SIZE a peer may advertise.
//!   Frame lengths of header frames do not count toward flow control.
//! - Other frames (DATA, SETTINGS, PING, ...) are streamed through as they
//!   arrive, without buffering their payloads. The server-to-client
//!   direction is not touched.
//! - A client that breaks the framing or HPACK rules gets its connection
//!   closed (an `InvalidData` read error), where h2 would have sent GOAWAY.
//!   Input that does not start with the HTTP/2 preface is passed through
//!   untouched, for h2 to reject as before.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE can never be below this, so frames this size always fit.
const OUT_FRAME_MAX: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE h2 advertises (its default; tonic exposes no knob).
const HEADER_TABLE_SIZE: usize = 4096;
/// Cap on one buffered header block, encoded and decoded (h2 via hyper limits the
/// decoded list to 16 KiB by default; this only bounds the shim's memory).
const MAX_BLOCK: usize = 1 << 20;
/// Cap on the frames of one header block (CONTINUATION floods of empty frames).
const MAX_BLOCK_FRAMES: u32 = 1024;
/// What a rejected `:authority` becomes.
const REPLACEMENT: &[u8] = b"localhost";

/// A connection whose client-to-server HTTP/2 bytes get invalid `:authority`
/// values replaced by `localhost`. Writes go straight to the inner stream.
pub struct AuthorityFix<T> {
    inner: T,
    /// Bytes read from `inner`, not yet processed.
    input: BytesMut,
    /// Processed bytes, ready for the reader (hyper/h2).
    output: BytesMut,
    state: State,
    /// Payload bytes of the current non-header frame still to copy through.
    passthrough: usize,
    /// The header block being gathered, between HEADERS and END_HEADERS.
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 24-byte client connection preface.
    Preface,
    /// Transcoding frames.
    Frames,
    /// Not HTTP/2 prior knowledge: everything goes through unchanged.
    Raw,
}

struct PendingBlock {
    stream_id: u32,
    /// Flags of the HEADERS frame.
    flags: u8,
    /// The 5 priority bytes of the HEADERS frame, if it had the PRIORITY flag.
    priority: Option<[u8; 5]>,
    /// The header block fragments so far, padding removed.
    block: Vec<u8>,
    frames: u32,
}

impl<T> AuthorityFix<T> {
    /// Wraps a freshly accepted connection (nothing read from it yet).
    pub fn new(inner: T) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            inner,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            state: State::Preface,
            passthrough: 0,
            pending: None,
            decoder,
            eof: false,
        }
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Raw => {
                    let all = self.input.split();
                    self.output.unsplit(all);
                    return Ok(());
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Raw;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.unsplit(preface);
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.passthrough > 0 {
                        let n = self.passthrough.min(self.input.len());
                        if n == 0 {
                            return Ok(());
                        }
                        let chunk = self.input.split_to(n);
                        self.output.unsplit(chunk);
                        self.passthrough -= n;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let h = &self.input[..FRAME_HEADER_LEN];
                    let len =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    let in_block = self.pending.is_some();
                    if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION || in_block {
                        if !self.header_frame(len, kind, flags, stream_id)? {
                            return Ok(()); // wait for the rest of the frame
                        }
                        continue;
                    }
                    if kind == TYPE_PUSH_PROMISE {
                        return Err(bad("PUSH_PROMISE from a client"));
                    }
                    let header = self.input.split_to(FRAME_HEADER_LEN);
                    self.output.unsplit(header);
                    self.passthrough = len;
                }
            }
        }
    }

    /// Handles one HEADERS/CONTINUATION frame once all of it is in `input`;
    /// `false`: not all of it is there yet.
    fn header_frame(
        &mut self,
        len: usize,
        kind: u8,
        flags: u8,
        stream_id: u32,
    ) -> io::Result<bool> {
        if len > MAX_BLOCK {
            return Err(bad("header frame too large"));
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            return Ok(false);
        }
        self.input.advance(FRAME_HEADER_LEN);
        let mut payload = self.input.split_to(len);
        match (kind, self.pending.as_mut()) {
            (TYPE_HEADERS, None) => {
                if stream_id == 0 {
                    return Err(bad("HEADERS on stream 0"));
                }
                let mut pad = 0;
                if flags & FLAG_PADDED != 0 {
                    if payload.is_empty() {
                        return Err(bad("HEADERS padding"));
                    }
                    pad = usize::from(payload.get_u8());
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    if payload.len() < 5 {
                        return Err(bad("HEADERS priority"));
                    }
                    let mut p = [0u8; 5];
                    payload.copy_to_slice(&mut p);
                    priority = Some(p);
                }
                if pad > payload.len() {
                    return Err(bad("HEADERS padding"));
                }
                payload.truncate(payload.len() - pad);
                self.pending = Some(PendingBlock {
                    stream_id,
                    flags,
                    priority,
                    block: payload.to_vec(),
                    frames: 1,
                });
            }
            (TYPE_CONTINUATION, Some(p)) if p.stream_id == stream_id => {
                p.frames += 1;
                if p.block.len() + payload.len() > MAX_BLOCK || p.frames > MAX_BLOCK_FRAMES {
                    return Err(bad("header block too large"));
                }
                p.block.extend_from_slice(&payload);
            }
            _ => return Err(bad("header block interrupted or CONTINUATION out of place")),
        }
        if flags & FLAG_END_HEADERS != 0 {
            if let Some(p) = self.pending.take() {
                self.emit_block(p)?;
            }
        }
        Ok(true)
    }

    /// Decodes a whole header block, fixes `:authority`, re-encodes it.
    fn emit_block(&mut self, p: PendingBlock) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        self.decoder
            .decode_with_cb(&p.block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                decoded += name.len() + value.len() + 32;
                if decoded > MAX_BLOCK {
                    return; // stop collecting; the connection is closed below
                }
                let value = if &*name == b":authority"
                    && http::uri::Authority::try_from(&*value).is_err()
                {
                    tracing::debug!(from = %String::from_utf8_lossy(&value), "rewriting :authority to localhost");
                    REPLACEMENT.to_vec()
                } else {
                    value.into_owned()
                };
                fields.push((name.into_owned(), value));
            })
            .map_err(|e| bad(&format!("HPACK: {e}")))?;
        if decoded > MAX_BLOCK {
            return Err(bad("header list too large"));
        }
        let mut block = Vec::with_capacity(p.block.len() + 64);
        for (name, value) in &fields {
            block.push(0x00); // literal header field without indexing, new name
            encode_string(name, &mut block);
            encode_string(value, &mut block);
        }
        // First frame: HEADERS with the priority fields, then CONTINUATIONs.
        let prio_len = if p.priority.is_some() { 5 } else { 0 };
        let first = block.len().min(OUT_FRAME_MAX - prio_len);
        let mut flags = p.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        if first == block.len() {
            flags |= FLAG_END_HEADERS;
        }
        self.frame_header(first + prio_len, TYPE_HEADERS, flags, p.stream_id);
        if let Some(prio) = p.priority {
            self.output.put_slice(&prio);
        }
        self.output.put_slice(&block[..first]);
        let mut rest = &block[first..];
        while !rest.is_empty() {
            let n = rest.len().min(OUT_FRAME_MAX);
            let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
            self.frame_header(n, TYPE_CONTINUATION, flags, p.stream_id);
            self.output.put_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(())
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream_id: u32) {
        // len <= OUT_FRAME_MAX, so it fits the 24-bit length field.
        self.output.put_uint(len as u64, 3);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream_id);
    }
}

/// HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from client: {what}"),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A frame cut short by EOF is dropped; h2 sees the EOF either way.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(rb.filled());
            this.process()?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        v.push(kind);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Runs bytes through the shim in one go (and byte by byte: same result).
    fn run(input: &[u8]) -> Vec<u8> {
        let mut whole = AuthorityFix::new(());
        whole.input.extend_from_slice(input);
        whole.process().unwrap();
        let mut bytewise = AuthorityFix::new(());
        for b in input {
            bytewise.input.put_u8(*b);
            bytewise.process().unwrap();
        }
        assert_eq!(whole.output, bytewise.output);
        whole.output.to_vec()
    }

    /// Splits shim output into frames and decodes header blocks with a fresh decoder
    /// (an empty dynamic table, like h2's).
    fn decode_out(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rest = &out[PREFACE.len()..];
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = vec![];
        let mut cur = vec![];
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let mut p = &rest[9..9 + len];
            if kind == TYPE_HEADERS && flags & FLAG_PRIORITY != 0 {
                p = &p[5..];
            }
            if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION {
                cur.extend_from_slice(p);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(dec.decode(&cur).unwrap());
                    cur.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    #[test]
    fn rewrites_path_authority_across_continuation_and_dynamic_table() {
        let mut enc = loona_hpack::Encoder::new(); // uses the dynamic table
        let hdrs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/csi.v1.Identity/Probe"),
            (b":authority", b"/tmp/x/csi.sock"),
            (b"te", b"trailers"),
        ];
        let b1 = enc.encode(hdrs.clone());
        let b2 = enc.encode(hdrs.clone()); // all indexed now: needs the client's table
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let (a, b) = b1.split_at(7);
        input.extend(frame(TYPE_HEADERS, 0, 1, a));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        // padded + priority HEADERS
        let mut p = vec![3u8, 0, 0, 0, 0, 16];
        p.extend_from_slice(&b2);
        p.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
            3,
            &p,
        ));
        let out = run(&input);
        let blocks = decode_out(&out);
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            let auth: Vec<_> = b.iter().filter(|(n, _)| n == b":authority").collect();
            assert_eq!(auth[0].1, b"localhost");
            assert_eq!(b.len(), 5);
            assert_eq!(b[2].1, b"/csi.v1.Identity/Probe");
        }
        // DATA frame passed through unchanged.
        assert!(out
            .windows(14)
            .any(|w| w == frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0").as_slice()));
    }

    #[test]
    fn keeps_valid_authority_and_percent_encoded_path_is_fixed() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let b1 = enc.encode(vec![(&b":authority"[..], &b"localhost:50051"[..])]);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b1));
        let b2 = enc.encode(vec![(&b":authority"[..], &b"%2Ftmp%2Fs.sock"[..])]);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b2));
        let blocks = decode_out(&run(&input));
        assert_eq!(blocks[0][0].1, b"localhost:50051");
        assert_eq!(blocks[1][0].1, b"localhost");
    }

    #[test]
    fn large_block_is_split_into_continuations() {
        let big = vec![b'a'; 40_000];
        let mut enc = loona_hpack::Encoder::new();
        let b = enc.encode(vec![
            (&b"x-big"[..], &big[..]),
            (&b":authority"[..], &b"/s"[..]),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &b,
        ));
        let out = run(&input);
        let blocks = decode_out(&out);
        assert_eq!(blocks[0][0].1, big);
        assert_eq!(blocks[0][1].1, b"localhost");
        assert_eq!(out[PREFACE.len() + 4], FLAG_END_STREAM); // first frame: no END_HEADERS
    }

    #[test]
    fn not_http2_passes_through_and_bad_framing_errors() {
        assert_eq!(run(b"GET / HTTP/1.1\r\n\r\n"), b"GET / HTTP/1.1\r\n\r\n");
        let mut s = AuthorityFix::new(());
        s.input.extend_from_slice(PREFACE);
        s.input
            .extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"\x82"));
        assert!(s.process().is_err());
    }
}
