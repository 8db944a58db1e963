//! A subnet's address space, tracked address by address: what is reserved, what is used, and how
//! prefixes and secondary addresses are drawn from it, as EC2 does.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ApiError;
use crate::core::Prefix28;

/// What a CIDR reservation allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationKind {
    /// Automatic prefix assignment draws from it first.
    Prefix,
    /// Only explicit assignment (a named address or prefix) uses it.
    Explicit,
}

impl ReservationKind {
    /// EC2's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationKind::Prefix => "prefix",
            ReservationKind::Explicit => "explicit",
        }
    }
}

/// How EC2 picks an address nobody named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressChoice {
    /// The lowest free address (packs new ENIs' addresses together: the best case for /28s).
    #[default]
    Lowest,
    /// Anywhere free, at random (as EC2 appears to: every new ENI's address can break a /28).
    Scattered,
}

/// Every address of one subnet.
#[derive(Debug, Clone)]
pub struct AddressSpace {
    net: Ipv4Net,
    used: Vec<bool>,
    used_count: u32,
    /// Per aligned /28: addresses used or reserved by EC2 (0: the block is wholly free).
    block_busy: Vec<u8>,
    /// No address below this one is free (lowest-first draws start here).
    first_free: u32,
    scatter: Option<crate::core::rng::XorShift64>,
}

impl AddressSpace {
    /// A subnet with nothing used (its five reserved addresses aside).
    pub fn new(net: Ipv4Net) -> Self {
        let size = 1usize << (32 - net.prefix_len());
        let mut block_busy = vec![0u8; size.div_ceil(16)];
        for i in (0..4).chain([size - 1]) {
            block_busy[i / 16] += 1;
        }
        Self {
            net,
            used: vec![false; size],
            used_count: 0,
            block_busy,
            first_free: 4,
            scatter: None,
        }
    }

    /// How unnamed addresses are picked from now on (`seed` for [`AddressChoice::Scattered`]).
    pub fn set_choice(&mut self, choice: AddressChoice, seed: u64) {
        self.scatter = match choice {
            AddressChoice::Lowest => None,
            AddressChoice::Scattered => Some(crate::core::rng::XorShift64::from_text(
                &self.net.to_string(),
                seed,
            )),
        };
    }

    /// The subnet's CIDR.
    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    fn base(&self) -> u32 {
        u32::from(self.net.network())
    }

    fn size(&self) -> u32 {
        self.used.len() as u32
    }

    fn index(&self, addr: Ipv4Addr) -> Option<u32> {
        self.net
            .contains(&addr)
            .then(|| u32::from(addr) - self.base())
    }

    /// The first four and the last address belong to AWS.
    fn reserved(&self, i: u32) -> bool {
        i < 4 || i == self.size() - 1
    }

    fn free(&self, i: u32) -> bool {
        !self.reserved(i) && !self.used[i as usize]
    }

    /// AvailableIpAddressCount: addresses neither reserved nor used (a prefix counts as 16).
    pub fn available(&self) -> u32 {
        self.size()
            .saturating_sub(5)
            .saturating_sub(self.used_count)
    }

    /// Free addresses (not EC2's reserved ones) inside `ranges` (ranges do not overlap: they
    /// are a subnet's reservations).
    pub fn free_in(&self, ranges: &[Ipv4Net]) -> u32 {
        ranges
            .iter()
            .filter_map(|r| Some((self.index(r.network())?, self.index(r.broadcast())?)))
            .map(|(lo, hi)| (lo..=hi).filter(|i| self.free(*i)).count() as u32)
            .sum()
    }

    fn mark(&mut self, i: u32, used: bool) {
        if self.used[i as usize] != used {
            self.used[i as usize] = used;
            let b = &mut self.block_busy[(i / 16) as usize];
            if used {
                self.used_count += 1;
                *b += 1;
                if i == self.first_free {
                    while self.first_free < self.size() && !self.free(self.first_free) {
                        self.first_free += 1;
                    }
                }
            } else {
                self.used_count -= 1;
                *b -= 1;
                self.first_free = self.first_free.min(i);
            }
        }
    }

    fn slash28_free(&self, start: u32) -> bool {
        start + 16 <= self.size() && start % 16 == 0 && self.block_busy[(start / 16) as usize] == 0
    }

    fn in_any(ranges: &[Ipv4Net], i_addr: Ipv4Addr) -> bool {
        ranges.iter().any(|r| r.contains(&i_addr))
    }

    /// Draws `n` aligned, wholly free /28s: from `prefix` reservations first, then from space
    /// outside every reservation. All or nothing: InsufficientCidrBlocks when fewer exist, even
    /// when many single addresses are free.
    pub fn take_prefixes(
        &mut self,
        n: u32,
        prefix_res: &[Ipv4Net],
        all_res: &[Ipv4Net],
    ) -> Result<Vec<Prefix28>, ApiError> {
        let mut picked = Vec::new();
        let consider = |start: u32, picked: &mut Vec<u32>| {
            if picked.len() < n as usize && self.slash28_free(start) && !picked.contains(&start) {
                picked.push(start);
            }
        };
        let mut starts = Vec::new();
        for r in prefix_res {
            let Some(first) = self.index(r.network()) else {
                continue;
            };
            let end = self.index(r.broadcast()).map_or(self.size(), |i| i + 1);
            let mut s = first.next_multiple_of(16);
            while s + 16 <= end {
                consider(s, &mut starts);
                s += 16;
            }
        }
        for (k, busy) in self.block_busy.iter().enumerate() {
            if starts.len() >= n as usize {
                break;
            }
            let s = k as u32 * 16;
            if *busy != 0 || s + 16 > self.size() {
                continue;
            }
            let a = Ipv4Addr::from(self.base() + s);
            let b = Ipv4Addr::from(self.base() + s + 15);
            if !Self::in_any(all_res, a) && !Self::in_any(all_res, b) {
                consider(s, &mut starts);
            }
        }
        if starts.len() < n as usize {
            return Err(ApiError::client(
                "InsufficientCidrBlocks",
                format!(
                    "There are not enough free cidr blocks in the specified subnet to satisfy the request ({} /28 asked, {} free; {} addresses available).",
                    n,
                    starts.len(),
                    self.available()
                ),
            ));
        }
        for &st in &starts {
            for i in st..st + 16 {
                self.mark(i, true);
            }
            let p = Prefix28::new(Ipv4Addr::from(self.base() + st)).expect("aligned");
            picked.push(p);
        }
        Ok(picked)
    }

    /// Takes a named /28: it must lie in the subnet, be aligned and wholly free.
    pub fn take_prefix(&mut self, cidr: &str) -> Result<Prefix28, ApiError> {
        let p: Prefix28 = cidr.parse().map_err(|e: crate::core::types::TypeError| {
            ApiError::client(
                "InvalidParameterValue",
                format!("Invalid IPv4 prefix {cidr}: {e}"),
            )
        })?;
        let Some(start) = self.index(p.network()) else {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The prefix {p} is not within the subnet {}.", self.net),
            ));
        };
        if !self.slash28_free(start) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("The prefix {p} is already in use or overlaps a reserved address."),
            ));
        }
        for i in start..start + 16 {
            self.mark(i, true);
        }
        Ok(p)
    }

    /// Draws `n` free addresses outside every reservation: the lowest, or anywhere at random
    /// (see [`AddressChoice`]).
    pub fn take_ips(&mut self, n: u32, all_res: &[Ipv4Net]) -> Result<Vec<Ipv4Addr>, ApiError> {
        let mut got = Vec::new();
        let eligible =
            |s: &Self, i: u32| s.free(i) && !Self::in_any(all_res, Ipv4Addr::from(s.base() + i));
        let cands: Option<Vec<u32>> = self
            .scatter
            .is_some()
            .then(|| (0..self.size()).filter(|i| eligible(self, *i)).collect());
        if let (Some(mut cands), Some(rng)) = (cands, self.scatter.as_mut()) {
            for k in 0..(n as usize).min(cands.len()) {
                let j = k + (rng.next_u64() % (cands.len() - k) as u64) as usize;
                cands.swap(k, j);
            }
            cands.truncate(n as usize);
            got = cands;
        } else {
            for i in self.first_free..self.size() {
                if got.len() == n as usize {
                    break;
                }
                if eligible(self, i) {
                    got.push(i);
                }
            }
        }
        if got.len() < n as usize {
            return Err(ApiError::client(
                "InsufficientFreeAddressesInSubnet",
                format!(
                    "The specified subnet does not have enough free addresses to satisfy the request ({n} asked)."
                ),
            ));
        }
        Ok(got
            .into_iter()
            .map(|i| {
                self.mark(i, true);
                Ipv4Addr::from(self.base() + i)
            })
            .collect())
    }

    /// Takes a named address.
    pub fn take_ip(&mut self, addr: Ipv4Addr) -> Result<Ipv4Addr, ApiError> {
        let Some(i) = self.index(addr) else {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!(
                    "Address {addr} does not fall within the subnet's address range {}.",
                    self.net
                ),
            ));
        };
        if self.reserved(i) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("Address {addr} is reserved by AWS."),
            ));
        }
        if self.used[i as usize] {
            return Err(ApiError::client(
                "InvalidIPAddress.InUse",
                format!("Address {addr} is in use."),
            ));
        }
        self.mark(i, true);
        Ok(addr)
    }

    /// Returns an address.
    pub fn put_ip(&mut self, addr: Ipv4Addr) {
        if let Some(i) = self.index(addr) {
            self.mark(i, false);
        }
    }

    /// Returns a prefix.
    pub fn put_prefix(&mut self, p: Prefix28) {
        for a in p.addresses() {
            self.put_ip(a);
        }
    }

    /// Whether `r` lies in the subnet and overlaps no used address (for a new reservation).
    pub fn contains_net(&self, r: &Ipv4Net) -> bool {
        self.net.contains(r)
    }

    /// Scatters single used addresses so that every aligned /28 that was wholly free keeps 15
    /// free addresses but none is free whole: AvailableIpAddressCount stays high while
    /// automatic prefixes fail with InsufficientCidrBlocks. Returns the addresses taken.
    pub fn fragment(&mut self) -> Vec<Ipv4Addr> {
        let mut taken = Vec::new();
        let mut s = 0;
        let mut k = 0u32;
        while s + 16 <= self.size() {
            if self.slash28_free(s) {
                // Vary the offset so the scatter does not look like a stripe.
                let i = s + 1 + (k * 7) % 14;
                self.mark(i, true);
                taken.push(Ipv4Addr::from(self.base() + i));
                k += 1;
            }
            s += 16;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(c: &str) -> AddressSpace {
        AddressSpace::new(c.parse().unwrap())
    }

    #[test]
    fn scattered_addresses_are_free_unreserved_and_seed_determined() {
        let draw = |seed| {
            let mut s = space("10.0.0.0/24");
            s.set_choice(AddressChoice::Scattered, seed);
            let res: Ipv4Net = "10.0.0.128/25".parse().unwrap();
            s.take_ips(20, &[res]).unwrap()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        let mut seen = std::collections::BTreeSet::new();
        for ip in &a {
            let last = ip.octets()[3];
            assert!(
                (4..128).contains(&last),
                "{ip} is reserved or in the reservation"
            );
            assert!(seen.insert(*ip), "{ip} twice");
        }
        // Not the lowest twenty.
        assert!(a.iter().any(|ip| ip.octets()[3] >= 24), "{a:?}");
    }

    #[test]
    fn reserved_addresses_and_available_count() {
        let mut s = space("10.0.0.0/24");
        assert_eq!(s.available(), 251);
        // The first /28 holds four reserved addresses; the last holds the broadcast.
        let ps = s.take_prefixes(1, &[], &[]).unwrap();
        assert_eq!(ps[0].to_string(), "10.0.0.16/28");
        assert_eq!(s.available(), 235);
        assert!(s.take_prefix("10.0.0.240/28").is_err());
        assert!(s.take_prefix("10.0.0.0/28").is_err());
        let ips = s.take_ips(2, &[]).unwrap();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 0, 0, 4), Ipv4Addr::new(10, 0, 0, 5)]
        );
        assert!(s.take_ip(Ipv4Addr::new(10, 0, 0, 255)).is_err());
        assert!(s.take_ip(Ipv4Addr::new(10, 0, 0, 3)).is_err());
    }

    #[test]
    fn all_or_nothing_and_fragmentation() {
        let mut s = space("10.0.0.0/26"); // 64 addresses: /28s at .16 and .32 are usable
        let e = s.take_prefixes(3, &[], &[]).unwrap_err();
        assert_eq!(e.code, "InsufficientCidrBlocks");
        assert_eq!(s.available(), 59, "a failed request takes nothing");
        let mut f = space("10.0.0.0/24");
        let scattered = f.fragment();
        assert_eq!(scattered.len(), 14);
        assert!(f.available() > 200);
        assert_eq!(
            f.take_prefixes(1, &[], &[]).unwrap_err().code,
            "InsufficientCidrBlocks"
        );
        assert_eq!(f.take_ips(5, &[]).unwrap().len(), 5);
    }

    #[test]
    fn prefix_reservations_are_searched_first_and_explicit_ones_avoided() {
        let mut s = space("10.0.0.0/24");
        let pr: Ipv4Net = "10.0.0.128/26".parse().unwrap();
        let ex: Ipv4Net = "10.0.0.16/28".parse().unwrap();
        let got = s.take_prefixes(5, &[pr], &[pr, ex]).unwrap();
        let names: Vec<String> = got.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            names,
            [
                "10.0.0.128/28",
                "10.0.0.144/28",
                "10.0.0.160/28",
                "10.0.0.176/28",
                "10.0.0.32/28"
            ]
        );
        // Secondary addresses never come from reservations.
        let ips = s.take_ips(12, &[pr, ex]).unwrap();
        assert!(ips.iter().all(|a| !pr.contains(a) && !ex.contains(a)));
    }
}
