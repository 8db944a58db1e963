//! Resync: what EC2 lists for the node, diffed against the datastore by the pure
//! [`crate::core::resync::diff`], applied to the pool; the loop's view of attachments, subnets,
//! device indexes and primary addresses refreshed.

use tokio::time::Instant;

use super::Looper;
use crate::core::Outcome;
use crate::core::resync::{self, Listed};
use crate::ec2::{Ec2, Ec2Error, EniInfo, tags};

impl<E: Ec2> Looper<E> {
    pub(super) async fn resync(&mut self) -> Result<(), Ec2Error> {
        let ctx = &self.ctx;
        let enis = ctx.ec2.describe_node_enis(&ctx.node.instance).await?;
        let local = match ctx.pool.inventory().await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "pool owner unavailable during resync");
                return Ok(());
            }
        };
        self.view.used_indexes = enis.iter().filter_map(|e| e.device_index).collect();
        self.view.primary_ips = enis.iter().filter_map(|e| e.primary_ip).collect();
        let managed: Vec<&EniInfo> = enis
            .iter()
            .filter(|e| e.device_index.is_some())
            .filter(|e| e.tags.get(tags::NO_MANAGE).is_none_or(|v| v != "true"))
            .collect();
        if self.net.is_some() {
            let subnets: Vec<_> = managed.iter().map(|e| e.subnet.clone()).collect();
            self.learn_networks(&subnets).await?;
            self.bring_up(&managed).await;
        }
        self.view.enis = managed.iter().map(|e| (*e).clone()).collect();
        self.view.attachments.clear();
        self.view.subnets.clear();
        for e in &managed {
            if let Some(a) = &e.attachment_id {
                self.view.attachments.insert(e.id.clone(), a.clone());
            }
            self.view.subnets.insert(e.id.clone(), e.subnet.clone());
        }
        let listed: Vec<Listed> = managed
            .iter()
            .filter(|e| self.handed_out(e, &local))
            .map(|e| Listed {
                id: e.id.clone(),
                device_index: e.device_index.unwrap_or(0),
                prefixes: e.prefixes.clone(),
                secondary_ips: e.secondary_ips.clone(),
            })
            .collect();
        let diff = resync::diff(&local, &listed, &self.sync.missing);
        for m in &diff.deferred {
            tracing::warn!(block = ?m, "in use locally but not in EC2: dropping it if the next resync agrees");
        }
        if !diff.changes.is_empty() {
            let n = diff.changes.len();
            let results = self.ctx.pool.apply(diff.changes).await.unwrap_or_default();
            let mut stranded = 0u64;
            for r in results {
                match r {
                    Ok(Outcome::Removed(list)) => {
                        for (key, a) in list {
                            stranded += 1;
                            tracing::warn!(pod.key = %key, address = %a.address,
                                "stranded allocation: EC2 no longer lists its block; the address stays the pod's until its DEL or GC");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "resync change refused"),
                }
            }
            self.ctx.metrics.stranded(stranded);
            tracing::info!(changes = n, stranded, "resynced with EC2");
        }
        self.sync.next = Instant::now() + self.ctx.cfg.reconcile_interval;
        self.sync.needed = !diff.deferred.is_empty();
        self.sync.missing = diff.deferred;
        // The node has every allocation's rules before the socket opens (after a restart too).
        self.host_step(true).await;
        self.ctx.status.update(|s| {
            s.resynced = true;
            s.resyncs += 1;
            s.last_error = None;
        });
        self.sync
            .done
            .send_if_modified(|done| !std::mem::replace(done, true));
        Ok(())
    }
}
