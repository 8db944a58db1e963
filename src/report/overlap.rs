//! The range inventory's collisions, classified, and free candidate ranges. Pure.
//!
//! Ranges are on one of three sides: the cluster's (VPC CIDRs, subnets, pod subnets, the
//! service range), remote (peered VPCs, declared on-premises ranges, routes of the cluster
//! subnets' route tables) or well known (Docker's bridge, link-local). Pairs that overlap are
//! reported when the overlap means something:
//! * cluster × remote, except a route that merely contains a VPC CIDR or subnet (a summary
//!   route: the VPC's more specific local route wins) and a route to an ENI inside the VPC (a
//!   middlebox route, the only kind EC2 allows there);
//! * the service range × the VPC's CIDRs and subnets (EKS requires them apart);
//! * remote × remote, except routes (they lead to the remote ranges);
//! * well known × cluster and × peered or declared ranges.
//!
//! An overlap is *routed* — an error — when an active route of a cluster subnet's table through
//! a peering connection, a transit gateway or a virtual private gateway covers part of it:
//! packets for those addresses leave the VPC (or, for the service range, never get there).
//! Otherwise it is a warning. Default routes (0.0.0.0/0) and routes to internet and NAT
//! gateways are the internet: they neither collide nor make a collision routed. A blackhole
//! route is a finding of its own.

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use super::{Finding, Severity};
use crate::ec2::read::TargetKind;

/// What a range is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RangeKind {
    /// One of the VPC's CIDR blocks.
    VpcCidr,
    /// A subnet of the VPC.
    Subnet,
    /// A subnet pods get addresses from (POD_SUBNET_IDS).
    PodSubnet,
    /// The cluster's service range.
    ServiceRange,
    /// A CIDR of a peered VPC.
    PeerVpc,
    /// A route's destination in a cluster subnet's table.
    Route,
    /// Declared on-premises or other remote range (`--remote FILE`).
    Remote,
    /// A well-known range (Docker's bridge, link-local).
    WellKnown,
}

impl RangeKind {
    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VpcCidr => "vpc-cidr",
            Self::Subnet => "subnet",
            Self::PodSubnet => "pod-subnet",
            Self::ServiceRange => "service-range",
            Self::PeerVpc => "peer-vpc",
            Self::Route => "route",
            Self::Remote => "remote",
            Self::WellKnown => "well-known",
        }
    }

    fn side(self) -> Side {
        match self {
            Self::VpcCidr | Self::Subnet | Self::PodSubnet | Self::ServiceRange => Side::Cluster,
            Self::PeerVpc | Self::Route | Self::Remote => Side::Remote,
            Self::WellKnown => Side::WellKnown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Cluster,
    Remote,
    WellKnown,
}

/// A route behind a [`RangeKind::Route`] range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Its route table.
    pub table: String,
    /// Its target's kind.
    pub target_kind: TargetKind,
    /// Its target.
    pub target: String,
    /// `active` or `blackhole`.
    pub state: String,
    /// The prefix list it came from, when its destination is one.
    pub prefix_list: Option<String>,
}

impl RouteInfo {
    fn leads_out(&self) -> bool {
        self.state == "active"
            && matches!(
                self.target_kind,
                TargetKind::Peering | TargetKind::TransitGateway | TargetKind::VpnGateway
            )
    }

    fn is_internet(&self, dest: &IpNet) -> bool {
        dest.prefix_len() == 0
            || matches!(
                self.target_kind,
                TargetKind::InternetGateway | TargetKind::NatGateway
            )
    }
}

/// One range of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The range.
    pub cidr: IpNet,
    /// What it is.
    pub kind: RangeKind,
    /// Where it came from (the call and the resource), for people.
    pub source: String,
    /// The resource it belongs to (a VPC, subnet, peering, route table...), when one.
    pub owner: Option<String>,
    /// Inferred rather than read (the EKS default service range).
    #[serde(default)]
    pub inferred: bool,
    /// The route, for a route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteInfo>,
}

impl Range {
    /// `cidr kind (source)`.
    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.cidr, self.kind.as_str(), self.source)
    }
}

/// A collision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    /// Error when routed, warning when not.
    pub severity: Severity,
    /// One range.
    pub a: Range,
    /// The other.
    pub b: Range,
    /// Their common part.
    pub overlap: IpNet,
    /// The routes that make it routed (`rtb-…: DEST → TARGET`).
    pub routed_by: Vec<String>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

fn common(a: &IpNet, b: &IpNet) -> IpNet {
    if a.prefix_len() >= b.prefix_len() {
        *a
    } else {
        *b
    }
}

fn route_label(r: &Range) -> String {
    let info = r.route.as_ref().expect("a route range has its route");
    let via = info
        .prefix_list
        .as_ref()
        .map(|p| format!(" (from {p})"))
        .unwrap_or_default();
    format!(
        "{}: {}{via} → {} ({})",
        info.table, r.cidr, info.target, info.state
    )
}

fn worth_reporting(a: &Range, b: &Range) -> bool {
    use RangeKind::*;
    if a.owner.is_some() && a.owner == b.owner && a.kind == b.kind {
        return false;
    }
    let explained_route = |route: &Range, other: &Range| {
        let info = route.route.as_ref();
        let middlebox = info.is_some_and(|i| i.target_kind == TargetKind::Interface)
            && matches!(other.kind, VpcCidr | Subnet | PodSubnet);
        let summary = route.cidr.prefix_len() < other.cidr.prefix_len()
            && route.cidr.contains(&other.cidr)
            && matches!(other.kind, VpcCidr | Subnet | PodSubnet);
        middlebox || summary
    };
    match (a.kind.side(), b.kind.side()) {
        (Side::Cluster, Side::Cluster) => {
            let service = |x: &Range, y: &Range| {
                x.kind == ServiceRange && matches!(y.kind, VpcCidr | Subnet | PodSubnet)
            };
            service(a, b) || service(b, a)
        }
        (Side::Cluster, Side::Remote) => !(b.kind == Route && explained_route(b, a)),
        (Side::Remote, Side::Cluster) => !(a.kind == Route && explained_route(a, b)),
        (Side::Remote, Side::Remote) => a.kind != Route && b.kind != Route,
        (Side::WellKnown, Side::WellKnown) => false,
        (Side::WellKnown, _) => b.kind != Route,
        (_, Side::WellKnown) => a.kind != Route,
    }
}

/// Whether `r` is the route to a peered VPC in the inventory (through that peering, within its
/// CIDRs): the peer's range stands for it.
fn route_to_listed_peer(r: &Range, inventory: &[Range]) -> bool {
    r.route.as_ref().is_some_and(|i| {
        i.target_kind == TargetKind::Peering
            && inventory.iter().any(|p| {
                p.kind == RangeKind::PeerVpc
                    && p.owner.as_deref() == Some(i.target.as_str())
                    && p.cidr.contains(&r.cidr)
            })
    })
}

/// Whether the pair (`sub`, `other`), `sub` a subnet, is already told by its VPC CIDR's pair:
/// `other` covers the whole VPC CIDR that holds the subnet.
fn told_by_vpc(sub: &Range, other: &Range, inventory: &[Range]) -> bool {
    matches!(sub.kind, RangeKind::Subnet | RangeKind::PodSubnet)
        && inventory.iter().any(|v| {
            v.kind == RangeKind::VpcCidr
                && v.cidr.contains(&sub.cidr)
                && other.cidr.contains(&v.cidr)
        })
}

/// Every overlap of `inventory` worth reporting, errors first.
pub fn find(inventory: &[Range]) -> Vec<Overlap> {
    let usable = |r: &Range| {
        r.route
            .as_ref()
            .is_none_or(|i| !i.is_internet(&r.cidr) && i.state == "active")
            && !route_to_listed_peer(r, inventory)
    };
    let out_routes: Vec<&Range> = inventory
        .iter()
        .filter(|r| {
            r.route
                .as_ref()
                .is_some_and(|i| i.leads_out() && !i.is_internet(&r.cidr))
        })
        .collect();
    let mut out = Vec::new();
    for (i, a) in inventory.iter().enumerate() {
        for b in &inventory[i + 1..] {
            if !usable(a)
                || !usable(b)
                || !overlaps(&a.cidr, &b.cidr)
                || !worth_reporting(a, b)
                || told_by_vpc(a, b, inventory)
                || told_by_vpc(b, a, inventory)
            {
                continue;
            }
            let overlap = common(&a.cidr, &b.cidr);
            let routed_by: Vec<String> = out_routes
                .iter()
                .filter(|r| overlaps(&r.cidr, &overlap))
                .map(|r| route_label(r))
                .collect();
            out.push(Overlap {
                severity: if routed_by.is_empty() {
                    Severity::Warning
                } else {
                    Severity::Error
                },
                a: a.clone(),
                b: b.clone(),
                overlap,
                routed_by,
            });
        }
    }
    out.sort_by(|x, y| {
        (x.severity, x.overlap.network(), x.overlap.prefix_len()).cmp(&(
            y.severity,
            y.overlap.network(),
            y.overlap.prefix_len(),
        ))
    });
    out
}

/// A blackhole route of a cluster subnet's table, as a finding.
pub fn blackholes(inventory: &[Range]) -> Vec<Finding> {
    let mut seen = std::collections::BTreeSet::new();
    inventory
        .iter()
        .filter(|r| r.route.as_ref().is_some_and(|i| i.state == "blackhole"))
        .filter(|r| seen.insert(route_label(r)))
        .map(|r| {
            let i = r.route.as_ref().expect("filtered");
            Finding {
                severity: Severity::Warning,
                kind: "blackhole".into(),
                message: format!(
                    "{}: the route to {} leads to {}, which is gone or not active: its packets \
                     are dropped",
                    i.table, r.cidr, i.target
                ),
            }
        })
        .collect()
}

/// The pools free ranges are suggested from: RFC 1918 and the shared address space.
pub const POOLS: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// Free ranges of one size in one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    /// The pool.
    pub pool: Ipv4Net,
    /// How many ranges of the size in it collide with nothing.
    pub free: u64,
    /// The first of them.
    pub first: Vec<Ipv4Net>,
}

/// Aligned ranges of prefix length `len` in each of [`POOLS`] that overlap nothing in
/// `inventory` (the internet's routes aside), the first `count` of each.
pub fn suggest(inventory: &[Range], len: u8, count: usize) -> Vec<Candidates> {
    let mut blocks: Vec<(u64, u64)> = inventory
        .iter()
        .filter(|r| r.route.as_ref().is_none_or(|i| !i.is_internet(&r.cidr)))
        .filter_map(|r| match r.cidr {
            IpNet::V4(n) => Some((
                u64::from(u32::from(n.network())),
                u64::from(u32::from(n.broadcast())),
            )),
            IpNet::V6(_) => None,
        })
        .collect();
    blocks.sort_unstable();
    let size = 1u64 << (32 - u32::from(len));
    POOLS
        .iter()
        .filter_map(|p| p.parse::<Ipv4Net>().ok())
        .filter(|p| p.prefix_len() <= len)
        .map(|pool| {
            let (start, end) = (
                u64::from(u32::from(pool.network())),
                u64::from(u32::from(pool.broadcast())),
            );
            let mut cur = start;
            let mut free = 0u64;
            let mut first = Vec::new();
            while cur + size - 1 <= end {
                let hi = cur + size - 1;
                match blocks.iter().find(|(a, b)| *a <= hi && *b >= cur) {
                    Some((_, b)) => {
                        // Skip past the blocker, to the next aligned start.
                        cur = (b + 1).div_ceil(size) * size;
                    }
                    None => {
                        free += 1;
                        if first.len() < count {
                            first.push(
                                Ipv4Net::new(std::net::Ipv4Addr::from(cur as u32), len)
                                    .expect("valid"),
                            );
                        }
                        cur += size;
                    }
                }
            }
            Candidates { pool, free, first }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(cidr: &str, kind: RangeKind, owner: &str) -> Range {
        Range {
            cidr: cidr.parse().unwrap(),
            kind,
            source: format!("test {owner}"),
            owner: Some(owner.into()),
            inferred: false,
            route: None,
        }
    }

    fn route(cidr: &str, kind: TargetKind, target: &str, state: &str) -> Range {
        Range {
            route: Some(RouteInfo {
                table: "rtb-1".into(),
                target_kind: kind,
                target: target.into(),
                state: state.into(),
                prefix_list: None,
            }),
            ..range(cidr, RangeKind::Route, "rtb-1")
        }
    }

    #[test]
    fn routed_and_unrouted_overlaps_and_what_is_explained() {
        use RangeKind::*;
        let inv = vec![
            range("10.0.0.0/16", VpcCidr, "vpc-1"),
            range("10.0.1.0/24", Subnet, "subnet-1"),
            range("172.20.0.0/16", ServiceRange, "cluster"),
            range("172.20.0.0/16", PeerVpc, "pcx-1"),
            range("192.168.0.0/16", PeerVpc, "pcx-2"),
            range("192.168.8.0/21", Remote, "onprem"),
            range("10.0.0.0/9", Remote, "big"),
            route("172.20.0.0/16", TargetKind::Peering, "pcx-1", "active"),
            route("10.0.0.0/8", TargetKind::TransitGateway, "tgw-1", "active"),
            route("0.0.0.0/0", TargetKind::InternetGateway, "igw-1", "active"),
            route("198.18.0.0/16", TargetKind::Peering, "pcx-9", "blackhole"),
            range("172.17.0.0/16", WellKnown, "docker"),
        ];
        let o = find(&inv);
        let pairs: Vec<(Severity, String, String)> = o
            .iter()
            .map(|x| (x.severity, x.a.cidr.to_string(), x.b.cidr.to_string()))
            .collect();
        // The service range collides with the peer, and a route reaches it: an error, once
        // (the route to the peer is the peer's).
        let service_peer: Vec<&Overlap> = o
            .iter()
            .filter(|x| x.overlap.to_string() == "172.20.0.0/16")
            .collect();
        assert_eq!(service_peer.len(), 1, "{service_peer:?}");
        assert_eq!(service_peer[0].severity, Severity::Error);
        assert_eq!(service_peer[0].b.kind, PeerVpc);
        assert_eq!(
            service_peer[0].routed_by,
            vec!["rtb-1: 172.20.0.0/16 → pcx-1 (active)"]
        );
        // Peer 2 and the declared range collide, with no route: a warning.
        assert!(pairs.contains(&(
            Severity::Warning,
            "192.168.0.0/16".into(),
            "192.168.8.0/21".into()
        )));
        // The subnet in its VPC, the summary route over the VPC, the internet: not reported.
        for (a, b) in [
            ("10.0.0.0/16", "10.0.1.0/24"),
            ("10.0.0.0/16", "10.0.0.0/8"),
        ] {
            assert!(
                !pairs
                    .iter()
                    .any(|(_, x, y)| (x == a && y == b) || (x == b && y == a)),
                "{a} {b}: {pairs:?}"
            );
        }
        assert!(
            !pairs
                .iter()
                .any(|(_, x, y)| x == "0.0.0.0/0" || y == "0.0.0.0/0")
        );
        // A remote range over the whole VPC: told once, for the VPC CIDR, not again for its
        // subnet; routed by the summary route through the transit gateway.
        let big: Vec<&Overlap> = o
            .iter()
            .filter(|x| x.b.cidr.to_string() == "10.0.0.0/9")
            .collect();
        assert_eq!(big.len(), 1, "{big:?}");
        assert_eq!(big[0].a.kind, VpcCidr);
        assert_eq!(big[0].routed_by, vec!["rtb-1: 10.0.0.0/8 → tgw-1 (active)"]);
        assert_eq!(blackholes(&inv).len(), 1);
        // The negative control: without the route, the same collision is only a warning.
        let no_route: Vec<Range> = inv
            .iter()
            .filter(|r| r.cidr.to_string() != "172.20.0.0/16" || r.kind != Route)
            .cloned()
            .collect();
        let o = find(&no_route);
        assert!(
            o.iter()
                .filter(|x| x.overlap.to_string() == "172.20.0.0/16")
                .all(|x| x.severity == Severity::Warning)
        );
    }

    #[test]
    fn suggestions_skip_what_is_used() {
        let inv = vec![
            range("10.0.0.0/16", RangeKind::VpcCidr, "vpc-1"),
            range("10.1.128.0/17", RangeKind::PeerVpc, "pcx-1"),
            range("172.16.0.0/12", RangeKind::Remote, "onprem"),
        ];
        let s = suggest(&inv, 16, 3);
        assert_eq!(s[0].free, 256 - 2);
        assert_eq!(
            s[0].first,
            vec![
                "10.2.0.0/16".parse::<Ipv4Net>().unwrap(),
                "10.3.0.0/16".parse().unwrap(),
                "10.4.0.0/16".parse().unwrap()
            ]
        );
        assert_eq!(s[1].free, 0);
        assert_eq!(s[2].free, 1);
        assert_eq!(s[3].free, 64);
    }

    proptest! {
        #[test]
        fn suggested_ranges_collide_with_nothing(
            used in proptest::collection::vec((any::<u32>(), 8u8..=24), 0..30),
            len in 12u8..=24,
        ) {
            let inv: Vec<Range> = used
                .iter()
                .map(|(a, l)| Range {
                    cidr: IpNet::V4(Ipv4Net::new(std::net::Ipv4Addr::from(*a), *l).unwrap().trunc()),
                    kind: RangeKind::Remote,
                    source: "p".into(),
                    owner: None,
                    inferred: false,
                    route: None,
                })
                .collect();
            for c in suggest(&inv, len, 5) {
                prop_assert!(c.first.len() as u64 <= c.free);
                for f in &c.first {
                    prop_assert!(c.pool.contains(f));
                    for r in &inv {
                        prop_assert!(!overlaps(&r.cidr, &IpNet::V4(*f)), "{f} overlaps {}", r.cidr);
                    }
                }
            }
        }
    }
}
