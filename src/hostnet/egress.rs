//! IPv4 egress for IPv6-only pods (`ENABLE_V4_EGRESS`, the VPC CNI's name): a second interface
//! in the pod, `v4if0`, with an address from 169.254.172.0/22 that is SNATed to the node's
//! primary IPv4 address on the way out, so that a pod of an IPv6 cluster still reaches IPv4-only
//! services.
//!
//! The address needs no allocator of its own and no state: it is derived from the pod's IPv6
//! address, whose low 48 bits are its index in the node's /80 — unique among the pods the agent
//! holds, persisted with them, the same after a restart. Index `i` gets `169.254.172.1 + i`
//! (`169.254.172.1` is the pod's gateway), so indexes 1 to [`MAX_INDEX`] have one; the /80 pool
//! hands out the lowest free index, so a node reaches that only with over a thousand pods and
//! cooling addresses at once, and the ADD then fails naming the reason.
//!
//! Wiring mirrors the main interface's: the address as a /32, a scope-link route to the gateway,
//! the default route via it and a permanent neighbour at the host end's MAC; on the node a /32
//! route to the host end (named `v4` + the same 11 hex digits as the main host end). No policy
//! rule: the traffic leaves through the main table, the primary ENI, where the SNAT is valid.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use super::netlink::{Link, Netlink, Route, TABLE_MAIN};
use super::netns::NetNs;
use super::pod::PodError;

/// The range egress addresses come from.
pub const EGRESS_NET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(169, 254, 172, 0), 22) {
    Ok(n) => n,
    Err(_) => panic!("a valid network"),
};
/// The pods' egress gateway: link-local, answered by the host end's MAC.
pub const EGRESS_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 172, 1);
/// The egress interface's name in the pod.
pub const EGRESS_IFNAME: &str = "v4if0";
/// The largest /80 index with an egress address (169.254.175.254).
pub const MAX_INDEX: u64 = 1_021;

/// The egress address of the pod whose IPv6 address is `addr6`, or `None` when its index in the
/// /80 is 0 or above [`MAX_INDEX`].
pub fn egress_address(addr6: Ipv6Addr) -> Option<Ipv4Addr> {
    let index = (u128::from(addr6) & ((1u128 << 48) - 1)) as u64;
    (1..=MAX_INDEX)
        .contains(&index)
        .then(|| Ipv4Addr::from(u32::from(EGRESS_GATEWAY) + index as u32))
}

/// The egress interface's host end: `v4` and the last 11 characters (the hash) of the main
/// host end's name.
pub fn host_end_name(main_host_veth: &str) -> String {
    let cut = main_host_veth
        .char_indices()
        .rev()
        .nth(10)
        .map_or(0, |(i, _)| i);
    format!("v4{}", &main_host_veth[cut..])
}

fn host32(a: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::new(a, 32).expect("32 is a valid length"))
}

fn find(nl: &mut Netlink, name: &str, what: &str) -> Result<Link, PodError> {
    nl.link_by_name(name)?
        .ok_or_else(|| PodError::Missing(format!("{what} {name} is not there")))
}

/// Makes the egress interface in `pod_nl`'s namespace and its host end `host_end` in
/// `node_nl`'s (node: the namespace `node` is). Idempotent: earlier ones are replaced.
pub(super) fn setup(
    pod_nl: &mut Netlink,
    node_nl: &mut Netlink,
    node: &NetNs,
    host_end: &str,
    address: Ipv4Addr,
    mtu: u32,
) -> Result<(), PodError> {
    if let Some(old) = pod_nl.link_by_name(EGRESS_IFNAME)? {
        pod_nl.del_link(old.index)?;
    }
    if let Some(old) = node_nl.link_by_name(host_end)? {
        node_nl.del_link(old.index)?;
    }
    pod_nl.add_veth(
        EGRESS_IFNAME,
        None,
        host_end,
        None,
        Some(node.fd()),
        Some(mtu),
    )?;
    let host = find(node_nl, host_end, "the egress host end")?;
    let inner = find(pod_nl, EGRESS_IFNAME, "the pod's egress interface")?;
    pod_nl.set_up(inner.index, true)?;
    node_nl.set_up(host.index, true)?;
    pod_nl.add_address(inner.index, host32(address), false)?;
    pod_nl.add_route(
        &Route::to(host32(EGRESS_GATEWAY), TABLE_MAIN)
            .dev(inner.index)
            .link_scope(),
        true,
    )?;
    pod_nl.add_route(
        &Route::to(IpNet::V4(Ipv4Net::default()), TABLE_MAIN)
            .via(std::net::IpAddr::V4(EGRESS_GATEWAY))
            .dev(inner.index),
        true,
    )?;
    pod_nl.set_neighbour(inner.index, std::net::IpAddr::V4(EGRESS_GATEWAY), host.mac)?;
    node_nl.add_route(
        &Route::to(host32(address), TABLE_MAIN)
            .dev(host.index)
            .link_scope(),
        true,
    )?;
    Ok(())
}

/// Checks the egress interface ADD made: its address, default route and the node's route.
pub(super) fn check(
    pod_nl: &mut Netlink,
    node_nl: &mut Netlink,
    host_end: &str,
    address: Ipv4Addr,
) -> Result<(), PodError> {
    let inner = find(pod_nl, EGRESS_IFNAME, "the pod's egress interface")?;
    let host = find(node_nl, host_end, "the egress host end")?;
    if !pod_nl
        .addresses()?
        .iter()
        .any(|a| a.index == inner.index && a.net == host32(address))
    {
        return Err(PodError::Missing(format!(
            "{EGRESS_IFNAME} has no {address}/32"
        )));
    }
    if !pod_nl.routes(false)?.iter().any(|r| {
        r.table == TABLE_MAIN
            && r.dst == IpNet::V4(Ipv4Net::default())
            && r.oif == Some(inner.index)
    }) {
        return Err(PodError::Missing(format!(
            "the pod has no default route via {EGRESS_GATEWAY} dev {EGRESS_IFNAME}"
        )));
    }
    if !node_nl
        .routes(false)?
        .iter()
        .any(|r| r.table == TABLE_MAIN && r.dst == host32(address) && r.oif == Some(host.index))
    {
        return Err(PodError::Missing(format!(
            "the node has no route {address}/32 dev {host_end}"
        )));
    }
    Ok(())
}

/// Removes the pod's egress interface (its host end and route go with it), when the pod's
/// namespace and the interface are still there. Idempotent.
pub(super) fn remove(netns: Option<&Path>) -> Result<(), PodError> {
    let Some(path) = netns else { return Ok(()) };
    let Ok(pod) = NetNs::open(path) else {
        return Ok(());
    };
    let mut pod_nl = {
        let _inside = pod.enter()?;
        Netlink::open()?
    };
    if let Some(l) = pod_nl.link_by_name(EGRESS_IFNAME)? {
        match pod_nl.del_link(l.index) {
            Err(e) if !e.missing() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// The nft chain that SNATs egress traffic to the node's primary address: always, whatever
/// `AWS_VPC_K8S_CNI_EXTERNALSNAT` says, since these addresses mean nothing off the node.
pub fn snat_chain(primary_ip: Ipv4Addr) -> String {
    format!(
        "  chain egress_v4 {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr {EGRESS_NET} fib daddr type != local snat to {primary_ip}\n  }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_addresses_follow_the_slash80_index() {
        let p: Ipv6Addr = "2600:1f14:0:1:5:0:0:0".parse().unwrap();
        let at = |i: u64| Ipv6Addr::from(u128::from(p) + u128::from(i));
        assert_eq!(egress_address(at(0)), None, "index 0 is never handed out");
        assert_eq!(egress_address(at(1)), Some(Ipv4Addr::new(169, 254, 172, 2)));
        assert_eq!(
            egress_address(at(MAX_INDEX)),
            Some(Ipv4Addr::new(169, 254, 175, 254))
        );
        assert_eq!(egress_address(at(MAX_INDEX + 1)), None, "the broadcast");
        assert_eq!(egress_address(at(1 << 40)), None);
        for i in 1..=MAX_INDEX {
            let a = egress_address(at(i)).unwrap();
            assert!(EGRESS_NET.contains(&a) && a != EGRESS_GATEWAY);
        }
    }

    #[test]
    fn host_end_names_share_the_main_ends_digits() {
        assert_eq!(host_end_name("eni0123456789a"), "v40123456789a");
        assert_eq!(host_end_name("x0123456789a"), "v40123456789a");
        assert_eq!(host_end_name("short"), "v4short");
    }
}
