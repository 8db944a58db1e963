//! `prefixd simulate`: N virtual nodes on virtual time against the mock EC2's model, under a
//! pod workload, once per policy; a table compares what each policy cost.
//!
//! prefixd's nodes run the real agent: [`crate::agent::discover`], the pool owner
//! ([`crate::agent::pool::start_inline`]: same code, no thread, in-memory checkpoint) and
//! [`crate::agent::reconcile::Looper::run`], with its planner, backoff and client-side limiter.
//! The VPC CNI's nodes run [`baseline`] in a 5 s loop. Both reach EC2 through [`ec2::SimEc2`]:
//! the mock's model and control (token buckets, latency) behind the SDK's standard retries.
//!
//! Each policy runs in its own single-threaded tokio runtime with time paused, so a run is a
//! pure function of the profile and its seed. Kubelet is modelled where it matters: a failed
//! CNI ADD is retried after kubelet's pod-sync backoff (10 s, jittered up to 50 %).

pub mod baseline;
pub mod ec2;
pub mod profile;
pub mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::agent::config::{AgentArgs, AgentConfig};
use crate::agent::pool::{self, Clock, PoolHandle};
use crate::agent::reconcile::{Looper, Node};
use crate::agent::status::Status;
use crate::core::rng::XorShift64;
use crate::core::{EniId, InstanceId, PodInfo, PodKey, UnixMillis};
use crate::ec2::RetryPolicy;
use crate::ec2::limiter::Limiter;
use crate::ec2::sdk::eni_tags;
use crate::ec2::{Ec2, ErrorClass, NewEni};
use crate::metrics::Metrics;
use crate::mock::control::{Control, Stats, bucket_spec};
use crate::mock::model::{Model, Tags};
use crate::mock::scenario::LatencySpec;
use ec2::{Account, SimEc2};
use profile::{AgentKind, Phase, PolicySpec, Profile};
use report::{PhaseReport, PolicyReport, Report};

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

/// The agent settings a policy's env vars give, through the agent's own flags, defaults and
/// validation (the process environment is not read).
pub fn agent_config(policy: &PolicySpec) -> Result<AgentConfig, SimError> {
    let bad = |why: String| SimError::Policy {
        policy: policy.label(),
        why,
    };
    let cmd = AgentArgs::augment_args(Command::new("simulate"));
    let mut by_env = BTreeMap::new();
    for a in cmd.get_arguments() {
        if let (Some(env), Some(long)) = (a.get_env(), a.get_long()) {
            by_env.insert(env.to_string_lossy().into_owned(), long.to_owned());
        }
    }
    let mut argv = vec!["simulate".to_owned()];
    for (k, v) in &policy.env {
        let long = by_env.get(k).ok_or_else(|| {
            bad(format!(
                "{k} is not an agent setting; known: {}",
                by_env.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        argv.push(format!("--{long}={v}"));
    }
    let cmd = cmd.mut_args(|a| a.env(None::<&str>));
    let m = cmd
        .try_get_matches_from(argv)
        .map_err(|e| bad(e.to_string()))?;
    let args = AgentArgs::from_arg_matches(&m).map_err(|e| bad(e.to_string()))?;
    args.to_config().map_err(|e| bad(e.to_string()))
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
    start_tokens: BTreeMap<String, f64>,
    end_stats: Option<Stats>,
}

#[derive(Default)]
struct Rec {
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

// ---- nodes ---------------------------------------------------------------------------------------

/// One virtual node's agent, as the workload sees it: ADD and DEL.
enum AgentRef {
    Prefixd(PoolHandle),
    VpcCni(Arc<Mutex<baseline::Pool>>),
}

struct SimNode {
    index: usize,
    agent: OnceLock<AgentRef>,
    ready: watch::Sender<bool>,
    drained: watch::Sender<bool>,
    live: AtomicU32,
    clock_origin: Instant,
}

impl SimNode {
    fn key(pod: u64) -> PodKey {
        PodKey::new("sim", format!("c{pod:016x}"), "eth0").expect("valid key")
    }

    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.clock_origin).as_millis() as u64
    }

    /// One CNI ADD: `Ok` with an address, `Err` when it failed (kubelet retries).
    async fn add(&self, pod: u64) -> Result<(), ()> {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
        match self.agent.get().expect("ready") {
            AgentRef::Prefixd(p) => p
                .allocate(
                    Self::key(pod),
                    PodInfo {
                        namespace: "sim".into(),
                        name: format!("pod-{pod}"),
                    },
                    CNI_TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|_| ()),
            AgentRef::VpcCni(p) => p
                .lock()
                .expect("pool lock")
                .allocate(pod, self.now_ms())
                .map(|_| ())
                .ok_or(()),
        }
    }

    async fn del(&self, pod: u64) {
        match self.agent.get() {
            Some(AgentRef::Prefixd(p)) => {
                let _ = p.release(Self::key(pod)).await;
            }
            Some(AgentRef::VpcCni(p)) => p.lock().expect("pool lock").release(pod, self.now_ms()),
            None => {}
        }
    }
}

struct Ctx {
    profile: Profile,
    account: Arc<Account>,
    nodes: Vec<Arc<SimNode>>,
    rec: Shared,
    stop: watch::Receiver<bool>,
    next_pod: std::sync::atomic::AtomicU64,
    origin: Instant,
}

#[derive(PartialEq)]
enum Ended {
    Lifetime,
    Killed,
    Stopped,
}

async fn pod_life(
    ctx: Arc<Ctx>,
    node: Arc<SimNode>,
    phase: usize,
    life: Option<Duration>,
) -> Ended {
    let id = ctx.next_pod.fetch_add(1, Ordering::Relaxed);
    let created = Instant::now();
    let mut kill = node.drained.subscribe();
    let mut stop = ctx.stop.clone();
    if *kill.borrow() {
        return Ended::Killed;
    }
    node.live.fetch_add(1, Ordering::Relaxed);
    {
        let mut r = ctx.rec.lock().expect("rec");
        r.pods += 1;
        r.phases[phase].pods += 1;
    }
    let mut rng = XorShift64::new(seed_of(ctx.profile.seed, id));
    let ended = loop {
        let r = tokio::select! {
            biased;
            _ = kill.changed() => Some(Ended::Killed),
            _ = stop.changed() => Some(Ended::Stopped),
            r = node.add(id) => match r {
                Ok(()) => None,
                Err(()) => {
                    ctx.rec.lock().expect("rec").failed_adds += 1;
                    let backoff = KUBELET_BACKOFF.mul_f64(1.0 + 0.5 * rng.next_f64());
                    tokio::select! {
                        biased;
                        _ = kill.changed() => Some(Ended::Killed),
                        _ = stop.changed() => Some(Ended::Stopped),
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            },
        };
        break r;
    };
    if let Some(e) = ended {
        // Deleted before it started: not a wait, but a pod that never got an address.
        node.del(id).await;
        node.live.fetch_sub(1, Ordering::Relaxed);
        if e == Ended::Stopped {
            let mut r = ctx.rec.lock().expect("rec");
            r.unserved += 1;
            r.phases[phase].unserved += 1;
        }
        return e;
    }
    {
        let now = Instant::now();
        // A scale-up's bound needs the calls made until its last pod's address.
        let stats = matches!(ctx.profile.phases[phase], Phase::ScaleUp { .. })
            .then(|| ctx.account.with_control(|c| c.stats.clone()));
        let mut r = ctx.rec.lock().expect("rec");
        r.waits.push(now - created);
        r.used += 1;
        let ph = &mut r.phases[phase];
        ph.last_served = Some(now);
        if stats.is_some() {
            ph.end_stats = stats;
        }
    }
    let ended = tokio::select! {
        biased;
        _ = kill.changed() => Ended::Killed,
        _ = stop.changed() => Ended::Stopped,
        _ = async {
            match life {
                Some(l) => tokio::time::sleep(l).await,
                None => std::future::pending().await,
            }
        } => Ended::Lifetime,
    };
    if ended != Ended::Stopped {
        node.del(id).await;
    }
    ctx.rec.lock().expect("rec").used -= 1;
    node.live.fetch_sub(1, Ordering::Relaxed);
    ended
}

// ---- the VPC CNI's loop ----------------------------------------------------------------------------

struct VpcEni {
    id: EniId,
    attachment: Option<String>,
    primary: bool,
    created: Instant,
}

struct VpcLoop {
    ec2: SimEc2,
    cfg: AgentConfig,
    node: Node,
    pool: Arc<Mutex<baseline::Pool>>,
    enis: Vec<Option<VpcEni>>,
    account: Arc<Account>,
    last_shrink: Option<Instant>,
    cidr_backoff_until: Option<Instant>,
}

impl VpcLoop {
    /// ipamd's main loop: 2.5 s, pool update, 2.5 s, reconcile (through IMDS: no EC2 call).
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(2_500)) => {}
            }
            self.update().await;
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(2_500)) => {}
            }
        }
    }

    fn max_enis(&self) -> u32 {
        self.cfg
            .pool
            .targets
            .max_eni
            .map_or(self.node.limits.max_enis, |m| {
                m.min(self.node.limits.max_enis)
            })
    }

    async fn update(&mut self) {
        let now = Instant::now();
        let stats = self.pool.lock().expect("pool").stats();
        match baseline::decide(&stats, &self.cfg.pool.targets, self.node.limits.max_pods) {
            baseline::Decision::Grow(n) => {
                if self.cidr_backoff_until.is_none_or(|u| u <= now) {
                    self.grow(n).await;
                }
            }
            baseline::Decision::Shrink(n) => {
                if self
                    .last_shrink
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30))
                {
                    self.shrink(n).await;
                    self.last_shrink = Some(now);
                }
            }
            baseline::Decision::Steady => {}
        }
        self.free_empty_eni(now).await;
    }

    fn insufficient(&mut self, class: ErrorClass) {
        if matches!(
            class,
            ErrorClass::InsufficientCidr | ErrorClass::InsufficientAddresses
        ) {
            self.cidr_backoff_until = Some(Instant::now() + Duration::from_secs(120));
        }
    }

    async fn grow(&mut self, n: u32) {
        let slots = self.node.limits.slots_per_eni;
        let target = {
            let pool = self.pool.lock().expect("pool");
            (0..self.enis.len())
                .filter(|i| self.enis[*i].is_some())
                .map(|i| (i, slots.saturating_sub(pool.prefixes_on(i))))
                .find(|(_, free)| *free > 0)
        };
        if let Some((i, free)) = target {
            let eni = self.enis[i].as_ref().expect("live").id.clone();
            let k = n.max(1).min(free);
            let r = match self.ec2.assign_prefixes(&eni, k).await {
                Err(e) if k > 1 && !matches!(e.class, ErrorClass::InsufficientCidr) => {
                    self.ec2.assign_prefixes(&eni, 1).await
                }
                r => r,
            };
            match r {
                Ok(ps) => self.pool.lock().expect("pool").add(i, &ps),
                Err(e) => self.insufficient(e.class),
            }
            return;
        }
        let live = self.enis.iter().flatten().count() as u32;
        if live >= self.max_enis() {
            return;
        }
        let req = NewEni {
            subnet: self.node.subnet.clone(),
            security_groups: self.node.security_groups.clone(),
            description: "aws-K8S-i (simulated)".into(),
            tags: eni_tags(&self.node.instance, None),
            prefixes: n.max(1).min(slots),
            secondary_ips: 0,
        };
        let info = match self.ec2.create_eni(&req).await {
            Ok(i) => i,
            Err(e) => return self.insufficient(e.class),
        };
        let used: Vec<u32> = self.account.with_model(|m| {
            m.enis_of(self.node.instance.as_str())
                .iter()
                .filter_map(|e| e.attachment.as_ref().map(|a| a.device_index))
                .collect()
        });
        let index = (1..).find(|i| !used.contains(i)).expect("an index");
        let attachment = match self
            .ec2
            .attach_eni(&info.id, &self.node.instance, index)
            .await
        {
            Ok(a) => a,
            Err(_) => {
                let _ = self.ec2.delete_eni(&info.id).await;
                return;
            }
        };
        let _ = self
            .ec2
            .set_delete_on_termination(&info.id, &attachment)
            .await;
        // ipamd waits for the ENI to show in IMDS (no EC2 call).
        loop {
            let ready = self.account.with_model(|m| {
                m.enis
                    .get(info.id.as_str())
                    .and_then(|e| e.attachment.as_ref())
                    .is_none_or(|a| a.ready_at_ms <= self.account.now_ms())
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.enis.push(Some(VpcEni {
            id: info.id.clone(),
            attachment: Some(attachment),
            primary: false,
            created: Instant::now(),
        }));
        let i = self.enis.len() - 1;
        self.pool.lock().expect("pool").add(i, &info.prefixes);
    }

    async fn shrink(&mut self, n: u32) {
        let taken = self.pool.lock().expect("pool").take_free(n);
        let mut by_eni: BTreeMap<usize, Vec<crate::core::Prefix28>> = BTreeMap::new();
        for (eni, p) in taken {
            by_eni.entry(eni).or_default().push(p);
        }
        for (i, ps) in by_eni {
            let id = self.enis[i].as_ref().expect("live").id.clone();
            if self.ec2.unassign(&id, &ps, &[]).await.is_err() {
                self.pool.lock().expect("pool").add(i, &ps);
            }
        }
    }

    async fn free_empty_eni(&mut self, now: Instant) {
        let found = {
            let pool = self.pool.lock().expect("pool");
            (0..self.enis.len()).find(|i| {
                self.enis[*i].as_ref().is_some_and(|e| {
                    !e.primary
                        && pool.prefixes_on(*i) == 0
                        && now.duration_since(e.created) >= Duration::from_secs(60)
                })
            })
        };
        let Some(i) = found else {
            return;
        };
        let e = self.enis[i].take().expect("found");
        if let Some(a) = &e.attachment
            && self.ec2.detach_eni(a).await.is_err()
        {
            self.enis[i] = Some(e);
            return;
        }
        let _ = self.ec2.delete_eni(&e.id).await;
    }
}

// ---- one policy ----------------------------------------------------------------------------------

async fn start_node(
    ctx: Arc<Ctx>,
    node: Arc<SimNode>,
    instance: InstanceId,
    kind: AgentKind,
    cfg: AgentConfig,
) {
    let seed = seed_of(ctx.profile.seed, node.index as u64 + 1);
    let limiter = match kind {
        AgentKind::Prefixd => Some(Limiter::new(cfg.ec2_api_qps, cfg.ec2_api_burst)),
        AgentKind::VpcCni => None,
    };
    let retry = match kind {
        AgentKind::Prefixd => RetryPolicy::AGENT,
        AgentKind::VpcCni => RetryPolicy::STANDARD,
    };
    let sim = SimEc2::new(ctx.account.clone(), limiter, retry, seed);
    let info = match crate::agent::discover(&sim, &cfg, &instance).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(instance = %instance, error = %e, "simulated node could not start");
            return;
        }
    };
    match kind {
        AgentKind::Prefixd => {
            let wake = Arc::new(Notify::new());
            let metrics = Arc::new(Metrics::new());
            let clock = Clock::Virtual {
                origin: node.clock_origin,
                epoch: UnixMillis(1_767_225_600_000),
            };
            let handle =
                pool::start_inline(cfg.pool.cooldown, wake.clone(), metrics.clone(), clock);
            let (tx, rx) = oneshot::channel();
            let looper = Looper::new(
                Arc::new(sim),
                cfg,
                info,
                handle.clone(),
                Arc::new(Status::default()),
                metrics,
                wake,
                tx,
            );
            tokio::spawn(looper.run(ctx.stop.clone()));
            // The agent serves its socket after the first resync.
            let _ = rx.await;
            let _ = node.agent.set(AgentRef::Prefixd(handle));
        }
        AgentKind::VpcCni => {
            let pool = Arc::new(Mutex::new(baseline::Pool::new(
                cfg.pool.cooldown.as_millis() as u64,
                seed,
            )));
            let primary = VpcEni {
                id: info.primary_eni.clone(),
                attachment: None,
                primary: true,
                created: Instant::now(),
            };
            let l = VpcLoop {
                ec2: sim,
                cfg,
                node: info,
                pool: pool.clone(),
                enis: vec![Some(primary)],
                account: ctx.account.clone(),
                last_shrink: None,
                cidr_backoff_until: None,
            };
            tokio::spawn(l.run(ctx.stop.clone()));
            let _ = node.agent.set(AgentRef::VpcCni(pool));
        }
    }
    node.ready.send_replace(true);
}

fn build_account(p: &Profile) -> Result<(Model, Vec<InstanceId>), SimError> {
    let setup = |e: crate::mock::Ec2Error| SimError::Setup(e.to_string());
    let net: ipnet::Ipv4Net = p.subnet_cidr.parse().expect("validated");
    let mut model = Model::new("us-west-2");
    let vpc_net = ipnet::Ipv4Net::new(net.network(), 16)
        .expect("16 is a valid length")
        .trunc();
    let vpc = model.create_vpc(vpc_net, Tags::new()).map_err(setup)?;
    let subnet = model
        .create_subnet(&vpc, net.trunc(), Some("us-west-2a".into()), Tags::new())
        .map_err(setup)?;
    if p.latency {
        model.attach_delay_ms = 2_000;
    }
    let mut ids = Vec::new();
    for i in 0..p.nodes {
        let id = model
            .run_instance(&p.instance_type, &subnet, vec![], "ami-sim".into(), 0)
            .map_err(|e| {
                SimError::Setup(format!(
                    "node {i} of {}: {e}; give the profile a larger subnet_cidr",
                    p.nodes
                ))
            })?;
        ids.push(id.parse().expect("the model makes valid ids"));
    }
    if p.fragment {
        model.fragment_subnet(&subnet).map_err(setup)?;
    }
    Ok((model, ids))
}

async fn run_policy(
    p: &Profile,
    spec: &PolicySpec,
    cfg: AgentConfig,
) -> Result<PolicyReport, SimError> {
    let (model, instances) = build_account(p)?;
    let mut control = Control::new(p.seed);
    control.throttling = p.throttling;
    if p.latency {
        for (a, d) in LatencySpec::realistic().actions {
            let d = p.duration_of(&d);
            control.latency.insert(a, d);
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
        ..Rec::default()
    }));
    let ctx = Arc::new(Ctx {
        profile: p.clone(),
        account: account.clone(),
        nodes: nodes.clone(),
        rec: rec.clone(),
        stop: stop_rx.clone(),
        next_pod: std::sync::atomic::AtomicU64::new(1),
        origin,
    });
    let boot = p.duration_of(&p.boot_spread);
    for (node, id) in nodes.iter().zip(&instances) {
        let at = boot.mul_f64(node.index as f64 / f64::from(p.nodes));
        let (ctx, node, id, cfg) = (ctx.clone(), node.clone(), id.clone(), cfg.clone());
        let kind = spec.agent;
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
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
    let stats = account.with_control(|c| c.stats.clone());
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
}

fn ok_calls(s: &Stats, action: &str) -> u64 {
    let errors: u64 = s.errors.get(action).map_or(0, |m| m.values().sum());
    s.calls_of(action).saturating_sub(errors)
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
                    for action in crate::ec2::ACTIONS
                        .iter()
                        .filter(|a| !a.starts_with("Describe"))
                    {
                        let n = ok_calls(b, action).saturating_sub(ok_calls(a, action));
                        if n == 0 {
                            continue;
                        }
                        mutating.insert((*action).to_owned(), n);
                        let spec = bucket_spec(action, false);
                        let tokens = r
                            .start_tokens
                            .get(*action)
                            .copied()
                            .unwrap_or(spec.capacity);
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
    RunData {
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

/// Samples what the account holds: every ENI in it is a simulated node's (or a detached one
/// on its way out).
async fn sample(ctx: Arc<Ctx>, from: Duration) {
    let mut stop = ctx.stop.clone();
    tokio::time::sleep(from).await;
    loop {
        let (held, prefixes, enis) = ctx.account.with_model(|m| {
            let (mut h, mut p, mut e) = (0u64, 0u64, 0u64);
            for x in m.enis.values() {
                h += 16 * x.prefixes.len() as u64 + x.secondary.len() as u64;
                p += x.prefixes.len() as u64;
                e += 1;
            }
            (h, p, e)
        });
        {
            let mut r = ctx.rec.lock().expect("rec");
            r.samples += 1;
            r.held_sum += held as f64;
            r.used_sum += r.used as f64;
            r.held_peak = r.held_peak.max(held);
            r.prefixes_peak = r.prefixes_peak.max(prefixes);
            r.enis_peak = r.enis_peak.max(enis);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

async fn run_phase(ctx: Arc<Ctx>, index: usize, ph: Phase) {
    let at = ctx.profile.duration_of(ph.at());
    tokio::time::sleep(at).await;
    {
        let now = Instant::now();
        let (stats, tokens) = ctx.account.with_control(|c| {
            let tokens = crate::ec2::ACTIONS
                .iter()
                .map(|a| ((*a).to_owned(), c.tokens(a, now)))
                .collect();
            (c.stats.clone(), tokens)
        });
        let mut r = ctx.rec.lock().expect("rec");
        r.phases[index].start_stats = Some(stats);
        r.phases[index].start_tokens = tokens;
    }
    match ph {
        Phase::ScaleUp { pods_per_node, .. } => {
            for node in &ctx.nodes {
                for _ in 0..pods_per_node {
                    tokio::spawn(pod_life(ctx.clone(), node.clone(), index, None));
                }
            }
        }
        Phase::Churn {
            until,
            pods_per_node,
            mean_lifetime,
            ..
        } => {
            let until = ctx.profile.duration_of(&until);
            let mean = ctx.profile.duration_of(&mean_lifetime);
            for node in &ctx.nodes {
                for slot in 0..pods_per_node {
                    let (ctx, node) = (ctx.clone(), node.clone());
                    tokio::spawn(async move {
                        let mut rng = XorShift64::new(seed_of(
                            ctx.profile.seed ^ 0xC0FFEE,
                            (node.index as u64) << 20 | u64::from(slot),
                        ));
                        let end = ctx.origin + until;
                        while Instant::now() < end {
                            let u = rng.next_f64().max(1e-9);
                            let life = mean.mul_f64(-u.ln());
                            if pod_life(ctx.clone(), node.clone(), index, Some(life)).await
                                != Ended::Lifetime
                            {
                                break;
                            }
                        }
                    });
                }
            }
        }
        Phase::Drain { nodes, .. } => {
            let n = ctx.nodes.len();
            let drained = &ctx.nodes[n - nodes as usize..];
            let keep = &ctx.nodes[..n - nodes as usize];
            let mut moved = 0u32;
            for d in drained {
                moved += d.live.load(Ordering::Relaxed);
                d.drained.send_replace(true);
            }
            for i in 0..moved as usize {
                let node = keep[i % keep.len()].clone();
                tokio::spawn(pod_life(ctx.clone(), node, index, None));
            }
        }
    }
}
