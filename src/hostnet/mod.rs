//! The node's data plane, through the kernel's own interfaces: netlink for links, addresses,
//! routes, rules and neighbours ([`netlink`]), network namespaces ([`netns`]), nftables
//! ([`nft`]) and sysctls ([`sysctl`]). Synchronous and runtime-free, so that the CNI plugin and
//! the agent (from blocking tasks) share it; the mock's emulated VPC builds its namespaces with
//! it too.

pub mod netlink;
pub mod netns;
pub mod nft;
pub mod sysctl;
