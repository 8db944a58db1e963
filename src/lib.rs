//! prefixd: a Kubernetes node agent for AWS VPC networking with IPv4 prefix delegation.
//!
//! See `core` for the pure pool logic (datastore, checkpoint, planner), `cli` for the
//! subcommands behind the `prefixd` binary and `cni` for the `prefixd-cni` plugin.
#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod cni;
pub mod core;
pub mod demo;
pub mod ec2;
pub mod ipc;
pub mod metrics;
pub mod mock;
pub mod sim;
