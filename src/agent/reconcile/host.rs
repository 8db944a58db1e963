//! The node's data plane in the loop ([`crate::agent::netplane`]): the subnets' and the VPC's
//! CIDRs learnt from EC2, each ENI's link brought up when it appears (an ENI is handed out only
//! once it is), and the whole node compared with the datastore every RECONCILE_INTERVAL —
//! whether or not EC2 answers — and after every resync.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::Looper;
use crate::agent::netplane::LINK_WAIT;
use crate::core::inventory::Inventory;
use crate::core::{EniId, SubnetId};
use crate::ec2::{Ec2, Ec2Error, EniInfo};

/// How often the VPC's CIDRs are read again (a CIDR block associated later is picked up).
const VPC_REFRESH: Duration = Duration::from_secs(15 * 60);

impl<E: Ec2> Looper<E> {
    /// Reads the CIDRs of `subnets` not yet known, and the VPC's when due.
    pub(super) async fn learn_networks(&mut self, subnets: &[SubnetId]) -> Result<(), Ec2Error> {
        let Some(net) = self.net.as_mut() else {
            return Ok(());
        };
        let mut unknown: Vec<SubnetId> = subnets
            .iter()
            .filter(|s| !net.subnets.contains_key(s))
            .cloned()
            .collect();
        unknown.sort();
        unknown.dedup();
        if !unknown.is_empty() {
            for s in self.ctx.ec2.describe_subnets(&unknown).await? {
                match s.cidr.parse() {
                    Ok(c) => {
                        net.subnets.insert(s.id, c);
                    }
                    Err(_) => {
                        tracing::warn!(subnet.id = %s.id, cidr = %s.cidr, "EC2 gave a subnet without a valid IPv4 CIDR")
                    }
                }
            }
        }
        let now = Instant::now();
        if net.vpc_refreshed.is_none_or(|t| now >= t + VPC_REFRESH) {
            let cidrs = self.ctx.ec2.describe_vpc_cidrs(&self.ctx.node.vpc).await?;
            if net.vpc_cidrs.as_ref() != Some(&cidrs) {
                tracing::info!(vpc.id = %self.ctx.node.vpc, cidrs = ?cidrs, "the VPC's CIDRs (never SNATed)");
            }
            net.vpc_cidrs = Some(cidrs);
            net.vpc_refreshed = Some(now);
        }
        Ok(())
    }

    /// Brings up the links of attached secondary ENIs that are not configured yet.
    pub(super) async fn bring_up(&mut self, enis: &[&EniInfo]) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        let listed: HashSet<EniId> = enis.iter().map(|e| e.id.clone()).collect();
        net.retain(&listed);
        for e in enis {
            if e.id == self.ctx.node.primary_eni || net.is_ready(&e.id) {
                continue;
            }
            let Some(n) = net.eni_net(e, false) else {
                tracing::warn!(eni.id = %e.id, "EC2 gave no MAC, address or known subnet for the ENI; its link cannot be found");
                continue;
            };
            if let Err(err) = net.eni_up(&e.id, n).await {
                tracing::error!(eni.id = %e.id, error = %err, "could not configure the ENI's link; retrying");
                self.ctx.metrics.host_error();
            }
        }
    }

    /// Whether the addresses of an ENI EC2 lists may go into the datastore: the primary's
    /// always, a secondary's once its link is configured — or when the datastore holds it
    /// already (a checkpoint's ENI whose link is late is reported, its pods kept).
    pub(super) fn handed_out(&self, e: &EniInfo, local: &Inventory) -> bool {
        match &self.net {
            None => true,
            Some(net) => {
                e.id == self.ctx.node.primary_eni
                    || net.is_ready(&e.id)
                    || local.enis.iter().any(|s| s.id == e.id)
            }
        }
    }

    /// Looks again for the links of ENIs that are waiting for theirs; one that appeared makes
    /// the next pass resync, which puts its addresses in the datastore.
    pub(super) async fn poll_links(&mut self) {
        let Some(net) = self.net.as_ref() else {
            return;
        };
        let waiting = net.waiting();
        if waiting.is_empty() {
            return;
        }
        let enis: Vec<EniInfo> = self
            .view
            .enis
            .iter()
            .filter(|e| waiting.contains(&e.id))
            .cloned()
            .collect();
        let refs: Vec<&EniInfo> = enis.iter().collect();
        self.bring_up_only(&refs).await;
        if let Some(net) = &self.net
            && waiting.iter().any(|id| net.is_ready(id))
        {
            self.sync.needed = true;
        }
    }

    async fn bring_up_only(&mut self, enis: &[&EniInfo]) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        for e in enis {
            if let Some(n) = net.eni_net(e, false)
                && let Err(err) = net.eni_up(&e.id, n).await
            {
                tracing::error!(eni.id = %e.id, error = %err, "could not configure the ENI's link; retrying");
                self.ctx.metrics.host_error();
            }
        }
    }

    /// A new ENI, just attached: its subnet learnt, its link awaited (up to [`LINK_WAIT`]) and
    /// configured. `false` when the link did not appear: the ENI is not handed out until it does.
    pub(super) async fn new_eni_link(&mut self, e: &EniInfo) -> Result<bool, Ec2Error> {
        if self.net.is_none() {
            return Ok(true);
        }
        self.learn_networks(std::slice::from_ref(&e.subnet)).await?;
        self.view.enis.retain(|x| x.id != e.id);
        self.view.enis.push(e.clone());
        let Some(net) = self.net.as_mut() else {
            return Ok(true);
        };
        let Some(n) = net.eni_net(e, false) else {
            tracing::error!(eni.id = %e.id, "EC2 gave no MAC, address or known subnet for the new ENI; its link cannot be found");
            return Ok(false);
        };
        match net.wait_eni(&e.id, n, LINK_WAIT).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                tracing::error!(eni.id = %e.id, mac = %e.mac, wait_s = LINK_WAIT.as_secs(), "the new ENI's link has not appeared: its addresses are not handed out until it does");
                Ok(false)
            }
            Err(err) => {
                tracing::error!(eni.id = %e.id, error = %err, "could not configure the new ENI's link; retrying");
                self.ctx.metrics.host_error();
                Ok(false)
            }
        }
    }

    /// Removes an ENI's table and rule, before it is detached.
    pub(super) async fn eni_down(&mut self, id: &EniId) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        if let Some(e) = self.view.enis.iter().find(|e| &e.id == id)
            && let Some(n) = net.eni_net(e, false)
        {
            net.eni_down(id, n).await;
        }
        self.view.enis.retain(|e| &e.id != id);
    }

    /// Whether an ENI is waiting for its link (no other ENI is created meanwhile).
    pub(super) fn links_pending(&self) -> bool {
        self.net.as_ref().is_some_and(|n| !n.waiting().is_empty())
    }

    /// Compares the node with the datastore and repairs it, when due (or `now`).
    pub(super) async fn host_step(&mut self, force: bool) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !force && net.next.is_some_and(|t| now < t) {
            return;
        }
        let Some(p) = self
            .view
            .enis
            .iter()
            .find(|e| e.id == self.ctx.node.primary_eni)
        else {
            return;
        };
        net.next = Some(now + self.ctx.cfg.reconcile_interval);
        let Some(primary) = net.eni_net(p, true) else {
            let why = format!(
                "EC2 gave no MAC, address or known subnet for the primary ENI {}",
                p.id
            );
            tracing::error!("{why}");
            self.ctx.status.update(|s| s.host_error = Some(why));
            return;
        };
        let enis = self
            .view
            .enis
            .iter()
            .filter(|e| e.id != self.ctx.node.primary_eni)
            .filter_map(|e| net.eni_net(e, false))
            .collect();
        let Ok(inv) = self.ctx.pool.inventory().await else {
            return;
        };
        if net.reconcile(primary, enis, &inv).await.is_err() {
            // Retried at the next pass rather than a whole interval later.
            net.next = Some(now + self.ctx.cfg.pool_tick);
        }
    }
}
