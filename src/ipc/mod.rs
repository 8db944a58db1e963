//! The agent socket protocol, shared by the agent and its clients (the CNI plugin, the demo):
//! one JSON request and one JSON reply per Unix-socket connection, versioned, size-limited.
//!
//! The client here is blocking and needs no async runtime, so that `prefixd-cni` starts fast.
//! [`pending`] holds the releases a DEL could not deliver.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::PodKey;

pub mod pending;

/// Protocol version; a request with another is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request or reply, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// An address for `key` (idempotent), waiting up to `timeout_ms` for the pool to grow.
    Add {
        /// The CNI attachment.
        key: PodKey,
        /// K8S_POD_NAMESPACE.
        #[serde(default)]
        pod_namespace: String,
        /// K8S_POD_NAME.
        #[serde(default)]
        pod_name: String,
        /// How long to wait for an address.
        timeout_ms: u64,
    },
    /// Release `key`'s address (unknown keys succeed with `released: 0`).
    Del {
        /// The CNI attachment.
        key: PodKey,
        /// The pod's host-side veth, for the agent to delete after it answers (deleting a veth
        /// waits for the kernel's RCU grace period, tens of milliseconds the runtime need not
        /// wait). An agent that takes it says so with `unlinking`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unlink: Option<HostEnd>,
    },
    /// The address `key` holds, or a not-found error.
    Check {
        /// The CNI attachment.
        key: PodKey,
    },
    /// Release every allocation on `network` whose key is not in `keep`.
    Gc {
        /// The CNI network name.
        network: String,
        /// Attachments to keep.
        keep: Vec<PodKey>,
    },
    /// Whether the agent can hand out addresses.
    Status,
}

/// A pod's host-side veth, by name and index: a link of that name with another index is a
/// newer pod's and is left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEnd {
    /// Its name.
    pub name: String,
    /// Its interface index.
    pub index: u32,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such allocation (CHECK).
    NotFound,
    /// No address within the timeout: try again later.
    Timeout,
    /// The agent is not ready (no resync yet, or no way to get addresses).
    NotReady,
    /// The request was malformed or of another version.
    BadRequest,
    /// The agent failed (e.g. its checkpoint could not be written).
    Internal,
}

/// A failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// Kind.
    pub kind: ErrorKind,
    /// Message for the log.
    pub message: String,
}

/// How the plugin wires a pod's address (in ADD, CHECK and GC answers): the routing table of
/// the ENI that holds it (254, main, for the primary ENI), the pod's MTU and the host-side veth
/// prefix — the agent's settings, so that a node's configuration lives in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    /// The ENI's routing table.
    pub table: u32,
    /// POD_MTU.
    pub mtu: u32,
    /// AWS_VPC_K8S_CNI_VETHPREFIX.
    pub veth_prefix: String,
}

/// A reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The address (ADD, CHECK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Addresses released (DEL, GC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<u32>,
    /// Free addresses now (STATUS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<u32>,
    /// How to wire the address (ADD, CHECK; GC for the veth prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_net: Option<PodNet>,
    /// Every address still allocated after a GC: host ends of others are leftovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Vec<Ipv4Addr>>,
    /// DEL: the agent deletes the host end it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlinking: Option<bool>,
    /// The failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
}

impl Reply {
    /// A failure reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            error: Some(ReplyError {
                kind,
                message: message.into(),
            }),
            ..Self::default()
        }
    }
}

/// Why a call to the agent failed before it answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the prefixd agent at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed (including the timeout).
    #[error("talking to the prefixd agent failed: {0}")]
    Io(#[source] std::io::Error),
    /// The reply was not valid.
    #[error("the prefixd agent sent a bad reply: {0}")]
    BadReply(String),
}

/// Sends one request and waits (at most `timeout`) for the reply.
pub fn call(socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(ClientError::Io)?;
    s.set_write_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    let req = Request {
        v: PROTOCOL_VERSION,
        op,
    };
    let mut bytes = serde_json::to_vec(&req).expect("request serializes");
    bytes.push(b'\n');
    // The agent may answer (a refusal, say) before it has read everything: keep the write
    // error, but read the answer first and prefer it.
    let sent = s
        .write_all(&bytes)
        .and_then(|()| s.shutdown(std::net::Shutdown::Write));
    // Room for any answer at once: a growing buffer reads it 32 bytes at a time.
    let mut buf = Vec::with_capacity(4096);
    let read = s.take(MAX_MESSAGE as u64 + 1).read_to_end(&mut buf);
    if buf.is_empty() {
        sent.map_err(ClientError::Io)?;
        read.map_err(ClientError::Io)?;
    }
    if buf.len() > MAX_MESSAGE {
        return Err(ClientError::BadReply("reply larger than 64 KiB".into()));
    }
    let reply: Reply =
        serde_json::from_slice(&buf).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if reply.v != PROTOCOL_VERSION {
        return Err(ClientError::BadReply(format!(
            "protocol version {} (expected {PROTOCOL_VERSION})",
            reply.v
        )));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let r = Request {
            v: 1,
            op: Op::Add {
                key: PodKey::new("net", "c1", "eth0").unwrap(),
                pod_namespace: "ns".into(),
                pod_name: "p".into(),
                timeout_ms: 1000,
            },
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""op":"add""#), "{j}");
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"op":"launch"}"#).is_err());
        let e = Reply::error(ErrorKind::Timeout, "x");
        assert!(serde_json::to_string(&e).unwrap().contains("timeout"));
    }
}
