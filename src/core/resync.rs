//! The resync diff, pure: what EC2 lists for the node against what the datastore holds.
//!
//! EC2 is the truth for ENIs, prefixes and secondary addresses; the datastore for allocations.
//! What EC2 lists and the datastore lacks is added. What the datastore holds and EC2 no longer
//! lists goes — at once when unused; when in use only if the previous resync missed it too,
//! because EC2 is eventually consistent and a Describe right after an Assign may not show it.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use super::inventory::Inventory;
use super::store::Change;
use super::types::{EniId, Prefix28};

/// One managed, attached ENI as EC2 lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its id.
    pub id: EniId,
    /// Its device index.
    pub device_index: u32,
    /// Its prefixes.
    pub prefixes: Vec<Prefix28>,
    /// Its secondary addresses.
    pub secondary_ips: Vec<Ipv4Addr>,
}

/// Something in use locally that EC2 did not list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Missing {
    /// A whole ENI.
    Eni(EniId),
    /// A prefix of an ENI.
    Prefix(EniId, Prefix28),
    /// A secondary address of an ENI.
    Ip(EniId, Ipv4Addr),
}

/// What a resync changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncDiff {
    /// Changes for the datastore: additions first, then removals (forced).
    pub changes: Vec<Change>,
    /// In use and missing for the first time: kept until the next resync says the same.
    pub deferred: BTreeSet<Missing>,
}

/// The diff of `local` against `listed`; `missed_before` is the previous diff's `deferred`.
pub fn diff(local: &Inventory, listed: &[Listed], missed_before: &BTreeSet<Missing>) -> ResyncDiff {
    let mut out = ResyncDiff::default();
    let mut removals: Vec<(Missing, bool, Change)> = Vec::new();
    for e in listed {
        let known = local.enis.iter().find(|k| k.id == e.id);
        if known.is_none() {
            out.changes.push(Change::AddEni {
                id: e.id.clone(),
                device_index: e.device_index,
                primary: e.device_index == 0,
            });
        }
        let have_p: HashSet<Prefix28> = known
            .map(|k| k.prefixes.iter().map(|p| p.block).collect())
            .unwrap_or_default();
        for p in e.prefixes.iter().filter(|p| !have_p.contains(p)) {
            out.changes.push(Change::AddPrefix {
                eni: e.id.clone(),
                prefix: *p,
            });
        }
        let have_ip: HashSet<Ipv4Addr> = known
            .map(|k| k.secondary_ips.iter().map(|a| a.block).collect())
            .unwrap_or_default();
        for a in e.secondary_ips.iter().filter(|a| !have_ip.contains(a)) {
            out.changes.push(Change::AddSecondaryIp {
                eni: e.id.clone(),
                addr: *a,
            });
        }
        let Some(k) = known else { continue };
        for p in k.prefixes.iter().filter(|p| !e.prefixes.contains(&p.block)) {
            removals.push((
                Missing::Prefix(e.id.clone(), p.block),
                p.in_use(),
                Change::RemovePrefix {
                    prefix: p.block,
                    force: true,
                },
            ));
        }
        for a in k
            .secondary_ips
            .iter()
            .filter(|a| !e.secondary_ips.contains(&a.block))
        {
            removals.push((
                Missing::Ip(e.id.clone(), a.block),
                a.in_use(),
                Change::RemoveSecondaryIp {
                    addr: a.block,
                    force: true,
                },
            ));
        }
    }
    for k in &local.enis {
        if !listed.iter().any(|e| e.id == k.id) {
            removals.push((
                Missing::Eni(k.id.clone()),
                k.in_use(),
                Change::RemoveEni {
                    id: k.id.clone(),
                    force: true,
                },
            ));
        }
    }
    for (missing, used, change) in removals {
        if used && !missed_before.contains(&missing) {
            out.deferred.insert(missing);
        } else {
            out.changes.push(change);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::datastore::{Datastore, PodInfo};
    use crate::core::types::{PodKey, UnixMillis};
    use std::time::Duration;

    fn eni(n: &str) -> EniId {
        n.parse().unwrap()
    }
    fn pfx(s: &str) -> Prefix28 {
        s.parse().unwrap()
    }

    fn pool() -> Datastore {
        let mut ds = Datastore::new(Duration::from_secs(30));
        ds.add_eni(eni("eni-1"), 0, true).unwrap();
        ds.add_prefix(&eni("eni-1"), pfx("10.0.0.16/28")).unwrap();
        ds.add_prefix(&eni("eni-1"), pfx("10.0.0.32/28")).unwrap();
        ds.add_eni(eni("eni-2"), 1, false).unwrap();
        ds.add_prefix(&eni("eni-2"), pfx("10.0.0.48/28")).unwrap();
        let k = PodKey::new("net", "c1", "eth0").unwrap();
        ds.allocate(k, PodInfo::default(), UnixMillis(0)).unwrap();
        ds
    }

    fn listed(id: &str, dev: u32, prefixes: &[&str]) -> Listed {
        Listed {
            id: eni(id),
            device_index: dev,
            prefixes: prefixes.iter().map(|p| pfx(p)).collect(),
            secondary_ips: vec![],
        }
    }

    #[test]
    fn adds_what_ec2_lists_and_drops_unused_missing_blocks_at_once() {
        let inv = Inventory::of(&pool());
        let d = diff(
            &inv,
            &[
                listed("eni-1", 0, &["10.0.0.16/28", "10.0.0.64/28"]),
                listed("eni-3", 2, &["10.0.0.80/28"]),
            ],
            &BTreeSet::new(),
        );
        assert_eq!(
            d.changes,
            vec![
                Change::AddPrefix {
                    eni: eni("eni-1"),
                    prefix: pfx("10.0.0.64/28")
                },
                Change::AddEni {
                    id: eni("eni-3"),
                    device_index: 2,
                    primary: false
                },
                Change::AddPrefix {
                    eni: eni("eni-3"),
                    prefix: pfx("10.0.0.80/28")
                },
                Change::RemovePrefix {
                    prefix: pfx("10.0.0.32/28"),
                    force: true
                },
                Change::RemoveEni {
                    id: eni("eni-2"),
                    force: true
                },
            ]
        );
        assert!(d.deferred.is_empty());
    }

    #[test]
    fn a_block_in_use_goes_only_when_two_resyncs_miss_it() {
        let inv = Inventory::of(&pool());
        // The pod's address is in 10.0.0.16/28 (packing: lowest prefix).
        let now = [
            listed("eni-1", 0, &["10.0.0.32/28"]),
            listed("eni-2", 1, &["10.0.0.48/28"]),
        ];
        let first = diff(&inv, &now, &BTreeSet::new());
        assert!(first.changes.is_empty(), "{:?}", first.changes);
        let m = Missing::Prefix(eni("eni-1"), pfx("10.0.0.16/28"));
        assert_eq!(first.deferred, BTreeSet::from([m.clone()]));
        let second = diff(&inv, &now, &first.deferred);
        assert_eq!(
            second.changes,
            vec![Change::RemovePrefix {
                prefix: pfx("10.0.0.16/28"),
                force: true
            }]
        );
        assert!(second.deferred.is_empty());
        // Listed again after one miss: nothing to do, nothing deferred.
        let back = [
            listed("eni-1", 0, &["10.0.0.16/28", "10.0.0.32/28"]),
            listed("eni-2", 1, &["10.0.0.48/28"]),
        ];
        let third = diff(&inv, &back, &first.deferred);
        assert!(third.changes.is_empty() && third.deferred.is_empty());
    }
}
