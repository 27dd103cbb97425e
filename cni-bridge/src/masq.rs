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

use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;
use nftables_netlink::{
    datatype, rule_matches, CmpOp, Expr, Family, Hook, MetaKey, PayloadBase, SetSpec,
    HOOK_POSTROUTING, PRIORITY_SRCNAT, REG32_01, REG_1, REG_2,
};

use crate::error::BridgeError;
use crate::nft::{self, Batch, Element, Nft};

pub const NFT_TABLE: &str = "berth-nat";
const FAMILY: Family = Family::Inet;
const POSTROUTING: &str = "postrouting";
const MASQ_COMMENT: &str = "pod addresses masqueraded by berth";
const LOCAL_COMMENT: &str = "pod address . its own subnet (not masqueraded)";

/// `add table inet berth-nat` and its four sets:
/// masq4 `{ type ipv4_addr; }`, local4 `{ type ipv4_addr . ipv4_addr; flags interval; }`,
/// masq6 and local6 the same for IPv6, each with its comment.
fn nft_table_header(b: &mut Batch) {
    b.add_table(FAMILY, NFT_TABLE);
    for (name, ty, len, concat) in [
        ("masq4", datatype::IPADDR, 4, false),
        ("local4", datatype::IPADDR, 4, true),
        ("masq6", datatype::IP6ADDR, 16, false),
        ("local6", datatype::IP6ADDR, 16, true),
    ] {
        let fields = [len, len];
        b.add_set(&SetSpec {
            family: FAMILY,
            table: NFT_TABLE,
            name,
            key_type: if concat {
                datatype::concat(&[ty, ty])
            } else {
                ty
            },
            fields: if concat { &fields[..] } else { &fields[..1] },
            interval: concat,
            key_big_endian: true,
            comment: Some(if concat { LOCAL_COMMENT } else { MASQ_COMMENT }),
        });
    }
}

/// `ip saddr @masq4 ip daddr != 224.0.0.0/4 ip saddr . ip daddr != @local4 masquerade`
/// and its IPv6 twin (`ff00::/8`, `@masq6`, `@local6`), with nft's
/// bytecode: the implicit `meta nfproto` of the inet family first.
fn masq_rule(v4: bool) -> Vec<Expr> {
    let (proto, saddr, daddr, alen, sets) = if v4 {
        (libc::NFPROTO_IPV4 as u8, 12, 16, 4, ("masq4", "local4"))
    } else {
        (libc::NFPROTO_IPV6 as u8, 8, 24, 16, ("masq6", "local6"))
    };
    let load = |offset, len, dreg| Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len,
        dreg,
    };
    let mut e = vec![
        Expr::Meta {
            key: MetaKey::NfProto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![proto],
        },
        load(saddr, alen, REG_1),
        Expr::Lookup {
            sreg: REG_1,
            set: sets.0.into(),
            invert: false,
        },
    ];
    if v4 {
        // daddr != 224.0.0.0/4: not byte-aligned, so a mask.
        e.push(load(daddr, 4, REG_1));
        e.extend(Expr::prefix_match(REG_1, &[224, 0, 0, 0], 4, CmpOp::Neq));
    } else {
        // daddr != ff00::/8: its first byte only.
        e.push(load(daddr, 1, REG_1));
        e.push(Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Neq,
            data: vec![0xff],
        });
    }
    e.push(load(saddr, alen, REG_1));
    e.push(load(daddr, alen, if v4 { REG32_01 } else { REG_2 }));
    e.push(Expr::Lookup {
        sreg: REG_1,
        set: sets.1.into(),
        invert: true,
    });
    e.push(Expr::Masq);
    e
}

/// The destinations not masqueraded for pod address `a`: `exclude` of its
/// family if any, else the pod's own subnet.
fn local_nets(a: &IpNetwork, exclude: &[IpNetwork]) -> Vec<IpNetwork> {
    let mine: Vec<IpNetwork> = exclude
        .iter()
        .filter(|n| n.is_ipv4() == a.is_ipv4())
        .copied()
        .collect();
    if mine.is_empty() {
        IpNetwork::new(a.network(), a.prefix())
            .map(|n| vec![n])
            .unwrap_or_default()
    } else {
        mine
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The set elements of `addrs`, by set: `masqN { ADDR }` and
/// `localN { ADDR . NET }` (a range from the network's first to its last
/// address).
fn nft_elements(
    addrs: &[IpNetwork],
    exclude: &[IpNetwork],
    comment: Option<&str>,
) -> Vec<(&'static str, Vec<Element>)> {
    let c = comment.map(nft::comment);
    let mut sets: Vec<(&'static str, Vec<Element>)> = ["masq4", "local4", "masq6", "local6"]
        .into_iter()
        .map(|s| (s, Vec::new()))
        .collect();
    for a in addrs {
        let base = if a.is_ipv4() { 0 } else { 2 };
        let ip = ip_bytes(a.ip());
        sets[base]
            .1
            .push(Element::new(ip.clone()).with_comment(c.as_deref()));
        for net in local_nets(a, exclude) {
            let mut start = ip.clone();
            start.extend(ip_bytes(net.network()));
            let mut end = ip.clone();
            end.extend(ip_bytes(net.broadcast_or_last()));
            sets[base + 1]
                .1
                .push(Element::range(start, end).with_comment(c.as_deref()));
        }
    }
    sets.retain(|(_, e)| !e.is_empty());
    sets
}

trait LastAddr {
    fn broadcast_or_last(&self) -> IpAddr;
}

impl LastAddr for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                IpAddr::V6((u128::from(n.network()) | host).into())
            }
        }
    }
}

/// Whether the chain holds exactly the two rules, as [`nft_add`] makes
/// them (false when the table or the chain does not exist).
pub fn nft_rules_in_place(nft: &mut Nft) -> Result<bool, BridgeError> {
    let Some(rules) = nft.sock()?.dump_rules(FAMILY, NFT_TABLE, POSTROUTING)? else {
        return Ok(false);
    };
    Ok(rules.len() == 2
        && rule_matches(&masq_rule(true), &rules[0])
        && rule_matches(&masq_rule(false), &rules[1]))
}

/// Adds to `b` the (re)assertion of the table and its sets, and the elements of `addrs` with
/// `comment`. Unless `rules_in_place` (see [`nft_rules_in_place`]) also the chain and its two
/// rules: the chain is flushed and the rules added again in the same transaction, so a deleted
/// or changed rule repairs itself and concurrent ADDs cannot duplicate rules. When the rules are
/// in place they are left alone: a transaction that removes rules makes the kernel free them
/// after an RCU grace period, which the plugin would wait for when it closes its socket.
pub fn nft_add(
    b: &mut Batch,
    addrs: &[IpNetwork],
    exclude: &[IpNetwork],
    comment: &str,
    rules_in_place: bool,
) {
    nft_table_header(b);
    if !rules_in_place {
        nft_rules(b);
    }
    for (set, els) in nft_elements(addrs, exclude, Some(comment)) {
        b.add_elements(FAMILY, NFT_TABLE, set, &els);
    }
}

/// The base chain, flushed, and its two rules.
fn nft_rules(b: &mut Batch) {
    b.add_chain(
        FAMILY,
        NFT_TABLE,
        POSTROUTING,
        &Hook {
            chain_type: "nat",
            hooknum: HOOK_POSTROUTING,
            priority: PRIORITY_SRCNAT,
            accept: true,
        },
    );
    b.flush_chain(FAMILY, NFT_TABLE, POSTROUTING);
    b.add_rule(FAMILY, NFT_TABLE, POSTROUTING, &masq_rule(true));
    b.add_rule(FAMILY, NFT_TABLE, POSTROUTING, &masq_rule(false));
}

/// Adds to `b` the removal of `addrs`' elements; the transaction succeeds
/// whether or not they were there (each element is added, then deleted)
/// and never touches the rules.
pub fn nft_del(b: &mut Batch, addrs: &[IpNetwork], exclude: &[IpNetwork]) {
    if addrs.is_empty() {
        return;
    }
    nft_table_header(b);
    let els = nft_elements(addrs, exclude, None);
    for (set, e) in &els {
        b.add_elements(FAMILY, NFT_TABLE, set, e);
    }
    for (set, e) in &els {
        b.del_elements(FAMILY, NFT_TABLE, set, e);
    }
}

/// Whether the masquerade for `addr` is in place (nftables backend).
pub fn nft_present(nft: &mut Nft, addr: &IpNetwork) -> Result<bool, BridgeError> {
    let set = if addr.is_ipv4() { "masq4" } else { "masq6" };
    Ok(nft
        .sock()?
        .get_element(FAMILY, NFT_TABLE, set, &ip_bytes(addr.ip()))?
        .is_some())
}

/// The sets of the NAT table, for GC.
pub const NFT_SETS: [&str; 4] = ["masq4", "local4", "masq6", "local6"];

/// Adds to `b` the deletion of every element of the NAT table whose
/// comment `stale` says to remove.
pub fn nft_sweep(
    nft: &mut Nft,
    b: &mut Batch,
    stale: impl Fn(&str) -> bool,
) -> Result<(), BridgeError> {
    for set in NFT_SETS {
        let Some(els) = nft.sock()?.dump_elements(FAMILY, NFT_TABLE, set)? else {
            continue;
        };
        let gone: Vec<Element> = els
            .into_iter()
            .filter(|e| e.comment.as_deref().is_some_and(&stale))
            .collect();
        b.del_elements(FAMILY, NFT_TABLE, set, &gone);
    }
    Ok(())
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
        let nets: Vec<String> = local_nets(a, exclude)
            .iter()
            .map(|n| format!("{}/{}", n.network(), n.prefix()))
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNetwork> {
        v.iter().map(|s| s.parse().expect("net")).collect()
    }

    /// The messages nft sent for the old `nft -f` script, from testdata.
    pub(crate) fn reference(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn add_batch_is_byte_for_byte_what_nft_sent() {
        let mut b = Batch::new();
        nft_add(
            &mut b,
            &nets(&["10.1.0.5/24", "fd00::5/64"]),
            &[],
            "berth:n:c1:eth0",
            false,
        );
        let ours: Vec<String> = b
            .render()
            .into_iter()
            .zip(b.describe())
            // The reference script added no masq6 element.
            .filter(|(_, what)| *what != "add element inet berth-nat masq6")
            .map(|(r, _)| r)
            .collect();
        let want = reference(include_str!("../testdata/nft-masq-add.txt"));
        assert_eq!(ours.len(), want.len(), "{:#?}", b.describe());
        for (i, (o, w)) in ours.iter().zip(&want).enumerate() {
            assert_eq!(o, w, "message {i}");
        }
    }

    #[test]
    fn add_asserts_rules_once_and_adds_both_sets() {
        let mut b = Batch::new();
        nft_add(
            &mut b,
            &nets(&["10.1.0.5/24", "fd00::5/64"]),
            &[],
            "c",
            false,
        );
        let d = b.describe();
        assert_eq!(d.iter().filter(|w| w.starts_with("flush chain")).count(), 1);
        assert_eq!(d.iter().filter(|w| w.starts_with("add rule")).count(), 2);
        for set in NFT_SETS {
            assert!(
                d.contains(&format!("add element inet berth-nat {set}").as_str()),
                "{d:?}"
            );
        }
    }

    #[test]
    fn rules_in_place_are_left_alone() {
        let mut b = Batch::new();
        nft_add(&mut b, &nets(&["10.1.0.5/24"]), &[], "c", true);
        let d = b.describe();
        assert!(
            !d.iter().any(|w| w.contains("chain") || w.contains("rule")),
            "{d:?}"
        );
        assert_eq!(d[0], "add table inet berth-nat");
        assert!(d.contains(&"add element inet berth-nat masq4"));
    }

    #[test]
    fn del_adds_then_deletes_each_element_and_leaves_rules() {
        let mut b = Batch::new();
        nft_del(&mut b, &nets(&["10.1.0.5/24"]), &[]);
        let d = b.describe();
        let add = d
            .iter()
            .position(|w| *w == "add element inet berth-nat masq4")
            .expect("add");
        let del = d
            .iter()
            .position(|w| *w == "delete element inet berth-nat masq4")
            .expect("del");
        assert!(add < del);
        assert!(d.contains(&"delete element inet berth-nat local4"));
        assert!(
            !d.iter().any(|w| w.contains("chain") || w.contains("rule")),
            "DEL must not touch the rules: {d:?}"
        );
        let mut empty = Batch::new();
        nft_del(&mut empty, &[], &[]);
        assert!(empty.is_empty());
    }

    #[test]
    fn exclude_replaces_the_pod_subnet() {
        let els = nft_elements(
            &nets(&["10.244.3.5/24"]),
            &nets(&["10.244.0.0/16", "fd00::/56"]),
            None,
        );
        let local = &els.iter().find(|(s, _)| *s == "local4").expect("local4").1;
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].key, vec![10, 244, 3, 5, 10, 244, 0, 0]);
        assert_eq!(
            local[0].key_end,
            Some(vec![10, 244, 3, 5, 10, 244, 255, 255])
        );
    }

    #[test]
    fn ipv6_ranges_end_at_the_last_address() {
        let els = nft_elements(&nets(&["fd00::5/64"]), &[], Some("c"));
        let local = &els.iter().find(|(s, _)| *s == "local6").expect("local6").1;
        let end = local[0].key_end.as_ref().expect("end");
        assert_eq!(&end[16..24], &[0xfd, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&end[24..], &[0xff; 8]);
        assert_eq!(local[0].comment.as_deref(), Some("c"));
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
