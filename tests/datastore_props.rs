//! Property tests over random interleavings of allocate / release / add and remove prefix and
//! secondary address / time passing / failed checkpoint writes / crash and reload:
//! * no address is ever held by two keys, and every held address lies in an attached block or
//!   is stranded (its block was taken back while its pod lives): a prefix removed and added
//!   again never gives a live pod's address to another;
//! * a cooling address is never handed out;
//! * allocate is idempotent, and every acknowledged allocation survives a crash;
//! * a reloaded datastore equals the one before the crash, with the log compacting often;
//! * a crash that tears the log at any byte of its last record recovers the state after every
//!   acknowledged change and nothing else (the torn record is counted), in memory and on disk.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use prefixd::core::journal::{FileJournal, MemoryJournal};
use prefixd::core::{
    Change, Datastore, DatastoreError, EniId, Outcome, PodInfo, PodKey, Prefix28, Store,
    StoreError, UnixMillis,
};
use proptest::prelude::*;

const COOLDOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Op {
    Allocate(u8),
    Release(u8),
    AddPrefix(u8),
    RemovePrefix(u8, bool),
    AddIp(u8),
    RemoveIp(u8, bool),
    Advance(u32),
    FailNextWrite,
    Batch(Vec<(bool, u8)>),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..40).prop_map(Op::Allocate),
        4 => (0u8..40).prop_map(Op::Release),
        2 => (0u8..5).prop_map(Op::AddPrefix),
        1 => ((0u8..5), any::<bool>()).prop_map(|(i, f)| Op::RemovePrefix(i, f)),
        1 => (0u8..4).prop_map(Op::AddIp),
        1 => ((0u8..4), any::<bool>()).prop_map(|(i, f)| Op::RemoveIp(i, f)),
        2 => (0u32..40_000).prop_map(Op::Advance),
        1 => Just(Op::FailNextWrite),
        1 => prop::collection::vec((any::<bool>(), 0u8..40), 1..8).prop_map(Op::Batch),
        1 => Just(Op::Crash),
    ]
}

fn key(i: u8) -> PodKey {
    PodKey::new("net", format!("c{i}"), "eth0").unwrap()
}
fn eni(i: u8) -> EniId {
    format!("eni-{}", i % 2 + 1).parse().unwrap()
}
fn prefix(i: u8) -> Prefix28 {
    Prefix28::new(Ipv4Addr::new(10, 0, 0, 16 * i)).unwrap()
}
fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, i)
}

/// What the test knows from the answers it was given.
#[derive(Default)]
struct Model {
    /// Acknowledged allocations, stranded ones included (their pods live).
    held: HashMap<PodKey, Ipv4Addr>,
    /// Acknowledged releases: address → end of its cooldown.
    cooling_until: HashMap<Ipv4Addr, UnixMillis>,
}

impl Model {
    /// A block went: its allocations are stranded (still held), its cooldowns dropped.
    fn forget_block(&mut self, contains: impl Fn(Ipv4Addr) -> bool) {
        self.cooling_until.retain(|a, _| !contains(*a));
    }

    /// `stranded`: the key was stranded before the call (its re-ADD gets a new address).
    fn on_allocated(
        &mut self,
        k: &PodKey,
        addr: Ipv4Addr,
        new: bool,
        now: UnixMillis,
        stranded: bool,
    ) {
        if let Some(prev) = self.held.get(k).copied()
            && !(stranded && new && prev != addr)
        {
            assert_eq!(prev, addr, "allocate is not idempotent for {k}");
            assert!(!new, "a repeat allocate of {k} claims to be new");
        } else {
            self.held.remove(k);
            assert!(new);
            if let Some(until) = self.cooling_until.get(&addr) {
                assert!(
                    *until <= now,
                    "{addr} handed out at {now:?} while cooling until {until:?}"
                );
            }
            assert!(
                !self.held.values().any(|a| *a == addr),
                "{addr} handed to {k} while held by another key"
            );
            self.held.insert(k.clone(), addr);
        }
    }
}

/// A log small enough that the runs compact every few changes.
const SMALL_LOG: usize = 1_500;

fn reload(j: &MemoryJournal) -> Datastore {
    j.recover(COOLDOWN).unwrap().ds
}

/// A batch of allocations (`true`) and releases of keys.
fn batch(items: &[(bool, u8)]) -> Vec<Change> {
    items
        .iter()
        .map(|&(alloc, i)| {
            if alloc {
                Change::Allocate {
                    key: key(i),
                    pod: PodInfo::default(),
                }
            } else {
                Change::Release { key: key(i) }
            }
        })
        .collect()
}

fn new_store() -> Store<MemoryJournal> {
    let mut ds = Datastore::new(COOLDOWN);
    ds.add_eni(eni(0), 0, true).unwrap();
    ds.add_eni(eni(1), 1, false).unwrap();
    ds.add_prefix(&eni(0), prefix(1)).unwrap();
    let mut s = Store::new(ds, MemoryJournal::with_capacity(SMALL_LOG));
    s.flush().unwrap();
    s
}

fn run(ops: Vec<Op>) {
    let mut store = new_store();
    let mut model = Model::default();
    let mut now = UnixMillis(1_000);
    for op in ops {
        match op {
            Op::Allocate(i) => {
                let stranded = store.datastore().is_stranded(&key(i));
                match store.allocate(key(i), PodInfo::default(), now) {
                    Ok(a) => model.on_allocated(&key(i), a.v4(), a.new, now, stranded),
                    Err(StoreError::Datastore(DatastoreError::NoFreeAddress)) => {
                        assert!(stranded || !model.held.contains_key(&key(i)));
                    }
                    Err(StoreError::Checkpoint(_)) => {}
                    Err(e) => panic!("allocate: {e}"),
                }
            }
            Op::Release(i) => {
                let stranded = store.datastore().is_stranded(&key(i));
                match store.release(&key(i), now) {
                    Ok(a) => {
                        let a = a.v4.expect("an IPv4 store releases IPv4 addresses");
                        assert_eq!(model.held.remove(&key(i)), Some(a.address));
                        // A stranded address is in no block, and so does not cool.
                        if !stranded {
                            model.cooling_until.insert(a.address, now.plus(COOLDOWN));
                        }
                    }
                    Err(StoreError::Datastore(DatastoreError::NotFound(_))) => {
                        assert!(!model.held.contains_key(&key(i)));
                    }
                    Err(StoreError::Checkpoint(_)) => {}
                    Err(e) => panic!("release: {e}"),
                }
            }
            Op::AddPrefix(i) => {
                let _ = store.apply(
                    Change::AddPrefix {
                        eni: eni(i),
                        prefix: prefix(i),
                    },
                    now,
                );
            }
            Op::RemovePrefix(i, force) => {
                let r = store.apply(
                    Change::RemovePrefix {
                        prefix: prefix(i),
                        force,
                    },
                    now,
                );
                if let Ok(Outcome::Removed(dropped)) = r {
                    for (k, _) in &dropped {
                        assert!(model.held.contains_key(k));
                    }
                    model.forget_block(|a| prefix(i).contains(a));
                }
            }
            Op::AddIp(i) => {
                let _ = store.apply(
                    Change::AddSecondaryIp {
                        eni: eni(i),
                        addr: ip(i),
                    },
                    now,
                );
            }
            Op::RemoveIp(i, force) => {
                let r = store.apply(Change::RemoveSecondaryIp { addr: ip(i), force }, now);
                if r.is_ok() {
                    model.forget_block(|a| a == ip(i));
                }
            }
            Op::Advance(ms) => now = UnixMillis(now.0 + u64::from(ms)),
            Op::FailNextWrite => store.journal_mut().fail_next = 1,
            Op::Batch(items) => {
                let changes = batch(&items);
                let stranded: std::collections::HashSet<u8> = items
                    .iter()
                    .map(|(_, i)| *i)
                    .filter(|i| store.datastore().is_stranded(&key(*i)))
                    .collect();
                let results = store.apply_batch(changes, now);
                let mut pending_model = Vec::new();
                for ((alloc, i), r) in items.iter().zip(results) {
                    match (alloc, r) {
                        (true, Ok(Outcome::Allocated(a))) => {
                            pending_model.push((true, *i, a.v4(), a.new))
                        }
                        (false, Ok(Outcome::Released(a))) => {
                            pending_model.push((false, *i, a.v4.unwrap().address, false))
                        }
                        (_, Ok(o)) => panic!("unexpected {o:?}"),
                        (_, Err(_)) => {}
                    }
                }
                let mut was_stranded = stranded;
                for (alloc, i, addr, new) in pending_model {
                    let s = was_stranded.remove(&i);
                    if alloc {
                        model.on_allocated(&key(i), addr, new, now, s);
                    } else {
                        assert_eq!(model.held.remove(&key(i)), Some(addr));
                        if !s {
                            model.cooling_until.insert(addr, now.plus(COOLDOWN));
                        }
                    }
                }
            }
            Op::Crash => {
                let j = store.journal();
                let mut back = reload(j);
                let mut mem = store.datastore().clone();
                back.expire(now);
                mem.expire(now);
                assert_eq!(
                    back, mem,
                    "reloaded datastore differs from the one before the crash"
                );
                let j = MemoryJournal::resume(j.snapshot.clone(), j.log.clone(), SMALL_LOG);
                store = Store::new(back, j);
            }
        }
        let ds = store.datastore();
        ds.check_invariants().unwrap();
        let actual: HashMap<PodKey, Ipv4Addr> = ds
            .allocations()
            .chain(ds.stranded())
            .map(|(k, a)| (k.clone(), a.address))
            .collect();
        assert_eq!(
            actual, model.held,
            "allocations differ from what callers were told"
        );
        // Memory never runs ahead of the disk: the checkpoint holds exactly these allocations.
        let on_disk = reload(store.journal());
        let disk: HashMap<PodKey, Ipv4Addr> = on_disk
            .allocations()
            .chain(on_disk.stranded())
            .map(|(k, a)| (k.clone(), a.address))
            .collect();
        assert_eq!(
            disk, model.held,
            "checkpoint differs from what callers were told"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn datastore_invariants_hold(ops in prop::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

/// The same through real files: a crash is dropping the store and opening the files again.
mod on_disk {
    use super::*;

    pub(super) fn open_with_block(path: &Path, log_capacity: usize) -> Store<FileJournal> {
        let (mut store, _) = Store::open(path, COOLDOWN, false, UnixMillis(0)).unwrap();
        store.journal_mut().set_log_capacity(log_capacity);
        store.flush().unwrap();
        for change in [
            Change::AddEni {
                id: eni(0),
                device_index: 0,
                primary: true,
            },
            Change::AddPrefix {
                eni: eni(0),
                prefix: prefix(1),
            },
            Change::AddPrefix {
                eni: eni(0),
                prefix: prefix(2),
            },
        ] {
            store.apply(change, UnixMillis(0)).unwrap();
        }
        store
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn reopen_equals_before_crash(ops in prop::collection::vec((0u8..3, 0u8..20), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("checkpoint.json");
            // A small log: compactions interleave with the changes and the crashes.
            let mut store = open_with_block(&path, 1_200);
            let now = UnixMillis(5_000);
            for (kind, i) in ops {
                match kind {
                    0 => { let _ = store.allocate(key(i), PodInfo { namespace: "ns".into(), name: format!("p{i}") }, now); }
                    1 => { let _ = store.release(&key(i), now); }
                    _ => {
                        let before = store.datastore().clone();
                        drop(store);
                        let (s, report) = Store::open(&path, COOLDOWN, false, now).unwrap();
                        prop_assert!(report.stranded.is_empty());
                        prop_assert_eq!(report.torn_tail_bytes, 0);
                        prop_assert_eq!(s.datastore(), &before);
                        store = s;
                        store.journal_mut().set_log_capacity(1_200);
                    }
                }
                store.datastore().check_invariants().unwrap();
            }
        }
    }
}

/// A crash in the middle of an append: the log holds the acknowledged frames whole and any
/// prefix of the next one, and the rest of its space is zeros (files) or absent (memory).
mod torn_tail {
    use super::*;
    use prefixd::core::wal::HEADER_LEN;

    /// Runs `ops` as batches through a store, returning the journal and the pool after each
    /// acknowledged commit (index 0: after the last compaction).
    fn history(ops: &[Vec<(bool, u8)>], now0: u64) -> (MemoryJournal, Vec<Datastore>) {
        let mut s = new_store();
        s.journal_mut().capacity = 1 << 20;
        s.flush().unwrap();
        let mut states = vec![s.datastore().clone()];
        let mut now = now0;
        for items in ops {
            now += 7_000;
            let changes = batch(items);
            let before = s.journal().log.len();
            let _ = s.apply_batch(changes, UnixMillis(now));
            if s.journal().log.len() > before {
                states.push(s.datastore().clone());
            }
        }
        (s.into_journal(), states)
    }

    fn same(mut a: Datastore, b: &Datastore) -> Result<(), TestCaseError> {
        let mut b = b.clone();
        a.expire(UnixMillis(u64::MAX / 2));
        b.expire(UnixMillis(u64::MAX / 2));
        prop_assert_eq!(a, b);
        Ok(())
    }

    /// Frame boundaries of a memory log.
    fn ends(j: &MemoryJournal) -> Vec<usize> {
        let mut ends = vec![HEADER_LEN];
        let mut at = HEADER_LEN;
        while at < j.log.len() {
            let len = u32::from_le_bytes(j.log[at..at + 4].try_into().unwrap()) as usize;
            at += 8 + len;
            ends.push(at);
        }
        ends
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn every_cut_of_the_last_records_recovers_every_acknowledged_change(
            ops in prop::collection::vec(prop::collection::vec((any::<bool>(), 0u8..24), 1..5), 1..12),
            pad in prop::bool::ANY,
        ) {
            let (j, states) = history(&ops, 1_000);
            let ends = ends(&j);
            prop_assert_eq!(ends.len(), states.len());
            // Every byte of the last three frames.
            let from = ends[ends.len().saturating_sub(4)];
            for cut in from..=j.log.len() {
                let mut torn = MemoryJournal::resume(j.snapshot.clone(), j.log[..cut].to_vec(), 1 << 20);
                if pad {
                    torn.log.resize(cut + 300, 0);
                }
                let back = torn.recover(COOLDOWN).unwrap();
                // Whole frames before the cut are acknowledged: all of them, and no more.
                let whole = ends.iter().rposition(|e| *e <= cut).unwrap();
                same(back.ds, &states[whole])?;
                prop_assert_eq!(back.report.replayed_batches, whole);
                let nonzero = j.log[ends[whole]..cut].iter().rposition(|b| *b != 0);
                prop_assert_eq!(back.report.torn_tail_bytes, nonzero.map_or(0, |i| i + 1));
            }
        }
    }

    /// The same on disk: the log file cut (zeros from the cut to its end, as a crash leaves a
    /// preallocated file), reopened by the agent's own open.
    #[test]
    fn a_torn_file_log_recovers_and_counts_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        let log = dir.path().join("checkpoint.json.log");
        let mut store = on_disk::open_with_block(&path, 1 << 20);
        let mut states = Vec::new();
        let mut ends = Vec::new();
        for i in 0..4u8 {
            store
                .allocate(key(i), PodInfo::default(), UnixMillis(1))
                .unwrap();
            states.push(store.datastore().clone());
            let bytes = std::fs::read(&log).unwrap();
            ends.push(bytes.iter().rposition(|b| *b != 0).unwrap() + 1);
        }
        drop(store);
        let full = std::fs::read(&log).unwrap();
        for cut in ends[1]..=ends[3] {
            let mut bytes = full.clone();
            bytes[cut..].fill(0);
            std::fs::write(&log, &bytes).unwrap();
            // Reopen without compacting the original away: work on a copy of both files.
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("checkpoint.json");
            std::fs::copy(&path, &p).unwrap();
            std::fs::copy(&log, d.path().join("checkpoint.json.log")).unwrap();
            let (s, report) = Store::open(&p, COOLDOWN, false, UnixMillis(2)).unwrap();
            let whole = ends.iter().rposition(|e| *e <= cut).unwrap();
            assert_eq!(s.datastore(), &states[whole], "cut at {cut}");
            assert_eq!(
                report.torn_tail_bytes > 0,
                cut != ends[whole],
                "cut at {cut}"
            );
        }
        // Negative control: damage inside an acknowledged record is not a torn tail.
        let mut bytes = full.clone();
        bytes[HEADER_LEN + 10] ^= 0x20;
        std::fs::write(&log, &bytes).unwrap();
        let e = Store::open(&path, COOLDOWN, false, UnixMillis(2))
            .err()
            .unwrap();
        assert!(e.to_string().contains("damaged record"), "{e}");
    }
}
