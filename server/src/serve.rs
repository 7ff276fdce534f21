//! The relay's HTTP/1.1 server: the accept loop and each connection's deadlines.
//!
//! axum's own `serve` has no deadlines, so a client that connects and sends nothing, or sends a
//! request head a byte a minute (slowloris), or stops reading what it asked for, would hold a
//! socket and a task for ever. Here:
//! - [`TcpAcceptor`] outlives a full file table (EMFILE, ENFILE): it waits a moment and tries
//!   again, counting (`wardline_accept_errors_total`) and warning at most every 10 s, instead of
//!   ending or spinning;
//! - each connection must send its request head in full within the header deadline
//!   (`--header-timeout`), counted from the connection's start and again after each response, so
//!   it is also the idle keep-alive timeout (`wardline_header_timeouts_total`);
//! - [`WriteDeadline`]: a write that makes no progress for `--write-timeout` ends the connection
//!   (an event stream or a WebSocket whose reader stopped reading; `wardline_write_timeouts_total`).
//!
//! HTTP/2 is not served: devices speak HTTP/1.1 (WebSocket upgrades, event streams) and the TLS
//! configuration offers only it.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::Service;

/// How long a connection may take to send a request head, and to make progress writing.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From the connection's start or its last response to a complete request head.
    pub header: Duration,
    /// A write (or flush) without progress for this long ends the connection.
    pub write: Duration,
}

/// Serves `router` on each connection `listener` accepts, with the peer's address as
/// [`ConnectInfo`], until `graceful` completes; then asks each connection to finish its request
/// and waits for them. (Upgraded WebSockets are no longer connections here: they end with their
/// sessions.)
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    deadlines: Deadlines,
    metrics: Arc<Metrics>,
    graceful: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let (stopping_tx, stopping) = watch::channel(false);
    // Each connection holds a receiver; `closed()` completes once the last one is dropped.
    let (open_tx, open) = watch::channel(());
    let mut graceful = pin!(graceful);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut graceful => break,
        };
        tokio::spawn(serve_connection(
            io,
            peer,
            router.clone(),
            deadlines,
            metrics.clone(),
            stopping.clone(),
            open.clone(),
        ));
    }
    drop(listener);
    drop(open);
    stopping_tx.send_replace(true);
    open_tx.closed().await;
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    deadlines: Deadlines,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(WriteDeadline::new(io, deadlines.write, metrics.clone()));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // A router is always ready.
        router.clone().call(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header);
    let mut connection = pin!(builder.serve_connection(io, service).with_upgrades());
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = crate::stopping(&mut stopping) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            Metrics::inc(&metrics.header_timeouts_total);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Accepts TCP connections, waiting out errors that a moment can cure (no file descriptor left)
/// instead of returning them.
pub struct TcpAcceptor {
    tcp: TcpListener,
    metrics: Arc<Metrics>,
    last_warned: Option<Instant>,
    failed_since_warning: u64,
}

impl TcpAcceptor {
    /// Accepts on `tcp`.
    pub fn new(tcp: TcpListener, metrics: Arc<Metrics>) -> TcpAcceptor {
        TcpAcceptor {
            tcp,
            metrics,
            last_warned: None,
            failed_since_warning: 0,
        }
    }

    /// The next connection.
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok(accepted) => return accepted,
                // The peer left before it was accepted: nothing to wait for.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    Metrics::inc(&self.metrics.accept_errors_total);
                    self.failed_since_warning += 1;
                    let now = Instant::now();
                    if self
                        .last_warned
                        .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
                    {
                        tracing::warn!(
                            error = %e,
                            failures = self.failed_since_warning,
                            "accepting connections fails (out of file descriptors?); retrying every 100 ms"
                        );
                        self.last_warned = Some(now);
                        self.failed_since_warning = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Listener for TcpAcceptor {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A connection whose writes must make progress: one that stays pending for the deadline fails
/// with `TimedOut`. Only progress resets the deadline; reading does not.
pub struct WriteDeadline<I> {
    io: I,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<I> WriteDeadline<I> {
    /// `io`, whose writes may stall at most `limit`.
    pub fn new(io: I, limit: Duration, metrics: Arc<Metrics>) -> WriteDeadline<I> {
        WriteDeadline {
            io,
            limit,
            stalled: None,
            metrics,
        }
    }

    /// Passes on a write's result, and fails a write pending past the deadline.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        Metrics::inc(&self.metrics.write_timeouts_total);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer read nothing for {limit:?}"),
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::AsyncWriteExt;

    /// A writer that never accepts a byte stalls at the deadline, not before, and the timer started
    /// by the first stalled write is not reset by the next attempt.
    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_fails_at_the_deadline() {
        let (near, _far) = tokio::io::duplex(16);
        let metrics = Arc::new(Metrics::default());
        let mut io = WriteDeadline::new(near, Duration::from_secs(5), metrics.clone());
        io.write_all(&[0; 16]).await.unwrap();
        let started = Instant::now();
        let error = io.write_all(b"more").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(metrics.write_timeouts_total.load(Relaxed), 1);
    }

    /// A reader that keeps taking bytes, however slowly, keeps the connection.
    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline() {
        let (near, mut far) = tokio::io::duplex(4);
        let metrics = Arc::new(Metrics::default());
        let mut io = WriteDeadline::new(near, Duration::from_secs(5), metrics.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0; 4];
            let mut total = 0;
            while total < 40 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
        });
        io.write_all(&[1; 40]).await.unwrap();
        reader.await.unwrap();
        assert_eq!(metrics.write_timeouts_total.load(Relaxed), 0);
    }
}
