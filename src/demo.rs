//! `prefixd demo`: the real agent against the mock EC2 (in-process, over HTTP, with EC2's
//! latency model), and a pod churn driven through the agent's socket exactly as the CNI plugin
//! does. Shows the pool live and ends with a summary. No AWS needed (test bench: cargo feature
//! `testbench`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use clap::Args;

use crate::agent::AgentBuilder;
use crate::agent::config::{self, AgentConfig};
use crate::core::PodKey;
use crate::core::settings::{ConfigError, Values, parse_duration};
use crate::ec2::sdk::SdkEc2;
use crate::ipc::{self, Op};
use crate::metrics::Metrics;
use crate::mock::MockServer;
use crate::mock::scenario::{LatencySpec, Scenario, ScenarioError};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A setting (an env var, or `--duration`) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded scenario did not build.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The agent could not start.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// The runtime or the mock could not start.
    #[error("{what}: {source}")]
    Start {
        /// What was starting.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not become ready.
    #[error("the agent did not become ready: {0}")]
    NotReady(String),
    /// The churn could not talk to the agent.
    #[error("the pod churn failed: {0}")]
    Churn(#[from] ipc::ClientError),
}

/// `prefixd demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Peak number of pods.
    #[arg(long, default_value_t = 60)]
    pub pods: u32,
    /// How long the churn runs.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Seed of the churn.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Run the mock without its latency model (faster, less realistic).
    #[arg(long)]
    pub no_latency: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<(), DemoError> {
    let duration = parse_duration("--duration", &args.duration)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| DemoError::Start {
            what: "tokio runtime",
            source,
        })?;
    rt.block_on(demo(args.clone(), duration))
}

/// The agent's settings: the process environment's, with demo-friendly timings where it sets
/// none, and the demo's own files and ports.
fn settings(instance: &str, dir: &std::path::Path) -> Result<AgentConfig, ConfigError> {
    let mut v = Values::from_env(config::TABLES);
    for (var, value) in [
        (config::RELEASE_DELAY.var, "5s"),
        (crate::core::config::IP_COOLDOWN_PERIOD.var, "5s"),
        (crate::ec2::limiter::EC2_API_QPS.var, "5"),
    ] {
        if !v.contains(var) {
            v.set(var, value);
        }
    }
    v.set(config::INSTANCE_ID.var, instance);
    v.set(
        config::CHECKPOINT_PATH.var,
        dir.join("checkpoint.json").display().to_string(),
    );
    v.set(
        config::SOCKET_PATH.var,
        dir.join("agent.sock").display().to_string(),
    );
    v.set(config::INTROSPECTION_BIND_ADDRESS.var, "127.0.0.1:0");
    v.set(config::METRICS_BIND_ADDRESS.var, "127.0.0.1:0");
    // The demo's instance is the mock's: this machine's own network is never touched.
    v.set(crate::hostnet::config::ENABLE_HOST_NETWORKING.var, "false");
    AgentConfig::from_lookup(&v)
}

async fn demo(args: DemoArgs, duration: Duration) -> Result<(), DemoError> {
    let mut scenario = Scenario::default_scenario();
    if !args.no_latency {
        scenario.latency = LatencySpec::realistic();
    }
    let built = scenario.build("default")?;
    let mock = MockServer::start(built, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(|source| DemoError::Start {
            what: "mock EC2",
            source,
        })?;
    let instance = mock
        .id("node")
        .expect("the default scenario has a node")
        .to_owned();
    let dir = std::env::temp_dir().join(format!("prefixd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket: PathBuf = dir.join("agent.sock");
    let cfg = settings(&instance, &dir)?;
    let metrics = Arc::new(Metrics::new());
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .endpoint_url(mock.endpoint())
        .credentials_provider(Credentials::new("demo", "demo", None, None, "demo"))
        .retry_config(crate::ec2::sdk::retry_config(
            crate::ec2::RetryPolicy::AGENT,
        ))
        .build();
    let ec2 = SdkEc2::new(
        aws_sdk_ec2::Client::from_conf(conf),
        cfg.limiter.limiter(),
        metrics.clone(),
    );
    println!(
        "prefixd demo: mock EC2 at {} (one VPC, one subnet, one m5.large {instance})",
        mock.endpoint()
    );
    println!(
        "targets: WARM_PREFIX_TARGET={} WARM_IP_TARGET={} MINIMUM_IP_TARGET={} prefix delegation={} cooldown={:?} release delay={:?}",
        cfg.pool.targets.warm_prefix_target,
        cfg.pool.targets.warm_ip_target,
        cfg.pool.targets.minimum_ip_target,
        cfg.pool.prefix_delegation,
        cfg.pool.cooldown,
        cfg.release_delay
    );
    let agent_settle = cfg.pool.cooldown + cfg.release_delay + Duration::from_secs(3);
    let agent = AgentBuilder::new(cfg, ec2, instance.parse().expect("mock ids are valid"))
        .metrics(metrics)
        .start()
        .await?;
    agent
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(DemoError::NotReady)?;
    let ia = agent.introspection_addr();
    println!(
        "agent ready; introspection on http://{ia} (try `prefixd status --introspection {ia}`)\n"
    );
    println!(
        "{:>5} {:>5} {:>5} {:>9} {:>9} {:>8} {:>5} {:>8} {:>7}  mode",
        "t", "pods", "ENIs", "prefixes", "assigned", "cooling", "free", "pending", "EC2"
    );

    // The churn, on a blocking thread: the plugin's client is blocking.
    let sock = socket.clone();
    let peak = args.pods.max(1);
    let seed = args.seed | 1;
    let driver = tokio::task::spawn_blocking(move || churn(&sock, peak, duration, seed));

    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    // After the churn, watch long enough for cooldowns to end and the excess to be released.
    let settle = agent_settle;
    let mut churn_done: Option<Instant> = None;
    loop {
        ticker.tick().await;
        if churn_done.is_none() && driver.is_finished() {
            churn_done = Some(Instant::now());
        }
        if churn_done.is_some_and(|t| t.elapsed() >= settle) {
            break;
        }
        if let Ok(v) = agent.pool.inventory().await {
            let t = v.totals();
            println!(
                "{:>4}s {:>5} {:>5} {:>9} {:>9} {:>8} {:>5} {:>8} {:>7}  {}",
                start.elapsed().as_secs(),
                v.allocations.len(),
                v.enis.len(),
                t.prefixes,
                t.assigned,
                t.cooling,
                t.free(),
                agent.pool.pending(),
                mock.stats().mutating_calls(),
                agent.status.view().mode
            );
        }
    }
    let report = driver.await.expect("churn thread")?;
    let stats = mock.stats();
    let view = agent.pool.inventory().await.ok();
    println!("\nsummary");
    let mut lat = report.add_latencies.clone();
    lat.sort();
    println!(
        "  {} ADDs, {} DELs through the socket; ADD latency p50 {} p99 {} max {}",
        report.adds,
        report.dels,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    println!(
        "  addresses handed out: {} distinct, never two pods on one address at a time: {}",
        report.distinct,
        if report.conflicts == 0 { "yes" } else { "NO" }
    );
    let calls: BTreeMap<_, _> = stats
        .calls
        .iter()
        .filter(|(a, _)| a.is_mutating())
        .map(|(a, n)| (a.name(), n))
        .collect();
    println!(
        "  EC2 calls: {} in all, {} mutating: {:?}",
        stats.total_calls(),
        stats.mutating_calls(),
        calls
    );
    if let Some(v) = view {
        println!(
            "  pool now: {} ENIs, {} prefixes, {} pods; {} checkpoint writes",
            v.enis.len(),
            v.totals().prefixes,
            v.allocations.len(),
            agent.pool.checkpoint_writes()
        );
    }
    if let Some(p) = agent.status.view().last_plan {
        println!("  last plan: {}", p.reason);
    }
    let _ = agent.shutdown().await;
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct ChurnReport {
    adds: u64,
    dels: u64,
    add_latencies: Vec<Duration>,
    distinct: usize,
    conflicts: u64,
}

/// Scale up to `peak` pods, churn, then scale down, through the agent socket.
fn churn(
    socket: &std::path::Path,
    peak: u32,
    duration: Duration,
    seed: u64,
) -> Result<ChurnReport, DemoError> {
    let mut rng = crate::core::rng::XorShift64::new(seed);
    let start = Instant::now();
    let mut live: Vec<PodKey> = Vec::new();
    let mut holder: BTreeMap<Ipv4Addr, PodKey> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut next = 0u64;
    let mut r = ChurnReport {
        adds: 0,
        dels: 0,
        add_latencies: Vec::new(),
        distinct: 0,
        conflicts: 0,
    };
    while start.elapsed() < duration {
        let phase = start.elapsed().as_secs_f64() / duration.as_secs_f64();
        let target = if phase < 0.35 {
            ((phase / 0.35) * f64::from(peak)).ceil() as usize
        } else if phase < 0.7 {
            peak as usize
        } else {
            (f64::from(peak) * 0.1).ceil() as usize
        };
        let churn_now = (0.35..0.7).contains(&phase) && rng.next_u64() % 3 == 0 && !live.is_empty();
        if live.len() > target || churn_now {
            let i = (rng.next_u64() % live.len() as u64) as usize;
            let key = live.swap_remove(i);
            ipc::call(
                socket,
                Op::Del {
                    key: key.clone(),
                    unlink: None,
                },
                Duration::from_secs(5),
            )?;
            holder.retain(|_, k| *k != key);
            r.dels += 1;
        }
        if live.len() < target {
            next += 1;
            let key = PodKey::new("demo-net", format!("{next:064x}"), "eth0").expect("valid key");
            let t = Instant::now();
            let reply = ipc::call(
                socket,
                Op::Add {
                    key: key.clone(),
                    pod_namespace: "default".into(),
                    pod_name: format!("web-{next}"),
                    timeout_ms: 30_000,
                },
                Duration::from_secs(35),
            )?;
            r.add_latencies.push(t.elapsed());
            r.adds += 1;
            match (reply.address, reply.error) {
                (Some(a), _) => {
                    if holder.insert(a, key.clone()).is_some() {
                        r.conflicts += 1;
                    }
                    seen.insert(a);
                    live.push(key);
                }
                (None, Some(e)) => eprintln!("ADD failed: {:?}: {}", e.kind, e.message),
                (None, None) => eprintln!("ADD answered without an address"),
            }
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    r.distinct = seen.len();
    Ok(r)
}
