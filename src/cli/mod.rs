//! The `prefixd` command line: subcommands, their flags (each also an env var) and what they
//! run. The binary in `src/bin/prefixd.rs` only calls [`main`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::core::config::{ConfigError, PoolConfig, defaults, env};
use crate::core::planner::{self, PlanError, PoolSnapshot};

pub mod status;

/// Every env var `prefixd agent` reads, with its default (`prefixd agent --help` shows the
/// matching flags).
pub const ENV_HELP: &str = "\
Environment (prefixd agent; each also a flag, see `prefixd agent --help`):
  WARM_PREFIX_TARGET=1            wholly free /28 prefixes to keep (when WARM_IP_TARGET is 0)
  WARM_IP_TARGET=0                free addresses to keep (0 = unset)
  MINIMUM_IP_TARGET=0             floor on addresses held (0 = unset)
  WARM_ENI_TARGET=1               secondary-IP mode: ENIs' worth of free addresses
  MAX_ENI=-1                      cap on ENIs (-1 = instance limit)
  ENABLE_PREFIX_DELEGATION=true   /28 prefixes, or /32 secondary addresses
  IP_COOLDOWN_PERIOD=30s          released addresses wait this long before reuse
  MAX_PODS=(EKS formula)          pod cap; growth stops there
  POD_SUBNET_IDS=(node subnet)    subnets for new ENIs, comma-separated
  SECONDARY_IP_FALLBACK=true      /32 addresses when no /28 can be had
  DISABLE_NETWORK_RESOURCE_PROVISIONING=false   never change EC2
  RECONCILE_INTERVAL=60s          full resync with EC2
  RELEASE_DELAY=30s               excess must last this long before release
  INSUFFICIENT_CIDR_COOLDOWN=120s no prefixes from a subnet after InsufficientCidrBlocks
  POOL_TICK=1s                    pool loop tick (ADDs wake it at once)
  LEAK_SWEEP_INTERVAL=5m          look for leaked ENIs this often
  LEAKED_ENI_AGE=5m               another node's detached tagged ENI is a leak once this old
  CLUSTER_NAME=(unset)            tag ENIs with the cluster; sweep only its leaks
  EC2_API_QPS=0.01                client-side sustained rate of mutating EC2 calls
  EC2_API_BURST=40                client-side burst of mutating EC2 calls
  CHECKPOINT_PATH=/var/lib/prefixd/checkpoint.json
  DISCARD_CHECKPOINT=false        move an unreadable checkpoint aside and start empty
  SOCKET_PATH=/run/prefixd/agent.sock
  INTROSPECTION_BIND_ADDRESS=127.0.0.1:61679
  METRICS_BIND_ADDRESS=127.0.0.1:61678
  INSTANCE_ID=(from IMDS)         set it where there is no IMDS (LocalStack)
  AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...   read by aws-config as usual
  AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_EC2_METADATA_DISABLED   IMDS endpoint / off
  LOG_FORMAT=text                 json for JSON logs; RUST_LOG=info sets the level";

/// prefixd: AWS VPC prefix-delegation node agent for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "prefixd", version, about, long_about = None, after_help = ENV_HELP)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the plan the agent would carry out for a pool snapshot (what-if for warm targets).
    ///
    /// The snapshot has the shape the agent's /v1/pool serves; the targets come from the
    /// environment or the flags below. Prints the plan as JSON.
    Plan(PlanArgs),
    /// Run the mock EC2 (EC2 Query API, IMDSv2 and an admin API under /_mock/) on a local port.
    ///
    /// Prints one JSON line with the endpoint and the scenario's names, then serves until
    /// interrupted. Point aws-sdk-ec2 or the aws CLI at the endpoint (`--endpoint-url`), and
    /// IMDS clients at the same address (AWS_EC2_METADATA_SERVICE_ENDPOINT).
    MockEc2(MockArgs),
    /// Run the node agent (the DaemonSet's container): every setting is an env var and a flag.
    Agent(Box<crate::agent::config::AgentArgs>),
    /// Print the running agent's pool as a table (from its introspection endpoint).
    Status(StatusArgs),
    /// The agent against an in-process mock EC2, with a pod churn through its socket; no AWS
    /// needed. The warm-target env vars change what it shows.
    Demo(crate::demo::DemoArgs),
    /// Install prefixd-cni and the node conflist (the DaemonSet's init container); each file is
    /// written to a temp name and renamed, and the conflist is checked first.
    InstallCni(InstallCniArgs),
    /// Simulate a fleet on virtual time: N nodes running the real agent loop (or the VPC CNI's
    /// policy, as a baseline) against the mock EC2's model, under a pod workload; prints what
    /// each policy costs (pod wait, EC2 calls, throttling, waste).
    Simulate(SimulateArgs),
}

/// `prefixd simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A built-in profile (churn, burst, drain, fleet, targets, fragmented) or a profile JSON file.
    #[arg(long, default_value = "churn")]
    pub profile: String,
    /// Override the profile's node count.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Override the profile's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Replace the profile's policies; repeat to compare, e.g.
    /// `--policy "prefixd WARM_IP_TARGET=5" --policy "vpc-cni WARM_PREFIX_TARGET=1"`.
    #[arg(long = "policy", value_name = "AGENT K=V ...")]
    pub policies: Vec<String>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// List the built-in profiles and exit.
    #[arg(long)]
    pub list: bool,
}

/// Runs `prefixd simulate`.
pub fn run_simulate(args: &SimulateArgs) -> Result<(), CliError> {
    use crate::sim::profile::{PolicySpec, Profile};
    if args.list {
        for (name, what) in crate::sim::profile::builtins() {
            println!("{name:8} {what}");
        }
        return Ok(());
    }
    let mut p = Profile::load(&args.profile).map_err(|e| CliError::Simulate(e.into()))?;
    if let Some(n) = args.nodes {
        p.nodes = n;
    }
    if let Some(s) = args.seed {
        p.seed = s;
    }
    if !args.policies.is_empty() {
        p.policies = args
            .policies
            .iter()
            .map(|s| PolicySpec::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|why| {
                CliError::Simulate(crate::sim::SimError::Policy {
                    policy: "--policy".into(),
                    why,
                })
            })?;
    }
    let report = crate::sim::run(&p).map_err(CliError::Simulate)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// `prefixd install-cni`.
#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// Where CNI plugins live on the host.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where CNI configs live on the host.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The plugin binary to install.
    #[arg(long, default_value = "/usr/local/bin/prefixd-cni")]
    pub plugin: PathBuf,
    /// The conflist to install.
    #[arg(long, default_value = "/etc/prefixd/10-prefixd.conflist")]
    pub conflist: PathBuf,
}

fn install_file(
    src: &std::path::Path,
    dir: &std::path::Path,
    mode: u32,
) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &std::path::Path, source| CliError::Read {
        path: path.to_owned(),
        source,
    };
    let name = src
        .file_name()
        .ok_or_else(|| io(src, std::io::Error::other("no file name")))?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(src, &tmp).map_err(|e| io(src, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    Ok(dest)
}

/// Runs `prefixd install-cni`.
pub fn run_install_cni(args: &InstallCniArgs) -> Result<(), CliError> {
    let conf = std::fs::read(&args.conflist).map_err(|source| CliError::Read {
        path: args.conflist.clone(),
        source,
    })?;
    crate::cni::check_conflist(&conf).map_err(|e| CliError::Status {
        addr: "127.0.0.1:0".parse().expect("addr"),
        why: format!(
            "{} is not a usable conflist: {} ({})",
            args.conflist.display(),
            e.msg,
            e.details
        ),
    })?;
    let bin = install_file(&args.plugin, &args.bin_dir, 0o755)?;
    let conf = install_file(&args.conflist, &args.conf_dir, 0o644)?;
    println!("installed {} and {}", bin.display(), conf.display());
    Ok(())
}

/// `prefixd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's introspection address.
    #[arg(
        long,
        env = "INTROSPECTION_BIND_ADDRESS",
        default_value = "127.0.0.1:61679"
    )]
    pub introspection: SocketAddr,
}

/// `prefixd mock-ec2`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:4567")]
    pub listen: SocketAddr,
    /// Scenario JSON (VPCs, subnets, instances, throttling, latency, faults); default: one
    /// VPC, one subnet, one m5.large named `node`.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Turn EC2's token-bucket throttling on (overrides the scenario).
    #[arg(long)]
    pub throttle: bool,
    /// Use the built-in latency model of real EC2 (overrides the scenario's).
    #[arg(long)]
    pub realistic_latency: bool,
}

/// `prefixd plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pool snapshot JSON (the shape of the agent's /v1/pool); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Warm targets.
    #[command(flatten)]
    pub pool: PoolArgs,
}

/// The warm-pool settings, each a flag and an env var with the VPC CNI's name.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Wholly free /28 prefixes to keep (used when WARM_IP_TARGET is 0).
    #[arg(long, env = env::WARM_PREFIX_TARGET, default_value = defaults::WARM_PREFIX_TARGET, allow_hyphen_values = true)]
    pub warm_prefix_target: String,
    /// Free addresses to keep; 0 = unset.
    #[arg(long, env = env::WARM_IP_TARGET, default_value = defaults::WARM_IP_TARGET, allow_hyphen_values = true)]
    pub warm_ip_target: String,
    /// Floor on the addresses held; 0 = unset. Never stops WARM_PREFIX_TARGET's growth.
    #[arg(long, env = env::MINIMUM_IP_TARGET, default_value = defaults::MINIMUM_IP_TARGET, allow_hyphen_values = true)]
    pub minimum_ip_target: String,
    /// ENIs' worth of free addresses to keep (secondary-IP mode).
    #[arg(long, env = env::WARM_ENI_TARGET, default_value = defaults::WARM_ENI_TARGET, allow_hyphen_values = true)]
    pub warm_eni_target: String,
    /// Cap on ENIs; -1 = the instance type's limit.
    #[arg(long, env = env::MAX_ENI, default_value = defaults::MAX_ENI, allow_hyphen_values = true)]
    pub max_eni: String,
    /// Delegate /28 prefixes (true) or assign /32 secondary addresses (false).
    #[arg(long, env = env::ENABLE_PREFIX_DELEGATION, default_value = defaults::ENABLE_PREFIX_DELEGATION)]
    pub enable_prefix_delegation: String,
    /// How long a released address waits before reuse (500ms, 30s, 2m or bare seconds).
    #[arg(long, env = env::IP_COOLDOWN_PERIOD, default_value = defaults::IP_COOLDOWN_PERIOD)]
    pub ip_cooldown_period: String,
}

impl PoolArgs {
    /// Validates the values through the core's one parser.
    pub fn to_config(&self) -> Result<PoolConfig, ConfigError> {
        let m: BTreeMap<&str, &String> = [
            (env::WARM_PREFIX_TARGET, &self.warm_prefix_target),
            (env::WARM_IP_TARGET, &self.warm_ip_target),
            (env::MINIMUM_IP_TARGET, &self.minimum_ip_target),
            (env::WARM_ENI_TARGET, &self.warm_eni_target),
            (env::MAX_ENI, &self.max_eni),
            (
                env::ENABLE_PREFIX_DELEGATION,
                &self.enable_prefix_delegation,
            ),
            (env::IP_COOLDOWN_PERIOD, &self.ip_cooldown_period),
        ]
        .into_iter()
        .collect();
        PoolConfig::from_lookup(|k| m.get(k).map(|v| (*v).clone()))
    }
}

/// A failed subcommand; printed as `prefixd: <message>` with exit code 1 (2 for bad settings).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot is not valid JSON of the snapshot's shape.
    #[error("{path} is not a pool snapshot: {source}")]
    SnapshotJson {
        /// The file.
        path: PathBuf,
        /// Where and what.
        #[source]
        source: serde_json::Error,
    },
    /// A mock scenario is invalid.
    #[error(transparent)]
    Scenario(crate::mock::scenario::ScenarioError),
    /// The agent could not start.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// A simulation could not run.
    #[error(transparent)]
    Simulate(crate::sim::SimError),
    /// The agent could not be asked.
    #[error("cannot read the agent's status from {addr}: {why}")]
    Status {
        /// The introspection address.
        addr: SocketAddr,
        /// What failed.
        why: String,
    },
    /// A server could not start.
    #[error("{what}: {source}")]
    Serve {
        /// What was starting.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot parses but is inconsistent.
    #[error("{path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: PlanError,
    },
}

impl From<crate::mock::scenario::ScenarioError> for CliError {
    fn from(e: crate::mock::scenario::ScenarioError) -> Self {
        CliError::Scenario(e)
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Runs `prefixd plan`: returns the plan as pretty JSON.
pub fn run_plan(args: &PlanArgs) -> Result<String, CliError> {
    let cfg = args.pool.to_config()?;
    let bytes = if args.state.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v).map_err(|source| {
            CliError::Read {
                path: args.state.clone(),
                source,
            }
        })?;
        v
    } else {
        std::fs::read(&args.state).map_err(|source| CliError::Read {
            path: args.state.clone(),
            source,
        })?
    };
    let snapshot: PoolSnapshot =
        serde_json::from_slice(&bytes).map_err(|source| CliError::SnapshotJson {
            path: args.state.clone(),
            source,
        })?;
    snapshot.validate().map_err(|source| CliError::Snapshot {
        path: args.state.clone(),
        source,
    })?;
    let plan = planner::plan(&snapshot, &cfg.targets, cfg.mode());
    Ok(serde_json::to_string_pretty(&plan).expect("a plan serializes"))
}

/// Logs to stderr: human-readable, or JSON with LOG_FORMAT=json; level from RUST_LOG
/// (default info).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| CliError::Serve {
            what: "tokio runtime".into(),
            source,
        })
}

/// Runs `prefixd agent` until SIGTERM: then drains, writes the checkpoint and returns.
pub fn run_agent(args: &crate::agent::config::AgentArgs) -> Result<(), CliError> {
    use crate::ec2::limiter::Limiter;
    use crate::ec2::sdk::SdkEc2;
    let cfg = args.to_config()?;
    runtime()?.block_on(async {
        let (instance, imds_region) = crate::agent::identify(&cfg).await?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if std::env::var("AWS_REGION").is_err()
            && std::env::var("AWS_DEFAULT_REGION").is_err()
            && let Some(r) = imds_region
        {
            loader = loader.region(aws_config::Region::new(r));
        }
        let conf = loader.load().await;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let ec2 = SdkEc2::new(
            crate::ec2::sdk::client(&conf),
            Limiter::new(cfg.ec2_api_qps, cfg.ec2_api_burst),
            metrics.clone(),
        );
        let agent = crate::agent::start(cfg, ec2, instance, metrics).await?;
        tracing::info!(introspection = %agent.introspection_addr, metrics = %agent.metrics_addr, "agent started");
        shutdown_signal().await;
        tracing::info!("stopping: draining requests and writing the checkpoint");
        if let Err(e) = agent.shutdown().await {
            tracing::error!(error = %e, "final checkpoint write failed");
        }
        Ok(())
    })
}

/// Runs `prefixd mock-ec2` until interrupted.
pub fn run_mock(args: &MockArgs) -> Result<(), CliError> {
    use crate::mock::scenario::{LatencySpec, Scenario};
    let (mut scenario, name) = match &args.scenario {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| CliError::Read {
                path: p.clone(),
                source,
            })?;
            let name = p.display().to_string();
            (Scenario::parse(&text, &name)?, name)
        }
        None => (Scenario::default_scenario(), "default".to_owned()),
    };
    if args.throttle {
        scenario.throttling.enabled = true;
    }
    if args.realistic_latency {
        scenario.latency = LatencySpec::realistic();
    }
    let built = scenario.build(&name)?;
    runtime()?.block_on(async {
        let server = crate::mock::MockServer::start(built, args.listen)
            .await
            .map_err(|source| CliError::Serve {
                what: format!("mock EC2 on {}", args.listen),
                source,
            })?;
        println!(
            "{}",
            serde_json::json!({ "endpoint": server.endpoint(), "names": server.names() })
        );
        shutdown_signal().await;
        server.shutdown().await;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Entry point of the `prefixd` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own table; its logs would interleave with it.
    init_logging(match cli.command {
        Command::Demo(_) => "warn",
        // Thousands of virtual agents: their logs would drown the table.
        Command::Simulate(_) => "error",
        _ => "info",
    });
    let result = match &cli.command {
        Command::Plan(args) => run_plan(args).map(|out| println!("{out}")),
        Command::MockEc2(args) => run_mock(args),
        Command::Agent(args) => run_agent(args),
        Command::Status(args) => status::run(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::InstallCni(args) => run_install_cni(args),
        Command::Simulate(args) => run_simulate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prefixd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
