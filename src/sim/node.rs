//! A virtual node: the agent it runs (prefixd, assembled by the agent builder, or the VPC CNI's
//! policy), started at its boot time, and the CNI ADD and DEL the workload calls on it.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;
use tokio::time::Instant;

use super::ipamd::{VpcEni, VpcLoop};
use super::profile::AgentKind;
use super::{CNI_TIMEOUT, Ctx, SIM_EPOCH, baseline, seed_of};
use crate::agent::config::AgentConfig;
use crate::agent::pool::PoolHandle;
use crate::agent::{AgentBuilder, PoolMode};
use crate::core::{InstanceId, PodInfo, PodKey};
use crate::ec2::RetryPolicy;
use crate::mock::DirectEc2;

/// One virtual node's agent, as the workload sees it: ADD and DEL.
pub(super) enum AgentRef {
    Prefixd(PoolHandle),
    VpcCni(Arc<Mutex<baseline::Pool>>),
}

pub(super) struct SimNode {
    pub(super) index: usize,
    pub(super) agent: OnceLock<AgentRef>,
    pub(super) ready: watch::Sender<bool>,
    pub(super) drained: watch::Sender<bool>,
    pub(super) live: AtomicU32,
    pub(super) clock_origin: Instant,
}

impl SimNode {
    fn key(pod: u64) -> PodKey {
        PodKey::new("sim", format!("c{pod:016x}"), "eth0").expect("valid key")
    }

    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.clock_origin).as_millis() as u64
    }

    /// One CNI ADD: `Ok` with an address, `Err` when it failed (kubelet retries).
    pub(super) async fn add(&self, pod: u64) -> Result<(), ()> {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
        match self.agent.get().expect("ready") {
            AgentRef::Prefixd(p) => p
                .allocate(
                    Self::key(pod),
                    PodInfo {
                        namespace: "sim".into(),
                        name: format!("pod-{pod}"),
                    },
                    CNI_TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|_| ()),
            AgentRef::VpcCni(p) => p
                .lock()
                .expect("pool lock")
                .allocate(pod, self.now_ms())
                .map(|_| ())
                .ok_or(()),
        }
    }

    pub(super) async fn del(&self, pod: u64) {
        match self.agent.get() {
            Some(AgentRef::Prefixd(p)) => {
                let _ = p.release(Self::key(pod)).await;
            }
            Some(AgentRef::VpcCni(p)) => p.lock().expect("pool lock").release(pod, self.now_ms()),
            None => {}
        }
    }
}

pub(super) async fn start_node(
    ctx: Arc<Ctx>,
    node: Arc<SimNode>,
    instance: InstanceId,
    kind: AgentKind,
    cfg: AgentConfig,
) {
    let seed = seed_of(ctx.profile.seed, node.index as u64 + 1);
    let limiter = match kind {
        AgentKind::Prefixd => Some(cfg.limiter.limiter()),
        AgentKind::VpcCni => None,
    };
    let retry = match kind {
        AgentKind::Prefixd => RetryPolicy::AGENT,
        AgentKind::VpcCni => RetryPolicy::STANDARD,
    };
    let sim = DirectEc2::new(ctx.account.clone(), limiter, retry, seed);
    match kind {
        AgentKind::Prefixd => {
            let agent = AgentBuilder::new(cfg, sim, instance.clone())
                .pool(PoolMode::Inline)
                .epoch(SIM_EPOCH)
                .headless()
                .stop_on(ctx.stop.clone())
                .start()
                .await;
            let agent = match agent {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(instance = %instance, error = %e, "simulated node could not start");
                    return;
                }
            };
            // The agent serves its socket after the first resync.
            agent.resynced().await;
            let _ = node.agent.set(AgentRef::Prefixd(agent.pool.clone()));
        }
        AgentKind::VpcCni => {
            let info = match crate::agent::discover(&sim, &cfg, &instance).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(instance = %instance, error = %e, "simulated node could not start");
                    return;
                }
            };
            let pool = Arc::new(Mutex::new(baseline::Pool::new(
                cfg.pool.cooldown.as_millis() as u64,
                seed,
            )));
            let primary = VpcEni {
                id: info.primary_eni.clone(),
                attachment: None,
                primary: true,
                created: Instant::now(),
            };
            let l = VpcLoop {
                ec2: sim,
                cfg,
                node: info,
                pool: pool.clone(),
                enis: vec![Some(primary)],
                account: ctx.account.clone(),
                last_shrink: None,
                cidr_backoff_until: None,
            };
            tokio::spawn(l.run(ctx.stop.clone()));
            let _ = node.agent.set(AgentRef::VpcCni(pool));
        }
    }
    node.ready.send_replace(true);
}
