//! The agent side of the plugin socket: one request, one reply per connection; peers must be
//! root (or the agent's own user), checked with SO_PEERCRED; the socket file is mode 0600.
//!
//! Bounded everywhere: at most [`MAX_CONNECTIONS`] at once (more are closed at once), a
//! request must arrive within [`READ_TIMEOUT`] ([`UNTRUSTED_TIMEOUT`] and [`MAX_UNTRUSTED`]
//! bytes for a peer that is refused anyway), accept errors back off instead of spinning, and
//! an ADD ends when its caller goes away, when a DEL of the same attachment arrives, or at
//! once with "try again" when the agent stops.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::pool::{Leased, PoolError, PoolHandle};
use super::status::Status;
use crate::core::PodInfo;
use crate::hostnet::egress::{EGRESS_NET, egress_address};
use crate::ipc::{
    ErrorKind, HostEnd, MAX_MESSAGE, MAX_UNTRUSTED, Op, PROTOCOL_VERSION, PodNet, Reply, Request,
    pending,
};
use crate::metrics::Metrics;

/// Longest a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a peer that is not root may hold a connection.
pub const UNTRUSTED_TIMEOUT: Duration = Duration::from_millis(200);
/// Most connections served at once; more are closed unanswered (the plugin retries).
pub const MAX_CONNECTIONS: usize = 512;
/// Longest pause after a failed accept (EMFILE and the like), doubling from 10 ms.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest ADD wait the agent accepts from a client.
const MAX_ADD_WAIT: Duration = Duration::from_secs(300);

/// What every request needs: the pool, the status, the metrics, and how pods are wired.
pub struct Served {
    /// The pool.
    pub pool: PoolHandle,
    /// Readiness.
    pub status: Arc<Status>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// POD_MTU and the veth prefix, for ADD and CHECK answers.
    pub pods: PodDefaults,
    /// Where DELs that could not reach the agent left their releases ([`pending`]).
    pub pending: PathBuf,
    /// Whether the agent programs the node (and so deletes pods' host ends for DEL).
    pub host: bool,
}

/// The node's settings the plugin wires pods with.
#[derive(Debug, Clone)]
pub struct PodDefaults {
    /// POD_MTU.
    pub mtu: u32,
    /// AWS_VPC_K8S_CNI_VETHPREFIX.
    pub veth_prefix: String,
    /// IPv6-only pods get an IPv4 egress interface (ENABLE_V4_EGRESS).
    pub v4_egress: bool,
}

impl Served {
    /// Deletes a DEL's host end on a blocking thread, while the answer goes back: the plugin
    /// need not wait for the veth's RCU grace period. Only a veth named with the node's prefix,
    /// and only while it is still the link the plugin saw. `Some(true)` when taken.
    fn unlink_later(&self, end: HostEnd) -> Option<bool> {
        if !self.host || !end.name.starts_with(&self.pods.veth_prefix) {
            return None;
        }
        tokio::task::spawn_blocking(move || {
            let r = crate::hostnet::netlink::Netlink::open()
                .map_err(crate::hostnet::pod::PodError::from)
                .and_then(|mut nl| crate::hostnet::pod::unlink(&mut nl, &end.name, end.index));
            if let Err(e) = r {
                tracing::warn!(link = %end.name, error = %e, "could not delete a pod's host end; CNI GC will");
            }
        });
        Some(true)
    }

    fn pod_net(&self, table: u32) -> PodNet {
        PodNet {
            table,
            mtu: self.pods.mtu,
            veth_prefix: self.pods.veth_prefix.clone(),
            egress4: None,
        }
    }

    /// How to wire a lease: its table, and its IPv4 egress address when the pod is IPv6-only
    /// and the node gives those (derived from its /80 index; an index beyond the range is
    /// refused, naming why).
    fn lease_net(&self, l: &Leased) -> Result<PodNet, String> {
        let mut net = self.pod_net(l.table);
        if self.pods.v4_egress
            && l.address.is_none()
            && let Some(a6) = l.address6
        {
            net.egress4 = Some(egress_address(a6).ok_or_else(|| {
                format!(
                    "{a6} is beyond the {} IPv4 egress addresses of {EGRESS_NET}: too many \
                     pods and cooling addresses at once on this node (or set \
                     ENABLE_V4_EGRESS=false)",
                    crate::hostnet::egress::MAX_INDEX
                )
            })?);
        }
        Ok(net)
    }
}

/// The socket's life: it opens only after the first resync (until then the datastore may hold
/// prefixes EC2 has taken back), serves until `stop`, drains, and removes the file.
pub(super) async fn run(
    path: PathBuf,
    served: Arc<Served>,
    mut resynced: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        r = resynced.wait_for(|done| *done) => if r.is_err() { return },
        _ = stop.changed() => return,
    }
    match bind(&path) {
        Ok((l, id)) => {
            // Releases recorded while the agent was away go first: their addresses are free
            // before any ADD is answered.
            release_pending(&served).await;
            served.status.update(|s| {
                s.socket_up = true;
                s.socket = Some(id.clone());
            });
            tracing::info!(socket = %path.display(), "serving the plugin socket");
            serve(l, served.clone(), stop).await;
            served.status.update(|s| s.socket_up = false);
            // Only the socket this agent made: never another agent's, nor what replaced it.
            if id.is_at(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "cannot bind the plugin socket");
            served
                .status
                .update(|s| s.socket_error = Some(format!("cannot bind {}: {e}", path.display())));
        }
    }
}

/// Which file a bound socket is: a path replaced or removed since is not it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketId {
    /// The path.
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketId {
    /// Whether `path` is still this socket.
    pub fn is_at(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
    }
}

/// Binds the socket, mode 0600. A stale socket file is replaced (the agent holds the socket's
/// lock, so no live agent serves it); anything else at the path is refused, never removed.
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketId)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(m) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket ({:?}); remove it or set SOCKET_PATH elsewhere",
                    path.display(),
                    m.file_type()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let m = std::fs::symlink_metadata(path)?;
    Ok((
        l,
        SocketId {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
        },
    ))
}

/// How often the pending releases are looked at while serving (a DEL that raced the agent's
/// restart).
const PENDING_EVERY: Duration = Duration::from_secs(2);

/// Releases what DELs recorded while they could not reach the agent, and removes each record
/// once its release is durable. A record that cannot be read is named and left alone.
async fn release_pending(served: &Served) {
    release_recorded(&served.pool, &served.pending).await;
}

/// [`release_pending`] for `pool` and `dir`: also run at start, before the first resync puts
/// the node's rules back for what is already gone.
pub(super) async fn release_recorded(pool: &PoolHandle, dir: &Path) {
    for (path, key) in pending::list(dir) {
        match key {
            Ok(key) => match pool.release(key.clone()).await {
                Ok(a) => {
                    tracing::info!(pod.key = %key, address = ?a, "released an address a DEL recorded while the agent was away");
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(pod.key = %key, error = %e, "could not release a recorded DEL; retrying")
                }
            },
            Err(why) => {
                tracing::error!(file = %path.display(), why, "a recorded DEL cannot be read; remove the file once its address is dealt with")
            }
        }
    }
}

/// Serves until `stop` turns true, then waits for the requests in flight (ADDs still waiting
/// for an address are answered "try again" at once).
pub async fn serve(listener: UnixListener, served: Arc<Served>, mut stop: watch::Receiver<bool>) {
    let me = own_uid();
    let mut inflight = JoinSet::new();
    let mut pending_tick = tokio::time::interval(PENDING_EVERY);
    pending_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::ZERO;
    let mut refused = 0u64;
    loop {
        tokio::select! {
            _ = pending_tick.tick() => release_pending(&served).await,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if !backoff.is_zero() {
                        backoff = Duration::ZERO;
                        served.status.update(|s| s.socket_error = None);
                    }
                    if inflight.len() >= MAX_CONNECTIONS {
                        // Closed unanswered: the plugin sees a reset and retries.
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(refused, max = MAX_CONNECTIONS, "too many connections to the agent socket: closing new ones");
                        }
                        drop(stream);
                        continue;
                    }
                    let served = served.clone();
                    let stop = stop.clone();
                    inflight.spawn(async move { handle(stream, me, &served, stop).await });
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the condition lasts; spinning on it would
                    // log millions of lines and starve everything else.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                    if backoff < Duration::from_millis(20) || backoff == ACCEPT_BACKOFF_MAX {
                        tracing::warn!(error = %e, retry_in = ?backoff, "accept on the agent socket failed");
                    }
                    let why = e.to_string();
                    served.status.update(|s| s.socket_error = Some(why));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                }
            },
            _ = stop.changed() => break,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    }
    tracing::info!(
        inflight = inflight.len(),
        "socket closed: draining requests in flight"
    );
    while inflight.join_next().await.is_some() {}
}

/// The agent's own uid, from /proc (no libc call needed).
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

async fn handle(mut stream: UnixStream, me: u32, served: &Served, stop: watch::Receiver<bool>) {
    let reply = match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => request(&mut stream, served, stop).await,
        Ok(c) => {
            // Take the (small- and time-bounded) request off the socket first, so that the
            // refusal reaches the peer instead of a broken pipe.
            let _ = read_request(&mut stream, MAX_UNTRUSTED, UNTRUSTED_TIMEOUT).await;
            tracing::warn!(peer.uid = c.uid(), "refused a socket peer that is not root");
            Reply::error(
                ErrorKind::BadRequest,
                "only root may use the prefixd socket",
            )
        }
        Err(e) => Reply::error(
            ErrorKind::BadRequest,
            format!("cannot read peer credentials: {e}"),
        ),
    };
    let mut bytes = serde_json::to_vec(&reply).expect("reply serializes");
    bytes.push(b'\n');
    // A peer that does not read its answer does not hold the connection for ever.
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads one request: up to its newline (or the peer's end of writing), at most `max` bytes,
/// within `within`.
async fn read_request(
    stream: &mut UnixStream,
    max: usize,
    within: Duration,
) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > max {
                return Err(format!("request larger than {max} bytes"));
            }
            if buf.ends_with(b"\n") {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| format!("request not received within {within:?}"))??;
    serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}"))
}

/// Resolves when the caller has gone: its end closed (the plugin keeps the connection open
/// until it has the answer), or it broke the protocol by writing more.
async fn caller_gone(stream: &UnixStream) {
    let mut byte = [0u8; 1];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut byte) {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

async fn request(
    stream: &mut UnixStream,
    served: &Served,
    mut stop: watch::Receiver<bool>,
) -> Reply {
    let (pool, status, metrics) = (&served.pool, &served.status, &served.metrics);
    let req = match read_request(stream, MAX_MESSAGE, READ_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => return Reply::error(ErrorKind::BadRequest, e),
    };
    if req.v != PROTOCOL_VERSION {
        return Reply::error(
            ErrorKind::BadRequest,
            format!(
                "protocol version {} is not {PROTOCOL_VERSION}: upgrade prefixd-cni and the agent together",
                req.v
            ),
        );
    }
    let ok = |r: Reply| Reply {
        v: PROTOCOL_VERSION,
        ..r
    };
    match req.op {
        Op::Add {
            key,
            pod_namespace,
            pod_name,
            timeout_ms,
        } => {
            if let Some(why) = status.not_ready() {
                return Reply::error(ErrorKind::NotReady, why);
            }
            let t = Instant::now();
            let timeout = Duration::from_millis(timeout_ms).min(MAX_ADD_WAIT);
            let pod = PodInfo {
                namespace: pod_namespace,
                name: pod_name,
            };
            if *stop.borrow() {
                return Reply::error(ErrorKind::Timeout, "the agent is stopping; try again");
            }
            // Dropping the allocation's future tells the pool owner: an ADD nobody waits for
            // is not made, and one made meanwhile is released.
            let r = tokio::select! {
                r = pool.allocate(key.clone(), pod, timeout) => r,
                () = caller_gone(stream) => {
                    tracing::info!(pod.key = %key, "the ADD's caller went away");
                    return Reply::error(ErrorKind::Timeout, "the caller went away");
                }
                _ = stop.wait_for(|s| *s) => {
                    return Reply::error(ErrorKind::Timeout, "the agent is stopping; try again");
                }
            };
            metrics.add_latency(t.elapsed());
            match r {
                Ok(l) => {
                    tracing::debug!(pod.key = %key, address = ?l.address, address6 = ?l.address6, table = l.table, "ADD");
                    match served.lease_net(&l) {
                        Ok(net) => ok(Reply {
                            address: l.address,
                            address6: l.address6,
                            pod_net: Some(net),
                            ..Reply::default()
                        }),
                        Err(why) => Reply::error(ErrorKind::Internal, why),
                    }
                }
                Err(PoolError::Timeout(d)) => Reply::error(
                    ErrorKind::Timeout,
                    format!("no address for {key} within {d:?}"),
                ),
                Err(PoolError::Cancelled) => Reply::error(
                    ErrorKind::Timeout,
                    format!("the ADD of {key} was cancelled by its DEL"),
                ),
                Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
            }
        }
        Op::Del { key, unlink } => match pool.release(key.clone()).await {
            Ok(a) => {
                tracing::debug!(pod.key = %key, address = ?a, "DEL");
                let unlinking = unlink.and_then(|end| served.unlink_later(end));
                ok(Reply {
                    released: Some(a.is_some() as u32),
                    unlinking,
                    ..Reply::default()
                })
            }
            Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
        },
        Op::Check { key } => match pool.check(key.clone()).await {
            Ok(Some(l)) => match served.lease_net(&l) {
                Ok(net) => ok(Reply {
                    address: l.address,
                    address6: l.address6,
                    pod_net: Some(net),
                    ..Reply::default()
                }),
                Err(why) => Reply::error(ErrorKind::Internal, why),
            },
            Ok(None) => Reply::error(
                ErrorKind::NotFound,
                format!("no address is allocated to {key}"),
            ),
            Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
        },
        Op::Gc { network, keep } => {
            let keep: HashSet<_> = keep.into_iter().collect();
            match pool.gc(network, keep).await {
                Ok(c) => ok(Reply {
                    released: Some(c.released),
                    kept: Some(c.kept),
                    pod_net: Some(served.pod_net(crate::hostnet::netlink::TABLE_MAIN)),
                    ..Reply::default()
                }),
                Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
            }
        }
        Op::Status => match status.not_ready() {
            Some(why) => Reply::error(ErrorKind::NotReady, why),
            None => ok(Reply::default()),
        },
    }
}
