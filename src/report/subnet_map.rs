//! A subnet's /28 map, which EC2 does not give (amazon-vpc-cni-k8s #2749): every aligned /28
//! of the subnet, derived from what holds addresses there (DescribeNetworkInterfaces) and its
//! CIDR reservations (GetSubnetCidrReservations).
//!
//! A block is, in this order of precedence: `allocated` (it is an ENI's delegated prefix),
//! `reserved` (it holds one of EC2's five reserved addresses: the first four and the last),
//! `explicit` (it overlaps an `explicit` reservation, which automatic assignment never uses),
//! `fragmented` (it holds an address of some ENI: no prefix can be cut from it), `free in a
//! prefix reservation`, or `free`. Automatic prefixes come from free blocks — from `prefix`
//! reservations first; automatic single addresses from the "loose" free addresses outside
//! every free block and reservation, else from a free block, which that breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::core::Prefix28;
use crate::ec2::read::{EniRecord, ReservationRecord, ReservationType};

/// The state of one aligned /28.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Wholly free, outside every reservation.
    Free,
    /// Wholly free, inside a `prefix` reservation.
    FreeReserved,
    /// Holds at least one address of an ENI.
    Fragmented,
    /// An ENI's delegated prefix.
    Allocated,
    /// Holds one of EC2's reserved addresses.
    Reserved,
    /// Overlaps an `explicit` reservation.
    Explicit,
}

impl BlockState {
    /// One character for the terminal grid.
    pub fn glyph(self) -> char {
        match self {
            Self::Free => '.',
            Self::FreeReserved => ':',
            Self::Fragmented => 'x',
            Self::Allocated => '#',
            Self::Reserved => '-',
            Self::Explicit => 'e',
        }
    }

    /// Its name for people.
    pub fn label(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::FreeReserved => "free, in a prefix reservation",
            Self::Fragmented => "fragmented (holds a /32)",
            Self::Allocated => "allocated prefix",
            Self::Reserved => "reserved by EC2",
            Self::Explicit => "explicit reservation",
        }
    }

    /// Every state, in legend order.
    pub const ALL: [BlockState; 6] = [
        Self::Free,
        Self::FreeReserved,
        Self::Allocated,
        Self::Fragmented,
        Self::Explicit,
        Self::Reserved,
    ];
}

/// Counts over a subnet's blocks and addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Aligned /28s in the subnet.
    pub blocks: u32,
    /// Free, outside reservations.
    pub free: u32,
    /// Free, inside `prefix` reservations.
    pub free_reserved: u32,
    /// Holding a /32.
    pub fragmented: u32,
    /// Delegated prefixes.
    pub allocated: u32,
    /// Holding EC2's reserved addresses.
    pub reserved: u32,
    /// In `explicit` reservations.
    pub explicit: u32,
    /// Free addresses automatic /32 assignment can take without breaking a free block: outside
    /// free blocks, reservations and EC2's reserved addresses.
    pub loose_addresses: u32,
    /// /32 addresses held by ENIs (their primaries included), not counting prefixes.
    pub used_addresses: u32,
}

impl Counts {
    /// Blocks an automatic prefix can still take.
    pub fn free_slots(&self) -> u32 {
        self.free + self.free_reserved
    }
}

/// Who breaks the most /28s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// An ENI id, an instance id, or what an unattached ENI is (`nat_gateway`, its description).
    pub holder: String,
    /// The /28s it holds an address in that hold no prefix.
    pub blocks: u32,
}

/// A subnet's /28 map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetMap {
    /// The subnet.
    pub cidr: Ipv4Net,
    /// One state per aligned /28, lowest first (in JSON a string of [`BlockState::glyph`]s).
    #[serde(with = "glyphs")]
    pub blocks: Vec<BlockState>,
    /// The counts.
    pub counts: Counts,
    /// Loose free addresses in each block (what reserving the block would take from /32 use).
    #[serde(skip)]
    pub loose_by_block: Vec<u8>,
    /// ENIs breaking the most /28s, most first (at most ten).
    pub top_enis: Vec<Breaker>,
    /// Instances (or kinds of unattached ENI) breaking the most, most first (at most ten).
    pub top_instances: Vec<Breaker>,
}

const TOP: usize = 10;

/// The blocks as a string of glyphs in JSON: a /16's 4,096 blocks in 4 KiB.
mod glyphs {
    use super::BlockState;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(b: &[BlockState], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b.iter().map(|x| x.glyph()).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BlockState>, D::Error> {
        String::deserialize(d)?
            .chars()
            .map(|c| {
                BlockState::ALL
                    .iter()
                    .copied()
                    .find(|s| s.glyph() == c)
                    .ok_or_else(|| D::Error::custom(format!("{c:?} is not a block state")))
            })
            .collect()
    }
}

fn top(counts: BTreeMap<String, BTreeSet<u32>>) -> Vec<Breaker> {
    let mut v: Vec<Breaker> = counts
        .into_iter()
        .map(|(holder, b)| Breaker {
            holder,
            blocks: b.len() as u32,
        })
        .collect();
    v.sort_by(|a, b| b.blocks.cmp(&a.blocks).then(a.holder.cmp(&b.holder)));
    v.truncate(TOP);
    v
}

fn holder_of_unattached(e: &EniRecord) -> String {
    if e.interface_type != "interface" {
        e.interface_type.clone()
    } else if e.description.is_empty() {
        format!("{} (unattached)", e.id)
    } else {
        e.description.clone()
    }
}

impl SubnetMap {
    /// The map of subnet `cidr` from the ENIs in it and its reservations. Addresses and
    /// prefixes outside the subnet are ignored.
    pub fn build(cidr: Ipv4Net, enis: &[EniRecord], reservations: &[ReservationRecord]) -> Self {
        let cidr = cidr.trunc();
        let base = u32::from(cidr.network());
        let size = 1u64 << (32 - cidr.prefix_len());
        let nblocks = (size / 16).max(1) as u32;
        let index =
            |a: Ipv4Addr| -> Option<u32> { cidr.contains(&a).then(|| (u32::from(a) - base) / 16) };
        let mut allocated = BTreeSet::new();
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut holders: BTreeMap<u32, Vec<&EniRecord>> = BTreeMap::new();
        for e in enis {
            for p in &e.prefixes {
                if let Some(i) = index(p.network()) {
                    allocated.insert(i);
                }
            }
            for a in &e.addresses {
                if let Some(i) = index(*a) {
                    used.insert(*a);
                    holders.entry(i).or_default().push(e);
                }
            }
        }
        let in_kind = |kind: ReservationType| -> Vec<Ipv4Net> {
            reservations
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.cidr)
                .collect()
        };
        let (prefix_res, explicit_res) = (
            in_kind(ReservationType::Prefix),
            in_kind(ReservationType::Explicit),
        );
        let ec2_reserved = |a: u32| a < 4 || u64::from(a) == size - 1;
        let mut blocks = Vec::with_capacity(nblocks as usize);
        let mut loose_by_block = vec![0u8; nblocks as usize];
        let mut counts = Counts {
            blocks: nblocks,
            ..Counts::default()
        };
        for i in 0..nblocks {
            let start = base + i * 16;
            let net = Ipv4Net::new(Ipv4Addr::from(start), 28).expect("28 is valid");
            let overlaps = |rs: &[Ipv4Net]| rs.iter().any(|r| r.contains(&net) || net.contains(r));
            let has_reserved = (0..16u32).any(|k| ec2_reserved(i * 16 + k));
            let state = if allocated.contains(&i) {
                BlockState::Allocated
            } else if has_reserved || size < 16 {
                BlockState::Reserved
            } else if overlaps(&explicit_res) {
                BlockState::Explicit
            } else if holders.contains_key(&i) {
                BlockState::Fragmented
            } else if prefix_res.iter().any(|r| r.contains(&net)) {
                BlockState::FreeReserved
            } else {
                BlockState::Free
            };
            match state {
                BlockState::Free => counts.free += 1,
                BlockState::FreeReserved => counts.free_reserved += 1,
                BlockState::Fragmented => counts.fragmented += 1,
                BlockState::Allocated => counts.allocated += 1,
                BlockState::Reserved => counts.reserved += 1,
                BlockState::Explicit => counts.explicit += 1,
            }
            if matches!(state, BlockState::Fragmented | BlockState::Reserved) {
                for k in 0..16u32 {
                    let off = i * 16 + k;
                    let a = Ipv4Addr::from(base + off);
                    let in_res = prefix_res
                        .iter()
                        .chain(explicit_res.iter())
                        .any(|r| r.contains(&a));
                    if u64::from(off) < size && !ec2_reserved(off) && !used.contains(&a) && !in_res
                    {
                        counts.loose_addresses += 1;
                        loose_by_block[i as usize] += 1;
                    }
                }
            }
            blocks.push(state);
        }
        counts.used_addresses = used.len() as u32;
        let mut by_eni: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let mut by_instance: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for (i, es) in &holders {
            if blocks[*i as usize] != BlockState::Fragmented {
                continue;
            }
            for e in es {
                by_eni.entry(e.id.to_string()).or_default().insert(*i);
                let who = match &e.instance {
                    Some(inst) => inst.to_string(),
                    None => holder_of_unattached(e),
                };
                by_instance.entry(who).or_default().insert(*i);
            }
        }
        Self {
            cidr,
            blocks,
            counts,
            loose_by_block,
            top_enis: top(by_eni),
            top_instances: top(by_instance),
        }
    }

    /// The /28 at block index `i`.
    pub fn block(&self, i: usize) -> Prefix28 {
        let a = u32::from(self.cidr.network()) + 16 * i as u32;
        Prefix28::new(Ipv4Addr::from(a)).expect("aligned")
    }

    /// The indexes of blocks in `state`.
    pub fn indexes(&self, state: BlockState) -> impl Iterator<Item = usize> + '_ {
        self.blocks
            .iter()
            .enumerate()
            .filter(move |(_, s)| **s == state)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{EniId, InstanceId};
    use proptest::prelude::*;

    pub(crate) fn eni(
        id: &str,
        addresses: &[&str],
        prefixes: &[&str],
        instance: Option<&str>,
    ) -> EniRecord {
        EniRecord {
            id: id.parse::<EniId>().expect("a valid ENI id"),
            subnet: "subnet-1".parse().expect("valid"),
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("an address"))
                .collect(),
            prefixes: prefixes.iter().map(|p| p.parse().expect("a /28")).collect(),
            instance: instance.map(|i| i.parse::<InstanceId>().expect("an instance id")),
            interface_type: "interface".into(),
            requester_managed: false,
            description: String::new(),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_fresh_slash_24_has_fourteen_free_blocks_and_27_loose_addresses() {
        let m = SubnetMap::build(net("10.0.0.0/24"), &[], &[]);
        assert_eq!(m.counts.blocks, 16);
        assert_eq!(m.counts.reserved, 2);
        assert_eq!(m.counts.free, 14);
        // .4–.15 in the first block, .240–.254 in the last.
        assert_eq!(m.counts.loose_addresses, 12 + 15);
        assert_eq!(m.blocks[0], BlockState::Reserved);
        assert_eq!(m.blocks[15], BlockState::Reserved);
    }

    #[test]
    fn states_follow_their_precedence() {
        let enis = vec![
            eni(
                "eni-1",
                &["10.0.0.4", "10.0.0.20"],
                &["10.0.0.32/28"],
                Some("i-1"),
            ),
            eni("eni-2", &["10.0.0.21", "10.0.0.100"], &[], Some("i-1")),
            eni("eni-3", &["10.0.0.200"], &[], None),
        ];
        let res = vec![
            ReservationRecord {
                id: "scr-1".into(),
                cidr: net("10.0.0.64/27"),
                kind: ReservationType::Prefix,
            },
            ReservationRecord {
                id: "scr-2".into(),
                cidr: net("10.0.0.128/30"),
                kind: ReservationType::Explicit,
            },
        ];
        let m = SubnetMap::build(net("10.0.0.0/24"), &enis, &res);
        use BlockState::*;
        assert_eq!(
            m.blocks,
            vec![
                Reserved,
                Fragmented,
                Allocated,
                Free,
                FreeReserved,
                FreeReserved,
                Fragmented,
                Free,
                Explicit,
                Free,
                Free,
                Free,
                Fragmented,
                Free,
                Free,
                Reserved
            ]
        );
        assert_eq!(m.counts.free_slots(), 9);
        assert_eq!(m.counts.used_addresses, 5);
        // Block 1 holds two ENIs' addresses; eni-2 breaks blocks 1 and 6.
        assert_eq!(
            m.top_enis[0],
            Breaker {
                holder: "eni-2".into(),
                blocks: 2
            }
        );
        assert_eq!(
            m.top_instances[0],
            Breaker {
                holder: "i-1".into(),
                blocks: 2
            }
        );
        assert!(
            m.top_instances
                .iter()
                .any(|b| b.holder == "eni-3 (unattached)")
        );
        // Loose: first block 12 − .4 = 11, block 1 16 − 2, block 6 15, block 12 15, last 15.
        assert_eq!(m.counts.loose_addresses, 11 + 14 + 15 + 15 + 15);
    }

    proptest! {
        #[test]
        fn every_block_is_counted_once_and_free_blocks_are_wholly_free(
            len in 20u8..=28,
            addrs in proptest::collection::vec(0u32..4096, 0..40),
            prefix_blocks in proptest::collection::vec(0u32..256, 0..10),
        ) {
            let cidr = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), len).unwrap();
            let size = 1u32 << (32 - len);
            let used: Vec<String> = addrs.iter().map(|a| Ipv4Addr::from(0x0a00_0000 + a % size).to_string()).collect();
            let nb = (size / 16).max(1);
            let prefixes: Vec<String> = prefix_blocks.iter().map(|b| format!("{}/28", Ipv4Addr::from(0x0a00_0000 + (b % nb) * 16))).collect();
            let used_ref: Vec<&str> = used.iter().map(String::as_str).collect();
            let pre_ref: Vec<&str> = prefixes.iter().map(String::as_str).collect();
            let enis = vec![eni("eni-1", &used_ref, &pre_ref, None)];
            let m = SubnetMap::build(cidr, &enis, &[]);
            let c = m.counts;
            prop_assert_eq!(c.free + c.free_reserved + c.fragmented + c.allocated + c.reserved + c.explicit, c.blocks);
            prop_assert_eq!(m.blocks.len() as u32, nb);
            for i in m.indexes(BlockState::Free) {
                let b = m.block(i);
                for a in &used { let a: Ipv4Addr = a.parse().unwrap(); prop_assert!(!b.contains(a)); }
                prop_assert!(!prefixes.contains(&b.to_string()));
            }
            // Loose addresses never exceed what the non-free blocks could hold.
            prop_assert!(c.loose_addresses <= 16 * (c.fragmented + c.reserved));
        }
    }
}
