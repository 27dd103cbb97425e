//! IP masquerade for pod addresses, leak-free by construction.
//!
//! nftables backend: one shared table `inet berth-nat` whose two rules
//! masquerade traffic from any address in the `masq4`/`masq6` sets unless it
//! goes to multicast or to the pod's own subnet (`local4`/`local6`, keyed by
//! pod address . subnet). An attachment adds its set elements and DEL
//! removes exactly those, so there is nothing per pod to leak but a set
//! element, and removing one never depends on the pod's netns still existing.
//! The table definition is re-asserted in every ADD transaction, so a
//! deleted rule repairs itself and concurrent ADDs cannot duplicate rules.
//!
//! iptables backend (for hosts without nft): the reference plugin's layout,
//! a per-attachment chain in the nat table jumped to from POSTROUTING.

use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use crate::config::MasqBackend;
use crate::error::BridgeError;
use crate::nft;

pub const NFT_TABLE: &str = "berth-nat";

fn nft_table_header() -> String {
    format!(
        "add table inet {t}
add set inet {t} masq4 {{ type ipv4_addr; comment \"pod addresses masqueraded by berth\"; }}
add set inet {t} local4 {{ type ipv4_addr . ipv4_addr; flags interval; comment \"pod address . its own subnet (not masqueraded)\"; }}
add set inet {t} masq6 {{ type ipv6_addr; comment \"pod addresses masqueraded by berth\"; }}
add set inet {t} local6 {{ type ipv6_addr . ipv6_addr; flags interval; comment \"pod address . its own subnet (not masqueraded)\"; }}
",
        t = NFT_TABLE
    )
}

/// The destinations not masqueraded for pod address `a`: `exclude` of its
/// family if any, else the pod's own subnet.
fn local_nets(a: &IpNetwork, exclude: &[IpNetwork]) -> Vec<String> {
    let mine: Vec<String> = exclude
        .iter()
        .filter(|n| n.is_ipv4() == a.is_ipv4())
        .map(|n| format!("{}/{}", n.network(), n.prefix()))
        .collect();
    if mine.is_empty() {
        vec![format!("{}/{}", a.network(), a.prefix())]
    } else {
        mine
    }
}

fn nft_elements(
    addrs: &[IpNetwork],
    exclude: &[IpNetwork],
    comment: Option<&str>,
) -> Vec<(String, String)> {
    let c = comment
        .map(|c| format!(" comment \"{}\"", nft::comment(c)))
        .unwrap_or_default();
    let mut out = Vec::new();
    for a in addrs {
        let (masq, local) = if a.is_ipv4() {
            ("masq4", "local4")
        } else {
            ("masq6", "local6")
        };
        out.push((masq.to_string(), format!("{}{c}", a.ip())));
        for net in local_nets(a, exclude) {
            out.push((local.to_string(), format!("{} . {net}{c}", a.ip())));
        }
    }
    out
}

/// Script that (re)asserts the table and adds `addrs`.
pub fn nft_add_script(addrs: &[IpNetwork], exclude: &[IpNetwork], comment: &str) -> String {
    let mut s = nft_table_header();
    s.push_str(&format!(
        "add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {t} postrouting
add rule inet {t} postrouting ip saddr @masq4 ip daddr != 224.0.0.0/4 ip saddr . ip daddr != @local4 masquerade
add rule inet {t} postrouting ip6 saddr @masq6 ip6 daddr != ff00::/8 ip6 saddr . ip6 daddr != @local6 masquerade
",
        t = NFT_TABLE
    ));
    for (set, el) in nft_elements(addrs, exclude, Some(comment)) {
        s.push_str(&format!("add element inet {NFT_TABLE} {set} {{ {el} }}\n"));
    }
    s
}

/// Script that removes `addrs`; succeeds whether or not they were there
/// (each element is added, then deleted, in one transaction).
pub fn nft_del_script(addrs: &[IpNetwork], exclude: &[IpNetwork]) -> String {
    let mut s = nft_table_header();
    let els = nft_elements(addrs, exclude, None);
    for (set, el) in &els {
        s.push_str(&format!("add element inet {NFT_TABLE} {set} {{ {el} }}\n"));
    }
    for (set, el) in &els {
        s.push_str(&format!(
            "delete element inet {NFT_TABLE} {set} {{ {el} }}\n"
        ));
    }
    s
}

/// Whether the masquerade for `addr` is in place (nftables backend).
pub fn nft_present(addr: &IpNetwork) -> bool {
    let set = if addr.is_ipv4() { "masq4" } else { "masq6" };
    nft::succeeds(&[
        "get",
        "element",
        "inet",
        NFT_TABLE,
        set,
        &format!("{{ {} }}", addr.ip()),
    ])
}

/// The chain name of the iptables backend for one attachment.
pub fn iptables_chain(network: &str, container: &str, ifname: &str) -> String {
    let h = berth_common::digest(&[network.as_bytes(), container.as_bytes(), ifname.as_bytes()]);
    format!("BERTH-MASQ-{}", &h[..12])
}

fn ipt(v4: bool, args: &[&str]) -> Result<(), String> {
    let bin = if v4 { "iptables" } else { "ip6tables" };
    let out = Command::new(bin)
        .arg("-w")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{bin} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ipt_ok(v4: bool, args: &[&str]) -> bool {
    ipt(v4, args).is_ok()
}

pub fn iptables_add(
    addrs: &[IpNetwork],
    exclude: &[IpNetwork],
    chain: &str,
    comment: &str,
) -> Result<(), BridgeError> {
    let c = nft::comment(comment);
    for a in addrs {
        let v4 = a.is_ipv4();
        let mcast = if v4 { "224.0.0.0/4" } else { "ff00::/8" };
        let nets = local_nets(a, exclude);
        let src = a.ip().to_string();
        if !ipt_ok(v4, &["-t", "nat", "-L", chain, "-n"]) {
            ipt(v4, &["-t", "nat", "-N", chain]).map_err(BridgeError::Nat)?;
        }
        let mut rules: Vec<Vec<&str>> = nets
            .iter()
            .map(|net| {
                vec![
                    "-d",
                    net.as_str(),
                    "-j",
                    "ACCEPT",
                    "-m",
                    "comment",
                    "--comment",
                    c.as_str(),
                ]
            })
            .collect();
        rules.push(vec![
            "!",
            "-d",
            mcast,
            "-j",
            "MASQUERADE",
            "-m",
            "comment",
            "--comment",
            c.as_str(),
        ]);
        for rule in rules {
            let mut check = vec!["-t", "nat", "-C", chain];
            check.extend(&rule);
            if !ipt_ok(v4, &check) {
                let mut add = vec!["-t", "nat", "-A", chain];
                add.extend(&rule);
                ipt(v4, &add).map_err(BridgeError::Nat)?;
            }
        }
        let jump = [
            "-s",
            src.as_str(),
            "-j",
            chain,
            "-m",
            "comment",
            "--comment",
            c.as_str(),
        ];
        let mut check = vec!["-t", "nat", "-C", "POSTROUTING"];
        check.extend(&jump);
        if !ipt_ok(v4, &check) {
            let mut add = vec!["-t", "nat", "-A", "POSTROUTING"];
            add.extend(&jump);
            ipt(v4, &add).map_err(BridgeError::Nat)?;
        }
    }
    Ok(())
}

/// Removes the jump rules and the chain; absent pieces are fine.
pub fn iptables_del(addrs: &[IpNetwork], chain: &str, comment: &str) -> Result<(), BridgeError> {
    let c = nft::comment(comment);
    for v4 in [true, false] {
        for a in addrs.iter().filter(|a| a.is_ipv4() == v4) {
            let src = a.ip().to_string();
            while ipt_ok(
                v4,
                &[
                    "-t",
                    "nat",
                    "-D",
                    "POSTROUTING",
                    "-s",
                    &src,
                    "-j",
                    chain,
                    "-m",
                    "comment",
                    "--comment",
                    &c,
                ],
            ) {}
        }
        if ipt_ok(v4, &["-t", "nat", "-L", chain, "-n"]) {
            ipt(v4, &["-t", "nat", "-F", chain]).map_err(BridgeError::Nat)?;
            ipt(v4, &["-t", "nat", "-X", chain]).map_err(BridgeError::Nat)?;
        }
    }
    Ok(())
}

pub fn iptables_present(addr: &IpNetwork, chain: &str) -> bool {
    ipt_ok(addr.is_ipv4(), &["-t", "nat", "-L", chain, "-n"])
}

/// Sets up masquerade for `addrs` with `backend`.
pub fn add(
    backend: MasqBackend,
    addrs: &[IpNetwork],
    exclude: &[IpNetwork],
    chain: &str,
    comment: &str,
) -> Result<(), BridgeError> {
    match backend {
        MasqBackend::Nftables => nft::run(&nft_add_script(addrs, exclude, comment)),
        MasqBackend::Iptables => iptables_add(addrs, exclude, chain, comment),
    }
}

pub fn del(
    backend: MasqBackend,
    addrs: &[IpNetwork],
    exclude: &[IpNetwork],
    chain: &str,
    comment: &str,
) -> Result<(), BridgeError> {
    match backend {
        MasqBackend::Nftables => {
            if addrs.is_empty() {
                return Ok(());
            }
            nft::run(&nft_del_script(addrs, exclude))
        }
        MasqBackend::Iptables => iptables_del(addrs, chain, comment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_script_asserts_rules_once_and_adds_both_sets() {
        let a: Vec<IpNetwork> = vec![
            "10.1.0.5/24".parse().expect("net"),
            "fd00::5/64".parse().expect("net"),
        ];
        let s = nft_add_script(&a, &[], "berth:n:c1:eth0");
        assert_eq!(s.matches("flush chain").count(), 1);
        assert!(
            s.contains("add element inet berth-nat masq4 { 10.1.0.5 comment \"berth:n:c1:eth0\" }")
        );
        assert!(s.contains("add element inet berth-nat local4 { 10.1.0.5 . 10.1.0.0/24"));
        assert!(s.contains("add element inet berth-nat local6 { fd00::5 . fd00::/64"));
    }

    #[test]
    fn del_script_adds_then_deletes_each_element() {
        let a: Vec<IpNetwork> = vec!["10.1.0.5/24".parse().expect("net")];
        let s = nft_del_script(&a, &[]);
        let add = s.find("add element inet berth-nat masq4").expect("add");
        let del = s.find("delete element inet berth-nat masq4").expect("del");
        assert!(add < del);
        assert!(!s.contains("flush chain"), "DEL must not touch the rules");
    }

    #[test]
    fn exclude_replaces_the_pod_subnet() {
        let a: Vec<IpNetwork> = vec!["10.244.3.5/24".parse().expect("net")];
        let ex: Vec<IpNetwork> = vec![
            "10.244.0.0/16".parse().expect("net"),
            "fd00::/56".parse().expect("net"),
        ];
        let s = nft_add_script(&a, &ex, "c");
        assert!(s.contains("10.244.3.5 . 10.244.0.0/16"));
        assert!(!s.contains("10.244.3.0/24"));
    }

    #[test]
    fn chain_names_fit_iptables() {
        let c = iptables_chain(
            "net",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "eth0",
        );
        assert!(c.len() <= 28, "{c}");
        assert_ne!(c, iptables_chain("net", "other", "eth0"));
    }
}
