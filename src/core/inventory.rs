//! The pool's inventory, typed: every ENI with its prefixes and secondary addresses and how
//! each is used, and every allocation. The pool owner hands it out; the loop's resync and
//! release, introspection and the host data plane read it — never strings.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use super::datastore::{BlockId, Datastore, PodInfo, Usage};
use super::types::{EniId, PodKey, Prefix28, UnixMillis};

/// A prefix or secondary address with its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stocked<T> {
    /// The block.
    pub block: T,
    /// Its addresses: assigned, cooling, free.
    pub usage: Usage,
}

impl<T> Stocked<T> {
    /// Whether a pod holds one of its addresses or one is cooling down.
    pub fn in_use(&self) -> bool {
        self.usage.assigned + self.usage.cooling > 0
    }
}

/// One ENI of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EniStock {
    /// Its id.
    pub id: EniId,
    /// Device index on the instance.
    pub device_index: u32,
    /// The instance's primary ENI.
    pub primary: bool,
    /// Its prefixes, lowest first.
    pub prefixes: Vec<Stocked<Prefix28>>,
    /// Its secondary addresses, lowest first.
    pub secondary_ips: Vec<Stocked<Ipv4Addr>>,
}

impl EniStock {
    /// Whether anything on it is in use.
    pub fn in_use(&self) -> bool {
        self.prefixes.iter().any(Stocked::in_use) || self.secondary_ips.iter().any(Stocked::in_use)
    }

    /// Whether `addr` is one of its addresses (in a prefix, or a secondary address).
    pub fn holds(&self, addr: Ipv4Addr) -> bool {
        self.prefixes.iter().any(|p| p.block.contains(addr))
            || self.secondary_ips.iter().any(|a| a.block == addr)
    }
}

/// One allocated address (a dual-stack pod holds two: one of each family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    /// The CNI attachment.
    pub key: PodKey,
    /// Its address: an IPv4 address from a /28 or secondary IP, or an IPv6 /128 from the /80.
    pub address: IpAddr,
    /// The pod.
    pub pod: PodInfo,
    /// When it was handed out.
    pub allocated_at: UnixMillis,
}

/// The whole pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// ENIs by id.
    pub enis: Vec<EniStock>,
    /// Allocated addresses, IPv4 first, each family by address.
    pub allocations: Vec<Holding>,
}

impl Inventory {
    /// The inventory of `ds`.
    pub fn of(ds: &Datastore) -> Self {
        let usage = |b| ds.usage(b).unwrap_or_default();
        let enis = ds
            .enis()
            .iter()
            .map(|(id, e)| EniStock {
                id: id.clone(),
                device_index: e.device_index,
                primary: e.primary,
                prefixes: e
                    .prefixes
                    .iter()
                    .map(|p| Stocked {
                        block: *p,
                        usage: usage(BlockId::Prefix(*p)),
                    })
                    .collect(),
                secondary_ips: e
                    .secondary_ips
                    .iter()
                    .map(|a| Stocked {
                        block: *a,
                        usage: usage(BlockId::Ip(*a)),
                    })
                    .collect(),
            })
            .collect();
        let mut allocations: Vec<Holding> = ds
            .allocations()
            .map(|(k, a)| Holding {
                key: k.clone(),
                address: IpAddr::V4(a.address),
                pod: a.pod.clone(),
                allocated_at: a.allocated_at,
            })
            .chain(ds.v6().allocations().map(|(k, a)| Holding {
                key: k.clone(),
                address: IpAddr::V6(a.address),
                pod: a.pod.clone(),
                allocated_at: a.allocated_at,
            }))
            .collect();
        allocations.sort_by_key(|h| h.address);
        Self { enis, allocations }
    }

    /// The ENI that carries `addr`.
    pub fn eni_of(&self, addr: Ipv4Addr) -> Option<&EniStock> {
        self.enis.iter().find(|e| e.holds(addr))
    }

    /// The ENI whose table routes `addr`'s pod: its ENI for IPv4, none (the main table) for
    /// IPv6, whose /80 is on the primary ENI.
    pub fn eni_of_ip(&self, addr: IpAddr) -> Option<&EniStock> {
        match addr {
            IpAddr::V4(a) => self.eni_of(a),
            IpAddr::V6(_) => None,
        }
    }

    /// The ENI that carries `prefix`.
    pub fn owner_of_prefix(&self, prefix: Prefix28) -> Option<&EniId> {
        self.enis
            .iter()
            .find(|e| e.prefixes.iter().any(|p| p.block == prefix))
            .map(|e| &e.id)
    }

    /// Totals over every block.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for e in &self.enis {
            t.add_eni(
                e.prefixes.iter().map(|p| p.usage),
                e.secondary_ips.iter().map(|a| a.usage),
            );
        }
        t
    }
}

/// Counts over a whole pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Addresses attached.
    pub addresses: u32,
    /// Held by pods.
    pub assigned: u32,
    /// Cooling down.
    pub cooling: u32,
    /// Prefixes.
    pub prefixes: u32,
    /// Secondary addresses.
    pub secondary_ips: u32,
}

impl Totals {
    /// The totals of `ds`, without building an inventory (the pool owner publishes them after
    /// every batch).
    pub fn of(ds: &Datastore) -> Self {
        let usage = |b| ds.usage(b).unwrap_or_default();
        let mut t = Self::default();
        for e in ds.enis().values() {
            t.add_eni(
                e.prefixes.iter().map(|p| usage(BlockId::Prefix(*p))),
                e.secondary_ips.iter().map(|a| usage(BlockId::Ip(*a))),
            );
        }
        t
    }

    fn add_eni(
        &mut self,
        prefixes: impl Iterator<Item = Usage>,
        secondary_ips: impl Iterator<Item = Usage>,
    ) {
        for (u, size) in prefixes
            .map(|u| (u, Prefix28::SIZE))
            .chain(secondary_ips.map(|u| (u, 1)))
        {
            self.addresses += size;
            self.assigned += u.assigned;
            self.cooling += u.cooling;
            if size == 1 {
                self.secondary_ips += 1;
            } else {
                self.prefixes += 1;
            }
        }
    }

    /// Neither assigned nor cooling.
    pub fn free(&self) -> u32 {
        self.addresses - self.assigned - self.cooling
    }
}
