//! Growth: the whole deficit at once — AssignPrivateIpAddresses on ENIs with free slots, then
//! new ENIs (created with their prefixes, tagged, attached at the lowest free device index,
//! DeleteOnTermination set). A half-made ENI is deleted, never leaked. InsufficientCidrBlocks
//! cools the subnet down; an endpoint that assigns no prefix is noticed.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Looper, SubnetCooldown};
use crate::core::backoff::{Backoff, Jitter};
use crate::core::rng::XorShift64;
use crate::core::{Change, EniId, Plan, SubnetId};
use crate::ec2::{Ec2, Ec2Error, ErrorClass, NewEni, eni_tags};

/// Retries of the clean-up of a half-made ENI: 0.5 s, 1 s, 2 s, 4 s, 8 s.
const DISCARD_RETRY: Backoff = Backoff::new(
    Duration::from_millis(500),
    Duration::from_secs(8),
    Jitter::None,
);

impl<E: Ec2> Looper<E> {
    pub(super) fn note_unsupported(&mut self, what: &str) {
        if !self.growth.prefixes_unsupported {
            tracing::error!(
                "{what} succeeded but assigned no prefix: this EC2 endpoint cannot delegate prefixes (LocalStack cannot); {}",
                if self.ctx.cfg.secondary_ip_fallback {
                    "carrying on with /32 secondary addresses (SECONDARY_IP_FALLBACK=true)"
                } else {
                    "set SECONDARY_IP_FALLBACK=true or ENABLE_PREFIX_DELEGATION=false; not ready until then"
                }
            );
        }
        self.growth.prefixes_unsupported = true;
        self.publish_modes(Instant::now());
    }

    fn insufficient(&mut self, subnet: &SubnetId, e: &Ec2Error) {
        let until = Instant::now() + self.ctx.cfg.insufficient_cidr_cooldown;
        self.growth.subnet_cooldown.insert(
            subnet.clone(),
            SubnetCooldown {
                until,
                no_addresses: e.class == ErrorClass::InsufficientAddresses,
            },
        );
        if self.ctx.cfg.secondary_ip_fallback {
            self.growth.fallback_until = Some(until);
            tracing::warn!(subnet.id = %subnet, code = %e.code, cooldown_s = self.ctx.cfg.insufficient_cidr_cooldown.as_secs(), "no /28 to be had: using /32 secondary addresses until the cooldown ends");
        } else {
            tracing::warn!(subnet.id = %subnet, code = %e.code, "no /28 to be had in this subnet; SECONDARY_IP_FALLBACK is off");
        }
        self.publish_modes(Instant::now());
    }

    fn subnet_of(&self, eni: &EniId) -> SubnetId {
        self.view
            .subnets
            .get(eni)
            .cloned()
            .unwrap_or_else(|| self.ctx.node.subnet.clone())
    }

    pub(super) async fn grow(&mut self, plan: &Plan) -> Result<(), Ec2Error> {
        for step in &plan.assign {
            if step.prefixes > 0 {
                match self.ctx.ec2.assign_prefixes(&step.eni, step.prefixes).await {
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
                        let subnet = self.subnet_of(&step.eni);
                        self.insufficient(&subnet, &e);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
            if step.secondary_ips > 0 {
                match self
                    .ctx
                    .ec2
                    .assign_secondary_ips(&step.eni, step.secondary_ips)
                    .await
                {
                    Ok(ips) => {
                        self.add(
                            ips.iter()
                                .filter(|a| !self.view.primary_ips.contains(a))
                                .map(|a| Change::AddSecondaryIp {
                                    eni: step.eni.clone(),
                                    addr: *a,
                                })
                                .collect(),
                        )
                        .await
                    }
                    Err(e) if e.class == ErrorClass::InsufficientAddresses => {
                        let subnet = self.subnet_of(&step.eni);
                        self.growth.subnet_cooldown.insert(
                            subnet,
                            SubnetCooldown {
                                until: Instant::now() + self.ctx.cfg.insufficient_cidr_cooldown,
                                no_addresses: true,
                            },
                        );
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if !plan.create_enis.is_empty() && self.links_pending() {
            tracing::info!(
                "an attached ENI's link has not appeared: no other ENI is created meanwhile"
            );
            return Ok(());
        }
        for step in &plan.create_enis {
            self.create_eni(step.prefixes, step.secondary_ips).await?;
        }
        Ok(())
    }

    /// Records changes EC2 made; a refusal is logged and left to the next resync.
    pub(super) async fn add(&self, changes: Vec<Change>) {
        if let Ok(results) = self.ctx.pool.apply(changes).await {
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
        let cfg = &self.ctx.cfg;
        let all = if cfg.pod_subnet_ids.is_empty() {
            vec![self.ctx.node.subnet.clone()]
        } else {
            cfg.pod_subnet_ids.clone()
        };
        let usable: Vec<SubnetId> = all
            .into_iter()
            .filter(|s| {
                self.growth
                    .subnet_cooldown
                    .get(s)
                    .is_none_or(|c| c.until <= now || (!c.no_addresses && !wants_prefixes))
            })
            .collect();
        if usable.len() <= 1 {
            return Ok(usable);
        }
        let mut info = self.ctx.ec2.describe_subnets(&usable).await?;
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
            let node = &self.ctx.node;
            let req = NewEni {
                subnet: subnet.clone(),
                security_groups: node.security_groups.clone(),
                description: format!("prefixd ENI for {}", node.instance),
                tags: eni_tags(
                    &node.instance,
                    self.ctx.cfg.cluster_name.as_deref(),
                    SystemTime::now(),
                ),
                prefixes,
                secondary_ips,
            };
            let info = match self.ctx.ec2.create_eni(&req).await {
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
                let _ = self.ctx.ec2.delete_eni(&info.id).await;
                return Ok(());
            }
            let device_index = self.free_device_index().await;
            let attachment = match self
                .ctx
                .ec2
                .attach_eni(&info.id, &self.ctx.node.instance, device_index)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    self.discard_eni(&info.id, None).await;
                    if e.class == ErrorClass::LimitExceeded {
                        self.sync.needed = true;
                    }
                    return Err(e);
                }
            };
            if let Err(e) = self
                .ctx
                .ec2
                .set_delete_on_termination(&info.id, &attachment)
                .await
            {
                self.discard_eni(&info.id, Some(&attachment)).await;
                return Err(e);
            }
            self.wait_attached(&info.id).await;
            if let Some(p) = info.primary_ip {
                self.view.primary_ips.insert(p);
            }
            self.view
                .attachments
                .insert(info.id.clone(), attachment.clone());
            self.view.used_indexes.insert(device_index);
            self.view.subnets.insert(info.id.clone(), subnet);
            let attached = crate::ec2::EniInfo {
                device_index: Some(device_index),
                attachment_id: Some(attachment),
                ..info.clone()
            };
            if !self.new_eni_link(&attached).await? {
                // Attached, not handed out: the link's appearance makes a resync add it.
                return Ok(());
            }
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
    pub(super) async fn discard_eni(&self, eni: &EniId, attachment: Option<&str>) {
        if let Some(a) = attachment
            && let Err(e) = self.ctx.ec2.detach_eni(a).await
        {
            tracing::warn!(eni.id = %eni, error = %e, "detach of a half-made ENI failed; the leak sweep will retry");
        }
        let mut rng = XorShift64::new(1);
        for attempt in 0..5u32 {
            match self.ctx.ec2.delete_eni(eni).await {
                Ok(()) => return,
                Err(e) if e.class == ErrorClass::NotFound => return,
                Err(e) => {
                    tracing::warn!(eni.id = %eni, attempt, error = %e, "delete of a half-made ENI failed");
                    tokio::time::sleep(DISCARD_RETRY.delay(attempt, &mut rng)).await;
                }
            }
        }
    }

    async fn free_device_index(&self) -> u32 {
        let mut used = self.view.used_indexes.clone();
        if let Ok(inv) = self.ctx.pool.inventory().await {
            used.extend(inv.enis.iter().map(|e| e.device_index));
        }
        (1..)
            .find(|i| !used.contains(i))
            .expect("a free index exists")
    }

    async fn wait_attached(&self, eni: &EniId) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .ctx
                .ec2
                .describe_node_enis(&self.ctx.node.instance)
                .await
            {
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
}
