//! The agent socket protocol, shared by the agent and its clients (the CNI plugin, the demo):
//! one JSON request and one JSON reply per Unix-socket connection, versioned, size-limited.
//!
//! The client here is blocking and needs no async runtime, so that `prefixd-cni` starts fast.
//! [`pending`] holds the releases a DEL could not deliver.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::PodKey;

pub mod pending;

/// Protocol version; a request with another is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Most attachments a node may hold (the largest MAX_PODS the agent accepts): a GC request
/// lists them all, and its reply every address still held.
pub const MAX_ATTACHMENTS: u32 = 4_096;
/// Largest request or reply, in bytes: a GC of [`MAX_ATTACHMENTS`] keys of the longest names
/// fits ([`tests::a_full_node_gc_fits`]).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest request taken from a peer that is not root: its refusal needs no more.
pub const MAX_UNTRUSTED: usize = 4 * 1024;

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
    /// The pod's IPv4 egress address (IPv6-only pods, ENABLE_V4_EGRESS), from 169.254.172.0/22.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress4: Option<Ipv4Addr>,
}

/// A reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The IPv4 address (ADD, CHECK), when the node gives pods one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The IPv6 address (ADD, CHECK), when the node gives pods one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
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
    pub kept: Option<Vec<IpAddr>>,
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

/// Connects without blocking past `deadline`: a full listen backlog makes a blocking
/// `connect(2)` on a Unix socket wait for ever, so the socket is non-blocking and the connect
/// is tried again until the deadline.
fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, ClientError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
    let err = |source: std::io::Error| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    };
    let addr = UnixAddr::new(socket).map_err(|e| err(e.into()))?;
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let mut pause = Duration::from_millis(1);
    loop {
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the agent's socket accepts no connection (its backlog is full)",
                    )));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(err(e.into())),
        }
    }
    let s = UnixStream::from(fd);
    s.set_nonblocking(false).map_err(ClientError::Io)?;
    Ok(s)
}

/// What is left until `deadline`, or a timeout error.
fn left(deadline: Instant) -> Result<Duration, ClientError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the agent did not answer in time",
            ))
        })
}

/// Sends one request and waits for the reply: `timeout` bounds the whole call, connect
/// included, however slowly the other end reads or writes. The connection stays open until
/// the reply (the agent reads the end of the request from its newline): its closing tells the
/// agent that this caller has gone, and an ADD nobody waits for is not made.
pub fn call(socket: &Path, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(socket, deadline)?;
    let req = Request {
        v: PROTOCOL_VERSION,
        op,
    };
    let mut bytes = serde_json::to_vec(&req).expect("request serializes");
    bytes.push(b'\n');
    // The agent may answer (a refusal, say) before it has read everything: keep the write
    // error, but read the answer first and prefer it.
    let mut sent = Ok(());
    let mut off = 0;
    while off < bytes.len() {
        s.set_write_timeout(Some(left(deadline)?))
            .map_err(ClientError::Io)?;
        match s.write(&bytes[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                sent = Err(e);
                break;
            }
        }
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut read = Ok(());
    while !buf.ends_with(b"\n") && buf.len() <= MAX_MESSAGE {
        s.set_read_timeout(Some(left(deadline)?))
            .map_err(ClientError::Io)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                left(deadline)?;
            }
            Err(e) => {
                read = Err(e);
                break;
            }
        }
    }
    if buf.is_empty() {
        sent.map_err(ClientError::Io)?;
        read.map_err(ClientError::Io)?;
    }
    if buf.len() > MAX_MESSAGE {
        return Err(ClientError::BadReply(format!(
            "reply larger than {MAX_MESSAGE} bytes"
        )));
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
    fn a_full_node_gc_fits() {
        let name = "n".repeat(crate::core::types::MAX_NAME);
        let keep: Vec<PodKey> = (0..MAX_ATTACHMENTS)
            .map(|i| PodKey::new(&name, format!("{i:0>256}"), "eth012345678901").unwrap())
            .collect();
        let req = Request {
            v: PROTOCOL_VERSION,
            op: Op::Gc {
                network: name.clone(),
                keep,
            },
        };
        let n = serde_json::to_vec(&req).unwrap().len();
        assert!(n < MAX_MESSAGE, "{n} bytes");
        let reply = Reply {
            kept: Some(vec![
                IpAddr::V6(Ipv6Addr::new(
                    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff
                ));
                MAX_ATTACHMENTS as usize
            ]),
            ..Reply::error(ErrorKind::Internal, "x".repeat(4096))
        };
        assert!(serde_json::to_vec(&reply).unwrap().len() < MAX_MESSAGE);
    }

    /// Runs `f` on a thread and gives up after `limit`: a call that hangs fails the test
    /// instead of hanging it.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .expect("the call did not end within its deadline")
    }

    #[test]
    fn a_full_backlog_ends_at_the_deadline() {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let fd = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        let addr = UnixAddr::new(&path).unwrap();
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).unwrap();
        nix::sys::socket::listen(&fd, Backlog::new(0).unwrap()).unwrap();
        // Never accepted: fill the queue.
        let mut queued = Vec::new();
        for _ in 0..4 {
            match connect(&path, Instant::now() + Duration::from_millis(50)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        let p = path.clone();
        let r = within(Duration::from_secs(10), move || {
            call(&p, Op::Status, Duration::from_millis(300))
        });
        let e = r.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("backlog"), "{e}");
        drop(fd);
    }

    #[test]
    fn a_trickled_reply_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            for byte in br#"{"v":1}"#.iter().chain(b"\n") {
                std::thread::sleep(Duration::from_millis(250));
                if s.write_all(&[*byte]).is_err() {
                    return;
                }
            }
        });
        let t = Instant::now();
        let e = within(Duration::from_secs(10), move || {
            call(&path, Op::Status, Duration::from_millis(350))
        })
        .unwrap_err();
        assert!(matches!(e, ClientError::Io(_)), "{e}");
        // Eight bytes at 250 ms each would take 2 s: the deadline cut it short.
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            t.elapsed()
        );
    }

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
