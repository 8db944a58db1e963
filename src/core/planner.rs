//! The warm-pool planner: a pure function from (pool snapshot, targets) to a plan.
//!
//! Semantics follow the VPC CNI's env vars, with two of its defects fixed:
//! * cooling addresses are *not* available (its #2896: under churn its pool never grows);
//! * MINIMUM_IP_TARGET is only a floor on the total and never stops WARM_PREFIX_TARGET's growth
//!   (its #3685: M set with W unset freezes the pool at ⌈M/16⌉ prefixes).
//!
//! Notation: T addresses in attached blocks, A assigned, C cooling, P pending ADDs (waiting for
//! an address), free = T − A − C, W = WARM_IP_TARGET, WPT = WARM_PREFIX_TARGET,
//! M = MINIMUM_IP_TARGET, E = WARM_ENI_TARGET, S = slots per ENI.
//!
//! Prefix mode:
//! * W > 0: keep W free addresses after serving P: grow ⌈max(0, A + C + P + W − T) / 16⌉.
//! * W = 0: keep WPT wholly free prefixes after serving P, where P is served first from the free
//!   addresses of partly used prefixes (and free secondary addresses), then from free prefixes.
//! * M: hold at least ⌈M / 16⌉ prefixes; a floor that adds to, never replaces, the rules above.
//! * W = WPT = M = 0: no warm pool; grow only for pending ADDs.
//! * No growth once T ≥ max pods + C.
//! * Growth goes to existing ENIs with free slots (primary first, then by device index), then to
//!   new ENIs, within max ENIs; the rest is reported as "at capacity".
//! * Release (only when not growing): wholly free prefixes (nothing assigned or cooling), newest
//!   ENI first, never below M, W or WPT. Free secondary addresses left from a fallback go too.
//!   A non-primary ENI left with nothing is released.
//!
//! Secondary-IP mode (prefix delegation off, or the fallback) counts single addresses:
//! * W or M set: keep W free after P and at least M in total; release the excess.
//! * otherwise WARM_ENI_TARGET: keep E × S free addresses, growing by whole ENIs' worth as the
//!   VPC CNI does (fill one ENI's free slots at a time, then create full ENIs), and release only
//!   whole, wholly free, non-primary ENIs when at least S addresses are over the target, so that
//!   a grow and a release never chase each other.

use serde::{Deserialize, Serialize};

use super::config::{Mode, Targets};
use super::types::{EniId, Prefix28};

const P16: u64 = Prefix28::SIZE as u64;

/// Why a snapshot cannot be planned for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A field of the snapshot is out of range or contradicts another.
    #[error("invalid pool snapshot: {field}: {why}")]
    InvalidSnapshot {
        /// JSON path of the field, e.g. `enis[0].prefixes[1].assigned`.
        field: String,
        /// What is wrong.
        why: String,
    },
}

/// The instance's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// ENIs the instance type allows (MAX_ENI may lower it further).
    pub max_enis: u32,
    /// Address slots per ENI for prefixes and secondary addresses: Ipv4AddressesPerInterface − 1.
    pub slots_per_eni: u32,
    /// Pods the node may run (MAX_PODS); growth stops there.
    pub max_pods: u32,
}

/// One prefix in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixSnapshot {
    /// The prefix.
    pub cidr: Prefix28,
    /// Addresses held by pods.
    pub assigned: u32,
    /// Addresses in cooldown.
    pub cooling: u32,
}

/// An ENI's secondary addresses in a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondarySnapshot {
    /// Held by pods.
    pub assigned: u32,
    /// In cooldown.
    pub cooling: u32,
    /// Neither.
    pub free: u32,
}

impl SecondarySnapshot {
    fn total(&self) -> u64 {
        u64::from(self.assigned) + u64::from(self.cooling) + u64::from(self.free)
    }
}

/// One ENI in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EniSnapshot {
    /// The ENI.
    pub id: EniId,
    /// Its device index.
    pub device_index: u32,
    /// Whether it is the primary ENI (never released).
    #[serde(default)]
    pub primary: bool,
    /// Its prefixes.
    #[serde(default)]
    pub prefixes: Vec<PrefixSnapshot>,
    /// Its secondary addresses.
    #[serde(default)]
    pub secondary_ips: SecondarySnapshot,
}

impl EniSnapshot {
    fn used_slots(&self) -> u64 {
        self.prefixes.len() as u64 + self.secondary_ips.total()
    }
}

/// The pool as the planner sees it; `/v1/pool` serves this shape and `prefixd plan` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSnapshot {
    /// Instance limits.
    pub limits: Limits,
    /// ADD requests waiting for an address.
    #[serde(default)]
    pub pending: u32,
    /// The ENIs.
    pub enis: Vec<EniSnapshot>,
}

impl PoolSnapshot {
    /// Checks ranges and consistency; errors name the field.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |field: String, why: String| Err(PlanError::InvalidSnapshot { field, why });
        if self.limits.max_enis == 0 {
            return bad("limits.max_enis".into(), "must be at least 1".into());
        }
        if self.limits.slots_per_eni == 0 {
            return bad(
                "limits.slots_per_eni".into(),
                "must be at least 1 (Ipv4AddressesPerInterface − 1)".into(),
            );
        }
        let mut primary = None;
        for (i, e) in self.enis.iter().enumerate() {
            for (j, o) in self.enis[..i].iter().enumerate() {
                if o.id == e.id {
                    return bad(
                        format!("enis[{i}].id"),
                        format!("{} repeats enis[{j}]", e.id),
                    );
                }
                if o.device_index == e.device_index {
                    return bad(
                        format!("enis[{i}].device_index"),
                        format!("{} is also enis[{j}]'s", e.device_index),
                    );
                }
            }
            if e.primary {
                if let Some(j) = primary {
                    return bad(
                        format!("enis[{i}].primary"),
                        format!("enis[{j}] is already the primary ENI"),
                    );
                }
                primary = Some(i);
            }
            if e.used_slots() > u64::from(self.limits.slots_per_eni) {
                return bad(
                    format!("enis[{i}]"),
                    format!(
                        "uses {} slots, more than limits.slots_per_eni = {}",
                        e.used_slots(),
                        self.limits.slots_per_eni
                    ),
                );
            }
            for (k, p) in e.prefixes.iter().enumerate() {
                if u64::from(p.assigned) + u64::from(p.cooling) > P16 {
                    return bad(
                        format!("enis[{i}].prefixes[{k}]"),
                        format!(
                            "assigned {} + cooling {} is more than the 16 addresses of a /28",
                            p.assigned, p.cooling
                        ),
                    );
                }
                let dup = self.enis[..=i]
                    .iter()
                    .flat_map(|e| e.prefixes.iter())
                    .filter(|q| q.cidr == p.cidr)
                    .count();
                if dup > 1 {
                    return bad(
                        format!("enis[{i}].prefixes[{k}].cidr"),
                        format!("{} appears more than once", p.cidr),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Prefixes or addresses to add to an existing ENI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignStep {
    /// The ENI.
    pub eni: EniId,
    /// Prefixes to assign (one AssignPrivateIpAddresses call with Ipv4PrefixCount).
    pub prefixes: u32,
    /// Secondary addresses to assign (SecondaryPrivateIpAddressCount).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secondary_ips: u32,
}

/// A new ENI and what it is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateStep {
    /// Prefixes in the CreateNetworkInterface call.
    pub prefixes: u32,
    /// Secondary addresses in the call.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secondary_ips: u32,
}

/// Free secondary addresses to unassign from an ENI (the agent picks which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseIpsStep {
    /// The ENI.
    pub eni: EniId,
    /// How many free secondary addresses.
    pub count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What to change in EC2. Empty lists mean nothing to do of that kind.
///
/// An ENI in `release_enis` is detached and deleted; its prefixes, listed in
/// `release_prefixes`, go with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Growth on existing ENIs.
    pub assign: Vec<AssignStep>,
    /// New ENIs.
    pub create_enis: Vec<CreateStep>,
    /// Wholly free prefixes to unassign.
    pub release_prefixes: Vec<Prefix28>,
    /// Free secondary addresses to unassign.
    #[serde(default)]
    pub release_secondary_ips: Vec<ReleaseIpsStep>,
    /// ENIs to detach and delete.
    pub release_enis: Vec<EniId>,
    /// True when demand could not be met within max ENIs and slots.
    #[serde(default)]
    pub at_capacity: bool,
    /// Why, for a human.
    pub reason: String,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.assign.is_empty()
            && self.create_enis.is_empty()
            && self.release_prefixes.is_empty()
            && self.release_secondary_ips.is_empty()
            && self.release_enis.is_empty()
    }

    /// Prefixes the plan adds, on existing and new ENIs.
    pub fn prefixes_added(&self) -> u32 {
        self.assign.iter().map(|a| a.prefixes).sum::<u32>()
            + self.create_enis.iter().map(|c| c.prefixes).sum::<u32>()
    }

    /// Secondary addresses the plan adds.
    pub fn secondary_ips_added(&self) -> u32 {
        self.assign.iter().map(|a| a.secondary_ips).sum::<u32>()
            + self
                .create_enis
                .iter()
                .map(|c| c.secondary_ips)
                .sum::<u32>()
    }
}

/// Totals over a snapshot.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    t: u64,
    a: u64,
    c: u64,
    free: u64,
    prefixes: u64,
    free_prefixes: u64,
    secondary_free: u64,
}

fn totals(s: &PoolSnapshot) -> Totals {
    let mut t = Totals::default();
    for e in &s.enis {
        for p in &e.prefixes {
            t.t += P16;
            t.a += u64::from(p.assigned);
            t.c += u64::from(p.cooling);
            t.prefixes += 1;
            if p.assigned == 0 && p.cooling == 0 {
                t.free_prefixes += 1;
            }
        }
        let s = e.secondary_ips;
        t.t += s.total();
        t.a += u64::from(s.assigned);
        t.c += u64::from(s.cooling);
        t.secondary_free += u64::from(s.free);
    }
    t.free = sat(sat(t.t, t.a), t.c);
    t
}

fn sat(a: u64, b: u64) -> u64 {
    a.saturating_sub(b)
}

fn ceil16(n: u64) -> u64 {
    n.div_ceil(P16)
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// ENIs in growth order: the primary first, then by device index.
fn growth_order(s: &PoolSnapshot) -> Vec<&EniSnapshot> {
    let mut v: Vec<&EniSnapshot> = s.enis.iter().collect();
    v.sort_by_key(|e| (!e.primary, e.device_index));
    v
}

/// ENIs in release order: the newest (highest device index) first, the primary last.
fn release_order(s: &PoolSnapshot) -> Vec<&EniSnapshot> {
    let mut v = growth_order(s);
    v.reverse();
    v
}

/// Plans the next step for `snapshot` under `targets` in `mode`.
///
/// The snapshot must be valid ([`PoolSnapshot::validate`]); a plan is still made for an invalid
/// one, with saturating arithmetic, but it may not be useful.
pub fn plan(snapshot: &PoolSnapshot, targets: &Targets, mode: Mode) -> Plan {
    match mode {
        Mode::Prefix => plan_prefixes(snapshot, targets),
        Mode::SecondaryIp => plan_secondary(snapshot, targets),
    }
}

struct Capacity {
    max_enis: u64,
    slots: u64,
}

fn capacity(s: &PoolSnapshot, t: &Targets) -> Capacity {
    let mut max_enis = u64::from(s.limits.max_enis);
    if let Some(m) = t.max_eni {
        max_enis = max_enis.min(u64::from(m));
    }
    Capacity {
        max_enis,
        slots: u64::from(s.limits.slots_per_eni),
    }
}

/// Spreads `want` units (prefixes or addresses) over free slots, then new ENIs. With
/// `whole_enis`, each ENI touched is filled completely (WARM_ENI_TARGET's batching).
/// Returns (assign, create, units placed).
fn distribute(
    s: &PoolSnapshot,
    cap: &Capacity,
    want: u64,
    whole_enis: bool,
    mut step: impl FnMut(u32) -> (u32, u32),
) -> (Vec<AssignStep>, Vec<CreateStep>, u64) {
    let mut remaining = want;
    let mut assign = Vec::new();
    let mut create = Vec::new();
    for e in growth_order(s) {
        if remaining == 0 {
            break;
        }
        let free_slots = sat(cap.slots, e.used_slots());
        let take = if whole_enis {
            free_slots
        } else {
            free_slots.min(remaining)
        };
        if take > 0 {
            let (prefixes, secondary_ips) = step(to_u32(take));
            assign.push(AssignStep {
                eni: e.id.clone(),
                prefixes,
                secondary_ips,
            });
            remaining = sat(remaining, take);
        }
    }
    let mut enis = s.enis.len() as u64;
    while remaining > 0 && enis < cap.max_enis {
        let take = if whole_enis {
            cap.slots
        } else {
            cap.slots.min(remaining)
        };
        let (prefixes, secondary_ips) = step(to_u32(take));
        create.push(CreateStep {
            prefixes,
            secondary_ips,
        });
        remaining = sat(remaining, take);
        enis += 1;
    }
    let placed = sat(want, remaining);
    (assign, create, placed)
}

/// Turns a count of units into (prefixes, secondary addresses).
type UnitStep = fn(u32) -> (u32, u32);

/// A growth plan for `grow` units (prefixes, or secondary addresses), `why` so far.
fn grow_plan(
    s: &PoolSnapshot,
    cap: &Capacity,
    grow: u64,
    whole_enis: bool,
    mode: Mode,
    mut why: Vec<String>,
) -> Plan {
    let (unit, step): (&str, UnitStep) = match mode {
        Mode::Prefix => ("prefixes", |n| (n, 0)),
        Mode::SecondaryIp => ("addresses", |n| (0, n)),
    };
    let (assign, create_enis, placed) = distribute(s, cap, grow, whole_enis, step);
    let mut plan = Plan {
        assign,
        create_enis,
        ..Plan::default()
    };
    let added = match mode {
        Mode::Prefix => placed,
        Mode::SecondaryIp => u64::from(plan.secondary_ips_added()),
    };
    why.insert(
        0,
        match mode {
            Mode::Prefix => format!("grow {added} prefixes"),
            Mode::SecondaryIp => format!("grow {added} secondary addresses"),
        },
    );
    if placed < grow {
        plan.at_capacity = true;
        why.push(format!(
            "at capacity: {} more {unit} wanted, but {} ENIs × {} slots are in use (max ENIs {})",
            grow - placed,
            s.enis.len(),
            cap.slots,
            cap.max_enis
        ));
    }
    plan.reason = why.join("; ");
    plan
}

fn plan_prefixes(s: &PoolSnapshot, t: &Targets) -> Plan {
    let tot = totals(s);
    let cap = capacity(s, t);
    let p = u64::from(s.pending);
    let w = u64::from(t.warm_ip_target);
    let wpt = u64::from(t.warm_prefix_target);
    let min_prefixes = ceil16(u64::from(t.minimum_ip_target));
    let partial_free = sat(tot.free, tot.free_prefixes * P16);
    // Whole free prefixes that the pending ADDs will consume once partly used ones are full.
    let pending_prefixes = ceil16(sat(p, partial_free));
    let mut why = Vec::new();

    let by_target = if w > 0 {
        let need = tot.a + tot.c + p + w;
        let n = ceil16(sat(need, tot.t));
        if n > 0 {
            why.push(format!(
                "{} free addresses < {p} pending + WARM_IP_TARGET {w}",
                tot.free
            ));
        }
        n
    } else {
        let n = sat(wpt + pending_prefixes, tot.free_prefixes);
        if n > 0 {
            why.push(format!(
                "{} wholly free prefixes, {} needed for {p} pending, < WARM_PREFIX_TARGET {wpt}",
                tot.free_prefixes, pending_prefixes
            ));
        }
        n
    };
    let by_min = sat(min_prefixes, tot.prefixes);
    if by_min > by_target {
        why.push(format!(
            "{} prefixes < {min_prefixes} for MINIMUM_IP_TARGET {}",
            tot.prefixes, t.minimum_ip_target
        ));
    }
    let want = by_target.max(by_min);
    let max_pods = u64::from(s.limits.max_pods);
    let room = sat(max_pods + tot.c, tot.t);
    let grow = want.min(ceil16(room));
    if grow < want {
        why.push(format!(
            "growth capped by max pods {max_pods}: {} addresses of which {} cooling",
            tot.t, tot.c
        ));
    }

    let mut plan = Plan::default();
    if grow > 0 {
        return grow_plan(s, &cap, grow, false, Mode::Prefix, why);
    }
    if want > 0 {
        // Wanted but capped to nothing by max pods.
        plan.reason = why.join("; ");
        return plan;
    }

    // Release: wholly free prefixes, newest ENI first, within every target.
    let by_m = sat(tot.prefixes, min_prefixes);
    let limit = if w > 0 {
        by_m.min(sat(tot.free, p + w) / P16)
    } else {
        by_m.min(sat(tot.free_prefixes, pending_prefixes + wpt))
    };
    let mut released_on: std::collections::HashMap<&EniId, u64> = Default::default();
    let mut k = 0;
    'outer: for e in release_order(s) {
        let mut cidrs: Vec<Prefix28> = e
            .prefixes
            .iter()
            .filter(|p| p.assigned == 0 && p.cooling == 0)
            .map(|p| p.cidr)
            .collect();
        cidrs.sort_unstable_by(|a, b| b.cmp(a));
        for c in cidrs {
            if k == limit {
                break 'outer;
            }
            plan.release_prefixes.push(c);
            *released_on.entry(&e.id).or_default() += 1;
            k += 1;
        }
    }
    // Free secondary addresses left over from a fallback: release what no target needs.
    let margin = if w > 0 {
        sat(tot.free - k * P16, p + w)
    } else {
        sat(partial_free, p)
    };
    let sec_released = margin.min(tot.secondary_free);
    plan.release_secondary_ips = release_free_secondary(s, sec_released);
    let sec_steps = plan.release_secondary_ips.clone();
    release_empty_enis(s, &mut plan, |e| {
        released_on.get(&e.id).copied().unwrap_or(0) == e.prefixes.len() as u64
            && e.secondary_ips.assigned == 0
            && e.secondary_ips.cooling == 0
            && plan_ips(&sec_steps, &e.id) == u64::from(e.secondary_ips.free)
    });

    let mut parts = Vec::new();
    if k > 0 {
        parts.push(format!("release {k} wholly free prefixes"));
    }
    if sec_released > 0 {
        parts.push(format!("release {sec_released} free secondary addresses"));
    }
    if !plan.release_enis.is_empty() {
        parts.push(format!("release {} empty ENIs", plan.release_enis.len()));
    }
    if parts.is_empty() {
        plan.reason = if w > 0 {
            format!(
                "steady: {} free addresses for {p} pending + WARM_IP_TARGET {w}",
                tot.free
            )
        } else {
            format!(
                "steady: {} wholly free prefixes for {p} pending and WARM_PREFIX_TARGET {wpt}",
                tot.free_prefixes
            )
        };
    } else {
        parts.push(if w > 0 {
            format!(
                "keeping ≥ {w} free addresses (WARM_IP_TARGET) and ≥ {min_prefixes} prefixes (MINIMUM_IP_TARGET)"
            )
        } else {
            format!(
                "keeping {wpt} wholly free prefixes (WARM_PREFIX_TARGET) and ≥ {min_prefixes} prefixes (MINIMUM_IP_TARGET)"
            )
        });
        plan.reason = parts.join("; ");
    }
    plan
}

/// `count` free secondary addresses to unassign, taken from the newest ENI first.
fn release_free_secondary(s: &PoolSnapshot, count: u64) -> Vec<ReleaseIpsStep> {
    let mut left = count;
    let mut steps = Vec::new();
    for e in release_order(s) {
        let n = left.min(u64::from(e.secondary_ips.free));
        if n > 0 {
            steps.push(ReleaseIpsStep {
                eni: e.id.clone(),
                count: to_u32(n),
            });
            left -= n;
        }
    }
    steps
}

fn plan_ips(steps: &[ReleaseIpsStep], eni: &EniId) -> u64 {
    steps
        .iter()
        .filter(|s| &s.eni == eni)
        .map(|s| u64::from(s.count))
        .sum()
}

/// Adds every non-primary ENI for which `empty_after` holds to `release_enis`.
fn release_empty_enis(
    s: &PoolSnapshot,
    plan: &mut Plan,
    empty_after: impl Fn(&EniSnapshot) -> bool,
) {
    for e in release_order(s) {
        if !e.primary && empty_after(e) {
            plan.release_enis.push(e.id.clone());
        }
    }
}

fn plan_secondary(s: &PoolSnapshot, t: &Targets) -> Plan {
    let tot = totals(s);
    let cap = capacity(s, t);
    let p = u64::from(s.pending);
    let w = u64::from(t.warm_ip_target);
    let m = u64::from(t.minimum_ip_target);
    let eni_mode = w == 0 && m == 0;
    let e_target = u64::from(t.warm_eni_target) * cap.slots;
    let mut why = Vec::new();

    let short = if eni_mode {
        let n = sat(tot.a + tot.c + p + e_target, tot.t);
        if n > 0 {
            why.push(format!(
                "{} free addresses < {p} pending + WARM_ENI_TARGET {} × {} slots",
                tot.free, t.warm_eni_target, cap.slots
            ));
        }
        n
    } else {
        let by_w = sat(tot.a + tot.c + p + w, tot.t);
        let by_m = sat(m, tot.t);
        if by_w > 0 {
            why.push(format!(
                "{} free addresses < {p} pending + WARM_IP_TARGET {w}",
                tot.free
            ));
        }
        if by_m > by_w {
            why.push(format!("{} addresses < MINIMUM_IP_TARGET {m}", tot.t));
        }
        by_w.max(by_m)
    };
    let max_pods = u64::from(s.limits.max_pods);
    let room = sat(max_pods + tot.c, tot.t);
    let grow = short.min(room);
    if grow < short {
        why.push(format!(
            "growth capped by max pods {max_pods}: {} addresses of which {} cooling",
            tot.t, tot.c
        ));
    }

    let mut plan = Plan::default();
    if grow > 0 {
        return grow_plan(s, &cap, grow, eni_mode, Mode::SecondaryIp, why);
    }
    if short > 0 {
        plan.reason = why.join("; ");
        return plan;
    }

    if eni_mode {
        // Whole, wholly free, non-primary ENIs, while at least one ENI's worth is over target.
        let mut over = sat(tot.free, p + e_target);
        for e in release_order(s) {
            let whole = e.prefixes.is_empty()
                && e.secondary_ips.assigned == 0
                && e.secondary_ips.cooling == 0;
            let size = u64::from(e.secondary_ips.free);
            // Releasing it leaves free ≥ the target, so the next plan does not grow it back.
            if !e.primary && whole && over >= size {
                plan.release_enis.push(e.id.clone());
                over -= size;
            }
        }
        plan.reason = if plan.release_enis.is_empty() {
            format!(
                "steady: {} free addresses for {p} pending + WARM_ENI_TARGET {} × {} slots",
                tot.free, t.warm_eni_target, cap.slots
            )
        } else {
            format!(
                "release {} wholly free ENIs: {} free addresses > {p} pending + WARM_ENI_TARGET {} × {} slots",
                plan.release_enis.len(),
                tot.free,
                t.warm_eni_target,
                cap.slots
            )
        };
        return plan;
    }

    let over = sat(tot.free, p + w).min(sat(tot.t, m));
    let released = over.min(tot.secondary_free);
    plan.release_secondary_ips = release_free_secondary(s, released);
    let steps = plan.release_secondary_ips.clone();
    release_empty_enis(s, &mut plan, |e| {
        e.prefixes.is_empty()
            && e.secondary_ips.assigned == 0
            && e.secondary_ips.cooling == 0
            && plan_ips(&steps, &e.id) == u64::from(e.secondary_ips.free)
    });
    plan.reason = if released == 0 && plan.release_enis.is_empty() {
        format!(
            "steady: {} free addresses for {p} pending + WARM_IP_TARGET {w}, {} ≥ MINIMUM_IP_TARGET {m}",
            tot.free, tot.t
        )
    } else {
        format!(
            "release {released} free secondary addresses and {} empty ENIs: keeping ≥ {w} free (WARM_IP_TARGET) and ≥ {m} in total (MINIMUM_IP_TARGET)",
            plan.release_enis.len()
        )
    };
    plan
}

impl PoolSnapshot {
    /// The snapshot of a datastore (end the cooldowns that are over first, with `expire`).
    pub fn of(ds: &super::datastore::Datastore, limits: Limits, pending: u32) -> Self {
        use super::datastore::BlockId;
        let enis = ds
            .enis()
            .iter()
            .map(|(id, e)| {
                let prefixes = e
                    .prefixes
                    .iter()
                    .map(|p| {
                        let u = ds.usage(BlockId::Prefix(*p)).unwrap_or_default();
                        PrefixSnapshot {
                            cidr: *p,
                            assigned: u.assigned,
                            cooling: u.cooling,
                        }
                    })
                    .collect();
                let mut sec = SecondarySnapshot::default();
                for a in &e.secondary_ips {
                    let u = ds.usage(BlockId::Ip(*a)).unwrap_or_default();
                    sec.assigned += u.assigned;
                    sec.cooling += u.cooling;
                    sec.free += u.free;
                }
                EniSnapshot {
                    id: id.clone(),
                    device_index: e.device_index,
                    primary: e.primary,
                    prefixes,
                    secondary_ips: sec,
                }
            })
            .collect();
        Self {
            limits,
            pending,
            enis,
        }
    }
}
