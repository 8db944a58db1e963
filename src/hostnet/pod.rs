//! A pod's network, as the CNI plugin makes it (the VPC CNI's layout, so that what users and
//! Calico know carries over):
//!
//! * a veth pair made from inside the pod's namespace: `CNI_IFNAME` there, the host end in the
//!   node's namespace named `PREFIX` + 11 hex digits of SHA-1 of `namespace.name`;
//! * in the pod: the address as a /32, a scope-link route to 169.254.1.1, the default route via
//!   it, and a permanent neighbour entry for it at the host end's MAC (no ARP, no gateway address
//!   to hand out); with IPv6 the same with a /128 and `fe80::1`, in one interface with the IPv4
//!   address when the pod is dual-stack;
//! * on the node: `POD/32 dev HOSTVETH` in main, `to POD lookup main` (512), and for an address
//!   on a secondary ENI `from POD lookup TABLE` (1536), so that its packets leave through that
//!   ENI (EC2 drops them otherwise); for IPv6 `POD/128 dev HOSTVETH` and rule 512 (the /80 is
//!   always the primary ENI's), and a permanent neighbour for the pod's /128 (no neighbour
//!   discovery through a host end whose link-local address may still be tentative);
//! * for an IPv6-only pod with ENABLE_V4_EGRESS, a second interface (see [`super::egress`]).
//!
//! Tearing down needs nothing but the names and the namespace: the address is read off the
//! pod's interface (or given), so DEL works while the agent is down. It comes in two steps:
//! [`detach`] (rules and route, fast) and [`unlink`] (the veth pair, which waits for an RCU grace
//! period): the plugin hands the second to the agent when it can.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::egress;
use super::netlink::{Link, Mac, Netlink, NetlinkError, Route, Rule, TABLE_MAIN};
use super::netns::{NetNs, NetnsError};
use crate::core::sha1;

/// The pod's gateway: link-local, never on the wire.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway: link-local, answered by the host end's MAC.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Rule priority of `to POD lookup main`.
pub const PRIO_TO_POD: u32 = 512;
/// Rule priority of `from POD lookup TABLE`.
pub const PRIO_FROM_POD: u32 = 1536;

/// Wiring a pod failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The pod's (or the node's) namespace could not be opened or entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The kernel refused.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Something that should be there is not.
    #[error("{0}")]
    Missing(String),
}

/// The host-side veth name: `prefix` + 11 hex digits of SHA-1 of `namespace.name` (the VPC
/// CNI's, which Calico computes too), or of the container id when the runtime gave no pod.
pub fn host_veth_name(prefix: &str, namespace: &str, name: &str, container_id: &str) -> String {
    let key = if namespace.is_empty() && name.is_empty() {
        container_id.to_owned()
    } else {
        format!("{namespace}.{name}")
    };
    format!("{prefix}{}", &sha1::hex(key.as_bytes())[..11])
}

/// What a pod gets.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// Its namespace (CNI_NETNS).
    pub netns: &'a Path,
    /// Its interface (CNI_IFNAME).
    pub ifname: &'a str,
    /// The host end's name.
    pub host_veth: &'a str,
    /// Its IPv4 address.
    pub address: Option<Ipv4Addr>,
    /// Its IPv6 address.
    pub address6: Option<Ipv6Addr>,
    /// Its IPv4 egress address (IPv6-only pods with ENABLE_V4_EGRESS): a second interface.
    pub egress4: Option<Ipv4Addr>,
    /// The interfaces' MTU.
    pub mtu: u32,
    /// The ENI's routing table (main for the primary ENI).
    pub table: u32,
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    /// The host end's MAC.
    pub host_mac: Mac,
    /// The pod interface's MAC.
    pub pod_mac: Mac,
}

fn host32(a: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid length"))
}

/// `a` as a host route's destination: /32 or /128.
pub fn host_net(a: IpAddr) -> IpNet {
    match a {
        IpAddr::V4(a) => host32(a),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, 128).expect("128 is a valid length")),
    }
}

fn default_net(v6: bool) -> IpNet {
    if v6 {
        IpNet::V6(Ipv6Net::default())
    } else {
        IpNet::V4(Ipv4Net::default())
    }
}

fn gateway(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(GATEWAY6)
    } else {
        IpAddr::V4(GATEWAY)
    }
}

impl PodSpec<'_> {
    /// The pod's addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.address
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.address6.map(IpAddr::V6))
            .collect()
    }
}

/// The node's rules for a pod's address: `to POD lookup main`, and for an IPv4 address on a
/// secondary ENI `from POD lookup TABLE`.
pub fn pod_rules(address: IpAddr, table: u32) -> Vec<Rule> {
    let me = host_net(address);
    let mut v = vec![Rule::lookup(PRIO_TO_POD, TABLE_MAIN).to(me)];
    if table != TABLE_MAIN && address.is_ipv4() {
        v.push(Rule::lookup(PRIO_FROM_POD, table).from(me));
    }
    v
}

/// A socket in `ns`, opened by entering it for a moment.
fn netlink_in(ns: &NetNs) -> Result<Netlink, PodError> {
    let _inside = ns.enter()?;
    Ok(Netlink::open()?)
}

fn find(nl: &mut Netlink, name: &str, what: &str) -> Result<Link, PodError> {
    nl.link_by_name(name)?
        .ok_or_else(|| PodError::Missing(format!("{what} {name} is not there")))
}

/// Wires the pod. Idempotent: an interface of the same name left by an earlier attempt, in the
/// pod or on the node, is replaced.
pub fn setup(spec: &PodSpec) -> Result<Wired, PodError> {
    let node = NetNs::current()?;
    let pod = NetNs::open(spec.netns)?;
    let mut node_nl = Netlink::open()?;
    let mut pod_nl = netlink_in(&pod)?;
    if let Some(old) = pod_nl.link_by_name(spec.ifname)? {
        pod_nl.del_link(old.index)?;
    }
    if let Some(old) = node_nl.link_by_name(spec.host_veth)? {
        node_nl.del_link(old.index)?;
    }
    pod_nl.add_veth(
        spec.ifname,
        None,
        spec.host_veth,
        None,
        Some(node.fd()),
        Some(spec.mtu),
    )?;
    let host = find(&mut node_nl, spec.host_veth, "the host end")?;
    let inner = find(&mut pod_nl, spec.ifname, "the pod's interface")?;
    if let Some(lo) = pod_nl.link_by_name("lo")? {
        pod_nl.set_up(lo.index, true)?;
    }
    pod_nl.set_up(inner.index, true)?;
    node_nl.set_up(host.index, true)?;
    for a in spec.addresses() {
        let v6 = a.is_ipv6();
        let gw = gateway(v6);
        pod_nl.add_address(inner.index, host_net(a), false)?;
        pod_nl.add_route(
            &Route::to(host_net(gw), TABLE_MAIN)
                .dev(inner.index)
                .link_scope(),
            true,
        )?;
        pod_nl.add_route(
            &Route::to(default_net(v6), TABLE_MAIN)
                .via(gw)
                .dev(inner.index),
            true,
        )?;
        pod_nl.set_neighbour(inner.index, gw, host.mac)?;
        node_nl.add_route(
            &Route::to(host_net(a), TABLE_MAIN)
                .dev(host.index)
                .link_scope(),
            true,
        )?;
        for r in pod_rules(a, spec.table) {
            node_nl.add_rule(&r)?;
        }
        if v6 {
            // The node reaches the pod without neighbour discovery (its host end's link-local
            // address may still be tentative).
            node_nl.set_neighbour(host.index, a, inner.mac)?;
        }
    }
    if let Some(e) = spec.egress4 {
        egress::setup(
            &mut pod_nl,
            &mut node_nl,
            &node,
            &egress::host_end_name(spec.host_veth),
            e,
            spec.mtu,
        )?;
    }
    Ok(Wired {
        host_mac: host.mac,
        pod_mac: inner.mac,
    })
}

/// What [`detach`] found and left.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Detached {
    /// The pod's addresses: read off its interface, else the hints.
    pub addresses: Vec<IpAddr>,
    /// The host end, still there: its name and index.
    pub host_end: Option<(String, u32)>,
}

/// The pod's addresses on `ifname` in its namespace: the /32 and /128 ADD put there.
fn pod_addresses(netns: Option<&Path>, ifname: &str) -> Result<Vec<IpAddr>, PodError> {
    let mut found = Vec::new();
    if let Some(path) = netns
        && let Ok(pod) = NetNs::open(path)
    {
        let mut pod_nl = netlink_in(&pod)?;
        if let Some(l) = pod_nl.link_by_name(ifname)? {
            found = pod_nl
                .addresses()?
                .into_iter()
                .filter(|a| a.index == l.index)
                .filter_map(|a| match a.net {
                    IpNet::V4(n) if n.prefix_len() == 32 => Some(IpAddr::V4(n.addr())),
                    IpNet::V6(n) if n.prefix_len() == 128 => Some(IpAddr::V6(n.addr())),
                    _ => None,
                })
                .collect();
        }
    }
    Ok(found)
}

/// Cuts the pod off the node, quickly: the node's rules for its addresses and the host routes
/// to its host end go; the veth pair stays for [`unlink`] (deleting a veth waits for the
/// kernel's RCU grace period, tens of milliseconds). The addresses are read off the pod's
/// interface when its namespace is still there, else `hints` (prevResult's) are used.
/// Idempotent.
pub fn detach(
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &str,
    hints: &[IpAddr],
) -> Result<Detached, PodError> {
    let mut addresses = pod_addresses(netns, ifname)?;
    if addresses.is_empty() {
        addresses = hints.to_vec();
    }
    // An IPv6-only pod's IPv4 egress interface: deleted here, with the pod's namespace at hand.
    egress::remove(netns)?;
    let mut node_nl = Netlink::open()?;
    for a in &addresses {
        remove_rules(&mut node_nl, *a)?;
    }
    let host = node_nl.link_by_name(host_veth)?;
    if let Some(l) = &host {
        for a in &addresses {
            let r = Route::to(host_net(*a), TABLE_MAIN)
                .dev(l.index)
                .link_scope();
            match node_nl.del_route(&r) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(Detached {
        addresses,
        host_end: host.map(|l| (l.name, l.index)),
    })
}

/// Deletes the host end `name` if it is still the link `index` (a link of that name with
/// another index is a newer pod's). The pod's side goes with it. Returns whether it deleted.
pub fn unlink(nl: &mut Netlink, name: &str, index: u32) -> Result<bool, PodError> {
    match nl.link_by_name(name)? {
        Some(l) if l.index == index && l.kind.as_deref() == Some("veth") => {
            match nl.del_link(l.index) {
                Err(e) if !e.missing() => Err(e.into()),
                _ => Ok(true),
            }
        }
        _ => Ok(false),
    }
}

/// Removes the pod's wiring at once: [`detach`], then [`unlink`] of the host end (or of the pod's
/// interface when the host end is already gone). Idempotent; returns the addresses found.
pub fn teardown(
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &str,
    hints: &[IpAddr],
) -> Result<Vec<IpAddr>, PodError> {
    let d = detach(netns, ifname, host_veth, hints)?;
    match &d.host_end {
        Some((name, index)) => {
            unlink(&mut Netlink::open()?, name, *index)?;
        }
        None => {
            if let Some(path) = netns
                && let Ok(pod) = NetNs::open(path)
            {
                let mut pod_nl = netlink_in(&pod)?;
                if let Some(l) = pod_nl.link_by_name(ifname)? {
                    match pod_nl.del_link(l.index) {
                        Err(e) if !e.missing() => return Err(e.into()),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(d.addresses)
}

/// Removes the node's pod rules (512, 1536, any table) for `address`.
pub fn remove_rules(nl: &mut Netlink, address: IpAddr) -> Result<(), PodError> {
    let me = host_net(address);
    for r in nl.rules(address.is_ipv6())? {
        let ours = (r.priority == PRIO_TO_POD && r.to == Some(me))
            || (r.priority == PRIO_FROM_POD && r.from == Some(me));
        if ours {
            match nl.del_rule(&r) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks the wiring against what ADD made: the pod's interface with its /32, its routes and
/// gateway neighbour; the host end up with the /32 route; the rules.
pub fn check(spec: &PodSpec) -> Result<(), PodError> {
    let pod = NetNs::open(spec.netns)?;
    let mut pod_nl = netlink_in(&pod)?;
    let mut node_nl = Netlink::open()?;
    let inner = find(&mut pod_nl, spec.ifname, "the pod's interface")?;
    let host = find(&mut node_nl, spec.host_veth, "the host end")?;
    let missing = |what: String| Err(PodError::Missing(what));
    if !host.up {
        return missing(format!("{} is down", spec.host_veth));
    }
    let addresses = pod_nl.addresses()?;
    let neighbours = pod_nl.permanent_neighbours()?;
    for a in spec.addresses() {
        let v6 = a.is_ipv6();
        let gw = gateway(v6);
        if !addresses
            .iter()
            .any(|x| x.index == inner.index && x.net == host_net(a))
        {
            return missing(format!("{} has no {}", spec.ifname, host_net(a)));
        }
        let routes = pod_nl.routes(v6)?;
        let has = |dst: IpNet, gw: Option<IpAddr>| {
            routes.iter().any(|r| {
                r.table == TABLE_MAIN
                    && r.dst == dst
                    && r.gateway == gw
                    && r.oif == Some(inner.index)
            })
        };
        if !has(host_net(gw), None) || !has(default_net(v6), Some(gw)) {
            return missing(format!("the pod's routes via {gw} are not there"));
        }
        if !neighbours
            .iter()
            .any(|(i, ip, mac)| *i == inner.index && *ip == gw && *mac == host.mac)
        {
            return missing(format!("the pod's neighbour entry for {gw} is not there"));
        }
        if !node_nl
            .routes(v6)?
            .iter()
            .any(|r| r.table == TABLE_MAIN && r.dst == host_net(a) && r.oif == Some(host.index))
        {
            return missing(format!(
                "the node has no route {} dev {}",
                host_net(a),
                spec.host_veth
            ));
        }
        let rules = node_nl.rules(v6)?;
        for want in pod_rules(a, spec.table) {
            if !rules.iter().any(|r| {
                r.priority == want.priority
                    && r.table == want.table
                    && r.from == want.from
                    && r.to == want.to
            }) {
                return missing(format!("the node has no rule {want:?}"));
            }
        }
    }
    if let Some(e) = spec.egress4 {
        egress::check(
            &mut pod_nl,
            &mut node_nl,
            &egress::host_end_name(spec.host_veth),
            e,
        )?;
    }
    Ok(())
}

/// Host ends named with `prefix` none of whose pod addresses is in `keep`, with those
/// addresses: what a CNI GC removes (with their rules).
pub fn leftovers(
    nl: &mut Netlink,
    prefix: &str,
    keep: &[IpAddr],
) -> Result<Vec<(Link, Vec<IpAddr>)>, PodError> {
    let mut routes = nl.routes(false)?;
    routes.extend(nl.routes(true)?);
    let mut out = Vec::new();
    for l in nl.links()? {
        if !l.name.starts_with(prefix) || l.kind.as_deref() != Some("veth") {
            continue;
        }
        let addrs: Vec<IpAddr> = routes
            .iter()
            .filter(|r| r.table == TABLE_MAIN && r.oif == Some(l.index))
            .filter_map(|r| match r.dst {
                IpNet::V4(n) if n.prefix_len() == 32 => Some(IpAddr::V4(n.addr())),
                IpNet::V6(n) if n.prefix_len() == 128 => Some(IpAddr::V6(n.addr())),
                _ => None,
            })
            .collect();
        if !addrs.iter().any(|a| keep.contains(a)) {
            out.push((l, addrs));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_the_vpc_cnis() {
        // eni + sha1("default.web-1")[..11]
        let n = host_veth_name("eni", "default", "web-1", "c1");
        assert_eq!(n, format!("eni{}", &sha1::hex(b"default.web-1")[..11]));
        assert_eq!(n.len(), 14);
        assert_ne!(n, host_veth_name("eni", "default", "web-2", "c1"));
        // No pod: the container id.
        assert_eq!(
            host_veth_name("eni", "", "", "abc"),
            format!("eni{}", &sha1::hex(b"abc")[..11])
        );
    }

    #[test]
    fn rules_for_primary_and_secondary_enis() {
        let a: Ipv4Addr = "10.0.0.17".parse().unwrap();
        assert_eq!(pod_rules(IpAddr::V4(a), TABLE_MAIN).len(), 1);
        let r = pod_rules(IpAddr::V4(a), 2);
        assert_eq!(r[1].priority, PRIO_FROM_POD);
        assert_eq!(r[1].table, 2);
        assert_eq!(r[1].from, Some(host32(a)));
        // The /80 is the primary ENI's: an IPv6 address gets rule 512 alone, as an IPv6 rule.
        let six: IpAddr = "2600:1f14::1:0:0:5".parse().unwrap();
        let r = pod_rules(six, 2);
        assert_eq!(r.len(), 1);
        assert!(r[0].v6);
        assert_eq!(r[0].to, Some(host_net(six)));
    }
}
