//! Key sets per issuer and their life cycle: loaded at start, refreshed in the
//! background (honouring `Cache-Control: max-age` within [min_refresh, refresh]),
//! kept through identity-provider outages for `stale_for`, refetched at most
//! once per `min_refresh` when a token names an unknown `kid`. Requests read
//! the current set through an atomic pointer and never wait on I/O, except for
//! that one rate-limited refetch, which all requests needing it share.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::fetch;
use super::jwks::{parse_jwks, secret_keyset, KeySet};
use crate::clock::now_unix;
use crate::config::{IssuerConfig, KeySource};
use crate::metrics::Metrics;

pub struct IssuerKeys {
    pub config: Arc<IssuerConfig>,
    current: ArcSwapOption<KeySet>,
    /// Unix seconds of the last successful load; 0 before the first.
    last_success: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    loaded_once: AtomicBool,
    /// Wakes the refresher early for an unknown `kid`.
    refetch: Notify,
    /// Milliseconds since `epoch` of the last fetch start, for `min_refresh`.
    last_fetch_ms: AtomicU64,
    epoch: Instant,
    /// Bumped after every fetch attempt; unknown-kid waiters watch it.
    generation: watch::Sender<u64>,
    /// A fetch is under way; unknown-kid requests wait for it.
    fetching: AtomicBool,
    /// Kids that a refetch did not find, until the next successful load.
    unknown_kids: std::sync::Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
}

/// Bounds the negative kid memory; past it the `min_refresh` limit still holds.
const MAX_UNKNOWN_KIDS: usize = 4096;

impl IssuerKeys {
    pub fn new(config: Arc<IssuerConfig>, metrics: Arc<Metrics>) -> Arc<IssuerKeys> {
        let (generation, _) = watch::channel(0);
        Arc::new(IssuerKeys {
            config,
            current: ArcSwapOption::empty(),
            last_success: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
            loaded_once: AtomicBool::new(false),
            refetch: Notify::new(),
            last_fetch_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            generation,
            fetching: AtomicBool::new(false),
            unknown_kids: std::sync::Mutex::new(HashSet::new()),
            metrics,
        })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The usable keys, or `None` before the first load and after `stale_for`
    /// (checked here too, so that a fetch hanging past it cannot extend the keys' life).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        if self.is_stale() {
            return None;
        }
        self.current.load_full()
    }

    pub fn has_keys(&self) -> bool {
        !self.is_stale()
            && self
                .current
                .load()
                .as_ref()
                .is_some_and(|k| !k.keys.is_empty())
    }

    fn is_stale(&self) -> bool {
        self.stale_at(now_unix)
    }

    /// Whether the keys are past `stale_for` at `now` (unix seconds, asked
    /// only for keys fetched from a URL).
    fn stale_at(&self, now: impl FnOnce() -> u64) -> bool {
        if matches!(
            self.config.keys,
            KeySource::Secret(_) | KeySource::JwksFile(_)
        ) {
            return false;
        }
        let last = self.last_success.load(Ordering::Acquire);
        last != 0 && now().saturating_sub(last) >= self.config.stale_for.as_secs()
    }

    /// Whether the key with this fingerprint is still usable at `now` (unix
    /// seconds): what a cached verification asks on every hit, answered
    /// without taking a reference to the key set or reading the clock again.
    pub fn holds_key(&self, fingerprint: u64, now: u64) -> bool {
        !self.stale_at(|| now)
            && self
                .current
                .load()
                .as_ref()
                .is_some_and(|k| k.contains(fingerprint))
    }

    pub fn loaded_once(&self) -> bool {
        self.loaded_once.load(Ordering::Acquire)
    }

    pub fn last_success_unix(&self) -> u64 {
        self.last_success.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn since_epoch_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks for a refetch because a token named an unknown `kid`, and waits
    /// for it (bounded by `fetch_timeout`). Returns at once when a fetch
    /// happened less than `min_refresh` ago: a flood of made-up kids costs the
    /// identity provider at most one request per `min_refresh`.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> bool {
        if matches!(
            self.config.keys,
            KeySource::Secret(_) | KeySource::JwksFile(_)
        ) {
            return false;
        }
        if self
            .unknown_kids
            .lock()
            .map(|k| k.contains(kid))
            .unwrap_or(false)
        {
            return false;
        }
        let mut rx = self.generation.subscribe();
        rx.borrow_and_update();
        // A fetch under way is shared: wait for it rather than refuse.
        if !self.fetching.load(Ordering::Acquire) {
            let last = self.last_fetch_ms.load(Ordering::Acquire);
            let min = self.config.min_refresh.as_millis() as u64;
            if self.since_epoch_ms().saturating_sub(last) < min {
                return false;
            }
            self.refetch.notify_one();
        }
        let fetched = tokio::time::timeout(
            self.config.fetch_timeout + Duration::from_millis(500),
            rx.changed(),
        )
        .await
        .is_ok();
        let found = self.current().is_some_and(|k| k.has_kid(kid));
        if !found {
            // Remembered until the next successful refresh, so that the same
            // made-up kid never asks the identity provider twice.
            if let Ok(mut k) = self.unknown_kids.lock() {
                if k.len() < MAX_UNKNOWN_KIDS {
                    k.insert(kid.to_string());
                }
            }
        }
        fetched && found
    }

    fn install(&self, set: KeySet) {
        let n = set.keys.len() as i64;
        let now = now_unix();
        self.current.store(Some(Arc::new(set)));
        if let Ok(mut k) = self.unknown_kids.lock() {
            k.clear();
        }
        self.last_success.store(now, Ordering::Release);
        self.loaded_once.store(true, Ordering::Release);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        let id = [self.config.id.as_str()];
        self.metrics.jwks_keys.with_label_values(&id).set(n);
        self.metrics
            .jwks_last_success_timestamp_seconds
            .with_label_values(&id)
            .set(now as i64);
        self.metrics
            .jwks_refresh_total
            .with_label_values(&[self.config.id.as_str(), "ok"])
            .inc();
    }

    fn failed(&self, error: String) {
        tracing::warn!(issuer = %self.config.id, "key refresh failed: {error}");
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
        self.metrics
            .jwks_refresh_total
            .with_label_values(&[self.config.id.as_str(), "error"])
            .inc();
        self.drop_if_stale();
    }

    /// Past `stale_for` since the last success, the keys are no longer trusted.
    fn drop_if_stale(&self) {
        let last = self.last_success.load(Ordering::Acquire);
        if last == 0 || self.current.load().is_none() {
            return;
        }
        if now_unix().saturating_sub(last) >= self.config.stale_for.as_secs() {
            tracing::error!(
                issuer = %self.config.id,
                "keys are older than stale_for; refusing this issuer's tokens until a fetch succeeds"
            );
            self.current.store(None);
            self.metrics
                .jwks_keys
                .with_label_values(&[self.config.id.as_str()])
                .set(0);
        }
    }

    /// Time left until the current keys pass `stale_for`, so that the refresher
    /// wakes up to drop them even while backing off.
    fn until_stale(&self) -> Duration {
        let last = self.last_success.load(Ordering::Acquire);
        if last == 0 || self.current.load().is_none() {
            return Duration::MAX;
        }
        let stale_at = last.saturating_add(self.config.stale_for.as_secs());
        Duration::from_secs(stale_at.saturating_sub(now_unix())).max(Duration::from_millis(100))
    }

    /// One load attempt. Returns how long the answer may be cached, if it said.
    pub async fn load_once(&self, client: &fetch::HttpsClient) -> Result<Option<Duration>, String> {
        self.last_fetch_ms
            .store(self.since_epoch_ms(), Ordering::Release);
        self.fetching.store(true, Ordering::Release);
        let cfg = &self.config;
        let result: Result<(KeySet, Option<Duration>), String> = async {
            match &cfg.keys {
                KeySource::JwksFile(f) => {
                    let body = tokio::fs::read(&f.value)
                        .await
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                    Ok((parse_jwks(&body, cfg)?, None))
                }
                KeySource::Secret(f) => {
                    let secret = crate::config::read_secret(f)?;
                    Ok((secret_keyset(&secret, cfg)?, None))
                }
                KeySource::JwksUri(u) => {
                    let got = fetch::get(client, u, cfg.fetch_timeout).await?;
                    Ok((parse_jwks(&got.body, cfg)?, got.max_age))
                }
                KeySource::Discovery => {
                    let uri = fetch::discover(client, &cfg.issuer, cfg.fetch_timeout).await?;
                    let got = fetch::get(client, &uri, cfg.fetch_timeout).await?;
                    Ok((parse_jwks(&got.body, cfg)?, got.max_age))
                }
            }
        }
        .await;
        let outcome = match result {
            Ok((set, max_age)) if !set.keys.is_empty() => {
                self.install(set);
                Ok(max_age)
            }
            Ok(_) => {
                let e = "the key set has no key usable with this issuer's algorithms".to_string();
                self.failed(e.clone());
                Err(e)
            }
            Err(e) => {
                self.failed(e.clone());
                Err(e)
            }
        };
        self.fetching.store(false, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
        outcome
    }

    /// The background refresher: runs until the gateway stops.
    pub async fn refresh_loop(
        self: Arc<Self>,
        client: Arc<fetch::HttpsClient>,
        first: Result<Option<Duration>, String>,
    ) {
        let cfg = self.config.clone();
        let file_based = matches!(cfg.keys, KeySource::JwksFile(_) | KeySource::Secret(_));
        let mut backoff = Duration::from_secs(1);
        let mut last = first;
        let mut stamp_seen = file_stamp(&cfg).await;
        loop {
            let wait = match &last {
                Ok(max_age) => {
                    backoff = Duration::from_secs(1);
                    max_age
                        .unwrap_or(cfg.refresh)
                        .clamp(cfg.min_refresh, cfg.refresh)
                }
                Err(_) => {
                    let w = backoff.min(cfg.refresh);
                    backoff = (backoff * 2).min(cfg.refresh);
                    w
                }
            };
            if file_based {
                // Files are cheap to look at: reload as soon as they change.
                let deadline = Instant::now() + wait;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let stamp = file_stamp(&cfg).await;
                    if stamp != stamp_seen || Instant::now() >= deadline {
                        stamp_seen = stamp;
                        break;
                    }
                }
            } else {
                let due = tokio::time::Instant::now() + wait.min(self.until_stale());
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => break,
                        _ = self.refetch.notified() => {
                            // Requests may have asked more than once while the
                            // last fetch ran; one fetch per min_refresh is all they get.
                            let since = self
                                .since_epoch_ms()
                                .saturating_sub(self.last_fetch_ms.load(Ordering::Acquire));
                            if since >= cfg.min_refresh.as_millis() as u64 {
                                break;
                            }
                        }
                    }
                }
            }
            self.drop_if_stale();
            last = self.load_once(&client).await;
        }
    }
}

async fn file_stamp(cfg: &IssuerConfig) -> Option<(SystemTime, u64)> {
    let path = match &cfg.keys {
        KeySource::JwksFile(f) | KeySource::Secret(f) => &f.value,
        _ => return None,
    };
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
