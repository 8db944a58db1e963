//! How many addresses a node holds under a policy, and how many such nodes a subnet still
//! takes.
//!
//! A node's shape is found the way it comes about, not by a formula: prefixd's own planner
//! ([`crate::core::planner::plan`]) is run on a node that starts with its primary ENI and the
//! given pods waiting, each plan carried out and the pods served, until it plans no more growth;
//! for the VPC CNI, its rule ([`crate::core::vpccni::decide`]) the same way. So MAX_ENI,
//! MAX_PODS, slot limits and every warm target act exactly as on a node. (capacity.md's closed
//! forms agree: WARM_PREFIX_TARGET=w gives ⌈pods/16⌉ + w prefixes; WARM_IP_TARGET W with
//! MINIMUM_IP_TARGET M gives ⌈max(pods + W, M)/16⌉.) The steady state is without churn: under
//! churn prefixd also holds the addresses cooling down (IP_COOLDOWN_PERIOD).
//!
//! Nodes that fit, given a subnet's free /28s `F` (`F_r` of them in `prefix` reservations) and
//! loose free addresses `L` (see [`super::subnet_map`]), for a node of `P` prefixes and `A`
//! single addresses (its ENIs' primaries, plus secondary addresses in /32 mode):
//! * best case: single addresses take loose space first, then break as few free blocks as
//!   possible (16 addresses each): the most `n` with `n·P + ⌈max(0, n·A − L)/16⌉ ≤ F`, those
//!   broken blocks outside reservations;
//! * worst case: every single address breaks a free block outside the reservations while
//!   there is one (EC2 picks an ENI's primary address anywhere free): the most `n` with
//!   `n·P + min(n·A, F − F_r) ≤ F`.

use serde::{Deserialize, Serialize};

use super::subnet_map::{BlockState, Counts, SubnetMap};
use crate::core::config::{Mode, Targets};
use crate::core::planner::{self, EniSnapshot, Limits, PoolSnapshot, PrefixSnapshot};
use crate::core::policy::AgentKind;
use crate::core::{EniId, Prefix28, vpccni};

/// What a node holds in its subnet at its steady state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShape {
    /// Pods it runs (the pods asked for, capped by max pods).
    pub pods: u32,
    /// /28 prefixes.
    pub prefixes: u32,
    /// ENIs (each has a primary address from the subnet).
    pub enis: u32,
    /// Secondary /32 addresses.
    pub secondary_ips: u32,
    /// Pods that got no address (the node is at capacity below the pods asked for).
    pub unserved: u32,
}

impl NodeShape {
    /// Addresses the node takes from the subnet: 16 per prefix, its secondary addresses and
    /// its ENIs' primaries.
    pub fn held(&self) -> u32 {
        16 * self.prefixes + self.secondary_ips + self.enis
    }

    /// Single addresses (not in a prefix) it takes.
    pub fn singles(&self) -> u32 {
        self.secondary_ips + self.enis
    }
}

/// A node's shape could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// The planner kept growing (a bug, or absurd limits).
    #[error("the pool did not settle within {0} steps")]
    NoSteadyState(u32),
}

const MAX_STEPS: u32 = 10_000;

fn fake_prefix(n: u32) -> Prefix28 {
    // Distinct, aligned stand-ins: only their count matters.
    Prefix28::new(std::net::Ipv4Addr::from(0x0a00_0000 + n * 16)).expect("aligned")
}

fn eni_id(i: usize) -> EniId {
    format!("eni-{:x}", i + 1).parse().expect("valid")
}

/// prefixd's steady state for `pods` pods under `targets` in `mode`.
pub fn prefixd_shape(
    limits: Limits,
    targets: &Targets,
    mode: Mode,
    pods: u32,
) -> Result<NodeShape, FitError> {
    let want = pods.min(limits.max_pods);
    let mut s = PoolSnapshot {
        limits,
        pending: want,
        enis: vec![EniSnapshot {
            id: eni_id(0),
            device_index: 0,
            primary: true,
            prefixes: Vec::new(),
            secondary_ips: Default::default(),
        }],
    };
    let mut next_prefix = 0;
    for _ in 0..MAX_STEPS {
        serve(&mut s, want);
        let plan = planner::plan(&s, targets, mode);
        if plan.assign.is_empty() && plan.create_enis.is_empty() {
            return Ok(shape_of(&s, want));
        }
        let mut add = |e: &mut EniSnapshot, prefixes: u32, ips: u32| {
            for _ in 0..prefixes {
                e.prefixes.push(PrefixSnapshot {
                    cidr: fake_prefix(next_prefix),
                    assigned: 0,
                    cooling: 0,
                });
                next_prefix += 1;
            }
            e.secondary_ips.free += ips;
        };
        for a in &plan.assign {
            if let Some(e) = s.enis.iter_mut().find(|e| e.id == a.eni) {
                add(e, a.prefixes, a.secondary_ips);
            }
        }
        for c in &plan.create_enis {
            let i = s.enis.len();
            let mut e = EniSnapshot {
                id: eni_id(i),
                device_index: i as u32,
                primary: false,
                prefixes: Vec::new(),
                secondary_ips: Default::default(),
            };
            add(&mut e, c.prefixes, c.secondary_ips);
            s.enis.push(e);
        }
    }
    Err(FitError::NoSteadyState(MAX_STEPS))
}

/// Serves the pods that fit, packed (partly used blocks first, as the datastore does).
fn serve(s: &mut PoolSnapshot, want: u32) {
    let assigned: u32 = s
        .enis
        .iter()
        .map(|e| e.prefixes.iter().map(|p| p.assigned).sum::<u32>() + e.secondary_ips.assigned)
        .sum();
    let mut left = want.saturating_sub(assigned);
    for e in &mut s.enis {
        for p in &mut e.prefixes {
            let take = left.min(16 - p.assigned);
            p.assigned += take;
            left -= take;
        }
        let take = left.min(e.secondary_ips.free);
        e.secondary_ips.free -= take;
        e.secondary_ips.assigned += take;
        left -= take;
    }
    s.pending = left;
}

fn shape_of(s: &PoolSnapshot, want: u32) -> NodeShape {
    NodeShape {
        pods: want - s.pending,
        prefixes: s.enis.iter().map(|e| e.prefixes.len() as u32).sum(),
        enis: s.enis.len() as u32,
        secondary_ips: s
            .enis
            .iter()
            .map(|e| e.secondary_ips.assigned + e.secondary_ips.free + e.secondary_ips.cooling)
            .sum(),
        unserved: s.pending,
    }
}

/// The VPC CNI's steady state in prefix mode: its rule applied until it holds (no packing,
/// but at a scale-up from nothing no prefix is wholly free, so it settles as if packed).
pub fn vpc_cni_shape(limits: Limits, targets: &Targets, pods: u32) -> Result<NodeShape, FitError> {
    let want = pods.min(limits.max_pods);
    let slots = limits.slots_per_eni.max(1);
    let max_prefixes = slots * limits.max_enis.min(targets.max_eni.unwrap_or(u32::MAX));
    let mut p: u32 = 0;
    for _ in 0..MAX_STEPS {
        let total = 16 * p;
        let assigned = want.min(total);
        let stats = vpccni::Stats {
            total,
            assigned,
            free_prefixes: p - assigned.div_ceil(16),
            prefixes: p,
        };
        match vpccni::decide(&stats, targets, limits.max_pods) {
            vpccni::Decision::Grow(n) if p < max_prefixes => p = (p + n).min(max_prefixes),
            vpccni::Decision::Shrink(n) => p -= n.min(p),
            _ => {
                let served = want.min(16 * p);
                return Ok(NodeShape {
                    pods: served,
                    prefixes: p,
                    enis: p.div_ceil(slots).max(1),
                    secondary_ips: 0,
                    unserved: want - served,
                });
            }
        }
    }
    Err(FitError::NoSteadyState(MAX_STEPS))
}

/// A node's shape under `agent`'s policy.
pub fn shape(
    agent: AgentKind,
    limits: Limits,
    targets: &Targets,
    mode: Mode,
    pods: u32,
) -> Result<NodeShape, FitError> {
    match agent {
        AgentKind::Prefixd => prefixd_shape(limits, targets, mode, pods),
        AgentKind::VpcCni => vpc_cni_shape(limits, targets, pods),
    }
}

/// How many more nodes of a shape a subnet takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fit {
    /// Every single address lands in loose space or packs into as few broken blocks as can be.
    pub best: u32,
    /// Every single address breaks a free /28 while there is one outside the reservations.
    pub worst: u32,
}

/// Nodes of `shape` that still fit in a subnet with `counts`.
pub fn nodes_that_fit(counts: &Counts, shape: &NodeShape) -> Fit {
    let f = u64::from(counts.free_slots());
    let f_out = u64::from(counts.free);
    let l = u64::from(counts.loose_addresses);
    let (p, a) = (u64::from(shape.prefixes), u64::from(shape.singles()));
    let best_ok = |n: u64| {
        let broken = (n * a).saturating_sub(l).div_ceil(16);
        n * p + broken <= f && broken <= f_out
    };
    let worst_ok = |n: u64| n * p + (n * a).min(f_out) <= f && (n * a) <= l + 16 * f_out;
    let limit = f
        .checked_div(p)
        .or_else(|| (l + 16 * f_out).checked_div(a))
        .unwrap_or(0);
    let most = |ok: &dyn Fn(u64) -> bool| {
        // ok is monotone in n: binary search the largest n ≤ limit that fits.
        let (mut lo, mut hi) = (0u64, limit);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if ok(mid) { lo = mid } else { hi = mid - 1 }
        }
        lo as u32
    };
    Fit {
        best: most(&best_ok),
        worst: most(&worst_ok),
    }
}

/// A suggested `prefix` reservation: CIDRs of wholly free blocks (and of the blocks holding
/// EC2's reserved addresses, which are never prefixes anyway) that EC2 would take prefixes
/// from first, so that no new ENI's address can break them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The CIDRs to reserve (`aws ec2 create-subnet-cidr-reservation --reservation-type
    /// prefix --cidr …`), largest first.
    pub cidrs: Vec<ipnet::Ipv4Net>,
    /// Free /28s they hold.
    pub blocks: u32,
    /// Nodes that fit with them in place (best and worst case are then the same).
    pub nodes: u32,
    /// Free addresses left outside them for /32 use.
    pub addresses_outside: u32,
}

/// At most this many CIDRs in a suggestion.
pub const MAX_SUGGESTED_CIDRS: usize = 8;

/// The reservation that lets the most nodes of `shape` take their prefixes while keeping
/// `headroom` free addresses, beyond the new nodes' own single addresses, outside it for the
/// subnet's /32 users. `None` when it would not fit more nodes than the worst case without it.
pub fn suggest_reservation(
    map: &SubnetMap,
    shape: &NodeShape,
    headroom: u32,
) -> Option<Suggestion> {
    let counts = map.counts;
    let (p, a) = (shape.prefixes, shape.singles());
    if p == 0 {
        return None;
    }
    let attempt = |n: u32| -> Option<Suggestion> {
        let need = (n * p).saturating_sub(counts.free_reserved);
        let (cidrs, blocks, lost) = aligned_cover(map, need)?;
        let outside = counts.loose_addresses - lost + 16 * (counts.free - blocks);
        (outside >= n * a + headroom).then_some(Suggestion {
            cidrs,
            blocks,
            nodes: n,
            addresses_outside: outside,
        })
    };
    // Feasibility only gets harder with more nodes: search the largest n that works.
    let (mut lo, mut hi) = (0u32, counts.free_slots() / p);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if attempt(mid).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let s = attempt(lo).filter(|s| !s.cidrs.is_empty())?;
    let without = nodes_that_fit(&counts, shape);
    (s.nodes > without.worst).then_some(s)
}

/// Aligned CIDRs holding exactly `need` free blocks where it can, in at most
/// [`MAX_SUGGESTED_CIDRS`]: each time the aligned run (of free blocks and EC2-reserved ones)
/// with the most free blocks that does not overshoot what is left, the last one rounded up.
/// Returns the CIDRs (largest first), the free blocks in them and the loose addresses they
/// take from /32 use.
fn aligned_cover(map: &SubnetMap, need: u32) -> Option<(Vec<ipnet::Ipv4Net>, u32, u32)> {
    let n = map.blocks.len();
    let mut taken = vec![false; n];
    let eligible = |i: usize, taken: &[bool]| {
        !taken[i] && matches!(map.blocks[i], BlockState::Free | BlockState::Reserved)
    };
    let max_k = n.trailing_zeros();
    let (mut cidrs, mut got, mut lost) = (Vec::new(), 0u32, 0u32);
    while got < need {
        let left = need - got;
        let last = cidrs.len() + 1 == MAX_SUGGESTED_CIDRS;
        // (free count, start, len) of the best run: the most free blocks ≤ left (or, for the
        // last CIDR, the fewest ≥ left).
        let mut best: Option<(u32, usize, usize)> = None;
        for k in 0..=max_k {
            let len = 1usize << k;
            for start in (0..n).step_by(len) {
                if !(start..start + len).all(|i| eligible(i, &taken)) {
                    continue;
                }
                let free = (start..start + len)
                    .filter(|i| map.blocks[*i] == BlockState::Free)
                    .count() as u32;
                if free == 0 {
                    continue;
                }
                let better = match best {
                    None => !last || free >= left,
                    Some((b, _, _)) if last => free >= left && free < b,
                    Some((b, _, _)) => free <= left && free > b,
                };
                if better && (last || free <= left) {
                    best = Some((free, start, len));
                }
            }
        }
        let (free, start, len) = best?;
        for t in &mut taken[start..start + len] {
            *t = true;
        }
        lost += map.loose_by_block[start..start + len]
            .iter()
            .map(|l| u32::from(*l))
            .sum::<u32>();
        got += free;
        let prefix_len = 28 - len.trailing_zeros() as u8;
        cidrs.push(
            ipnet::Ipv4Net::new(map.block(start).network(), prefix_len).expect("valid length"),
        );
    }
    cidrs.sort_by_key(|c| (c.prefix_len(), c.network()));
    Some((cidrs, got, lost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::subnet_map::SubnetMap;

    fn m5_large() -> Limits {
        Limits {
            max_enis: 3,
            slots_per_eni: 9,
            max_pods: 110,
        }
    }

    fn targets(wpt: u32, wip: u32, mip: u32) -> Targets {
        Targets {
            warm_prefix_target: wpt,
            warm_ip_target: wip,
            minimum_ip_target: mip,
            ..Targets::default()
        }
    }

    #[test]
    fn shapes_follow_the_closed_forms() {
        for pods in [0, 1, 15, 16, 17, 30, 64, 100] {
            for w in 0..3 {
                let s = prefixd_shape(m5_large(), &targets(w, 0, 0), Mode::Prefix, pods).unwrap();
                let want = pods.div_ceil(16) + w;
                // The planner never holds more than max pods' worth (110 → 7 prefixes + cooling).
                assert_eq!(
                    s.prefixes,
                    want.min(7).max(pods.div_ceil(16)),
                    "pods {pods} wpt {w}"
                );
                assert_eq!(s.pods, pods.min(110));
            }
            for (wip, mip) in [(4, 0), (8, 32), (0, 40)] {
                let s =
                    prefixd_shape(m5_large(), &targets(1, wip, mip), Mode::Prefix, pods).unwrap();
                if wip > 0 {
                    assert_eq!(
                        s.prefixes,
                        (pods + wip).max(mip).div_ceil(16).min(7),
                        "{pods} {wip} {mip}"
                    );
                } else {
                    // MINIMUM_IP_TARGET is only a floor for prefixd: WARM_PREFIX_TARGET still acts.
                    assert_eq!(
                        s.prefixes,
                        (pods.div_ceil(16) + 1).max(mip.div_ceil(16)).min(7)
                    );
                }
            }
        }
    }

    #[test]
    fn the_vpc_cni_freezes_at_the_minimum_3685() {
        let s = vpc_cni_shape(m5_large(), &targets(1, 0, 20), 60).unwrap();
        assert_eq!(s.prefixes, 2, "⌈20/16⌉, whatever the pods need");
        assert_eq!(s.unserved, 28);
        let s = vpc_cni_shape(m5_large(), &targets(1, 0, 0), 30).unwrap();
        assert_eq!(s.prefixes, 3);
        let p = prefixd_shape(m5_large(), &targets(1, 0, 20), Mode::Prefix, 60).unwrap();
        assert_eq!((p.prefixes, p.unserved), (5, 0));
    }

    #[test]
    fn more_enis_when_slots_run_out() {
        let small = Limits {
            max_enis: 3,
            slots_per_eni: 2,
            max_pods: 110,
        };
        let s = prefixd_shape(small, &targets(1, 0, 0), Mode::Prefix, 60).unwrap();
        assert_eq!((s.prefixes, s.enis), (5, 3));
        let s = prefixd_shape(small, &targets(1, 0, 0), Mode::Prefix, 200).unwrap();
        assert_eq!((s.prefixes, s.enis), (6, 3));
        assert!(s.unserved > 0);
    }

    #[test]
    fn capacity_md_worked_example_slash20_m5_large_30_pods() {
        let map = SubnetMap::build("10.0.0.0/20".parse().unwrap(), &[], &[]);
        let s = prefixd_shape(m5_large(), &targets(1, 0, 0), Mode::Prefix, 30).unwrap();
        assert_eq!((s.prefixes, s.enis), (3, 1));
        let f = nodes_that_fit(&map.counts, &s);
        // 254 slots: worst ⌊254/4⌋ = 63; best: 27 loose addresses for the first 27 ENIs, then
        // one broken block per 16 more: 83 × 3 + ⌈56/16⌉ = 253 ≤ 254.
        assert_eq!((f.worst, f.best), (63, 83));
    }

    #[test]
    fn a_reservation_makes_the_worst_case_the_best() {
        let map = SubnetMap::build("10.0.0.0/22".parse().unwrap(), &[], &[]);
        let s = prefixd_shape(m5_large(), &targets(1, 0, 0), Mode::Prefix, 30).unwrap();
        let f = nodes_that_fit(&map.counts, &s);
        assert_eq!((f.worst, f.best), (15, 20));
        let sug = suggest_reservation(&map, &s, 0).unwrap();
        assert!(sug.nodes > f.worst, "{sug:?}");
        assert!(sug.blocks >= sug.nodes * 3);
        assert!(sug.addresses_outside >= sug.nodes);
        // Every suggested CIDR is made of free blocks (and EC2's reserved ones).
        for c in &sug.cidrs {
            for b in c.subnets(28).unwrap() {
                let i = ((u32::from(b.network()) - u32::from(map.cidr.network())) / 16) as usize;
                assert!(matches!(
                    map.blocks[i],
                    BlockState::Free | BlockState::Reserved
                ));
            }
        }
        // With it in place, the worst case is what it promised.
        let mut counts = map.counts;
        counts.free -= sug.blocks;
        counts.free_reserved += sug.blocks;
        counts.loose_addresses = sug.addresses_outside - 16 * counts.free;
        let with = nodes_that_fit(&counts, &s);
        assert!(with.worst >= sug.nodes, "{with:?} {sug:?}");
    }

    #[test]
    fn on_a_fresh_slash20_the_reservation_reaches_the_best_case() {
        let map = SubnetMap::build("10.0.0.0/20".parse().unwrap(), &[], &[]);
        let s = prefixd_shape(m5_large(), &targets(1, 0, 0), Mode::Prefix, 30).unwrap();
        let sug = suggest_reservation(&map, &s, 0).unwrap();
        // 83 × 3 = 249 /28s in six CIDRs (/21 /22 /23 /24 /25 /27), 10.0.0.0/21 taking the
        // first block's 12 loose addresses: 15 + 16 × 5 = 95 left for 83 ENIs.
        assert_eq!(
            (sug.nodes, sug.blocks, sug.cidrs.len()),
            (83, 249, 6),
            "{sug:?}"
        );
        assert_eq!(sug.addresses_outside, 95);
        assert_eq!(
            sug.cidrs[0],
            "10.0.0.0/21".parse::<ipnet::Ipv4Net>().unwrap()
        );
    }
}
