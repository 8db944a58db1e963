//! The agent side of the plugin socket: one request, one reply per connection; peers must be
//! root (or the agent's own user), checked with SO_PEERCRED; the socket file is mode 0600.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
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
use crate::ipc::{
    ErrorKind, HostEnd, MAX_MESSAGE, Op, PROTOCOL_VERSION, PodNet, Reply, Request, pending,
};
use crate::metrics::Metrics;

/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
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

    fn pod_net(&self, l: Leased) -> PodNet {
        PodNet {
            table: l.table,
            mtu: self.pods.mtu,
            veth_prefix: self.pods.veth_prefix.clone(),
        }
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
        Ok(l) => {
            // Releases recorded while the agent was away go first: their addresses are free
            // before any ADD is answered.
            release_pending(&served).await;
            served.status.update(|s| s.socket_up = true);
            tracing::info!(socket = %path.display(), "serving the plugin socket");
            serve(l, served.clone(), stop).await;
            served.status.update(|s| s.socket_up = false);
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "cannot bind the plugin socket")
        }
    }
}

/// Binds the socket (replacing a stale file), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
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

/// Serves until `stop` turns true, then waits for the requests in flight.
pub async fn serve(listener: UnixListener, served: Arc<Served>, mut stop: watch::Receiver<bool>) {
    let me = own_uid();
    let mut inflight = JoinSet::new();
    let mut pending_tick = tokio::time::interval(PENDING_EVERY);
    pending_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pending_tick.tick() => release_pending(&served).await,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let served = served.clone();
                    inflight.spawn(async move { handle(stream, me, &served).await });
                }
                Err(e) => tracing::warn!(error = %e, "accept on the agent socket failed"),
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

async fn handle(mut stream: UnixStream, me: u32, served: &Served) {
    let reply = match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => request(&mut stream, served).await,
        Ok(c) => {
            // Take the (size- and time-bounded) request off the socket first, so that the
            // refusal reaches the peer instead of a broken pipe.
            let _ = read_request(&mut stream).await;
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
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<(), String>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_MESSAGE {
                return Err(format!("request larger than {MAX_MESSAGE} bytes"));
            }
            if buf.ends_with(b"\n") {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| "request not received within 5 s".to_owned())??;
    serde_json::from_slice(&buf).map_err(|e| format!("malformed request: {e}"))
}

async fn request(stream: &mut UnixStream, served: &Served) -> Reply {
    let (pool, status, metrics) = (&served.pool, &served.status, &served.metrics);
    let req = match read_request(stream).await {
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
            let r = pool.allocate(key.clone(), pod, timeout).await;
            metrics.add_latency(t.elapsed());
            match r {
                Ok(l) => {
                    tracing::debug!(pod.key = %key, address = %l.address, table = l.table, "ADD");
                    ok(Reply {
                        address: Some(l.address),
                        pod_net: Some(served.pod_net(l)),
                        ..Reply::default()
                    })
                }
                Err(PoolError::Timeout(d)) => Reply::error(
                    ErrorKind::Timeout,
                    format!("no address for {key} within {d:?}"),
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
            Ok(Some(l)) => ok(Reply {
                address: Some(l.address),
                pod_net: Some(served.pod_net(l)),
                ..Reply::default()
            }),
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
                    pod_net: Some(served.pod_net(Leased {
                        address: std::net::Ipv4Addr::UNSPECIFIED,
                        table: crate::hostnet::netlink::TABLE_MAIN,
                    })),
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
