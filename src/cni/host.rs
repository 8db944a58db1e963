//! What the plugin reaches outside its process: the agent, over its socket, and the kernel, for
//! the pod's veth, routes and rules. A trait, so that unit tests and the fuzz test run every
//! path of the plugin's logic with neither.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::core::PodKey;
use crate::hostnet::netlink::Netlink;
use crate::hostnet::pod::{self, Detached, PodError, PodSpec, Wired};
use crate::ipc::{self, ClientError, Op, Reply, pending};

/// The agent and the kernel.
pub trait Host {
    /// One request to the agent.
    fn agent(&self, socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError>;
    /// Wires a pod ([`pod::setup`]).
    fn wire(&self, spec: &PodSpec) -> Result<Wired, PodError>;
    /// Cuts a pod off the node ([`pod::detach`]): rules and route; the veth stays.
    fn detach(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_veth: &str,
        hints: &[IpAddr],
    ) -> Result<Detached, PodError>;
    /// Deletes a host end ([`pod::unlink`]).
    fn unlink(&self, name: &str, index: u32) -> Result<bool, PodError>;
    /// Checks a pod's wiring ([`pod::check`]).
    fn check(&self, spec: &PodSpec) -> Result<(), PodError>;
    /// Removes the host ends named with `prefix` whose address is not in `keep`, and their
    /// rules; returns their names.
    fn collect(&self, prefix: &str, keep: &[IpAddr]) -> Result<Vec<String>, PodError>;
    /// Records a release for the agent to pick up ([`pending::record`]).
    fn defer_release(&self, dir: &Path, key: &PodKey) -> std::io::Result<()> {
        pending::record(dir, key).map(|_| ())
    }
}

/// The real agent socket and the real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Host for System {
    fn agent(&self, socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
        ipc::call(socket, op, timeout)
    }

    fn wire(&self, spec: &PodSpec) -> Result<Wired, PodError> {
        pod::setup(spec)
    }

    fn detach(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_veth: &str,
        hints: &[IpAddr],
    ) -> Result<Detached, PodError> {
        pod::detach(netns, ifname, host_veth, hints)
    }

    fn unlink(&self, name: &str, index: u32) -> Result<bool, PodError> {
        pod::unlink(&mut Netlink::open()?, name, index)
    }

    fn check(&self, spec: &PodSpec) -> Result<(), PodError> {
        pod::check(spec)
    }

    fn collect(&self, prefix: &str, keep: &[IpAddr]) -> Result<Vec<String>, PodError> {
        let mut nl = Netlink::open()?;
        let mut removed = Vec::new();
        for (link, addrs) in pod::leftovers(&mut nl, prefix, keep)? {
            match nl.del_link(link.index) {
                Err(e) if !e.missing() => return Err(e.into()),
                _ => {}
            }
            for a in addrs {
                pod::remove_rules(&mut nl, a)?;
            }
            removed.push(link.name);
        }
        Ok(removed)
    }
}

/// An agent answered by a function, a kernel that refuses everything and no disk: for tests
/// of the plugin's logic.
pub struct AgentOnly<F>(pub F);

impl<F> Host for AgentOnly<F>
where
    F: Fn(&Path, Op, Duration) -> Result<Reply, ClientError>,
{
    fn agent(&self, socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
        (self.0)(socket, op, timeout)
    }

    fn wire(&self, _: &PodSpec) -> Result<Wired, PodError> {
        Err(PodError::Missing("no kernel in this test".into()))
    }

    fn detach(
        &self,
        _: Option<&Path>,
        _: &str,
        _: &str,
        hints: &[IpAddr],
    ) -> Result<Detached, PodError> {
        Ok(Detached {
            addresses: hints.to_vec(),
            host_end: None,
        })
    }

    fn unlink(&self, _: &str, _: u32) -> Result<bool, PodError> {
        Ok(false)
    }

    fn check(&self, _: &PodSpec) -> Result<(), PodError> {
        Err(PodError::Missing("no kernel in this test".into()))
    }

    fn collect(&self, _: &str, _: &[IpAddr]) -> Result<Vec<String>, PodError> {
        Ok(Vec::new())
    }

    /// Nothing is written: tests of the logic leave no files.
    fn defer_release(&self, _: &Path, _: &PodKey) -> std::io::Result<()> {
        Ok(())
    }
}
