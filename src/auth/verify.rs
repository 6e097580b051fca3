//! The JWT checks, and the verified-token cache.
//!
//! The header and payload are parsed here rather than by `jsonwebtoken::decode`
//! so that each failure maps to its own precise reason, the payload is parsed
//! once, and the algorithm used is chosen from the key and the issuer's
//! allowlist, never from the token. `jsonwebtoken` does the signature check.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::digest_key::DigestKey;
use super::doorkeeper::Doorkeeper;
use super::keys::IssuerKeys;
use crate::denial::Denial;
use crate::metrics::Metrics;

/// A token whose signature and claims were checked.
#[derive(Debug)]
pub struct Verified {
    /// Index of the issuer in the verifier's list.
    pub issuer: usize,
    pub claims: Map<String, Value>,
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key_fingerprint: u64,
    pub exp: u64,
    pub iat: Option<u64>,
    /// The identity headers rendered from these claims, kept with the cached
    /// verification so that a repeated token is not rendered again. (A cache
    /// lives and dies with one configuration, and so with one identity plan.)
    pub identity: OnceLock<Vec<(HeaderName, HeaderValue)>>,
}

impl Verified {
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// What the log needs to know about a refused token.
#[derive(Debug)]
pub struct Failure {
    pub denial: Denial,
    pub issuer: Option<usize>,
    pub kid: Option<String>,
    pub alg: Option<String>,
}

impl Failure {
    fn new(denial: Denial) -> Self {
        Failure {
            denial,
            issuer: None,
            kid: None,
            alg: None,
        }
    }
}

pub struct Verifier {
    pub issuers: Vec<Arc<IssuerKeys>>,
    cache: Option<Cache<[u8; 32], Arc<Verified>, DigestKey>>,
    doorkeeper: Option<Doorkeeper>,
    metrics: Arc<Metrics>,
}

struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.exp.saturating_sub(now_unix())))
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                Ok(Some(f as u64))
            } else {
                Err(Denial::Malformed(match name {
                    "exp" => "exp is not a valid NumericDate",
                    "nbf" => "nbf is not a valid NumericDate",
                    _ => "iat is not a valid NumericDate",
                }))
            }
        }
        Some(_) => Err(Denial::Malformed(match name {
            "exp" => "exp is not a number",
            "nbf" => "nbf is not a number",
            _ => "iat is not a number",
        })),
    }
}

/// `typ` values of access tokens (RFC 9068) and plain JWTs; "application/" may be omitted (RFC 7515 4.1.9).
fn typ_accepted(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    let t = t.strip_prefix("application/").unwrap_or(&t);
    t == "jwt" || t == "at+jwt"
}

impl Verifier {
    pub fn new(issuers: Vec<Arc<IssuerKeys>>, cache_entries: u64, metrics: Arc<Metrics>) -> Self {
        let cache = (cache_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(cache_entries)
                .expire_after(UntilExp)
                .build_with_hasher(DigestKey)
        });
        Verifier {
            issuers,
            doorkeeper: cache.as_ref().map(|_| Doorkeeper::for_cache(cache_entries)),
            cache,
            metrics,
        }
    }

    pub fn issuer_id(&self, idx: Option<usize>) -> &str {
        idx.and_then(|i| self.issuers.get(i))
            .map(|i| i.id())
            .unwrap_or("unknown")
    }

    /// Verifies a token; the boolean says whether the cache answered.
    pub async fn verify(&self, token: &str) -> Result<(Arc<Verified>, bool), Failure> {
        let key = self.cache.as_ref().map(|_| {
            let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            d
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(v) = cache.get(key) {
                if self.still_valid(&v) {
                    self.metrics.token_cache_hits_total.inc();
                    return Ok((v, true));
                }
                cache.invalidate(key);
            }
            self.metrics.token_cache_misses_total.inc();
        }
        let verified = Arc::new(self.verify_uncached(token).await?);
        if let (Some(cache), Some(door), Some(key)) = (&self.cache, &self.doorkeeper, key) {
            if door.seen_before(&key) {
                cache.insert(key, verified.clone());
            }
        }
        Ok((verified, false))
    }

    /// A cached verification counts only while its key is still in the
    /// issuer's usable set and the token has not expired.
    fn still_valid(&self, v: &Verified) -> bool {
        let Some(issuer) = self.issuers.get(v.issuer) else {
            return false;
        };
        let leeway = issuer.config.leeway.as_secs();
        if now_unix() > v.exp.saturating_add(leeway) {
            return false;
        }
        issuer
            .current()
            .is_some_and(|k| k.contains(v.key_fingerprint))
    }

    pub async fn verify_uncached(&self, token: &str) -> Result<Verified, Failure> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::new(Denial::Malformed(
                "token is not a JWS compact JWT",
            )));
        };
        // An empty signature is valid syntax (an unsecured JWT): the algorithm
        // check below refuses it under its own name.
        if h64.is_empty() || p64.is_empty() {
            return Err(Failure::new(Denial::Malformed(
                "token is not a JWS compact JWT",
            )));
        }
        let header: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Failure::new(Denial::Malformed("token header is not base64url JSON")))?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        let fail = |d: Denial, issuer: Option<usize>| Failure {
            denial: d,
            issuer,
            kid: kid.map(str::to_string),
            alg: Some(alg_name.chars().take(16).collect()),
        };
        if header.contains_key("crit") {
            return Err(fail(
                Denial::Malformed(
                    "token has critical header parameters this gateway does not understand",
                ),
                None,
            ));
        }
        if header.get("b64").is_some() {
            return Err(fail(
                Denial::Malformed("unencoded payloads are not accepted"),
                None,
            ));
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(t)) if typ_accepted(t) => {}
            Some(_) => {
                return Err(fail(
                    Denial::Malformed("token type is not an access token"),
                    None,
                ))
            }
        }
        let alg: Algorithm = match alg_name.parse() {
            Ok(a) => a,
            Err(_) => return Err(fail(Denial::DisallowedAlg, None)),
        };
        let claims: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(p64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                fail(
                    Denial::Malformed("token payload is not base64url JSON"),
                    None,
                )
            })?;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(idx) = self.issuers.iter().position(|i| i.config.issuer == iss) else {
            return Err(fail(Denial::WrongIssuer, None));
        };
        let issuer = &self.issuers[idx];
        let cfg = &issuer.config;
        if !cfg.algorithms.contains(&alg) {
            return Err(fail(Denial::DisallowedAlg, Some(idx)));
        }
        let Some(mut keys) = issuer.current() else {
            return Err(fail(
                Denial::UnknownKid("signing keys unavailable"),
                Some(idx),
            ));
        };
        if let Some(kid) = kid {
            if !keys.has_kid(kid) {
                if issuer.refetch_for_unknown_kid(kid).await {
                    if let Some(k) = issuer.current() {
                        keys = k;
                    }
                }
                if !keys.has_kid(kid) {
                    return Err(fail(Denial::UnknownKid("unknown key id"), Some(idx)));
                }
            }
        }
        let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        let mut tried = false;
        let mut good = None;
        for key in keys.candidates(kid, alg).take(8) {
            tried = true;
            if key.verify(alg, message, s64) {
                good = Some(key.clone());
                break;
            }
        }
        let Some(key) = good else {
            return Err(fail(
                if tried {
                    Denial::BadSignature
                } else {
                    Denial::DisallowedAlg
                },
                Some(idx),
            ));
        };
        // Claims are judged only once the signature holds.
        let check = || -> Result<(u64, Option<u64>), Denial> {
            let now = now_unix();
            let leeway = cfg.leeway.as_secs();
            let exp = numeric(&claims, "exp")?.ok_or(Denial::Malformed("token has no exp"))?;
            if now > exp.saturating_add(leeway) {
                return Err(Denial::Expired);
            }
            if let Some(nbf) = numeric(&claims, "nbf")? {
                if nbf > now.saturating_add(leeway) {
                    return Err(Denial::NotYetValid);
                }
            }
            let iat = numeric(&claims, "iat")?;
            if let Some(iat) = iat {
                if iat > now.saturating_add(leeway) {
                    return Err(Denial::NotYetValid);
                }
            }
            let aud_ok = match claims.get("aud") {
                Some(Value::String(a)) => cfg.audiences.iter().any(|x| x == a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| cfg.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !aud_ok {
                return Err(Denial::WrongAudience);
            }
            let max = cfg.max_lifetime.as_secs();
            let lifetime = match iat {
                Some(iat) => exp.saturating_sub(iat),
                None => exp.saturating_sub(now),
            };
            if lifetime > max.saturating_add(leeway) {
                return Err(Denial::Malformed(
                    "token lifetime exceeds the issuer's max_lifetime",
                ));
            }
            Ok((exp, iat))
        };
        let (exp, iat) = check().map_err(|d| fail(d, Some(idx)))?;
        Ok(Verified {
            issuer: idx,
            kid: kid.map(str::to_string),
            claims,
            alg,
            key_fingerprint: key.fingerprint,
            exp,
            iat,
            identity: OnceLock::new(),
        })
    }
}
