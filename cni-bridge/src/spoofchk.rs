//! MAC spoof check: frames entering the bridge from a pod's port must carry
//! the pod's MAC. One shared nftables table in the bridge family; each
//! attachment contributes two set elements (its port, and port . MAC).

use host_net::netlink::parse_mac;
use nftables_netlink::{
    datatype, rule_matches, Expr, Family, Hook, MetaKey, PayloadBase, SetSpec, Verdict,
    HOOK_PREROUTING, REG_1, REG_2,
};

use crate::error::BridgeError;
use crate::nft::{self, ifname_key, ifname_of_key, Batch, Element, Nft};

pub const TABLE: &str = "berth-spoofchk";
const FAMILY: Family = Family::Bridge;
const PREROUTING: &str = "prerouting";

/// `add table bridge berth-spoofchk` with its sets
/// `ports { type ifname; }` and `allowed { type ifname . ether_addr; }`.
fn header(b: &mut Batch) {
    b.add_table(FAMILY, TABLE);
    b.add_set(&SetSpec {
        family: FAMILY,
        table: TABLE,
        name: "ports",
        key_type: datatype::IFNAME,
        fields: &[16],
        interval: false,
        key_big_endian: false,
        comment: Some("pod ports under MAC spoof check"),
    });
    b.add_set(&SetSpec {
        family: FAMILY,
        table: TABLE,
        name: "allowed",
        key_type: datatype::concat(&[datatype::IFNAME, datatype::ETHERADDR]),
        fields: &[16, 6],
        interval: false,
        key_big_endian: false,
        comment: Some("pod port . the only source MAC it may send"),
    });
}

/// `iifname @ports iifname . ether saddr != @allowed drop`
fn rule() -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::IifName,
            dreg: REG_1,
        },
        Expr::Lookup {
            sreg: REG_1,
            set: "ports".into(),
            invert: false,
        },
        Expr::Meta {
            key: MetaKey::IifName,
            dreg: REG_1,
        },
        Expr::Payload {
            base: PayloadBase::LinkLayer,
            offset: 6,
            len: 6,
            dreg: REG_2,
        },
        Expr::Lookup {
            sreg: REG_1,
            set: "allowed".into(),
            invert: true,
        },
        Expr::Verdict(Verdict::Drop),
    ]
}

fn port_key(port: &str) -> Result<Vec<u8>, BridgeError> {
    Ok(ifname_key(port)?.to_vec())
}

/// The `allowed` key `"PORT" . MAC`: the name, then the MAC padded to 8.
fn allowed_key(port: &str, mac: &str) -> Result<Vec<u8>, BridgeError> {
    let m = parse_mac(mac)
        .ok_or_else(|| BridgeError::Nat(format!("MAC address {mac:?} is not valid")))?;
    let mut k = port_key(port)?;
    k.extend_from_slice(&m);
    k.extend_from_slice(&[0, 0]);
    Ok(k)
}

/// Whether the chain holds exactly the rule [`add`] makes.
pub fn rule_in_place(nft: &mut Nft) -> Result<bool, BridgeError> {
    let Some(rules) = nft.sock()?.dump_rules(FAMILY, TABLE, PREROUTING)? else {
        return Ok(false);
    };
    Ok(rules.len() == 1 && rule_matches(&rule(), &rules[0]))
}

/// Adds to `b` the table and its sets, unless `rule_in_place` its chain and
/// rule (flushed and re-added, as `masq::nft_add` does), and the two
/// elements of `port` with `mac`.
pub fn add(
    b: &mut Batch,
    port: &str,
    mac: &str,
    comment: &str,
    rule_in_place: bool,
) -> Result<(), BridgeError> {
    let c = nft::comment(comment);
    let ports = [Element::new(port_key(port)?).with_comment(Some(&c))];
    let allowed = [Element::new(allowed_key(port, mac)?).with_comment(Some(&c))];
    header(b);
    if !rule_in_place {
        chain_and_rule(b);
    }
    b.add_elements(FAMILY, TABLE, "ports", &ports);
    b.add_elements(FAMILY, TABLE, "allowed", &allowed);
    Ok(())
}

fn chain_and_rule(b: &mut Batch) {
    b.add_chain(
        FAMILY,
        TABLE,
        PREROUTING,
        &Hook {
            chain_type: "filter",
            hooknum: HOOK_PREROUTING,
            priority: -300,
            accept: true,
        },
    );
    b.flush_chain(FAMILY, TABLE, PREROUTING);
    b.add_rule(FAMILY, TABLE, PREROUTING, &rule());
}

/// Adds to `b` the removal of the two elements (added, then deleted, so the
/// transaction succeeds whether or not they were there).
pub fn del(b: &mut Batch, port: &str, mac: &str) -> Result<(), BridgeError> {
    let ports = [Element::new(port_key(port)?)];
    let allowed = [Element::new(allowed_key(port, mac)?)];
    header(b);
    b.add_elements(FAMILY, TABLE, "ports", &ports);
    b.add_elements(FAMILY, TABLE, "allowed", &allowed);
    b.del_elements(FAMILY, TABLE, "ports", &ports);
    b.del_elements(FAMILY, TABLE, "allowed", &allowed);
    Ok(())
}

pub fn present(nft: &mut Nft, port: &str, mac: &str) -> Result<bool, BridgeError> {
    let key = allowed_key(port, mac)?;
    Ok(nft
        .sock()?
        .get_element(FAMILY, TABLE, "allowed", &key)?
        .is_some())
}

/// The elements of one of the table's sets (empty if it does not exist).
fn list(nft: &mut Nft, set: &str) -> Result<Vec<Element>, BridgeError> {
    Ok(nft
        .sock()?
        .dump_elements(FAMILY, TABLE, set)?
        .unwrap_or_default())
}

/// Adds to `b` the removal of a port's entries when its MAC is not known.
pub fn del_port(nft: &mut Nft, b: &mut Batch, port: &str) -> Result<(), BridgeError> {
    let allowed: Vec<Element> = list(nft, "allowed")?
        .into_iter()
        .filter(|e| ifname_of_key(&e.key) == port)
        .collect();
    let ports: Vec<Element> = list(nft, "ports")?
        .into_iter()
        .filter(|e| ifname_of_key(&e.key) == port)
        .collect();
    b.del_elements(FAMILY, TABLE, "allowed", &allowed);
    b.del_elements(FAMILY, TABLE, "ports", &ports);
    Ok(())
}

/// Adds to `b` the deletion of every element whose comment `stale` says
/// to remove.
pub fn sweep(
    nft: &mut Nft,
    b: &mut Batch,
    stale: impl Fn(&str) -> bool,
) -> Result<(), BridgeError> {
    for set in ["ports", "allowed"] {
        let gone: Vec<Element> = list(nft, set)?
            .into_iter()
            .filter(|e| e.comment.as_deref().is_some_and(&stale))
            .collect();
        b.del_elements(FAMILY, TABLE, set, &gone);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_batch_is_byte_for_byte_what_nft_sent() {
        let mut b = Batch::new();
        add(
            &mut b,
            "veth123",
            "02:11:22:33:44:55",
            "berth:n:c1:eth0",
            false,
        )
        .expect("batch");
        let want: Vec<String> = include_str!("../testdata/nft-spoofchk-add.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let ours = b.render();
        assert_eq!(ours.len(), want.len(), "{:#?}", b.describe());
        for (i, (o, w)) in ours.iter().zip(&want).enumerate() {
            assert_eq!(o, w, "message {i}");
        }
    }

    #[test]
    fn del_adds_then_deletes_and_rejects_bad_input() {
        let mut b = Batch::new();
        del(&mut b, "veth123", "02:11:22:33:44:55").expect("batch");
        let d = b.describe();
        assert_eq!(
            &d[3..],
            [
                "add element bridge berth-spoofchk ports",
                "add element bridge berth-spoofchk allowed",
                "delete element bridge berth-spoofchk ports",
                "delete element bridge berth-spoofchk allowed",
            ]
        );
        assert!(del(&mut Batch::new(), "veth123", "not-a-mac").is_err());
        assert!(del(
            &mut Batch::new(),
            "a-name-longer-than-15",
            "02:11:22:33:44:55"
        )
        .is_err());
    }
}
