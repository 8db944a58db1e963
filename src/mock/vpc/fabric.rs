//! The emulated VPC in the kernel: the router namespace with one veth port per attached ENI,
//! the instances' namespaces with the other ends (`eth0`, `ens6`...), the internet namespace
//! behind the gateway, and the router's nftables table that judges sources as EC2 does.
//! [`Fabric::apply`] moves the kernel from what it last made to a new [`Desired`]; it is
//! blocking (netlink, `nft`), run off the async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::desired::{Desired, Host, Port};
use super::{Drops, VpcError};
use crate::hostnet::netlink::{Netlink, Route};
use crate::hostnet::netns::NetNs;
use crate::hostnet::{nft, sysctl};

/// The ENI MTU EC2 gives (jumbo frames inside a VPC).
pub const ENI_MTU: u32 = 9001;
/// The router's end of the link to the internet gateway, and the gateway's.
pub const IGW_ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The internet side of the gateway link.
pub const IGW_OUTSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The one "internet" host: a documentation address (TEST-NET-2) in the internet namespace.
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// IMDS's address, on the loopback of every instance namespace.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The VPC router's IPv6 address on every subnet with IPv6, as EC2's.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0xec2, 0, 0, 0, 0, 0, 1);
/// The router's end of the IPv6 link to the internet gateway (a unique local address).
pub const IGW6_ROUTER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 1);
/// The internet side of it.
pub const IGW6_OUTSIDE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2);
/// The "internet" host's IPv6 address (documentation range).
pub const INTERNET_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);

/// The link-local address the kernel gives a link with `mac` (modified EUI-64): the router
/// routes an ENI's IPv6 addresses and prefixes through it, as it routes IPv4 through the ENI's
/// primary address.
pub fn link_local(mac: crate::hostnet::netlink::Mac) -> Ipv6Addr {
    let m = mac;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

/// How traffic leaves the VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// An internet gateway: only instances' primary addresses may leave (others are dropped
    /// and counted), as with public IPs mapped one to one.
    InternetGateway,
    /// A NAT gateway: every source is masqueraded.
    NatGateway,
}

/// An instance's namespace.
pub struct HostNs {
    /// The instance.
    pub host: Host,
    /// Its namespace's name.
    pub netns: String,
    /// The open namespace.
    pub ns: NetNs,
    nl: Netlink,
}

struct Programmed {
    port: Port,
    name: String,
    index: u32,
    set: String,
    /// Whether the port's IPv6 side (router address, neighbour, the instance's default route)
    /// is made.
    v6: bool,
}

/// Everything the emulated VPC made in the kernel.
pub struct Fabric {
    run: String,
    egress: Egress,
    router: NetNs,
    router_nl: Netlink,
    /// The internet namespace.
    pub inet: NetNs,
    /// Instance namespaces by instance id.
    pub hosts: BTreeMap<String, HostNs>,
    ports: BTreeMap<String, Programmed>,
    next_port: u32,
}

fn v4(net: Ipv4Net) -> IpNet {
    IpNet::V4(net)
}

fn host32(a: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid length"))
}

fn host128(a: Ipv6Addr) -> IpNet {
    IpNet::V6(Ipv6Net::new(a, 128).expect("128 is a valid length"))
}

fn main_table() -> u32 {
    crate::hostnet::netlink::TABLE_MAIN
}

/// A namespace's netlink socket, opened from a thread inside it.
fn netlink_in(ns: &NetNs) -> Result<Netlink, VpcError> {
    ns.run(Netlink::open)?.map_err(VpcError::from)
}

/// Sets sysctls from a thread in `ns`.
fn sysctls(ns: &NetNs, pairs: &[(String, &str)]) -> Result<(), VpcError> {
    ns.run(|| pairs.iter().try_for_each(|(k, v)| sysctl::set(k, v)))?
        .map_err(VpcError::from)
}

impl Fabric {
    /// The run's namespace names: `{run}-vpc`, `{run}-inet`, `{run}-{instance name}`.
    pub fn netns_name(run: &str, what: &str) -> String {
        let clean: String = what
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{run}-{clean}")
    }

    /// Creates the router and the internet behind it.
    pub fn new(run: &str, egress: Egress) -> Result<Self, VpcError> {
        let router = NetNs::create(&Self::netns_name(run, "vpc"))?;
        let inet = NetNs::create(&Self::netns_name(run, "inet"))?;
        let mut router_nl = netlink_in(&router)?;
        let mut inet_nl = netlink_in(&inet)?;
        for nl in [&mut router_nl, &mut inet_nl] {
            let lo = nl.link_by_name("lo")?.ok_or(VpcError::NoLoopback)?;
            nl.set_up(lo.index, true)?;
        }
        let igw = format!("{run}ig");
        router_nl.add_veth(&igw, None, "inet0", None, Some(inet.fd()), None)?;
        let r_if = router_nl.link_by_name(&igw)?.ok_or(VpcError::NoLoopback)?;
        router_nl.add_address(
            r_if.index,
            v4(Ipv4Net::new(IGW_ROUTER, 30).expect("30")),
            false,
        )?;
        router_nl.set_up(r_if.index, true)?;
        router_nl.add_route(
            &Route::to(
                "0.0.0.0/0".parse().expect("a net"),
                crate::hostnet::netlink::TABLE_MAIN,
            )
            .via(IpAddr::V4(IGW_OUTSIDE))
            .dev(r_if.index),
            true,
        )?;
        let i_if = inet_nl.link_by_name("inet0")?.ok_or(VpcError::NoLoopback)?;
        inet_nl.add_address(
            i_if.index,
            v4(Ipv4Net::new(IGW_OUTSIDE, 30).expect("30")),
            false,
        )?;
        inet_nl.set_up(i_if.index, true)?;
        let lo = inet_nl.link_by_name("lo")?.ok_or(VpcError::NoLoopback)?;
        inet_nl.add_address(lo.index, host32(INTERNET_HOST), false)?;
        // IPv6 to the internet: global addresses leave as they are (no NAT, no check), as
        // through an internet or egress-only gateway.
        router_nl.add_address(
            r_if.index,
            IpNet::V6(Ipv6Net::new(IGW6_ROUTER, 126).expect("126")),
            false,
        )?;
        router_nl.add_route(
            &Route::to(IpNet::V6(Ipv6Net::default()), main_table())
                .via(IpAddr::V6(IGW6_OUTSIDE))
                .dev(r_if.index),
            true,
        )?;
        inet_nl.add_address(
            i_if.index,
            IpNet::V6(Ipv6Net::new(IGW6_OUTSIDE, 126).expect("126")),
            false,
        )?;
        inet_nl.add_address(lo.index, host128(INTERNET_HOST6), false)?;
        sysctls(
            &router,
            &[
                ("net.ipv6.conf.all.forwarding".into(), "1"),
                ("net.ipv4.ip_forward".into(), "1"),
                ("net.ipv4.conf.all.rp_filter".into(), "0"),
                ("net.ipv4.conf.default.rp_filter".into(), "0"),
            ],
        )?;
        Ok(Self {
            run: run.to_owned(),
            egress,
            router,
            router_nl,
            inet,
            hosts: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_port: 0,
        })
    }

    /// The internet namespace learns the way back to the VPCs' CIDRs, both families.
    fn inet_routes(&mut self, d: &Desired) -> Result<(), VpcError> {
        let mut nl = netlink_in(&self.inet)?;
        let dev = nl.link_by_name("inet0")?.ok_or(VpcError::NoLoopback)?;
        let routes = d
            .vpc_cidrs
            .iter()
            .map(|c| (v4(*c), IpAddr::V4(IGW_ROUTER)))
            .chain(
                d.vpc_cidrs6
                    .iter()
                    .map(|c| (IpNet::V6(*c), IpAddr::V6(IGW6_ROUTER))),
            );
        for (dst, via) in routes {
            nl.add_route(&Route::to(dst, main_table()).via(via).dev(dev.index), true)?;
        }
        Ok(())
    }

    /// Moves the kernel to `d`. Returns the hosts whose namespaces were made (their services
    /// are to be started) and the ids of those removed.
    pub fn apply(&mut self, d: &Desired) -> Result<(Vec<String>, Vec<String>), VpcError> {
        self.inet_routes(d)?;
        let gone_hosts: Vec<String> = self
            .hosts
            .keys()
            .filter(|h| !d.hosts.contains_key(*h))
            .cloned()
            .collect();
        let gone_ports: Vec<String> = self
            .ports
            .iter()
            .filter(|(eni, p)| {
                d.ports.get(*eni).is_none_or(|n| {
                    n.instance != p.port.instance
                        || n.device_index != p.port.device_index
                        || n.mac != p.port.mac
                })
            })
            .map(|(e, _)| e.clone())
            .collect();
        for eni in gone_ports {
            let p = self.ports.remove(&eni).expect("listed");
            match self.router_nl.del_link(p.index) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
        }
        for id in &gone_hosts {
            let h = self.hosts.remove(id).expect("listed");
            drop(h.ns);
            NetNs::delete(&h.netns)?;
        }
        let mut made = Vec::new();
        for (id, host) in &d.hosts {
            if !self.hosts.contains_key(id) {
                self.add_host(host)?;
                made.push(id.clone());
            }
        }
        for (eni, port) in &d.ports {
            match self.ports.get(eni) {
                None => self.add_port(port)?,
                Some(p)
                    if p.port.addresses != port.addresses
                        || p.port.addresses6 != port.addresses6
                        || p.port.ips6 != port.ips6
                        || p.port.subnet6 != port.subnet6 =>
                {
                    self.update_routes(eni, port)?;
                }
                Some(_) => {}
            }
        }
        self.program_nft(d)?;
        Ok((made, gone_hosts))
    }

    fn add_host(&mut self, host: &Host) -> Result<(), VpcError> {
        let netns = Self::netns_name(&self.run, &host.name);
        let ns = NetNs::create(&netns)?;
        let mut nl = netlink_in(&ns)?;
        let lo = nl.link_by_name("lo")?.ok_or(VpcError::NoLoopback)?;
        nl.set_up(lo.index, true)?;
        nl.add_address(lo.index, host32(IMDS_ADDR), false)?;
        // As the EKS AMI sets it: the node forwards its pods' packets.
        sysctls(&ns, &[("net.ipv4.ip_forward".into(), "1")])?;
        self.hosts.insert(
            host.id.clone(),
            HostNs {
                host: host.clone(),
                netns,
                ns,
                nl,
            },
        );
        Ok(())
    }

    fn add_port(&mut self, port: &Port) -> Result<(), VpcError> {
        let Some(host) = self.hosts.get_mut(&port.instance) else {
            return Ok(());
        };
        self.next_port += 1;
        let name = format!("{}p{}", self.run, self.next_port);
        let link = port.link_name();
        self.router_nl.add_veth(
            &name,
            None,
            &link,
            Some(port.mac),
            Some(host.ns.fd()),
            Some(ENI_MTU),
        )?;
        let r = self
            .router_nl
            .link_by_name(&name)?
            .ok_or_else(|| VpcError::Lost(name.clone()))?;
        self.router_nl
            .add_address(r.index, host32(port.router()), true)?;
        self.router_nl.set_up(r.index, true)?;
        // The VPC answers ARP for every address it routes (EC2's mapping service does).
        sysctls(
            &self.router,
            &[
                (format!("net.ipv4.conf.{name}.proxy_arp"), "1"),
                // Answer at once: the kernel delays proxy answers by up to 0.8 s by default.
                (format!("net.ipv4.neigh.{name}.proxy_delay"), "0"),
            ],
        )?;
        let inside = host
            .nl
            .link_by_name(&link)?
            .ok_or_else(|| VpcError::Lost(link.clone()))?;
        if port.device_index == 0 {
            // eth0 as the AMI sets it up: the primary address with the subnet's mask, a default
            // route via the subnet's router.
            let net = Ipv4Net::new(port.primary, port.subnet.prefix_len())
                .expect("a subnet's length is valid");
            host.nl.add_address(inside.index, v4(net), false)?;
            host.nl.set_up(inside.index, true)?;
            host.nl.add_route(
                &Route::to(
                    "0.0.0.0/0".parse().expect("a net"),
                    crate::hostnet::netlink::TABLE_MAIN,
                )
                .via(IpAddr::V4(port.router()))
                .dev(inside.index),
                true,
            )?;
        }
        self.router_nl
            .set_neighbour(r.index, IpAddr::V4(port.primary), port.mac)?;
        let set = format!("e_{}", port.eni.trim_start_matches("eni-"));
        self.ports.insert(
            port.eni.clone(),
            Programmed {
                port: Port {
                    addresses: Vec::new(),
                    subnet6: None,
                    addresses6: Vec::new(),
                    ips6: Vec::new(),
                    ..port.clone()
                },
                name,
                index: r.index,
                set,
                v6: false,
            },
        );
        self.update_routes(&port.eni, port)
    }

    /// A port's IPv6 side, once its subnet has a /64: the router's `fe80:ec2::1` on it and the
    /// ENI's link-local address as a permanent neighbour; in the instance, for `eth0`, the
    /// default route via `fe80:ec2::1` (what the router's advertisements give an instance).
    fn setup_v6(&mut self, eni: &str) -> Result<(), VpcError> {
        let p = self.ports.get_mut(eni).expect("programmed");
        self.router_nl.add_address(
            p.index,
            IpNet::V6(Ipv6Net::new(ROUTER6, 64).expect("64")),
            false,
        )?;
        self.router_nl
            .set_neighbour(p.index, IpAddr::V6(link_local(p.port.mac)), p.port.mac)?;
        if p.port.device_index == 0
            && let Some(host) = self.hosts.get_mut(&p.port.instance)
        {
            let inside = host
                .nl
                .link_by_name(&p.port.link_name())?
                .ok_or_else(|| VpcError::Lost(p.port.link_name()))?;
            host.nl.add_route(
                &Route::to(IpNet::V6(Ipv6Net::default()), main_table())
                    .via(IpAddr::V6(ROUTER6))
                    .dev(inside.index),
                true,
            )?;
        }
        p.v6 = true;
        Ok(())
    }

    /// The instance's own IPv6 addresses on `eth0`, as DHCPv6 configures them.
    fn update_ips6(&mut self, eni: &str, want: &[Ipv6Addr]) -> Result<(), VpcError> {
        let p = self.ports.get_mut(eni).expect("programmed");
        if p.port.device_index != 0 {
            return Ok(());
        }
        let Some(host) = self.hosts.get_mut(&p.port.instance) else {
            return Ok(());
        };
        let inside = host
            .nl
            .link_by_name(&p.port.link_name())?
            .ok_or_else(|| VpcError::Lost(p.port.link_name()))?;
        let old: BTreeSet<Ipv6Addr> = p.port.ips6.iter().copied().collect();
        let new: BTreeSet<Ipv6Addr> = want.iter().copied().collect();
        for a in old.difference(&new) {
            match host.nl.del_address(inside.index, host128(*a)) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
        }
        for a in new.difference(&old) {
            host.nl.add_address(inside.index, host128(*a), false)?;
        }
        p.port.ips6 = want.to_vec();
        Ok(())
    }

    /// The router's routes to a port: its primary on the link, everything else via the
    /// primary (whose MAC the router knows: no ARP for pod addresses, as in EC2).
    fn update_routes(&mut self, eni: &str, port: &Port) -> Result<(), VpcError> {
        let p = self.ports.get_mut(eni).expect("programmed");
        let old: BTreeSet<Ipv4Net> = p.port.addresses.iter().copied().collect();
        let new: BTreeSet<Ipv4Net> = port.addresses.iter().copied().collect();
        let route = |a: &Ipv4Net| {
            let r = Route::to(v4(*a), crate::hostnet::netlink::TABLE_MAIN).dev(p.index);
            if a.addr() == port.primary && a.prefix_len() == 32 {
                r.link_scope()
            } else {
                r.via(IpAddr::V4(port.primary)).on_link()
            }
        };
        for a in old.difference(&new) {
            match self.router_nl.del_route(&route(a)) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
        }
        for a in new.difference(&old) {
            self.router_nl.add_route(&route(a), true)?;
        }
        p.port.addresses = port.addresses.clone();
        if port.subnet6.is_none() {
            return Ok(());
        }
        p.port.subnet6 = port.subnet6;
        if !p.v6 {
            self.setup_v6(eni)?;
        }
        let p = self.ports.get_mut(eni).expect("programmed");
        let via = IpAddr::V6(link_local(p.port.mac));
        let route6 = |a: &Ipv6Net| Route::to(IpNet::V6(*a), main_table()).dev(p.index).via(via);
        let old: BTreeSet<Ipv6Net> = p.port.addresses6.iter().copied().collect();
        let new: BTreeSet<Ipv6Net> = port.addresses6.iter().copied().collect();
        for a in old.difference(&new) {
            match self.router_nl.del_route(&route6(a)) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
        }
        for a in new.difference(&old) {
            self.router_nl.add_route(&route6(a), true)?;
        }
        p.port.addresses6 = port.addresses6.clone();
        self.update_ips6(eni, &port.ips6)
    }

    /// The router's nftables table, rewritten in one transaction: a set of addresses per ENI
    /// and the source check per port; the internet gateway's check, or the NAT gateway's
    /// masquerade. Named counters survive rewrites: they count drops by ENI and reason.
    fn program_nft(&mut self, d: &Desired) -> Result<(), VpcError> {
        let t = format!("inet {}", self.run);
        let igw = format!("{}ig", self.run);
        let mut s = format!(
            "add table {t}\n\
             add set {t} primaries {{ type ipv4_addr; }}\n\
             flush set {t} primaries\n\
             add counter {t} igw_not_primary\n\
             add chain {t} check {{ type filter hook prerouting priority -300; policy accept; }}\n\
             flush chain {t} check\n\
             add chain {t} egress {{ type filter hook forward priority 0; policy accept; }}\n\
             flush chain {t} egress\n\
             add chain {t} nat {{ type nat hook postrouting priority 100; policy accept; }}\n\
             flush chain {t} nat\n"
        );
        if !d.primaries.is_empty() {
            let list: Vec<String> = d.primaries.iter().map(|a| a.to_string()).collect();
            s.push_str(&format!(
                "add element {t} primaries {{ {} }}\n",
                list.join(", ")
            ));
        }
        for p in self.ports.values() {
            s.push_str(&format!(
                "add set {t} {set} {{ type ipv4_addr; flags interval; }}\n\
                 flush set {t} {set}\n\
                 add set {t} {set}_6 {{ type ipv6_addr; flags interval; }}\n\
                 flush set {t} {set}_6\n\
                 add counter {t} {set}\n",
                set = p.set
            ));
            if !p.port.addresses6.is_empty() {
                let list: Vec<String> = p.port.addresses6.iter().map(|a| a.to_string()).collect();
                s.push_str(&format!(
                    "add element {t} {}_6 {{ {} }}\n",
                    p.set,
                    list.join(", ")
                ));
            }
            // IPv6: the ENI's /128s and /80s, and what neighbour discovery sends from (the
            // link-local and the unspecified address); one counter for both families.
            s.push_str(&format!(
                "add rule {t} check iifname \"{}\" ip6 saddr != {{ ::/128, fe80::/10 }} ip6 saddr != @{set}_6 counter name \"{set}\" drop\n",
                p.name,
                set = p.set
            ));
            if !p.port.addresses.is_empty() {
                let list: Vec<String> = p.port.addresses.iter().map(|a| a.to_string()).collect();
                s.push_str(&format!(
                    "add element {t} {} {{ {} }}\n",
                    p.set,
                    list.join(", ")
                ));
            }
            s.push_str(&format!(
                "add rule {t} check iifname \"{}\" ip saddr != @{set} counter name \"{set}\" drop\n",
                p.name,
                set = p.set
            ));
        }
        match self.egress {
            Egress::InternetGateway => s.push_str(&format!(
                "add rule {t} egress oifname \"{igw}\" ip saddr != @primaries counter name \"igw_not_primary\" drop\n"
            )),
            Egress::NatGateway => {
                s.push_str(&format!("add rule {t} nat oifname \"{igw}\" masquerade\n"))
            }
        }
        self.router.run(|| nft::apply(&s))??;
        Ok(())
    }

    /// The drop counters, by ENI (or the gateway) and reason.
    pub fn drops(&self) -> Result<Vec<Drops>, VpcError> {
        let counters = self.router.run(|| nft::counters("inet", &self.run))??;
        let by_set: BTreeMap<&str, &str> = self
            .ports
            .values()
            .map(|p| (p.set.as_str(), p.port.eni.as_str()))
            .collect();
        Ok(counters
            .into_iter()
            .filter_map(|(name, packets, _)| {
                if name == "igw_not_primary" {
                    return Some(Drops {
                        eni: None,
                        reason: "internet-gateway",
                        packets,
                    });
                }
                let eni = by_set
                    .get(name.as_str())
                    .map(|e| (*e).to_owned())
                    .or_else(|| name.strip_prefix("e_").map(|hex| format!("eni-{hex}")))?;
                Some(Drops {
                    eni: Some(eni),
                    reason: "source-destination-check",
                    packets,
                })
            })
            .collect())
    }

    /// The router namespace's name.
    pub fn router_netns(&self) -> String {
        Self::netns_name(&self.run, "vpc")
    }

    /// The internet namespace's name.
    pub fn inet_netns(&self) -> String {
        Self::netns_name(&self.run, "inet")
    }

    /// Every namespace of this run, for teardown.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.router_netns(), self.inet_netns()];
        v.extend(self.hosts.values().map(|h| h.netns.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_the_kernels_eui64() {
        // The universal/local bit flipped, ff:fe in the middle (RFC 4291 appendix A).
        assert_eq!(
            link_local([0x02, 0, 0, 0, 0, 0x01]),
            "fe80::ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            link_local([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
            "fe80::81b:2cff:fe3d:4e5f".parse::<Ipv6Addr>().unwrap()
        );
    }
}
