//! The node's data plane, through the kernel's own interfaces: netlink for links, addresses,
//! routes, rules and neighbours ([`netlink`]), network namespaces ([`netns`]), nftables
//! ([`nft`]) and sysctls ([`sysctl`]); on top of them what prefixd makes of a node: a pod's veth,
//! routes and rules ([`pod`], the CNI plugin's; [`egress`] for IPv6-only pods' IPv4), the ENIs' links, tables and rules and their
//! continuous repair ([`node`], the agent's), the SNAT table ([`snat`]) and the settings of all
//! of it ([`config`]). Synchronous and runtime-free, so that the CNI plugin and the agent (from
//! blocking tasks) share it; the mock's emulated VPC builds its namespaces with it too.

pub mod config;
pub mod egress;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod node;
pub mod pod;
pub mod snat;
pub mod sysctl;
