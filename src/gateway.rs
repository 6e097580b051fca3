//! Starting and stopping a whole gateway: key loaders, listeners, admin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::auth::fetch;
use crate::auth::keys::IssuerKeys;
use crate::auth::verify::Verifier;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::Runtime;
use crate::proxy::headers::IdentityPlan;
use crate::proxy::upstream::Upstream;
use crate::revocation::redis_sync::RedisSync;
use crate::revocation::Revocations;
use crate::route::RouteTable;
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
    admin_stop: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
    runtime: Arc<ArcSwap<Runtime>>,
}

impl Gateway {
    /// Loads keys (each issuer bounded by its `fetch_timeout`), binds every
    /// listener and starts serving. An issuer whose keys cannot be loaded does
    /// not stop the start: `/readyz` reports it and its refresher keeps trying.
    pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
        crate::install_crypto_providers();
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        metrics.init_labels(&config);

        let mut background = Vec::new();
        let mut issuers = Vec::new();
        let mut first_loads = Vec::new();
        for ic in &config.issuers {
            let keys = IssuerKeys::new(Arc::new(ic.clone()), metrics.clone());
            let client = Arc::new(
                fetch::client(ic.ca.as_deref().map(|p| p.as_path())).map_err(StartError::Setup)?,
            );
            let k = keys.clone();
            let c = client.clone();
            first_loads.push(async move {
                let first = k.load_once(&c).await;
                (k, c, first)
            });
            issuers.push(keys);
        }
        for (keys, client, first) in futures_util::future::join_all(first_loads).await {
            if let Err(e) = &first {
                tracing::error!(issuer = %keys.id(), "initial key load failed: {e}");
            }
            background.push(tokio::spawn(keys.refresh_loop(client, first)));
        }

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
        let assertions = match &config.identity.assertion {
            Some(a) => {
                let claims: Vec<String> = config
                    .identity
                    .headers
                    .iter()
                    .map(|(_, c)| c.clone())
                    .collect();
                let a = Arc::new(
                    crate::proxy::assertion::Assertions::new(a, &claims)
                        .map_err(|e| StartError::Setup(format!("identity.assertion.key: {e}")))?,
                );
                background.push(tokio::spawn(a.clone().watch()));
                Some(a)
            }
            None => None,
        };
        let verifier = Arc::new(Verifier::new(
            issuers,
            config.token.cache_entries,
            metrics.clone(),
        ));
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            upstreams.insert(
                name.clone(),
                Arc::new(
                    Upstream::new(u)
                        .map_err(|e| StartError::Setup(format!("upstream.{name}: {e}")))?,
                ),
            );
        }
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime {
            routes: RouteTable::new(&config.routes, config.identity.forward_authorization),
            identity: IdentityPlan::new(&config.identity),
            verifier,
            upstreams,
            metrics: metrics.clone(),
            access_log: AccessLog::stdout(),
            revocations: revocations.clone(),
            dpop_replay: Arc::default(),
            dpop_nonces: Arc::default(),
            assertions,
            config: config.clone(),
        }));

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
        let mut listen_addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        let mut bound = Vec::new();
        for addr in &config.server.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            let local = l.local_addr().map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            listen_addrs.push(local);
            bound.push((l, local.to_string()));
        }
        let admin_state = Arc::new(AdminState {
            runtime: runtime.clone(),
            draining: AtomicBool::new(false),
            admin_token: match &config.admin.token_file {
                Some(f) => Some(crate::config::read_secret(f).map_err(StartError::Setup)?),
                None => None,
            },
            revocations: revocations.clone(),
        });
        // The admin listener outlives the drain, so that probes see 503 meanwhile.
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let mut admin_task = None;
        let admin_addr = match config.admin.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                let local = l
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                admin_task = Some(tokio::spawn(admin::serve(
                    l,
                    admin_state.clone(),
                    admin_stop_rx,
                )));
                Some(local)
            }
            None => None,
        };
        for (l, name) in bound {
            let ctx = Arc::new(ListenerCtx {
                name,
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
            admin_stop,
            background,
            grace: config.server.shutdown_grace,
            runtime,
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
        self.runtime.load().metrics.clone()
    }

    /// Readiness goes to 503, listeners stop accepting, in-flight requests
    /// get `shutdown_grace` to finish.
    pub async fn shutdown(self) {
        self.admin.set_draining();
        let _ = self.stop.send(true);
        for t in &self.accept_tasks {
            t.abort();
        }
        let graceful = self.graceful.lock().ok().and_then(|mut g| g.take());
        if let Some(g) = graceful {
            if tokio::time::timeout(self.grace, g.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("shutdown_grace passed with requests still in flight; closing them");
            }
        }
        for t in self.background {
            t.abort();
        }
        let _ = self.admin_stop.send(true);
        if let Some(t) = self.admin_task {
            t.abort();
        }
    }
}
