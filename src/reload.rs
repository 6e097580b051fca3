//! Building the hot state from a configuration, and swapping in a new one
//! while serving (`SIGHUP`, or a change of the configuration file, certificate
//! or key). A new configuration that fails validation is refused with the same
//! messages as `portcullis check`, logged and counted, and the old one keeps
//! serving. Requests in flight finish on the state they started with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::auth::dpop;
use crate::auth::fetch;
use crate::auth::keys::IssuerKeys;
use crate::auth::verify::Verifier;
use crate::config::{Config, IssuerConfig, Loc};
use crate::metrics::Metrics;
use crate::pipeline::Runtime;
use crate::proxy::assertion::Assertions;
use crate::proxy::headers::IdentityPlan;
use crate::proxy::upstream::{Upstream, Upstreams};
use crate::revocation::Revocations;
use crate::route::RouteTable;
use crate::series::RouteSeries;

/// Counts upgraded connections (WebSockets), so that a drain can wait for them.
#[derive(Default)]
pub struct UpgradeTracker {
    open: AtomicUsize,
    closed: Notify,
}

pub struct UpgradeGuard(Arc<UpgradeTracker>);

impl UpgradeTracker {
    pub fn enter(self: &Arc<Self>) -> UpgradeGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        UpgradeGuard(self.clone())
    }

    /// Waits until no upgraded connection is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for UpgradeGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_waiters();
    }
}

/// An issuer's key loader and its refresher task.
type Loader = (Arc<IssuerKeys>, JoinHandle<()>);
/// The assertion signer, the settings it was made from, and its key watcher.
type Signing = (
    crate::config::AssertionConfig,
    Arc<Assertions>,
    JoinHandle<()>,
);

/// What outlives any one configuration.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub revocations: Arc<Revocations>,
    pub access_log: AccessLog,
    pub dpop_replay: Arc<dpop::ReplayCache>,
    pub dpop_nonces: Arc<dpop::Nonces>,
    pub upgrades: Arc<UpgradeTracker>,
    /// Key loaders by issuer id, kept across reloads while their settings do not change.
    issuers: Mutex<HashMap<String, Loader>>,
    assertions: Mutex<Option<Signing>>,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>, revocations: Arc<Revocations>) -> Shared {
        Shared {
            metrics,
            revocations,
            access_log: AccessLog::stdout(),
            dpop_replay: Arc::default(),
            dpop_nonces: Arc::default(),
            upgrades: Arc::default(),
            issuers: Mutex::new(HashMap::new()),
            assertions: Mutex::new(None),
        }
    }

    /// Stops every background task this holds.
    pub fn stop(&self) {
        if let Ok(mut i) = self.issuers.lock() {
            for (_, (_, task)) in i.drain() {
                task.abort();
            }
        }
        if let Ok(mut a) = self.assertions.lock() {
            if let Some((_, _, task)) = a.take() {
                task.abort();
            }
        }
    }
}

/// Issuer settings compared without their position in the file.
fn same_issuer(a: &IssuerConfig, b: &IssuerConfig) -> bool {
    let strip = |c: &IssuerConfig| {
        let mut c = c.clone();
        c.loc = Loc::default();
        c.field.clear();
        format!("{c:?}")
    };
    strip(a) == strip(b)
}

/// The key loaders for `config`: existing ones reused, new ones loaded once
/// (concurrently, each bounded by its `fetch_timeout`) and given a refresher.
async fn issuers(shared: &Shared, config: &Config) -> Result<Vec<Arc<IssuerKeys>>, String> {
    let mut reuse: HashMap<String, Arc<IssuerKeys>> = HashMap::new();
    if let Ok(existing) = shared.issuers.lock() {
        for ic in &config.issuers {
            if let Some((k, _)) = existing.get(&ic.id) {
                if same_issuer(&k.config, ic) {
                    reuse.insert(ic.id.clone(), k.clone());
                }
            }
        }
    }
    let mut fresh = Vec::new();
    for ic in config
        .issuers
        .iter()
        .filter(|ic| !reuse.contains_key(&ic.id))
    {
        let keys = IssuerKeys::new(Arc::new(ic.clone()), shared.metrics.clone());
        let client = Arc::new(fetch::client(ic.ca.as_deref().map(|p| p.as_path()))?);
        fresh.push(async move {
            let first = keys.load_once(&client).await;
            (keys, client, first)
        });
    }
    let loaded = futures_util::future::join_all(fresh).await;
    let mut table = shared
        .issuers
        .lock()
        .map_err(|_| "issuer table lock poisoned".to_string())?;
    let mut next: HashMap<String, Loader> = HashMap::new();
    for (id, keys) in reuse {
        if let Some(entry) = table.remove(&id) {
            next.insert(id, (keys, entry.1));
        }
    }
    for (keys, client, first) in loaded {
        if let Err(e) = &first {
            tracing::error!(issuer = %keys.id(), "initial key load failed: {e}");
        }
        let task = tokio::spawn(keys.clone().refresh_loop(client, first));
        next.insert(keys.id().to_string(), (keys, task));
    }
    for (_, (_, task)) in table.drain() {
        task.abort();
    }
    let out = config
        .issuers
        .iter()
        .filter_map(|ic| next.get(&ic.id).map(|(k, _)| k.clone()))
        .collect();
    *table = next;
    Ok(out)
}

fn assertions(shared: &Shared, config: &Config) -> Result<Option<Arc<Assertions>>, String> {
    let mut slot = shared
        .assertions
        .lock()
        .map_err(|_| "assertion lock poisoned".to_string())?;
    let Some(cfg) = &config.identity.assertion else {
        if let Some((_, _, task)) = slot.take() {
            task.abort();
        }
        return Ok(None);
    };
    let claims: Vec<String> = config
        .identity
        .headers
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    if let Some((old_cfg, a, _)) = slot.as_ref() {
        if old_cfg.key.value == cfg.key.value
            && old_cfg.ttl == cfg.ttl
            && old_cfg.issuer == cfg.issuer
            && old_cfg.header == cfg.header
        {
            return Ok(Some(a.clone()));
        }
    }
    let a = Arc::new(
        Assertions::new(cfg, &claims).map_err(|e| format!("identity.assertion.key: {e}"))?,
    );
    let task = tokio::spawn(a.clone().watch());
    if let Some((_, _, old)) = slot.replace((cfg.clone(), a.clone(), task)) {
        old.abort();
    }
    Ok(Some(a))
}

/// Builds the hot state for `config`.
pub async fn build_runtime(shared: &Shared, config: Arc<Config>) -> Result<Runtime, String> {
    shared.metrics.init_labels(&config);
    let admin_token = match &config.admin.token_file {
        Some(f) => Some(crate::config::read_secret(f)?),
        None => None,
    };
    let mut upstreams = Upstreams::default();
    for (name, u) in &config.upstreams {
        let up = Upstream::new(u, &shared.metrics).map_err(|e| format!("upstream.{name}: {e}"))?;
        upstreams.insert(name.clone(), Arc::new(up));
    }
    let assertions = assertions(shared, &config)?;
    let issuers = issuers(shared, &config).await?;
    let m = &shared.metrics;
    Ok(Runtime {
        route_series: config
            .routes
            .iter()
            .map(|r| RouteSeries::new(m, &r.id))
            .collect(),
        no_route_series: RouteSeries::new(m, "none"),
        allowed: issuers
            .iter()
            .map(|i| {
                m.auth_decisions_total
                    .with_label_values(&[i.id(), "allowed"])
            })
            .collect(),
        routes: RouteTable::new(&config.routes, config.identity.forward_authorization),
        identity: IdentityPlan::new(&config.identity),
        verifier: Arc::new(Verifier::new(
            issuers,
            config.token.cache_entries,
            shared.metrics.clone(),
        )),
        upstreams,
        metrics: shared.metrics.clone(),
        access_log: shared.access_log.clone(),
        revocations: shared.revocations.clone(),
        dpop_replay: shared.dpop_replay.clone(),
        dpop_nonces: shared.dpop_nonces.clone(),
        assertions,
        upgrades: shared.upgrades.clone(),
        admin_token,
        config,
    })
}

/// Swaps configurations in while the gateway serves.
pub struct Reloader {
    pub shared: Arc<Shared>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        shared: Arc<Shared>,
        runtime: Arc<ArcSwap<Runtime>>,
        tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    ) -> Reloader {
        Reloader {
            shared,
            runtime,
            tls,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies a validated configuration. Settings that need a restart
    /// (listen addresses, TLS on or off, the admin listener, revocation
    /// storage) are kept as they are, with a warning.
    pub async fn apply(&self, config: Config) -> Result<(), String> {
        let _one = self.busy.lock().await;
        let old = self.runtime.load_full();
        let result = async {
            let restart_only = [
                ("server.listen", old.config.server.listen != config.server.listen),
                ("server.tls (on or off)", old.config.server.tls.is_some() != config.server.tls.is_some()),
                ("admin.listen", old.config.admin.listen != config.admin.listen),
                ("revocation", format!("{:?}", old.config.revocation) != format!("{:?}", config.revocation)),
                ("server.max_connections", old.config.server.max_connections != config.server.max_connections),
                ("server.workers", old.config.server.workers != config.server.workers),
            ];
            for (what, changed) in restart_only {
                if changed {
                    tracing::warn!("{what} changed: that takes a restart; the rest of the new configuration applies now");
                }
            }
            let tls_config = match (&self.tls, &config.server.tls) {
                (Some(_), Some(t)) => Some(crate::server::tls::server_config(t, config.server.http2)?),
                _ => None,
            };
            let runtime = build_runtime(&self.shared, Arc::new(config)).await?;
            if let (Some(slot), Some(cfg)) = (&self.tls, tls_config) {
                slot.store(cfg);
            }
            self.runtime.store(Arc::new(runtime));
            Ok(())
        }
        .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.shared
            .metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => {
                tracing::error!("configuration reload failed, the old one keeps serving: {e}")
            }
        }
        result
    }

    /// Reads, validates and applies a configuration file.
    pub async fn reload_file(&self, path: &Path) -> Result<(), String> {
        match Config::load(path) {
            Ok(c) => self.apply(c).await,
            Err(problems) => {
                let msg = problems.to_string();
                self.shared
                    .metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                for p in &problems.0 {
                    tracing::error!("configuration reload refused: {p}");
                }
                Err(msg)
            }
        }
    }

    /// Reloads when the configuration file, or a certificate or key it names,
    /// changes. Polls every `every`, so it works on any filesystem and with
    /// the symlink swaps of Kubernetes ConfigMaps and Secrets.
    pub async fn watch(self: Arc<Self>, path: PathBuf, every: Duration) {
        let stamps = |rt: &Runtime| -> Vec<Option<SystemTime>> {
            let mut files: Vec<PathBuf> = vec![path.clone()];
            if let Some(t) = &rt.config.server.tls {
                files.push(t.cert.value.clone());
                files.push(t.key.value.clone());
                files.extend(t.client_ca.as_ref().map(|c| c.value.clone()));
            }
            files
                .iter()
                .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .collect()
        };
        let mut seen = stamps(&self.runtime.load());
        loop {
            tokio::time::sleep(every).await;
            let now = stamps(&self.runtime.load());
            if now != seen {
                tracing::info!("a configuration file changed; reloading");
                let ok = self.reload_file(&path).await.is_ok();
                // Whatever the outcome, wait for the next change.
                seen = if ok {
                    stamps(&self.runtime.load())
                } else {
                    now
                };
            }
        }
    }
}
