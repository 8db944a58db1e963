//! The nftables table prefixd owns on the node (`table ip prefixd`): SNAT of pod traffic that
//! leaves the VPC, and the connection mark that sends it — and NodePort replies — out through the
//! primary ENI, where that SNAT is valid. Rendered from the settings (pure), applied as one
//! transaction that replaces the whole table, read back to notice when someone changed it.
//!
//! * `egress_snat` (nat, postrouting, srcnat): a packet leaving the primary link for a destination
//!   outside the VPC's CIDRs and `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`, and not local, is SNATed
//!   to the primary address (`fully-random` by default). None with
//!   `AWS_VPC_K8S_CNI_EXTERNALSNAT=true`.
//! * `nodeport_mark` (filter, prerouting, mangle −150, before kube-proxy's DNAT): a new connection
//!   arriving on the primary link for a local address is marked (NodePort), when
//!   `AWS_VPC_CNI_NODE_PORT_SUPPORT` is on.
//! * `pod_mark` (filter, prerouting, −90: **after** kube-proxy's DNAT at −100, so that a
//!   connection to a Service is judged by the endpoint it was translated to — the VPC CNI's
//!   #3563 with nftables kube-proxy): a new connection from a pod to outside the VPC is marked;
//!   then every packet of a marked connection carries the mark, which rule 1024 sends through
//!   the main table (the primary ENI).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::config::{HostConfig, RandomizeSnat};

/// The table's name.
pub const TABLE: &str = "prefixd";

/// What the table is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatInputs<'a> {
    /// The settings.
    pub cfg: &'a HostConfig,
    /// The primary ENI's link.
    pub primary_link: &'a str,
    /// The primary ENI's address.
    pub primary_ip: Ipv4Addr,
    /// The VPC's CIDRs.
    pub vpc_cidrs: &'a [Ipv4Net],
}

/// The nft script that replaces the table.
pub fn render(i: &SnatInputs) -> String {
    let cfg = i.cfg;
    let mark = format!("0x{:x}", cfg.connmark);
    let mut keep: Vec<String> = i
        .vpc_cidrs
        .iter()
        .chain(cfg.exclude_snat.iter())
        .map(|c| c.trunc().to_string())
        .collect();
    keep.sort();
    keep.dedup();
    let mut s = format!("add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    s.push_str("  set vpc {\n    type ipv4_addr\n    flags interval\n    auto-merge\n");
    if !keep.is_empty() {
        s.push_str(&format!("    elements = {{ {} }}\n", keep.join(", ")));
    }
    s.push_str("  }\n");
    if !cfg.external_snat {
        let random = match cfg.randomize_snat {
            RandomizeSnat::Prng => " fully-random",
            RandomizeSnat::Hashrandom => " random",
            RandomizeSnat::None => "",
        };
        s.push_str(&format!(
            "  chain egress_snat {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"{link}\" ip daddr != @vpc fib daddr type != local snat to {ip}{random}\n  }}\n",
            link = i.primary_link,
            ip = i.primary_ip,
        ));
    }
    if cfg.v4_egress_active() {
        s.push_str(&super::egress::snat_chain(i.primary_ip));
    }
    if cfg.node_port_support {
        s.push_str(&format!(
            "  chain nodeport_mark {{\n    type filter hook prerouting priority mangle; policy accept;\n    \
             iifname \"{link}\" fib daddr type local ct state new ct mark set ct mark | {mark}\n  }}\n",
            link = i.primary_link,
        ));
    }
    s.push_str(
        "  chain pod_mark {\n    type filter hook prerouting priority -90; policy accept;\n",
    );
    if !cfg.external_snat {
        s.push_str(&format!(
            "    iifname \"{prefix}*\" ct state new ip daddr != @vpc ct mark set ct mark | {mark}\n",
            prefix = cfg.veth_prefix,
        ));
    }
    s.push_str(&format!(
        "    ct mark & {mark} != 0 meta mark set meta mark | {mark}\n  }}\n}}\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::Values;

    fn cfg(pairs: &[(&str, &str)]) -> HostConfig {
        HostConfig::from_lookup(
            &Values::from_pairs(
                pairs.iter().copied(),
                &[super::super::config::SETTINGS],
                "agent",
            )
            .unwrap(),
        )
        .unwrap()
    }

    fn inputs(c: &HostConfig) -> String {
        render(&SnatInputs {
            cfg: c,
            primary_link: "eth0",
            primary_ip: "10.0.0.4".parse().unwrap(),
            vpc_cidrs: &["10.0.0.0/16".parse().unwrap()],
        })
    }

    #[test]
    fn the_default_snats_marks_after_dnat_and_supports_node_ports() {
        let s = inputs(&cfg(&[]));
        assert!(s.contains("elements = { 10.0.0.0/16 }"), "{s}");
        assert!(s.contains("snat to 10.0.0.4 fully-random"), "{s}");
        assert!(s.contains("oifname \"eth0\" ip daddr != @vpc"), "{s}");
        assert!(
            s.contains("priority -90"),
            "the mark comes after kube-proxy's DNAT: {s}"
        );
        assert!(s.contains("iifname \"eni*\" ct state new"), "{s}");
        assert!(s.contains("fib daddr type local ct state new ct mark set ct mark | 0x80"));
        assert!(s.starts_with("add table ip prefixd\ndelete table ip prefixd\n"));
    }

    #[test]
    fn settings_change_the_table() {
        let s = inputs(&cfg(&[
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
            ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
        ]));
        assert!(!s.contains("snat to"), "{s}");
        assert!(!s.contains("chain nodeport"), "{s}");
        assert!(!s.contains("ct state new ip daddr"), "{s}");
        let s = inputs(&cfg(&[
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "192.168.0.0/16"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0x4000"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "pod"),
        ]));
        assert!(s.contains("snat to 10.0.0.4 random"), "{s}");
        assert!(s.contains("10.0.0.0/16, 192.168.0.0/16"), "{s}");
        assert!(s.contains("| 0x4000"), "{s}");
        assert!(s.contains("iifname \"pod*\""), "{s}");
    }
}
