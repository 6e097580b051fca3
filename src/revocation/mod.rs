//! Revocation: entries by `jti` and subject cut-offs, enforced from an
//! in-memory index on the request path, made durable in a local store before
//! they are acknowledged, and shared between replicas through Redis.

pub mod entry;
pub mod index;
pub mod redis_sync;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entry::{Entry, Key, Op};
use index::{jti_hash, subject_hash, Index};
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
    /// The authoritative list, for the admin API, compaction and Redis merges.
    /// Writes take this lock first, then the store's.
    entries: Mutex<BTreeMap<Key, Entry>>,
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
        let mut entries = BTreeMap::new();
        let store = match &cfg.store {
            Some(path) => {
                let (store, ops) = Store::open(path)?;
                for op in ops {
                    apply_op(&mut entries, op);
                }
                Some(store)
            }
            None => None,
        };
        let now = now_unix();
        entries.retain(|_, e: &mut Entry| e.expires_at() > now);
        let r = Arc::new(Revocations {
            index: Index::default(),
            entries: Mutex::new(entries),
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

    fn reindex(&self) {
        if let Ok(e) = self.entries.lock() {
            self.index.rebuild(e.values());
            self.count(&e);
        }
    }

    fn count(&self, e: &BTreeMap<Key, Entry>) {
        let jti = e.keys().filter(|k| matches!(k, Key::Jti(_))).count();
        self.metrics
            .revocations
            .with_label_values(&["jti"])
            .set(jti as i64);
        self.metrics
            .revocations
            .with_label_values(&["sub"])
            .set((e.len() - jti) as i64);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The hot path: is this verified token revoked? `max_lifetime` is its
    /// issuer's, for tokens without `iat`.
    #[inline]
    pub fn is_revoked(&self, v: &Verified, max_lifetime: u64) -> bool {
        let now = now_unix();
        if let Some(jti) = v.claim_str("jti") {
            if self.index.jti_revoked(jti_hash(jti), now) {
                return true;
            }
        }
        if let (Some(iss), Some(sub)) = (v.claim_str("iss"), v.claim_str("sub")) {
            // Without `iat`, a token counts as issued as early as it could have been.
            let iat = v.iat.unwrap_or_else(|| v.exp.saturating_sub(max_lifetime));
            if self.index.subject_revoked(subject_hash(iss, sub), iat, now) {
                return true;
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

    /// Adds an entry and returns once it is durable: fsynced locally, and
    /// written to Redis when configured. Nothing is acknowledged otherwise.
    pub async fn add(self: &Arc<Self>, entry: Entry) -> Result<Entry, RevocationError> {
        let redis = self.redis.clone();
        if let Some(r) = &redis {
            if !r.connected() {
                return Err(RevocationError::Unavailable(
                    "Redis is unreachable: the revocation cannot be shared with the other replicas yet".into(),
                ));
            }
        }
        let me = self.clone();
        let merged =
            tokio::task::spawn_blocking(move || me.apply_local(vec![Op::Add { entry }], true))
                .await
                .map_err(|e| RevocationError::Unavailable(format!("store task failed: {e}")))??;
        let entry = merged
            .into_iter()
            .next()
            .ok_or_else(|| RevocationError::Unavailable("nothing stored".into()))?;
        if let Some(r) = &redis {
            r.publish(&Op::Add {
                entry: entry.clone(),
            })
            .await
            .map_err(RevocationError::Unavailable)?;
        }
        Ok(entry)
    }

    /// Removes an entry; true when it existed.
    pub async fn remove(self: &Arc<Self>, key: Key) -> Result<bool, RevocationError> {
        let redis = self.redis.clone();
        if let Some(r) = &redis {
            if !r.connected() {
                return Err(RevocationError::Unavailable(
                    "Redis is unreachable: the removal cannot be shared with the other replicas yet".into(),
                ));
            }
        }
        let existed = self
            .entries
            .lock()
            .map(|e| e.contains_key(&key))
            .unwrap_or(false);
        let me = self.clone();
        let op = Op::Del { key };
        let op2 = op.clone();
        tokio::task::spawn_blocking(move || me.apply_local(vec![op2], true))
            .await
            .map_err(|e| RevocationError::Unavailable(format!("store task failed: {e}")))??;
        if let Some(r) = &redis {
            r.publish(&op).await.map_err(RevocationError::Unavailable)?;
        }
        Ok(existed)
    }

    /// Applies changes to memory and the store (under one lock, store first).
    /// Returns the entries as stored (merged with any existing ones).
    pub fn apply_local(&self, ops: Vec<Op>, sync: bool) -> Result<Vec<Entry>, RevocationError> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| RevocationError::Unavailable("revocation state lock poisoned".into()))?;
        let mut stored = Vec::new();
        let mut effective = Vec::new();
        for op in ops {
            match op {
                Op::Add { entry } => {
                    let merged = match entries.get(&entry.key()) {
                        Some(old) => old.merge(&entry),
                        None => entry,
                    };
                    if entries.get(&merged.key()) == Some(&merged) {
                        stored.push(merged);
                        continue;
                    }
                    stored.push(merged.clone());
                    effective.push(Op::Add { entry: merged });
                }
                Op::Del { key } => {
                    if entries.contains_key(&key) {
                        effective.push(Op::Del { key });
                    }
                }
            }
        }
        if effective.is_empty() {
            return Ok(stored);
        }
        if let Some(store) = &self.store {
            store.append(&effective, sync).map_err(|e| {
                RevocationError::Unavailable(format!("cannot write the revocation store: {e}"))
            })?;
        }
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        for op in effective {
            match op {
                Op::Add { entry } => {
                    entries.insert(entry.key(), entry.clone());
                    adds.push(entry);
                }
                Op::Del { key } => {
                    entries.remove(&key);
                    dels.push(key);
                }
            }
        }
        self.index.apply(&adds, &dels);
        self.count(&entries);
        Ok(stored)
    }

    /// A page of the list, in key order, after `cursor` (an index into the order).
    pub fn list(&self, offset: usize, limit: usize) -> (Vec<Entry>, usize) {
        let now = now_unix();
        let e = match self.entries.lock() {
            Ok(e) => e,
            Err(_) => return (Vec::new(), 0),
        };
        let live = e.values().filter(|x| x.expires_at() > now);
        let total = e.values().filter(|x| x.expires_at() > now).count();
        (live.skip(offset).take(limit).cloned().collect(), total)
    }

    pub fn snapshot(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries from memory and the index, and compacts the
    /// store when it holds much more than the live list.
    pub fn sweep(&self) {
        let now = now_unix();
        let live = {
            let Ok(mut e) = self.entries.lock() else {
                return;
            };
            let before = e.len();
            e.retain(|_, x| x.expires_at() > now);
            let expired = before - e.len();
            if expired > 0 {
                self.index.rebuild(e.values());
                self.count(&e);
            }
            let Some(store) = &self.store else { return };
            if expired == 0 && store.records() <= 2 * e.len() + 64 {
                return;
            }
            store.begin_compaction();
            e.values().cloned().collect::<Vec<_>>()
        };
        if let Some(store) = &self.store {
            if let Err(err) = store.finish_compaction(&live) {
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

fn apply_op(entries: &mut BTreeMap<Key, Entry>, op: Op) {
    match op {
        Op::Add { entry } => {
            let merged = match entries.get(&entry.key()) {
                Some(old) => old.merge(&entry),
                None => entry,
            };
            entries.insert(merged.key(), merged);
        }
        Op::Del { key } => {
            entries.remove(&key);
        }
    }
}
