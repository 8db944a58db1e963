//! The VPC CNI's ipamd loop on a virtual node: every 5 s a pool step by [`super::baseline`]'s
//! rules, carried out against EC2 as ipamd does (one step per tick, retry once with 1 prefix, a
//! new ENI when no ENI has a free slot, release at most every 30 s, an empty ENI freed after a
//! minute, 120 s without growth after InsufficientCidrBlocks).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::baseline;
use crate::agent::config::AgentConfig;
use crate::agent::reconcile::Node;
use crate::core::EniId;
use crate::ec2::{Ec2, ErrorClass, NewEni, eni_tags};
use crate::mock::{Account, DirectEc2};

pub(super) struct VpcEni {
    pub(super) id: EniId,
    pub(super) attachment: Option<String>,
    pub(super) primary: bool,
    pub(super) created: Instant,
}

pub(super) struct VpcLoop {
    pub(super) ec2: DirectEc2,
    pub(super) cfg: AgentConfig,
    pub(super) node: Node,
    pub(super) pool: Arc<Mutex<baseline::Pool>>,
    pub(super) enis: Vec<Option<VpcEni>>,
    pub(super) account: Arc<Account>,
    pub(super) last_shrink: Option<Instant>,
    pub(super) cidr_backoff_until: Option<Instant>,
}

impl VpcLoop {
    /// ipamd's main loop: 2.5 s, pool update, 2.5 s, reconcile (through IMDS: no EC2 call).
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(2_500)) => {}
            }
            self.update().await;
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(2_500)) => {}
            }
        }
    }

    fn max_enis(&self) -> u32 {
        self.cfg
            .pool
            .targets
            .max_eni
            .map_or(self.node.limits.max_enis, |m| {
                m.min(self.node.limits.max_enis)
            })
    }

    async fn update(&mut self) {
        let now = Instant::now();
        let stats = self.pool.lock().expect("pool").stats();
        match baseline::decide(&stats, &self.cfg.pool.targets, self.node.limits.max_pods) {
            baseline::Decision::Grow(n) => {
                if self.cidr_backoff_until.is_none_or(|u| u <= now) {
                    self.grow(n).await;
                }
            }
            baseline::Decision::Shrink(n) => {
                if self
                    .last_shrink
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30))
                {
                    self.shrink(n).await;
                    self.last_shrink = Some(now);
                }
            }
            baseline::Decision::Steady => {}
        }
        self.free_empty_eni(now).await;
    }

    fn insufficient(&mut self, class: ErrorClass) {
        if matches!(
            class,
            ErrorClass::InsufficientCidr | ErrorClass::InsufficientAddresses
        ) {
            self.cidr_backoff_until = Some(Instant::now() + Duration::from_secs(120));
        }
    }

    async fn grow(&mut self, n: u32) {
        let slots = self.node.limits.slots_per_eni;
        let target = {
            let pool = self.pool.lock().expect("pool");
            (0..self.enis.len())
                .filter(|i| self.enis[*i].is_some())
                .map(|i| (i, slots.saturating_sub(pool.prefixes_on(i))))
                .find(|(_, free)| *free > 0)
        };
        if let Some((i, free)) = target {
            let eni = self.enis[i].as_ref().expect("live").id.clone();
            let k = n.max(1).min(free);
            let r = match self.ec2.assign_prefixes(&eni, k).await {
                Err(e) if k > 1 && !matches!(e.class, ErrorClass::InsufficientCidr) => {
                    self.ec2.assign_prefixes(&eni, 1).await
                }
                r => r,
            };
            match r {
                Ok(ps) => self.pool.lock().expect("pool").add(i, &ps),
                Err(e) => self.insufficient(e.class),
            }
            return;
        }
        let live = self.enis.iter().flatten().count() as u32;
        if live >= self.max_enis() {
            return;
        }
        let req = NewEni {
            subnet: self.node.subnet.clone(),
            security_groups: self.node.security_groups.clone(),
            description: "aws-K8S-i (simulated)".into(),
            tags: eni_tags(&self.node.instance, None, SystemTime::now()),
            prefixes: n.max(1).min(slots),
            secondary_ips: 0,
        };
        let info = match self.ec2.create_eni(&req).await {
            Ok(i) => i,
            Err(e) => return self.insufficient(e.class),
        };
        let used: Vec<u32> = self.account.read(|m| {
            m.enis_of(self.node.instance.as_str())
                .iter()
                .filter_map(|e| e.attachment.as_ref().map(|a| a.device_index))
                .collect()
        });
        let index = (1..).find(|i| !used.contains(i)).expect("an index");
        let attachment = match self
            .ec2
            .attach_eni(&info.id, &self.node.instance, index)
            .await
        {
            Ok(a) => a,
            Err(_) => {
                let _ = self.ec2.delete_eni(&info.id).await;
                return;
            }
        };
        let _ = self
            .ec2
            .set_delete_on_termination(&info.id, &attachment)
            .await;
        // ipamd waits for the ENI to show in IMDS (no EC2 call).
        loop {
            let ready = self.account.read(|m| {
                m.enis
                    .get(info.id.as_str())
                    .and_then(|e| e.attachment.as_ref())
                    .is_none_or(|a| a.ready_at_ms <= self.account.now_ms())
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.enis.push(Some(VpcEni {
            id: info.id.clone(),
            attachment: Some(attachment),
            primary: false,
            created: Instant::now(),
        }));
        let i = self.enis.len() - 1;
        self.pool.lock().expect("pool").add(i, &info.prefixes);
    }

    async fn shrink(&mut self, n: u32) {
        let taken = self.pool.lock().expect("pool").take_free(n);
        let mut by_eni: BTreeMap<usize, Vec<crate::core::Prefix28>> = BTreeMap::new();
        for (eni, p) in taken {
            by_eni.entry(eni).or_default().push(p);
        }
        for (i, ps) in by_eni {
            let id = self.enis[i].as_ref().expect("live").id.clone();
            if self.ec2.unassign(&id, &ps, &[]).await.is_err() {
                self.pool.lock().expect("pool").add(i, &ps);
            }
        }
    }

    async fn free_empty_eni(&mut self, now: Instant) {
        let found = {
            let pool = self.pool.lock().expect("pool");
            (0..self.enis.len()).find(|i| {
                self.enis[*i].as_ref().is_some_and(|e| {
                    !e.primary
                        && pool.prefixes_on(*i) == 0
                        && now.duration_since(e.created) >= Duration::from_secs(60)
                })
            })
        };
        let Some(i) = found else {
            return;
        };
        let e = self.enis[i].take().expect("found");
        if let Some(a) = &e.attachment
            && self.ec2.detach_eni(a).await.is_err()
        {
            self.enis[i] = Some(e);
            return;
        }
        let _ = self.ec2.delete_eni(&e.id).await;
    }
}
