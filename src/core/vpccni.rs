//! The VPC CNI's ipamd pool rule in prefix mode, as ../shared/reference/ec2.md records it from
//! its public code (pkg/ipamd/ipamd.go, v1.23), defects included: one decision from a node's
//! numbers. Pure; the simulator's baseline ([`crate::sim`]) runs it tick by tick, and
//! `prefixd capacity` finds the steady state it settles a node at.
//!
//! * Stats: T = addresses in attached prefixes, A = assigned, avail = T − A (addresses cooling
//!   down count as available: #2896), F = prefixes with no assigned address.
//! * With WARM_IP_TARGET (W) or MINIMUM_IP_TARGET (M) set, they decide alone:
//!   short = max(W − avail, 0, M − T), over = max(min(avail − W, T − M), 0); grow ⌈short / 16⌉
//!   prefixes; release min(F, TP − ⌈(A + W) / 16⌉, TP − ⌈M / 16⌉). With M set and W unset the
//!   pool freezes at ⌈M / 16⌉ prefixes (#3685).
//! * Otherwise (WARM_PREFIX_TARGET = WPT): grow when avail < 16 × WPT (or WPT = 0 and avail = 0)
//!   by the prefixes that make up the gap; release F − WPT when F > WPT.
//! * No growth once T ≥ max pods.

use super::config::Targets;

/// ⌈x / 16⌉ for x ≥ 0 (0 for negative x).
fn prefixes_for(x: i64) -> i64 {
    (x.max(0) + 15) / 16
}

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
}
