//! Properties of the IPv6 /80 pool, alone and dual-stack through the store: no address is ever
//! held twice, a released address is not handed out again before its cooldown ends, every
//! attachment holds one address of each family or none, and the pool recovered from the
//! journal (snapshot + log) equals the live one after every step.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use prefixd::core::config::Families;
use prefixd::core::journal::MemoryJournal;
use prefixd::core::{Change, Datastore, PodInfo, PodKey, Prefix80, Store, StoreError, UnixMillis};
use proptest::prelude::*;

const COOLDOWN: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
enum Op {
    Allocate(u8),
    Release(u8),
    Tick(u16),
    /// The next journal write fails.
    FailNext,
    /// Log full: compaction on the next write.
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..24).prop_map(Op::Allocate),
        4 => (0u8..24).prop_map(Op::Release),
        2 => (0u16..400).prop_map(Op::Tick),
        1 => Just(Op::FailNext),
        1 => Just(Op::Compact),
    ]
}

fn key(i: u8) -> PodKey {
    PodKey::new("net", format!("c{i}"), "eth0").unwrap()
}

fn prefix80() -> Prefix80 {
    "2600:1f14:1:200:7::/80".parse().unwrap()
}

fn store(families: Families) -> Store<MemoryJournal> {
    let mut s = Store::new(
        Datastore::new(COOLDOWN),
        MemoryJournal::with_capacity(2_000),
    );
    s.set_families(families);
    let eni: prefixd::core::EniId = "eni-1".parse().unwrap();
    for c in [
        Change::AddEni {
            id: eni.clone(),
            device_index: 0,
            primary: true,
        },
        Change::AddPrefix {
            eni: eni.clone(),
            prefix: "10.0.0.16/28".parse().unwrap(),
        },
        Change::AddPrefix {
            eni,
            prefix: "10.0.0.32/28".parse().unwrap(),
        },
        Change::SetPrefix6 {
            prefix: prefix80(),
            force: false,
        },
    ] {
        s.apply(c, UnixMillis(0)).unwrap();
    }
    s
}

/// What the test knows the pool must do.
#[derive(Default)]
struct Model {
    held4: HashMap<PodKey, Ipv4Addr>,
    held6: HashMap<PodKey, Ipv6Addr>,
    cooling6: HashMap<Ipv6Addr, UnixMillis>,
}

fn run(families: Families, ops: Vec<Op>) {
    let mut s = store(families);
    let mut m = Model::default();
    let mut now = UnixMillis(1);
    for op in ops {
        match op {
            Op::Allocate(i) => match s.allocate(key(i), PodInfo::default(), now) {
                Ok(a) => {
                    assert_eq!(a.v4.is_some(), families.ipv4);
                    assert_eq!(a.v6.is_some(), families.ipv6);
                    if let Some(v6) = a.v6 {
                        assert!(prefix80().index_of(v6).is_some_and(|i| i > 0));
                        match m.held6.get(&key(i)) {
                            Some(old) => assert_eq!(*old, v6, "idempotent"),
                            None => {
                                assert!(
                                    !m.held6.values().any(|x| *x == v6),
                                    "{v6} given to two keys"
                                );
                                if let Some(until) = m.cooling6.get(&v6) {
                                    assert!(now >= *until, "{v6} reused before its cooldown");
                                }
                                m.held6.insert(key(i), v6);
                            }
                        }
                    }
                    if let Some(v4) = a.v4 {
                        if let Some(old) = m.held4.get(&key(i)) {
                            assert_eq!(*old, v4, "idempotent");
                        }
                        assert!(!m.held4.iter().any(|(k, x)| *x == v4 && *k != key(i)));
                        m.held4.insert(key(i), v4);
                    }
                }
                // The IPv4 pool is small: the IPv6 half must not stay behind.
                Err(StoreError::Datastore(_)) => {
                    assert!(!m.held4.contains_key(&key(i)));
                    assert!(s.datastore().v6().get(&key(i)).is_none(), "half an ADD");
                }
                Err(StoreError::Checkpoint(_)) => {}
                Err(e) => panic!("allocate: {e}"),
            },
            Op::Release(i) => match s.release(&key(i), now) {
                Ok(r) => {
                    assert_eq!(r.v4.map(|a| a.address), m.held4.remove(&key(i)));
                    let v6 = r.v6.map(|a| a.address);
                    assert_eq!(v6, m.held6.remove(&key(i)));
                    if let Some(v6) = v6 {
                        m.cooling6.insert(v6, now.plus(COOLDOWN));
                    }
                }
                Err(StoreError::Datastore(_)) => {
                    assert!(!m.held4.contains_key(&key(i)) && !m.held6.contains_key(&key(i)));
                }
                Err(StoreError::Checkpoint(_)) => {}
                Err(e) => panic!("release: {e}"),
            },
            Op::Tick(ms) => now = UnixMillis(now.0 + u64::from(ms)),
            Op::FailNext => s.journal_mut().fail_next = 1,
            Op::Compact => s.journal_mut().capacity = 600,
        }
        let ds = s.datastore();
        ds.check_invariants().unwrap();
        // Both or neither, for every key.
        if families.ipv4 && families.ipv6 {
            for (k, _) in ds.v6().allocations() {
                assert!(ds.get(k).is_some(), "{k} holds only IPv6");
            }
            for (k, _) in ds.allocations() {
                assert!(ds.v6().get(k).is_some(), "{k} holds only IPv4");
            }
        }
        // Cooldowns that are over may be expired in one and not yet in the other.
        let mut back = s.journal().recover(COOLDOWN).unwrap().ds;
        let mut live = ds.clone();
        back.expire(now);
        live.expire(now);
        assert_eq!(back, live, "the recovered pool differs from the live one");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn ipv6_only(ops in prop::collection::vec(op(), 1..120)) {
        run(Families::V6, ops);
    }

    #[test]
    fn dual_stack(ops in prop::collection::vec(op(), 1..120)) {
        run(Families::DUAL, ops);
    }
}

/// Negative control: the checks above see a pool that hands one address out twice.
#[test]
fn a_duplicate_is_seen() {
    let mut s = store(Families::V6);
    let a = s
        .allocate(key(1), PodInfo::default(), UnixMillis(1))
        .unwrap()
        .v6
        .unwrap();
    let b = s
        .allocate(key(2), PodInfo::default(), UnixMillis(1))
        .unwrap()
        .v6
        .unwrap();
    assert_ne!(a, b);
    // A snapshot edited so that two keys hold one address is refused on recovery.
    s.flush().unwrap();
    let text = String::from_utf8(s.journal().snapshot.clone()).unwrap();
    let forged = text.replace(&b.to_string(), &a.to_string());
    assert_ne!(forged, text);
    let j = MemoryJournal::resume(forged.into_bytes(), s.journal().log.clone(), 2_000);
    let e = j.recover(COOLDOWN).unwrap_err();
    assert!(e.to_string().contains("held by"), "{e}");
}
