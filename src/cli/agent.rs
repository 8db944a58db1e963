//! `prefixd agent`: the settings into a config, IMDS (or INSTANCE_ID) for who we are, the SDK
//! client from aws-config, the agent assembled and run until SIGTERM.

use std::sync::Arc;

use super::{CliError, runtime, shutdown_signal};
use crate::agent::AgentBuilder;
use crate::agent::config::AgentConfig;
use crate::core::settings::Values;
use crate::ec2::sdk::SdkEc2;
use crate::metrics::Metrics;

/// Runs the agent until SIGTERM: then drains, writes the checkpoint and returns (an error, so a
/// non-zero exit, when that last write fails).
pub fn run(values: &Values) -> Result<(), CliError> {
    let cfg = AgentConfig::from_lookup(values)?;
    runtime()?.block_on(async {
        let (instance, imds_region) = match &cfg.instance_id {
            Some(id) => (id.clone(), None),
            None => {
                let who = crate::imds::identify()
                    .await
                    .map_err(crate::agent::AgentError::from)?;
                (who.instance, who.region)
            }
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if std::env::var("AWS_REGION").is_err()
            && std::env::var("AWS_DEFAULT_REGION").is_err()
            && let Some(r) = imds_region
        {
            loader = loader.region(aws_config::Region::new(r));
        }
        let conf = loader.load().await;
        let metrics = Arc::new(Metrics::new());
        let ec2 = SdkEc2::new(
            crate::ec2::sdk::client(&conf),
            cfg.limiter.limiter(),
            metrics.clone(),
        );
        let agent = AgentBuilder::new(cfg, ec2, instance)
            .metrics(metrics)
            .start()
            .await?;
        if let Some(e) = agent.endpoints {
            tracing::info!(introspection = %e.introspection, metrics = %e.metrics, "agent started");
        }
        shutdown_signal().await;
        tracing::info!("stopping: draining requests and writing the checkpoint");
        if let Err(e) = agent.shutdown().await {
            tracing::error!(error = %e, "final checkpoint write failed");
            return Err(crate::agent::AgentError::FinalCheckpoint(e.to_string()).into());
        }
        Ok(())
    })
}
