//! `prefixd demo`: the real agent against the mock EC2 (in-process, over HTTP, with EC2's
//! latency model), and a pod churn driven through the agent's socket exactly as the CNI plugin
//! does. Shows the pool live and ends with a summary. No AWS needed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use clap::{Args, Parser};

use crate::agent::config::AgentArgs;
use crate::cli::CliError;
use crate::core::PodKey;
use crate::ec2::limiter::Limiter;
use crate::ec2::sdk::SdkEc2;
use crate::ipc::{self, Op};
use crate::metrics::Metrics;
use crate::mock::MockServer;
use crate::mock::scenario::{LatencySpec, Scenario};

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

#[derive(Parser)]
struct AgentOnly {
    #[command(flatten)]
    agent: AgentArgs,
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
pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    let duration = crate::core::config::parse_duration("--duration", &args.duration)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| CliError::Serve {
            what: "tokio runtime".into(),
            source,
        })?;
    rt.block_on(demo(args.clone(), duration))
}

async fn demo(args: DemoArgs, duration: Duration) -> Result<(), CliError> {
    let mut scenario = Scenario::default_scenario();
    if !args.no_latency {
        scenario.latency = LatencySpec::realistic();
    }
    let built = scenario.build("default")?;
    let mock = MockServer::start(built, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(|source| CliError::Serve {
            what: "mock EC2".into(),
            source,
        })?;
    let instance = mock
        .id("node")
        .expect("the default scenario has a node")
        .to_owned();
    let dir = std::env::temp_dir().join(format!("prefixd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let socket: PathBuf = dir.join("agent.sock");
    let mut argv: Vec<String> = vec![
        "agent".into(),
        "--instance-id".into(),
        instance.clone(),
        "--checkpoint-path".into(),
        dir.join("checkpoint.json").display().to_string(),
        "--socket-path".into(),
        socket.display().to_string(),
        "--introspection-bind-address".into(),
        "127.0.0.1:0".into(),
        "--metrics-bind-address".into(),
        "127.0.0.1:0".into(),
    ];
    // Demo-friendly timings unless the environment sets them.
    for (var, flag, value) in [
        ("RELEASE_DELAY", "--release-delay", "5s"),
        ("IP_COOLDOWN_PERIOD", "--ip-cooldown-period", "5s"),
        ("EC2_API_QPS", "--ec2-api-qps", "5"),
    ] {
        if std::env::var(var).is_err() {
            argv.push(flag.into());
            argv.push(value.into());
        }
    }
    let parsed = AgentOnly::try_parse_from(&argv).map_err(|e| CliError::Status {
        addr: "127.0.0.1:0".parse().expect("addr"),
        why: e.to_string(),
    })?;
    let cfg = parsed.agent.to_config()?;
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
        Limiter::new(cfg.ec2_api_qps, cfg.ec2_api_burst),
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
    let agent = crate::agent::start(
        cfg,
        ec2,
        instance.parse().expect("mock ids are valid"),
        metrics,
    )
    .await?;
    agent
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|why| CliError::Status {
            addr: agent.introspection_addr,
            why,
        })?;
    println!(
        "agent ready; introspection on http://{} (try `prefixd status --introspection {}`)\n",
        agent.introspection_addr, agent.introspection_addr
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
        if let Ok(v) = agent.pool.view().await {
            let (mut prefixes, mut a, mut c, mut t) = (0, 0, 0, 0);
            for e in &v.enis {
                for p in &e.prefixes {
                    prefixes += 1;
                    t += 16;
                    a += p.assigned;
                    c += p.cooling;
                }
                for ip in &e.secondary_ips {
                    t += 1;
                    a += (ip.state == "assigned") as u32;
                    c += (ip.state == "cooling") as u32;
                }
            }
            let stats = mock.stats();
            println!(
                "{:>4}s {:>5} {:>5} {:>9} {:>9} {:>8} {:>5} {:>8} {:>7}  {}",
                start.elapsed().as_secs(),
                v.allocations.len(),
                v.enis.len(),
                prefixes,
                a,
                c,
                t - a - c,
                v.pending,
                stats.mutating_calls(),
                agent.status.view().mode
            );
        }
    }
    let report = driver.await.expect("churn thread")?;
    let stats = mock.stats();
    let view = agent.pool.view().await.ok();
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
        .filter(|(a, _)| !a.starts_with("Describe"))
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
            v.enis.iter().map(|e| e.prefixes.len()).sum::<usize>(),
            v.allocations.len(),
            v.checkpoint_writes
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
) -> Result<ChurnReport, CliError> {
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
    let err = |e: ipc::ClientError| CliError::Status {
        addr: "127.0.0.1:0".parse().expect("addr"),
        why: e.to_string(),
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
            ipc::call(socket, Op::Del { key: key.clone() }, Duration::from_secs(5)).map_err(err)?;
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
            )
            .map_err(err)?;
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
