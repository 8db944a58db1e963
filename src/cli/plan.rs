//! `prefixd plan`: a pool snapshot and warm targets in, the planner's plan out as JSON.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use super::settings::{PoolTables, SettingArgs};
use crate::core::config::PoolConfig;
use crate::core::planner::{self, PoolSnapshot};

/// `prefixd plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pool snapshot JSON (the shape of the agent's /v1/pool); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Warm targets.
    #[command(flatten)]
    pub pool: SettingArgs<PoolTables>,
}

/// Runs `prefixd plan`: returns the plan as pretty JSON.
pub fn run(args: &PlanArgs) -> Result<String, CliError> {
    let cfg = PoolConfig::from_lookup(&args.pool.values)?;
    let file = |source| CliError::File {
        path: args.state.clone(),
        source,
    };
    let bytes = if args.state.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v).map_err(file)?;
        v
    } else {
        std::fs::read(&args.state).map_err(file)?
    };
    let name = args.state.display();
    let snapshot: PoolSnapshot = serde_json::from_slice(&bytes)
        .map_err(|e| CliError::Input(format!("{name} is not a pool snapshot: {e}")))?;
    snapshot
        .validate()
        .map_err(|e| CliError::Input(format!("{name}: {e}")))?;
    let plan = planner::plan(&snapshot, &cfg.targets, cfg.mode());
    Ok(serde_json::to_string_pretty(&plan).expect("a plan serializes"))
}
