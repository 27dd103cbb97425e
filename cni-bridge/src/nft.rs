//! nftables through netlink (crate `nftables-netlink`): one socket per
//! plugin run, one batch (one kernel transaction, applied whole or not at
//! all) per ADD and per DEL.

pub use nftables_netlink::{Batch, Element, Socket};

use std::sync::Mutex;

use crate::error::BridgeError;

/// A lazily opened nftables socket: commands that turn out to need no
/// nftables change open none.
///
/// Closing a NETLINK_NETFILTER socket waits until the kernel has freed what
/// earlier transactions removed (rules flushed, elements deleted), which it
/// does after an RCU grace period: about 10 ms on a busy machine. So the
/// socket is not closed when the `Nft` is dropped but kept until the process
/// exits (one at a time: a later one closes the earlier), and the grace
/// period passes while the command does its remaining work.
#[derive(Default)]
pub struct Nft {
    sock: Option<Socket>,
}

static LINGER: Mutex<Option<Socket>> = Mutex::new(None);

impl Drop for Nft {
    fn drop(&mut self) {
        if let Some(s) = self.sock.take() {
            let old = match LINGER.lock() {
                Ok(mut l) => l.replace(s),
                Err(p) => p.into_inner().replace(s),
            };
            drop(old);
        }
    }
}

impl Nft {
    pub fn new() -> Nft {
        Nft::default()
    }

    pub fn sock(&mut self) -> Result<&mut Socket, BridgeError> {
        if self.sock.is_none() {
            self.sock = Some(Socket::new()?);
        }
        match self.sock.as_mut() {
            Some(s) => Ok(s),
            None => Err(BridgeError::Nat("nftables socket not open".into())),
        }
    }

    /// Commits `batch` as one transaction (nothing to do if it is empty).
    pub fn commit(&mut self, batch: &Batch) -> Result<(), BridgeError> {
        if batch.is_empty() {
            return Ok(());
        }
        Ok(self.sock()?.commit(batch)?)
    }
}

/// Text for an nft comment: printable ASCII without quotes, at most 120 bytes.
pub fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(120)
        .collect()
}

/// An interface name as an nft `ifname` key: 16 bytes, NUL-padded.
pub fn ifname_key(name: &str) -> Result<[u8; 16], BridgeError> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 15 {
        return Err(BridgeError::Nat(format!(
            "interface name {name:?} does not fit an nft ifname key"
        )));
    }
    let mut k = [0u8; 16];
    k[..b.len()].copy_from_slice(b);
    Ok(k)
}

/// The interface name in an `ifname` key.
pub fn ifname_of_key(k: &[u8]) -> String {
    let k = &k[..k.len().min(16)];
    let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
    String::from_utf8_lossy(&k[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_keys_are_padded_and_bounded() {
        let k = ifname_key("veth123").expect("key");
        assert_eq!(&k[..8], b"veth123\0");
        assert_eq!(ifname_of_key(&k), "veth123");
        assert!(ifname_key("0123456789abcdef").is_err());
        assert!(ifname_key("").is_err());
    }

    #[test]
    fn comments_are_sanitized() {
        assert_eq!(comment("berth:n:\"c\\1\" x"), "berth:n:c1x");
        assert_eq!(comment(&"a".repeat(200)).len(), 120);
    }
}
