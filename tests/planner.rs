//! Table-driven planner cases: one per rule of the planner's documentation, including the two
//! VPC CNI defects it fixes (#2896, #3685).

use prefixd::core::config::{Mode, Targets};
use prefixd::core::planner::{
    AssignStep, CreateStep, EniSnapshot, Limits, Plan, PoolSnapshot, PrefixSnapshot,
    ReleaseIpsStep, SecondarySnapshot, plan,
};
use prefixd::core::{EniId, Prefix28};

/// One ENI: its prefixes as (assigned, cooling), its secondary addresses (assigned, cooling, free).
struct E(&'static [(u32, u32)], (u32, u32, u32));

fn eni_id(i: usize) -> EniId {
    format!("eni-{}", i + 1).parse().unwrap()
}

fn cidr(eni: usize, k: usize) -> Prefix28 {
    format!("10.0.{}.{}/28", eni, k * 16).parse().unwrap()
}

fn snap(limits: (u32, u32, u32), pending: u32, enis: &[E]) -> PoolSnapshot {
    let s = PoolSnapshot {
        limits: Limits {
            max_enis: limits.0,
            slots_per_eni: limits.1,
            max_pods: limits.2,
        },
        pending,
        enis: enis
            .iter()
            .enumerate()
            .map(|(i, E(prefixes, (sa, sc, sf)))| EniSnapshot {
                id: eni_id(i),
                device_index: i as u32,
                primary: i == 0,
                prefixes: prefixes
                    .iter()
                    .enumerate()
                    .map(|(k, (a, c))| PrefixSnapshot {
                        cidr: cidr(i, k),
                        assigned: *a,
                        cooling: *c,
                    })
                    .collect(),
                secondary_ips: SecondarySnapshot {
                    assigned: *sa,
                    cooling: *sc,
                    free: *sf,
                },
            })
            .collect(),
    };
    s.validate().expect("test snapshot is valid");
    s
}

const M5: (u32, u32, u32) = (3, 9, 110);
const NO_IPS: (u32, u32, u32) = (0, 0, 0);

fn t(wpt: u32, w: u32, m: u32) -> Targets {
    Targets {
        warm_prefix_target: wpt,
        warm_ip_target: w,
        minimum_ip_target: m,
        ..Targets::default()
    }
}

fn assign(eni: usize, prefixes: u32) -> AssignStep {
    AssignStep {
        eni: eni_id(eni),
        prefixes,
        secondary_ips: 0,
    }
}

fn assign_ips(eni: usize, n: u32) -> AssignStep {
    AssignStep {
        eni: eni_id(eni),
        prefixes: 0,
        secondary_ips: n,
    }
}

fn full(n: usize) -> &'static [(u32, u32)] {
    Box::leak(vec![(16, 0); n].into_boxed_slice())
}

struct Case {
    name: &'static str,
    snapshot: PoolSnapshot,
    targets: Targets,
    mode: Mode,
    assign: Vec<AssignStep>,
    create: Vec<CreateStep>,
    release_prefixes: Vec<Prefix28>,
    release_enis: Vec<EniId>,
    release_ips: Vec<ReleaseIpsStep>,
    at_capacity: bool,
    reason_has: &'static str,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            snapshot: snap(M5, 0, &[E(&[], NO_IPS)]),
            targets: Targets::default(),
            mode: Mode::Prefix,
            assign: vec![],
            create: vec![],
            release_prefixes: vec![],
            release_enis: vec![],
            release_ips: vec![],
            at_capacity: false,
            reason_has: "",
        }
    }
}

fn check(c: Case) {
    let p: Plan = plan(&c.snapshot, &c.targets, c.mode);
    assert_eq!(p.assign, c.assign, "{}: assign ({})", c.name, p.reason);
    assert_eq!(p.create_enis, c.create, "{}: create ({})", c.name, p.reason);
    assert_eq!(
        p.release_prefixes, c.release_prefixes,
        "{}: release_prefixes ({})",
        c.name, p.reason
    );
    assert_eq!(
        p.release_enis, c.release_enis,
        "{}: release_enis ({})",
        c.name, p.reason
    );
    assert_eq!(
        p.release_secondary_ips, c.release_ips,
        "{}: release_secondary_ips ({})",
        c.name, p.reason
    );
    assert_eq!(p.at_capacity, c.at_capacity, "{}: at_capacity", c.name);
    assert!(
        p.reason.contains(c.reason_has),
        "{}: reason {:?} lacks {:?}",
        c.name,
        p.reason,
        c.reason_has
    );
    assert!(!p.reason.is_empty(), "{}: empty reason", c.name);
}

#[test]
fn warm_prefix_target() {
    check(Case {
        name: "cold start grows WARM_PREFIX_TARGET prefixes on the primary",
        targets: t(2, 0, 0),
        assign: vec![assign(0, 2)],
        reason_has: "WARM_PREFIX_TARGET 2",
        ..Case::default()
    });
    check(Case {
        name: "one wholly free prefix is steady",
        snapshot: snap(M5, 0, &[E(&[(5, 0), (0, 0)], NO_IPS)]),
        reason_has: "steady",
        ..Case::default()
    });
    check(Case {
        name: "a partly used prefix is not wholly free",
        snapshot: snap(M5, 0, &[E(&[(3, 1)], NO_IPS)]),
        assign: vec![assign(0, 1)],
        ..Case::default()
    });
    check(Case {
        name: "pending ADDs are served from partly used prefixes first, then free ones",
        // 2 free in the partly used prefix, 1 wholly free prefix, 5 pending: 3 spill into the
        // free prefix, so one more is needed to keep WARM_PREFIX_TARGET=1.
        snapshot: snap(M5, 5, &[E(&[(14, 0), (0, 0)], NO_IPS)]),
        assign: vec![assign(0, 1)],
        ..Case::default()
    });
    check(Case {
        name: "pending that fits in partly used prefixes needs no growth",
        snapshot: snap(M5, 2, &[E(&[(14, 0), (0, 0)], NO_IPS)]),
        reason_has: "steady",
        ..Case::default()
    });
}

#[test]
fn cooling_addresses_are_not_available_vpc_cni_2896() {
    check(Case {
        name: "W: 10 assigned + 6 cooling of 16 means 0 free",
        snapshot: snap(M5, 0, &[E(&[(10, 6)], NO_IPS)]),
        targets: t(1, 2, 0),
        assign: vec![assign(0, 1)],
        reason_has: "0 free addresses",
        ..Case::default()
    });
    check(Case {
        name: "WPT: a prefix with only cooling addresses is not wholly free",
        snapshot: snap(M5, 0, &[E(&[(16, 0), (0, 3)], NO_IPS)]),
        assign: vec![assign(0, 1)],
        ..Case::default()
    });
}

#[test]
fn minimum_ip_target_is_only_a_floor_vpc_cni_3685() {
    check(Case {
        name: "M set, W unset: WARM_PREFIX_TARGET still grows a full node",
        snapshot: snap(M5, 0, &[E(&[(16, 0)], NO_IPS)]),
        targets: t(1, 0, 16),
        assign: vec![assign(0, 1)],
        ..Case::default()
    });
    check(Case {
        name: "M holds ⌈M/16⌉ prefixes on a cold node",
        targets: t(0, 0, 40),
        assign: vec![assign(0, 3)],
        reason_has: "MINIMUM_IP_TARGET 40",
        ..Case::default()
    });
    check(Case {
        name: "release never goes below ⌈M/16⌉ prefixes",
        snapshot: snap(M5, 0, &[E(&[(0, 0); 5], NO_IPS)]),
        targets: t(1, 0, 64),
        release_prefixes: vec![cidr(0, 4)],
        ..Case::default()
    });
}

#[test]
fn warm_ip_target() {
    check(Case {
        name: "W with pending: the whole deficit at once",
        snapshot: snap(M5, 20, &[E(&[(16, 0)], NO_IPS)]),
        targets: t(1, 5, 0),
        assign: vec![assign(0, 2)],
        ..Case::default()
    });
    check(Case {
        name: "W set ignores WARM_PREFIX_TARGET",
        snapshot: snap(M5, 0, &[E(&[(3, 0)], NO_IPS)]),
        targets: t(5, 10, 0),
        reason_has: "steady",
        ..Case::default()
    });
    check(Case {
        name: "W: release prefixes beyond W free, never below",
        snapshot: snap(M5, 0, &[E(&[(16, 0), (0, 0), (0, 0), (0, 0)], NO_IPS)]),
        targets: t(1, 20, 0),
        // 48 free; keeping 20 allows one whole prefix to go (32 left), not two (16 < 20).
        release_prefixes: vec![cidr(0, 3)],
        ..Case::default()
    });
}

#[test]
fn growth_order_and_new_enis() {
    check(Case {
        name: "fills the primary's slots first, then the next ENI by device index",
        snapshot: snap(
            (3, 9, 500),
            0,
            &[E(&[(16, 0); 8], NO_IPS), E(&[(16, 0)], NO_IPS)],
        ),
        targets: t(3, 0, 0),
        assign: vec![assign(0, 1), assign(1, 2)],
        ..Case::default()
    });
    check(Case {
        name: "creates an ENI with its prefixes when no slot is left",
        snapshot: snap((3, 9, 500), 0, &[E(full(9), NO_IPS)]),
        targets: t(2, 0, 0),
        create: vec![CreateStep {
            prefixes: 2,
            secondary_ips: 0,
        }],
        ..Case::default()
    });
    check(Case {
        name: "a large deficit spans several new ENIs",
        snapshot: snap((3, 9, 500), 0, &[E(full(9), NO_IPS)]),
        targets: t(12, 0, 0),
        create: vec![
            CreateStep {
                prefixes: 9,
                secondary_ips: 0,
            },
            CreateStep {
                prefixes: 3,
                secondary_ips: 0,
            },
        ],
        ..Case::default()
    });
    check(Case {
        name: "at capacity when max ENIs are full",
        snapshot: snap((2, 9, 500), 0, &[E(full(9), NO_IPS), E(full(9), NO_IPS)]),
        assign: vec![],
        at_capacity: true,
        reason_has: "at capacity",
        ..Case::default()
    });
    check(Case {
        name: "MAX_ENI lowers the instance limit",
        snapshot: snap((3, 9, 500), 0, &[E(full(9), NO_IPS)]),
        targets: Targets {
            max_eni: Some(1),
            ..Targets::default()
        },
        at_capacity: true,
        reason_has: "max ENIs 1",
        ..Case::default()
    });
}

#[test]
fn max_pods_caps_growth() {
    check(Case {
        name: "no growth once T ≥ max pods",
        snapshot: snap(
            (3, 9, 110),
            0,
            &[E(
                &[
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (14, 0),
                ],
                NO_IPS,
            )],
        ),
        reason_has: "capped by max pods 110",
        ..Case::default()
    });
    check(Case {
        name: "cooling addresses raise the cap: T < max pods + C",
        snapshot: snap(
            (3, 9, 110),
            0,
            &[E(
                &[
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (16, 0),
                    (0, 16),
                ],
                NO_IPS,
            )],
        ),
        assign: vec![assign(0, 1)],
        ..Case::default()
    });
}

#[test]
fn release() {
    check(Case {
        name: "wholly free prefixes beyond WPT go, newest ENI first",
        snapshot: snap(
            M5,
            0,
            &[E(&[(5, 0), (0, 0)], NO_IPS), E(&[(3, 0), (0, 0)], NO_IPS)],
        ),
        release_prefixes: vec![cidr(1, 1)],
        ..Case::default()
    });
    check(Case {
        name: "cooling prefixes are never released",
        snapshot: snap(M5, 0, &[E(&[(0, 0), (0, 1), (0, 1)], NO_IPS)]),
        reason_has: "steady",
        ..Case::default()
    });
    check(Case {
        name: "an ENI left empty goes with its prefixes",
        snapshot: snap(M5, 0, &[E(&[(0, 0)], NO_IPS), E(&[(0, 0)], NO_IPS)]),
        release_prefixes: vec![cidr(1, 0)],
        release_enis: vec![eni_id(1)],
        reason_has: "empty ENIs",
        ..Case::default()
    });
    check(Case {
        name: "an empty non-primary ENI is released; the primary never",
        snapshot: snap(M5, 0, &[E(&[(0, 0)], NO_IPS), E(&[], NO_IPS)]),
        release_enis: vec![eni_id(1)],
        ..Case::default()
    });
    check(Case {
        name: "free fallback secondary addresses are released in prefix mode",
        snapshot: snap(M5, 0, &[E(&[(4, 0), (0, 0)], NO_IPS), E(&[], (0, 0, 3))]),
        release_ips: vec![ReleaseIpsStep {
            eni: eni_id(1),
            count: 3,
        }],
        release_enis: vec![eni_id(1)],
        ..Case::default()
    });
}

#[test]
fn zero_targets_grow_only_on_demand() {
    check(Case {
        name: "nothing pending, nothing held",
        targets: t(0, 0, 0),
        reason_has: "steady",
        ..Case::default()
    });
    check(Case {
        name: "one pending ADD on an empty pool",
        snapshot: snap(M5, 1, &[E(&[], NO_IPS)]),
        targets: t(0, 0, 0),
        assign: vec![assign(0, 1)],
        ..Case::default()
    });
    check(Case {
        name: "pending fits in the partly used prefix",
        snapshot: snap(M5, 1, &[E(&[(15, 0)], NO_IPS)]),
        targets: t(0, 0, 0),
        reason_has: "steady",
        ..Case::default()
    });
    check(Case {
        name: "wholly free prefixes are not kept",
        snapshot: snap(M5, 0, &[E(&[(15, 0), (0, 0)], NO_IPS)]),
        targets: t(0, 0, 0),
        release_prefixes: vec![cidr(0, 1)],
        ..Case::default()
    });
}

#[test]
fn secondary_ip_mode() {
    let eni_t = |e: u32| Targets {
        warm_eni_target: e,
        ..t(1, 0, 0)
    };
    check(Case {
        name: "WARM_ENI_TARGET fills the primary's slots on a cold node",
        targets: eni_t(1),
        mode: Mode::SecondaryIp,
        assign: vec![assign_ips(0, 9)],
        ..Case::default()
    });
    check(Case {
        name: "WARM_ENI_TARGET creates a whole ENI when the primary is full",
        snapshot: snap(M5, 0, &[E(&[], (9, 0, 0))]),
        targets: eni_t(1),
        mode: Mode::SecondaryIp,
        create: vec![CreateStep {
            prefixes: 0,
            secondary_ips: 9,
        }],
        ..Case::default()
    });
    check(Case {
        name: "WARM_ENI_TARGET releases whole free ENIs, newest first, keeping one ENI's worth",
        snapshot: snap(
            M5,
            0,
            &[E(&[], (9, 0, 0)), E(&[], (0, 0, 9)), E(&[], (0, 0, 9))],
        ),
        targets: eni_t(1),
        mode: Mode::SecondaryIp,
        release_enis: vec![eni_id(2)],
        ..Case::default()
    });
    check(Case {
        name: "WARM_ENI_TARGET does not release below target (no grow/release flapping)",
        snapshot: snap(
            M5,
            0,
            &[E(&[], (9, 0, 0)), E(&[], (2, 0, 7)), E(&[], (0, 0, 9))],
        ),
        targets: eni_t(1),
        mode: Mode::SecondaryIp,
        reason_has: "steady",
        ..Case::default()
    });
    check(Case {
        name: "WARM_IP_TARGET in /32 units, cooling not available",
        snapshot: snap(M5, 0, &[E(&[], (2, 1, 0))]),
        targets: t(1, 3, 0),
        mode: Mode::SecondaryIp,
        assign: vec![assign_ips(0, 3)],
        ..Case::default()
    });
    check(Case {
        name: "MINIMUM_IP_TARGET spills onto a new ENI with exactly what is missing",
        targets: t(1, 0, 10),
        mode: Mode::SecondaryIp,
        assign: vec![assign_ips(0, 9)],
        create: vec![CreateStep {
            prefixes: 0,
            secondary_ips: 1,
        }],
        ..Case::default()
    });
    check(Case {
        name: "WARM_IP_TARGET releases the excess, newest ENI first",
        snapshot: snap(M5, 0, &[E(&[], (2, 0, 4)), E(&[], (0, 0, 4))]),
        targets: t(1, 3, 0),
        mode: Mode::SecondaryIp,
        release_ips: vec![
            ReleaseIpsStep {
                eni: eni_id(1),
                count: 4,
            },
            ReleaseIpsStep {
                eni: eni_id(0),
                count: 1,
            },
        ],
        release_enis: vec![eni_id(1)],
        ..Case::default()
    });
    check(Case {
        name: "the fallback counts the attached prefixes' free addresses too",
        snapshot: snap(M5, 0, &[E(&[(10, 0)], NO_IPS)]),
        targets: t(1, 3, 0),
        mode: Mode::SecondaryIp,
        reason_has: "steady",
        ..Case::default()
    });
}

#[test]
fn invalid_snapshots_name_the_field() {
    let mut s = snap(M5, 0, &[E(&[(1, 0)], NO_IPS), E(&[], NO_IPS)]);
    s.enis[1].id = s.enis[0].id.clone();
    assert!(s.validate().unwrap_err().to_string().contains("enis[1].id"));

    let mut s = snap(M5, 0, &[E(&[(1, 0)], NO_IPS), E(&[], NO_IPS)]);
    s.enis[1].primary = true;
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("enis[1].primary")
    );

    let mut s = snap(M5, 0, &[E(&[(1, 0)], NO_IPS)]);
    s.enis[0].prefixes[0].cooling = 16;
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("enis[0].prefixes[0]")
    );

    let mut s = snap(M5, 0, &[E(&[(1, 0)], NO_IPS)]);
    s.limits.slots_per_eni = 0;
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("limits.slots_per_eni")
    );

    let mut s = snap(M5, 0, &[E(&[(1, 0)], NO_IPS)]);
    s.enis[0].secondary_ips.free = 9;
    assert!(s.validate().unwrap_err().to_string().contains("slots"));
}
