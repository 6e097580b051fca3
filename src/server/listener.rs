//! The accept loop of one listening address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::fast::{self, Outcome, Prefixed};
use super::framing::{FramingVerdict, FramingWatch, Watched};
use super::idle::IdleIo;
use crate::config::ServerConfig;
use crate::metrics::gauge_guard;
use crate::pipeline::{handle, ConnInfo, Runtime};
use crate::proxy::deadline::ConnTimer;

/// Builds the HTTP server settings from `[server]`; HTTP/1's timeouts run on
/// the connection's `timer`.
pub fn http_builder(cfg: &ServerConfig, timer: ConnTimer) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(timer)
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    if !cfg.http2 {
        b = b.http1_only();
    }
    b
}

/// The HTTP/1-only settings used for parked connections (see
/// [`serve_http1`]): the same limits as [`http_builder`].
fn http1_builder(cfg: &ServerConfig, timer: ConnTimer) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(timer)
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    b
}

pub struct ListenerCtx {
    pub name: String,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    pub limit: Arc<Semaphore>,
    pub graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
}

/// Accepts until `stop` turns true. Connections wait in the kernel's backlog
/// while the connection limit is reached, so file descriptors are never exhausted.
pub async fn serve(listener: TcpListener, ctx: Arc<ListenerCtx>, mut stop: watch::Receiver<bool>) {
    loop {
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let ctx2 = ctx.clone();
        let stop2 = stop.clone();
        tokio::spawn(connection(stream, remote, ctx2, stop2, permit));
    }
}

/// The socket under a connection's layers, for waiting on it while parked.
pub trait Socket {
    fn socket(&self) -> &TcpStream;
}

impl Socket for IdleIo<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl Socket for tokio_rustls::server::TlsStream<IdleIo<TcpStream>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum FirstBytes {
    Http1,
    /// The HTTP/2 preface, or too few bytes yet to tell.
    MaybeHttp2,
    Nothing,
}

/// Looks at a plaintext connection's first bytes without taking them.
async fn first_bytes(stream: &TcpStream, wait: Duration) -> FirstBytes {
    if !matches!(
        tokio::time::timeout(wait, stream.readable()).await,
        Ok(Ok(()))
    ) {
        return FirstBytes::Nothing;
    }
    let mut buf = [0u8; 24];
    match stream.peek(&mut buf).await {
        Ok(0) | Err(_) => FirstBytes::Nothing,
        Ok(n) if buf[..n] == H2_PREFACE[..n] => FirstBytes::MaybeHttp2,
        Ok(_) => FirstBytes::Http1,
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    ctx: Arc<ListenerCtx>,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let runtime = ctx.runtime.load_full();
    let metrics = runtime.metrics.clone();
    // Both released when the connection ends, in whichever task that is.
    let held = (
        permit,
        gauge_guard(
            metrics
                .connections_active
                .with_label_values(&[ctx.name.as_str()]),
        ),
    );
    let server_cfg = &runtime.config.server;
    let handshake_timeout = server_cfg.header_read_timeout;
    let framing = Arc::new(FramingVerdict::default());
    let watch = FramingWatch::new(server_cfg.max_header_bytes.max(8192), framing.clone());
    // Taken once the connection has shown it is alive (first bytes, TLS
    // handshake) and held for its life, so that a drain waits for it.
    let drain_watcher = || {
        ctx.graceful
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|g| g.watcher()))
    };
    match &ctx.tls {
        None => {
            let first = if server_cfg.http2 {
                tokio::select! {
                    f = first_bytes(&stream, handshake_timeout) => f,
                    _ = stop.changed() => return,
                }
            } else {
                FirstBytes::Http1
            };
            let Some(watcher) = drain_watcher() else {
                return;
            };
            let stream = IdleIo::new(stream, server_cfg.idle_timeout);
            let info = Arc::new(ConnInfo::new(
                remote,
                false,
                ctx.name.clone(),
                None,
                framing,
            ));
            match first {
                FirstBytes::Nothing => {}
                FirstBytes::Http1 => {
                    let io = Watched::new(stream, watch).parking();
                    let parked = Parked::new(server_cfg, &info, stop, watcher, held);
                    tokio::spawn(serve_http1(io, ctx.runtime.clone(), info, parked));
                }
                FirstBytes::MaybeHttp2 => {
                    let io = Watched::new(stream, watch);
                    serve_auto(io, info, &ctx, server_cfg, watcher).await;
                }
            }
        }
        Some(tls) => {
            let stream = IdleIo::new(stream, server_cfg.idle_timeout);
            let acceptor = TlsAcceptor::from(tls.load_full());
            let stream = match Box::pin(tokio::time::timeout(
                handshake_timeout,
                acceptor.accept(stream),
            ))
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.tls_handshake_errors_total.inc();
                    tracing::debug!(%remote, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    metrics.tls_handshake_errors_total.inc();
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let Some(watcher) = drain_watcher() else {
                return;
            };
            let session = stream.get_ref().1;
            let client_cert_sha256 = session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| URL_SAFE_NO_PAD.encode(Sha256::digest(c.as_ref())));
            let h2 = session.alpn_protocol() == Some(b"h2");
            let info = Arc::new(ConnInfo::new(
                remote,
                true,
                ctx.name.clone(),
                client_cert_sha256,
                framing,
            ));
            if h2 {
                let io = Watched::new(stream, watch);
                serve_auto(io, info, &ctx, server_cfg, watcher).await;
            } else {
                let io = Watched::new(stream, watch).parking();
                let parked = Parked::new(server_cfg, &info, stop, watcher, held);
                tokio::spawn(serve_http1(io, ctx.runtime.clone(), info, parked));
            }
        }
    }
}

/// Serves HTTP/2 (or whatever hyper-util's detection finds) for the whole
/// connection, with a drain's graceful shutdown. Not parked.
async fn serve_auto<T>(
    io: Watched<T>,
    info: Arc<ConnInfo>,
    ctx: &ListenerCtx,
    cfg: &ServerConfig,
    drain: hyper_util::server::graceful::Watcher,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rt = ctx.runtime.clone();
    let remote = info.remote;
    let builder = http_builder(cfg, ConnTimer(info.timer.clone()));
    // Boxed: hyper runs each HTTP/2 stream as a task of its own, and moved
    // the request's whole future (about 2 KB) on its way into the task.
    let svc = service_fn(move |req| Box::pin(handle(rt.load_full(), info.clone(), req)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = drain.watch(conn.into_owned()).await {
        tracing::debug!(%remote, "connection ended: {e}");
    }
}

/// What an HTTP/1 connection keeps between sessions.
struct Parked<G> {
    builder: http1::Builder,
    idle_wait: Duration,
    stop: watch::Receiver<bool>,
    /// Holding it makes a drain wait for this connection.
    _drain: hyper_util::server::graceful::Watcher,
    _held: G,
}

impl<G> Parked<G> {
    fn new(
        cfg: &ServerConfig,
        info: &ConnInfo,
        stop: watch::Receiver<bool>,
        drain: hyper_util::server::graceful::Watcher,
        held: G,
    ) -> Self {
        Parked {
            builder: http1_builder(cfg, ConnTimer(info.timer.clone())),
            idle_wait: cfg.idle_timeout,
            stop,
            _drain: drain,
            _held: held,
        }
    }
}

/// Serves HTTP/1 in sessions: hyper runs while requests come, and between
/// bursts the connection is parked with no HTTP state (no buffers, no hyper
/// connection) until its socket is readable again. It runs as a task of its
/// own, so that a parked connection's task is only this small state, not
/// the setup (TLS handshake, protocol sniffing) that came before.
async fn serve_http1<T, G>(
    mut io: Watched<T>,
    rt: Arc<ArcSwap<Runtime>>,
    info: Arc<ConnInfo>,
    mut parked: Parked<G>,
) where
    T: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    // The first request must come within header_read_timeout; later ones
    // within idle_timeout of the last byte.
    let svc = {
        let (rt, info) = (rt.clone(), info.clone());
        service_fn(move |req| handle(rt.load_full(), info.clone(), req))
    };
    let stop = &mut parked.stop;
    // The first session starts at once: the TLS handshake may already have
    // read the first request off the socket (a client's Finished and its
    // request often arrive together), and hyper's header_read_timeout
    // bounds a client that sends nothing. Later sessions start when the
    // socket is readable: a session only ends when everything read was
    // answered and nothing is buffered above the socket.
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if !first {
            let readable = std::future::poll_fn(|cx| io.get_ref().socket().poll_read_ready(cx));
            tokio::select! {
                r = tokio::time::timeout(parked.idle_wait, readable) => {
                    if !matches!(r, Ok(Ok(()))) {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
        }
        io.unpark();
        // Plain requests are served without hyper until one is not (see `fast`).
        let prefix = if rt.load().config.server.fast_path {
            // Boxed, as hyper's session is: a parked connection's task keeps
            // only this loop's small state, not a request's futures.
            match Box::pin(fast::serve(&mut io, &rt, &info, stop, first)).await {
                Outcome::Parked => {
                    first = false;
                    continue;
                }
                Outcome::Closed => return,
                Outcome::Handoff(prefix) => prefix.freeze(),
            }
        } else {
            Bytes::new()
        };
        first = false;
        let mut conn = Box::pin(
            parked
                .builder
                .serve_connection(TokioIo::new(Prefixed::new(prefix, io)), svc.clone())
                .with_upgrades(),
        );
        let mut draining = false;
        let ended = {
            // The task is woken several times per request, and polling
            // `stop.changed()` on each wake was about 2 % of a request's CPU.
            // Its first poll registers this task's waker; after that it is
            // polled again only once the stop value has moved.
            let probe = stop.clone();
            let mut changed = std::pin::pin!(stop.changed());
            let mut registered = false;
            std::future::poll_fn(|cx| {
                if !draining && (!registered || probe.has_changed().unwrap_or(true)) {
                    registered = true;
                    if changed.as_mut().poll(cx).is_ready() {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                conn.as_mut().poll(cx)
            })
            .await
        };
        if let Err(e) = ended {
            tracing::debug!("connection ended: {e}");
            return;
        }
        // None: upgraded, the IO now belongs to the upgrade.
        let Some(parts) = Pin::into_inner(conn).into_parts() else {
            return;
        };
        // What hyper had not read of the fast path's bytes ends the connection.
        let Some(back) = parts.io.into_inner().into_inner() else {
            return;
        };
        io = back;
        if !io.is_parked() || !parts.read_buf.is_empty() || draining {
            return;
        }
    }
}
