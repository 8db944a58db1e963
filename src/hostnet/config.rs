//! The node data plane's settings, with the VPC CNI's names and defaults so that an operator's
//! aws-node settings carry over: MTUs, the veth prefix, SNAT, the connection mark, NodePort
//! support, external service ranges.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::core::settings::{ConfigError, Setting, Values};

/// ENABLE_HOST_NETWORKING.
pub const ENABLE_HOST_NETWORKING: Setting = Setting::new(
    "ENABLE_HOST_NETWORKING",
    "true",
    "program the node: ENI links, route tables, policy rules, SNAT (false: addresses only)",
);
/// AWS_VPC_ENI_MTU.
pub const AWS_VPC_ENI_MTU: Setting =
    Setting::new("AWS_VPC_ENI_MTU", "9001", "MTU of the ENIs' links");
/// POD_MTU.
pub const POD_MTU: Setting =
    Setting::optional("POD_MTU", "AWS_VPC_ENI_MTU", "MTU of the pods' interfaces");
/// AWS_VPC_K8S_CNI_VETHPREFIX.
pub const AWS_VPC_K8S_CNI_VETHPREFIX: Setting = Setting::new(
    "AWS_VPC_K8S_CNI_VETHPREFIX",
    "eni",
    "host-side veth name prefix (Calico finds `eni` + hash)",
);
/// AWS_VPC_K8S_CNI_EXTERNALSNAT.
pub const AWS_VPC_K8S_CNI_EXTERNALSNAT: Setting = Setting::new(
    "AWS_VPC_K8S_CNI_EXTERNALSNAT",
    "false",
    "true: no SNAT on the node (a NAT gateway does it)",
);
/// AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS.
pub const AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: Setting = Setting::optional(
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
    "none",
    "destinations never SNATed, comma-separated (the VPC's CIDRs never are)",
);
/// AWS_VPC_K8S_CNI_RANDOMIZESNAT.
pub const AWS_VPC_K8S_CNI_RANDOMIZESNAT: Setting = Setting::new(
    "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
    "prng",
    "SNAT port choice: prng (fully random), hashrandom, none",
);
/// AWS_VPC_K8S_CNI_CONNMARK.
pub const AWS_VPC_K8S_CNI_CONNMARK: Setting = Setting::new(
    "AWS_VPC_K8S_CNI_CONNMARK",
    "0x80",
    "connection mark of traffic that must leave through the primary ENI",
);
/// AWS_VPC_CNI_NODE_PORT_SUPPORT.
pub const AWS_VPC_CNI_NODE_PORT_SUPPORT: Setting = Setting::new(
    "AWS_VPC_CNI_NODE_PORT_SUPPORT",
    "true",
    "NodePort traffic to pods on secondary ENIs: mark it, loose rp_filter on the primary",
);
/// AWS_EXTERNAL_SERVICE_CIDRS.
pub const AWS_EXTERNAL_SERVICE_CIDRS: Setting = Setting::optional(
    "AWS_EXTERNAL_SERVICE_CIDRS",
    "none",
    "ranges pods reach through the main table (rule 1535), comma-separated",
);

/// ENABLE_V4_EGRESS.
pub const ENABLE_V4_EGRESS: Setting = Setting::new(
    "ENABLE_V4_EGRESS",
    "true",
    "IPv6-only pods reach IPv4 through a second interface (169.254.172.0/22), SNATed to the node's address",
);

/// The data plane's settings.
pub const SETTINGS: &[Setting] = &[
    ENABLE_V4_EGRESS,
    ENABLE_HOST_NETWORKING,
    AWS_VPC_ENI_MTU,
    POD_MTU,
    AWS_VPC_K8S_CNI_VETHPREFIX,
    AWS_VPC_K8S_CNI_EXTERNALSNAT,
    AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS,
    AWS_VPC_K8S_CNI_RANDOMIZESNAT,
    AWS_VPC_K8S_CNI_CONNMARK,
    AWS_VPC_CNI_NODE_PORT_SUPPORT,
    AWS_EXTERNAL_SERVICE_CIDRS,
];

/// How SNAT picks source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RandomizeSnat {
    /// `fully-random` (the default: no port collisions under load, the VPC CNI's #1893).
    Prng,
    /// `random`: a hash of the flow.
    Hashrandom,
    /// The kernel's default (sequential).
    None,
}

/// The node data plane's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostConfig {
    /// ENABLE_HOST_NETWORKING.
    pub enabled: bool,
    /// AWS_VPC_ENI_MTU.
    pub eni_mtu: u32,
    /// POD_MTU (default: the ENI MTU).
    pub pod_mtu: u32,
    /// AWS_VPC_K8S_CNI_VETHPREFIX.
    pub veth_prefix: String,
    /// AWS_VPC_K8S_CNI_EXTERNALSNAT.
    pub external_snat: bool,
    /// AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS.
    pub exclude_snat: Vec<Ipv4Net>,
    /// AWS_VPC_K8S_CNI_RANDOMIZESNAT.
    pub randomize_snat: RandomizeSnat,
    /// AWS_VPC_K8S_CNI_CONNMARK.
    pub connmark: u32,
    /// AWS_VPC_CNI_NODE_PORT_SUPPORT.
    pub node_port_support: bool,
    /// AWS_EXTERNAL_SERVICE_CIDRS.
    pub external_service_cidrs: Vec<Ipv4Net>,
    /// ENABLE_IPv4 and ENABLE_IPv6 (the agent's table): with IPv6 the node forwards IPv6.
    pub families: crate::core::config::Families,
    /// ENABLE_V4_EGRESS, in effect for IPv6-only pods.
    pub v4_egress: bool,
}

fn mtu(v: &Values, s: &Setting) -> Result<u32, ConfigError> {
    let n = v.count(s, 9_001)?;
    if n < 576 {
        return Err(ConfigError::new(
            s.var,
            v.value(s).unwrap_or_default(),
            "an MTU from 576 to 9001",
        ));
    }
    Ok(n)
}

impl HostConfig {
    /// Reads the data plane's settings from `v`.
    pub fn from_lookup(v: &Values) -> Result<Self, ConfigError> {
        let eni_mtu = mtu(v, &AWS_VPC_ENI_MTU)?;
        let pod_mtu = match v.value(&POD_MTU) {
            None | Some("") => eni_mtu,
            Some(_) => mtu(v, &POD_MTU)?,
        };
        let prefix = v.value(&AWS_VPC_K8S_CNI_VETHPREFIX).unwrap_or_default();
        // Linux names are 15 characters; the name is the prefix and 11 hex digits.
        if prefix.is_empty()
            || prefix.len() > 4
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || matches!(prefix, "eth" | "lo" | "vlan")
        {
            return Err(ConfigError::new(
                AWS_VPC_K8S_CNI_VETHPREFIX.var,
                prefix,
                "1 to 4 letters or digits, not eth, lo or vlan (the name is the prefix and 11 hex digits)",
            ));
        }
        let randomize = match v
            .value(&AWS_VPC_K8S_CNI_RANDOMIZESNAT)
            .unwrap_or_default()
            .trim()
        {
            "prng" => RandomizeSnat::Prng,
            "hashrandom" => RandomizeSnat::Hashrandom,
            "none" => RandomizeSnat::None,
            other => {
                return Err(ConfigError::new(
                    AWS_VPC_K8S_CNI_RANDOMIZESNAT.var,
                    other,
                    "prng, hashrandom or none",
                ));
            }
        };
        let mark_text = v
            .value(&AWS_VPC_K8S_CNI_CONNMARK)
            .unwrap_or_default()
            .trim()
            .to_owned();
        let connmark = match mark_text.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => mark_text.parse().ok(),
        }
        .filter(|m| *m != 0)
        .ok_or_else(|| {
            ConfigError::new(
                AWS_VPC_K8S_CNI_CONNMARK.var,
                &mark_text,
                "a non-zero mark, e.g. 0x80 or 128",
            )
        })?;
        let cidrs = |s: &Setting| v.list::<Ipv4Net>(s, "IPv4 CIDRs like 10.1.0.0/16");
        Ok(Self {
            enabled: v.bool(&ENABLE_HOST_NETWORKING)?,
            eni_mtu,
            pod_mtu,
            veth_prefix: prefix.to_owned(),
            external_snat: v.bool(&AWS_VPC_K8S_CNI_EXTERNALSNAT)?,
            exclude_snat: cidrs(&AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS)?,
            randomize_snat: randomize,
            connmark,
            node_port_support: v.bool(&AWS_VPC_CNI_NODE_PORT_SUPPORT)?,
            external_service_cidrs: cidrs(&AWS_EXTERNAL_SERVICE_CIDRS)?,
            families: crate::core::config::Families::from_lookup(v)?,
            v4_egress: v.bool(&ENABLE_V4_EGRESS)?,
        })
    }
}

impl HostConfig {
    /// Whether pods get an IPv4 egress interface: IPv6-only pods, ENABLE_V4_EGRESS, and the
    /// node's network programmed by prefixd.
    pub fn v4_egress_active(&self) -> bool {
        self.enabled && self.v4_egress && self.families == crate::core::config::Families::V6
    }
}

/// The routing table of an ENI: the primary's is main; device index `d` on network card 0 uses
/// `d + 1`; on card `k > 0`, `10000 + d + 100 k` (the VPC CNI's numbering, clear of the kernel's
/// 253–255).
pub fn table_of(primary: bool, device_index: u32, card: u32) -> u32 {
    if primary {
        crate::hostnet::netlink::TABLE_MAIN
    } else if card == 0 {
        device_index + 1
    } else {
        10_000 + device_index + 100 * card
    }
}

/// The gateway of a subnet: its `.1`.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<HostConfig, ConfigError> {
        HostConfig::from_lookup(&Values::from_pairs(
            pairs.iter().copied(),
            &[SETTINGS],
            "agent",
        )?)
    }

    #[test]
    fn defaults_are_the_vpc_cnis() {
        let c = cfg(&[]).unwrap();
        assert!(c.enabled && !c.external_snat && c.node_port_support);
        assert_eq!((c.eni_mtu, c.pod_mtu), (9001, 9001));
        assert_eq!(c.veth_prefix, "eni");
        assert_eq!(c.connmark, 0x80);
        assert_eq!(c.randomize_snat, RandomizeSnat::Prng);
        let c = cfg(&[
            ("POD_MTU", "1500"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "256"),
            (
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                "10.1.0.0/16, 192.168.0.0/24",
            ),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "none"),
        ])
        .unwrap();
        assert_eq!(c.pod_mtu, 1500);
        assert_eq!(c.connmark, 256);
        assert_eq!(c.exclude_snat.len(), 2);
        for (var, val) in [
            ("AWS_VPC_ENI_MTU", "100"),
            ("AWS_VPC_ENI_MTU", "9500"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "toolong"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "eth"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "maybe"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.1.0.0/33"),
            ("ENABLE_HOST_NETWORKING", "yes"),
        ] {
            assert_eq!(cfg(&[(var, val)]).unwrap_err().var, var, "{var}={val}");
        }
    }

    #[test]
    fn tables_follow_the_vpc_cni() {
        assert_eq!(table_of(true, 0, 0), 254);
        assert_eq!(table_of(false, 1, 0), 2);
        assert_eq!(table_of(false, 2, 1), 10_102);
        assert_eq!(
            gateway_of("10.0.16.0/20".parse().unwrap()),
            "10.0.16.1".parse::<Ipv4Addr>().unwrap()
        );
    }
}
