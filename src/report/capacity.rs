//! `prefixd capacity`: for the cluster's subnets, the /28 map (free inside and outside
//! `prefix` reservations, fragmented, allocated, reserved), who breaks the most /28s, how many
//! more nodes of a type and pod count fit under each policy (best and worst case), a
//! `prefix` reservation that would make the worst case the best, and — over earlier reports —
//! the consumption rate and the day each subnet runs out.

use std::fmt::Write;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::fit::{self, Fit, NodeShape, Suggestion};
use super::select::{self, Selection};
use super::subnet_map::SubnetMap;
use super::table::Table;
use super::trend::{self, HistoryPoint, HistorySubnet, Trend};
use super::{Finding, ReportError, Severity};
use crate::core::config::{Mode, Targets};
use crate::core::instance_types;
use crate::core::planner::Limits;
use crate::core::policy::AgentKind;
use crate::ec2::TypeLimits;
use crate::ec2::read::Ec2Read;

/// One policy to weigh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// How the tables name it.
    pub label: String,
    /// Whose rules.
    pub agent: AgentKind,
    /// Its warm targets.
    pub targets: Targets,
    /// Prefixes or /32s.
    pub mode: Mode,
    /// MAX_PODS, when set.
    pub max_pods: Option<u32>,
}

impl Policy {
    /// The label of prefixd's policy with `targets` in `mode`: the settings that decide it.
    pub fn describe(targets: &Targets, mode: Mode, max_pods: Option<u32>) -> String {
        let mut s = String::from("prefixd");
        if mode == Mode::SecondaryIp {
            s.push_str(" ENABLE_PREFIX_DELEGATION=false");
        }
        if targets.warm_ip_target > 0 {
            let _ = write!(s, " WARM_IP_TARGET={}", targets.warm_ip_target);
        } else if mode == Mode::Prefix {
            let _ = write!(s, " WARM_PREFIX_TARGET={}", targets.warm_prefix_target);
        } else {
            let _ = write!(s, " WARM_ENI_TARGET={}", targets.warm_eni_target);
        }
        if targets.minimum_ip_target > 0 {
            let _ = write!(s, " MINIMUM_IP_TARGET={}", targets.minimum_ip_target);
        }
        if let Some(m) = targets.max_eni {
            let _ = write!(s, " MAX_ENI={m}");
        }
        if let Some(m) = max_pods {
            let _ = write!(s, " MAX_PODS={m}");
        }
        s
    }
}

/// What `prefixd capacity` is asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which subnets.
    pub selection: Selection,
    /// The instance type of the nodes to come (default: the node's own).
    pub instance_type: Option<String>,
    /// Pods per node (default: the type's max pods).
    pub pods: Option<u32>,
    /// The policies, the one in force first.
    pub policies: Vec<Policy>,
    /// Free addresses to keep outside a suggested reservation for the subnet's /32 users
    /// (default: as many as they hold now).
    pub headroom: Option<u32>,
    /// Earlier reports.
    pub history: Vec<(SystemTime, HistoryPoint)>,
    /// The report's time.
    pub now: SystemTime,
    /// A finding when fewer nodes than this fit in a subnet in the worst case.
    pub min_nodes: u32,
    /// A finding when a subnet runs out within this many days.
    pub horizon_days: f64,
}

/// One policy's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyShape {
    /// The policy.
    pub policy: String,
    /// What a node holds.
    pub shape: NodeShape,
    /// Addresses held in the subnet.
    pub held: u32,
    /// Addresses pods use.
    pub used: u32,
}

/// How many nodes of one policy fit in one subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFit {
    /// The policy.
    pub policy: String,
    /// Best and worst case.
    #[serde(flatten)]
    pub fit: Fit,
    /// Worst-case nodes more than the first policy's.
    pub more_than_first: i64,
}

/// One subnet's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetReport {
    /// Its id.
    pub id: String,
    /// Its Name tag.
    pub name: Option<String>,
    /// Its CIDR.
    pub cidr: ipnet::Ipv4Net,
    /// Its zone.
    pub az: String,
    /// Addresses in it.
    pub size: u64,
    /// EC2's AvailableIpAddressCount.
    pub available: u32,
    /// Blocks an automatic prefix can still take (in and out of `prefix` reservations).
    pub free_slots: u32,
    /// The /28 map.
    pub map: SubnetMap,
    /// Nodes that fit, per policy.
    pub fit: Vec<PolicyFit>,
    /// A `prefix` reservation that makes the first policy's worst case better.
    pub suggestion: Option<Suggestion>,
    /// Its trend over earlier reports.
    pub trend: Option<Trend>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// When (RFC 3339).
    pub generated_at: String,
    /// How the subnets were chosen.
    pub subnets_from: String,
    /// The instance type.
    pub instance_type: String,
    /// Its network limits.
    pub limits: Limits,
    /// Pods per node asked for.
    pub pods: u32,
    /// What a node holds, per policy.
    pub policies: Vec<PolicyShape>,
    /// The subnets.
    pub subnets: Vec<SubnetReport>,
    /// The subnet where the fewest nodes fit (first policy, worst case).
    pub runs_out_first: Option<String>,
    /// What else the reader should know.
    pub notes: Vec<String>,
    /// Findings.
    pub findings: Vec<Finding>,
}

async fn limits_of<E: Ec2Read>(
    ec2: &E,
    itype: &str,
    notes: &mut Vec<String>,
) -> Result<TypeLimits, ReportError> {
    match ec2.instance_type(itype).await {
        Ok(l) => Ok(l),
        Err(e) => {
            let t = instance_types::lookup(itype).ok_or_else(|| {
                ReportError::Input(format!(
                    "DescribeInstanceTypes failed for {itype} ({e}) and it is not in the built-in \
                     table of 1,263 types: check --instance-type"
                ))
            })?;
            notes.push(format!(
                "DescribeInstanceTypes failed ({}): {itype}'s limits are from the built-in table",
                e.code
            ));
            Ok(TypeLimits {
                max_enis: t.max_enis,
                ipv4_per_eni: t.ipv4_per_eni,
                supports_prefixes: t.supports_prefixes(),
                vcpus: t.vcpus,
            })
        }
    }
}

/// Reads EC2 and makes the report.
pub async fn report<E: Ec2Read>(ec2: &E, req: &Request) -> Result<CapacityReport, ReportError> {
    let chosen = select::subnets(ec2, &req.selection).await?;
    let mut notes = Vec::new();
    let itype = req
        .instance_type
        .clone()
        .or(chosen.node_type.clone())
        .ok_or_else(|| {
            ReportError::Input(
                "which instance type will the new nodes be? give --instance-type (e.g. m5.large)"
                    .into(),
            )
        })?;
    let tl = limits_of(ec2, &itype, &mut notes).await?;
    let first = req
        .policies
        .first()
        .ok_or_else(|| ReportError::Input("no policy to weigh".into()))?;
    let prefix_mode = first.mode == Mode::Prefix && tl.supports_prefixes;
    if first.mode == Mode::Prefix && !tl.supports_prefixes {
        notes.push(format!(
            "{itype} is not a Nitro type and takes no prefixes: its nodes use /32 addresses"
        ));
    }
    let vcpus = if tl.vcpus > 0 {
        tl.vcpus
    } else {
        instance_types::lookup(&itype).map_or(2, |t| t.vcpus)
    };
    let formula = instance_types::max_pods(tl.max_enis, tl.ipv4_per_eni, vcpus, prefix_mode);
    let base_limits = Limits {
        max_enis: tl.max_enis.max(1),
        slots_per_eni: tl.ipv4_per_eni.saturating_sub(1).max(1),
        max_pods: first.max_pods.unwrap_or(formula),
    };
    let pods = req.pods.unwrap_or(base_limits.max_pods);
    let mut shapes = Vec::new();
    for p in &req.policies {
        let limits = Limits {
            max_pods: p.max_pods.unwrap_or(formula),
            ..base_limits
        };
        let mode = if tl.supports_prefixes {
            p.mode
        } else {
            Mode::SecondaryIp
        };
        let shape = fit::shape(p.agent, limits, &p.targets, mode, pods)
            .map_err(|e| ReportError::Input(format!("policy {}: {e}", p.label)))?;
        if shape.unserved > 0 {
            notes.push(format!(
                "{}: a {itype} node serves {} of {pods} pods ({} unserved: max pods {}, or the \
                 policy's own limit)",
                p.label, shape.pods, shape.unserved, limits.max_pods
            ));
        }
        shapes.push(PolicyShape {
            policy: p.label.clone(),
            held: shape.held(),
            used: shape.pods,
            shape,
        });
    }
    let mut subnets = Vec::new();
    let mut now_points = Vec::new();
    for s in &chosen.subnets {
        let res = ec2.reservations(&s.id).await?;
        let enis = ec2.subnet_enis(&s.id).await?;
        let map = SubnetMap::build(s.cidr, &enis, &res);
        let fits: Vec<Fit> = shapes
            .iter()
            .map(|p| fit::nodes_that_fit(&map.counts, &p.shape))
            .collect();
        let base = i64::from(fits[0].worst);
        let fit = shapes
            .iter()
            .zip(&fits)
            .map(|(p, f)| PolicyFit {
                policy: p.policy.clone(),
                fit: *f,
                more_than_first: i64::from(f.worst) - base,
            })
            .collect();
        let headroom = req.headroom.unwrap_or(map.counts.used_addresses);
        let suggestion = fit::suggest_reservation(&map, &shapes[0].shape, headroom);
        now_points.push(HistorySubnet {
            id: s.id.to_string(),
            free_slots: map.counts.free_slots(),
        });
        subnets.push(SubnetReport {
            id: s.id.to_string(),
            name: s.name.clone(),
            cidr: s.cidr,
            az: s.az.clone(),
            size: 1u64 << (32 - s.cidr.prefix_len()),
            available: s.available,
            free_slots: map.counts.free_slots(),
            map,
            fit,
            suggestion,
            trend: None,
        });
    }
    let trends = trend::trends(&req.history, req.now, &now_points);
    for s in &mut subnets {
        s.trend = trends.get(&s.id).cloned();
    }
    let runs_out_first = subnets
        .iter()
        .min_by_key(|s| s.fit[0].fit.worst)
        .map(|s| s.id.clone());
    let findings = findings(&subnets, req);
    Ok(CapacityReport {
        generated_at: humantime::format_rfc3339_seconds(req.now).to_string(),
        subnets_from: chosen.how,
        instance_type: itype,
        limits: base_limits,
        pods,
        policies: shapes,
        subnets,
        runs_out_first,
        notes,
        findings,
    })
}

fn findings(subnets: &[SubnetReport], req: &Request) -> Vec<Finding> {
    let mut out = Vec::new();
    for s in subnets {
        let c = &s.map.counts;
        if c.free_slots() == 0 {
            out.push(Finding {
                severity: Severity::Error,
                kind: "no-free-28".into(),
                message: format!(
                    "{}: no free /28 is left ({} addresses available, {} /28s fragmented): \
                     new prefixes fail with InsufficientCidrBlocks",
                    s.id, s.available, c.fragmented
                ),
            });
        } else if s.fit[0].fit.worst < req.min_nodes {
            out.push(Finding {
                severity: Severity::Warning,
                kind: "few-nodes".into(),
                message: format!(
                    "{}: in the worst case {} more nodes fit ({} at best), fewer than {}",
                    s.id, s.fit[0].fit.worst, s.fit[0].fit.best, req.min_nodes
                ),
            });
        }
        if let Some(t) = &s.trend
            && let (Some(days), Some(date)) = (t.days_left, &t.runs_out)
            && days < req.horizon_days
        {
            out.push(Finding {
                severity: Severity::Warning,
                kind: "runs-out".into(),
                message: format!(
                    "{}: at {:.1} /28s a day its free /28s run out on {date}, in {days:.0} days",
                    s.id, t.slots_per_day
                ),
            });
        }
    }
    out
}

fn pct(waste: u32, held: u32) -> String {
    if held == 0 {
        "0 %".into()
    } else {
        format!("{} %", (f64::from(waste) * 100.0 / f64::from(held)).round())
    }
}

impl CapacityReport {
    /// The report for people; `grid` adds each subnet's /28 map as text.
    pub fn render(&self, grid: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "prefixd capacity: {} nodes with {} pods each ({} ENIs × {} slots, max pods {}), \
             subnets {}; {}\n",
            self.instance_type,
            self.pods,
            self.limits.max_enis,
            self.limits.slots_per_eni,
            self.limits.max_pods,
            self.subnets_from,
            self.generated_at
        );
        let mut t = Table::new(&[
            "policy", "prefixes", "ENIs", "/32s", "held", "used", "waste",
        ]);
        for p in &self.policies {
            t.row(vec![
                p.policy.clone(),
                p.shape.prefixes.to_string(),
                p.shape.enis.to_string(),
                p.shape.secondary_ips.to_string(),
                p.held.to_string(),
                p.used.to_string(),
                pct(p.held - p.used.min(p.held), p.held),
            ]);
        }
        s.push_str("What one node holds in its subnet:\n");
        s.push_str(&t.render(2));
        let mut t = Table::new(&[
            "subnet",
            "cidr",
            "az",
            "available",
            "free /28",
            "in prefix res.",
            "fragmented",
            "allocated",
            "explicit",
            "loose /32s",
            "nodes (worst-best)",
        ]);
        for sub in &self.subnets {
            let c = &sub.map.counts;
            t.row(vec![
                sub.id.clone(),
                sub.cidr.to_string(),
                sub.az.clone(),
                sub.available.to_string(),
                c.free.to_string(),
                c.free_reserved.to_string(),
                c.fragmented.to_string(),
                c.allocated.to_string(),
                c.explicit.to_string(),
                c.loose_addresses.to_string(),
                format!("{}-{}", sub.fit[0].fit.worst, sub.fit[0].fit.best),
            ]);
        }
        s.push_str("\nSubnets:\n");
        s.push_str(&t.render(2));
        for sub in &self.subnets {
            s.push_str(&self.render_subnet(sub, grid));
        }
        if let Some(id) = &self.runs_out_first
            && let Some(sub) = self.subnets.iter().find(|x| &x.id == id)
        {
            let _ = writeln!(
                s,
                "\nRuns out first: {id}, {} more nodes in the worst case ({} at best) under {}.",
                sub.fit[0].fit.worst, sub.fit[0].fit.best, sub.fit[0].policy
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "Note: {n}");
        }
        if self.findings.is_empty() {
            s.push_str("\nNo findings.\n");
        } else {
            s.push_str("\nFindings:\n");
            for f in &self.findings {
                let _ = writeln!(s, "  {} {}: {}", f.severity.as_str(), f.kind, f.message);
            }
        }
        s
    }

    fn render_subnet(&self, sub: &SubnetReport, grid: bool) -> String {
        let c = &sub.map.counts;
        let mut s = String::new();
        let name = sub
            .name
            .as_ref()
            .map(|n| format!("{n}, "))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "\n{} ({name}{}, {}): {} addresses, 5 reserved by EC2, {} available (EC2)",
            sub.id, sub.cidr, sub.az, sub.size, sub.available
        );
        let _ = writeln!(
            s,
            "  /28s: {} in all: {} free, {} free in prefix reservations, {} fragmented, {} \
             allocated, {} explicit, {} holding EC2's reserved addresses; {} loose /32s",
            c.blocks,
            c.free,
            c.free_reserved,
            c.fragmented,
            c.allocated,
            c.explicit,
            c.reserved,
            c.loose_addresses
        );
        if grid {
            let _ = writeln!(s, "  {}", super::picture::legend());
            s.push_str(&super::picture::text_grid(&sub.map));
        }
        if !sub.map.top_instances.is_empty() {
            let list = |v: &[super::subnet_map::Breaker]| {
                v.iter()
                    .map(|b| format!("{} {}", b.holder, b.blocks))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "  breaking the most /28s: by instance {}; by ENI {}",
                list(&sub.map.top_instances),
                list(&sub.map.top_enis)
            );
        }
        let mut t = Table::new(&["policy", "worst", "best", "worst vs first"]);
        for f in &sub.fit {
            t.row(vec![
                f.policy.clone(),
                f.fit.worst.to_string(),
                f.fit.best.to_string(),
                if f.more_than_first == 0 {
                    "-".into()
                } else {
                    format!("{:+}", f.more_than_first)
                },
            ]);
        }
        s.push_str("  more nodes that fit:\n");
        s.push_str(&t.render(4));
        match &sub.suggestion {
            Some(g) => {
                let cidrs: Vec<String> = g.cidrs.iter().map(|c| c.to_string()).collect();
                let _ = writeln!(
                    s,
                    "  suggested prefix reservation: {} ({} /28s): {} nodes fit whatever \
                     addresses their ENIs get (worst case now {}), {} free addresses stay \
                     outside for /32s",
                    cidrs.join(", "),
                    g.blocks,
                    g.nodes,
                    sub.fit[0].fit.worst,
                    g.addresses_outside
                );
                for c in &cidrs {
                    let _ = writeln!(
                        s,
                        "    aws ec2 create-subnet-cidr-reservation --subnet-id {} \
                         --reservation-type prefix --cidr {c}",
                        sub.id
                    );
                }
            }
            None => s.push_str("  no prefix reservation would fit more nodes\n"),
        }
        if let Some(t) = &sub.trend {
            let _ = write!(
                s,
                "  trend: {:.2} /28s a day over {:.1} days ({} reports)",
                t.slots_per_day, t.span_days, t.points
            );
            match (&t.runs_out, t.days_left) {
                (Some(d), Some(n)) => {
                    let _ = writeln!(s, ": runs out {d} ({n:.0} days)");
                }
                _ => s.push_str(": not running out\n"),
            }
        }
        s
    }
}
