//! `prefixd agent`: discovery, the pool owner, the pool loop, the plugin socket and the HTTP
//! endpoints, started in that order and stopped in reverse.
//!
//! Start: discover the node (IMDS or INSTANCE_ID, then EC2), load the checkpoint, resync with
//! EC2 (dropping and counting allocations outside attached prefixes), then serve the socket.
//! Stop (SIGTERM): close the socket, drain requests in flight, stop the loop, write the
//! checkpoint.

pub mod config;
pub mod http;
pub mod pool;
pub mod reconcile;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::core::checkpoint::CheckpointError;
use crate::core::instance_types;
use crate::core::planner::Limits;
use crate::core::rng::XorShift64;
use crate::core::{InstanceId, Mode};
use crate::ec2::{Ec2, Ec2Error, ErrorClass, TypeLimits};
use crate::metrics::Metrics;
use config::AgentConfig;
use pool::PoolHandle;
use reconcile::{Looper, Node};
use status::Status;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node could not be identified.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// An EC2 call at start-up failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// The checkpoint could not be loaded.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The settings cannot work on this node.
    #[error("{0}")]
    Unsupported(String),
    /// A listener could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Where.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Retries `f` on throttled and transient errors, with jittered exponential backoff, up to
/// eight attempts (about a minute): start-up must not fail on one throttled call. The jitter
/// comes from `seed` (the instance id), so that a fleet spreads out and a simulated run repeats.
async fn retrying<T, F, Fut>(what: &str, seed: &str, mut f: F) -> Result<T, Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Ec2Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0u32;
    let mut rng = XorShift64::from_text(seed, 0xCBF2_9CE4_8422_2325);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e)
                if attempt < 7
                    && matches!(e.class, ErrorClass::Throttled | ErrorClass::Transient) =>
            {
                attempt += 1;
                let jittered = delay.mul_f64(0.5 + rng.next_f64() / 2.0);
                tracing::warn!(what, attempt, error = %e, retry_ms = jittered.as_millis() as u64, "start-up EC2 call failed; retrying");
                tokio::time::sleep(jittered).await;
                delay = (delay * 2).min(Duration::from_secs(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Finds the node's type, subnet, security groups and limits through EC2 (DescribeInstances,
/// DescribeInstanceTypes; the built-in table when the latter fails).
pub async fn discover<E: Ec2>(
    ec2: &E,
    cfg: &AgentConfig,
    instance: &InstanceId,
) -> Result<Node, AgentError> {
    let info = retrying("DescribeInstances", instance.as_str(), || {
        ec2.describe_instance(instance)
    })
    .await?;
    let limits: TypeLimits = match retrying("DescribeInstanceTypes", instance.as_str(), || {
        ec2.describe_instance_type(&info.instance_type)
    })
    .await
    {
        Ok(l) => l,
        Err(e) => {
            let t = instance_types::lookup(&info.instance_type).ok_or_else(|| {
                AgentError::Discovery(format!(
                    "DescribeInstanceTypes failed ({e}) and {} is not in the built-in table",
                    info.instance_type
                ))
            })?;
            tracing::warn!(error = %e, instance.type = %info.instance_type, "DescribeInstanceTypes failed: using the built-in table");
            TypeLimits {
                max_enis: t.max_enis,
                ipv4_per_eni: t.ipv4_per_eni,
                supports_prefixes: t.supports_prefixes(),
                vcpus: t.vcpus,
            }
        }
    };
    let vcpus = if limits.vcpus > 0 {
        limits.vcpus
    } else {
        instance_types::lookup(&info.instance_type).map_or(2, |t| t.vcpus)
    };
    let prefix_mode = cfg.pool.mode() == Mode::Prefix;
    if prefix_mode && !limits.supports_prefixes && !cfg.secondary_ip_fallback {
        return Err(AgentError::Unsupported(format!(
            "instance type {} is not a Nitro instance and cannot take prefixes; set \
             ENABLE_PREFIX_DELEGATION=false, or SECONDARY_IP_FALLBACK=true to use /32 addresses",
            info.instance_type
        )));
    }
    let slots = limits.ipv4_per_eni.saturating_sub(1);
    let formula = instance_types::InstanceTypeInfo {
        name: info.instance_type.clone(),
        max_enis: limits.max_enis,
        ipv4_per_eni: limits.ipv4_per_eni,
        ipv6_per_eni: 0,
        hypervisor: if limits.supports_prefixes {
            "nitro".into()
        } else {
            "xen".into()
        },
        bare_metal: false,
        max_cards: 1,
        vcpus,
    }
    .max_pods(prefix_mode && limits.supports_prefixes);
    let max_pods = cfg.max_pods.unwrap_or(formula);
    tracing::info!(instance.id = %instance, instance.type = %info.instance_type, subnet.id = %info.subnet,
        max_enis = limits.max_enis, slots_per_eni = slots, max_pods, prefixes = limits.supports_prefixes, "discovered the node");
    Ok(Node {
        instance: instance.clone(),
        instance_type: info.instance_type,
        subnet: info.subnet,
        security_groups: info.security_groups,
        primary_eni: info.primary_eni,
        limits: Limits {
            max_enis: limits.max_enis.max(1),
            slots_per_eni: slots.max(1),
            max_pods,
        },
        supports_prefixes: limits.supports_prefixes,
    })
}

/// A running agent.
pub struct AgentHandle {
    /// The pool owner.
    pub pool: PoolHandle,
    /// Status.
    pub status: Arc<Status>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The node.
    pub node: Node,
    /// Introspection address actually bound.
    pub introspection_addr: std::net::SocketAddr,
    /// Metrics address actually bound.
    pub metrics_addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    socket: JoinHandle<()>,
}

impl AgentHandle {
    /// Waits until the first resync is done and the socket serves (or `timeout`).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.status.readiness() {
                Ok(()) => return Ok(()),
                Err(why) if tokio::time::Instant::now() >= deadline => return Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Stops: closes the socket and drains requests in flight, stops the loop and the HTTP
    /// servers, then writes the checkpoint.
    pub async fn shutdown(self) -> Result<(), pool::PoolError> {
        let _ = self.stop.send(true);
        let _ = self.socket.await;
        for t in self.tasks {
            let _ = t.await;
        }
        self.pool.flush().await
    }
}

/// Starts the agent for `instance` with `ec2`.
pub async fn start<E: Ec2>(
    cfg: AgentConfig,
    ec2: E,
    instance: InstanceId,
    metrics: Arc<Metrics>,
) -> Result<AgentHandle, AgentError> {
    // The checkpoint first: an unreadable one stops the agent before it touches EC2.
    let wake = Arc::new(Notify::new());
    let (pool, report) = pool::start(
        &cfg.checkpoint_path,
        cfg.pool.cooldown,
        cfg.discard_checkpoint,
        wake.clone(),
        metrics.clone(),
    )?;
    let node = discover(&ec2, &cfg, &instance).await?;
    if !report.dropped.is_empty() {
        tracing::warn!(
            dropped = report.dropped.len(),
            "allocations outside attached prefixes were dropped from the checkpoint"
        );
    }
    let status = Arc::new(Status::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let bind = |what: &'static str, addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Bind {
                what,
                addr: addr.to_string(),
                source,
            })
    };
    let intro_l = bind("introspection", cfg.introspection_bind_address).await?;
    let metrics_l = bind("metrics", cfg.metrics_bind_address).await?;
    let introspection_addr = intro_l.local_addr().expect("bound");
    let metrics_addr = metrics_l.local_addr().expect("bound");
    let config_json = serde_json::json!({ "config": &cfg, "node": &node });
    let intro = http::introspection(http::Introspection {
        pool: pool.clone(),
        status: status.clone(),
        limits: node.limits,
        config: Arc::new(config_json),
    });
    let mut tasks = vec![
        tokio::spawn(http::serve(intro_l, intro, stop_rx.clone())),
        tokio::spawn(http::serve(
            metrics_l,
            http::metrics_router(metrics.clone()),
            stop_rx.clone(),
        )),
    ];

    let (resynced_tx, resynced_rx) = tokio::sync::oneshot::channel();
    let looper = Looper::new(
        Arc::new(ec2),
        cfg.clone(),
        node.clone(),
        pool.clone(),
        status.clone(),
        metrics.clone(),
        wake,
        resynced_tx,
    );
    tasks.push(tokio::spawn(looper.run(stop_rx.clone())));

    // The socket opens only after the first resync: until then the datastore may hold
    // prefixes EC2 has taken back.
    let socket_path = cfg.socket_path.clone();
    let (pool2, status2, metrics2, mut stop2) = (
        pool.clone(),
        status.clone(),
        metrics.clone(),
        stop_rx.clone(),
    );
    let socket = tokio::spawn(async move {
        tokio::select! {
            r = resynced_rx => if r.is_err() { return },
            _ = stop2.changed() => return,
        }
        match server::bind(&socket_path) {
            Ok(l) => {
                status2.update(|s| s.socket_up = true);
                tracing::info!(socket = %socket_path.display(), "serving the plugin socket");
                server::serve(l, pool2, status2.clone(), metrics2, stop2).await;
                status2.update(|s| s.socket_up = false);
                let _ = std::fs::remove_file(&socket_path);
            }
            Err(e) => {
                tracing::error!(socket = %socket_path.display(), error = %e, "cannot bind the plugin socket")
            }
        }
    });
    Ok(AgentHandle {
        pool,
        status,
        metrics,
        node,
        introspection_addr,
        metrics_addr,
        stop: stop_tx,
        tasks,
        socket,
    })
}

/// The instance id and region from IMDSv2 (aws-config's client), or INSTANCE_ID.
pub async fn identify(cfg: &AgentConfig) -> Result<(InstanceId, Option<String>), AgentError> {
    if let Some(id) = &cfg.instance_id {
        return Ok((id.clone(), None));
    }
    let mut b = aws_config::imds::Client::builder();
    if let Ok(ep) = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        b = b.endpoint(ep.as_str()).map_err(|e| {
            AgentError::Discovery(format!(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT={ep:?} is not a URL: {e}"
            ))
        })?;
    } else if std::env::var("AWS_EC2_METADATA_DISABLED")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(AgentError::Discovery(
            "IMDS is disabled (AWS_EC2_METADATA_DISABLED=true) and INSTANCE_ID is not set; set INSTANCE_ID \
             (and AWS_REGION), or AWS_EC2_METADATA_SERVICE_ENDPOINT"
                .into(),
        ));
    }
    let imds = b.build();
    let id = imds.get("/latest/meta-data/instance-id").await.map_err(|e| {
        AgentError::Discovery(format!(
            "IMDS did not give the instance id ({e}); where there is no IMDS (LocalStack), set INSTANCE_ID and AWS_REGION"
        ))
    })?;
    let region = imds
        .get("/latest/meta-data/placement/region")
        .await
        .ok()
        .map(String::from);
    let id = String::from(id)
        .parse()
        .map_err(|e| AgentError::Discovery(format!("IMDS gave a bad instance id: {e}")))?;
    Ok((id, region))
}
