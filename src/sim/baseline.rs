//! The baseline: the VPC CNI's ipamd pool policy in prefix mode, as
//! ../shared/reference/ec2.md describes it from its public code (pkg/ipamd/ipamd.go and its
//! datastore, v1.23). Pure: no tokio, no EC2; the simulator's node loop calls it.
//!
//! Its rules, each kept here on purpose, defects included:
//! * Stats: T = addresses in attached prefixes, A = assigned, avail = T − A (addresses cooling
//!   down count as available: #2896), F = prefixes with no assigned address (cooling-only ones
//!   count as free).
//! * With WARM_IP_TARGET (W) or MINIMUM_IP_TARGET (M) set, they decide alone:
//!   short = max(W − avail, 0, M − T), over = max(min(avail − W, T − M), 0); grow ⌈short / 16⌉
//!   prefixes; release min(F, TP − ⌈(A + W) / 16⌉, TP − ⌈M / 16⌉). With M set and W unset the
//!   pool freezes at ⌈M / 16⌉ prefixes (#3685).
//! * Otherwise (WARM_PREFIX_TARGET = WPT): grow when avail < 16 × WPT (or WPT = 0 and avail = 0)
//!   by the prefixes that make up the gap; release F − WPT when F > WPT.
//! * No growth once T ≥ max pods. One step per 5 s tick; releases at most every 30 s, of
//!   prefixes with no assigned address in no particular order (cooldown not checked); pod
//!   addresses from prefixes in no particular order (no packing).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::core::Prefix28;

/// ⌈x / 16⌉ for x ≥ 0 (0 for negative x).
fn prefixes_for(x: i64) -> i64 {
    (x.max(0) + 15) / 16
}
use crate::core::config::Targets;
use crate::core::rng::XorShift64;

/// ipamd's pool numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// T: addresses in attached prefixes.
    pub total: u32,
    /// A: assigned to pods.
    pub assigned: u32,
    /// F: prefixes with no assigned address.
    pub free_prefixes: u32,
    /// TP: prefixes.
    pub prefixes: u32,
}

/// One tick's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Add this many prefixes.
    Grow(u32),
    /// Release this many free prefixes.
    Shrink(u32),
    /// Nothing to do.
    Steady,
}

/// ipamd's decision for `s` under `t`, with `max_pods` capping growth.
pub fn decide(s: &Stats, t: &Targets, max_pods: u32) -> Decision {
    let (tot, a) = (i64::from(s.total), i64::from(s.assigned));
    let avail = tot - a;
    let (w, m) = (i64::from(t.warm_ip_target), i64::from(t.minimum_ip_target));
    let can_grow = s.total < max_pods;
    if w > 0 || m > 0 {
        let short = (w - avail).max(0).max(m - tot);
        if short > 0 {
            return if can_grow {
                Decision::Grow(prefixes_for(short) as u32)
            } else {
                Decision::Steady
            };
        }
        let over = (avail - w).min(tot - m).max(0);
        if over > 0 {
            let tp = i64::from(s.prefixes);
            let n = i64::from(s.free_prefixes)
                .min(tp - prefixes_for(a + w))
                .min(tp - prefixes_for(m))
                .max(0);
            if n > 0 {
                return Decision::Shrink(n as u32);
            }
        }
        return Decision::Steady;
    }
    let wpt = i64::from(t.warm_prefix_target);
    if avail < 16 * wpt || (wpt == 0 && avail == 0) {
        if !can_grow {
            return Decision::Steady;
        }
        let need = prefixes_for((16 * wpt - avail).max(1));
        return Decision::Grow(need as u32);
    }
    if i64::from(s.free_prefixes) > wpt {
        return Decision::Shrink((i64::from(s.free_prefixes) - wpt) as u32);
    }
    Decision::Steady
}

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
    fn warm_prefix_target_rules() {
        // Empty node, WPT 1: one prefix.
        assert_eq!(decide(&s(0, 0, 0), &t(1, 0, 0), 110), Decision::Grow(1));
        // 16 assigned of 16: avail 0 < 16.
        assert_eq!(decide(&s(16, 16, 0), &t(1, 0, 0), 110), Decision::Grow(1));
        // 20 of 32: avail 12 < 16 → one more.
        assert_eq!(decide(&s(32, 20, 0), &t(1, 0, 0), 110), Decision::Grow(1));
        // Three free prefixes, WPT 1: release two.
        assert_eq!(decide(&s(64, 10, 3), &t(1, 0, 0), 110), Decision::Shrink(2));
        // At max pods: no growth.
        assert_eq!(decide(&s(112, 112, 0), &t(1, 0, 0), 110), Decision::Steady);
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
    fn minimum_without_warm_ip_freezes_3685() {
        // MINIMUM_IP_TARGET 20, WARM_IP_TARGET unset: 2 prefixes, all 32 assigned: no growth.
        assert_eq!(decide(&s(32, 32, 0), &t(1, 0, 20), 110), Decision::Steady);
        assert_eq!(decide(&s(0, 0, 0), &t(1, 0, 20), 110), Decision::Grow(2));
    }

    #[test]
    fn warm_ip_rules() {
        // W 5, 16 of 16 assigned: short 5 → one prefix.
        assert_eq!(decide(&s(16, 16, 0), &t(1, 5, 0), 110), Decision::Grow(1));
        // W 5, M 0, 48 held, 10 assigned, 2 free prefixes: over = 33; release
        // min(2, 3 − ⌈15/16⌉ = 2, 3 − 0) = 2.
        assert_eq!(decide(&s(48, 10, 2), &t(1, 5, 0), 110), Decision::Shrink(2));
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
