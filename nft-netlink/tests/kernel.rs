//! Against the kernel (root): every call runs on a thread inside a network
//! namespace the test creates and deletes (never the root namespace), and
//! the result is inspected with `nft list` inside the same namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use netns_fixture::{in_netns, is_root, Netns};
use nftables_netlink::*;

const T: &str = "berth-nltest";

fn skip() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

fn v4_sets(b: &mut Batch) {
    b.add_table(Family::Inet, T);
    b.add_set(&SetSpec {
        family: Family::Inet,
        table: T,
        name: "a4",
        key_type: datatype::IPADDR,
        fields: &[4],
        interval: false,
        key_big_endian: true,
        comment: Some("plain"),
    });
    b.add_set(&SetSpec {
        family: Family::Inet,
        table: T,
        name: "r4",
        key_type: datatype::concat(&[datatype::IPADDR, datatype::IPADDR]),
        fields: &[4, 4],
        interval: true,
        key_big_endian: true,
        comment: Some("ranges"),
    });
}

fn nat_rule() -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: MetaKey::NfProto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![2],
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: REG_1,
        },
        Expr::Lookup {
            sreg: REG_1,
            set: "a4".into(),
            invert: false,
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: vec![0xf0, 0, 0, 0],
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Neq,
            data: vec![0xe0, 0, 0, 0],
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: REG_1,
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: REG32_01,
        },
        Expr::Lookup {
            sreg: REG_1,
            set: "r4".into(),
            invert: true,
        },
        Expr::Masq,
    ]
}

#[test]
fn batch_applies_and_reads_back() {
    if skip() {
        return;
    }
    let ns = Netns::create("nlnft");
    in_netns(ns.path(), || {
        let mut s = Socket::new().unwrap();
        let mut b = Batch::new();
        v4_sets(&mut b);
        let hook = Hook {
            chain_type: "nat",
            hooknum: HOOK_POSTROUTING,
            priority: PRIORITY_SRCNAT,
            accept: true,
        };
        b.add_chain(Family::Inet, T, "post", &hook);
        b.flush_chain(Family::Inet, T, "post");
        b.add_rule(Family::Inet, T, "post", &nat_rule());
        b.add_elements(
            Family::Inet,
            T,
            "a4",
            &[Element::new(vec![10, 1, 0, 5]).with_comment(Some("pod-a"))],
        );
        b.add_elements(
            Family::Inet,
            T,
            "r4",
            &[Element::range(
                vec![10, 1, 0, 5, 10, 1, 0, 0],
                vec![10, 1, 0, 5, 10, 1, 0, 255],
            )
            .with_comment(Some("pod-a"))],
        );
        s.commit(&b).unwrap();
        // Again: idempotent, and still one rule (flushed and re-added).
        s.commit(&b).unwrap();

        // The rule reads back as the expressions that made it.
        let rules = s
            .dump_rules(Family::Inet, T, "post")
            .unwrap()
            .expect("chain");
        assert_eq!(rules.len(), 1, "flushed and re-added: one rule");
        assert!(rule_matches(&nat_rule(), &rules[0]), "{:#?}", rules[0]);
        let mut other = nat_rule();
        other.pop();
        assert!(!rule_matches(&other, &rules[0]));
        let mut other = nat_rule();
        other[1] = Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![10],
        };
        assert!(!rule_matches(&other, &rules[0]));
        // A dump filtered on a missing chain or table is empty (or refused).
        for (t, c) in [(T, "nope"), ("no-table", "post")] {
            let r = s.dump_rules(Family::Inet, t, c).unwrap();
            assert!(r.as_ref().is_none_or(|r| r.is_empty()), "{t} {c}: {r:?}");
        }

        let got = s
            .get_element(Family::Inet, T, "a4", &[10, 1, 0, 5])
            .unwrap()
            .expect("element");
        assert_eq!(got.key, vec![10, 1, 0, 5]);
        assert_eq!(
            s.get_element(Family::Inet, T, "a4", &[10, 1, 0, 6])
                .unwrap(),
            None
        );
        let r = s
            .dump_elements(Family::Inet, T, "r4")
            .unwrap()
            .expect("set");
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].comment.as_deref(), Some("pod-a"));
        assert_eq!(r[0].key, vec![10, 1, 0, 5, 10, 1, 0, 0]);
        assert_eq!(r[0].key_end, Some(vec![10, 1, 0, 5, 10, 1, 0, 255]));
        assert_eq!(s.dump_elements(Family::Inet, T, "nope").unwrap(), None);
        assert_eq!(
            s.dump_elements(Family::Inet, "no-table", "a4").unwrap(),
            None
        );

        // Deleting by the dumped keys empties the sets.
        let mut d = Batch::new();
        d.del_elements(Family::Inet, T, "r4", &r);
        d.del_elements(Family::Inet, T, "a4", &[got]);
        s.commit(&d).unwrap();
        assert_eq!(
            s.dump_elements(Family::Inet, T, "r4").unwrap(),
            Some(vec![])
        );
    })
    .unwrap();
    let text = ns.exec(&["nft", "list", "table", "inet", T]);
    for want in [
        "type ipv4_addr . ipv4_addr",
        "flags interval",
        "comment \"ranges\"",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr @a4 ip daddr != 224.0.0.0/4 ip saddr . ip daddr != @r4 masquerade",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(text.matches("masquerade").count(), 1, "{text}");
}

#[test]
fn failed_batch_applies_nothing_and_names_the_message() {
    if skip() {
        return;
    }
    let ns = Netns::create("nlnft");
    in_netns(ns.path(), || {
        let mut s = Socket::new().unwrap();
        let mut b = Batch::new();
        v4_sets(&mut b);
        b.add_elements(Family::Inet, T, "a4", &[Element::new(vec![10, 0, 0, 1])]);
        b.del_elements(Family::Inet, T, "a4", &[Element::new(vec![10, 0, 0, 2])]);
        let e = s.commit(&b).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
        assert!(
            e.to_string()
                .contains("delete element inet berth-nltest a4"),
            "{e}"
        );
        // Nothing of the failed transaction is there, not even the table.
        assert_eq!(
            s.get_element(Family::Inet, T, "a4", &[10, 0, 0, 1])
                .unwrap(),
            None
        );
        assert_eq!(s.dump_elements(Family::Inet, T, "a4").unwrap(), None);

        // Add then delete in one transaction: fine whether or not present.
        let mut ok = Batch::new();
        v4_sets(&mut ok);
        let e2 = [Element::new(vec![10, 0, 0, 2])];
        ok.add_elements(Family::Inet, T, "a4", &e2);
        ok.del_elements(Family::Inet, T, "a4", &e2);
        s.commit(&ok).unwrap();
        s.commit(&ok).unwrap();
        assert_eq!(
            s.dump_elements(Family::Inet, T, "a4").unwrap(),
            Some(vec![])
        );
    })
    .unwrap();
}

/// A transaction with thousands of elements (a GC after many pods): split into messages, sent
/// as one datagram, dumped back in several parts with their comments, deleted in one go.
#[test]
fn thousands_of_elements_in_one_transaction() {
    if skip() {
        return;
    }
    let ns = Netns::create("nlnft");
    in_netns(ns.path(), || {
        let mut s = Socket::new().unwrap();
        let els: Vec<Element> = (0..6000u32)
            .map(|i| {
                let mut a = vec![10];
                a.extend_from_slice(&i.to_be_bytes()[1..]);
                let mut end = a.clone();
                end.extend_from_slice(&[10, 0, 0, 255]);
                a.extend_from_slice(&[10, 0, 0, 0]);
                Element::range(a, end).with_comment(Some("berth:a-network:a-container-id:eth0"))
            })
            .collect();
        let mut b = Batch::new();
        v4_sets(&mut b);
        b.add_elements(Family::Inet, T, "r4", &els);
        assert!(b.len() > 6, "{} messages", b.len());
        s.commit(&b).unwrap();
        let got = s
            .dump_elements(Family::Inet, T, "r4")
            .unwrap()
            .expect("set");
        assert_eq!(got.len(), els.len());
        assert!(got
            .iter()
            .all(|e| e.comment.as_deref() == Some("berth:a-network:a-container-id:eth0")));
        let mut d = Batch::new();
        d.del_elements(Family::Inet, T, "r4", &got);
        s.commit(&d).unwrap();
        assert_eq!(
            s.dump_elements(Family::Inet, T, "r4").unwrap(),
            Some(vec![])
        );
    })
    .unwrap();
}

#[test]
fn bridge_family_concat_of_ifname_and_mac() {
    if skip() {
        return;
    }
    let ns = Netns::create("nlnft");
    let mut key = b"veth1\0\0\0\0\0\0\0\0\0\0\0".to_vec();
    key.extend_from_slice(&[2, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0]);
    in_netns(ns.path(), || {
        let mut s = Socket::new().unwrap();
        let mut b = Batch::new();
        b.add_table(Family::Bridge, T);
        b.add_set(&SetSpec {
            family: Family::Bridge,
            table: T,
            name: "allowed",
            key_type: datatype::concat(&[datatype::IFNAME, datatype::ETHERADDR]),
            fields: &[16, 6],
            interval: false,
            key_big_endian: false,
            comment: None,
        });
        b.add_elements(
            Family::Bridge,
            T,
            "allowed",
            &[Element::new(key.clone()).with_comment(Some("x"))],
        );
        s.commit(&b).unwrap();
        let e = s
            .get_element(Family::Bridge, T, "allowed", &key)
            .unwrap()
            .expect("element");
        assert_eq!(e.comment.as_deref(), Some("x"));
    })
    .unwrap();
    let text = ns.exec(&["nft", "list", "table", "bridge", T]);
    assert!(
        text.contains("elements = { \"veth1\" . 02:11:22:33:44:55 comment \"x\" }"),
        "{text}"
    );
}

/// Not a check: how long the kernel takes to commit batches of each shape
/// (`cargo test --release -p nftables-netlink --test kernel -- --ignored --nocapture`).
#[test]
#[ignore]
fn commit_timing() {
    if skip() {
        return;
    }
    let ns = Netns::create("nlnft");
    in_netns(ns.path(), || {
        let mut s = Socket::new().unwrap();
        let hook = Hook {
            chain_type: "nat",
            hooknum: HOOK_POSTROUTING,
            priority: PRIORITY_SRCNAT,
            accept: true,
        };
        let el = |i: u8| Element::new(vec![10, 1, 0, i]).with_comment(Some("c"));
        let full = |i: u8| {
            let mut b = Batch::new();
            v4_sets(&mut b);
            b.add_chain(Family::Inet, T, "post", &hook);
            b.flush_chain(Family::Inet, T, "post");
            b.add_rule(Family::Inet, T, "post", &nat_rule());
            b.add_elements(Family::Inet, T, "a4", &[el(i)]);
            b
        };
        let sets_only = |i: u8| {
            let mut b = Batch::new();
            v4_sets(&mut b);
            b.add_elements(Family::Inet, T, "a4", &[el(i)]);
            b
        };
        let elems_only = |i: u8| {
            let mut b = Batch::new();
            b.add_elements(Family::Inet, T, "a4", &[el(i)]);
            b
        };
        let with_chain = |i: u8| {
            let mut b = Batch::new();
            v4_sets(&mut b);
            b.add_chain(Family::Inet, T, "post", &hook);
            b.add_elements(Family::Inet, T, "a4", &[el(i)]);
            b
        };
        let add_del = |i: u8| {
            let mut b = Batch::new();
            v4_sets(&mut b);
            b.add_elements(Family::Inet, T, "a4", &[el(i)]);
            b.del_elements(Family::Inet, T, "a4", &[el(i)]);
            b
        };
        s.commit(&full(1)).unwrap();
        type Shape<'a> = (&'a str, &'a dyn Fn(u8) -> Batch);
        let shapes: [Shape; 5] = [
            ("table+sets+chain+flush+rule+element", &full),
            ("table+sets+chain+element", &with_chain),
            ("table+sets+element", &sets_only),
            ("element", &elems_only),
            ("table+sets+element added and deleted", &add_del),
        ];
        for (name, f) in shapes {
            let mut t: Vec<u128> = (0..40u8)
                .map(|i| {
                    let b = f(i + 2);
                    let start = std::time::Instant::now();
                    s.commit(&b).unwrap();
                    start.elapsed().as_micros()
                })
                .collect();
            t.sort();
            // The same on a socket of its own, closed afterwards: close waits for the kernel
            // to free what the transaction removed (an RCU grace period).
            let mut c: Vec<u128> = (0..20u8)
                .map(|i| {
                    let b = f(i + 100);
                    let start = std::time::Instant::now();
                    let mut own = Socket::new().unwrap();
                    own.commit(&b).unwrap();
                    drop(own);
                    start.elapsed().as_micros()
                })
                .collect();
            c.sort();
            println!(
                "{name}: commit median {} us; open+commit+close median {} us",
                t[t.len() / 2],
                c[c.len() / 2]
            );
        }
    })
    .unwrap();
}
