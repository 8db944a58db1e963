//! `prefixd agent` settings: every one an env var and a flag, validated into [`AgentConfig`]
//! before anything starts; a bad value stops start-up with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::PoolArgs;
use crate::core::config::{ConfigError, PoolConfig, parse_bool, parse_duration};
use crate::core::{InstanceId, SubnetId};

/// Agent flags and env vars (the warm targets come from [`PoolArgs`]).
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Warm targets and mode.
    #[command(flatten)]
    pub pool: PoolArgs,
    /// The node's instance id; default: from IMDS.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Pod cap; default: the EKS max-pods formula for the instance type.
    #[arg(long, env = "MAX_PODS")]
    pub max_pods: Option<String>,
    /// Subnets for new ENIs, comma-separated; default: the node's subnet.
    #[arg(long, env = "POD_SUBNET_IDS")]
    pub pod_subnet_ids: Option<String>,
    /// Assign /32 secondary addresses when no /28 can be had (fragmented subnet, or an
    /// endpoint without prefix support), so that pods still start.
    #[arg(long, env = "SECONDARY_IP_FALLBACK", default_value = "true")]
    pub secondary_ip_fallback: String,
    /// Never change EC2; hand out only what is attached.
    #[arg(
        long,
        env = "DISABLE_NETWORK_RESOURCE_PROVISIONING",
        default_value = "false"
    )]
    pub disable_network_resource_provisioning: String,
    /// Full resync with EC2 this often.
    #[arg(long, env = "RECONCILE_INTERVAL", default_value = "60s")]
    pub reconcile_interval: String,
    /// Excess is released only after it has lasted this long.
    #[arg(long, env = "RELEASE_DELAY", default_value = "30s")]
    pub release_delay: String,
    /// After InsufficientCidrBlocks, do not ask that subnet for prefixes for this long.
    #[arg(long, env = "INSUFFICIENT_CIDR_COOLDOWN", default_value = "120s")]
    pub insufficient_cidr_cooldown: String,
    /// The pool loop's tick (it also wakes at once when an ADD finds no address).
    #[arg(long, env = "POOL_TICK", default_value = "1s")]
    pub pool_tick: String,
    /// How often leaked ENIs (tagged, available) are looked for.
    #[arg(long, env = "LEAK_SWEEP_INTERVAL", default_value = "5m")]
    pub leak_sweep_interval: String,
    /// An available tagged ENI of another instance is a leak once this old.
    #[arg(long, env = "LEAKED_ENI_AGE", default_value = "5m")]
    pub leaked_eni_age: String,
    /// Tags new ENIs with cluster.k8s.amazonaws.com/name and sweeps only that cluster's leaks.
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Client-side limit on mutating EC2 calls, per second (sustained).
    #[arg(long, env = "EC2_API_QPS", default_value = "0.01")]
    pub ec2_api_qps: String,
    /// Client-side burst of mutating EC2 calls.
    #[arg(long, env = "EC2_API_BURST", default_value = "40")]
    pub ec2_api_burst: String,
    /// Checkpoint file.
    #[arg(
        long,
        env = "CHECKPOINT_PATH",
        default_value = "/var/lib/prefixd/checkpoint.json"
    )]
    pub checkpoint_path: PathBuf,
    /// Move an unreadable checkpoint aside and start empty (never done without this flag).
    #[arg(long, env = "DISCARD_CHECKPOINT", default_value = "false")]
    pub discard_checkpoint: String,
    /// The CNI plugin's socket.
    #[arg(long, env = "SOCKET_PATH", default_value = "/run/prefixd/agent.sock")]
    pub socket_path: PathBuf,
    /// Introspection and health HTTP (/v1/pool, /v1/enis, /v1/allocations, /v1/config,
    /// /healthz, /readyz).
    #[arg(
        long,
        env = "INTROSPECTION_BIND_ADDRESS",
        default_value = "127.0.0.1:61679"
    )]
    pub introspection_bind_address: SocketAddr,
    /// Prometheus metrics HTTP (/metrics).
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = "127.0.0.1:61678")]
    pub metrics_bind_address: SocketAddr,
}

/// Validated agent settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentConfig {
    /// Warm targets, mode, cooldown.
    pub pool: PoolConfig,
    /// INSTANCE_ID.
    pub instance_id: Option<InstanceId>,
    /// MAX_PODS.
    pub max_pods: Option<u32>,
    /// POD_SUBNET_IDS.
    pub pod_subnet_ids: Vec<SubnetId>,
    /// SECONDARY_IP_FALLBACK.
    pub secondary_ip_fallback: bool,
    /// DISABLE_NETWORK_RESOURCE_PROVISIONING.
    pub disable_provisioning: bool,
    /// RECONCILE_INTERVAL.
    #[serde(with = "ms")]
    pub reconcile_interval: Duration,
    /// RELEASE_DELAY.
    #[serde(with = "ms")]
    pub release_delay: Duration,
    /// INSUFFICIENT_CIDR_COOLDOWN.
    #[serde(with = "ms")]
    pub insufficient_cidr_cooldown: Duration,
    /// POOL_TICK.
    #[serde(with = "ms")]
    pub pool_tick: Duration,
    /// LEAK_SWEEP_INTERVAL.
    #[serde(with = "ms")]
    pub leak_sweep_interval: Duration,
    /// LEAKED_ENI_AGE.
    #[serde(with = "ms")]
    pub leaked_eni_age: Duration,
    /// CLUSTER_NAME.
    pub cluster_name: Option<String>,
    /// EC2_API_QPS.
    pub ec2_api_qps: f64,
    /// EC2_API_BURST.
    pub ec2_api_burst: u32,
    /// CHECKPOINT_PATH.
    pub checkpoint_path: PathBuf,
    /// DISCARD_CHECKPOINT.
    pub discard_checkpoint: bool,
    /// SOCKET_PATH.
    pub socket_path: PathBuf,
    /// INTROSPECTION_BIND_ADDRESS.
    pub introspection_bind_address: SocketAddr,
    /// METRICS_BIND_ADDRESS.
    pub metrics_bind_address: SocketAddr,
}

mod ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

fn err(var: &'static str, value: &str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        value: value.to_owned(),
        why: why.into(),
    }
}

fn positive_duration(var: &'static str, v: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(var, v)?;
    if d.is_zero() {
        return Err(err(var, v, "must be longer than 0"));
    }
    Ok(d)
}

impl AgentArgs {
    /// Validates every setting.
    pub fn to_config(&self) -> Result<AgentConfig, ConfigError> {
        let pool = self.pool.to_config()?;
        let instance_id = self
            .instance_id
            .as_deref()
            .map(|v| {
                v.parse().map_err(|e: crate::core::types::TypeError| {
                    err("INSTANCE_ID", v, e.to_string())
                })
            })
            .transpose()?;
        let max_pods = self
            .max_pods
            .as_deref()
            .map(|v| {
                let n = crate::core::config::parse_count("MAX_PODS", v, 65_535)?;
                if n == 0 {
                    Err(err("MAX_PODS", v, "must be at least 1"))
                } else {
                    Ok(n)
                }
            })
            .transpose()?;
        let pod_subnet_ids = match self.pod_subnet_ids.as_deref() {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse().map_err(|e: crate::core::types::TypeError| {
                        err("POD_SUBNET_IDS", v, e.to_string())
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let qps: f64 = self
            .ec2_api_qps
            .trim()
            .parse()
            .ok()
            .filter(|q: &f64| q.is_finite() && *q > 0.0 && *q <= 1000.0)
            .ok_or_else(|| {
                err(
                    "EC2_API_QPS",
                    &self.ec2_api_qps,
                    "set a number of calls per second above 0 and at most 1000",
                )
            })?;
        let burst = crate::core::config::parse_count("EC2_API_BURST", &self.ec2_api_burst, 10_000)?;
        if burst == 0 {
            return Err(err(
                "EC2_API_BURST",
                &self.ec2_api_burst,
                "must be at least 1",
            ));
        }
        Ok(AgentConfig {
            pool,
            instance_id,
            max_pods,
            pod_subnet_ids,
            secondary_ip_fallback: parse_bool(
                "SECONDARY_IP_FALLBACK",
                &self.secondary_ip_fallback,
            )?,
            disable_provisioning: parse_bool(
                "DISABLE_NETWORK_RESOURCE_PROVISIONING",
                &self.disable_network_resource_provisioning,
            )?,
            reconcile_interval: positive_duration("RECONCILE_INTERVAL", &self.reconcile_interval)?,
            release_delay: parse_duration("RELEASE_DELAY", &self.release_delay)?,
            insufficient_cidr_cooldown: parse_duration(
                "INSUFFICIENT_CIDR_COOLDOWN",
                &self.insufficient_cidr_cooldown,
            )?,
            pool_tick: positive_duration("POOL_TICK", &self.pool_tick)?,
            leak_sweep_interval: positive_duration(
                "LEAK_SWEEP_INTERVAL",
                &self.leak_sweep_interval,
            )?,
            leaked_eni_age: parse_duration("LEAKED_ENI_AGE", &self.leaked_eni_age)?,
            cluster_name: self.cluster_name.clone().filter(|c| !c.is_empty()),
            ec2_api_qps: qps,
            ec2_api_burst: burst,
            checkpoint_path: self.checkpoint_path.clone(),
            discard_checkpoint: parse_bool("DISCARD_CHECKPOINT", &self.discard_checkpoint)?,
            socket_path: self.socket_path.clone(),
            introspection_bind_address: self.introspection_bind_address,
            metrics_bind_address: self.metrics_bind_address,
        })
    }
}
