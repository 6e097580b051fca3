//! Revocation: entries by `jti` and subject cut-offs, enforced from an
//! in-memory index on the request path, made durable in a local store before
//! they are acknowledged, and shared between replicas through Redis.

pub mod entry;
pub mod index;
pub mod redis_sync;
mod state;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entry::{Entry, Key, Op};
use index::{jti_hash, subject_hash, Index};
use state::State;
use store::Store;

use crate::auth::verify::{now_unix, Verified};
use crate::config::{IssuerConfig, RevocationConfig};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The request is wrong; 400.
    #[error("{0}")]
    Invalid(String),
    /// It cannot be made durable or shared right now; 503, nothing acknowledged.
    #[error("{0}")]
    Unavailable(String),
}

/// What an issuer contributes to revocation: its `iss`, id and token lifetime.
#[derive(Debug, Clone)]
struct IssuerLife {
    id: String,
    iss: String,
    max_lifetime: u64,
    leeway: u64,
}

pub struct Revocations {
    index: Index,
    /// The authoritative list (entries and tombstones), for the admin API,
    /// compaction and Redis merges. Writes take this lock first, then the store's.
    state: Mutex<State>,
    store: Option<Store>,
    issuers: Vec<IssuerLife>,
    pub redis: Option<Arc<redis_sync::RedisSync>>,
    metrics: Arc<Metrics>,
    loaded: AtomicBool,
}

/// How often expired entries are swept out of memory, store and API.
const SWEEP_EVERY: Duration = Duration::from_secs(20);

impl Revocations {
    /// Loads the local store (if configured) into memory.
    pub fn open(
        cfg: &RevocationConfig,
        issuers: &[IssuerConfig],
        metrics: Arc<Metrics>,
        redis: Option<Arc<redis_sync::RedisSync>>,
    ) -> Result<Arc<Revocations>, String> {
        let mut state = State::default();
        let store = match &cfg.store {
            Some(path) => {
                let (store, ops) = Store::open(path)?;
                for op in &ops {
                    state.apply(op);
                }
                Some(store)
            }
            None => None,
        };
        state.expire(now_unix());
        let r = Arc::new(Revocations {
            index: Index::default(),
            state: Mutex::new(state),
            store,
            issuers: issuers
                .iter()
                .map(|i| IssuerLife {
                    id: i.id.clone(),
                    iss: i.issuer.clone(),
                    max_lifetime: i.max_lifetime.as_secs(),
                    leeway: i.leeway.as_secs(),
                })
                .collect(),
            redis,
            metrics,
            loaded: AtomicBool::new(true),
        });
        r.reindex();
        Ok(r)
    }

    /// The list as the store holds it, without opening the store for
    /// writing: for `token inspect` beside a serving gateway.
    pub fn open_read_only(
        cfg: &RevocationConfig,
        issuers: &[IssuerConfig],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Revocations>, String> {
        let read_only = RevocationConfig {
            store: None,
            redis: None,
        };
        let r = Self::open(&read_only, issuers, metrics, None)?;
        if let Some(path) = &cfg.store {
            let ops = Store::read(path)?;
            r.apply_local(ops, false).map_err(|e| e.to_string())?;
        }
        Ok(r)
    }

    fn reindex(&self) {
        if let Ok(st) = self.state.lock() {
            self.index.rebuild(st.live());
            self.count(&st);
        }
    }

    fn count(&self, st: &State) {
        let g = &self.metrics.revocations;
        g.with_label_values(&["jti"]).set(st.live_jti as i64);
        g.with_label_values(&["sub"]).set(st.live_sub as i64);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The hot path: is this verified token revoked? `max_lifetime` is its
    /// issuer's, for tokens without `iat`.
    #[inline]
    pub fn is_revoked(&self, v: &Verified, max_lifetime: u64) -> bool {
        let snap = self.index.snapshot();
        if !snap.has_jti() && !snap.has_sub() {
            // Nothing revoked: no clock reading either.
            return false;
        }
        let now = now_unix();
        if snap.has_jti() {
            if let Some(jti) = v.claim_str("jti") {
                if snap.jti_revoked(jti_hash(jti), now) {
                    return true;
                }
            }
        }
        if snap.has_sub() {
            if let (Some(iss), Some(sub)) = (v.claim_str("iss"), v.claim_str("sub")) {
                // Without `iat`, a token counts as issued as early as it could have been.
                let iat = v.iat.unwrap_or_else(|| v.exp.saturating_sub(max_lifetime));
                if snap.subject_revoked(subject_hash(iss, sub), iat, now) {
                    return true;
                }
            }
        }
        false
    }

    fn issuer(&self, iss: &str) -> Option<&IssuerLife> {
        self.issuers.iter().find(|i| i.iss == iss || i.id == iss)
    }

    fn longest_lifetime(&self) -> u64 {
        self.issuers
            .iter()
            .map(|i| i.max_lifetime + i.leeway)
            .max()
            .unwrap_or(24 * 3600)
    }

    /// Turns an API body into an entry, with its defaults and checks.
    pub fn entry_from_request(&self, body: &serde_json::Value) -> Result<Entry, RevocationError> {
        let obj = body
            .as_object()
            .ok_or_else(|| RevocationError::Invalid("the body must be a JSON object".into()))?;
        let str_field = |k: &str| -> Result<Option<String>, RevocationError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 1024 => {
                    Ok(Some(s.clone()))
                }
                Some(_) => Err(RevocationError::Invalid(format!(
                    "\"{k}\" must be a non-empty string of at most 1024 bytes"
                ))),
            }
        };
        let num_field = |k: &str| -> Result<Option<u64>, RevocationError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    RevocationError::Invalid(format!("\"{k}\" must be a unix time in seconds"))
                }),
            }
        };
        for k in obj.keys() {
            if !["jti", "expires_at", "iss", "sub", "not_before"].contains(&k.as_str()) {
                return Err(RevocationError::Invalid(format!("unknown field \"{k}\"")));
            }
        }
        let now = now_unix();
        match (str_field("jti")?, str_field("iss")?, str_field("sub")?) {
            (Some(jti), None, None) => {
                if obj.contains_key("not_before") {
                    return Err(RevocationError::Invalid(
                        "\"not_before\" goes with iss and sub, not jti".into(),
                    ));
                }
                let expires_at = num_field("expires_at")?.unwrap_or(now + self.longest_lifetime());
                if expires_at <= now {
                    return Err(RevocationError::Invalid(
                        "\"expires_at\" is in the past: no token with it can still be valid".into(),
                    ));
                }
                Ok(Entry::Jti { jti, expires_at })
            }
            (None, Some(iss), Some(sub)) => {
                if obj.contains_key("expires_at") {
                    return Err(RevocationError::Invalid(
                        "a subject cut-off expires by itself; \"expires_at\" goes with jti".into(),
                    ));
                }
                let issuer = self.issuer(&iss).ok_or_else(|| {
                    RevocationError::Invalid(format!(
                        "\"{iss}\" is not a configured issuer (its iss or id)"
                    ))
                })?;
                let not_before = num_field("not_before")?.unwrap_or(now);
                let expires_at = not_before + issuer.max_lifetime + issuer.leeway;
                if expires_at <= now {
                    return Err(RevocationError::Invalid(
                        "\"not_before\" is so old that no token it covers can still be valid"
                            .into(),
                    ));
                }
                Ok(Entry::Subject {
                    iss: issuer.iss.clone(),
                    sub,
                    not_before,
                    expires_at,
                })
            }
            _ => Err(RevocationError::Invalid(
                "give either {\"jti\": ...} or {\"iss\": ..., \"sub\": ...}".into(),
            )),
        }
    }

    pub fn key_for_subject(&self, iss: &str, sub: &str) -> Result<Key, RevocationError> {
        let issuer = self.issuer(iss).ok_or_else(|| {
            RevocationError::Invalid(format!("\"{iss}\" is not a configured issuer"))
        })?;
        Ok(Key::Subject(issuer.iss.clone(), sub.to_string()))
    }

    fn check_redis(&self) -> Result<(), RevocationError> {
        match &self.redis {
            Some(r) if !r.connected() => Err(RevocationError::Unavailable(
                "Redis is unreachable: the change cannot be shared with the other replicas yet"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Runs a change through the state and the store on a blocking thread.
    async fn commit(self: &Arc<Self>, op: Op) -> Result<Option<Op>, RevocationError> {
        let me = self.clone();
        let mut done = tokio::task::spawn_blocking(move || me.apply_local(vec![op], true))
            .await
            .map_err(|e| RevocationError::Unavailable(format!("store task failed: {e}")))??;
        Ok(done.pop())
    }

    /// Adds an entry and returns once it is durable: fsynced locally, and
    /// written to Redis when configured. Nothing is acknowledged otherwise.
    pub async fn add(self: &Arc<Self>, entry: Entry) -> Result<Entry, RevocationError> {
        self.check_redis()?;
        let key = entry.key();
        self.commit(Op::Add {
            entry,
            at: now_ms(),
        })
        .await?;
        // The stored record: merged with what was there, possibly stricter.
        let stored = self
            .state
            .lock()
            .ok()
            .and_then(|st| st.records.get(&key).map(|r| r.to_op(&key)))
            .ok_or_else(|| RevocationError::Unavailable("the entry was not stored".into()))?;
        if let Some(r) = &self.redis {
            r.publish(&stored)
                .await
                .map_err(RevocationError::Unavailable)?;
        }
        match stored {
            Op::Add { entry, .. } => Ok(entry),
            Op::Del { .. } => Err(RevocationError::Unavailable(
                "the entry was not stored".into(),
            )),
        }
    }

    /// Removes an entry; false when there was none. The deletion is kept as a
    /// tombstone until the entry would have expired, so that no replica that
    /// missed it can bring the entry back.
    pub async fn remove(self: &Arc<Self>, key: Key) -> Result<bool, RevocationError> {
        self.check_redis()?;
        let expires_at = match self
            .state
            .lock()
            .ok()
            .and_then(|st| st.records.get(&key).cloned())
        {
            Some(state::Record::Live { entry, .. }) => entry.expires_at(),
            _ => return Ok(false),
        };
        let op = Op::Del {
            key,
            at: now_ms(),
            expires_at,
        };
        let Some(done) = self.commit(op).await? else {
            return Ok(false);
        };
        if let Some(r) = &self.redis {
            r.publish(&done)
                .await
                .map_err(RevocationError::Unavailable)?;
        }
        Ok(true)
    }

    /// Applies changes to the state, the store and the index (under one lock,
    /// store before memory). Returns the changes that took effect.
    pub fn apply_local(&self, ops: Vec<Op>, sync: bool) -> Result<Vec<Op>, RevocationError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| RevocationError::Unavailable("revocation state lock poisoned".into()))?;
        // Work out the effect on a copy of the touched records first, so that
        // nothing is in memory that the store refused.
        let mut effective = Vec::new();
        let mut undo = Vec::new();
        for op in &ops {
            let key = op.key();
            let before = st.records.get(&key).cloned();
            if let Some(e) = st.apply(op) {
                undo.push((key, before));
                effective.push(e);
            }
        }
        if effective.is_empty() {
            return Ok(effective);
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.append(&effective, sync) {
                // Nothing stays in memory that the store refused.
                for (key, before) in undo.into_iter().rev() {
                    match before {
                        Some(r) => st.records.insert(key, r),
                        None => st.records.remove(&key),
                    };
                }
                st.recount();
                self.reindex_locked(&st);
                return Err(RevocationError::Unavailable(format!(
                    "cannot write the revocation store: {e}"
                )));
            }
        }
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        for op in &effective {
            match op {
                Op::Add { entry, .. } => adds.push(entry.clone()),
                Op::Del { key, .. } => dels.push(key.clone()),
            }
        }
        self.index.apply(&adds, &dels);
        self.count(&st);
        Ok(effective)
    }

    fn reindex_locked(&self, st: &State) {
        self.index.rebuild(st.live());
        self.count(st);
    }

    /// A page of the live list, in key order.
    pub fn list(&self, offset: usize, limit: usize) -> (Vec<Entry>, usize) {
        let now = now_unix();
        let Ok(st) = self.state.lock() else {
            return (Vec::new(), 0);
        };
        let total = st.live().filter(|x| x.expires_at() > now).count();
        let page = st
            .live()
            .filter(|x| x.expires_at() > now)
            .skip(offset)
            .take(limit)
            .cloned()
            .collect();
        (page, total)
    }

    /// Every record (entries and tombstones) as changes, for Redis merges.
    pub fn snapshot(&self) -> Vec<Op> {
        self.state.lock().map(|st| st.ops()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.state
            .lock()
            .map(|st| st.live_jti + st.live_sub)
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries and tombstones from memory and the index, and
    /// compacts the store when it holds much more than the live list.
    pub fn sweep(&self) {
        let now = now_unix();
        let records = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let expired = st.expire(now);
            if expired > 0 {
                self.reindex_locked(&st);
            }
            let Some(store) = &self.store else {
                return;
            };
            if expired == 0 && store.records() <= 2 * st.records.len() + 64 {
                return;
            }
            store.begin_compaction();
            st.ops()
        };
        if let Some(store) = &self.store {
            if let Err(err) = store.finish_compaction(&records) {
                tracing::error!("revocation store compaction failed: {err}");
            }
        }
    }

    pub async fn sweep_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.sweep()).await;
        }
    }

    pub fn heap_bytes_of_index(&self) -> usize {
        self.index.heap_bytes()
    }
}

/// Unix time in milliseconds, which orders changes to the same key.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
