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

use super::pool::{PoolError, PoolHandle};
use super::status::Status;
use crate::core::PodInfo;
use crate::ipc::{ErrorKind, MAX_MESSAGE, Op, PROTOCOL_VERSION, Reply, Request};
use crate::metrics::Metrics;

/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest ADD wait the agent accepts from a client.
const MAX_ADD_WAIT: Duration = Duration::from_secs(300);

/// The socket's life: it opens only after the first resync (until then the datastore may hold
/// prefixes EC2 has taken back), serves until `stop`, drains, and removes the file.
pub(super) async fn run(
    path: PathBuf,
    pool: PoolHandle,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    mut resynced: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        r = resynced.wait_for(|done| *done) => if r.is_err() { return },
        _ = stop.changed() => return,
    }
    match bind(&path) {
        Ok(l) => {
            status.update(|s| s.socket_up = true);
            tracing::info!(socket = %path.display(), "serving the plugin socket");
            serve(l, pool, status.clone(), metrics, stop).await;
            status.update(|s| s.socket_up = false);
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

/// Serves until `stop` turns true, then waits for the requests in flight.
pub async fn serve(
    listener: UnixListener,
    pool: PoolHandle,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let me = own_uid();
    let mut inflight = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let (pool, status, metrics) = (pool.clone(), status.clone(), metrics.clone());
                    inflight.spawn(async move { handle(stream, me, pool, status, metrics).await });
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

async fn handle(
    mut stream: UnixStream,
    me: u32,
    pool: PoolHandle,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) {
    let reply = match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => {
            request(&mut stream, &pool, &status, &metrics).await
        }
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

async fn request(
    stream: &mut UnixStream,
    pool: &PoolHandle,
    status: &Status,
    metrics: &Metrics,
) -> Reply {
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
                Ok(a) => {
                    tracing::debug!(pod.key = %key, address = %a, "ADD");
                    ok(Reply {
                        address: Some(a),
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
        Op::Del { key } => match pool.release(key.clone()).await {
            Ok(a) => {
                tracing::debug!(pod.key = %key, address = ?a, "DEL");
                ok(Reply {
                    released: Some(a.is_some() as u32),
                    ..Reply::default()
                })
            }
            Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
        },
        Op::Check { key } => match pool.check(key.clone()).await {
            Ok(Some(a)) => ok(Reply {
                address: Some(a),
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
                Ok(n) => ok(Reply {
                    released: Some(n),
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
