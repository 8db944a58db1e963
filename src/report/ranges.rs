//! `prefixd ranges`: every range the cluster can meet, with where it came from — the VPC's
//! CIDRs (secondary ones included), its subnets and pod subnets, the service range (given, or
//! EKS's default inferred from the VPC), peered VPCs (both sides, other accounts' included),
//! the routes of the cluster subnets' route tables (prefix lists expanded), declared remote
//! ranges and the well-known ones — and every overlap among them, classified by
//! [`super::overlap`]: routed (an error), not routed (a warning), and blackhole routes.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use super::overlap::{self, Candidates, Overlap, Range, RangeKind, RouteInfo};
use super::select::{self, Selection};
use super::table::Table;
use super::{Finding, ReportError, Severity};
use crate::ec2::read::{Ec2Read, RouteDestination, SubnetQuery};

/// Docker's default bridge and link-local (IMDS, the pods' 169.254.1.1 gateway).
pub const WELL_KNOWN: [(&str, &str); 2] = [
    ("172.17.0.0/16", "Docker's default bridge (docker0)"),
    (
        "169.254.0.0/16",
        "link-local: IMDS, the pods' gateway 169.254.1.1",
    ),
];

/// Peering states whose peer is part of the network (or about to be).
const LIVE_PEERING: [&str; 3] = ["active", "pending-acceptance", "provisioning"];

/// What `prefixd ranges` is asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// The cluster's subnets.
    pub selection: Selection,
    /// More pod subnets (besides the selection's POD_SUBNET_IDS).
    pub pod_subnets: Vec<crate::core::SubnetId>,
    /// `--service-cidr`, when given.
    pub service_cidr: Option<Ipv4Net>,
    /// Declared remote ranges: (range, label).
    pub remote: Vec<(IpNet, String)>,
    /// `--suggest /N`.
    pub suggest: Option<u8>,
    /// Candidates to list per pool.
    pub suggest_count: usize,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangesReport {
    /// The cluster's VPC.
    pub vpc: String,
    /// Its account.
    pub account: String,
    /// How the subnets were chosen.
    pub subnets_from: String,
    /// The cluster subnets.
    pub cluster_subnets: Vec<String>,
    /// The route tables those subnets use.
    pub route_tables: Vec<String>,
    /// Every range.
    pub inventory: Vec<Range>,
    /// Every overlap worth reporting, errors first.
    pub overlaps: Vec<Overlap>,
    /// Free candidates, when asked.
    pub suggestions: Vec<Candidates>,
    /// Peerings left out of the inventory (failed, deleted, rejected, expired).
    pub notes: Vec<String>,
    /// Findings: every overlap and every blackhole route.
    pub findings: Vec<Finding>,
}

/// Reads a `--remote FILE`: one range a line, then an optional label; `#` starts a comment.
pub fn read_remote(path: &Path) -> Result<Vec<(IpNet, String)>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::File {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (cidr, label) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let net: IpNet = cidr.parse().map_err(|_| ReportError::File {
            path: path.display().to_string(),
            why: format!(
                "line {}: {cidr:?} is not a CIDR (write `10.20.0.0/16 datacenter`)",
                n + 1
            ),
        })?;
        let label = if label.trim().is_empty() {
            format!("{}:{}", path.display(), n + 1)
        } else {
            label.trim().to_owned()
        };
        out.push((net.trunc(), label));
    }
    Ok(out)
}

fn item(cidr: IpNet, kind: RangeKind, source: String, owner: &str) -> Range {
    Range {
        cidr,
        kind,
        source,
        owner: Some(owner.to_owned()),
        inferred: false,
        route: None,
    }
}

/// Reads EC2 and makes the report.
pub async fn report<E: Ec2Read>(ec2: &E, req: &Request) -> Result<RangesReport, ReportError> {
    let chosen = select::subnets(ec2, &req.selection).await?;
    let vpcs: BTreeSet<&str> = chosen.subnets.iter().map(|s| s.vpc.as_str()).collect();
    let [vpc_id] = vpcs.into_iter().collect::<Vec<_>>()[..] else {
        return Err(ReportError::Input(format!(
            "the cluster's subnets are in more than one VPC ({}): give the subnets of one \
             cluster",
            chosen
                .subnets
                .iter()
                .map(|s| format!("{} in {}", s.id, s.vpc))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let vpc_id = vpc_id.to_owned();
    let vpc = ec2
        .vpcs(std::slice::from_ref(&vpc_id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ReportError::Input(format!("EC2 does not know VPC {vpc_id}")))?;
    let mut inv = Vec::new();
    let mut notes = Vec::new();
    let mut v4 = Vec::new();
    for c in &vpc.cidrs {
        let live = matches!(c.state.as_str(), "associated" | "associating");
        if !live {
            notes.push(format!("{}: CIDR {} is {}", vpc.id, c.cidr, c.state));
            continue;
        }
        v4.push(c.cidr);
        let what = if c.cidr == vpc.primary {
            "primary"
        } else {
            "secondary"
        };
        inv.push(item(
            IpNet::V4(c.cidr),
            RangeKind::VpcCidr,
            format!("DescribeVpcs {}: {what} CIDR", vpc.id),
            &vpc.id,
        ));
    }
    for c in &vpc.ipv6 {
        inv.push(item(
            IpNet::V6(*c),
            RangeKind::VpcCidr,
            format!("DescribeVpcs {}: IPv6 CIDR", vpc.id),
            &vpc.id,
        ));
    }
    let cluster: BTreeSet<String> = chosen.subnets.iter().map(|s| s.id.to_string()).collect();
    let pods: BTreeSet<String> = chosen
        .pod_subnets
        .iter()
        .chain(&req.pod_subnets)
        .map(|s| s.to_string())
        .collect();
    let all_subnets = ec2.subnets(&SubnetQuery::Vpc(vpc_id.clone())).await?;
    for s in &all_subnets {
        let id = s.id.to_string();
        let role = match (cluster.contains(&id), pods.contains(&id)) {
            (_, true) => "pod subnet",
            (true, false) => "cluster subnet",
            (false, false) => "subnet of the VPC",
        };
        let name = s
            .name
            .as_ref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        inv.push(item(
            IpNet::V4(s.cidr),
            if pods.contains(&id) {
                RangeKind::PodSubnet
            } else {
                RangeKind::Subnet
            },
            format!("DescribeSubnets {id}{name}: {role}"),
            &id,
        ));
    }
    let (service, inferred) = match req.service_cidr {
        Some(c) => (c, false),
        None => (super::eks_default_service_range(&v4), true),
    };
    inv.push(Range {
        inferred,
        ..item(
            IpNet::V4(service),
            RangeKind::ServiceRange,
            if inferred {
                "inferred: EKS's default for this VPC (give --service-cidr for the cluster's own)"
                    .to_owned()
            } else {
                "--service-cidr".to_owned()
            },
            "cluster",
        )
    });
    for p in ec2.peerings(&vpc_id).await? {
        let peer = if p.requester.vpc == vpc_id {
            &p.accepter
        } else {
            &p.requester
        };
        if !LIVE_PEERING.contains(&p.status.as_str()) {
            notes.push(format!(
                "{} to {} (account {}) is {}: left out",
                p.id, peer.vpc, peer.owner, p.status
            ));
            continue;
        }
        let nets = peer
            .cidrs
            .iter()
            .map(|c| IpNet::V4(*c))
            .chain(peer.ipv6.iter().map(|c| IpNet::V6(*c)));
        for c in nets {
            inv.push(item(
                c,
                RangeKind::PeerVpc,
                format!(
                    "DescribeVpcPeeringConnections {} ({}): {} of account {} in {}",
                    p.id, p.status, peer.vpc, peer.owner, peer.region
                ),
                &p.id,
            ));
        }
    }
    let tables = ec2.route_tables(&vpc_id).await?;
    let mut used_tables = BTreeSet::new();
    for s in &chosen.subnets {
        let t = tables
            .iter()
            .find(|t| t.subnets.contains(&s.id))
            .or_else(|| tables.iter().find(|t| t.main));
        if let Some(t) = t {
            used_tables.insert(t.id.clone());
        } else {
            notes.push(format!("{}: no route table found for it", s.id));
        }
    }
    let mut lists = std::collections::BTreeMap::new();
    for t in tables.iter().filter(|t| used_tables.contains(&t.id)) {
        for r in &t.routes {
            if r.target_kind == crate::ec2::read::TargetKind::Local {
                continue;
            }
            let info = |pl: Option<String>| RouteInfo {
                table: t.id.clone(),
                target_kind: r.target_kind,
                target: r.target.clone(),
                state: r.state.clone(),
                prefix_list: pl,
            };
            let mut push = |cidr: IpNet, pl: Option<String>| {
                let from = pl
                    .as_ref()
                    .map(|p| format!(" from {p}"))
                    .unwrap_or_default();
                inv.push(Range {
                    route: Some(info(pl.clone())),
                    ..item(
                        cidr,
                        RangeKind::Route,
                        format!(
                            "DescribeRouteTables {}: {cidr}{from} → {} ({})",
                            t.id, r.target, r.state
                        ),
                        &t.id,
                    )
                })
            };
            match &r.destination {
                RouteDestination::Cidr(c) => push(IpNet::V4(*c), None),
                RouteDestination::Ipv6(c) => push(IpNet::V6(*c), None),
                RouteDestination::PrefixList(id) => {
                    if !lists.contains_key(id) {
                        lists.insert(id.clone(), ec2.prefix_list(id).await?);
                    }
                    let pl = &lists[id];
                    for e in &pl.entries {
                        push(*e, Some(format!("{} {:?}", pl.id, pl.name)));
                    }
                }
            }
        }
    }
    for (c, label) in &req.remote {
        inv.push(item(
            *c,
            RangeKind::Remote,
            format!("--remote: {label}"),
            label,
        ));
    }
    for (c, label) in WELL_KNOWN {
        inv.push(item(
            c.parse().expect("valid"),
            RangeKind::WellKnown,
            label.to_owned(),
            label,
        ));
    }
    let overlaps = overlap::find(&inv);
    let mut findings: Vec<Finding> = overlaps
        .iter()
        .map(|o| Finding {
            severity: o.severity,
            kind: if o.severity == Severity::Error {
                "overlap-routed".into()
            } else {
                "overlap".into()
            },
            message: format!(
                "{} overlaps {} in {}{}",
                o.a.describe(),
                o.b.describe(),
                o.overlap,
                if o.routed_by.is_empty() {
                    ", not routed from the cluster's subnets".to_owned()
                } else {
                    format!(", routed by {}", o.routed_by.join("; "))
                }
            ),
        })
        .collect();
    findings.extend(overlap::blackholes(&inv));
    let suggestions = req
        .suggest
        .map(|len| overlap::suggest(&inv, len, req.suggest_count))
        .unwrap_or_default();
    Ok(RangesReport {
        vpc: vpc.id.clone(),
        account: vpc.owner.clone(),
        subnets_from: chosen.how,
        cluster_subnets: cluster.into_iter().collect(),
        route_tables: used_tables.into_iter().collect(),
        inventory: inv,
        overlaps,
        suggestions,
        notes,
        findings,
    })
}

impl RangesReport {
    /// The report for people.
    pub fn render(&self, suggest: Option<u8>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "prefixd ranges: VPC {} (account {}), cluster subnets {} ({}), route tables {}\n",
            self.vpc,
            self.account,
            self.cluster_subnets.join(", "),
            self.subnets_from,
            self.route_tables.join(", ")
        );
        let mut t = Table::new(&["range", "kind", "source"]);
        for r in &self.inventory {
            t.row(vec![
                r.cidr.to_string(),
                r.kind.as_str().to_owned(),
                r.source.clone(),
            ]);
        }
        s.push_str("Inventory:\n");
        s.push_str(&t.render(2));
        if self.overlaps.is_empty() {
            s.push_str("\nOverlaps: none.\n");
        } else {
            let mut t = Table::new(&["severity", "overlap", "range", "with", "routed by"]);
            for o in &self.overlaps {
                t.row(vec![
                    o.severity.as_str().to_owned(),
                    o.overlap.to_string(),
                    format!("{} {}", o.a.cidr, o.a.kind.as_str()),
                    format!("{} {}", o.b.cidr, o.b.kind.as_str()),
                    if o.routed_by.is_empty() {
                        "not routed".into()
                    } else {
                        o.routed_by.join("; ")
                    },
                ]);
            }
            s.push_str("\nOverlaps:\n");
            s.push_str(&t.render(2));
        }
        let holes: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.kind == "blackhole")
            .collect();
        if !holes.is_empty() {
            s.push_str("\nBlackhole routes:\n");
            for f in holes {
                let _ = writeln!(s, "  {} {}", f.severity.as_str(), f.message);
            }
        }
        if let Some(len) = suggest {
            let _ = writeln!(s, "\nFree /{len}s that collide with nothing above:");
            for c in &self.suggestions {
                let first: Vec<String> = c.first.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(
                    s,
                    "  {}: {} free{}{}",
                    c.pool,
                    c.free,
                    if first.is_empty() { "" } else { ", e.g. " },
                    first.join(", ")
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "Note: {n}");
        }
        let _ = writeln!(
            s,
            "\n{} errors, {} warnings.",
            self.findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count(),
            self.findings
                .iter()
                .filter(|f| f.severity == Severity::Warning)
                .count()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_files_are_read_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("remote.txt");
        std::fs::write(
            &p,
            "# on-prem\n10.20.0.0/16 datacenter east\n\n192.168.4.0/22\n",
        )
        .unwrap();
        let r = read_remote(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, "datacenter east");
        assert!(r[1].1.ends_with(":4"));
        std::fs::write(&p, "10.20.0.0/16\nbanana\n").unwrap();
        let e = read_remote(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("banana"), "{e}");
    }
}
