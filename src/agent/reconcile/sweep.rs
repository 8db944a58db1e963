//! The leak sweep: tagged, `available` ENIs are deleted — this node's own at once (only this
//! agent makes them, and it is not making one while it sweeps), other nodes' once older than
//! LEAKED_ENI_AGE (the VPC CNI's #608, #1223: a node that died between detach and delete).

use super::Looper;
use crate::ec2::{Ec2, tags};

impl<E: Ec2> Looper<E> {
    pub(super) async fn sweep_leaks(&mut self) {
        let ctx = &self.ctx;
        let list = match ctx
            .ec2
            .describe_detached_tagged_enis(ctx.cfg.cluster_name.as_deref())
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
                == Some(ctx.node.instance.as_str());
            let old = e
                .tags
                .get(tags::CREATED_AT)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= ctx.cfg.leaked_eni_age);
            if own || old {
                match ctx.ec2.delete_eni(&e.id).await {
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
        ctx.metrics.leaked_deleted(deleted);
    }
}
