//! What the agent reports about itself: readiness and its reason, the mode it is in, the last
//! plan. Written by the loop, read by the socket server, /readyz and `prefixd status`.

use std::sync::Mutex;

use serde::Serialize;

use crate::core::Plan;

/// A snapshot of the agent's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusView {
    /// The first resync with EC2 succeeded.
    pub resynced: bool,
    /// The plugin socket is serving.
    pub socket_up: bool,
    /// Growing with /32 secondary addresses because no /28 could be had.
    pub fallback_active: bool,
    /// SECONDARY_IP_FALLBACK.
    pub fallback_allowed: bool,
    /// The EC2 endpoint accepted an Assign for prefixes and assigned none.
    pub prefixes_unsupported: bool,
    /// `prefix` or `secondary_ip`: what the planner uses now.
    pub mode: String,
    /// Demand the instance cannot meet (max ENIs and slots in use).
    pub at_capacity: bool,
    /// The last plan the loop made.
    pub last_plan: Option<Plan>,
    /// The last EC2 error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Resyncs done.
    pub resyncs: u64,
    /// Why the node's data plane could not be programmed, while it cannot (ADDs are refused:
    /// a pod would get an address it cannot route).
    pub host_error: Option<String>,
    /// Attached ENIs whose link has not appeared after the wait, by id and MAC.
    pub missing_links: Vec<String>,
    /// Why the checkpoint cannot be written, while it cannot (every change would be undone).
    pub checkpoint_error: Option<String>,
    /// The node's IPv6 /80 (ENABLE_IPv6), once the pool holds it.
    pub ipv6_prefix: Option<String>,
    /// The EC2 endpoint accepted AssignIpv6Addresses with Ipv6PrefixCount=1 and assigned none
    /// (LocalStack): IPv6 pods cannot be served.
    pub ipv6_prefixes_unsupported: bool,
    /// Why the plugin socket does not accept connections (gone, or out of file descriptors).
    pub socket_error: Option<String>,
    /// The socket this agent serves.
    #[serde(skip)]
    pub socket: Option<super::server::SocketId>,
}

/// Shared status.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusView>,
}

impl Status {
    /// Changes it.
    pub fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut self.inner.lock().expect("status lock"));
    }

    /// A copy.
    pub fn view(&self) -> StatusView {
        self.inner.lock().expect("status lock").clone()
    }

    /// Why the agent cannot hand out addresses, or `None` when it can.
    pub fn not_ready(&self) -> Option<String> {
        let s = self.inner.lock().expect("status lock");
        if !s.resynced {
            return Some("waiting for the first resync with EC2".into());
        }
        if let Some(e) = &s.checkpoint_error {
            return Some(format!(
                "the checkpoint cannot be written ({e}); no change can be made durable"
            ));
        }
        if let Some(e) = &s.socket_error {
            return Some(format!(
                "the plugin socket does not accept connections ({e})"
            ));
        }
        if let Some(e) = &s.host_error {
            return Some(format!(
                "the node's data plane could not be programmed ({e}); retrying"
            ));
        }
        if s.prefixes_unsupported && !s.fallback_allowed {
            return Some(
                "the EC2 endpoint cannot delegate prefixes (an Assign succeeded and assigned none); \
                 set SECONDARY_IP_FALLBACK=true or ENABLE_PREFIX_DELEGATION=false"
                    .into(),
            );
        }
        if s.ipv6_prefixes_unsupported {
            return Some(
                "the EC2 endpoint cannot delegate an IPv6 /80 (AssignIpv6Addresses with \
                 Ipv6PrefixCount=1 succeeded and assigned none, as LocalStack does); IPv6 pods \
                 need an endpoint that delegates IPv6 prefixes, or set ENABLE_IPv6=false"
                    .into(),
            );
        }
        None
    }

    /// Ready for /readyz: resynced, socket up, a way to get addresses, and every attached
    /// ENI's link found (a late one is named with its MAC; the other ENIs still serve).
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(why) = self.not_ready() {
            return Err(why);
        }
        let s = self.inner.lock().expect("status lock");
        if !s.socket_up {
            return Err("the plugin socket is not up yet".into());
        }
        if let Some(id) = &s.socket
            && !id.is_at(&id.path)
        {
            return Err(format!(
                "the plugin socket {} was removed or replaced: no plugin can reach this agent; \
                 restart it",
                id.path.display()
            ));
        }
        if !s.missing_links.is_empty() {
            return Err(format!(
                "{}: its addresses are not handed out",
                s.missing_links.join("; ")
            ));
        }
        Ok(())
    }
}
