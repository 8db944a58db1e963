//! The workload on the virtual nodes: pods that ask for an address (kubelet retrying a failed
//! ADD after its backoff), live and end; the phases that create them (scale-up, churn, drain);
//! and the sampler of what the fleet holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::node::SimNode;
use super::profile::Phase;
use super::{Ctx, KUBELET_BACKOFF, SAMPLE_EVERY, seed_of};
use crate::core::rng::XorShift64;
use crate::ec2::Action;

#[derive(PartialEq)]
pub(super) enum Ended {
    Lifetime,
    Killed,
    Stopped,
}

pub(super) async fn pod_life(
    ctx: Arc<Ctx>,
    node: Arc<SimNode>,
    phase: usize,
    life: Option<Duration>,
) -> Ended {
    let id = ctx.next_pod.fetch_add(1, Ordering::Relaxed);
    let created = Instant::now();
    let mut kill = node.drained.subscribe();
    let mut stop = ctx.stop.clone();
    if *kill.borrow() {
        return Ended::Killed;
    }
    node.live.fetch_add(1, Ordering::Relaxed);
    {
        let mut r = ctx.rec.lock().expect("rec");
        r.pods += 1;
        r.phases[phase].pods += 1;
        r.node_pods[node.index] += 1;
    }
    let mut rng = XorShift64::new(seed_of(ctx.profile.seed, id));
    let ended = loop {
        let r = tokio::select! {
            biased;
            _ = kill.changed() => Some(Ended::Killed),
            _ = stop.changed() => Some(Ended::Stopped),
            r = node.add(id) => match r {
                Ok(()) => None,
                Err(()) => {
                    ctx.rec.lock().expect("rec").failed_adds += 1;
                    let backoff = KUBELET_BACKOFF.mul_f64(1.0 + 0.5 * rng.next_f64());
                    tokio::select! {
                        biased;
                        _ = kill.changed() => Some(Ended::Killed),
                        _ = stop.changed() => Some(Ended::Stopped),
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            },
        };
        break r;
    };
    if let Some(e) = ended {
        // Deleted before it started: not a wait, but a pod that never got an address.
        node.del(id).await;
        node.live.fetch_sub(1, Ordering::Relaxed);
        if e == Ended::Stopped {
            let mut r = ctx.rec.lock().expect("rec");
            r.unserved += 1;
            r.phases[phase].unserved += 1;
            r.node_unserved[node.index] += 1;
        }
        return e;
    }
    {
        let now = Instant::now();
        // A scale-up's bound needs the calls made until its last pod's address.
        let stats =
            matches!(ctx.profile.phases[phase], Phase::ScaleUp { .. }).then(|| ctx.account.stats());
        let mut r = ctx.rec.lock().expect("rec");
        r.waits.push(now - created);
        r.used += 1;
        let ph = &mut r.phases[phase];
        ph.last_served = Some(now);
        if stats.is_some() {
            ph.end_stats = stats;
        }
    }
    let ended = tokio::select! {
        biased;
        _ = kill.changed() => Ended::Killed,
        _ = stop.changed() => Ended::Stopped,
        _ = async {
            match life {
                Some(l) => tokio::time::sleep(l).await,
                None => std::future::pending().await,
            }
        } => Ended::Lifetime,
    };
    if ended != Ended::Stopped {
        node.del(id).await;
    }
    ctx.rec.lock().expect("rec").used -= 1;
    node.live.fetch_sub(1, Ordering::Relaxed);
    ended
}

/// Samples what the simulated nodes hold: the ENIs attached to their instances, or detached
/// on their way out (tagged with one of them).
pub(super) async fn sample(ctx: Arc<Ctx>, from: Duration) {
    let mut stop = ctx.stop.clone();
    tokio::time::sleep(from).await;
    loop {
        let ours = ctx.instances.lock().expect("instances").clone();
        let (held, prefixes, enis) = ctx.account.read(|m| {
            let (mut h, mut p, mut e) = (0u64, 0u64, 0u64);
            for x in m.enis.values().filter(|x| {
                let of = match &x.attachment {
                    Some(a) => Some(&a.instance),
                    None => x.tags.get(crate::ec2::tags::INSTANCE_ID),
                };
                of.is_some_and(|i| ours.contains(i))
            }) {
                h += 16 * x.prefixes.len() as u64 + x.secondary.len() as u64;
                p += x.prefixes.len() as u64;
                e += 1;
            }
            (h, p, e)
        });
        {
            let mut r = ctx.rec.lock().expect("rec");
            r.samples += 1;
            r.held_sum += held as f64;
            r.used_sum += r.used as f64;
            r.held_peak = r.held_peak.max(held);
            r.prefixes_peak = r.prefixes_peak.max(prefixes);
            r.enis_peak = r.enis_peak.max(enis);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

pub(super) async fn run_phase(ctx: Arc<Ctx>, index: usize, ph: Phase) {
    let at = ctx.profile.duration_of(ph.at());
    tokio::time::sleep(at).await;
    {
        let now = Instant::now();
        let (stats, tokens) = ctx.account.with_control(|c| {
            let tokens = Action::AGENT
                .iter()
                .map(|a| (*a, c.tokens(*a, now)))
                .collect();
            (c.stats.clone(), tokens)
        });
        let mut r = ctx.rec.lock().expect("rec");
        r.phases[index].start_stats = Some(stats);
        r.phases[index].start_tokens = tokens;
    }
    match ph {
        Phase::ScaleUp { pods_per_node, .. } => {
            for node in &ctx.nodes {
                for _ in 0..pods_per_node {
                    tokio::spawn(pod_life(ctx.clone(), node.clone(), index, None));
                }
            }
        }
        Phase::Churn {
            until,
            pods_per_node,
            mean_lifetime,
            ..
        } => {
            let until = ctx.profile.duration_of(&until);
            let mean = ctx.profile.duration_of(&mean_lifetime);
            for node in &ctx.nodes {
                for slot in 0..pods_per_node {
                    let (ctx, node) = (ctx.clone(), node.clone());
                    tokio::spawn(async move {
                        let mut rng = XorShift64::new(seed_of(
                            ctx.profile.seed ^ 0xC0FFEE,
                            (node.index as u64) << 20 | u64::from(slot),
                        ));
                        let end = ctx.origin + until;
                        while Instant::now() < end {
                            let u = rng.next_f64().max(1e-9);
                            let life = mean.mul_f64(-u.ln());
                            if pod_life(ctx.clone(), node.clone(), index, Some(life)).await
                                != Ended::Lifetime
                            {
                                break;
                            }
                        }
                    });
                }
            }
        }
        Phase::Drain { nodes, .. } => {
            let n = ctx.nodes.len();
            let drained = &ctx.nodes[n - nodes as usize..];
            let keep = &ctx.nodes[..n - nodes as usize];
            let mut moved = 0u32;
            for d in drained {
                moved += d.live.load(Ordering::Relaxed);
                d.drained.send_replace(true);
            }
            for i in 0..moved as usize {
                let node = keep[i % keep.len()].clone();
                tokio::spawn(pod_life(ctx.clone(), node, index, None));
            }
        }
    }
}
