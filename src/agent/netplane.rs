//! The node's data plane, as the loop keeps it: an ENI's link is configured when it appears
//! (found by MAC; an ENI whose link has not appeared is not handed out, and after
//! [`LINK_WAIT`] the log and `/readyz` name it), its table and rule go before it is detached,
//! and the whole node — rules, tables, the SNAT table — is compared with the datastore at every
//! resync and repaired. The kernel work is blocking and runs on tokio's blocking pool; the
//! socket and lock are the agent's only.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::time::Instant;

use super::status::Status;
use crate::core::inventory::Inventory;
use crate::core::{EniId, SubnetId};
use crate::ec2::EniInfo;
use crate::hostnet::config::HostConfig;
use crate::hostnet::netlink::parse_mac;
use crate::hostnet::node::{Desired, EniNet, HostError, Node, Repair};
use crate::hostnet::pod::host_veth_name;
use crate::metrics::Metrics;

/// How long an attached ENI's link may take to appear before it is reported.
pub const LINK_WAIT: Duration = Duration::from_secs(30);

/// The loop's handle on the node's data plane.
pub(crate) struct NetPlane {
    node: Arc<Mutex<Node>>,
    cfg: HostConfig,
    /// ENIs whose links are configured.
    ready: HashSet<EniId>,
    /// ENIs whose links have not appeared: since when, and their MAC.
    waiting: HashMap<EniId, (Instant, String)>,
    /// Subnets' CIDRs, as EC2 gave them.
    pub(crate) subnets: HashMap<SubnetId, Ipv4Net>,
    /// The VPC's CIDRs, once known.
    pub(crate) vpc_cidrs: Option<Vec<Ipv4Net>>,
    /// When they were read.
    pub(crate) vpc_refreshed: Option<Instant>,
    /// When the node is compared with the datastore next.
    pub(crate) next: Option<Instant>,
    /// The node has been programmed once since start.
    programmed: bool,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

impl NetPlane {
    /// The node's data plane, through a netlink socket in the agent's namespace.
    pub(crate) fn open(
        cfg: HostConfig,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, HostError> {
        Ok(Self {
            node: Arc::new(Mutex::new(Node::open(cfg.clone())?)),
            cfg,
            ready: HashSet::new(),
            waiting: HashMap::new(),
            subnets: HashMap::new(),
            vpc_cidrs: None,
            vpc_refreshed: None,
            next: None,
            programmed: false,
            status,
            metrics,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> T + Send + 'static,
    ) -> T {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || f(&mut node.lock().expect("node lock")))
            .await
            .expect("the kernel work does not panic")
    }

    /// The data plane's view of an ENI, when its MAC and subnet are known.
    pub(crate) fn eni_net(&self, e: &EniInfo, primary: bool) -> Option<EniNet> {
        Some(EniNet {
            id: e.id.to_string(),
            mac: parse_mac(&e.mac)?,
            ip: e.primary_ip?,
            subnet: *self.subnets.get(&e.subnet)?,
            device_index: e.device_index.unwrap_or(0),
            card: 0,
            primary,
        })
    }

    /// Whether an ENI's link is configured.
    pub(crate) fn is_ready(&self, eni: &EniId) -> bool {
        self.ready.contains(eni)
    }

    /// ENIs attached whose link has not appeared yet.
    pub(crate) fn waiting(&self) -> Vec<EniId> {
        self.waiting.keys().cloned().collect()
    }

    /// Configures a secondary ENI's link if it has appeared; `Ok(false)` while it has not.
    pub(crate) async fn eni_up(&mut self, id: &EniId, eni: EniNet) -> Result<bool, HostError> {
        let mac = crate::hostnet::netlink::mac_text(&eni.mac);
        let found = self.blocking(move |n| n.setup_eni(&eni)).await?;
        if let Some(link) = found {
            if self.waiting.remove(id).is_some() || !self.ready.contains(id) {
                tracing::info!(eni.id = %id, link = %link.name, mac = %mac, "configured the ENI's link");
            }
            self.ready.insert(id.clone());
            self.publish();
            return Ok(true);
        }
        let since = self
            .waiting
            .entry(id.clone())
            .or_insert_with(|| (Instant::now(), mac.clone()))
            .0;
        if since.elapsed() >= LINK_WAIT {
            tracing::error!(eni.id = %id, mac = %mac, waited_s = since.elapsed().as_secs(), "the ENI's link has not appeared: its addresses are not handed out");
        }
        self.publish();
        Ok(false)
    }

    /// Waits up to `within` for a new ENI's link, configuring it when it appears.
    pub(crate) async fn wait_eni(
        &mut self,
        id: &EniId,
        eni: EniNet,
        within: Duration,
    ) -> Result<bool, HostError> {
        let deadline = Instant::now() + within;
        loop {
            if self.eni_up(id, eni.clone()).await? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes an ENI's table and rule before it is detached.
    pub(crate) async fn eni_down(&mut self, id: &EniId, eni: EniNet) {
        if let Err(e) = self.blocking(move |n| n.remove_eni(&eni)).await {
            tracing::warn!(eni.id = %id, error = %e, "could not remove the ENI's table and rule; the next reconcile will");
        }
        self.ready.remove(id);
        self.waiting.remove(id);
        self.publish();
    }

    /// Forgets ENIs EC2 no longer lists for the node.
    pub(crate) fn retain(&mut self, listed: &HashSet<EniId>) {
        self.ready.retain(|e| listed.contains(e));
        self.waiting.retain(|e, _| listed.contains(e));
    }

    /// Compares the node with `inv` (and the ENIs in `enis`) and repairs it.
    pub(crate) async fn reconcile(
        &mut self,
        primary: EniNet,
        enis: Vec<EniNet>,
        inv: &Inventory,
    ) -> Result<Vec<Repair>, HostError> {
        let prefix = self.cfg.veth_prefix.clone();
        let mut egress = Vec::new();
        let pods = inv
            .allocations
            .iter()
            .map(|h| {
                let table = inv
                    .eni_of_ip(h.address)
                    .map_or(crate::hostnet::netlink::TABLE_MAIN, |e| {
                        crate::hostnet::config::table_of(e.primary, e.device_index, 0)
                    });
                let veth =
                    host_veth_name(&prefix, &h.pod.namespace, &h.pod.name, h.key.container_id());
                if let IpAddr::V6(a6) = h.address
                    && self.cfg.v4_egress_active()
                    && let Some(e) = crate::hostnet::egress::egress_address(a6)
                {
                    egress.push((e, crate::hostnet::egress::host_end_name(&veth)));
                }
                (h.address, table, Some(veth))
            })
            .collect();
        let want = Desired {
            primary,
            enis: enis
                .into_iter()
                .filter(|e| self.ready.contains(&e.id.parse().expect("ENI ids parse")))
                .collect(),
            pods,
            egress,
            vpc_cidrs: self.vpc_cidrs.clone().unwrap_or_default(),
        };
        let r = self.blocking(move |n| n.reconcile(&want)).await;
        match &r {
            // The first pass programs the node (after a restart too): that is set-up, not repair.
            Ok(repairs) if !self.programmed => {
                tracing::info!(changes = repairs.len(), "programmed the node's data plane");
                self.programmed = true;
                self.status.update(|s| s.host_error = None);
            }
            Ok(repairs) => {
                for rep in repairs {
                    tracing::warn!(object = rep.object, action = rep.action, what = %rep.what, "repaired the node's data plane");
                    self.metrics.host_repair(rep.object, rep.action);
                }
                self.status.update(|s| s.host_error = None);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not program the node's data plane; retrying");
                self.metrics.host_error();
                let why = e.to_string();
                self.status.update(|s| s.host_error = Some(why));
            }
        }
        r
    }

    fn publish(&self) {
        let late: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= LINK_WAIT)
            .map(|(id, (_, mac))| format!("ENI {id} (MAC {mac}) has no link"))
            .collect();
        self.metrics.missing_links(late.len());
        self.status.update(|s| s.missing_links = late);
    }
}
