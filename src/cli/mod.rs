//! The `prefixd` command line: subcommands, their flags (the settings tables' env vars, each also
//! a flag) and what they run. Thin: parse, call the domain, print. The binary in
//! `src/bin/prefixd.rs` only calls [`main`]. No domain imports this module.
//!
//! Subcommands: `agent` ([`agent`]), `plan` ([`plan`]), `status` ([`status`]), `install-cni`
//! ([`install`]), `capacity` and `ranges` ([`report`]); with the `testbench` feature also
//! `mock-ec2`, `demo` and `simulate` ([`testbench`]).

pub mod agent;
pub mod install;
pub mod plan;
pub mod report;
pub mod settings;
pub mod status;
#[cfg(feature = "testbench")]
pub mod testbench;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::core::settings::ConfigError;
use settings::{AgentTables, SettingArgs};

/// prefixd: AWS VPC prefix-delegation node agent for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "prefixd", version, about, long_about = None)]
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
    Plan(plan::PlanArgs),
    /// Run the node agent (the DaemonSet's container): every setting is an env var and a flag.
    Agent(Box<SettingArgs<AgentTables>>),
    /// Print the running agent's pool as a table (from its introspection endpoint).
    Status(StatusArgs),
    /// How many more nodes fit in the cluster's subnets under these warm targets, which subnet
    /// runs out first and when: /28 maps, best and worst case per policy, a suggested prefix
    /// reservation, the trend over earlier reports. Read-only; exit 0 clean, 1 findings, 2
    /// could not read.
    Capacity(Box<report::CapacityArgs>),
    /// Every range the cluster can meet (VPC CIDRs, subnets, service range, peered VPCs, routes,
    /// declared remote ranges, well-known ones) and which collide, routed or not; free ranges
    /// to use instead. Read-only; exit 0 clean, 1 findings, 2 could not read.
    Ranges(Box<report::RangesArgs>),
    /// Install prefixd-cni and the node conflist (the DaemonSet's init container); each file is
    /// written to a temp name and renamed, and the conflist is checked first.
    InstallCni(install::InstallCniArgs),
    /// Run the mock EC2 (EC2 Query API, IMDSv2 and an admin API under /_mock/) on a local port.
    ///
    /// Prints one JSON line with the endpoint and the scenario's names, then serves until
    /// interrupted. Point aws-sdk-ec2 or the aws CLI at the endpoint (`--endpoint-url`), and
    /// IMDS clients at the same address (AWS_EC2_METADATA_SERVICE_ENDPOINT).
    #[cfg(feature = "testbench")]
    MockEc2(testbench::MockArgs),
    /// The agent against an in-process mock EC2, with a pod churn through its socket; no AWS
    /// needed. The warm-target env vars change what it shows.
    #[cfg(feature = "testbench")]
    Demo(crate::demo::DemoArgs),
    /// Simulate a fleet on virtual time: N nodes running the real agent loop (or the VPC CNI's
    /// policy, as a baseline) against the mock EC2's model, under a pod workload; prints what
    /// each policy costs (pod wait, EC2 calls, throttling, waste).
    #[cfg(feature = "testbench")]
    Simulate(testbench::SimulateArgs),
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

/// A failed subcommand; printed as `prefixd: <message>` with exit code 1 (2 for bad settings).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not what the command needs.
    #[error("{0}")]
    Input(String),
    /// The agent could not start.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// The agent could not be asked.
    #[error("cannot read the agent's status from {addr}: {why}")]
    Status {
        /// The introspection address.
        addr: SocketAddr,
        /// What failed.
        why: String,
    },
    /// A server or runtime could not start.
    #[error("{what}: {source}")]
    Serve {
        /// What was starting.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A test-bench command failed.
    #[cfg(feature = "testbench")]
    #[error(transparent)]
    Testbench(#[from] testbench::TestbenchError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The environment's part of `prefixd --help`: every setting of the agent's tables, from the
/// tables themselves.
pub fn env_help() -> String {
    let mut s = crate::core::settings::help(
        "Environment (prefixd agent; each also a flag, see `prefixd agent --help`)",
        crate::agent::config::TABLES,
    );
    s.push_str(
        "  AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...   read by aws-config as usual\n\
         \x20 AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_EC2_METADATA_DISABLED   IMDS endpoint / off\n\
         \x20 LOG_FORMAT=text                 json for JSON logs; RUST_LOG=info sets the level",
    );
    s
}

/// Logs to stderr: human-readable, or JSON with LOG_FORMAT=json; level from RUST_LOG
/// (default `default_level`), as `LEVEL` or `TARGET=LEVEL` directives separated by commas.
/// The filter is `tracing_subscriber`'s `Targets`, not its regex-backed `EnvFilter`: the agent
/// is a DaemonSet on every node and its resident memory counts (the regex engine's tables were
/// a megabyte of it). A RUST_LOG it cannot read is named on stderr and the default used.
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = || {
        default_level
            .parse::<tracing_subscriber::filter::Targets>()
            .unwrap_or_else(|_| {
                tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
            })
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!(
                "RUST_LOG={v:?} is not a list of LEVEL or TARGET=LEVEL directives ({e}); \
                 logging at {default_level:?}"
            );
            default()
        }),
        _ => default(),
    };
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

/// A two-worker tokio runtime (the agent's, the mock's).
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| CliError::Serve {
            what: "tokio runtime".into(),
            source,
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
    let matches = Cli::command().after_help(env_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logging(match cli.command {
        // The demo prints its own table; thousands of simulated agents' logs would drown the
        // simulator's.
        #[cfg(feature = "testbench")]
        Command::Demo(_) => "warn",
        #[cfg(feature = "testbench")]
        Command::Simulate(_) => "error",
        Command::Capacity(_) | Command::Ranges(_) => "warn",
        _ => "info",
    });
    let result = match &cli.command {
        Command::Capacity(args) => return report::run_capacity(args),
        Command::Ranges(args) => return report::run_ranges(args),
        Command::Plan(args) => plan::run(args).map(|out| println!("{out}")),
        Command::Agent(args) => agent::run(&args.values),
        Command::Status(args) => status::run(args),
        Command::InstallCni(args) => install::run(args),
        #[cfg(feature = "testbench")]
        Command::MockEc2(args) => testbench::run_mock(args),
        #[cfg(feature = "testbench")]
        Command::Demo(args) => crate::demo::run(args).map_err(CliError::from),
        #[cfg(feature = "testbench")]
        Command::Simulate(args) => testbench::run_simulate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prefixd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
