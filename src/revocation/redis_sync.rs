//! Sharing revocations between replicas through Redis.
//!
//! Each entry is a Redis key expiring with the entry; each change is also
//! published on a channel, so every replica applies it within milliseconds.
//! A replica resyncs the whole list on every (re)connection and every
//! `RESYNC_EVERY`, merging both ways, so a missed message cannot leave a hole
//! and a Redis that restarted empty gets every entry back from the replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;

use super::entry::{Key, Op};
use super::Revocations;
use crate::config::RedisConfig;
use crate::metrics::Metrics;

const RESYNC_EVERY: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisSync {
    client: redis::Client,
    prefix: String,
    conn: Mutex<Option<MultiplexedConnection>>,
    connected: AtomicBool,
    synced_once: AtomicBool,
    last_error: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

fn redis_key(prefix: &str, key: &Key) -> String {
    match key {
        Key::Jti(j) => format!("{prefix}rev:jti:{}", URL_SAFE_NO_PAD.encode(j)),
        Key::Subject(i, s) => format!(
            "{prefix}rev:sub:{}:{}",
            URL_SAFE_NO_PAD.encode(i),
            URL_SAFE_NO_PAD.encode(s)
        ),
    }
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("Redis {what}: {e}")),
        Err(_) => Err(format!("Redis {what}: no answer within {IO_TIMEOUT:?}")),
    }
}

impl RedisSync {
    pub fn new(cfg: &RedisConfig, metrics: Arc<Metrics>) -> Result<Arc<RedisSync>, String> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| format!("revocation.redis.url: {e}"))?;
        Ok(Arc::new(RedisSync {
            client,
            prefix: cfg.prefix.clone(),
            conn: Mutex::new(None),
            connected: AtomicBool::new(false),
            synced_once: AtomicBool::new(false),
            last_error: Mutex::new(None),
            metrics,
        }))
    }

    fn channel(&self) -> String {
        format!("{}rev:events", self.prefix)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn synced_once(&self) -> bool {
        self.synced_once.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().ok().and_then(|c| c.clone())
    }

    fn failed(&self, e: &str) {
        if self.connected.swap(false, Ordering::AcqRel) {
            tracing::error!("revocation sync lost Redis: {e}; enforcing the last synced list");
        }
        self.metrics.revocation_sync_errors_total.inc();
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }

    /// Writes a change to Redis and announces it to the other replicas.
    pub async fn publish(&self, op: &Op) -> Result<(), String> {
        let mut con = self
            .connection()
            .filter(|_| self.connected())
            .ok_or_else(|| "Redis is unreachable".to_string())?;
        let msg = serde_json::to_string(op).map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Deletions are written as tombstones, not DEL: a replica that missed
        // the deletion must learn of it at its next resync.
        pipe.cmd("SET")
            .arg(redis_key(&self.prefix, &op.key()))
            .arg(&msg)
            .arg("EXAT")
            .arg(op.expires_at().max(1))
            .ignore();
        pipe.cmd("PUBLISH").arg(self.channel()).arg(msg).ignore();
        let r: Result<(), String> = timed("write", pipe.query_async(&mut con)).await;
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    /// Keeps the replica in sync until the gateway stops.
    pub async fn run(self: Arc<Self>, revs: Arc<Revocations>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = std::time::Instant::now();
            if let Err(e) = self.session(&revs).await {
                self.failed(&e);
                if let Ok(mut c) = self.conn.lock() {
                    *c = None;
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(200);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn session(&self, revs: &Arc<Revocations>) -> Result<(), String> {
        let con = timed("connect", self.client.get_multiplexed_async_connection()).await?;
        let mut pubsub = timed("connect", self.client.get_async_pubsub()).await?;
        timed("subscribe", pubsub.subscribe(self.channel())).await?;
        if let Ok(mut c) = self.conn.lock() {
            *c = Some(con.clone());
        }
        self.resync(con.clone(), revs).await?;
        if !self.connected.swap(true, Ordering::AcqRel) {
            tracing::info!("revocation sync with Redis established");
        }
        self.synced_once.store(true, Ordering::Release);
        let mut stream = pubsub.on_message();
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err("Redis closed the subscription".into());
                    };
                    match serde_json::from_slice::<Op>(msg.get_payload_bytes()) {
                        Ok(op) => {
                            let r = revs.clone();
                            let _ = tokio::task::spawn_blocking(move || r.apply_local(vec![op], false)).await;
                        }
                        Err(e) => tracing::warn!("ignoring a malformed revocation message: {e}"),
                    }
                }
                _ = tick.tick() => {
                    self.resync(con.clone(), revs).await?;
                }
            }
        }
    }

    /// Merges both ways: Redis's entries into ours, ours (that Redis lacks or
    /// holds laxer) into Redis.
    async fn resync(
        &self,
        mut con: MultiplexedConnection,
        revs: &Arc<Revocations>,
    ) -> Result<(), String> {
        let pattern = format!("{}rev:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = timed(
                "scan",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut con),
            )
            .await?;
            keys.extend(batch.into_iter().filter(|k| !k.ends_with("rev:events")));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut remote: Vec<Op> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> =
                timed("mget", redis::cmd("MGET").arg(chunk).query_async(&mut con)).await?;
            remote.extend(
                values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str::<Op>(&v).ok()),
            );
        }
        let now = crate::auth::verify::now_unix();
        remote.retain(|op| op.expires_at() > now);
        if !remote.is_empty() {
            let r = revs.clone();
            let ops = remote.clone();
            tokio::task::spawn_blocking(move || r.apply_local(ops, true))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let remote_by_key: std::collections::HashMap<Key, Op> =
            remote.into_iter().map(|op| (op.key(), op)).collect();
        // After the merge above, our record of each key is at least as recent
        // as Redis's; write back every one that differs.
        let missing: Vec<Op> = revs
            .snapshot()
            .into_iter()
            .filter(|op| op.expires_at() > now && remote_by_key.get(&op.key()) != Some(op))
            .collect();
        for chunk in missing.chunks(500) {
            let mut pipe = redis::pipe();
            for op in chunk {
                let value = serde_json::to_string(op).map_err(|x| x.to_string())?;
                pipe.cmd("SET")
                    .arg(redis_key(&self.prefix, &op.key()))
                    .arg(value)
                    .arg("EXAT")
                    .arg(op.expires_at())
                    .ignore();
            }
            timed::<()>("merge", pipe.query_async(&mut con)).await?;
        }
        if !missing.is_empty() {
            tracing::info!(
                entries = missing.len(),
                "merged local revocations into Redis"
            );
        }
        Ok(())
    }
}
