//! Network limits of EC2 instance types, built from `data/instance-types.csv` (1,263 types):
//! the mock EC2's DescribeInstanceTypes answers from it, and the agent falls back to it when
//! DescribeInstanceTypes is unavailable.

use std::collections::HashMap;
use std::sync::OnceLock;

const CSV: &str = include_str!("../../data/instance-types.csv");

/// Network facts of one instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeInfo {
    /// e.g. `m5.large`.
    pub name: String,
    /// MaximumNetworkInterfaces.
    pub max_enis: u32,
    /// Ipv4AddressesPerInterface (the primary address included).
    pub ipv4_per_eni: u32,
    /// Ipv6AddressesPerInterface.
    pub ipv6_per_eni: u32,
    /// `nitro`, `xen`, or empty for bare metal.
    pub hypervisor: String,
    /// Bare metal.
    pub bare_metal: bool,
    /// MaximumNetworkCards.
    pub max_cards: u32,
    /// Default vCPUs.
    pub vcpus: u32,
}

impl InstanceTypeInfo {
    /// Prefix delegation needs a Nitro instance or bare metal.
    pub fn supports_prefixes(&self) -> bool {
        self.hypervisor == "nitro" || self.bare_metal
    }

    /// Address slots per ENI for prefixes and secondary addresses (the primary takes one).
    pub fn slots_per_eni(&self) -> u32 {
        self.ipv4_per_eni.saturating_sub(1)
    }

    /// The EKS max-pods formula ([`max_pods`]) for this type.
    pub fn max_pods(&self, prefix_mode: bool) -> u32 {
        max_pods(
            self.max_enis,
            self.ipv4_per_eni,
            self.vcpus,
            prefix_mode && self.supports_prefixes(),
        )
    }
}

/// The EKS max-pods formula: secondary-IP mode `ENIs × (IPv4 per ENI − 1) + 2`; prefix mode
/// `ENIs × ((IPv4 per ENI − 1) × 16) + 2`, capped at 110 under 30 vCPUs and 250 otherwise.
pub fn max_pods(max_enis: u32, ipv4_per_eni: u32, vcpus: u32, prefix_mode: bool) -> u32 {
    let slots = ipv4_per_eni.saturating_sub(1);
    if prefix_mode {
        (max_enis * slots * 16 + 2).min(if vcpus < 30 { 110 } else { 250 })
    } else {
        max_enis * slots + 2
    }
}

fn parse(csv: &str) -> HashMap<String, InstanceTypeInfo> {
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default();
    assert_eq!(
        header,
        "instance_type,max_network_interfaces,ipv4_addresses_per_interface,ipv6_addresses_per_interface,hypervisor,bare_metal,max_network_cards,default_vcpus",
        "data/instance-types.csv has an unexpected header"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |i: usize| -> u32 {
                f.get(i)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("data/instance-types.csv: bad field {i} in {l:?}"))
            };
            let info = InstanceTypeInfo {
                name: f[0].to_owned(),
                max_enis: num(1),
                ipv4_per_eni: num(2),
                ipv6_per_eni: num(3),
                hypervisor: f[4].to_owned(),
                bare_metal: f[5] == "true",
                max_cards: num(6),
                vcpus: num(7),
            };
            (info.name.clone(), info)
        })
        .collect()
}

/// Every known instance type.
pub fn all() -> &'static HashMap<String, InstanceTypeInfo> {
    static TABLE: OnceLock<HashMap<String, InstanceTypeInfo>> = OnceLock::new();
    TABLE.get_or_init(|| parse(CSV))
}

/// One instance type's facts.
pub fn lookup(name: &str) -> Option<&'static InstanceTypeInfo> {
    all().get(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_documented_examples() {
        assert_eq!(all().len(), 1263);
        let m5 = lookup("m5.large").unwrap();
        assert_eq!((m5.max_enis, m5.ipv4_per_eni), (3, 10));
        assert_eq!(m5.slots_per_eni(), 9);
        assert!(m5.supports_prefixes());
        assert_eq!(m5.max_pods(false), 29);
        assert_eq!(m5.max_pods(true), 110);
        let t3 = lookup("t3.medium").unwrap();
        assert_eq!((t3.max_enis, t3.ipv4_per_eni), (3, 6));
        assert_eq!(lookup("m5.xlarge").unwrap().max_enis, 4);
        let big = lookup("m5.24xlarge").unwrap();
        assert_eq!((big.max_enis, big.ipv4_per_eni), (15, 50));
        assert_eq!(big.max_pods(true), 250);
        let m4 = lookup("m4.large").unwrap();
        assert!(!m4.supports_prefixes());
        assert_eq!(m4.max_pods(true), m4.max_pods(false));
        assert!(lookup("nope.large").is_none());
    }
}
