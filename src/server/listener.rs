//! The accept loop of one listening address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::framing::{FramingVerdict, FramingWatch, Watched};
use super::idle::IdleIo;
use crate::config::ServerConfig;
use crate::metrics::gauge_guard;
use crate::pipeline::{handle, ConnInfo, Runtime};

/// Builds the HTTP server settings from `[server]`.
pub fn http_builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
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
        tokio::spawn(async move {
            connection(stream, remote, ctx2).await;
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, remote: SocketAddr, ctx: Arc<ListenerCtx>) {
    let _ = stream.set_nodelay(true);
    let stream = IdleIo::new(stream, ctx.runtime.load().config.server.idle_timeout);
    let runtime = ctx.runtime.load_full();
    let metrics = runtime.metrics.clone();
    let _active = gauge_guard(
        metrics
            .connections_active
            .with_label_values(&[ctx.name.as_str()]),
    );
    let server_cfg = &runtime.config.server;
    let builder = http_builder(server_cfg);
    let handshake_timeout = server_cfg.header_read_timeout;
    let framing = Arc::new(FramingVerdict::default());
    let watch = FramingWatch::new(server_cfg.max_header_bytes.max(8192), framing.clone());
    match &ctx.tls {
        None => {
            let info = Arc::new(ConnInfo {
                remote,
                tls: false,
                listener: ctx.name.clone(),
                client_cert_sha256: None,
                framing,
            });
            let rt = ctx.runtime.clone();
            let svc = service_fn(move |req| handle(rt.load_full(), info.clone(), req));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(Watched::new(stream, watch)), svc);
            let watched = ctx
                .graceful
                .lock()
                .ok()
                .and_then(|g| g.as_ref().map(|g| g.watch(conn.into_owned())));
            if let Some(w) = watched {
                if let Err(e) = w.await {
                    tracing::debug!(%remote, "connection ended: {e}");
                }
            }
        }
        Some(tls) => {
            let acceptor = TlsAcceptor::from(tls.load_full());
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
            let client_cert_sha256 = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| URL_SAFE_NO_PAD.encode(Sha256::digest(c.as_ref())));
            let info = Arc::new(ConnInfo {
                remote,
                tls: true,
                listener: ctx.name.clone(),
                client_cert_sha256,
                framing,
            });
            let rt = ctx.runtime.clone();
            let svc = service_fn(move |req| handle(rt.load_full(), info.clone(), req));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(Watched::new(stream, watch)), svc);
            let watched = ctx
                .graceful
                .lock()
                .ok()
                .and_then(|g| g.as_ref().map(|g| g.watch(conn.into_owned())));
            if let Some(w) = watched {
                if let Err(e) = w.await {
                    tracing::debug!(%remote, "connection ended: {e}");
                }
            }
        }
    }
}
