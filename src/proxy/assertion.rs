//! The signed identity assertion: a short-lived JWT signed by the gateway's own
//! key (ES256 or EdDSA), `aud` = the upstream's name, carrying the verified
//! identity. An upstream that verifies it against the gateway's JWKS (admin
//! `/.well-known/jwks.json`) does not have to trust the network between them.
//!
//! The key file is watched: a new key signs from the moment it appears, and
//! the old public key stays published until the last assertion it signed has
//! expired.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use moka::sync::Cache;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::digest_key::DigestKey;
use crate::auth::policy::claim;
use crate::auth::verify::{now_unix, Verified};
use crate::cli::jwk::{default_alg, public_jwk};
use crate::cli::mint::Signer;
use crate::config::AssertionConfig;

struct ActiveKey {
    signer: Signer,
    jwk: Value,
    stamp: Option<(SystemTime, u64)>,
}

pub struct Assertions {
    cfg: AssertionConfig,
    /// Top-level claim names the identity headers carry; they go in too.
    claims: Vec<String>,
    active: ArcSwap<ActiveKey>,
    /// Public keys that signed assertions still alive: (JWK, unix time until).
    retired: Mutex<Vec<(Value, u64)>>,
    /// Keyed by a digest of a verified token (and the upstream).
    cache: Cache<[u8; 32], (HeaderValue, u64), DigestKey>,
}

/// Reads an ES256 or EdDSA PKCS#8 key; its public JWK's kid is its RFC 7638 thumbprint.
fn load_key(path: &std::path::Path) -> Result<ActiveKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pair = rcgen::KeyPair::from_pem(&pem)
        .map_err(|e| format!("{} is not a PKCS#8 PEM private key: {e}", path.display()))?;
    let alg = default_alg(&pair)?;
    if !matches!(alg, Algorithm::ES256 | Algorithm::EdDSA) {
        return Err(format!(
            "{} is a {alg:?} key; the identity assertion is signed with ES256 (P-256) or EdDSA (Ed25519)",
            path.display()
        ));
    }
    let jwk = public_jwk(&pair, alg)?;
    let kid = jwk["kid"].as_str().map(str::to_string);
    let signer = Signer::from_key_pair(&pair, Some(alg), kid)?;
    Ok(ActiveKey {
        signer,
        jwk,
        stamp: stamp(path),
    })
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Checks a key file for `check` without starting anything.
pub fn check_key(path: &std::path::Path) -> Result<(), String> {
    load_key(path).map(|_| ())
}

impl Assertions {
    pub fn new(cfg: &AssertionConfig, identity_claims: &[String]) -> Result<Assertions, String> {
        let key = load_key(&cfg.key)?;
        let mut claims: Vec<String> = identity_claims
            .iter()
            .map(|c| c.split('.').next().unwrap_or(c).to_string())
            .filter(|c| !["iss", "aud", "exp", "iat", "nbf", "jti", "sub"].contains(&c.as_str()))
            .collect();
        claims.sort();
        claims.dedup();
        Ok(Assertions {
            cfg: cfg.clone(),
            claims,
            active: ArcSwap::from_pointee(key),
            retired: Mutex::new(Vec::new()),
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cfg.ttl / 2)
                .build_with_hasher(DigestKey),
        })
    }

    pub fn header(&self) -> &http::HeaderName {
        &self.cfg.header
    }

    /// The assertion for this identity and upstream, reused while more than
    /// half of its lifetime remains.
    pub fn value(&self, v: &Verified, token: &str, upstream: &str) -> Option<HeaderValue> {
        let mut h = Sha256::new();
        h.update(token.as_bytes());
        h.update([0]);
        h.update(upstream.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        let now = now_unix();
        // Entries live ttl/2 in the cache, so a reused assertion has at least
        // half its life left (or runs to the token's own expiry).
        if let Some((value, exp)) = self.cache.get(&key) {
            if exp > now {
                return Some(value);
            }
        }
        let exp = (now + self.cfg.ttl.as_secs()).min(v.exp);
        let mut c = Map::new();
        c.insert("iss".into(), json!(self.cfg.issuer));
        c.insert("aud".into(), json!(upstream));
        c.insert("iat".into(), json!(now));
        c.insert("exp".into(), json!(exp));
        if let Some(sub) = v.claims.get("sub") {
            c.insert("sub".into(), sub.clone());
        }
        if let Some(iss) = v.claims.get("iss") {
            c.insert("idp".into(), iss.clone());
        }
        for name in &self.claims {
            if let Some(val) = claim(&v.claims, name) {
                c.insert(name.clone(), val.clone());
            }
        }
        let active = self.active.load();
        let token = active.signer.sign(&c).ok()?;
        let value = HeaderValue::from_str(&token).ok()?;
        self.cache.insert(key, (value.clone(), exp));
        Some(value)
    }

    /// The public keys an upstream should accept now.
    pub fn jwks(&self) -> Value {
        let now = now_unix();
        let mut keys = vec![self.active.load().jwk.clone()];
        if let Ok(mut r) = self.retired.lock() {
            r.retain(|(_, until)| *until > now);
            keys.extend(r.iter().map(|(k, _)| k.clone()));
        }
        json!({ "keys": keys })
    }

    /// Watches the key file and rotates to a new key when it changes.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now_stamp = stamp(&self.cfg.key);
            if now_stamp.is_none() || now_stamp == self.active.load().stamp {
                continue;
            }
            match load_key(&self.cfg.key) {
                Ok(next) => {
                    let old = self.active.swap(Arc::new(next));
                    let until = now_unix() + self.cfg.ttl.as_secs() + 5;
                    if let Ok(mut r) = self.retired.lock() {
                        r.push((old.jwk.clone(), until));
                    }
                    self.cache.invalidate_all();
                    tracing::info!(
                        kid = self.active.load().jwk["kid"].as_str().unwrap_or(""),
                        "identity assertion key rotated; the old key stays published until its assertions expire"
                    );
                }
                Err(e) => tracing::error!("identity assertion key not rotated: {e}"),
            }
        }
    }
}
