//! The node's address pool in memory: its ENIs, the /28 prefixes and secondary /32 addresses
//! attached to them, which pod holds which address, and which addresses are cooling down.
//!
//! # How an address is chosen (packing)
//! `allocate` takes the address from the *fullest* prefix that still has a free address (the
//! fewest free addresses; ties go to the lowest prefix), and inside it the lowest free address.
//! Secondary /32 addresses (fallback mode) come only after every prefix is full. Packing keeps
//! whole prefixes free, so that the planner can hand them back to EC2: the VPC CNI spreads pods
//! over prefixes in no particular order, and its prefixes rarely become free again.
//!
//! # Cooldown
//! A released address cools for `cooldown` (IP_COOLDOWN_PERIOD) before it is handed out again,
//! so that a new pod never receives an address that a dead pod's peers still route to.
//!
//! # Stranded allocations
//! When EC2 stops listing a prefix, address or ENI that pods use, their allocations are not
//! forgotten: the pods still run with those addresses until a DEL (or a GC) says they are gone.
//! They are *stranded*: kept, outside every block, and restored the moment EC2 attaches a block
//! that holds them again — so that a prefix handed back never gives a live pod's address to a
//! second pod. A DEL or GC of a stranded key ends it.
//!
//! Every operation here is in memory and infallible apart from its documented errors; making
//! changes durable is [`super::store::Store`]'s job. The datastore never reads a clock: callers
//! pass `now`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pool6::Pool6;
use super::types::{EniId, PodKey, Prefix28, UnixMillis};

/// Why a datastore operation was refused. Nothing has changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    /// Every attached address is assigned or cooling: the pool must grow.
    #[error("no free address: every attached address is assigned or cooling down")]
    NoFreeAddress,
    /// `release` of a key that holds no address (CNI DEL treats this as success).
    #[error("no address is allocated to {0}")]
    NotFound(PodKey),
    /// The ENI is not in the datastore.
    #[error("ENI {0} is not known to the datastore")]
    UnknownEni(EniId),
    /// `add_eni` of an ENI that is already there.
    #[error("ENI {0} is already in the datastore")]
    EniExists(EniId),
    /// Two ENIs cannot share a device index.
    #[error("device index {index} is already used by ENI {holder}")]
    DeviceIndexTaken {
        /// The index asked for.
        index: u32,
        /// The ENI that has it.
        holder: EniId,
    },
    /// Only one ENI is the primary.
    #[error("ENI {existing} is already the primary ENI")]
    SecondPrimary {
        /// The current primary ENI.
        existing: EniId,
    },
    /// The block (prefix or address) overlaps one already attached.
    #[error("{block} overlaps {existing}, which is already attached")]
    Overlap {
        /// What was being added.
        block: String,
        /// What it collides with.
        existing: String,
    },
    /// The prefix or secondary address is not attached.
    #[error("{0} is not attached to any ENI in the datastore")]
    UnknownBlock(String),
    /// Removal of a prefix or address that pods still use, without `force`.
    #[error("{block} still has {assigned} assigned and {cooling} cooling addresses")]
    InUse {
        /// The prefix or address.
        block: String,
        /// Addresses held by pods.
        assigned: u32,
        /// Addresses in cooldown.
        cooling: u32,
    },
    /// Removal of an ENI that still holds prefixes or addresses, without `force`.
    #[error("ENI {eni} still holds {blocks} prefixes or addresses")]
    EniNotEmpty {
        /// The ENI.
        eni: EniId,
        /// How many blocks it holds.
        blocks: usize,
    },
}

/// What the pod that holds an address is, as the CNI plugin reported it (from CNI_ARGS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// K8S_POD_NAMESPACE; empty when the runtime did not say.
    #[serde(default)]
    pub namespace: String,
    /// K8S_POD_NAME; empty when the runtime did not say.
    #[serde(default)]
    pub name: String,
}

/// One address held by one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The pod's address.
    pub address: Ipv4Addr,
    /// Who holds it.
    pub pod: PodInfo,
    /// When it was handed out.
    pub allocated_at: UnixMillis,
}

/// The result of [`Datastore::allocate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocated {
    /// The address of the key.
    pub address: Ipv4Addr,
    /// False when the key already held this address (an idempotent repeat: nothing changed).
    pub new: bool,
}

/// A prefix or a secondary address: the unit that is attached to an ENI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockId {
    /// A delegated /28.
    Prefix(Prefix28),
    /// A secondary /32 (fallback mode).
    Ip(Ipv4Addr),
}

impl BlockId {
    fn base(self) -> u32 {
        match self {
            BlockId::Prefix(p) => p.base_u32(),
            BlockId::Ip(a) => u32::from(a),
        }
    }
    fn size(self) -> u32 {
        match self {
            BlockId::Prefix(_) => Prefix28::SIZE,
            BlockId::Ip(_) => 1,
        }
    }
    fn full_mask(self) -> u16 {
        match self {
            BlockId::Prefix(_) => u16::MAX,
            BlockId::Ip(_) => 1,
        }
    }
    /// Key in the free index: prefixes (class 0) before addresses (class 1), then fewest free
    /// addresses first, then the lowest address.
    fn index_key(self, free: u32) -> u64 {
        let class = matches!(self, BlockId::Ip(_)) as u64;
        (class << 40) | (u64::from(free) << 32) | u64::from(self.base())
    }
    fn from_index_key(key: u64) -> Self {
        let base = Ipv4Addr::from(key as u32);
        if key >> 40 == 0 {
            BlockId::Prefix(Prefix28::containing(base))
        } else {
            BlockId::Ip(base)
        }
    }
}

impl std::fmt::Display for BlockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockId::Prefix(p) => write!(f, "prefix {p}"),
            BlockId::Ip(a) => write!(f, "secondary address {a}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    eni: EniId,
    /// Bit i set: address base+i is held by a pod.
    assigned: u16,
    /// Bit i set: address base+i is cooling down.
    cooling: u16,
}

impl Block {
    fn free(&self, id: BlockId) -> u32 {
        id.size() - (self.assigned | self.cooling).count_ones()
    }
}

/// An ENI as the datastore knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniEntry {
    /// Device index on the instance (0 for the primary ENI).
    pub device_index: u32,
    /// Whether this is the instance's primary ENI.
    pub primary: bool,
    /// Prefixes attached to it.
    pub prefixes: BTreeSet<Prefix28>,
    /// Secondary addresses attached to it (fallback mode).
    pub secondary_ips: BTreeSet<Ipv4Addr>,
}

/// Counts for one prefix or for an ENI's secondary addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Held by pods.
    pub assigned: u32,
    /// In cooldown.
    pub cooling: u32,
    /// Neither.
    pub free: u32,
}

/// The pool of one node. See the module documentation for the allocation policy.
#[derive(Debug, Clone)]
pub struct Datastore {
    cooldown: Duration,
    enis: BTreeMap<EniId, EniEntry>,
    blocks: HashMap<BlockId, Block>,
    /// Blocks that have at least one free address, ordered for packing (see `index_key`).
    free_index: BTreeSet<u64>,
    allocations: HashMap<PodKey, Allocation>,
    /// Address → end of its cooldown. The heap below may hold stale entries; this map decides.
    cooling: HashMap<Ipv4Addr, UnixMillis>,
    expiry: BinaryHeap<Reverse<(UnixMillis, Ipv4Addr)>>,
    /// Allocations whose block EC2 took back while their pods live (see the module docs).
    stranded: HashMap<PodKey, Allocation>,
    /// The IPv6 /80 and its allocations (empty on an IPv4-only node).
    v6: Pool6,
}

impl PartialEq for Datastore {
    /// Equal when they hold the same ENIs, blocks, allocations and cooldowns (the expiry heap
    /// and free index are derived).
    fn eq(&self, other: &Self) -> bool {
        self.cooldown == other.cooldown
            && self.enis == other.enis
            && self.blocks == other.blocks
            && self.allocations == other.allocations
            && self.cooling == other.cooling
            && self.stranded == other.stranded
            && self.v6 == other.v6
    }
}

impl Datastore {
    /// An empty pool whose released addresses cool for `cooldown`.
    pub fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            enis: BTreeMap::new(),
            blocks: HashMap::new(),
            free_index: BTreeSet::new(),
            allocations: HashMap::new(),
            cooling: HashMap::new(),
            expiry: BinaryHeap::new(),
            stranded: HashMap::new(),
            v6: Pool6::new(),
        }
    }

    /// The IPv6 pool.
    pub fn v6(&self) -> &Pool6 {
        &self.v6
    }

    /// The IPv6 pool, to change (the store's job: it journals what it does).
    pub(crate) fn v6_mut(&mut self) -> &mut Pool6 {
        &mut self.v6
    }

    /// The cooldown period.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    // ---- addresses -------------------------------------------------------------------------

    /// Gives `key` an address, or returns the one it already holds.
    pub fn allocate(
        &mut self,
        key: PodKey,
        pod: PodInfo,
        now: UnixMillis,
    ) -> Result<Allocated, DatastoreError> {
        if let Some(a) = self.allocations.get(&key) {
            return Ok(Allocated {
                address: a.address,
                new: false,
            });
        }
        self.expire4(now);
        let &first = self
            .free_index
            .first()
            .ok_or(DatastoreError::NoFreeAddress)?;
        // The runtime adds the attachment again: its stranded address is no longer its.
        self.stranded.remove(&key);
        let id = BlockId::from_index_key(first);
        let block = self.blocks.get_mut(&id).expect("free index names a block");
        let avail = !(block.assigned | block.cooling) & id.full_mask();
        let bit = avail.trailing_zeros();
        let before = block.free(id);
        block.assigned |= 1 << bit;
        let address = Ipv4Addr::from(id.base() + bit);
        self.reindex(id, before, before - 1);
        self.allocations.insert(
            key,
            Allocation {
                address,
                pod,
                allocated_at: now,
            },
        );
        Ok(Allocated { address, new: true })
    }

    /// Takes `key`'s address back; it cools down until `now + cooldown`.
    /// A stranded key's release ends its stranding (no block holds the address to cool it).
    pub fn release(&mut self, key: &PodKey, now: UnixMillis) -> Result<Allocation, DatastoreError> {
        self.release_until(key, now.plus(self.cooldown))
    }

    /// Takes `key`'s address back to cool until `until` (a release, or its replay from the log).
    pub(crate) fn release_until(
        &mut self,
        key: &PodKey,
        until: UnixMillis,
    ) -> Result<Allocation, DatastoreError> {
        let Some(alloc) = self.allocations.remove(key) else {
            return self
                .stranded
                .remove(key)
                .ok_or_else(|| DatastoreError::NotFound(key.clone()));
        };
        let (id, bit) = self
            .locate(alloc.address)
            .expect("an allocated address lies in an attached block");
        let block = self.blocks.get_mut(&id).expect("located block exists");
        block.assigned &= !(1 << bit);
        block.cooling |= 1 << bit;
        // Assigned → cooling leaves the free count as it was: the index needs no update.
        self.cooling.insert(alloc.address, until);
        self.expiry.push(Reverse((until, alloc.address)));
        Ok(alloc)
    }

    /// Ends every cooldown that is over at `now`, in both families.
    pub fn expire(&mut self, now: UnixMillis) {
        self.v6.expire(now);
        self.expire4(now);
    }

    fn expire4(&mut self, now: UnixMillis) {
        while let Some(&Reverse((until, addr))) = self.expiry.peek() {
            if until > now {
                break;
            }
            self.expiry.pop();
            if self.cooling.get(&addr) != Some(&until) {
                continue; // stale: cooldown undone, or the block was removed
            }
            self.cooling.remove(&addr);
            if let Some((id, bit)) = self.locate(addr) {
                let block = self.blocks.get_mut(&id).expect("located block exists");
                let before = block.free(id);
                block.cooling &= !(1 << bit);
                self.reindex(id, before, before + 1);
            }
        }
    }

    /// Reverses an `allocate` that returned `new: true` (used when its checkpoint write failed).
    pub(crate) fn undo_allocate(&mut self, key: &PodKey) {
        let Some(alloc) = self.allocations.remove(key) else {
            return;
        };
        if let Some((id, bit)) = self.locate(alloc.address) {
            let block = self.blocks.get_mut(&id).expect("located block exists");
            let before = block.free(id);
            block.assigned &= !(1 << bit);
            self.reindex(id, before, before + 1);
        }
    }

    /// Reverses a `release` (used when its checkpoint write failed).
    pub(crate) fn undo_release(&mut self, key: PodKey, alloc: Allocation) {
        if let Some((id, bit)) = self.locate(alloc.address) {
            self.cooling.remove(&alloc.address);
            let block = self.blocks.get_mut(&id).expect("located block exists");
            let before = block.free(id);
            block.cooling &= !(1 << bit);
            block.assigned |= 1 << bit;
            let after = block.free(id);
            // A zero cooldown may have let the address expire (and be reused and undone) within
            // the same batch, so the free count can differ from before the release.
            self.reindex(id, before, after);
            self.allocations.insert(key, alloc);
        }
    }

    /// The address held by `key`.
    pub fn get(&self, key: &PodKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Every allocation.
    pub fn allocations(&self) -> impl Iterator<Item = (&PodKey, &Allocation)> {
        self.allocations.iter()
    }

    /// Every stranded allocation: its pod lives, EC2 no longer lists its block.
    pub fn stranded(&self) -> impl Iterator<Item = (&PodKey, &Allocation)> {
        self.stranded.iter()
    }

    /// Whether `key` is stranded.
    pub fn is_stranded(&self, key: &PodKey) -> bool {
        self.stranded.contains_key(key)
    }

    /// Every cooling address with the end of its cooldown (some may be over but not yet expired).
    pub fn cooling(&self) -> impl Iterator<Item = (Ipv4Addr, UnixMillis)> + '_ {
        self.cooling.iter().map(|(a, u)| (*a, *u))
    }

    /// Caps every cooldown at `now + cooldown`: cooldowns read from a checkpoint written while
    /// the clock was ahead (or with a longer IP_COOLDOWN_PERIOD) must not strand addresses for
    /// years. Returns how many were shortened.
    pub fn cap_cooldowns(&mut self, now: UnixMillis) -> usize {
        let cap = now.plus(self.cooldown);
        let late: Vec<Ipv4Addr> = self
            .cooling
            .iter()
            .filter(|(_, until)| **until > cap)
            .map(|(a, _)| *a)
            .collect();
        for a in &late {
            // The heap's old entry goes stale: `expire` skips entries the map no longer has.
            self.cooling.insert(*a, cap);
            self.expiry.push(Reverse((cap, *a)));
        }
        late.len() + self.v6.cap_cooldowns(cap)
    }

    /// Number of addresses free to hand out now (after expiring cooldowns that are over).
    pub fn free_count(&mut self, now: UnixMillis) -> u32 {
        self.expire4(now);
        self.blocks.iter().map(|(id, b)| b.free(*id)).sum()
    }

    // ---- ENIs and blocks -------------------------------------------------------------------

    /// Adds an ENI with nothing attached to it.
    pub fn add_eni(
        &mut self,
        id: EniId,
        device_index: u32,
        primary: bool,
    ) -> Result<(), DatastoreError> {
        if self.enis.contains_key(&id) {
            return Err(DatastoreError::EniExists(id));
        }
        for (other, e) in &self.enis {
            if e.device_index == device_index {
                return Err(DatastoreError::DeviceIndexTaken {
                    index: device_index,
                    holder: other.clone(),
                });
            }
            if primary && e.primary {
                return Err(DatastoreError::SecondPrimary {
                    existing: other.clone(),
                });
            }
        }
        self.enis.insert(
            id,
            EniEntry {
                device_index,
                primary,
                prefixes: BTreeSet::new(),
                secondary_ips: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Removes an ENI. Without `force` it must hold nothing; with `force` its blocks go too and
    /// the allocations in them are stranded and returned (EC2 says the ENI is gone).
    pub fn remove_eni(
        &mut self,
        id: &EniId,
        force: bool,
    ) -> Result<Vec<(PodKey, Allocation)>, DatastoreError> {
        let eni = self
            .enis
            .get(id)
            .ok_or_else(|| DatastoreError::UnknownEni(id.clone()))?;
        let blocks: Vec<BlockId> = eni
            .prefixes
            .iter()
            .map(|p| BlockId::Prefix(*p))
            .chain(eni.secondary_ips.iter().map(|a| BlockId::Ip(*a)))
            .collect();
        if !force && !blocks.is_empty() {
            return Err(DatastoreError::EniNotEmpty {
                eni: id.clone(),
                blocks: blocks.len(),
            });
        }
        let mut dropped = Vec::new();
        for b in blocks {
            dropped.extend(self.remove_block(b, true)?);
        }
        self.enis.remove(id);
        Ok(dropped)
    }

    /// Attaches a prefix to an ENI.
    pub fn add_prefix(&mut self, eni: &EniId, prefix: Prefix28) -> Result<(), DatastoreError> {
        self.add_block(eni, BlockId::Prefix(prefix))
    }

    /// Attaches a secondary address to an ENI.
    pub fn add_secondary_ip(&mut self, eni: &EniId, addr: Ipv4Addr) -> Result<(), DatastoreError> {
        self.add_block(eni, BlockId::Ip(addr))
    }

    /// Detaches a prefix; see [`Self::remove_block`].
    pub fn remove_prefix(
        &mut self,
        prefix: Prefix28,
        force: bool,
    ) -> Result<Vec<(PodKey, Allocation)>, DatastoreError> {
        self.remove_block(BlockId::Prefix(prefix), force)
    }

    /// Detaches a secondary address; see [`Self::remove_block`].
    pub fn remove_secondary_ip(
        &mut self,
        addr: Ipv4Addr,
        force: bool,
    ) -> Result<Vec<(PodKey, Allocation)>, DatastoreError> {
        self.remove_block(BlockId::Ip(addr), force)
    }

    fn add_block(&mut self, eni: &EniId, id: BlockId) -> Result<(), DatastoreError> {
        let entry = self
            .enis
            .get_mut(eni)
            .ok_or_else(|| DatastoreError::UnknownEni(eni.clone()))?;
        let overlap = match id {
            BlockId::Prefix(p) => {
                let inside = p
                    .addresses()
                    .find(|a| self.blocks.contains_key(&BlockId::Ip(*a)));
                if self.blocks.contains_key(&id) {
                    Some(id)
                } else {
                    inside.map(BlockId::Ip)
                }
            }
            BlockId::Ip(a) => [BlockId::Ip(a), BlockId::Prefix(Prefix28::containing(a))]
                .into_iter()
                .find(|b| self.blocks.contains_key(b)),
        };
        if let Some(existing) = overlap {
            return Err(DatastoreError::Overlap {
                block: id.to_string(),
                existing: existing.to_string(),
            });
        }
        match id {
            BlockId::Prefix(p) => entry.prefixes.insert(p),
            BlockId::Ip(a) => entry.secondary_ips.insert(a),
        };
        self.blocks.insert(
            id,
            Block {
                eni: eni.clone(),
                assigned: 0,
                cooling: 0,
            },
        );
        self.free_index.insert(id.index_key(id.size()));
        // Stranded pods whose address this block holds get it back.
        let back: Vec<PodKey> = self
            .stranded
            .iter()
            .filter(|(_, a)| block_contains(id, a.address))
            .map(|(k, _)| k.clone())
            .collect();
        for key in back {
            let alloc = self.stranded.remove(&key).expect("just found");
            let bit = u32::from(alloc.address) - id.base();
            let block = self.blocks.get_mut(&id).expect("inserted above");
            let before = block.free(id);
            block.assigned |= 1 << bit;
            self.reindex(id, before, before - 1);
            self.allocations.insert(key, alloc);
        }
        Ok(())
    }

    /// Detaches a block. Without `force`, none of its addresses may be assigned or cooling;
    /// with `force` (EC2 says it is gone) its cooldowns are dropped and its allocations
    /// stranded (kept until their DEL) and returned, so that the caller can log and count them.
    pub fn remove_block(
        &mut self,
        id: BlockId,
        force: bool,
    ) -> Result<Vec<(PodKey, Allocation)>, DatastoreError> {
        let block = self
            .blocks
            .get(&id)
            .ok_or_else(|| DatastoreError::UnknownBlock(id.to_string()))?;
        if !force && (block.assigned | block.cooling) != 0 {
            return Err(DatastoreError::InUse {
                block: id.to_string(),
                assigned: block.assigned.count_ones(),
                cooling: block.cooling.count_ones(),
            });
        }
        let block = self.blocks.remove(&id).expect("checked above");
        self.free_index.remove(&id.index_key(block.free(id)));
        let mut dropped = Vec::new();
        for bit in 0..id.size() {
            let addr = Ipv4Addr::from(id.base() + bit);
            if block.cooling & (1 << bit) != 0 {
                self.cooling.remove(&addr);
            }
        }
        if block.assigned != 0 {
            let keys: Vec<PodKey> = self
                .allocations
                .iter()
                .filter(|(_, a)| block_contains(id, a.address))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                let a = self.allocations.remove(&k).expect("just found");
                self.stranded.insert(k.clone(), a.clone());
                dropped.push((k, a));
            }
        }
        if let Some(e) = self.enis.get_mut(&block.eni) {
            match id {
                BlockId::Prefix(p) => e.prefixes.remove(&p),
                BlockId::Ip(a) => e.secondary_ips.remove(&a),
            };
        }
        Ok(dropped)
    }

    /// The ENIs, by id.
    pub fn enis(&self) -> &BTreeMap<EniId, EniEntry> {
        &self.enis
    }

    /// Counts for one block.
    pub fn usage(&self, id: BlockId) -> Option<Usage> {
        self.blocks.get(&id).map(|b| Usage {
            assigned: b.assigned.count_ones(),
            cooling: b.cooling.count_ones(),
            free: b.free(id),
        })
    }

    /// Whether `addr` lies in an attached prefix or is an attached secondary address.
    pub fn is_attached(&self, addr: Ipv4Addr) -> bool {
        self.locate(addr).is_some()
    }

    /// The ENI that carries `addr` (in one of its prefixes, or as a secondary address).
    pub fn eni_of(&self, addr: Ipv4Addr) -> Option<(&EniId, &EniEntry)> {
        let (block, _) = self.locate(addr)?;
        let eni = &self.blocks.get(&block)?.eni;
        self.enis.get_key_value(eni)
    }

    /// The block holding `addr` and its position in it.
    fn locate(&self, addr: Ipv4Addr) -> Option<(BlockId, u32)> {
        let p = Prefix28::containing(addr);
        if self.blocks.contains_key(&BlockId::Prefix(p)) {
            return Some((BlockId::Prefix(p), u32::from(addr) - p.base_u32()));
        }
        self.blocks
            .contains_key(&BlockId::Ip(addr))
            .then_some((BlockId::Ip(addr), 0))
    }

    fn reindex(&mut self, id: BlockId, before: u32, after: u32) {
        if before == after {
            return;
        }
        if before > 0 {
            self.free_index.remove(&id.index_key(before));
        }
        if after > 0 {
            self.free_index.insert(id.index_key(after));
        }
    }

    // ---- restoring from a checkpoint ---------------------------------------------------------

    /// Puts back an allocation read from a checkpoint (stranded or not). One whose address is
    /// outside every attached block is stranded (`Ok(false)`: the caller reports it); errs when
    /// the address or key is already taken, which only a corrupt checkpoint can cause.
    pub(crate) fn restore_allocation(
        &mut self,
        key: PodKey,
        alloc: Allocation,
    ) -> Result<bool, String> {
        if self.allocations.contains_key(&key) || self.stranded.contains_key(&key) {
            return Err(format!("{key} appears twice"));
        }
        let Some((id, bit)) = self.locate(alloc.address) else {
            if let Some((other, _)) = self
                .stranded
                .iter()
                .find(|(_, a)| a.address == alloc.address)
            {
                return Err(format!(
                    "address {} is held twice ({other} and {key})",
                    alloc.address
                ));
            }
            self.stranded.insert(key, alloc);
            return Ok(false);
        };
        let block = self.blocks.get_mut(&id).expect("located block exists");
        if (block.assigned | block.cooling) & (1 << bit) != 0 {
            return Err(format!(
                "address {} is held twice (again by {key})",
                alloc.address
            ));
        }
        let before = block.free(id);
        block.assigned |= 1 << bit;
        self.reindex(id, before, before - 1);
        self.allocations.insert(key, alloc);
        Ok(true)
    }

    /// Replays an assignment from the log: as `allocate` did it, with the address it chose. The
    /// live pool had expired that address's cooldown before choosing it; the replayed one may
    /// not have, so it ends here. Errs when the address or key is held, which only a log that
    /// contradicts its snapshot can cause.
    pub(crate) fn replay_assign(&mut self, key: PodKey, alloc: Allocation) -> Result<(), String> {
        self.stranded.remove(&key);
        if self.cooling.remove(&alloc.address).is_some() {
            if let Some((id, bit)) = self.locate(alloc.address) {
                let block = self.blocks.get_mut(&id).expect("located block exists");
                let before = block.free(id);
                block.cooling &= !(1 << bit);
                self.reindex(id, before, before + 1);
            }
        }
        self.restore_allocation(key, alloc).map(drop)
    }

    /// Puts back a cooldown read from a checkpoint; `Ok(false)` when outside every block.
    pub(crate) fn restore_cooldown(
        &mut self,
        addr: Ipv4Addr,
        until: UnixMillis,
    ) -> Result<bool, String> {
        let Some((id, bit)) = self.locate(addr) else {
            return Ok(false);
        };
        let block = self.blocks.get_mut(&id).expect("located block exists");
        if (block.assigned | block.cooling) & (1 << bit) != 0 {
            return Err(format!(
                "address {addr} is both held and cooling, or cooling twice"
            ));
        }
        let before = block.free(id);
        block.cooling |= 1 << bit;
        self.reindex(id, before, before - 1);
        self.cooling.insert(addr, until);
        self.expiry.push(Reverse((until, addr)));
        Ok(true)
    }

    /// Checks the derived structures against the primary ones; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        self.v6.check_invariants()?;
        let mut seen = HashMap::new();
        for (k, a) in &self.allocations {
            if let Some(other) = seen.insert(a.address, k) {
                return Err(format!("{} held by {k} and {other}", a.address));
            }
            let (id, bit) = self
                .locate(a.address)
                .ok_or_else(|| format!("{} held by {k} is in no attached block", a.address))?;
            if self.blocks[&id].assigned & (1 << bit) == 0 {
                return Err(format!("{} held by {k} but its bit is clear", a.address));
            }
        }
        let mut index = BTreeSet::new();
        for (id, b) in &self.blocks {
            if b.assigned.count_ones() as usize
                != self
                    .allocations
                    .values()
                    .filter(|a| block_contains(*id, a.address))
                    .count()
            {
                return Err(format!("{id}: assigned bits do not match allocations"));
            }
            if b.assigned & b.cooling != 0 {
                return Err(format!("{id}: an address is both assigned and cooling"));
            }
            if b.free(*id) > 0 {
                index.insert(id.index_key(b.free(*id)));
            }
        }
        if index != self.free_index {
            return Err("free index out of date".into());
        }
        for addr in self.cooling.keys() {
            let (id, bit) = self
                .locate(*addr)
                .ok_or_else(|| format!("cooling {addr} is in no block"))?;
            if self.blocks[&id].cooling & (1 << bit) == 0 {
                return Err(format!("cooling {addr} but its bit is clear"));
            }
        }
        let cooling_bits: u32 = self.blocks.values().map(|b| b.cooling.count_ones()).sum();
        if cooling_bits as usize != self.cooling.len() {
            return Err("cooling bits do not match the cooling map".into());
        }
        for (k, a) in &self.stranded {
            if self.locate(a.address).is_some() {
                return Err(format!("{k} is stranded but {} is attached", a.address));
            }
            if self.allocations.contains_key(k) {
                return Err(format!("{k} is both stranded and allocated"));
            }
            if let Some(other) = seen.insert(a.address, k) {
                return Err(format!("{} held by {k} and {other}", a.address));
            }
        }
        Ok(())
    }
}

fn block_contains(id: BlockId, addr: Ipv4Addr) -> bool {
    match id {
        BlockId::Prefix(p) => p.contains(addr),
        BlockId::Ip(a) => a == addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> PodKey {
        PodKey::new("net", c, "eth0").unwrap()
    }
    fn eni(s: &str) -> EniId {
        s.parse().unwrap()
    }
    fn p(s: &str) -> Prefix28 {
        s.parse().unwrap()
    }
    const T0: UnixMillis = UnixMillis(1_000_000);

    fn ds_with(prefixes: &[&str]) -> Datastore {
        let mut ds = Datastore::new(Duration::from_secs(30));
        ds.add_eni(eni("eni-1"), 0, true).unwrap();
        for s in prefixes {
            ds.add_prefix(&eni("eni-1"), p(s)).unwrap();
        }
        ds
    }

    #[test]
    fn a_block_ec2_takes_back_strands_its_pods_and_gives_them_their_addresses_back() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        let a = ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        let gone = ds.remove_prefix(p("10.0.0.16/28"), true).unwrap();
        assert_eq!(gone.len(), 1);
        assert!(ds.is_stranded(&key("a")) && ds.get(&key("a")).is_none());
        ds.check_invariants().unwrap();
        // EC2 hands the same prefix back: the live pod's address is its again, not free.
        ds.add_prefix(&eni("eni-1"), p("10.0.0.16/28")).unwrap();
        assert_eq!(ds.get(&key("a")).unwrap().address, a.address);
        let b = ds.allocate(key("b"), PodInfo::default(), T0).unwrap();
        assert_ne!(b.address, a.address);
        ds.check_invariants().unwrap();
        // A DEL while stranded ends it: the address is free when the block comes back.
        ds.remove_prefix(p("10.0.0.16/28"), true).unwrap();
        assert_eq!(ds.release(&key("a"), T0).unwrap().address, a.address);
        assert!(!ds.is_stranded(&key("a")) && ds.is_stranded(&key("b")));
        ds.add_prefix(&eni("eni-1"), p("10.0.0.16/28")).unwrap();
        ds.check_invariants().unwrap();
        let c = ds.allocate(key("c"), PodInfo::default(), T0).unwrap();
        assert_eq!(
            c.address, a.address,
            "packing takes the lowest free address"
        );
    }

    #[test]
    fn allocate_is_idempotent() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        let a = ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        assert!(a.new);
        let again = ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        assert_eq!(again.address, a.address);
        assert!(!again.new);
        assert_eq!(ds.allocations().count(), 1);
    }

    #[test]
    fn packs_into_fullest_prefix_then_lowest_address() {
        let mut ds = ds_with(&["10.0.0.32/28", "10.0.0.16/28"]);
        // Equal (empty): lowest prefix first, lowest address inside it.
        let a = ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 0, 0, 16));
        // Now .16/28 has 15 free, .32/28 has 16: the fuller one wins.
        let b = ds.allocate(key("b"), PodInfo::default(), T0).unwrap();
        assert_eq!(b.address, Ipv4Addr::new(10, 0, 0, 17));
        for i in 0..14 {
            ds.allocate(key(&format!("f{i}")), PodInfo::default(), T0)
                .unwrap();
        }
        // .16/28 is now full; the next goes to .32/28.
        let c = ds.allocate(key("c"), PodInfo::default(), T0).unwrap();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 0, 32));
    }

    #[test]
    fn fewest_free_wins_over_lower_prefix() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        for i in 0..16 {
            ds.allocate(key(&format!("x{i}")), PodInfo::default(), T0)
                .unwrap();
        }
        ds.add_prefix(&eni("eni-1"), p("10.0.0.48/28")).unwrap();
        ds.allocate(key("y"), PodInfo::default(), T0).unwrap(); // .48 now has 15 free
        ds.add_prefix(&eni("eni-1"), p("10.0.0.0/28")).unwrap(); // lower, 16 free
        // Release two in .16 and let them cool off: .16 has 2 free, .48 15, .0 16.
        ds.release(&key("x3"), T0).unwrap();
        ds.release(&key("x9"), T0).unwrap();
        let later = T0.plus(Duration::from_secs(31));
        let a = ds.allocate(key("z"), PodInfo::default(), later).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 0, 0, 19));
        let b = ds.allocate(key("z2"), PodInfo::default(), later).unwrap();
        assert_eq!(b.address, Ipv4Addr::new(10, 0, 0, 25));
        let c = ds.allocate(key("z3"), PodInfo::default(), later).unwrap();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 0, 49));
        ds.check_invariants().unwrap();
    }

    #[test]
    fn released_address_cools_before_reuse() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        for i in 0..16 {
            ds.allocate(key(&format!("x{i}")), PodInfo::default(), T0)
                .unwrap();
        }
        let gone = ds.release(&key("x0"), T0).unwrap();
        assert_eq!(
            ds.allocate(
                key("n"),
                PodInfo::default(),
                T0.plus(Duration::from_secs(29))
            ),
            Err(DatastoreError::NoFreeAddress)
        );
        let a = ds
            .allocate(
                key("n"),
                PodInfo::default(),
                T0.plus(Duration::from_secs(30)),
            )
            .unwrap();
        assert_eq!(a.address, gone.address);
    }

    #[test]
    fn release_of_unknown_key_is_not_found() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        assert_eq!(
            ds.release(&key("nope"), T0),
            Err(DatastoreError::NotFound(key("nope")))
        );
    }

    #[test]
    fn prefix_in_use_cannot_be_removed_unless_forced() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        ds.allocate(key("b"), PodInfo::default(), T0).unwrap();
        ds.release(&key("b"), T0).unwrap();
        let err = ds.remove_prefix(p("10.0.0.16/28"), false).unwrap_err();
        assert_eq!(
            err,
            DatastoreError::InUse {
                block: "prefix 10.0.0.16/28".into(),
                assigned: 1,
                cooling: 1
            }
        );
        let dropped = ds.remove_prefix(p("10.0.0.16/28"), true).unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0, key("a"));
        assert!(ds.get(&key("a")).is_none());
        assert_eq!(ds.cooling().count(), 0);
        ds.check_invariants().unwrap();
        // Cooling only also blocks removal.
        ds.add_prefix(&eni("eni-1"), p("10.0.0.32/28")).unwrap();
        ds.allocate(key("c"), PodInfo::default(), T0).unwrap();
        ds.release(&key("c"), T0).unwrap();
        assert!(ds.remove_prefix(p("10.0.0.32/28"), false).is_err());
        ds.expire(T0.plus(Duration::from_secs(30)));
        assert!(
            ds.remove_prefix(p("10.0.0.32/28"), false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn secondary_ips_are_used_after_prefixes() {
        let mut ds = ds_with(&[]);
        ds.add_secondary_ip(&eni("eni-1"), Ipv4Addr::new(10, 0, 1, 5))
            .unwrap();
        ds.add_prefix(&eni("eni-1"), p("10.0.0.16/28")).unwrap();
        for i in 0..16 {
            let a = ds
                .allocate(key(&format!("x{i}")), PodInfo::default(), T0)
                .unwrap();
            assert!(p("10.0.0.16/28").contains(a.address));
        }
        let a = ds.allocate(key("s"), PodInfo::default(), T0).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(
            ds.allocate(key("t"), PodInfo::default(), T0),
            Err(DatastoreError::NoFreeAddress)
        );
        ds.check_invariants().unwrap();
    }

    #[test]
    fn overlaps_and_duplicates_are_refused() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        assert!(matches!(
            ds.add_prefix(&eni("eni-1"), p("10.0.0.16/28")),
            Err(DatastoreError::Overlap { .. })
        ));
        assert!(matches!(
            ds.add_secondary_ip(&eni("eni-1"), Ipv4Addr::new(10, 0, 0, 20)),
            Err(DatastoreError::Overlap { .. })
        ));
        ds.add_secondary_ip(&eni("eni-1"), Ipv4Addr::new(10, 0, 0, 40))
            .unwrap();
        assert!(matches!(
            ds.add_prefix(&eni("eni-1"), p("10.0.0.32/28")),
            Err(DatastoreError::Overlap { .. })
        ));
        assert!(matches!(
            ds.add_prefix(&eni("eni-9"), p("10.0.0.64/28")),
            Err(DatastoreError::UnknownEni(_))
        ));
        assert!(matches!(
            ds.add_eni(eni("eni-2"), 0, false),
            Err(DatastoreError::DeviceIndexTaken { index: 0, .. })
        ));
        assert!(matches!(
            ds.add_eni(eni("eni-2"), 1, true),
            Err(DatastoreError::SecondPrimary { .. })
        ));
    }

    #[test]
    fn eni_removal_requires_empty_unless_forced() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        assert!(matches!(
            ds.remove_eni(&eni("eni-1"), false),
            Err(DatastoreError::EniNotEmpty { blocks: 1, .. })
        ));
        let dropped = ds.remove_eni(&eni("eni-1"), true).unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(ds.enis().is_empty());
        ds.check_invariants().unwrap();
    }

    #[test]
    fn undo_restores_exact_state() {
        let mut ds = ds_with(&["10.0.0.16/28"]);
        ds.allocate(key("a"), PodInfo::default(), T0).unwrap();
        let before = ds.clone();
        ds.allocate(key("b"), PodInfo::default(), T0).unwrap();
        ds.undo_allocate(&key("b"));
        assert_eq!(ds, before);
        ds.check_invariants().unwrap();
        let alloc = ds.release(&key("a"), T0).unwrap();
        ds.undo_release(key("a"), alloc);
        assert_eq!(ds, before);
        ds.check_invariants().unwrap();
    }
}
