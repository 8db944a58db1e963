//! The pool loop: level-triggered and idempotent. Each step resyncs with EC2 when due (EC2 is
//! the truth for ENIs and prefixes, the datastore for allocations: [`crate::core::resync`]),
//! plans from the pool snapshot ([`crate::core::planner`]) and carries out the plan through the
//! [`Ec2`] trait; like a kube-runtime reconciler, it returns when it wants to run next.
//!
//! It also wakes at once when an ADD finds no free address. Errors are handled by class:
//! throttled and transient ones back off with jitter (reset on success); limit and not-found
//! errors mean local state is stale, so the next step resyncs; InsufficientCidrBlocks cools the
//! subnet down and, with SECONDARY_IP_FALLBACK, switches to /32 secondary addresses until the
//! cooldown ends.
//!
//! The parts: [`resync`] (EC2 → datastore), [`grow`] (Assign, new ENIs), [`release`] (excess
//! back to EC2), [`sweep`] (leaked ENIs), [`host`] (the node's data plane: ENI links, tables,
//! rules, SNAT, kept in step with the datastore).

mod grow;
mod host;
mod release;
mod resync;
mod sweep;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::config::AgentConfig;
use super::netplane::NetPlane;
use super::pool::PoolHandle;
use super::status::Status;
use crate::core::backoff::{Backoff, Jitter};
use crate::core::planner::{self, Limits};
use crate::core::resync::Missing;
use crate::core::rng::XorShift64;
use crate::core::{Change, EniId, InstanceId, Mode, Prefix80, SubnetId};
use crate::ec2::{Action, Ec2, Ec2Error, ErrorClass};
use crate::metrics::Metrics;

/// What the agent knows of its node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    /// The instance.
    pub instance: InstanceId,
    /// Its type.
    pub instance_type: String,
    /// The primary ENI's subnet.
    pub subnet: SubnetId,
    /// Its VPC.
    pub vpc: String,
    /// The primary ENI's security groups (new ENIs get them too).
    pub security_groups: Vec<String>,
    /// The primary ENI.
    pub primary_eni: EniId,
    /// Limits for the planner (MAX_ENI is applied by the planner).
    pub limits: Limits,
    /// Nitro or bare metal.
    pub supports_prefixes: bool,
}

/// What the loop works with and never changes: EC2, settings, the node, the pool, and where it
/// reports.
pub(super) struct Ctx<E> {
    pub ec2: Arc<E>,
    pub cfg: AgentConfig,
    pub node: Node,
    pub pool: PoolHandle,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
}

/// The error backoff: the pool loop's failures wait `BACKOFF` (or its throttled cap).
#[derive(Debug)]
struct Retry {
    attempt: u32,
    until: Option<Instant>,
    rng: XorShift64,
    /// The action whose failure set the backoff: only its success (or a later step's) resets
    /// it, so that a resync's Describe does not reset a throttled Assign's backoff.
    cause: Option<Action>,
}

/// Doubling from 0.5 s, equal jitter (a fleet does not retry in lockstep), capped at 60 s — or
/// at [`THROTTLED_CAP`] when EC2 throttled the call. A fleet throttled together drains the
/// account's bucket at its refill rate; a shorter cap keeps retries arriving at least that fast
/// to the end, so the last node is not left waiting long after the bucket could have served it
/// (`prefixd simulate --profile fleet` measures both effects).
const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(500),
    Duration::from_secs(60),
    Jitter::Equal,
);
/// The cap after RequestLimitExceeded.
const THROTTLED_CAP: Duration = Duration::from_secs(20);

impl Retry {
    fn fail(&mut self, now: Instant, throttled: bool) -> Duration {
        let cap = if throttled {
            THROTTLED_CAP
        } else {
            BACKOFF.cap
        };
        let d = BACKOFF.delay_capped(self.attempt.min(10), cap, &mut self.rng);
        self.attempt += 1;
        self.until = Some(now + d);
        d
    }

    fn succeed(&mut self) {
        self.attempt = 0;
        self.until = None;
        self.cause = None;
    }

    fn waiting(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| u > now)
    }
}

/// Resync bookkeeping.
struct Sync {
    next: Instant,
    needed: bool,
    /// In use locally, missing from the last resync (eventual consistency).
    missing: BTreeSet<Missing>,
    /// Set after the first successful resync.
    done: watch::Sender<bool>,
}

/// What the last resync (and the loop's own changes since) say about the node's ENIs in EC2.
#[derive(Default)]
struct Ec2View {
    attachments: HashMap<EniId, String>,
    subnets: HashMap<EniId, SubnetId>,
    /// Device indexes in use on the instance, unmanaged ENIs included.
    used_indexes: HashSet<u32>,
    /// ENIs' primary addresses: never pod addresses, whatever an Assign response lists
    /// (LocalStack's lists the primary with the new secondaries).
    primary_ips: HashSet<Ipv4Addr>,
    /// The managed ENIs as EC2 listed them (and those created since): what the node's data
    /// plane is built from.
    enis: Vec<crate::ec2::EniInfo>,
}

/// A subnet that ran short, and until when it is left alone.
#[derive(Debug, Clone, Copy)]
struct SubnetCooldown {
    until: Instant,
    /// InsufficientFreeAddressesInSubnet: nothing to be had. Otherwise (InsufficientCidrBlocks)
    /// only /28s are short, and /32 addresses may still be had.
    no_addresses: bool,
}

/// How the pool may grow now.
#[derive(Default)]
struct Growth {
    subnet_cooldown: HashMap<SubnetId, SubnetCooldown>,
    fallback_until: Option<Instant>,
    prefixes_unsupported: bool,
    /// The endpoint assigned no /80 for an AssignIpv6Addresses that succeeded.
    ipv6_unsupported: bool,
    /// When the current excess was first planned away (RELEASE_DELAY).
    release_since: Option<Instant>,
    next_sweep: Option<Instant>,
    /// The node's /80, once the pool holds it (ENABLE_IPv6).
    prefix6: Option<Prefix80>,
}

/// The loop.
pub(super) struct Looper<E> {
    ctx: Ctx<E>,
    wake: Arc<Notify>,
    retry: Retry,
    sync: Sync,
    view: Ec2View,
    growth: Growth,
    /// The node's data plane, when the agent programs it.
    net: Option<NetPlane>,
}

impl<E: Ec2> Looper<E> {
    /// A loop in `ctx`; `resynced` turns true after the first successful resync (and, with
    /// `net`, the first programming of the node).
    pub(super) fn new(
        ctx: Ctx<E>,
        wake: Arc<Notify>,
        resynced: watch::Sender<bool>,
        net: Option<NetPlane>,
    ) -> Self {
        let now = Instant::now();
        ctx.status
            .update(|s| s.fallback_allowed = ctx.cfg.secondary_ip_fallback);
        let rng = XorShift64::from_text(ctx.node.instance.as_str(), 0x9E37_79B9_7F4A_7C15);
        Self {
            ctx,
            wake,
            retry: Retry {
                attempt: 0,
                until: None,
                rng,
                cause: None,
            },
            sync: Sync {
                next: now,
                needed: true,
                missing: BTreeSet::new(),
                done: resynced,
            },
            view: Ec2View::default(),
            growth: Growth {
                next_sweep: Some(now),
                ..Growth::default()
            },
            net,
        }
    }

    /// Runs until `stop` turns true.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let next = self.step().await;
            // Biased: the same choice every time when several are ready, so that a run on
            // virtual time (the simulator) is deterministic.
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// One pass: resync if due, plan, act. Returns when it wants to run again: after the
    /// backoff when the last EC2 call failed, else after POOL_TICK.
    pub(super) async fn step(&mut self) -> Instant {
        self.pass().await;
        let now = Instant::now();
        match self.retry.until {
            Some(u) if u > now => u,
            _ => now + self.ctx.cfg.pool_tick,
        }
    }

    async fn pass(&mut self) {
        let now = Instant::now();
        // The node is kept whether or not EC2 answers.
        if self.net.is_some() {
            self.poll_links().await;
            self.host_step(false).await;
        }
        if self.retry.waiting(now) {
            return;
        }
        if self.sync.needed || now >= self.sync.next {
            if let Err(e) = self.resync().await {
                self.fail(&e);
                return;
            }
            // A resync's success says nothing of the mutating call that was throttled.
            if self.retry.cause.is_none_or(|a| !a.is_mutating()) {
                self.retry.succeed();
            }
        }
        if self.ctx.cfg.families.ipv6
            && self.growth.prefix6.is_none()
            && let Err(e) = self.ensure_prefix6().await
        {
            self.fail(&e);
            return;
        }
        if self.ctx.cfg.disable_provisioning {
            return;
        }
        if self.growth.next_sweep.is_none_or(|t| now >= t) {
            self.sweep_leaks().await;
            self.growth.next_sweep = Some(now + self.ctx.cfg.leak_sweep_interval);
        }
        if !self.ctx.cfg.families.ipv4 {
            // IPv6 only: one /80 serves every pod; no warm targets, no extra ENIs.
            return;
        }
        let snap = match self.ctx.pool.snapshot(self.ctx.node.limits).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "pool owner unavailable");
                return;
            }
        };
        let mode = self.mode(now);
        self.publish_modes(now);
        let plan = planner::plan(&snap, &self.ctx.cfg.pool.targets, mode);
        self.ctx.status.update(|s| {
            s.at_capacity = plan.at_capacity;
            s.last_plan = Some(plan.clone());
        });
        let grows = !plan.assign.is_empty() || !plan.create_enis.is_empty();
        let releases = !plan.release_prefixes.is_empty()
            || !plan.release_secondary_ips.is_empty()
            || !plan.release_enis.is_empty();
        if plan.at_capacity {
            self.ctx.metrics.decision("at_capacity");
        }
        if grows {
            self.growth.release_since = None;
            self.ctx.metrics.decision("grow");
            tracing::info!(reason = %plan.reason, pending = snap.pending, "growing the pool");
            match self.grow(&plan).await {
                Ok(()) => self.retry.succeed(),
                Err(e) => self.fail(&e),
            }
        } else if releases {
            let since = *self.growth.release_since.get_or_insert(now);
            if now.duration_since(since) >= self.ctx.cfg.release_delay {
                self.ctx.metrics.decision("release");
                tracing::info!(reason = %plan.reason, "releasing excess");
                match self.release(&plan).await {
                    Ok(()) => {
                        self.retry.succeed();
                        self.growth.release_since = None;
                    }
                    Err(e) => self.fail(&e),
                }
            }
        } else {
            self.growth.release_since = None;
            self.ctx.metrics.decision("steady");
        }
        self.publish_modes(Instant::now());
    }

    /// The node's /80: the one EC2 lists on the primary ENI, else one assigned to it
    /// (Ipv6PrefixCount=1), handed to the pool. ADDs wait for it. With DISABLE_NETWORK_
    /// RESOURCE_PROVISIONING the agent only takes a /80 it finds.
    async fn ensure_prefix6(&mut self) -> Result<(), Ec2Error> {
        let primary = self.ctx.node.primary_eni.clone();
        let enis = self
            .ctx
            .ec2
            .describe_node_enis(&self.ctx.node.instance)
            .await?;
        let mut found = enis
            .iter()
            .find(|e| e.id == primary)
            .and_then(|e| e.ipv6_prefixes.first().copied());
        if found.is_none() && !self.ctx.cfg.disable_provisioning {
            found = self
                .ctx
                .ec2
                .assign_ipv6_prefix(&primary)
                .await?
                .first()
                .copied();
            // An Assign that succeeds and assigns nothing is an endpoint that cannot delegate
            // (LocalStack): said once, plainly, and the node is not ready; asked again each pass.
            if found.is_none() {
                if !self.growth.ipv6_unsupported {
                    tracing::error!(eni.id = %primary, "AssignIpv6Addresses with Ipv6PrefixCount=1 succeeded but assigned no /80: this EC2 endpoint cannot delegate IPv6 prefixes (LocalStack cannot); IPv6 pods cannot be served, not ready");
                }
                self.set_ipv6_unsupported(true);
            }
        }
        let Some(prefix) = found else {
            tracing::warn!(eni.id = %primary, "no IPv6 /80 on the primary ENI yet");
            return Ok(());
        };
        self.set_ipv6_unsupported(false);
        match self
            .ctx
            .pool
            .apply(vec![Change::SetPrefix6 {
                prefix,
                force: true,
            }])
            .await
        {
            Ok(r) if r.iter().all(Result::is_ok) => {
                tracing::info!(prefix = %prefix, eni.id = %primary, "the node's IPv6 /80");
                self.growth.prefix6 = Some(prefix);
                self.ctx
                    .status
                    .update(|s| s.ipv6_prefix = Some(prefix.to_string()));
                self.wake.notify_one();
            }
            Ok(r) => tracing::error!(results = ?r, "the pool refused the /80"),
            Err(e) => tracing::error!(error = %e, "pool owner unavailable"),
        }
        Ok(())
    }

    fn set_ipv6_unsupported(&mut self, unsupported: bool) {
        self.growth.ipv6_unsupported = unsupported;
        self.ctx.metrics.ipv6_unsupported(unsupported);
        self.ctx
            .status
            .update(|s| s.ipv6_prefixes_unsupported = unsupported);
    }

    fn mode(&self, now: Instant) -> Mode {
        let cfg = &self.ctx.cfg;
        if !cfg.pool.prefix_delegation {
            return Mode::SecondaryIp;
        }
        if cfg.secondary_ip_fallback
            && (!self.ctx.node.supports_prefixes
                || self.growth.prefixes_unsupported
                || self.growth.fallback_until.is_some_and(|u| u > now))
        {
            return Mode::SecondaryIp;
        }
        Mode::Prefix
    }

    fn publish_modes(&self, now: Instant) {
        let mode = self.mode(now);
        let fallback = self.ctx.cfg.pool.prefix_delegation && mode == Mode::SecondaryIp;
        let unsupported = self.growth.prefixes_unsupported;
        self.ctx.metrics.modes(fallback, unsupported);
        self.ctx.status.update(|s| {
            s.fallback_active = fallback;
            s.prefixes_unsupported = unsupported;
            s.mode = match mode {
                Mode::Prefix => "prefix".into(),
                Mode::SecondaryIp => "secondary_ip".into(),
            };
        });
    }

    fn fail(&mut self, e: &Ec2Error) {
        let now = Instant::now();
        self.ctx
            .status
            .update(|s| s.last_error = Some(e.to_string()));
        match e.class {
            ErrorClass::LimitExceeded | ErrorClass::NotFound => self.sync.needed = true,
            ErrorClass::Unauthorized => tracing::error!(
                action = %e.action,
                "EC2 refused the call: the node's IAM policy lacks {}; see deploy/iam-policy.json",
                e.action
            ),
            _ => {}
        }
        let d = self.retry.fail(now, e.class == ErrorClass::Throttled);
        self.retry.cause = Some(e.action);
        tracing::warn!(
            action = %e.action,
            class = e.class.as_str(),
            backoff_ms = d.as_millis() as u64,
            "EC2 call failed; backing off"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps_by_class() {
        let now = Instant::now();
        let mut b = Retry {
            attempt: 0,
            until: None,
            rng: XorShift64::new(0x1234_5678_9ABC_DEF1),
            cause: None,
        };
        let first = b.fail(now, false);
        assert!(first >= Duration::from_millis(250) && first <= BACKOFF.base);
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = b.fail(now, false);
        }
        assert!(last >= BACKOFF.cap / 2 && last <= BACKOFF.cap, "{last:?}");
        for _ in 0..12 {
            last = b.fail(now, true);
        }
        assert!(
            last >= THROTTLED_CAP / 2 && last <= THROTTLED_CAP,
            "{last:?}"
        );
        b.succeed();
        assert!(b.fail(now, true) <= BACKOFF.base);
        assert!(b.waiting(now) && !b.waiting(now + THROTTLED_CAP));
    }
}
