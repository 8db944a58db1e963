//! `prefixd agent`: discovery, the pool owner, the pool loop, the plugin socket and the HTTP
//! endpoints, assembled by one [`AgentBuilder`] and stopped in reverse.
//!
//! Start: load the checkpoint, discover the node (EC2), resync with EC2 (dropping and counting
//! allocations outside attached prefixes), then serve the socket. Stop (SIGTERM): close the
//! socket, drain requests in flight, stop the loop, write the checkpoint.
//!
//! The parts: [`config`] (settings), [`pool`] (the one owner of pool state), [`reconcile`] (the
//! loop), `netplane` (the loop's handle on the node's data plane), [`server`] (the plugin
//! socket), [`http`] (introspection and metrics), [`status`].
//! The builder is the only way in: the simulator asks it for an in-memory pool run inline on
//! virtual time and no endpoints; the agent binary for the threaded pool, the checkpoint file,
//! the socket and HTTP.

mod bounded;
pub mod config;
pub mod http;
pub mod lock;
mod netplane;
pub mod pool;
pub mod reconcile;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::core::backoff::{Backoff, Jitter};
use crate::core::checkpoint::CheckpointError;
use crate::core::instance_types;
use crate::core::planner::Limits;
use crate::core::rng::XorShift64;
use crate::core::{InstanceId, Mode, UnixMillis};
use crate::ec2::{Ec2, Ec2Error, ErrorClass, TypeLimits};
use crate::imds::ImdsError;
use crate::metrics::Metrics;
use config::AgentConfig;
use pool::{Clock, PoolHandle};
use reconcile::{Ctx, Looper, Node};
use status::Status;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// IMDS could not say which instance this is.
    #[error("discovery failed: {0}")]
    Imds(#[from] ImdsError),
    /// The node could not be described.
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
    /// The node's data plane cannot be reached (no netlink socket: not privileged?).
    #[error(
        "cannot program the node's network: {0}; the agent needs CAP_NET_ADMIN, or set ENABLE_HOST_NETWORKING=false"
    )]
    Host(#[from] crate::hostnet::node::HostError),
    /// Another agent holds the checkpoint or the socket.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The last checkpoint write, at shutdown, failed (every acknowledged change was already
    /// durable; the exit status says the shutdown was not clean).
    #[error("final checkpoint write failed: {0}")]
    FinalCheckpoint(String),
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

/// Start-up's retries: 200 ms doubling to 20 s, equal jitter, eight attempts (about a minute).
const STARTUP_RETRY: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(20),
    Jitter::Equal,
);

/// Retries `f` on throttled and transient errors: start-up must not fail on one throttled call.
/// The jitter comes from `seed` (the instance id), so that a fleet spreads out and a simulated
/// run repeats.
async fn retrying<T, F, Fut>(what: &str, seed: &str, mut f: F) -> Result<T, Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Ec2Error>>,
{
    let mut attempt = 0u32;
    let mut rng = XorShift64::from_text(seed, 0xCBF2_9CE4_8422_2325);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e)
                if attempt < 7
                    && matches!(e.class, ErrorClass::Throttled | ErrorClass::Transient) =>
            {
                let wait = STARTUP_RETRY.delay(attempt, &mut rng);
                attempt += 1;
                tracing::warn!(what, attempt, error = %e, retry_ms = wait.as_millis() as u64, "start-up EC2 call failed; retrying");
                tokio::time::sleep(wait).await;
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
    if cfg.families.ipv6 {
        if !limits.supports_prefixes {
            return Err(AgentError::Unsupported(format!(
                "ENABLE_IPv6=true needs a Nitro instance (EC2 delegates the /80 only to Nitro), \
                 and {} is not one; set ENABLE_IPv6=false or move the node to a Nitro type",
                info.instance_type
            )));
        }
        let subnets = retrying("DescribeSubnets", instance.as_str(), || {
            ec2.describe_subnets(std::slice::from_ref(&info.subnet))
        })
        .await?;
        if subnets.iter().all(|s| s.ipv6_cidrs.is_empty()) {
            return Err(AgentError::Unsupported(format!(
                "ENABLE_IPv6=true, but the node's subnet {} has no IPv6 CIDR block: associate a \
                 /64 of the VPC's /56 with it (AssociateSubnetCidrBlock), or set ENABLE_IPv6=false",
                info.subnet
            )));
        }
    }
    let slots = limits.ipv4_per_eni.saturating_sub(1);
    let formula = instance_types::max_pods(
        limits.max_enis,
        limits.ipv4_per_eni,
        vcpus,
        prefix_mode && limits.supports_prefixes,
    );
    let max_pods = cfg.max_pods.unwrap_or(formula);
    tracing::info!(instance.id = %instance, instance.type = %info.instance_type, subnet.id = %info.subnet,
        max_enis = limits.max_enis, slots_per_eni = slots, max_pods, prefixes = limits.supports_prefixes, "discovered the node");
    Ok(Node {
        instance: instance.clone(),
        instance_type: info.instance_type,
        subnet: info.subnet,
        vpc: info.vpc,
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

/// Where the agent's HTTP endpoints listen.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Introspection and health.
    pub introspection: std::net::SocketAddr,
    /// Prometheus metrics.
    pub metrics: std::net::SocketAddr,
}

/// How the pool owner runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// On its own thread, with the checkpoint file (CHECKPOINT_PATH): the agent.
    Threaded,
    /// On the caller's task, in memory: the simulator's thousands of nodes on virtual time.
    Inline,
}

/// Assembles an agent: its pool, its loop and, unless told otherwise, its socket and HTTP
/// endpoints.
pub struct AgentBuilder<E> {
    cfg: AgentConfig,
    ec2: E,
    instance: InstanceId,
    metrics: Option<Arc<Metrics>>,
    pool: PoolMode,
    epoch: Option<UnixMillis>,
    serve: bool,
    stop: Option<watch::Receiver<bool>>,
}

impl<E: Ec2> AgentBuilder<E> {
    /// The agent for `instance` with `cfg`, reaching EC2 through `ec2`: by default a threaded
    /// pool with the checkpoint file, the wall clock, the socket and HTTP.
    pub fn new(cfg: AgentConfig, ec2: E, instance: InstanceId) -> Self {
        Self {
            cfg,
            ec2,
            instance,
            metrics: None,
            pool: PoolMode::Threaded,
            epoch: None,
            serve: true,
            stop: None,
        }
    }

    /// Records into `metrics` (the EC2 adapter's calls land there too).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How the pool owner runs.
    pub fn pool(mut self, mode: PoolMode) -> Self {
        self.pool = mode;
        self
    }

    /// The datastore's clock reads `epoch` at start and follows tokio's clock from there
    /// (virtual time where it is paused). Default: the wall clock's now.
    pub fn epoch(mut self, epoch: UnixMillis) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// No socket and no HTTP: ADDs and DELs go through [`Agent::pool`].
    pub fn headless(mut self) -> Self {
        self.serve = false;
        self
    }

    /// Stops when `stop` turns true, as well as on [`Agent::shutdown`].
    pub fn stop_on(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Starts it. The checkpoint comes first: an unreadable one stops the agent before it
    /// touches EC2.
    pub async fn start(self) -> Result<Agent, AgentError> {
        let Self {
            cfg,
            ec2,
            instance,
            metrics,
            pool: mode,
            epoch,
            serve,
            stop,
        } = self;
        let metrics = metrics.unwrap_or_else(|| Arc::new(Metrics::new()));
        let clock = Clock::starting_at(epoch.unwrap_or_else(UnixMillis::now));
        let wake = Arc::new(Notify::new());
        let status = Arc::new(Status::default());
        let mut locks = Vec::new();
        let pool = match mode {
            PoolMode::Threaded => {
                // One agent per checkpoint and per socket, before either is touched.
                locks.push(lock::acquire("checkpoint", &cfg.checkpoint_path)?);
                if serve {
                    locks.push(lock::acquire("socket", &cfg.socket_path)?);
                }
                let (pool, report) = pool::start_threaded(
                    pool::Checkpoint {
                        path: &cfg.checkpoint_path,
                        discard: cfg.discard_checkpoint,
                    },
                    cfg.families,
                    cfg.pool.cooldown,
                    clock,
                    wake.clone(),
                    metrics.clone(),
                    status.clone(),
                )?;
                if !report.stranded.is_empty() {
                    tracing::warn!(
                        stranded = report.stranded.len(),
                        "checkpoint allocations outside attached blocks are kept stranded until their DEL or GC"
                    );
                }
                pool
            }
            PoolMode::Inline => pool::start_inline(
                cfg.families,
                cfg.pool.cooldown,
                clock,
                wake.clone(),
                metrics.clone(),
                status.clone(),
            ),
        };
        if serve {
            // DELs that found the agent away: their pods' wiring is gone already.
            server::release_recorded(&pool, &crate::ipc::pending::dir_of(&cfg.socket_path)).await;
        }
        let node = discover(&ec2, &cfg, &instance).await?;
        let (stop_tx, own_stop) = watch::channel(false);
        let (stop_tx, stop_rx) = match stop {
            Some(external) => (None, external),
            None => (Some(stop_tx), own_stop),
        };
        let mut tasks = Vec::new();
        let endpoints = if serve {
            Some(serve_http(&cfg, &node, &pool, &status, &metrics, &stop_rx, &mut tasks).await?)
        } else {
            None
        };
        let (resynced_tx, resynced) = watch::channel(false);
        let ctx = Ctx {
            ec2: Arc::new(ec2),
            cfg: cfg.clone(),
            node: node.clone(),
            pool: pool.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
        };
        // The node's data plane is the serving agent's: the simulator's nodes have none.
        let net = if serve && cfg.host.enabled {
            Some(netplane::NetPlane::open(
                cfg.host.clone(),
                status.clone(),
                metrics.clone(),
            )?)
        } else {
            None
        };
        let looper = Looper::new(ctx, wake, resynced_tx, net);
        tasks.push(tokio::spawn(looper.run(stop_rx.clone())));
        let socket = serve.then(|| {
            let served = Arc::new(server::Served {
                pool: pool.clone(),
                status: status.clone(),
                metrics: metrics.clone(),
                pods: server::PodDefaults {
                    mtu: cfg.host.pod_mtu,
                    veth_prefix: cfg.host.veth_prefix.clone(),
                    v4_egress: cfg.host.v4_egress_active(),
                },
                pending: crate::ipc::pending::dir_of(&cfg.socket_path),
                host: cfg.host.enabled,
            });
            tokio::spawn(server::run(
                cfg.socket_path.clone(),
                served,
                resynced.clone(),
                stop_rx,
            ))
        });
        Ok(Agent {
            pool,
            status,
            metrics,
            node,
            endpoints,
            resynced,
            stop: stop_tx,
            tasks,
            socket,
            _locks: locks,
        })
    }
}

async fn serve_http(
    cfg: &AgentConfig,
    node: &Node,
    pool: &PoolHandle,
    status: &Arc<Status>,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Endpoints, AgentError> {
    let bind = |what: &'static str, addr: std::net::SocketAddr| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Bind {
                what,
                addr: addr.to_string(),
                source,
            })?;
        let bound = l.local_addr().map_err(|source| AgentError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })?;
        Ok::<_, AgentError>((l, bound))
    };
    let (intro_l, introspection) = bind("introspection", cfg.introspection_bind_address).await?;
    let (metrics_l, metrics_addr) = bind("metrics", cfg.metrics_bind_address).await?;
    let intro = http::introspection(http::Introspection {
        pool: pool.clone(),
        status: status.clone(),
        limits: node.limits,
        config: Arc::new(serde_json::json!({ "config": cfg, "node": node })),
    });
    tasks.push(tokio::spawn(http::serve(intro_l, intro, stop.clone())));
    tasks.push(tokio::spawn(http::serve(
        metrics_l,
        http::metrics_router(metrics.clone()),
        stop.clone(),
    )));
    Ok(Endpoints {
        introspection,
        metrics: metrics_addr,
    })
}

/// A running agent.
pub struct Agent {
    /// The pool: what the socket serves, and what a headless agent's caller uses directly.
    pub pool: PoolHandle,
    /// Status.
    pub status: Arc<Status>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The node.
    pub node: Node,
    /// Where HTTP listens (none when headless).
    pub endpoints: Option<Endpoints>,
    resynced: watch::Receiver<bool>,
    /// None when an external signal stops the agent ([`AgentBuilder::stop_on`]).
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    socket: Option<JoinHandle<()>>,
    /// Held until the agent is dropped (after the final checkpoint write).
    _locks: Vec<lock::Lock>,
}

impl Agent {
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

    /// Resolves once the first resync with EC2 has succeeded (the agent serves only after it).
    pub async fn resynced(&self) {
        let mut r = self.resynced.clone();
        let _ = r.wait_for(|done| *done).await;
    }

    /// The introspection address (panics when headless: a caller's mistake).
    pub fn introspection_addr(&self) -> std::net::SocketAddr {
        self.endpoints
            .expect("a headless agent has no HTTP")
            .introspection
    }

    /// The metrics address (panics when headless).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.endpoints
            .expect("a headless agent has no HTTP")
            .metrics
    }

    /// Stops: closes the socket and drains requests in flight, stops the loop and the HTTP
    /// servers, then writes the checkpoint. With [`AgentBuilder::stop_on`], it waits for that
    /// signal instead.
    pub async fn shutdown(self) -> Result<(), pool::PoolError> {
        if let Some(s) = &self.stop {
            let _ = s.send(true);
        }
        if let Some(s) = self.socket {
            let _ = s.await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.pool.flush().await
    }
}
