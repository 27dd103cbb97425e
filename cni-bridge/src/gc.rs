//! GC (spec 1.1.0): remove everything of every attachment of this network
//! that the runtime no longer lists, then let IPAM do the same.

use std::collections::HashSet;

use crate::ipam::Ipam;
use cni_core::Request;
use ipnetwork::IpNetwork;

use crate::config::BridgeConf;
use crate::del::teardown_host;
use crate::error::BridgeError;
use crate::masq;
use crate::nft::{Batch, Nft};
use crate::records::Records;
use crate::spoofchk;

pub fn cmd_gc(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.config, "")?;
    let valid: HashSet<(String, String)> = cni_core::config::valid_attachments(&req.config.raw)?
        .into_iter()
        .collect();

    if let Some(recs) = Records::open(&conf.records_dir(), false)? {
        let stale: Vec<_> = recs
            .all()?
            .into_iter()
            .filter(|r| !valid.contains(&(r.container_id.clone(), r.ifname.clone())))
            .collect();
        for r in stale {
            let addrs: Vec<IpNetwork> = r.ips.iter().filter_map(|s| s.parse().ok()).collect();
            teardown_host(
                &conf,
                &r.container_id,
                &r.ifname,
                &r.host_veth,
                Some(&r),
                &addrs,
                &r.pod_mac,
            )?;
            recs.delete(&r.container_id, &r.ifname)?;
            eprintln!(
                "berth-bridge: GC removed {}/{} ({})",
                r.container_id, r.ifname, r.host_veth
            );
        }
    }
    sweep_nft(&conf.network, &valid)?;

    if let Some(ipam) = Ipam::of(req, &conf) {
        ipam.gc()?;
    }
    Ok(())
}

/// Parses an element comment `berth:<network>:<container>:<ifname>`.
fn owner(comment: &str, network: &str) -> Option<(String, String)> {
    let rest = comment
        .strip_prefix("berth:")?
        .strip_prefix(network)?
        .strip_prefix(':')?;
    let (c, i) = rest.rsplit_once(':')?;
    Some((c.to_string(), i.to_string()))
}

/// Removes NAT and spoof-check elements of this network whose attachment is
/// not valid, even if no record knew about them (a crash between the kernel
/// change and the record update, or a record store that was lost). One
/// transaction for all of them.
fn sweep_nft(network: &str, valid: &HashSet<(String, String)>) -> Result<(), BridgeError> {
    let stale = |comment: &str| owner(comment, network).is_some_and(|o| !valid.contains(&o));
    let mut nft = Nft::new();
    let mut batch = Batch::new();
    masq::nft_sweep(&mut nft, &mut batch, stale)?;
    spoofchk::sweep(&mut nft, &mut batch, stale)?;
    nft.commit(&batch)
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn owner_parses_comments_of_this_network_only() {
        assert_eq!(
            owner("berth:net:abc:eth0", "net"),
            Some(("abc".into(), "eth0".into()))
        );
        assert_eq!(owner("berth:net2:abc:eth0", "net"), None);
        assert_eq!(owner("other", "net"), None);
    }
}
