//! `prefixd capacity` and `prefixd ranges`: flags in, a report out (a table for people,
//! `--json` for machines), exit code 0 clean, 1 findings, 2 could not read. The warm targets
//! are read by the agent's own tables and parser: env vars and flags for the policy in force,
//! `--policy "prefixd K=V …"` / `"vpc-cni K=V …"` (the simulator's syntax) for others.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;

use super::settings::{SettingArgs, Tables};
use crate::agent::config::{AgentConfig, INSTANCE_ID, MAX_PODS, POD_SUBNET_IDS};
use crate::core::SubnetId;
use crate::core::policy::{AgentKind, PolicySpec};
use crate::core::settings::Setting;
use crate::ec2::sdk_read::SdkRead;
use crate::report::{
    EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNREADABLE, ReportError, capacity, picture, ranges,
    select::Selection, trend,
};

/// The settings `prefixd capacity` reads: the warm targets, MAX_PODS, and where the node is.
#[derive(Debug, Clone, Copy)]
pub struct CapacityTables;
impl Tables for CapacityTables {
    const TABLES: &'static [&'static [Setting]] = &[
        crate::core::config::SETTINGS,
        &[MAX_PODS, INSTANCE_ID, POD_SUBNET_IDS],
    ];
}

/// The settings `prefixd ranges` reads: where the node is.
#[derive(Debug, Clone, Copy)]
pub struct RangesTables;
impl Tables for RangesTables {
    const TABLES: &'static [&'static [Setting]] = &[&[INSTANCE_ID, POD_SUBNET_IDS]];
}

/// Which subnets (both reports).
#[derive(Debug, Args)]
pub struct SubnetArgs {
    /// A subnet to report on (repeatable).
    #[arg(long = "subnet", value_name = "ID")]
    pub subnets: Vec<String>,
    /// The cluster whose subnets are tagged kubernetes.io/cluster/NAME (used when no --subnet
    /// is given; without either, the node's own subnet and POD_SUBNET_IDS).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

/// `prefixd capacity`.
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Which subnets.
    #[command(flatten)]
    pub subnets: SubnetArgs,
    /// The instance type of the nodes to come (default: the node's own, when run on one).
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Pods per node (default: the type's max pods, a full node).
    #[arg(long, value_name = "N")]
    pub pods: Option<u32>,
    /// Another policy to weigh, as `prefixd|vpc-cni KEY=VALUE …` (repeatable).
    #[arg(long = "policy", value_name = "POLICY")]
    pub policies: Vec<String>,
    /// A directory of earlier `prefixd capacity --json` reports: the consumption rate and the
    /// day each subnet runs out.
    #[arg(long, value_name = "DIR")]
    pub history: Option<PathBuf>,
    /// Write each subnet's /28 map as DIR/SUBNET.svg.
    #[arg(long, value_name = "DIR")]
    pub svg: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Leave out the terminal /28 grids.
    #[arg(long)]
    pub no_grid: bool,
    /// A finding when fewer nodes than this fit in a subnet, in the worst case.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_nodes: u32,
    /// A finding when a subnet runs out within this many days at its trend.
    #[arg(long, value_name = "DAYS", default_value_t = 30.0)]
    pub horizon_days: f64,
    /// Free addresses to keep outside a suggested reservation for the subnet's /32 users
    /// (default: as many as they hold now).
    #[arg(long, value_name = "N")]
    pub headroom: Option<u32>,
    /// The report's time (RFC 3339), for reproducible trends; default now.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// The policy in force: the agent's warm-target settings.
    #[command(flatten)]
    pub settings: SettingArgs<CapacityTables>,
}

/// `prefixd ranges`.
#[derive(Debug, Args)]
pub struct RangesArgs {
    /// Which subnets.
    #[command(flatten)]
    pub subnets: SubnetArgs,
    /// A subnet pods get addresses from (repeatable; with POD_SUBNET_IDS).
    #[arg(long = "pod-subnet", value_name = "ID")]
    pub pod_subnets: Vec<String>,
    /// The cluster's service range (default: EKS's, inferred from the VPC's CIDRs).
    #[arg(long, value_name = "CIDR")]
    pub service_cidr: Option<String>,
    /// Declared remote ranges (on-premises, other clouds): a CIDR and a label a line.
    #[arg(long, value_name = "FILE")]
    pub remote: Option<PathBuf>,
    /// List free ranges of this size (`/16`) in RFC 1918 and 100.64.0.0/10 that collide with
    /// nothing found.
    #[arg(long, value_name = "/LEN")]
    pub suggest: Option<String>,
    /// Candidates to list per pool.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub suggest_count: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Where the node is.
    #[command(flatten)]
    pub settings: SettingArgs<RangesTables>,
}

fn input(e: impl std::fmt::Display) -> ReportError {
    ReportError::Input(e.to_string())
}

fn selection(a: &SubnetArgs, cfg: &AgentConfig) -> Result<Selection, ReportError> {
    if !a.subnets.is_empty() {
        let ids = a
            .subnets
            .iter()
            .map(|s| {
                s.parse::<SubnetId>()
                    .map_err(|e| input(format!("--subnet {s}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        return Ok(Selection::Given(ids));
    }
    if let Some(c) = &a.cluster {
        return Ok(Selection::Cluster(c.clone()));
    }
    Ok(Selection::Node {
        instance: cfg.instance_id.clone(),
        pod_subnets: cfg.pod_subnet_ids.clone(),
    })
}

fn policy_of(label: String, agent: AgentKind, cfg: &AgentConfig) -> capacity::Policy {
    capacity::Policy {
        label,
        agent,
        targets: cfg.pool.targets,
        mode: cfg.pool.mode(),
        max_pods: cfg.max_pods,
    }
}

fn capacity_request(a: &CapacityArgs) -> Result<capacity::Request, ReportError> {
    let cfg = AgentConfig::from_lookup(&a.settings.values).map_err(input)?;
    let mut policies = vec![policy_of(
        capacity::Policy::describe(&cfg.pool.targets, cfg.pool.mode(), cfg.max_pods),
        AgentKind::Prefixd,
        &cfg,
    )];
    for p in &a.policies {
        let spec = PolicySpec::parse(p).map_err(input)?;
        let c = AgentConfig::from_pairs(&spec.env)
            .map_err(|e| input(format!("--policy {p:?}: {e}")))?;
        policies.push(policy_of(spec.label(), spec.agent, &c));
    }
    let now = match &a.now {
        Some(t) => humantime::parse_rfc3339_weak(t)
            .map_err(|e| input(format!("--now {t:?} is not an RFC 3339 time: {e}")))?,
        None => SystemTime::now(),
    };
    if !(a.horizon_days.is_finite() && a.horizon_days >= 0.0) {
        return Err(input("--horizon-days must be a number of days, 0 or more"));
    }
    if a.pods == Some(0) {
        return Err(input("--pods must be at least 1"));
    }
    Ok(capacity::Request {
        selection: selection(&a.subnets, &cfg)?,
        instance_type: a.instance_type.clone(),
        pods: a.pods,
        policies,
        headroom: a.headroom,
        history: match &a.history {
            Some(d) => trend::read_history(d)?,
            None => Vec::new(),
        },
        now,
        min_nodes: a.min_nodes,
        horizon_days: a.horizon_days,
    })
}

fn ranges_request(a: &RangesArgs) -> Result<ranges::Request, ReportError> {
    let cfg = AgentConfig::from_lookup(&a.settings.values).map_err(input)?;
    let suggest = a
        .suggest
        .as_deref()
        .map(|s| {
            s.trim_start_matches('/')
                .parse::<u8>()
                .ok()
                .filter(|n| (8..=28).contains(n))
                .ok_or_else(|| input(format!("--suggest {s:?}: give a prefix length /8 to /28")))
        })
        .transpose()?;
    Ok(ranges::Request {
        selection: selection(&a.subnets, &cfg)?,
        pod_subnets: a
            .pod_subnets
            .iter()
            .map(|s| {
                s.parse::<SubnetId>()
                    .map_err(|e| input(format!("--pod-subnet {s}: {e}")))
            })
            .collect::<Result<_, _>>()?,
        service_cidr: a
            .service_cidr
            .as_deref()
            .map(|c| {
                c.parse::<ipnet::Ipv4Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| input(format!("--service-cidr {c:?} is not an IPv4 CIDR")))
            })
            .transpose()?,
        remote: match &a.remote {
            Some(p) => ranges::read_remote(p)?,
            None => Vec::new(),
        },
        suggest,
        suggest_count: a.suggest_count,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ReportError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| input(format!("tokio runtime: {e}")))
}

fn finish(findings: usize) -> ExitCode {
    ExitCode::from(if findings > 0 {
        EXIT_FINDINGS
    } else {
        EXIT_CLEAN
    })
}

fn failed(e: ReportError) -> ExitCode {
    eprintln!("prefixd: {e}");
    ExitCode::from(EXIT_UNREADABLE)
}

/// Runs `prefixd capacity`.
pub fn run_capacity(a: &CapacityArgs) -> ExitCode {
    let go = || -> Result<ExitCode, ReportError> {
        let req = capacity_request(a)?;
        let r = runtime()?.block_on(async {
            let ec2 = SdkRead::from_env().await;
            capacity::report(&ec2, &req).await
        })?;
        if let Some(dir) = &a.svg {
            std::fs::create_dir_all(dir).map_err(|e| ReportError::File {
                path: dir.display().to_string(),
                why: e.to_string(),
            })?;
            for s in &r.subnets {
                let path = dir.join(format!("{}.svg", s.id));
                let title = format!("{} {} — /28 map", s.id, s.cidr);
                std::fs::write(&path, picture::svg(&s.map, &title)).map_err(|e| {
                    ReportError::File {
                        path: path.display().to_string(),
                        why: e.to_string(),
                    }
                })?;
            }
        }
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("a report serializes")
            );
        } else {
            print!("{}", r.render(!a.no_grid));
        }
        Ok(finish(r.findings.len()))
    };
    go().unwrap_or_else(failed)
}

/// Runs `prefixd ranges`.
pub fn run_ranges(a: &RangesArgs) -> ExitCode {
    let go = || -> Result<ExitCode, ReportError> {
        let req = ranges_request(a)?;
        let r = runtime()?.block_on(async {
            let ec2 = SdkRead::from_env().await;
            ranges::report(&ec2, &req).await
        })?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("a report serializes")
            );
        } else {
            print!("{}", r.render(req.suggest));
        }
        Ok(finish(r.findings.len()))
    };
    go().unwrap_or_else(failed)
}
