//! What the emulated VPC should look like, computed from the mock's model alone (pure): one
//! namespace per running instance, one router port per attached ENI whose link has appeared
//! (hot-plug: an attachment's link shows `hotplug_ms` after the attach), the addresses EC2 would
//! deliver to each port, and the sources each port may send from.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::hostnet::netlink::{Mac, parse_mac};
use crate::mock::model::Model;

/// One attached ENI as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The ENI.
    pub eni: String,
    /// Its instance.
    pub instance: String,
    /// Its device index (0: the instance's `eth0`).
    pub device_index: u32,
    /// Its MAC.
    pub mac: Mac,
    /// Its primary address.
    pub primary: Ipv4Addr,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Every address EC2 delivers to it and accepts from it: the primary and secondary /32s and
    /// the delegated /28s.
    pub addresses: Vec<Ipv4Net>,
    /// Its subnet's IPv6 /64, when the subnet has one.
    pub subnet6: Option<Ipv6Net>,
    /// Every IPv6 address EC2 delivers to it and accepts from it: its /128s and delegated /80s.
    pub addresses6: Vec<Ipv6Net>,
    /// Its own IPv6 addresses (not prefixes): what the instance configures on the link, as
    /// DHCPv6 hands them to an EC2 instance.
    pub ips6: Vec<Ipv6Addr>,
}

impl Port {
    /// The subnet router's address: the subnet's `.1`.
    pub fn router(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// The link's name in the instance: `eth0` for the primary ENI, `ens{5+d}` for the others
    /// (as on Amazon Linux 2023), so that an agent must find it by MAC.
    pub fn link_name(&self) -> String {
        if self.device_index == 0 {
            "eth0".to_owned()
        } else {
            format!("ens{}", 5 + self.device_index)
        }
    }
}

/// One running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its id.
    pub id: String,
    /// Its scenario name (the `Name` tag), or its id.
    pub name: String,
}

/// The whole emulated VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Running instances by id.
    pub hosts: BTreeMap<String, Host>,
    /// Ports whose link has appeared, by ENI id.
    pub ports: BTreeMap<String, Port>,
    /// Every running instance's primary address: what the internet gateway forwards.
    pub primaries: Vec<Ipv4Addr>,
    /// The VPCs' CIDRs.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The VPCs' IPv6 /56s.
    pub vpc_cidrs6: Vec<Ipv6Net>,
    /// When the next hot-plug is due (mock ms), if one is pending.
    pub next_change_ms: Option<u64>,
}

impl Desired {
    /// The data plane `model` asks for at mock time `now_ms`.
    pub fn of(model: &Model, now_ms: u64, hotplug_ms: u64) -> Self {
        let mut d = Self {
            vpc_cidrs: model.vpcs.values().flat_map(|v| v.cidrs()).collect(),
            vpc_cidrs6: model
                .vpcs
                .values()
                .filter_map(|v| v.ipv6.as_ref().map(|(_, n)| *n))
                .collect(),
            ..Self::default()
        };
        for i in model.instances.values().filter(|i| i.running) {
            d.hosts.insert(
                i.id.clone(),
                Host {
                    id: i.id.clone(),
                    name: i.tags.get("Name").cloned().unwrap_or_else(|| i.id.clone()),
                },
            );
            if let Some(p) = model.enis.get(&i.primary_eni) {
                d.primaries.push(p.primary_ip);
            }
        }
        for e in model.enis.values() {
            let Some(a) = &e.attachment else { continue };
            if !d.hosts.contains_key(&a.instance) {
                continue;
            }
            let appears = if a.device_index == 0 {
                0
            } else {
                a.attached_at_ms + hotplug_ms
            };
            if appears > now_ms {
                d.next_change_ms = Some(d.next_change_ms.map_or(appears, |n| n.min(appears)));
                continue;
            }
            let Some(subnet) = model.subnets.get(&e.subnet) else {
                continue;
            };
            let mut addresses: Vec<Ipv4Net> = std::iter::once(e.primary_ip)
                .chain(e.secondary.iter().copied())
                .map(|a| Ipv4Net::new(a, 32).expect("32 is a valid length"))
                .collect();
            addresses.extend(e.prefixes.iter().map(|p| p.to_ipnet()));
            let mut addresses6: Vec<Ipv6Net> = e
                .ipv6_addresses
                .iter()
                .map(|a| Ipv6Net::new(*a, 128).expect("128 is a valid length"))
                .collect();
            addresses6.extend(e.ipv6_prefixes.iter().map(|p| p.to_ipnet()));
            d.ports.insert(
                e.id.clone(),
                Port {
                    eni: e.id.clone(),
                    instance: a.instance.clone(),
                    device_index: a.device_index,
                    mac: parse_mac(&e.mac).unwrap_or_default(),
                    primary: e.primary_ip,
                    subnet: subnet.space.net(),
                    addresses,
                    subnet6: subnet.ipv6.as_ref().map(|(_, s)| s.net()),
                    addresses6,
                    ips6: e.ipv6_addresses.clone(),
                },
            );
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::model::{IpRequest, Tags};

    #[test]
    fn ports_appear_after_the_hotplug_delay_with_their_addresses() {
        let mut m = Model::new("us-west-2");
        let vpc = m
            .create_vpc("10.0.0.0/16".parse().unwrap(), Tags::new())
            .unwrap();
        let subnet = m
            .create_subnet(&vpc, "10.0.0.0/20".parse().unwrap(), None, Tags::new())
            .unwrap();
        let i = m
            .run_instance("m5.large", &subnet, vec![], "ami-1".into(), 0)
            .unwrap();
        let primary = m.instances[&i].primary_eni.clone();
        m.assign(
            &primary,
            IpRequest {
                prefix_count: 1,
                ..IpRequest::default()
            },
        )
        .unwrap();
        let second = m
            .create_eni(
                &subnet,
                vec![],
                "x".into(),
                None,
                IpRequest::default(),
                Tags::new(),
            )
            .unwrap();
        m.attach(&second, &i, 1, 0, 1_000).unwrap();
        let before = Desired::of(&m, 2_999, 2_000);
        assert_eq!(before.ports.len(), 1, "only eth0 before the hot-plug");
        assert_eq!(before.next_change_ms, Some(3_000));
        let p = &before.ports[&primary];
        assert_eq!(p.link_name(), "eth0");
        assert_eq!(p.router(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.addresses.len(), 2, "primary /32 and the /28");
        assert!(p.addresses.iter().any(|a| a.prefix_len() == 28));
        let after = Desired::of(&m, 3_000, 2_000);
        assert_eq!(after.ports[&second].link_name(), "ens6");
        assert_eq!(after.next_change_ms, None);
        assert_eq!(after.primaries.len(), 1);
        m.terminate(std::slice::from_ref(&i)).unwrap();
        let gone = Desired::of(&m, 4_000, 2_000);
        assert!(gone.hosts.is_empty() && gone.ports.is_empty());
    }
}
