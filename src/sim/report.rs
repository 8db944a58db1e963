//! What a simulation reports, and its tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::RunData;
use super::profile::PolicySpec;
use crate::mock::control::Stats;

/// One workload phase's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// `scale_up`, `churn` or `drain`.
    pub kind: String,
    /// Its start.
    pub at: String,
    /// Pods it created.
    pub pods: u64,
    /// Of those, still waiting for an address at the end.
    pub unserved: u64,
    /// From its start until its last pod had an address (None when some never did).
    pub all_served_s: Option<f64>,
    /// Scale-ups: the least time EC2's buckets allow for the mutating calls the phase made
    /// (max over actions of (calls − tokens at the start) / refill).
    pub bucket_bound_s: Option<f64>,
    /// RequestLimitExceeded answers between the start and the last address.
    pub throttled_in_window: u64,
    /// Successful mutating calls in that window, by action.
    pub mutating_calls: BTreeMap<String, u64>,
}

/// One policy's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// `agent K=V ...`.
    pub policy: String,
    /// Pods created.
    pub pods: u64,
    /// Pods that never got an address.
    pub unserved: u64,
    /// Pod wait for an address, ms: p50.
    pub wait_p50_ms: u64,
    /// p99.
    pub wait_p99_ms: u64,
    /// Max.
    pub wait_max_ms: u64,
    /// CNI ADDs that failed and were retried by kubelet.
    pub failed_adds: u64,
    /// EC2 calls by action.
    pub calls: BTreeMap<String, u64>,
    /// RequestLimitExceeded answers.
    pub throttled: u64,
    /// RequestLimitExceeded answers by action.
    pub throttled_by_action: BTreeMap<String, u64>,
    /// InsufficientCidrBlocks answers.
    pub insufficient_cidr: u64,
    /// Addresses held in EC2, time average once the workload starts.
    pub held_avg: f64,
    /// Addresses used by pods, same window.
    pub used_avg: f64,
    /// 1 − used / held.
    pub waste: f64,
    /// Peak addresses held.
    pub held_peak: u64,
    /// Peak prefixes.
    pub prefixes_peak: u64,
    /// Peak ENIs.
    pub enis_peak: u64,
    /// Per phase.
    pub phases: Vec<PhaseReport>,
    /// Nodes that had pods.
    pub nodes_with_pods: u64,
    /// Of those, the ones every pod of which got an address.
    pub nodes_served: u64,
    /// Real time the run took, ms (not part of the deterministic result).
    #[serde(skip)]
    pub wall_ms: u64,
}

/// A whole simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Profile name.
    pub profile: String,
    /// What it shows.
    pub description: String,
    /// Nodes.
    pub nodes: u32,
    /// Instance type.
    pub instance_type: String,
    /// Simulated time.
    pub duration: String,
    /// Seed.
    pub seed: u64,
    /// EC2 token buckets on.
    pub throttling: bool,
    /// Latency model on.
    pub latency: bool,
    /// One per policy, in the profile's order.
    pub policies: Vec<PolicyReport>,
}

fn percentile(sorted: &[Duration], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_millis() as u64
}

pub(super) fn summarize(spec: &PolicySpec, mut run: RunData, stats: Stats) -> PolicyReport {
    run.waits.sort();
    let insufficient_cidr = stats
        .errors
        .values()
        .filter_map(|m| m.get("InsufficientCidrBlocks"))
        .sum();
    let waste = if run.held_avg > 0.0 {
        1.0 - run.used_avg / run.held_avg
    } else {
        0.0
    };
    PolicyReport {
        policy: spec.label(),
        pods: run.pods,
        unserved: run.unserved,
        wait_p50_ms: percentile(&run.waits, 0.50),
        wait_p99_ms: percentile(&run.waits, 0.99),
        wait_max_ms: run.waits.last().map_or(0, |d| d.as_millis() as u64),
        failed_adds: run.failed_adds,
        throttled: stats.throttled.values().sum(),
        throttled_by_action: by_name(&stats.throttled),
        calls: by_name(&stats.calls),
        insufficient_cidr,
        held_avg: run.held_avg,
        used_avg: run.used_avg,
        waste,
        held_peak: run.held_peak,
        prefixes_peak: run.prefixes_peak,
        enis_peak: run.enis_peak,
        phases: run.phases,
        nodes_with_pods: run.nodes_with_pods,
        nodes_served: run.nodes_served,
        wall_ms: 0,
    }
}

fn secs(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn short(action: &str) -> &str {
    match action {
        "AssignPrivateIpAddresses" => "Assign",
        "UnassignPrivateIpAddresses" => "Unassign",
        "CreateNetworkInterface" => "CreateENI",
        "AttachNetworkInterface" => "Attach",
        "DetachNetworkInterface" => "Detach",
        "DeleteNetworkInterface" => "DeleteENI",
        "ModifyNetworkInterfaceAttribute" => "Modify",
        "DescribeNetworkInterfaces" => "DescribeENIs",
        "DescribeInstances" => "DescribeInst",
        "DescribeInstanceTypes" => "DescribeTypes",
        "DescribeSubnets" => "DescribeSubnets",
        other => other,
    }
}

impl Report {
    /// Markdown tables: outcomes, EC2 calls by action, scale-up phases against the bound.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "profile {}: {} × {}, {} simulated, seed {}, EC2 buckets {}, latency model {}",
            self.profile,
            self.nodes,
            self.instance_type,
            self.duration,
            self.seed,
            if self.throttling { "on" } else { "off" },
            if self.latency { "on" } else { "off" }
        );
        let _ = writeln!(o, "{}\n", self.description);
        let _ = writeln!(
            o,
            "| policy | pods | wait p50 | wait p99 | wait max | never served | ADD failures | EC2 calls | throttled | InsufficientCidr | held (avg) | used (avg) | waste | peak prefixes | peak ENIs |"
        );
        let _ = writeln!(
            o,
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for p in &self.policies {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} % | {} | {} |",
                p.policy,
                p.pods,
                secs(p.wait_p50_ms),
                secs(p.wait_p99_ms),
                secs(p.wait_max_ms),
                p.unserved,
                p.failed_adds,
                p.calls.values().sum::<u64>(),
                p.throttled,
                p.insufficient_cidr,
                p.held_avg,
                p.used_avg,
                p.waste * 100.0,
                p.prefixes_peak,
                p.enis_peak
            );
        }
        if self
            .policies
            .iter()
            .any(|p| p.nodes_served < p.nodes_with_pods)
        {
            let _ = writeln!(o, "\nNodes every pod of which got an address:\n");
            for p in &self.policies {
                let _ = writeln!(
                    o,
                    "- {}: {} of the {} nodes with pods",
                    p.policy, p.nodes_served, p.nodes_with_pods
                );
            }
        }
        let mut actions: Vec<&String> = self.policies.iter().flat_map(|p| p.calls.keys()).collect();
        actions.sort();
        actions.dedup();
        let _ = writeln!(
            o,
            "\nEC2 calls by action (in brackets: of which RequestLimitExceeded):\n"
        );
        let _ = write!(o, "| policy |");
        for a in &actions {
            let _ = write!(o, " {} |", short(a));
        }
        let _ = write!(o, "\n|---|");
        for _ in &actions {
            let _ = write!(o, "--:|");
        }
        let _ = writeln!(o);
        for p in &self.policies {
            let _ = write!(o, "| {} |", p.policy);
            for a in &actions {
                let n = p.calls.get(*a).copied().unwrap_or(0);
                match p.throttled_by_action.get(*a) {
                    Some(t) if *t > 0 => {
                        let _ = write!(o, " {n} ({t}) |");
                    }
                    _ => {
                        let _ = write!(o, " {n} |");
                    }
                }
            }
            let _ = writeln!(o);
        }
        let scale: Vec<(&PolicyReport, &PhaseReport)> = self
            .policies
            .iter()
            .flat_map(|p| p.phases.iter().map(move |ph| (p, ph)))
            .filter(|(_, ph)| ph.kind == "scale_up")
            .collect();
        if !scale.is_empty() {
            let _ = writeln!(
                o,
                "\nScale-ups: time from the scale-up until every one of its pods had an address, against the least time EC2's buckets allow for the mutating calls made:\n"
            );
            let _ = writeln!(
                o,
                "| policy | at | pods | all addressed after | bucket bound | ratio | RequestLimitExceeded | mutating calls |"
            );
            let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|---|");
            for (p, ph) in scale {
                let all = ph
                    .all_served_s
                    .map_or(format!("never ({} left)", ph.unserved), |s| {
                        format!("{s:.1} s")
                    });
                let bound = ph.bucket_bound_s.unwrap_or(0.0);
                let ratio = match ph.all_served_s {
                    Some(s) if bound >= 1.0 => format!("{:.2}×", s / bound),
                    _ => "–".into(),
                };
                let calls = ph
                    .mutating_calls
                    .iter()
                    .map(|(a, n)| format!("{} {n}", short(a)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {:.1} s | {} | {} | {} |",
                    p.policy, ph.at, ph.pods, all, bound, ratio, ph.throttled_in_window, calls
                );
            }
        }
        let wall: u64 = self.policies.iter().map(|p| p.wall_ms).sum();
        let _ = writeln!(
            o,
            "\nSimulated in {:.1} s of real time ({}).",
            wall as f64 / 1000.0,
            self.policies
                .iter()
                .map(|p| format!("{:.1} s", p.wall_ms as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(" + ")
        );
        o
    }
}

fn by_name(m: &BTreeMap<crate::ec2::Action, u64>) -> BTreeMap<String, u64> {
    m.iter().map(|(a, n)| (a.name().to_owned(), *n)).collect()
}
