//! The node's IPv6 pool: one delegated /80 and the /128 addresses pods hold in it.
//!
//! A /80 holds 2^48 addresses, so nothing here is a bitmap of them: the pool keeps the set of
//! *busy* indexes (held by a pod, or cooling down) and hands out the lowest index that is not
//! busy (index 0, the prefix's own address, is never handed out). Packing is moot — the /80 is
//! never handed back while the node runs — but choosing the lowest free index keeps the choice
//! deterministic, so that a replayed log and the live pool agree.
//!
//! The semantics are the IPv4 datastore's: `allocate` is idempotent per key, a released address
//! cools for IP_COOLDOWN_PERIOD before it is given again, and an allocation whose address is not
//! in the current /80 (EC2 replaced the prefix while the pod lived) is *stranded*: kept, never
//! handed to a second pod, live again if the old /80 comes back, ended by its DEL. No clock is
//! read: callers pass `now` and the end of a cooldown.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::Ipv6Addr;

use super::datastore::PodInfo;
use super::types::{PodKey, Prefix80, UnixMillis};

/// Why a pool operation was refused. Nothing has changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pool6Error {
    /// No /80 yet: the agent has not found or been given one.
    #[error("no IPv6 /80 is attached to the node yet")]
    NoPrefix,
    /// Every index of the /80 is held or cooling (2^48 − 1 of them: never in practice).
    #[error("no free address in {0}")]
    Full(Prefix80),
    /// `release` of a key that holds no IPv6 address.
    #[error("no IPv6 address is allocated to {0}")]
    NotFound(PodKey),
    /// A different /80 while pods hold addresses of the current one, without `force`.
    #[error("cannot replace {current} with {new}: {held} pods hold addresses in it")]
    InUse {
        /// The /80 the pool has.
        current: Prefix80,
        /// The one asked for.
        new: Prefix80,
        /// Pods holding addresses of `current`.
        held: usize,
    },
}

/// One IPv6 address held by one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation6 {
    /// The pod's address.
    pub address: Ipv6Addr,
    /// Who holds it.
    pub pod: PodInfo,
    /// When it was handed out.
    pub allocated_at: UnixMillis,
}

/// The /80 and who holds what in it. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Pool6 {
    prefix: Option<Prefix80>,
    allocations: HashMap<PodKey, Allocation6>,
    /// Indexes (in `prefix`) held by a pod or cooling.
    busy: BTreeSet<u64>,
    /// Address → end of its cooldown. The heap may hold stale entries; this map decides.
    cooling: BTreeMap<Ipv6Addr, UnixMillis>,
    expiry: BinaryHeap<Reverse<(UnixMillis, Ipv6Addr)>>,
}

impl PartialEq for Pool6 {
    /// Equal when they hold the same prefix, allocations and cooldowns (the busy set and the
    /// expiry heap are derived).
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix
            && self.allocations == other.allocations
            && self.cooling == other.cooling
    }
}

impl Pool6 {
    /// An empty pool, with no /80.
    pub fn new() -> Self {
        Self::default()
    }

    /// The /80, if the pool has one.
    pub fn prefix(&self) -> Option<Prefix80> {
        self.prefix
    }

    /// Whether the pool has never had a prefix nor an allocation (an IPv4-only node's).
    pub fn is_empty(&self) -> bool {
        self.prefix.is_none() && self.allocations.is_empty() && self.cooling.is_empty()
    }

    fn index(&self, addr: Ipv6Addr) -> Option<u64> {
        self.prefix.and_then(|p| p.index_of(addr))
    }

    /// Sets the /80. The same one again changes nothing. A different one while pods hold
    /// addresses of the current one is refused unless `force`; with `force` those allocations
    /// are stranded (kept, never reused). Cooldowns of the old prefix end.
    pub fn set_prefix(&mut self, prefix: Prefix80, force: bool) -> Result<(), Pool6Error> {
        if self.prefix == Some(prefix) {
            return Ok(());
        }
        if let Some(current) = self.prefix {
            let held = self
                .allocations
                .values()
                .filter(|a| current.index_of(a.address).is_some())
                .count();
            if held > 0 && !force {
                return Err(Pool6Error::InUse {
                    current,
                    new: prefix,
                    held,
                });
            }
        }
        self.prefix = Some(prefix);
        self.cooling.retain(|a, _| prefix.index_of(*a).is_some());
        self.expiry
            .retain(|Reverse((_, a))| prefix.index_of(*a).is_some());
        self.rebuild_busy();
        Ok(())
    }

    fn rebuild_busy(&mut self) {
        let Some(p) = self.prefix else {
            self.busy.clear();
            return;
        };
        self.busy = self
            .allocations
            .values()
            .map(|a| a.address)
            .chain(self.cooling.keys().copied())
            .filter_map(|a| p.index_of(a))
            .collect();
    }

    /// Gives `key` an address, or returns the one it already holds (`false`: nothing changed).
    /// A key whose address is stranded gets a new one.
    pub fn allocate(
        &mut self,
        key: PodKey,
        pod: PodInfo,
        now: UnixMillis,
    ) -> Result<(Ipv6Addr, bool), Pool6Error> {
        let prefix = self.prefix.ok_or(Pool6Error::NoPrefix)?;
        if let Some(a) = self.allocations.get(&key)
            && prefix.index_of(a.address).is_some()
        {
            return Ok((a.address, false));
        }
        self.expire(now);
        let mut want = 1u64;
        for &i in self.busy.range(1..) {
            if i != want {
                break;
            }
            want += 1;
        }
        if want > Prefix80::MAX_INDEX {
            return Err(Pool6Error::Full(prefix));
        }
        self.busy.insert(want);
        let address = prefix.addr(want);
        self.allocations.insert(
            key,
            Allocation6 {
                address,
                pod,
                allocated_at: now,
            },
        );
        Ok((address, true))
    }

    /// Takes `key`'s address back to cool until `until`. A stranded address just ends.
    pub fn release_until(
        &mut self,
        key: &PodKey,
        until: UnixMillis,
    ) -> Result<Allocation6, Pool6Error> {
        let alloc = self
            .allocations
            .remove(key)
            .ok_or_else(|| Pool6Error::NotFound(key.clone()))?;
        if self.index(alloc.address).is_some() {
            // Held → cooling: the index stays busy.
            self.cooling.insert(alloc.address, until);
            self.expiry.push(Reverse((until, alloc.address)));
        }
        Ok(alloc)
    }

    /// Ends every cooldown that is over at `now`.
    pub fn expire(&mut self, now: UnixMillis) {
        while let Some(&Reverse((until, addr))) = self.expiry.peek() {
            if until > now {
                break;
            }
            self.expiry.pop();
            if self.cooling.get(&addr) != Some(&until) {
                continue; // stale: cooldown undone or capped
            }
            self.cooling.remove(&addr);
            if let Some(i) = self.index(addr) {
                self.busy.remove(&i);
            }
        }
    }

    /// Reverses an `allocate` that returned `true` (its commit failed).
    pub(crate) fn undo_allocate(&mut self, key: &PodKey) {
        if let Some(a) = self.allocations.remove(key)
            && let Some(i) = self.index(a.address)
        {
            self.busy.remove(&i);
        }
    }

    /// Reverses a `release_until` (its commit failed).
    pub(crate) fn undo_release(&mut self, key: PodKey, alloc: Allocation6) {
        if self.cooling.remove(&alloc.address).is_none()
            && let Some(i) = self.index(alloc.address)
        {
            // A zero cooldown let it expire within the batch: busy again.
            self.busy.insert(i);
        }
        self.allocations.insert(key, alloc);
    }

    /// Puts back an allocation read from a checkpoint or replayed from the log; a cooldown of
    /// the same address ends (the log says the address was given again), and so does a
    /// stranded allocation of the same key (it was given a new address). Errs when another key
    /// holds the address, or the key holds another that is not stranded.
    pub(crate) fn restore(&mut self, key: PodKey, alloc: Allocation6) -> Result<(), String> {
        if self.is_stranded(&key) {
            self.allocations.remove(&key);
        }
        if let Some(other) = self.allocations.get(&key) {
            return Err(format!(
                "{key} holds {} and is given {} again",
                other.address, alloc.address
            ));
        }
        // In the /80 the busy set answers (an index busy and not cooling is held); outside it
        // (stranded addresses, rare) the allocations are scanned. Replaying thousands of
        // assigns stays O(n log n).
        let held = match self.index(alloc.address) {
            Some(i) => self.busy.contains(&i) && !self.cooling.contains_key(&alloc.address),
            None => self
                .allocations
                .values()
                .any(|a| a.address == alloc.address),
        };
        if held {
            let k = self
                .allocations
                .iter()
                .find(|(_, a)| a.address == alloc.address)
                .map_or_else(|| "another key".to_owned(), |(k, _)| k.to_string());
            return Err(format!("{} is held by {k} and {key}", alloc.address));
        }
        self.cooling.remove(&alloc.address);
        if let Some(i) = self.index(alloc.address) {
            self.busy.insert(i);
        }
        self.allocations.insert(key, alloc);
        Ok(())
    }

    /// Puts back a cooldown read from a checkpoint; `Ok(false)` when outside the /80 (dropped).
    pub(crate) fn restore_cooldown(
        &mut self,
        addr: Ipv6Addr,
        until: UnixMillis,
    ) -> Result<bool, String> {
        let Some(i) = self.index(addr) else {
            return Ok(false);
        };
        if !self.busy.insert(i) {
            return Err(format!("{addr} is both held and cooling, or cooling twice"));
        }
        self.cooling.insert(addr, until);
        self.expiry.push(Reverse((until, addr)));
        Ok(true)
    }

    /// Caps every cooldown at `cap`; returns how many were shortened.
    pub fn cap_cooldowns(&mut self, cap: UnixMillis) -> usize {
        let late: Vec<Ipv6Addr> = self
            .cooling
            .iter()
            .filter(|(_, u)| **u > cap)
            .map(|(a, _)| *a)
            .collect();
        for a in &late {
            self.cooling.insert(*a, cap);
            self.expiry.push(Reverse((cap, *a)));
        }
        late.len()
    }

    /// The address `key` holds (stranded or not).
    pub fn get(&self, key: &PodKey) -> Option<&Allocation6> {
        self.allocations.get(key)
    }

    /// Whether `key`'s address lies outside the current /80.
    pub fn is_stranded(&self, key: &PodKey) -> bool {
        self.allocations
            .get(key)
            .is_some_and(|a| self.index(a.address).is_none())
    }

    /// Every allocation, stranded ones included.
    pub fn allocations(&self) -> impl Iterator<Item = (&PodKey, &Allocation6)> {
        self.allocations.iter()
    }

    /// Every cooling address with the end of its cooldown.
    pub fn cooling(&self) -> impl Iterator<Item = (Ipv6Addr, UnixMillis)> + '_ {
        self.cooling.iter().map(|(a, u)| (*a, *u))
    }

    /// Addresses free to hand out now (0 without a prefix).
    pub fn free_count(&mut self, now: UnixMillis) -> u64 {
        self.expire(now);
        match self.prefix {
            Some(_) => Prefix80::MAX_INDEX - self.busy.range(1..).count() as u64,
            None => 0,
        }
    }

    /// Checks the derived structures against the primary ones; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut copy = self.clone();
        copy.rebuild_busy();
        if copy.busy != self.busy {
            return Err("busy set does not match allocations and cooldowns".into());
        }
        let mut seen = HashMap::new();
        for (k, a) in &self.allocations {
            if let Some(other) = seen.insert(a.address, k) {
                return Err(format!("{} held by {k} and {other}", a.address));
            }
            if self.cooling.contains_key(&a.address) {
                return Err(format!("{} held by {k} and cooling", a.address));
            }
            if self.index(a.address) == Some(0) {
                return Err(format!("{k} holds the prefix's own address"));
            }
        }
        if self.cooling.keys().any(|a| self.index(*a).is_none()) {
            return Err("a cooldown outside the /80".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> PodKey {
        PodKey::new("net", c, "eth0").unwrap()
    }
    fn p80(s: &str) -> Prefix80 {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_index_idempotent_and_cooled() {
        let mut p = Pool6::new();
        assert_eq!(
            p.allocate(key("a"), PodInfo::default(), UnixMillis(0)),
            Err(Pool6Error::NoPrefix)
        );
        p.set_prefix(p80("2600:1f14:1:200:1::/80"), false).unwrap();
        let (a, new) = p
            .allocate(key("a"), PodInfo::default(), UnixMillis(0))
            .unwrap();
        assert_eq!((a, new), ("2600:1f14:1:200:1::1".parse().unwrap(), true));
        assert_eq!(
            p.allocate(key("a"), PodInfo::default(), UnixMillis(1))
                .unwrap(),
            (a, false)
        );
        let (b, _) = p
            .allocate(key("b"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        assert_eq!(b, "2600:1f14:1:200:1::2".parse::<Ipv6Addr>().unwrap());
        p.release_until(&key("a"), UnixMillis(100)).unwrap();
        // ::1 cools: the next pod gets ::3, and ::1 only after the cooldown.
        let (c, _) = p
            .allocate(key("c"), PodInfo::default(), UnixMillis(50))
            .unwrap();
        assert_eq!(c, "2600:1f14:1:200:1::3".parse::<Ipv6Addr>().unwrap());
        let (d, _) = p
            .allocate(key("d"), PodInfo::default(), UnixMillis(100))
            .unwrap();
        assert_eq!(d, a);
        p.check_invariants().unwrap();
        assert_eq!(p.free_count(UnixMillis(100)), Prefix80::MAX_INDEX - 3);
    }

    #[test]
    fn a_new_prefix_strands_the_old_ones_addresses() {
        let mut p = Pool6::new();
        p.set_prefix(p80("2001:db8::/80"), false).unwrap();
        let (a, _) = p
            .allocate(key("a"), PodInfo::default(), UnixMillis(0))
            .unwrap();
        let e = p.set_prefix(p80("2001:db8:0:0:1::/80"), false).unwrap_err();
        assert!(matches!(e, Pool6Error::InUse { held: 1, .. }), "{e}");
        p.set_prefix(p80("2001:db8:0:0:1::/80"), true).unwrap();
        assert!(p.is_stranded(&key("a")));
        assert_eq!(p.get(&key("a")).unwrap().address, a);
        // A new ADD of the stranded key gets an address of the new prefix.
        let (b, new) = p
            .allocate(key("a"), PodInfo::default(), UnixMillis(1))
            .unwrap();
        assert!(new && b != a);
        p.check_invariants().unwrap();
    }

    #[test]
    fn undo_restores_the_state() {
        let mut p = Pool6::new();
        p.set_prefix(p80("2001:db8::/80"), false).unwrap();
        p.allocate(key("a"), PodInfo::default(), UnixMillis(0))
            .unwrap();
        let before = p.clone();
        p.allocate(key("b"), PodInfo::default(), UnixMillis(0))
            .unwrap();
        p.undo_allocate(&key("b"));
        assert_eq!(p, before);
        let alloc = p.release_until(&key("a"), UnixMillis(0)).unwrap();
        p.expire(UnixMillis(0));
        p.undo_release(key("a"), alloc);
        assert_eq!(p, before);
        p.check_invariants().unwrap();
    }
}
