//! The test bench's subcommands (cargo feature `testbench`; the node image has none of them):
//! `prefixd mock-ec2`, `prefixd simulate`, and the wiring of `prefixd demo`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, runtime, shutdown_signal};
use crate::mock::scenario::{LatencySpec, Scenario, ScenarioError};
use crate::sim::SimError;
use crate::sim::profile::{PolicySpec, Profile};

/// A test-bench command failed.
#[derive(Debug, thiserror::Error)]
pub enum TestbenchError {
    /// A mock scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A simulation could not run.
    #[error(transparent)]
    Simulate(#[from] SimError),
    /// The demo failed.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// The emulated VPC could not start.
    #[error(transparent)]
    Dataplane(#[from] crate::mock::vpc::VpcError),
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
    /// Also emulate the VPC's data plane in network namespaces (Linux, root): a router that
    /// judges sources as EC2 does, a namespace per instance with its ENIs' links (hot-plugged),
    /// the mock's EC2 API and IMDS inside each, a peer and an internet host.
    #[arg(long)]
    pub dataplane: bool,
}

/// Runs `prefixd mock-ec2` until interrupted.
pub fn run_mock(args: &MockArgs) -> Result<(), CliError> {
    let (mut scenario, name) = match &args.scenario {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| CliError::File {
                path: p.clone(),
                source,
            })?;
            let name = p.display().to_string();
            (
                Scenario::parse(&text, &name).map_err(TestbenchError::from)?,
                name,
            )
        }
        None => (Scenario::default_scenario(), "default".to_owned()),
    };
    if args.throttle {
        scenario.throttling.enabled = true;
    }
    if args.realistic_latency {
        scenario.latency = LatencySpec::realistic();
    }
    let built = scenario.build(&name).map_err(TestbenchError::from)?;
    runtime()?.block_on(async {
        let serve = |source| CliError::Serve {
            what: format!("mock EC2 on {}", args.listen),
            source,
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(serve)?;
        let account = std::sync::Arc::new(crate::mock::Account::new(built.model, built.control));
        let mut names = built.names;
        let dataplane = if args.dataplane {
            Some(std::sync::Arc::new(
                crate::mock::vpc::Dataplane::start(
                    account.clone(),
                    &mut names,
                    &scenario.dataplane,
                )
                .await
                .map_err(TestbenchError::from)?,
            ))
        } else {
            None
        };
        let server =
            crate::mock::MockServer::serve(vec![listener], account, names, built.imds_instance)
                .map_err(serve)?;
        let mut line =
            serde_json::json!({ "endpoint": server.endpoint(), "names": server.names() });
        if let Some(d) = &dataplane {
            server.set_dataplane(d.clone());
            line["dataplane"] = serde_json::to_value(d.topology()).expect("a topology serializes");
        }
        println!("{line}");
        shutdown_signal().await;
        server.shutdown().await;
        if let Some(d) = dataplane {
            d.shutdown().await;
        }
        Ok(())
    })
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
    if args.list {
        for (name, what) in crate::sim::profile::builtins() {
            println!("{name:8} {what}");
        }
        return Ok(());
    }
    let sim = |e: SimError| CliError::from(TestbenchError::from(e));
    let mut p = Profile::load(&args.profile).map_err(|e| sim(e.into()))?;
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
                sim(SimError::Policy {
                    policy: "--policy".into(),
                    why,
                })
            })?;
    }
    let report = crate::sim::run(&p).map_err(sim)?;
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

impl From<crate::demo::DemoError> for CliError {
    fn from(e: crate::demo::DemoError) -> Self {
        match e {
            // A bad setting exits 2, as for the agent.
            crate::demo::DemoError::Config(c) => CliError::Config(c),
            other => CliError::Testbench(other.into()),
        }
    }
}
