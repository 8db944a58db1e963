//! The datastore made durable: every change a caller is told about is in the journal first.
//!
//! Changes arrive one at a time or as a batch ([`Store::apply_batch`]); a batch is applied in
//! memory, and what it did is committed to the journal as one log record (group commit), which
//! is how the agent's pool owner turns many concurrent ADDs into one fdatasync. If the commit
//! fails, every change of the batch is undone, in reverse order, and each caller gets the error:
//! memory never runs ahead of the disk.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{CheckpointError, LoadReport};
use super::config::Families;
use super::datastore::{Allocation, Datastore, DatastoreError, PodInfo};
use super::journal::{FileJournal, Journal};
use super::pool6::{Allocation6, Pool6Error};
use super::types::{EniId, PodKey, Prefix28, Prefix80, UnixMillis};
use super::wal::Record;

/// Why a change was not made. Nothing changed, in memory or on disk, when one is returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The datastore refused the change.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The IPv6 pool refused the change.
    #[error(transparent)]
    Pool6(#[from] Pool6Error),
    /// The change was made in memory, the checkpoint write failed, and the change was undone.
    /// Shared by every change of the batch.
    #[error("change undone because the checkpoint could not be written: {0}")]
    Checkpoint(#[source] Arc<CheckpointError>),
}

/// One change to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Give `key` an address (idempotent).
    Allocate {
        /// The attachment.
        key: PodKey,
        /// Who it is.
        pod: PodInfo,
    },
    /// Take `key`'s address back into cooldown.
    Release {
        /// The attachment.
        key: PodKey,
    },
    /// A new ENI, empty.
    AddEni {
        /// Its id.
        id: EniId,
        /// Its device index.
        device_index: u32,
        /// Whether it is the primary.
        primary: bool,
    },
    /// Drop an ENI (see [`Datastore::remove_eni`]).
    RemoveEni {
        /// Its id.
        id: EniId,
        /// Drop what it holds too.
        force: bool,
    },
    /// A prefix attached to an ENI.
    AddPrefix {
        /// The ENI.
        eni: EniId,
        /// The prefix.
        prefix: Prefix28,
    },
    /// A prefix detached (see [`Datastore::remove_prefix`]).
    RemovePrefix {
        /// The prefix.
        prefix: Prefix28,
        /// Even if in use.
        force: bool,
    },
    /// A secondary address attached to an ENI.
    AddSecondaryIp {
        /// The ENI.
        eni: EniId,
        /// The address.
        addr: Ipv4Addr,
    },
    /// A secondary address detached.
    RemoveSecondaryIp {
        /// The address.
        addr: Ipv4Addr,
        /// Even if in use.
        force: bool,
    },
    /// The node's IPv6 /80 (see [`crate::core::Pool6::set_prefix`]).
    SetPrefix6 {
        /// The prefix.
        prefix: Prefix80,
        /// Replace another even if pods hold its addresses (they are stranded).
        force: bool,
    },
}

/// The addresses of one attachment: one per family the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    /// Its IPv4 address (ENABLE_IPv4).
    pub v4: Option<Ipv4Addr>,
    /// Its IPv6 address (ENABLE_IPv6).
    pub v6: Option<Ipv6Addr>,
    /// False when the key already held every address (an idempotent repeat: nothing changed).
    pub new: bool,
}

impl Assigned {
    /// The IPv4 address; for IPv4 callers and tests.
    pub fn v4(&self) -> Ipv4Addr {
        self.v4.expect("an IPv4 address was assigned")
    }
}

/// What a release took back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The IPv4 allocation.
    pub v4: Option<Allocation>,
    /// The IPv6 allocation.
    pub v6: Option<Allocation6>,
}

/// What a successful change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key's addresses, and whether any is new.
    Allocated(Assigned),
    /// The released allocations.
    Released(Released),
    /// Allocations dropped by a forced removal (empty otherwise).
    Removed(Vec<(PodKey, Allocation)>),
    /// A structural change made.
    Done,
}

enum Undo {
    Allocate(PodKey),
    Release(PodKey, Allocation),
    Allocate6(PodKey),
    Release6(PodKey, Allocation6),
    Restore(Box<Datastore>),
}

/// A [`Datastore`] whose acknowledged changes are in a journal.
pub struct Store<J> {
    ds: Datastore,
    journal: J,
    writes: u64,
    families: Families,
}

impl Store<FileJournal> {
    /// Opens the checkpoint at `path` (snapshot and log): restores it when present, starts
    /// empty when there is none, and compacts it (a new snapshot and an empty log), which also
    /// migrates a version 1 checkpoint. With `discard`, a checkpoint that cannot be used
    /// (corrupt, contradictory, of another version, a log that does not belong) is moved aside
    /// (never deleted) and the pool starts empty; a readable one is kept, whatever the flag
    /// says, since forgetting live allocations would give their addresses to second pods.
    /// Allocations outside every attached block are stranded, logged and listed in the report;
    /// cooldowns are capped at `now` + the cooldown.
    pub fn open(
        path: &Path,
        cooldown: Duration,
        discard: bool,
        now: UnixMillis,
    ) -> Result<(Self, LoadReport), CheckpointError> {
        let (journal, recovered) = match FileJournal::open(path, cooldown) {
            Ok(opened) => {
                if discard {
                    tracing::warn!(checkpoint = %path.display(),
                        "DISCARD_CHECKPOINT is set but the checkpoint is readable: it is kept \
                         (discarding it would give live pods' addresses to new pods); unset it");
                }
                opened
            }
            Err(e) if discard && e.is_unreadable() => {
                let aside = FileJournal::discard(path, now)?;
                tracing::warn!(checkpoint = %path.display(), error = %e,
                    moved_to = ?aside.iter().map(|a| a.display().to_string()).collect::<Vec<_>>(),
                    "unreadable checkpoint moved aside on request: starting with an empty pool");
                FileJournal::open(path, cooldown)?
            }
            Err(e) => return Err(e),
        };
        let (mut ds, report) = (recovered.ds, recovered.report);
        if report.torn_tail_bytes > 0 {
            tracing::warn!(log = %journal.log_path().display(), bytes = report.torn_tail_bytes,
                "torn last record of the checkpoint log discarded (a crash during a write \
                 that was never acknowledged)");
        }
        if report.migrated_v1 {
            tracing::info!(checkpoint = %path.display(), "version 1 checkpoint migrated");
        }
        let capped = ds.cap_cooldowns(now);
        if capped > 0 {
            tracing::warn!(checkpoint = %path.display(), capped,
                "cooldowns ending after now + IP_COOLDOWN_PERIOD were shortened (a clock ahead, or a longer period)");
        }
        for (key, addr) in &report.stranded {
            tracing::warn!(pod.key = %key, address = %addr, checkpoint = %path.display(),
                "stranded allocation: its address lies in no attached block; kept until its DEL");
        }
        tracing::info!(checkpoint = %path.display(), restored = report.restored,
            stranded = report.stranded.len(), replayed = report.replayed_batches,
            "checkpoint loaded");
        let mut store = Self::new(ds, journal);
        store.flush()?;
        Ok((store, report))
    }
}

impl<J: Journal + Send + 'static> Store<J> {
    /// The same store with its journal behind a box, so that owners can hold any journal.
    pub fn boxed(self) -> Store<Box<dyn Journal + Send>> {
        Store {
            ds: self.ds,
            journal: Box::new(self.journal),
            writes: self.writes,
            families: self.families,
        }
    }
}

impl<J: Journal> Store<J> {
    /// Wraps a datastore and a journal. Nothing is written until the first change or flush.
    pub fn new(ds: Datastore, journal: J) -> Self {
        Self {
            ds,
            journal,
            writes: 0,
            families: Families::V4,
        }
    }

    /// Which families an allocation gives addresses of (IPv4 only until set).
    pub fn set_families(&mut self, families: Families) {
        self.families = families;
    }

    /// The families allocations serve.
    pub fn families(&self) -> Families {
        self.families
    }

    /// The pool, read-only.
    pub fn datastore(&self) -> &Datastore {
        &self.ds
    }

    /// The journal.
    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// The journal, without the store.
    pub fn into_journal(self) -> J {
        self.journal
    }

    /// The journal, mutably (tests inject faults through it).
    pub fn journal_mut(&mut self) -> &mut J {
        &mut self.journal
    }

    /// Durable writes made (commits and snapshots).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Ends cooldowns that are over. Not written: a reload drops them the same way.
    pub fn expire(&mut self, now: UnixMillis) {
        self.ds.expire(now);
    }

    /// Writes the current state whole and starts a new log (at start-up, on shutdown, and to
    /// find out whether a failing disk works again).
    pub fn flush(&mut self) -> Result<(), CheckpointError> {
        self.journal.snapshot(&self.ds)?;
        self.writes += 1;
        Ok(())
    }

    /// Gives `key` an address; durable before it returns.
    pub fn allocate(
        &mut self,
        key: PodKey,
        pod: PodInfo,
        now: UnixMillis,
    ) -> Result<Assigned, StoreError> {
        match self.apply(Change::Allocate { key, pod }, now)? {
            Outcome::Allocated(a) => Ok(a),
            other => unreachable!("allocate gave {other:?}"),
        }
    }

    /// Takes `key`'s address back; durable before it returns.
    pub fn release(&mut self, key: &PodKey, now: UnixMillis) -> Result<Released, StoreError> {
        match self.apply(Change::Release { key: key.clone() }, now)? {
            Outcome::Released(a) => Ok(a),
            other => unreachable!("release gave {other:?}"),
        }
    }

    /// Applies one change.
    pub fn apply(&mut self, change: Change, now: UnixMillis) -> Result<Outcome, StoreError> {
        self.apply_batch(vec![change], now)
            .pop()
            .expect("one result per change")
    }

    /// Applies changes in order, then commits one record of all that changed anything.
    /// Returns one result per change, in order.
    pub fn apply_batch(
        &mut self,
        changes: Vec<Change>,
        now: UnixMillis,
    ) -> Vec<Result<Outcome, StoreError>> {
        let mut results = Vec::with_capacity(changes.len());
        let mut alloc_keys = Vec::with_capacity(changes.len());
        let mut undo = Vec::new();
        let mut records = Vec::new();
        for change in changes {
            alloc_keys.push(match &change {
                Change::Allocate { key, .. } => Some(key.clone()),
                _ => None,
            });
            let r = self.apply_one(change, now);
            results.push(r.map(|(outcome, done)| {
                for (u, record) in done {
                    undo.push(u);
                    records.push(record);
                }
                outcome
            }));
        }
        if undo.is_empty() {
            return results;
        }
        match self.journal.commit(&records, &self.ds) {
            Ok(()) => {
                self.writes += 1;
                results
            }
            Err(e) => {
                tracing::error!(error = %e, changes = undo.len(),
                    "checkpoint commit failed: undoing the changes");
                self.undo(undo);
                let e = Arc::new(e);
                results
                    .into_iter()
                    .zip(alloc_keys)
                    .map(|(r, key)| match (r, key) {
                        // An idempotent repeat changed nothing and stays answered, unless the
                        // allocation it repeated was made, and now undone, in this batch.
                        (Ok(Outcome::Allocated(a)), Some(key))
                            if !a.new
                                && self.ds.get(&key).map(|x| x.address) == a.v4
                                && self.ds.v6().get(&key).map(|x| x.address) == a.v6 =>
                        {
                            Ok(Outcome::Allocated(a))
                        }
                        (Ok(_), _) => Err(StoreError::Checkpoint(e.clone())),
                        (Err(err), _) => Err(err),
                    })
                    .collect()
            }
        }
    }

    /// Reverses changes, the last first.
    fn undo(&mut self, undo: Vec<Undo>) {
        undo_on(&mut self.ds, undo);
    }

    fn apply_one(
        &mut self,
        change: Change,
        now: UnixMillis,
    ) -> Result<(Outcome, Vec<(Undo, Record)>), StoreError> {
        let families = self.families;
        let ds = &mut self.ds;
        let until = now.plus(ds.cooldown());
        Ok(match change {
            Change::Allocate { key, mut pod } => {
                let mut done = Vec::new();
                let mut v4 = None;
                if families.ipv4 {
                    // A stranded key's change touches the stranded set, which only a copy undoes.
                    let restore = ds.is_stranded(&key).then(|| Box::new(ds.clone()));
                    // The pod's names are copied only when the IPv6 half needs them too.
                    let pod4 = if families.ipv6 {
                        pod.clone()
                    } else {
                        std::mem::take(&mut pod)
                    };
                    let a = ds.allocate(key.clone(), pod4, now)?;
                    v4 = Some(a.address);
                    if a.new {
                        let record = Record::assign(&key, ds.get(&key).expect("just allocated"));
                        let u = match restore {
                            Some(before) => Undo::Restore(before),
                            None => Undo::Allocate(key.clone()),
                        };
                        done.push((u, record));
                    }
                }
                let mut v6 = None;
                if families.ipv6 {
                    match ds.v6_mut().allocate(key.clone(), pod, now) {
                        Ok((address, new)) => {
                            v6 = Some(address);
                            if new {
                                let record =
                                    Record::assign6(&key, ds.v6().get(&key).expect("allocated"));
                                done.push((Undo::Allocate6(key), record));
                            }
                        }
                        Err(e) => {
                            // Both or neither: the IPv4 half is undone before the error.
                            undo_on(ds, done.into_iter().map(|(u, _)| u).collect());
                            return Err(e.into());
                        }
                    }
                }
                let new = !done.is_empty();
                (Outcome::Allocated(Assigned { v4, v6, new }), done)
            }
            Change::Release { key } => {
                let mut done = Vec::new();
                let mut released = Released { v4: None, v6: None };
                if ds.get(&key).is_some() || ds.is_stranded(&key) {
                    let stranded = ds.is_stranded(&key).then(|| Box::new(ds.clone()));
                    let alloc = ds.release(&key, now)?;
                    let u = match stranded {
                        Some(before) => Undo::Restore(before),
                        None => Undo::Release(key.clone(), alloc.clone()),
                    };
                    done.push((
                        u,
                        Record::Release {
                            key: key.clone(),
                            until,
                        },
                    ));
                    released.v4 = Some(alloc);
                }
                if ds.v6().get(&key).is_some() {
                    let alloc = ds.v6_mut().release_until(&key, until)?;
                    done.push((
                        Undo::Release6(key.clone(), alloc.clone()),
                        Record::Release6 {
                            key: key.clone(),
                            until,
                        },
                    ));
                    released.v6 = Some(alloc);
                }
                if done.is_empty() {
                    return Err(DatastoreError::NotFound(key).into());
                }
                (Outcome::Released(released), done)
            }
            structural => {
                let before = Box::new(ds.clone());
                let (outcome, record) = match structural {
                    Change::AddEni {
                        id,
                        device_index,
                        primary,
                    } => (
                        ds.add_eni(id.clone(), device_index, primary)
                            .map(|()| Outcome::Done),
                        Record::AddEni {
                            id,
                            device_index,
                            primary,
                        },
                    ),
                    Change::RemoveEni { id, force } => (
                        ds.remove_eni(&id, force).map(Outcome::Removed),
                        Record::RemoveEni { id },
                    ),
                    Change::AddPrefix { eni, prefix } => (
                        ds.add_prefix(&eni, prefix).map(|()| Outcome::Done),
                        Record::AddPrefix { eni, prefix },
                    ),
                    Change::RemovePrefix { prefix, force } => (
                        ds.remove_prefix(prefix, force).map(Outcome::Removed),
                        Record::RemovePrefix { prefix },
                    ),
                    Change::AddSecondaryIp { eni, addr } => (
                        ds.add_secondary_ip(&eni, addr).map(|()| Outcome::Done),
                        Record::AddIp { eni, address: addr },
                    ),
                    Change::RemoveSecondaryIp { addr, force } => (
                        ds.remove_secondary_ip(addr, force).map(Outcome::Removed),
                        Record::RemoveIp { address: addr },
                    ),
                    Change::SetPrefix6 { prefix, force } => {
                        ds.v6_mut().set_prefix(prefix, force)?;
                        (Ok(Outcome::Done), Record::SetPrefix6 { prefix })
                    }
                    Change::Allocate { .. } | Change::Release { .. } => unreachable!(),
                };
                (outcome?, vec![(Undo::Restore(before), record)])
            }
        })
    }
}

/// Reverses changes made to `ds`, the last first.
fn undo_on(ds: &mut Datastore, mut undo: Vec<Undo>) {
    while let Some(u) = undo.pop() {
        match u {
            Undo::Allocate(key) => ds.undo_allocate(&key),
            Undo::Release(key, alloc) => ds.undo_release(key, alloc),
            Undo::Allocate6(key) => ds.v6_mut().undo_allocate(&key),
            Undo::Release6(key, alloc) => ds.v6_mut().undo_release(key, alloc),
            Undo::Restore(before) => *ds = *before,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::journal::MemoryJournal;

    fn key(c: &str) -> PodKey {
        PodKey::new("net", c, "eth0").unwrap()
    }

    /// Adds the primary ENI `eni-1` carrying `block`.
    pub(crate) fn add_eni_with<J: Journal>(s: &mut Store<J>, block: impl FnOnce(EniId) -> Change) {
        let eni: EniId = "eni-1".parse().unwrap();
        for change in [
            Change::AddEni {
                id: eni.clone(),
                device_index: 0,
                primary: true,
            },
            block(eni),
        ] {
            s.apply(change, UnixMillis(0)).unwrap();
        }
    }

    /// Adds the primary ENI `eni-1` carrying the prefix 10.0.0.16/28.
    pub(crate) fn add_prefix_eni<J: Journal>(s: &mut Store<J>) {
        add_eni_with(s, |eni| Change::AddPrefix {
            eni,
            prefix: "10.0.0.16/28".parse().unwrap(),
        });
    }

    /// A store with cooldown `cooldown` and one primary ENI carrying `block`.
    fn store_with(cooldown: Duration, block: impl FnOnce(EniId) -> Change) -> Store<MemoryJournal> {
        let mut s = Store::new(Datastore::new(cooldown), MemoryJournal::default());
        add_eni_with(&mut s, block);
        s
    }

    fn store() -> Store<MemoryJournal> {
        let mut s = Store::new(
            Datastore::new(Duration::from_secs(30)),
            MemoryJournal::default(),
        );
        add_prefix_eni(&mut s);
        s
    }

    fn reload(s: &Store<MemoryJournal>) -> Datastore {
        s.journal().recover(Duration::from_secs(30)).unwrap().ds
    }

    #[test]
    fn discard_acts_only_on_a_checkpoint_that_cannot_be_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let cooldown = Duration::from_secs(30);
        let (mut s, _) = Store::open(&path, cooldown, false, UnixMillis(0)).unwrap();
        add_prefix_eni(&mut s);
        let a = s
            .allocate(key("live"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        drop(s);
        // Readable: kept, the live pod's address with it, and nothing moved aside.
        let (s, _) = Store::open(&path, cooldown, true, UnixMillis(2)).unwrap();
        assert_eq!(s.datastore().get(&key("live")).unwrap().address, a.v4());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "the snapshot and its log"
        );
        drop(s);
        // Unreadable: refused without the flag, moved aside with it.
        std::fs::write(&path, b"{\"version\":2,\"enis\":[").unwrap();
        let e = Store::open(&path, cooldown, false, UnixMillis(3))
            .err()
            .unwrap();
        assert!(
            e.is_unreadable() && e.to_string().contains("--discard-checkpoint"),
            "{e}"
        );
        let (s, _) = Store::open(&path, cooldown, true, UnixMillis(3)).unwrap();
        assert_eq!(s.datastore().allocations().count(), 0);
        assert!(dir.path().join("cp.json.discarded-3").exists());
    }

    #[test]
    fn cooldowns_from_a_clock_that_was_ahead_are_capped() {
        let mut s = store();
        s.allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        // Released by an agent whose clock read a year ahead.
        let year = UnixMillis(365 * 86_400_000);
        s.release(&key("a"), year).unwrap();
        let mut ds = reload(&s);
        assert_eq!(ds.cap_cooldowns(UnixMillis(10)), 1);
        assert_eq!(ds.free_count(UnixMillis(10)), 15);
        assert_eq!(ds.free_count(UnixMillis(10 + 30_000)), 16);
        ds.check_invariants().unwrap();
    }

    #[test]
    fn every_acknowledged_change_is_in_the_checkpoint() {
        let mut s = store();
        let a = s
            .allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        assert_eq!(reload(&s).get(&key("a")).unwrap().address, a.v4());
        s.release(&key("a"), UnixMillis(2)).unwrap();
        let back = reload(&s);
        assert!(back.get(&key("a")).is_none());
        assert_eq!(back.cooling().count(), 1);
    }

    #[test]
    fn idempotent_repeat_and_not_found_do_not_write() {
        let mut s = store();
        s.allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        let w = s.writes();
        s.allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        assert!(s.release(&key("zz"), UnixMillis(1)).is_err());
        assert_eq!(s.writes(), w);
    }

    #[test]
    fn failed_write_undoes_the_change_and_reports_it() {
        let mut s = store();
        s.allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        let before = s.datastore().clone();
        s.journal_mut().fail_next = 1;
        let e = s
            .allocate(key("b"), PodInfo::default(), UnixMillis(1))
            .unwrap_err();
        assert!(matches!(e, StoreError::Checkpoint(_)), "{e}");
        assert!(e.to_string().contains("undone"), "{e}");
        assert_eq!(s.datastore(), &before);
        s.journal_mut().fail_next = 1;
        assert!(s.release(&key("a"), UnixMillis(1)).is_err());
        assert_eq!(s.datastore(), &before);
        s.journal_mut().fail_next = 1;
        assert!(
            s.apply(
                Change::RemovePrefix {
                    prefix: "10.0.0.16/28".parse().unwrap(),
                    force: true
                },
                UnixMillis(1)
            )
            .is_err()
        );
        assert_eq!(s.datastore(), &before);
        s.datastore().check_invariants().unwrap();
        // And the next write goes through.
        s.allocate(key("b"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        assert_eq!(reload(&s), *s.datastore());
    }

    #[test]
    fn a_batch_is_one_write_and_undone_whole() {
        let mut s = store();
        s.allocate(key("x"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        let w = s.writes();
        let changes: Vec<Change> = (0..8)
            .map(|i| Change::Allocate {
                key: key(&format!("k{i}")),
                pod: PodInfo::default(),
            })
            .chain([
                Change::Release { key: key("x") },
                Change::Release { key: key("nope") },
            ])
            .collect();
        let results = s.apply_batch(changes.clone(), UnixMillis(2));
        assert_eq!(s.writes(), w + 1);
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 9);
        assert!(matches!(
            results[9],
            Err(StoreError::Datastore(DatastoreError::NotFound(_)))
        ));
        assert_eq!(reload(&s), *s.datastore());

        let mut t = store();
        t.allocate(key("x"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        let before = t.datastore().clone();
        t.journal_mut().fail_next = 1;
        let results = t.apply_batch(changes, UnixMillis(2));
        assert!(
            results[..9]
                .iter()
                .all(|r| matches!(r, Err(StoreError::Checkpoint(_))))
        );
        assert_eq!(t.datastore(), &before);
        t.datastore().check_invariants().unwrap();
    }

    #[test]
    fn undo_after_zero_cooldown_reuse_in_one_batch() {
        let mut s = store_with(Duration::ZERO, |eni| Change::AddSecondaryIp {
            eni,
            addr: Ipv4Addr::new(10, 0, 0, 9),
        });
        s.allocate(key("a"), PodInfo::default(), UnixMillis(0))
            .unwrap();
        let before = s.datastore().clone();
        s.journal_mut().fail_next = 1;
        let r = s.apply_batch(
            vec![
                Change::Release { key: key("a") },
                Change::Allocate {
                    key: key("b"),
                    pod: PodInfo::default(),
                },
            ],
            UnixMillis(0),
        );
        assert!(r.iter().all(|r| r.is_err()));
        assert_eq!(s.datastore(), &before);
        s.datastore().check_invariants().unwrap();
    }
}
