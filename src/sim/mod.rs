//! `prefixd simulate`: N virtual nodes on virtual time against the mock EC2's model, under a
//! pod workload, once per policy; a table compares what each policy cost.
//!
//! prefixd's nodes run the real agent, assembled by [`crate::agent::AgentBuilder`] with its pool
//! inline and in memory on virtual time and no endpoints: discovery, the pool owner, the loop
//! with its planner, backoff and client-side limiter. The VPC CNI's nodes run [`baseline`] in a
//! 5 s loop. Both reach EC2 through [`crate::mock::DirectEc2`]: the mock's account (model,
//! token buckets, latency) behind the SDK's retry policy. Part of the test bench (cargo feature
//! `testbench`).
//!
//! Each policy runs in its own single-threaded tokio runtime with time paused, so a run is a
//! pure function of the profile and its seed. Kubelet is modelled where it matters: a failed
//! CNI ADD is retried after kubelet's pod-sync backoff (10 s, jittered up to 50 %).

pub mod baseline;
mod ipamd;
mod node;
pub mod profile;
pub mod report;
mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::agent::config::AgentConfig;
use crate::core::{InstanceId, UnixMillis};
use crate::ec2::Action;
use crate::mock::Account;
use crate::mock::control::{Control, Stats};
use crate::mock::model::{Model, Tags};
use crate::mock::scenario::LatencySpec;
use node::{SimNode, start_node};
use profile::{Phase, PolicySpec, Profile};
use report::{PhaseReport, PolicyReport, Report};
use workload::{run_phase, sample};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The profile is wrong.
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// A policy's setting is wrong.
    #[error("policy `{policy}`: {why}")]
    Policy {
        /// The policy.
        policy: String,
        /// What is wrong and what to do.
        why: String,
    },
    /// The virtual account could not be built (e.g. a subnet too small for the fleet).
    #[error("setting up the simulated account: {0}")]
    Setup(String),
}

/// kubelet's pod-sync backoff after a failed sandbox creation: 10 s, jitter factor 0.5
/// (pkg/kubelet: backOffPeriod, workerBackOffPeriodJitterFactor).
const KUBELET_BACKOFF: Duration = Duration::from_secs(10);
/// How long prefixd-cni waits for an address (its default `timeout`).
const CNI_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the fleet's holdings are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The Unix time at which every simulated node's clock starts (2026-01-01).
const SIM_EPOCH: UnixMillis = UnixMillis(1_767_225_600_000);

/// The agent settings a policy's env vars give, through the agent's own tables, defaults and
/// validation (the process environment is not read).
pub fn agent_config(policy: &PolicySpec) -> Result<AgentConfig, SimError> {
    AgentConfig::from_pairs(&policy.env).map_err(|e| SimError::Policy {
        policy: policy.label(),
        why: e.to_string(),
    })
}

/// Runs every policy of `profile`.
pub fn run(profile: &Profile) -> Result<Report, SimError> {
    profile.validate()?;
    let configs = profile
        .policies
        .iter()
        .map(agent_config)
        .collect::<Result<Vec<_>, _>>()?;
    let mut policies = Vec::new();
    for (spec, cfg) in profile.policies.iter().zip(configs) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| SimError::Setup(format!("tokio runtime: {e}")))?;
        let started = std::time::Instant::now();
        let mut r = rt.block_on(run_policy(profile, spec, cfg))?;
        r.wall_ms = started.elapsed().as_millis() as u64;
        policies.push(r);
    }
    Ok(Report {
        profile: profile.name.clone(),
        description: profile.description.clone(),
        nodes: profile.nodes,
        instance_type: profile.instance_type.clone(),
        duration: profile.duration.clone(),
        seed: profile.seed,
        throttling: profile.throttling,
        latency: profile.latency,
        policies,
    })
}

fn seed_of(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b)
        .wrapping_add(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

// ---- what is recorded --------------------------------------------------------------------------

#[derive(Default)]
struct PhaseRec {
    pods: u64,
    unserved: u64,
    last_served: Option<Instant>,
    start_stats: Option<Stats>,
    start_tokens: BTreeMap<Action, f64>,
    end_stats: Option<Stats>,
}

#[derive(Default)]
struct Rec {
    /// Pods created per node, and of those never served.
    node_pods: Vec<u64>,
    node_unserved: Vec<u64>,
    waits: Vec<Duration>,
    pods: u64,
    unserved: u64,
    failed_adds: u64,
    used: u64,
    phases: Vec<PhaseRec>,
    samples: u64,
    held_sum: f64,
    used_sum: f64,
    held_peak: u64,
    prefixes_peak: u64,
    enis_peak: u64,
}

type Shared = Arc<Mutex<Rec>>;

struct Ctx {
    profile: Profile,
    account: Arc<Account>,
    /// The simulated nodes' instances (an account from a scenario holds others' ENIs too).
    instances: Mutex<std::collections::HashSet<String>>,
    nodes: Vec<Arc<SimNode>>,
    rec: Shared,
    stop: watch::Receiver<bool>,
    next_pod: std::sync::atomic::AtomicU64,
    origin: Instant,
}

/// The account, its nodes' subnet, and the nodes' instances when they launch before the run.
fn build_account(p: &Profile) -> Result<(Model, String, Vec<InstanceId>), SimError> {
    let setup = |e: crate::mock::ApiError| SimError::Setup(e.to_string());
    let (mut model, subnet) = match (p.scenario_path(), &p.subnet) {
        (Some(path), Some(name)) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| SimError::Setup(format!("scenario {shown}: {e}")))?;
            let built = crate::mock::Scenario::parse(&text, &shown)
                .and_then(|s| s.build(&shown))
                .map_err(|e| SimError::Setup(e.to_string()))?;
            let subnet = built
                .names
                .get(name)
                .filter(|id| id.starts_with("subnet-"))
                .cloned()
                .ok_or_else(|| {
                    SimError::Setup(format!("scenario {shown} has no subnet named {name:?}"))
                })?;
            (built.model, subnet)
        }
        _ => {
            let net: ipnet::Ipv4Net = p.subnet_cidr.parse().expect("validated");
            let mut model = Model::new("us-west-2");
            let vpc_net = ipnet::Ipv4Net::new(net.network(), 16)
                .expect("16 is a valid length")
                .trunc();
            let vpc = model.create_vpc(vpc_net, Tags::new()).map_err(setup)?;
            let subnet = model
                .create_subnet(&vpc, net.trunc(), Some("us-west-2a".into()), Tags::new())
                .map_err(setup)?;
            (model, subnet)
        }
    };
    if let Some(choice) = p.addresses {
        model.set_address_choice(choice, p.seed);
    }
    if p.latency {
        model.attach_delay_ms = 2_000;
    }
    let mut ids = Vec::new();
    if !p.launch_at_boot {
        for i in 0..p.nodes {
            ids.push(launch(&mut model, p, &subnet).map_err(|e| {
                SimError::Setup(format!(
                    "node {i} of {}: {e}; give the profile a larger subnet_cidr",
                    p.nodes
                ))
            })?);
        }
    }
    if p.fragment {
        model.fragment_subnet(&subnet).map_err(setup)?;
    }
    Ok((model, subnet, ids))
}

fn launch(
    model: &mut Model,
    p: &Profile,
    subnet: &str,
) -> Result<InstanceId, crate::mock::ApiError> {
    let id = model.run_instance(&p.instance_type, subnet, vec![], "ami-sim".into(), 0)?;
    Ok(id.parse().expect("the model makes valid ids"))
}

async fn run_policy(
    p: &Profile,
    spec: &PolicySpec,
    cfg: AgentConfig,
) -> Result<PolicyReport, SimError> {
    let (model, subnet, instances) = build_account(p)?;
    let mut control = Control::new(p.seed);
    control.throttling = p.throttling;
    if p.latency {
        for (a, d) in LatencySpec::realistic().actions {
            let a: Action = a.parse().expect("the latency model names known actions");
            control.latency.insert(a, p.duration_of(&d));
        }
    }
    // Start-up calls are not the workload's: the counts start once the account exists.
    let account = Arc::new(Account::new(model, control));
    let (stop_tx, stop_rx) = watch::channel(false);
    let origin = Instant::now();
    let nodes: Vec<Arc<SimNode>> = (0..p.nodes as usize)
        .map(|index| {
            Arc::new(SimNode {
                index,
                agent: OnceLock::new(),
                ready: watch::channel(false).0,
                drained: watch::channel(false).0,
                live: AtomicU32::new(0),
                clock_origin: origin,
            })
        })
        .collect();
    let rec: Shared = Arc::new(Mutex::new(Rec {
        phases: p.phases.iter().map(|_| PhaseRec::default()).collect(),
        node_pods: vec![0; p.nodes as usize],
        node_unserved: vec![0; p.nodes as usize],
        ..Rec::default()
    }));
    let ctx = Arc::new(Ctx {
        profile: p.clone(),
        account: account.clone(),
        instances: Mutex::new(instances.iter().map(|i| i.to_string()).collect()),
        nodes: nodes.clone(),
        rec: rec.clone(),
        stop: stop_rx.clone(),
        next_pod: std::sync::atomic::AtomicU64::new(1),
        origin,
    });
    let boot = p.duration_of(&p.boot_spread);
    for node in &nodes {
        let at = boot.mul_f64(node.index as f64 / f64::from(p.nodes));
        let id = instances.get(node.index).cloned();
        let (ctx, node, cfg, subnet) = (ctx.clone(), node.clone(), cfg.clone(), subnet.clone());
        let kind = spec.agent;
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let id = match id {
                Some(id) => id,
                None => match ctx.account.with_model(|m| launch(m, &ctx.profile, &subnet)) {
                    Ok(id) => {
                        ctx.instances
                            .lock()
                            .expect("instances")
                            .insert(id.to_string());
                        id
                    }
                    Err(e) => {
                        tracing::warn!(node = node.index, error = %e, "simulated node could not launch");
                        return;
                    }
                },
            };
            start_node(ctx, node, id, kind, cfg).await;
        });
    }
    for (i, ph) in p.phases.iter().enumerate() {
        tokio::spawn(run_phase(ctx.clone(), i, ph.clone()));
    }
    let first_phase = p
        .phases
        .iter()
        .map(|ph| p.duration_of(ph.at()))
        .min()
        .unwrap_or(boot);
    tokio::spawn(sample(ctx.clone(), first_phase));
    tokio::time::sleep(p.duration_of(&p.duration)).await;
    let _ = stop_tx.send(true);
    // Let every task see the stop.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let stats = account.stats();
    let rec = std::mem::take(&mut *rec.lock().expect("rec"));
    Ok(report::summarize(spec, rec_into(rec, p, origin), stats))
}

/// What [`report::summarize`] needs from a run.
pub struct RunData {
    /// Address waits of served pods.
    pub waits: Vec<Duration>,
    /// Pods created.
    pub pods: u64,
    /// Pods still waiting at the end.
    pub unserved: u64,
    /// CNI ADDs that failed (kubelet retried).
    pub failed_adds: u64,
    /// Time-averaged addresses held in EC2 (after the first phase starts).
    pub held_avg: f64,
    /// Time-averaged addresses used by pods.
    pub used_avg: f64,
    /// Peaks.
    pub held_peak: u64,
    /// Peak prefixes.
    pub prefixes_peak: u64,
    /// Peak ENIs.
    pub enis_peak: u64,
    /// Per phase.
    pub phases: Vec<PhaseReport>,
    /// Nodes that had pods, and of those the ones every pod of which got an address.
    pub nodes_with_pods: u64,
    /// See `nodes_with_pods`.
    pub nodes_served: u64,
}

fn rec_into(rec: Rec, p: &Profile, origin: Instant) -> RunData {
    let phases = p
        .phases
        .iter()
        .zip(&rec.phases)
        .map(|(ph, r)| {
            let at = p.duration_of(ph.at());
            let all_served_s = match (r.unserved, r.last_served) {
                (0, Some(t)) if r.pods > 0 => {
                    Some(t.duration_since(origin).as_secs_f64() - at.as_secs_f64())
                }
                _ => None,
            };
            let (bound_s, throttled, mutating) = match (&r.start_stats, &r.end_stats) {
                (Some(a), Some(b)) if matches!(ph, Phase::ScaleUp { .. }) => {
                    let mut bound = 0.0f64;
                    let mut mutating = BTreeMap::new();
                    for action in Action::AGENT.iter().filter(|a| a.is_mutating()) {
                        let n = b.ok_calls(*action).saturating_sub(a.ok_calls(*action));
                        if n == 0 {
                            continue;
                        }
                        mutating.insert(action.name().to_owned(), n);
                        let spec = action.bucket(false);
                        let tokens = r.start_tokens.get(action).copied().unwrap_or(spec.capacity);
                        bound = bound.max((n as f64 - tokens).max(0.0) / spec.refill);
                    }
                    let thr: u64 =
                        b.throttled.values().sum::<u64>() - a.throttled.values().sum::<u64>();
                    (Some(bound), thr, mutating)
                }
                _ => (None, 0, BTreeMap::new()),
            };
            PhaseReport {
                kind: ph.kind().to_owned(),
                at: ph.at().to_owned(),
                pods: r.pods,
                unserved: r.unserved,
                all_served_s,
                bucket_bound_s: bound_s,
                throttled_in_window: throttled,
                mutating_calls: mutating,
            }
        })
        .collect();
    let n = rec.samples.max(1) as f64;
    let with_pods = rec.node_pods.iter().filter(|n| **n > 0).count() as u64;
    let served = rec
        .node_pods
        .iter()
        .zip(&rec.node_unserved)
        .filter(|(p, u)| **p > 0 && **u == 0)
        .count() as u64;
    RunData {
        nodes_with_pods: with_pods,
        nodes_served: served,
        waits: rec.waits,
        pods: rec.pods,
        unserved: rec.unserved,
        failed_adds: rec.failed_adds,
        held_avg: rec.held_sum / n,
        used_avg: rec.used_sum / n,
        held_peak: rec.held_peak,
        prefixes_peak: rec.prefixes_peak,
        enis_peak: rec.enis_peak,
        phases,
    }
}
