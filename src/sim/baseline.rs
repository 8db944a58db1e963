//! The baseline: the VPC CNI's ipamd pool policy in prefix mode, as
//! ../shared/reference/ec2.md describes it from its public code (pkg/ipamd/ipamd.go and its
//! datastore, v1.23). Pure: no tokio, no EC2; the simulator's node loop calls it.
//!
//! Its decision rule is [`crate::core::vpccni`]'s (shared with `prefixd capacity`); kept here,
//! defects included, is how ipamd carries it out: one step per 5 s tick; releases at most
//! every 30 s, of prefixes with no assigned address in no particular order (cooldown not
//! checked); pod addresses from prefixes in no particular order (no packing).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::core::Prefix28;
use crate::core::rng::XorShift64;
pub use crate::core::vpccni::{Decision, Stats, decide};

/// One prefix in ipamd's datastore.
#[derive(Debug, Clone)]
pub struct Block {
    /// The /28.
    pub prefix: Prefix28,
    /// Index into the node's ENIs.
    pub eni: usize,
    used: u16,
    cooling_until_ms: [u64; 16],
}

/// ipamd's datastore for one node: prefixes by ENI, pods, cooldowns. Addresses are taken from
/// a prefix chosen at random among those with a usable address (ipamd walks Go maps, whose
/// order is random), lowest address first within it.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Prefixes.
    pub blocks: Vec<Block>,
    pods: HashMap<u64, (Prefix28, u8)>,
    cooldown_ms: u64,
    rng: XorShift64,
}

impl Pool {
    /// An empty pool; `seed` drives the random choices.
    pub fn new(cooldown_ms: u64, seed: u64) -> Self {
        Self {
            blocks: Vec::new(),
            pods: HashMap::new(),
            cooldown_ms,
            rng: XorShift64::new(seed),
        }
    }

    /// A number in 0..n.
    pub fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    /// Adds prefixes of ENI `eni`.
    pub fn add(&mut self, eni: usize, prefixes: &[Prefix28]) {
        for p in prefixes {
            self.blocks.push(Block {
                prefix: *p,
                eni,
                used: 0,
                cooling_until_ms: [0; 16],
            });
        }
    }

    fn usable(b: &Block, now_ms: u64) -> Option<u8> {
        (0..16u8).find(|i| b.used & (1 << i) == 0 && b.cooling_until_ms[*i as usize] <= now_ms)
    }

    /// An address for `pod`, or `None` (the CNI ADD fails and kubelet retries later).
    pub fn allocate(&mut self, pod: u64, now_ms: u64) -> Option<Ipv4Addr> {
        if let Some((p, i)) = self.pods.get(&pod) {
            return Some(p.addr(*i));
        }
        let candidates: Vec<usize> = (0..self.blocks.len())
            .filter(|b| Self::usable(&self.blocks[*b], now_ms).is_some())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let b = candidates[self.pick(candidates.len())];
        let i = Self::usable(&self.blocks[b], now_ms).expect("a candidate");
        let block = &mut self.blocks[b];
        block.used |= 1 << i;
        self.pods.insert(pod, (block.prefix, i));
        Some(block.prefix.addr(i))
    }

    /// Frees `pod`'s address into cooldown.
    pub fn release(&mut self, pod: u64, now_ms: u64) {
        if let Some((p, i)) = self.pods.remove(&pod)
            && let Some(b) = self.blocks.iter_mut().find(|b| b.prefix == p)
        {
            b.used &= !(1 << i);
            b.cooling_until_ms[i as usize] = now_ms + self.cooldown_ms;
        }
    }

    /// Pods holding an address.
    pub fn assigned(&self) -> u32 {
        self.pods.len() as u32
    }

    /// ipamd's numbers.
    pub fn stats(&self) -> Stats {
        Stats {
            total: 16 * self.blocks.len() as u32,
            assigned: self.pods.len() as u32,
            free_prefixes: self.blocks.iter().filter(|b| b.used == 0).count() as u32,
            prefixes: self.blocks.len() as u32,
        }
    }

    /// Prefixes on ENI `eni`.
    pub fn prefixes_on(&self, eni: usize) -> u32 {
        self.blocks.iter().filter(|b| b.eni == eni).count() as u32
    }

    /// Takes up to `n` prefixes with no assigned address, chosen at random (cooldown not
    /// checked), out of the pool: they are to be unassigned in EC2.
    pub fn take_free(&mut self, n: u32) -> Vec<(usize, Prefix28)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let free: Vec<usize> = (0..self.blocks.len())
                .filter(|b| self.blocks[*b].used == 0)
                .collect();
            if free.is_empty() {
                break;
            }
            let at = free[self.pick(free.len())];
            let b = self.blocks.remove(at);
            out.push((b.eni, b.prefix));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Targets;

    fn t(wpt: u32, wip: u32, mip: u32) -> Targets {
        Targets {
            warm_prefix_target: wpt,
            warm_ip_target: wip,
            minimum_ip_target: mip,
            warm_eni_target: 0,
            max_eni: None,
        }
    }

    fn s(total: u32, assigned: u32, free_prefixes: u32) -> Stats {
        Stats {
            total,
            assigned,
            free_prefixes,
            prefixes: total / 16,
        }
    }

    #[test]
    fn cooling_addresses_count_as_available_2896() {
        // 16 addresses, 4 assigned, 12 cooling: ipamd sees avail 12 ≥ 0 and WPT 0 → steady,
        // although no address can be handed out.
        assert_eq!(decide(&s(16, 4, 0), &t(0, 0, 0), 110), Decision::Steady);
        let mut p = Pool::new(30_000, 1);
        p.add(0, &["10.0.0.0/28".parse().unwrap()]);
        for pod in 0..16 {
            assert!(p.allocate(pod, 0).is_some());
        }
        for pod in 0..12 {
            p.release(pod, 1_000);
        }
        assert_eq!(
            p.allocate(100, 2_000),
            None,
            "cooling addresses are not usable"
        );
        assert_eq!(p.stats(), s(16, 4, 0));
        // After the cooldown they are.
        assert!(p.allocate(100, 31_000).is_some());
    }

    #[test]
    fn addresses_spread_over_prefixes() {
        let mut p = Pool::new(0, 7);
        p.add(
            0,
            &[
                "10.0.0.0/28".parse().unwrap(),
                "10.0.0.16/28".parse().unwrap(),
                "10.0.0.32/28".parse().unwrap(),
            ],
        );
        for pod in 0..6 {
            p.allocate(pod, 0).unwrap();
        }
        // No packing: with 6 pods over 3 prefixes, some land outside the first.
        assert!(p.stats().free_prefixes < 2, "{:?}", p.stats());
        let taken = p.take_free(5);
        assert_eq!(taken.len() as u32 + p.stats().prefixes, 3);
    }
}
