//! Release: excess prefixes and secondary addresses go back to EC2 — out of the datastore first
//! (refused if a pod took an address meanwhile), so that nothing is handed out of a block on its
//! way back — and empty ENIs lose their table and rule on the node, then are detached and
//! deleted. A failed Unassign puts the blocks back.

use std::collections::{BTreeMap, HashSet};

use super::Looper;
use crate::core::{Change, EniId, Plan, Prefix28};
use crate::ec2::{Ec2, Ec2Error, ErrorClass};

impl<E: Ec2> Looper<E> {
    pub(super) async fn release(&mut self, plan: &Plan) -> Result<(), Ec2Error> {
        let Ok(inv) = self.ctx.pool.inventory().await else {
            return Ok(());
        };
        let mut by_eni: BTreeMap<EniId, Vec<Prefix28>> = BTreeMap::new();
        for p in &plan.release_prefixes {
            if let Some(e) = inv.owner_of_prefix(*p) {
                by_eni.entry(e.clone()).or_default().push(*p);
            }
        }
        let doomed: HashSet<&EniId> = plan.release_enis.iter().collect();
        for (eni, prefixes) in by_eni {
            let results = self
                .ctx
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
            if let Err(e) = self.ctx.ec2.unassign(&eni, &removed, &[]).await {
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
                .ctx
                .pool
                .take_free_secondary(step.eni.clone(), step.count)
                .await
                .unwrap_or_default();
            if ips.is_empty() || doomed.contains(&step.eni) {
                continue;
            }
            if let Err(e) = self.ctx.ec2.unassign(&step.eni, &[], &ips).await {
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
            if eni == &self.ctx.node.primary_eni {
                continue;
            }
            let r = self
                .ctx
                .pool
                .apply(vec![Change::RemoveEni {
                    id: eni.clone(),
                    force: false,
                }])
                .await;
            if !matches!(r.as_deref(), Ok([Ok(_)])) {
                continue;
            }
            // Its table and rule go first: nothing routes into a link that is leaving.
            self.eni_down(eni).await;
            if let Some(a) = self.view.attachments.get(eni).cloned()
                && let Err(e) = self.ctx.ec2.detach_eni(&a).await
                && e.class != ErrorClass::NotFound
            {
                self.sync.needed = true;
                return Err(e);
            }
            self.discard_eni(eni, None).await;
            self.view.attachments.remove(eni);
        }
        Ok(())
    }
}
