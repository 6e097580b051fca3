//! Starting and stopping a whole gateway: key loaders, listeners, admin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reload::{build_runtime, Reloader, Shared};
use crate::revocation::redis_sync::RedisSync;
use crate::revocation::Revocations;
use crate::server::listener::{self, ListenerCtx};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

pub struct Gateway;

/// A gateway that is serving.
pub struct RunningGateway {
    listen_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    admin: Arc<AdminState>,
    graceful: Arc<Mutex<Option<GracefulShutdown>>>,
    accept_tasks: Vec<JoinHandle<()>>,
    admin_task: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    reloader: Arc<Reloader>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = l
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((l, local))
}

impl Gateway {
    /// Loads keys (each issuer bounded by its `fetch_timeout`), binds every
    /// listener and starts serving. An issuer whose keys cannot be loaded does
    /// not stop the start: `/readyz` reports it and its refresher keeps trying.
    pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
        crate::install_crypto_providers();
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let mut background = Vec::new();

        let redis = match &config.revocation.redis {
            Some(r) => Some(RedisSync::new(r, metrics.clone()).map_err(StartError::Setup)?),
            None => None,
        };
        let revocations = Revocations::open(
            &config.revocation,
            &config.issuers,
            metrics.clone(),
            redis.clone(),
        )
        .map_err(|e| StartError::Setup(format!("revocation.store: {e}")))?;
        background.push(tokio::spawn(revocations.clone().sweep_loop()));
        if let Some(r) = redis {
            background.push(tokio::spawn(r.run(revocations.clone())));
        }

        let shared = Arc::new(Shared::new(metrics.clone(), revocations.clone()));
        let runtime = build_runtime(&shared, config.clone())
            .await
            .map_err(StartError::Setup)?;
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));

        let tls = match &config.server.tls {
            Some(t) => Some(Arc::new(ArcSwap::new(
                crate::server::tls::server_config(t, config.server.http2)
                    .map_err(StartError::Setup)?,
            ))),
            None => {
                tracing::warn!(
                    "no [server.tls]: serving plaintext HTTP; tokens cross the network readable"
                );
                None
            }
        };

        let (stop, stop_rx) = watch::channel(false);
        let graceful = Arc::new(Mutex::new(Some(GracefulShutdown::new())));
        let limit = Arc::new(Semaphore::new(config.server.max_connections));
        let mut bound = Vec::new();
        for addr in &config.server.listen {
            bound.push(bind(*addr).await?);
        }
        let listen_addrs = bound.iter().map(|(_, a)| *a).collect();
        let admin_state = Arc::new(AdminState {
            runtime: runtime.clone(),
            draining: AtomicBool::new(false),
            revocations,
            started: std::time::Instant::now(),
        });
        // The admin listener outlives the drain, so that probes see 503 meanwhile.
        let (admin_addr, admin_task) = match config.admin.listen {
            Some(addr) => {
                let (l, local) = bind(addr).await?;
                let task = tokio::spawn(admin::serve(l, admin_state.clone()));
                (Some(local), Some(task))
            }
            None => (None, None),
        };
        let mut accept_tasks = Vec::new();
        for (l, local) in bound {
            let ctx = Arc::new(ListenerCtx {
                name: local.to_string(),
                runtime: runtime.clone(),
                tls: tls.clone(),
                limit: limit.clone(),
                graceful: graceful.clone(),
            });
            accept_tasks.push(tokio::spawn(listener::serve(l, ctx, stop_rx.clone())));
        }
        tracing::info!(listen = ?listen_addrs, admin = ?admin_addr, "portcullis is serving");
        Ok(RunningGateway {
            listen_addrs,
            admin_addr,
            stop,
            admin: admin_state,
            graceful,
            accept_tasks,
            admin_task,
            background,
            reloader: Arc::new(Reloader::new(shared, runtime, tls)),
        })
    }
}

impl RunningGateway {
    /// The bound addresses, in the order of `server.listen`.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.reloader.shared.metrics.clone()
    }

    /// Swaps in a new configuration (see [`Reloader::apply`]).
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        self.reloader.apply(config).await
    }

    /// Reads, validates and applies a configuration file.
    pub async fn reload_file(&self, path: &std::path::Path) -> Result<(), String> {
        self.reloader.reload_file(path).await
    }

    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Reloads whenever `path` or the certificate and key it names change.
    pub fn watch_config(&mut self, path: PathBuf) {
        let task = tokio::spawn(self.reloader.clone().watch(path, Duration::from_secs(2)));
        self.background.push(task);
    }

    /// Readiness goes to 503, listeners stop accepting, in-flight requests
    /// (and upgraded connections) get `shutdown_grace` to finish.
    pub async fn shutdown(self) {
        self.admin.set_draining();
        let grace = self.reloader.runtime.load().config.server.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let _ = self.stop.send(true);
        for t in &self.accept_tasks {
            t.abort();
        }
        let graceful = self.graceful.lock().ok().and_then(|mut g| g.take());
        if let Some(g) = graceful {
            if tokio::time::timeout_at(deadline, g.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("shutdown_grace passed with requests still in flight; closing them");
            }
        }
        let upgrades = self.reloader.shared.upgrades.clone();
        if tokio::time::timeout_at(deadline, upgrades.idle())
            .await
            .is_err()
        {
            tracing::warn!("shutdown_grace passed with upgraded connections open; closing them");
        }
        for t in self.background {
            t.abort();
        }
        self.reloader.shared.stop();
        self.reloader.shared.access_log.flush();
        if let Some(t) = self.admin_task {
            t.abort();
        }
    }
}
