//! A subnet's IPv6 /64: the /80 prefixes and single addresses assigned from it, as EC2 does.
//!
//! A /64 holds 65,536 /80s, numbered by bits 48..64 of the address (the *slot*). Prefixes come
//! from the lowest free slot upward, single addresses from the top slot downward, so that they
//! rarely meet; a slot holding any single address cannot become a prefix, and no address is
//! taken inside an assigned prefix. EC2 reserves the first four addresses and the last one of
//! the /64: slot 0 and the last slot are never prefixes.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::ApiError;
use crate::core::Prefix80;

const SLOTS: u32 = 1 << 16;

/// The IPv6 addresses of one subnet.
#[derive(Debug, Clone)]
pub struct Ipv6Space {
    net: Ipv6Net,
    /// Slots assigned as /80 prefixes.
    prefixes: BTreeSet<u16>,
    /// Single addresses, by their low 64 bits.
    addresses: BTreeSet<u64>,
}

fn low64(a: Ipv6Addr) -> u64 {
    u128::from(a) as u64
}

fn slot_of(low: u64) -> u16 {
    (low >> Prefix80::HOST_BITS) as u16
}

impl Ipv6Space {
    /// A /64 with nothing assigned.
    pub fn new(net: Ipv6Net) -> Self {
        Self {
            net: net.trunc(),
            prefixes: BTreeSet::new(),
            addresses: BTreeSet::new(),
        }
    }

    /// The subnet's /64.
    pub fn net(&self) -> Ipv6Net {
        self.net
    }

    fn prefix_at(&self, slot: u16) -> Prefix80 {
        Prefix80::containing(Ipv6Addr::from(
            u128::from(self.net.network()) | (u128::from(slot) << Prefix80::HOST_BITS),
        ))
    }

    fn reserved(low: u64) -> bool {
        low < 4 || low == u64::MAX
    }

    fn slot_free(&self, slot: u16) -> bool {
        u32::from(slot) != 0
            && u32::from(slot) != SLOTS - 1
            && !self.prefixes.contains(&slot)
            && self
                .addresses
                .range(u64::from(slot) << 48..(u64::from(slot) + 1) << 48)
                .next()
                .is_none()
    }

    /// `n` /80s from the lowest free slots.
    pub fn take_prefixes(&mut self, n: u32) -> Result<Vec<Prefix80>, ApiError> {
        let free: Vec<u16> = (1..SLOTS - 1)
            .map(|s| s as u16)
            .filter(|s| self.slot_free(*s))
            .take(n as usize)
            .collect();
        if free.len() < n as usize {
            return Err(ApiError::client(
                "InsufficientCidrBlocks",
                format!(
                    "There are not enough free /80 prefixes in {} for {n} more.",
                    self.net
                ),
            ));
        }
        self.prefixes.extend(free.iter().copied());
        Ok(free.into_iter().map(|s| self.prefix_at(s)).collect())
    }

    /// The named /80, if it lies in the subnet and is free.
    pub fn take_prefix(&mut self, cidr: &str) -> Result<Prefix80, ApiError> {
        let p: Prefix80 = cidr.parse().map_err(|e| {
            ApiError::client(
                "InvalidParameterValue",
                format!("Invalid IPv6 prefix {cidr}: {e}"),
            )
        })?;
        if !self.net.contains(&p.network()) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The prefix {p} is not within the subnet's {}.", self.net),
            ));
        }
        let slot = slot_of(low64(p.network()));
        if !self.slot_free(slot) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The prefix {p} is in use or reserved in {}.", self.net),
            ));
        }
        self.prefixes.insert(slot);
        Ok(p)
    }

    fn in_prefix(&self, low: u64) -> bool {
        self.prefixes.contains(&slot_of(low))
    }

    /// `n` single addresses, from the top of the /64 down.
    pub fn take_addresses(&mut self, n: u32) -> Result<Vec<Ipv6Addr>, ApiError> {
        let base = u128::from(self.net.network());
        let mut out = Vec::new();
        let mut low = u64::MAX - 1;
        while out.len() < n as usize {
            if low < 4 {
                for a in &out {
                    self.addresses.remove(&low64(*a));
                }
                return Err(ApiError::client(
                    "InsufficientFreeAddressesInSubnet",
                    format!("There are not enough free IPv6 addresses in {}.", self.net),
                ));
            }
            if self.in_prefix(low) {
                // Skip the whole /80.
                low = (u64::from(slot_of(low)) << 48).wrapping_sub(1);
                continue;
            }
            if self.addresses.insert(low) {
                out.push(Ipv6Addr::from(base | u128::from(low)));
            }
            low -= 1;
        }
        Ok(out)
    }

    /// The named address, if it lies in the subnet and is free.
    pub fn take_address(&mut self, a: Ipv6Addr) -> Result<Ipv6Addr, ApiError> {
        let low = low64(a);
        if !self.net.contains(&a) || Self::reserved(low) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The address {a} is not a usable address of {}.", self.net),
            ));
        }
        if self.in_prefix(low) || !self.addresses.insert(low) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The address {a} is already in use."),
            ));
        }
        Ok(a)
    }

    /// Gives a prefix back.
    pub fn put_prefix(&mut self, p: Prefix80) {
        self.prefixes.remove(&slot_of(low64(p.network())));
    }

    /// Gives an address back.
    pub fn put_address(&mut self, a: Ipv6Addr) {
        self.addresses.remove(&low64(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_addresses_never_meet() {
        let mut s = Ipv6Space::new("2600:1f14:0:100::/64".parse().unwrap());
        let p = s.take_prefixes(2).unwrap();
        assert_eq!(p[0].to_string(), "2600:1f14:0:100:1::/80");
        assert_eq!(p[1].to_string(), "2600:1f14:0:100:2::/80");
        let a = s.take_addresses(2).unwrap();
        assert_eq!(a[0].to_string(), "2600:1f14:0:100:ffff:ffff:ffff:fffe");
        // A slot holding an address is no prefix; a named one must be free and in the subnet.
        assert!(s.take_prefix("2600:1f14:0:100:ffff::/80").is_err());
        assert!(s.take_prefix("2600:1f14:0:100:1::/80").is_err());
        assert!(s.take_prefix("2600:1f14:0:200:1::/80").is_err());
        assert!(s.take_prefix("2600:1f14:0:100:1::1/80").is_err());
        s.take_prefix("2600:1f14:0:100:3::/80").unwrap();
        assert!(
            s.take_address("2600:1f14:0:100:3::9".parse().unwrap())
                .is_err()
        );
        assert!(
            s.take_address("2600:1f14:0:100::2".parse().unwrap())
                .is_err()
        );
        s.put_prefix(p[0]);
        assert_eq!(s.take_prefixes(1).unwrap(), vec![p[0]]);
    }
}
