//! A TCP listener for the agent's HTTP endpoints that no local user can exhaust: at most
//! [`MAX_HTTP_CONNECTIONS`] at once (more wait in the kernel's backlog), each closed after
//! [`IDLE`] without a byte from its peer and after [`LIFETIME`] in all (a request trickled
//! a byte at a time, or headers that never end, cannot hold a connection), and accept errors
//! (EMFILE...) that back off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Most HTTP connections served at once.
pub const MAX_HTTP_CONNECTIONS: usize = 64;
/// A connection with nothing from its peer for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);
/// No connection lives longer (a scraper reconnects).
pub const LIFETIME: Duration = Duration::from_secs(60);

/// The listener.
pub struct Bounded {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    backoff: Duration,
}

impl Bounded {
    /// Bounds `inner`.
    pub fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
            backoff: Duration::ZERO,
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    self.backoff = Duration::ZERO;
                    return (Guarded::new(stream, permit), addr);
                }
                Err(e) => {
                    self.backoff =
                        (self.backoff * 2).clamp(Duration::from_millis(10), LIFETIME / 60);
                    tracing::warn!(error = %e, retry_in = ?self.backoff, "HTTP accept failed");
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: its slot is given back when it drops.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    end: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        Self {
            stream,
            _slot: slot,
            idle: Box::pin(tokio::time::sleep_until(now + IDLE)),
            end: Box::pin(tokio::time::sleep_until(now + LIFETIME)),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let why = if self.end.as_mut().poll(cx).is_ready() {
            "connection lifetime over"
        } else if self.idle.as_mut().poll(cx).is_ready() {
            "connection idle"
        } else {
            return None;
        };
        Some(io::Error::new(io::ErrorKind::TimedOut, why))
    }
}

use std::future::Future;

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + IDLE;
                    self.idle.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            r => r,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that sends one byte and then nothing is closed after IDLE, and one that trickles
    /// is closed after LIFETIME: paused time, so exact.
    #[tokio::test(start_paused = true)]
    async fn silent_and_trickling_peers_are_closed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut b = Bounded::new(l);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (mut g, _) = axum::serve::Listener::accept(&mut b).await;
        silent.write_all(b"G").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        let t = Instant::now();
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed().as_secs(), IDLE.as_secs());

        let mut trickle = TcpStream::connect(addr).await.unwrap();
        let (mut g, _) = axum::serve::Listener::accept(&mut b).await;
        let t = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            loop {
                if let Err(e) = g.read(&mut buf).await {
                    return e.kind();
                }
            }
        });
        for _ in 0..20 {
            tokio::time::sleep(IDLE / 2).await;
            if trickle.write_all(b"x").await.is_err() {
                break;
            }
        }
        assert_eq!(reader.await.unwrap(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= LIFETIME && t.elapsed() < LIFETIME + IDLE);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut b = Bounded::new(l);
        let mut held = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..MAX_HTTP_CONNECTIONS {
            peers.push(TcpStream::connect(addr).await.unwrap());
            held.push(axum::serve::Listener::accept(&mut b).await.0);
        }
        peers.push(TcpStream::connect(addr).await.unwrap());
        let more = tokio::time::timeout(
            Duration::from_millis(200),
            axum::serve::Listener::accept(&mut b),
        )
        .await;
        assert!(more.is_err(), "a connection beyond the cap was served");
        held.pop();
        let more = tokio::time::timeout(
            Duration::from_secs(5),
            axum::serve::Listener::accept(&mut b),
        )
        .await;
        assert!(more.is_ok(), "a freed slot was not reused");
    }
}
