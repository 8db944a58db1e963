//! The pool loop: level-triggered and idempotent. Each step resyncs with EC2 when due (EC2 is
//! the truth for ENIs and prefixes, the datastore for allocations), plans from the pool
//! snapshot, and carries out the plan through the [`Ec2`] trait.
//!
//! It wakes at once when an ADD finds no free address, on a short tick, and after backoff.
//! Errors are handled by class: throttled and transient ones back off with jitter (reset on
//! success); limit and not-found errors mean local state is stale, so the next step resyncs;
//! InsufficientCidrBlocks cools the subnet down and, with SECONDARY_IP_FALLBACK, switches to
//! /32 secondary addresses until the cooldown ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::config::AgentConfig;
use super::pool::PoolHandle;
use super::status::Status;
use crate::core::planner::{self, Limits, Plan};
use crate::core::rng::XorShift64;
use crate::core::{Change, EniId, InstanceId, Mode, Outcome, Prefix28, SubnetId};
use crate::ec2::sdk::eni_tags;
use crate::ec2::{Ec2, Ec2Error, EniInfo, ErrorClass, NewEni, tags};
use crate::metrics::Metrics;

/// Tag that keeps an attached ENI out of prefixd's hands (the VPC CNI's name).
pub const NO_MANAGE_TAG: &str = "node.k8s.amazonaws.com/no_manage";

/// What the agent knows of its node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Node {
    /// The instance.
    pub instance: InstanceId,
    /// Its type.
    pub instance_type: String,
    /// The primary ENI's subnet.
    pub subnet: SubnetId,
    /// The primary ENI's security groups (new ENIs get them too).
    pub security_groups: Vec<String>,
    /// The primary ENI.
    pub primary_eni: EniId,
    /// Limits for the planner (MAX_ENI is applied by the planner).
    pub limits: Limits,
    /// Nitro or bare metal.
    pub supports_prefixes: bool,
}

/// Exponential backoff with jitter, reset by success.
#[derive(Debug)]
struct Backoff {
    attempt: u32,
    until: Option<Instant>,
    rng: XorShift64,
    /// The action whose failure set the backoff: only its success (or a later step's) resets
    /// it, so that a resync's Describe does not reset a throttled Assign's backoff.
    cause: Option<&'static str>,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(60);
    const THROTTLED_CAP: Duration = Duration::from_secs(20);

    /// The next wait: doubling from [`Self::BASE`], equal jitter (half fixed, half random, so
    /// that a fleet does not retry in lockstep), capped at [`Self::CAP`] — or at
    /// [`Self::THROTTLED_CAP`] when EC2 throttled the call. A fleet throttled together drains
    /// the account's bucket at its refill rate; a shorter cap keeps retries arriving at least
    /// that fast to the end, so the last node is not left waiting long after the bucket could
    /// have served it (`prefixd simulate --profile fleet` measures both effects).
    fn fail(&mut self, now: Instant, throttled: bool) -> Duration {
        let cap = if throttled {
            Self::THROTTLED_CAP
        } else {
            Self::CAP
        };
        let exp = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(cap);
        self.attempt += 1;
        let d = exp.mul_f64(0.5 + 0.5 * self.rng.next_f64());
        self.until = Some(now + d);
        d
    }

    fn succeed(&mut self) {
        self.attempt = 0;
        self.until = None;
        self.cause = None;
    }
}

/// A subnet that ran short, and until when it is left alone.
#[derive(Debug, Clone, Copy)]
struct SubnetCooldown {
    until: Instant,
    /// InsufficientFreeAddressesInSubnet: nothing to be had. Otherwise (InsufficientCidrBlocks)
    /// only /28s are short, and /32 addresses may still be had.
    no_addresses: bool,
}

/// The loop's state.
pub struct Looper<E> {
    ec2: Arc<E>,
    cfg: AgentConfig,
    node: Node,
    pool: PoolHandle,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    next_resync: Instant,
    need_resync: bool,
    backoff: Backoff,
    release_since: Option<Instant>,
    subnet_cooldown: HashMap<SubnetId, SubnetCooldown>,
    fallback_until: Option<Instant>,
    prefixes_unsupported: bool,
    next_sweep: Instant,
    attachments: HashMap<EniId, String>,
    eni_subnets: HashMap<EniId, SubnetId>,
    /// Device indexes in use on the instance, unmanaged ENIs included.
    used_indexes: HashSet<u32>,
    /// ENIs' primary addresses: never pod addresses, whatever an Assign response lists
    /// (LocalStack's lists the primary with the new secondaries).
    primary_ips: HashSet<std::net::Ipv4Addr>,
    missing_once: HashSet<String>,
    resynced: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<E: Ec2> Looper<E> {
    /// A loop for `node`. `resynced` fires after the first successful resync.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ec2: Arc<E>,
        cfg: AgentConfig,
        node: Node,
        pool: PoolHandle,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        resynced: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        let now = Instant::now();
        status.update(|s| s.fallback_allowed = cfg.secondary_ip_fallback);
        let rng = XorShift64::from_text(node.instance.as_str(), 0x9E37_79B9_7F4A_7C15);
        Self {
            ec2,
            cfg,
            node,
            pool,
            status,
            metrics,
            wake,
            next_resync: now,
            need_resync: true,
            backoff: Backoff {
                attempt: 0,
                until: None,
                rng,
                cause: None,
            },
            release_since: None,
            subnet_cooldown: HashMap::new(),
            fallback_until: None,
            prefixes_unsupported: false,
            next_sweep: now,
            attachments: HashMap::new(),
            eni_subnets: HashMap::new(),
            used_indexes: HashSet::new(),
            primary_ips: HashSet::new(),
            missing_once: HashSet::new(),
            resynced: Some(resynced),
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            self.step().await;
            let now = Instant::now();
            let wait = match self.backoff.until {
                Some(u) if u > now => u - now,
                _ => self.cfg.pool_tick,
            };
            // Biased: the same choice every time when several are ready, so that a run on
            // virtual time (the simulator) is deterministic.
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn mode(&self, now: Instant) -> Mode {
        if !self.cfg.pool.prefix_delegation {
            return Mode::SecondaryIp;
        }
        let fallback_ok = self.cfg.secondary_ip_fallback;
        if fallback_ok
            && (!self.node.supports_prefixes
                || self.prefixes_unsupported
                || self.fallback_until.is_some_and(|u| u > now))
        {
            return Mode::SecondaryIp;
        }
        Mode::Prefix
    }

    fn publish_modes(&self, now: Instant) {
        let mode = self.mode(now);
        let fallback = self.cfg.pool.prefix_delegation && mode == Mode::SecondaryIp;
        self.metrics.modes(fallback, self.prefixes_unsupported);
        self.status.update(|s| {
            s.fallback_active = fallback;
            s.prefixes_unsupported = self.prefixes_unsupported;
            s.mode = match mode {
                Mode::Prefix => "prefix".into(),
                Mode::SecondaryIp => "secondary_ip".into(),
            };
        });
    }

    /// One pass: resync if due, plan, act. Public for tests that drive the loop by hand.
    pub async fn step(&mut self) {
        let now = Instant::now();
        if self.backoff.until.is_some_and(|u| u > now) {
            return;
        }
        if self.need_resync || now >= self.next_resync {
            if let Err(e) = self.resync().await {
                self.fail(&e);
                return;
            }
            // A resync's success says nothing of the mutating call that was throttled.
            if self.backoff.cause.is_none_or(|a| a.starts_with("Describe")) {
                self.backoff.succeed();
            }
        }
        if self.cfg.disable_provisioning {
            return;
        }
        if now >= self.next_sweep {
            self.sweep_leaks().await;
            self.next_sweep = now + self.cfg.leak_sweep_interval;
        }
        let snap = match self.pool.snapshot(self.node.limits).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "pool owner unavailable");
                return;
            }
        };
        let mode = self.mode(now);
        self.publish_modes(now);
        let plan = planner::plan(&snap, &self.cfg.pool.targets, mode);
        self.status.update(|s| {
            s.at_capacity = plan.at_capacity;
            s.last_plan = Some(plan.clone());
        });
        let grows = !plan.assign.is_empty() || !plan.create_enis.is_empty();
        let releases = !plan.release_prefixes.is_empty()
            || !plan.release_secondary_ips.is_empty()
            || !plan.release_enis.is_empty();
        if plan.at_capacity {
            self.metrics.decision("at_capacity");
        }
        if grows {
            self.release_since = None;
            self.metrics.decision("grow");
            tracing::info!(reason = %plan.reason, pending = snap.pending, "growing the pool");
            match self.grow(&plan).await {
                Ok(()) => self.backoff.succeed(),
                Err(e) => self.fail(&e),
            }
        } else if releases {
            let since = *self.release_since.get_or_insert(now);
            if now.duration_since(since) >= self.cfg.release_delay {
                self.metrics.decision("release");
                tracing::info!(reason = %plan.reason, "releasing excess");
                match self.release(&plan).await {
                    Ok(()) => {
                        self.backoff.succeed();
                        self.release_since = None;
                    }
                    Err(e) => self.fail(&e),
                }
            }
        } else {
            self.release_since = None;
            self.metrics.decision("steady");
        }
        self.publish_modes(Instant::now());
    }

    fn fail(&mut self, e: &Ec2Error) {
        let now = Instant::now();
        self.status.update(|s| s.last_error = Some(e.to_string()));
        match e.class {
            ErrorClass::LimitExceeded | ErrorClass::NotFound => {
                self.need_resync = true;
            }
            ErrorClass::InsufficientCidr | ErrorClass::InsufficientAddresses => {}
            ErrorClass::Unauthorized => {
                tracing::error!(
                    action = e.action,
                    "EC2 refused the call: the node's IAM policy lacks {}; see deploy/iam-policy.json",
                    e.action
                );
            }
            _ => {}
        }
        let d = self.backoff.fail(now, e.class == ErrorClass::Throttled);
        self.backoff.cause = Some(e.action);
        tracing::warn!(
            action = e.action,
            class = e.class.as_str(),
            backoff_ms = d.as_millis() as u64,
            "EC2 call failed; backing off"
        );
    }

    // ---- resync ------------------------------------------------------------------------------

    async fn resync(&mut self) -> Result<(), Ec2Error> {
        let enis = self.ec2.describe_node_enis(&self.node.instance).await?;
        let view = match self.pool.view().await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "pool owner unavailable during resync");
                return Ok(());
            }
        };
        self.used_indexes = enis.iter().filter_map(|e| e.device_index).collect();
        self.primary_ips = enis.iter().filter_map(|e| e.primary_ip).collect();
        let managed: Vec<&EniInfo> = enis
            .iter()
            .filter(|e| e.device_index.is_some())
            .filter(|e| e.tags.get(NO_MANAGE_TAG).is_none_or(|v| v != "true"))
            .collect();
        let mut changes = Vec::new();
        let mut forced = Vec::new();
        let local: BTreeMap<&EniId, &super::pool::EniView> =
            view.enis.iter().map(|e| (&e.id, e)).collect();
        self.attachments.clear();
        self.eni_subnets.clear();
        for e in &managed {
            if let Some(a) = &e.attachment_id {
                self.attachments.insert(e.id.clone(), a.clone());
            }
            self.eni_subnets.insert(e.id.clone(), e.subnet.clone());
            let known = local.get(&e.id);
            if known.is_none() {
                changes.push(Change::AddEni {
                    id: e.id.clone(),
                    device_index: e.device_index.unwrap_or(0),
                    primary: e.device_index == Some(0),
                });
            }
            let have_p: HashSet<String> = known
                .map(|k| k.prefixes.iter().map(|p| p.cidr.clone()).collect())
                .unwrap_or_default();
            for p in &e.prefixes {
                if !have_p.contains(&p.to_string()) {
                    changes.push(Change::AddPrefix {
                        eni: e.id.clone(),
                        prefix: *p,
                    });
                }
            }
            let have_ip: HashSet<std::net::Ipv4Addr> = known
                .map(|k| k.secondary_ips.iter().map(|a| a.address).collect())
                .unwrap_or_default();
            for a in &e.secondary_ips {
                if !have_ip.contains(a) {
                    changes.push(Change::AddSecondaryIp {
                        eni: e.id.clone(),
                        addr: *a,
                    });
                }
            }
            if let Some(k) = known {
                let ec2_p: HashSet<String> = e.prefixes.iter().map(|p| p.to_string()).collect();
                for p in &k.prefixes {
                    if !ec2_p.contains(&p.cidr) {
                        forced.push((
                            format!("{}/{}", e.id, p.cidr),
                            p.assigned + p.cooling > 0,
                            Change::RemovePrefix {
                                prefix: p.cidr.parse().expect("datastore prefixes are valid"),
                                force: true,
                            },
                        ));
                    }
                }
                for a in &k.secondary_ips {
                    if !e.secondary_ips.contains(&a.address) {
                        forced.push((
                            format!("{}/{}", e.id, a.address),
                            a.state != "free",
                            Change::RemoveSecondaryIp {
                                addr: a.address,
                                force: true,
                            },
                        ));
                    }
                }
            }
        }
        let in_ec2: HashSet<&EniId> = managed.iter().map(|e| &e.id).collect();
        for k in &view.enis {
            if !in_ec2.contains(&k.id) {
                let used = k.prefixes.iter().any(|p| p.assigned + p.cooling > 0)
                    || k.secondary_ips.iter().any(|a| a.state != "free");
                forced.push((
                    k.id.to_string(),
                    used,
                    Change::RemoveEni {
                        id: k.id.clone(),
                        force: true,
                    },
                ));
            }
        }
        // EC2 is eventually consistent: something in use that EC2 does not list is dropped only
        // when two resyncs in a row miss it. Unused ones go at once.
        let mut still_missing = HashSet::new();
        for (name, used, change) in forced {
            if used && !self.missing_once.contains(&name) {
                tracing::warn!(block = %name, "in use locally but not in EC2: dropping it if the next resync agrees");
                still_missing.insert(name);
                self.need_resync = true;
                continue;
            }
            changes.push(change);
        }
        let again = !still_missing.is_empty();
        self.missing_once = still_missing;
        if !changes.is_empty() {
            let n = changes.len();
            let results = self.pool.apply(changes).await.unwrap_or_default();
            let mut dropped = 0u64;
            for r in results {
                match r {
                    Ok(Outcome::Removed(list)) => {
                        for (key, a) in list {
                            dropped += 1;
                            tracing::warn!(pod.key = %key, address = %a.address, "dropping allocation: EC2 no longer lists its prefix or address");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "resync change refused"),
                }
            }
            self.metrics.dropped(dropped);
            tracing::info!(changes = n, dropped, "resynced with EC2");
        }
        let now = Instant::now();
        self.next_resync = now + self.cfg.reconcile_interval;
        self.need_resync = again;
        self.status.update(|s| {
            s.resynced = true;
            s.resyncs += 1;
            s.last_error = None;
        });
        if let Some(tx) = self.resynced.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    // ---- growth ------------------------------------------------------------------------------

    fn note_unsupported(&mut self, what: &str) {
        if !self.prefixes_unsupported {
            tracing::error!(
                "{what} succeeded but assigned no prefix: this EC2 endpoint cannot delegate prefixes (LocalStack cannot); {}",
                if self.cfg.secondary_ip_fallback {
                    "carrying on with /32 secondary addresses (SECONDARY_IP_FALLBACK=true)"
                } else {
                    "set SECONDARY_IP_FALLBACK=true or ENABLE_PREFIX_DELEGATION=false; not ready until then"
                }
            );
        }
        self.prefixes_unsupported = true;
        self.publish_modes(Instant::now());
    }

    fn insufficient(&mut self, subnet: &SubnetId, e: &Ec2Error) {
        let until = Instant::now() + self.cfg.insufficient_cidr_cooldown;
        self.subnet_cooldown.insert(
            subnet.clone(),
            SubnetCooldown {
                until,
                no_addresses: e.class == ErrorClass::InsufficientAddresses,
            },
        );
        if self.cfg.secondary_ip_fallback {
            self.fallback_until = Some(until);
            tracing::warn!(subnet.id = %subnet, code = %e.code, cooldown_s = self.cfg.insufficient_cidr_cooldown.as_secs(), "no /28 to be had: using /32 secondary addresses until the cooldown ends");
        } else {
            tracing::warn!(subnet.id = %subnet, code = %e.code, "no /28 to be had in this subnet; SECONDARY_IP_FALLBACK is off");
        }
        self.publish_modes(Instant::now());
    }

    async fn grow(&mut self, plan: &Plan) -> Result<(), Ec2Error> {
        for step in &plan.assign {
            if step.prefixes > 0 {
                match self.ec2.assign_prefixes(&step.eni, step.prefixes).await {
                    Ok(ps) if ps.is_empty() => {
                        self.note_unsupported("AssignPrivateIpAddresses with Ipv4PrefixCount");
                        return Ok(());
                    }
                    Ok(ps) => {
                        self.add(
                            ps.iter()
                                .map(|p| Change::AddPrefix {
                                    eni: step.eni.clone(),
                                    prefix: *p,
                                })
                                .collect(),
                        )
                        .await
                    }
                    Err(e)
                        if matches!(
                            e.class,
                            ErrorClass::InsufficientCidr | ErrorClass::InsufficientAddresses
                        ) =>
                    {
                        let subnet = self
                            .eni_subnets
                            .get(&step.eni)
                            .cloned()
                            .unwrap_or_else(|| self.node.subnet.clone());
                        self.insufficient(&subnet, &e);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
            if step.secondary_ips > 0 {
                match self
                    .ec2
                    .assign_secondary_ips(&step.eni, step.secondary_ips)
                    .await
                {
                    Ok(ips) => {
                        self.add(
                            ips.iter()
                                .filter(|a| !self.primary_ips.contains(a))
                                .map(|a| Change::AddSecondaryIp {
                                    eni: step.eni.clone(),
                                    addr: *a,
                                })
                                .collect(),
                        )
                        .await
                    }
                    Err(e) if e.class == ErrorClass::InsufficientAddresses => {
                        let subnet = self
                            .eni_subnets
                            .get(&step.eni)
                            .cloned()
                            .unwrap_or_else(|| self.node.subnet.clone());
                        self.subnet_cooldown.insert(
                            subnet,
                            SubnetCooldown {
                                until: Instant::now() + self.cfg.insufficient_cidr_cooldown,
                                no_addresses: true,
                            },
                        );
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for step in &plan.create_enis {
            self.create_eni(step.prefixes, step.secondary_ips).await?;
        }
        Ok(())
    }

    async fn add(&self, changes: Vec<Change>) {
        if let Ok(results) = self.pool.apply(changes).await {
            for r in results {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "could not record an EC2 change locally; the next resync will");
                }
            }
        }
    }

    /// Subnets for a new ENI, most free addresses first. One cooling down after
    /// InsufficientCidrBlocks is skipped only when the ENI is to carry prefixes: /32 addresses
    /// (the fallback) can still come from a fragmented subnet.
    async fn candidate_subnets(&self, wants_prefixes: bool) -> Result<Vec<SubnetId>, Ec2Error> {
        let now = Instant::now();
        let all = if self.cfg.pod_subnet_ids.is_empty() {
            vec![self.node.subnet.clone()]
        } else {
            self.cfg.pod_subnet_ids.clone()
        };
        let usable: Vec<SubnetId> = all
            .into_iter()
            .filter(|s| {
                self.subnet_cooldown
                    .get(s)
                    .is_none_or(|c| c.until <= now || (!c.no_addresses && !wants_prefixes))
            })
            .collect();
        if usable.len() <= 1 {
            return Ok(usable);
        }
        let mut info = self.ec2.describe_subnets(&usable).await?;
        info.sort_by(|a, b| b.available.cmp(&a.available).then(a.id.cmp(&b.id)));
        Ok(info.into_iter().map(|s| s.id).collect())
    }

    async fn create_eni(&mut self, prefixes: u32, secondary_ips: u32) -> Result<(), Ec2Error> {
        let subnets = self.candidate_subnets(prefixes > 0).await?;
        if subnets.is_empty() {
            tracing::warn!(
                "every pod subnet is cooling down after running out of /28s or addresses; no new ENI now"
            );
            return Ok(());
        }
        for subnet in subnets {
            let req = NewEni {
                subnet: subnet.clone(),
                security_groups: self.node.security_groups.clone(),
                description: format!("prefixd ENI for {}", self.node.instance),
                tags: eni_tags(&self.node.instance, self.cfg.cluster_name.as_deref()),
                prefixes,
                secondary_ips,
            };
            let info = match self.ec2.create_eni(&req).await {
                Ok(i) => i,
                Err(e)
                    if matches!(
                        e.class,
                        ErrorClass::InsufficientCidr | ErrorClass::InsufficientAddresses
                    ) =>
                {
                    self.insufficient(&subnet, &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if prefixes > 0 && info.prefixes.is_empty() {
                self.note_unsupported("CreateNetworkInterface with Ipv4PrefixCount");
                let _ = self.ec2.delete_eni(&info.id).await;
                return Ok(());
            }
            let device_index = self.free_device_index().await;
            let attachment = match self
                .ec2
                .attach_eni(&info.id, &self.node.instance, device_index)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    self.discard_eni(&info.id, None).await;
                    if e.class == ErrorClass::LimitExceeded {
                        self.need_resync = true;
                    }
                    return Err(e);
                }
            };
            if let Err(e) = self
                .ec2
                .set_delete_on_termination(&info.id, &attachment)
                .await
            {
                self.discard_eni(&info.id, Some(&attachment)).await;
                return Err(e);
            }
            self.wait_attached(&info.id).await;
            if let Some(p) = info.primary_ip {
                self.primary_ips.insert(p);
            }
            self.attachments.insert(info.id.clone(), attachment);
            self.used_indexes.insert(device_index);
            self.eni_subnets.insert(info.id.clone(), subnet);
            let mut changes = vec![Change::AddEni {
                id: info.id.clone(),
                device_index,
                primary: false,
            }];
            changes.extend(info.prefixes.iter().map(|p| Change::AddPrefix {
                eni: info.id.clone(),
                prefix: *p,
            }));
            changes.extend(info.secondary_ips.iter().map(|a| Change::AddSecondaryIp {
                eni: info.id.clone(),
                addr: *a,
            }));
            self.add(changes).await;
            return Ok(());
        }
        Ok(())
    }

    /// Never leaks: an ENI whose attach or modify failed is detached (if needed) and deleted;
    /// if that fails too, it is tagged and `available`, and the leak sweep deletes it.
    async fn discard_eni(&self, eni: &EniId, attachment: Option<&str>) {
        if let Some(a) = attachment
            && let Err(e) = self.ec2.detach_eni(a).await
        {
            tracing::warn!(eni.id = %eni, error = %e, "detach of a half-made ENI failed; the leak sweep will retry");
        }
        for attempt in 0..5u32 {
            match self.ec2.delete_eni(eni).await {
                Ok(()) => return,
                Err(e) if e.class == ErrorClass::NotFound => return,
                Err(e) => {
                    tracing::warn!(eni.id = %eni, attempt, error = %e, "delete of a half-made ENI failed");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
    }

    async fn free_device_index(&self) -> u32 {
        let mut used = self.used_indexes.clone();
        if let Ok(v) = self.pool.view().await {
            used.extend(v.enis.iter().map(|e| e.device_index));
        }
        (1..)
            .find(|i| !used.contains(i))
            .expect("a free index exists")
    }

    async fn wait_attached(&self, eni: &EniId) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.ec2.describe_node_enis(&self.node.instance).await {
                Ok(list) => {
                    let status = list
                        .iter()
                        .find(|e| &e.id == eni)
                        .and_then(|e| e.attachment_status.clone());
                    if status.as_deref() == Some("attached")
                        || status.is_none() && Instant::now() >= deadline
                    {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "waiting for an attachment"),
            }
            if Instant::now() >= deadline {
                tracing::warn!(eni.id = %eni, "ENI not attached after 30 s; using it anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // ---- release -----------------------------------------------------------------------------

    async fn release(&mut self, plan: &Plan) -> Result<(), Ec2Error> {
        let view = match self.pool.view().await {
            Ok(v) => v,
            Err(_) => return Ok(()),
        };
        let owner: HashMap<String, EniId> = view
            .enis
            .iter()
            .flat_map(|e| {
                e.prefixes
                    .iter()
                    .map(move |p| (p.cidr.clone(), e.id.clone()))
            })
            .collect();
        let mut by_eni: BTreeMap<EniId, Vec<Prefix28>> = BTreeMap::new();
        for p in &plan.release_prefixes {
            if let Some(e) = owner.get(&p.to_string()) {
                by_eni.entry(e.clone()).or_default().push(*p);
            }
        }
        let doomed: HashSet<&EniId> = plan.release_enis.iter().collect();
        for (eni, prefixes) in by_eni {
            // Out of the datastore first (refused if a pod took an address meanwhile), so that
            // nothing is handed out of a prefix on its way back to EC2.
            let results = self
                .pool
                .apply(
                    prefixes
                        .iter()
                        .map(|p| Change::RemovePrefix {
                            prefix: *p,
                            force: false,
                        })
                        .collect(),
                )
                .await
                .unwrap_or_default();
            let removed: Vec<Prefix28> = prefixes
                .iter()
                .zip(results)
                .filter(|(_, r)| r.is_ok())
                .map(|(p, _)| *p)
                .collect();
            if removed.is_empty() || doomed.contains(&eni) {
                continue;
            }
            if let Err(e) = self.ec2.unassign(&eni, &removed, &[]).await {
                self.add(
                    removed
                        .iter()
                        .map(|p| Change::AddPrefix {
                            eni: eni.clone(),
                            prefix: *p,
                        })
                        .collect(),
                )
                .await;
                return Err(e);
            }
        }
        for step in &plan.release_secondary_ips {
            let ips = self
                .pool
                .take_free_secondary(step.eni.clone(), step.count)
                .await
                .unwrap_or_default();
            if ips.is_empty() || doomed.contains(&step.eni) {
                continue;
            }
            if let Err(e) = self.ec2.unassign(&step.eni, &[], &ips).await {
                self.add(
                    ips.iter()
                        .map(|a| Change::AddSecondaryIp {
                            eni: step.eni.clone(),
                            addr: *a,
                        })
                        .collect(),
                )
                .await;
                return Err(e);
            }
        }
        for eni in &plan.release_enis {
            if eni == &self.node.primary_eni {
                continue;
            }
            let r = self
                .pool
                .apply(vec![Change::RemoveEni {
                    id: eni.clone(),
                    force: false,
                }])
                .await;
            if !matches!(r.as_deref(), Ok([Ok(_)])) {
                continue;
            }
            if let Some(a) = self.attachments.get(eni).cloned()
                && let Err(e) = self.ec2.detach_eni(&a).await
                && e.class != ErrorClass::NotFound
            {
                self.need_resync = true;
                return Err(e);
            }
            self.discard_eni(eni, None).await;
            self.attachments.remove(eni);
        }
        Ok(())
    }

    // ---- leaked ENIs ---------------------------------------------------------------------------

    async fn sweep_leaks(&mut self) {
        let list = match self
            .ec2
            .describe_detached_tagged_enis(self.cfg.cluster_name.as_deref())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leak sweep could not list ENIs");
                return;
            }
        };
        let now = std::time::SystemTime::now();
        let mut deleted = 0;
        for e in list {
            let own = e.tags.get(tags::INSTANCE_ID).map(String::as_str)
                == Some(self.node.instance.as_str());
            let old = e
                .tags
                .get(tags::CREATED_AT)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= self.cfg.leaked_eni_age);
            // This node's own detached ENIs are leaks at once: only this agent makes them, and
            // it is not in the middle of making one while it sweeps.
            if own || old {
                match self.ec2.delete_eni(&e.id).await {
                    Ok(()) => {
                        deleted += 1;
                        tracing::info!(eni.id = %e.id, own, "deleted a leaked ENI");
                    }
                    Err(err) => {
                        tracing::warn!(eni.id = %e.id, error = %err, "could not delete a leaked ENI")
                    }
                }
            }
        }
        self.metrics.leaked_deleted(deleted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps_by_class() {
        let now = Instant::now();
        let mut b = Backoff {
            attempt: 0,
            until: None,
            rng: XorShift64::new(0x1234_5678_9ABC_DEF1),
            cause: None,
        };
        let first = b.fail(now, false);
        assert!(first >= Duration::from_millis(250) && first <= Backoff::BASE);
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = b.fail(now, false);
        }
        assert!(last >= Backoff::CAP / 2 && last <= Backoff::CAP, "{last:?}");
        for _ in 0..12 {
            last = b.fail(now, true);
        }
        assert!(
            last >= Backoff::THROTTLED_CAP / 2 && last <= Backoff::THROTTLED_CAP,
            "{last:?}"
        );
        b.succeed();
        assert!(b.fail(now, true) <= Backoff::BASE);
    }
}
