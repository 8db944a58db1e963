//! prefixd: a Kubernetes node agent for AWS VPC networking with IPv4 prefix delegation.
//!
//! The domains, each in its own module, imports running downwards only:
//! * [`core`] — pure: ids, the datastore and its checkpoint, the planner, the resync diff,
//!   settings, backoff. No tokio, no AWS crate.
//! * [`ec2`] — the EC2 seam: our trait and types, error classes, actions, the limiter, the
//!   aws-sdk-ec2 adapter.
//! * [`imds`] — who the node is, from IMDSv2.
//! * [`hostnet`] — the kernel: netlink, network namespaces, nftables, sysctls (synchronous).
//! * [`ipc`] — the agent's socket protocol and its blocking client.
//! * [`agent`] — the node agent, assembled by its builder.
//! * [`cni`] — the `prefixd-cni` plugin (core and ipc only).
//! * [`metrics`] — the agent's Prometheus metrics.
//! * [`report`] — the operators' reports, `prefixd capacity` and `prefixd ranges` (read-only).
//! * [`cli`] — the `prefixd` subcommands, thin.
//! * The test bench (cargo feature `testbench`, not in the node image): [`mock`] (the mock
//!   EC2), [`sim`] (the fleet simulator), [`demo`].
#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod cni;
pub mod core;
#[cfg(feature = "testbench")]
pub mod demo;
pub mod ec2;
pub mod hostnet;
pub mod imds;
pub mod ipc;
pub mod metrics;
#[cfg(feature = "testbench")]
pub mod mock;
pub mod report;
#[cfg(feature = "testbench")]
pub mod sim;
