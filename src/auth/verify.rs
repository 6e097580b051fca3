//! The JWT checks, and the verified-token cache.
//!
//! The header and payload are parsed here rather than by `jsonwebtoken::decode`
//! so that each failure maps to its own precise reason, the payload is parsed
//! once, and the algorithm used is chosen from the key and the issuer's
//! allowlist, never from the token. `jsonwebtoken` does the signature check.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use moka::sync::Cache;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::digest_key::DigestKey;
use super::doorkeeper::Doorkeeper;
use super::keys::IssuerKeys;
use super::segment;
pub use crate::clock::now_unix;
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

/// The JOSE header members this gateway acts on, read without building a
/// map of all of them (a first-seen token's header cost six allocations).
/// They are judged as a map's would be: of repeated names the last counts,
/// and a member of the wrong type reads as absent or wrong, as before.
#[derive(Default)]
struct JoseHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    typ: Option<Value>,
    crit: bool,
    b64: bool,
}

/// A header member's name; escaped names arrive decoded, as a map's keys would.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum JoseMember {
    Alg,
    Kid,
    Typ,
    Crit,
    B64,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for JoseHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = JoseHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JOSE header object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<JoseHeader, A::Error> {
                let mut h = JoseHeader::default();
                while let Some(member) = m.next_key::<JoseMember>()? {
                    match member {
                        JoseMember::Alg => h.alg = Some(m.next_value()?),
                        JoseMember::Kid => h.kid = Some(m.next_value()?),
                        JoseMember::Typ => h.typ = Some(m.next_value()?),
                        JoseMember::Crit => {
                            m.next_value::<IgnoredAny>()?;
                            h.crit = true;
                        }
                        JoseMember::B64 => {
                            m.next_value::<IgnoredAny>()?;
                            h.b64 = true;
                        }
                        JoseMember::Other => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(Members)
    }
}

/// A cached verification and the token it was made for.
///
/// The cache is keyed by a fast hash of the token under a per-process random
/// seed, not by a cryptographic digest: SHA-256 of a 600-byte token was about
/// 6 % of the CPU of a cached request. A hash match alone proves nothing, so a
/// hit counts only when the whole token is equal; two tokens that share a key
/// (which a client cannot aim for without the seed) cost each other a
/// verification, never an identity.
struct Cached {
    token: Box<str>,
    verified: Arc<Verified>,
}

pub struct Verifier {
    pub issuers: Vec<Arc<IssuerKeys>>,
    cache: Option<Cache<u64, Arc<Cached>, DigestKey>>,
    token_hash: foldhash::quality::RandomState,
    doorkeeper: Option<Doorkeeper>,
    metrics: Arc<Metrics>,
    /// Every token under one cache key, to prove a key match is not a hit.
    #[cfg(test)]
    colliding_keys: bool,
}

struct UntilExp;

impl moka::Expiry<u64, Arc<Cached>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &u64,
        value: &Arc<Cached>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.verified.exp.saturating_sub(now_unix()),
        ))
    }
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
            token_hash: foldhash::quality::RandomState::default(),
            #[cfg(test)]
            colliding_keys: false,
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
        let key = self.cache.as_ref().map(|_| self.cache_key(token));
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            if let Some(c) = cache.get(&key) {
                // A different token under the same key is a miss; its entry stays.
                if *c.token == *token {
                    if self.still_valid(&c.verified) {
                        self.metrics.token_cache_hits_total.inc();
                        return Ok((c.verified.clone(), true));
                    }
                    cache.invalidate(&key);
                }
            }
            self.metrics.token_cache_misses_total.inc();
        }
        let verified = Arc::new(self.verify_uncached(token).await?);
        if let (Some(cache), Some(door), Some(key)) = (&self.cache, &self.doorkeeper, key) {
            if door.seen_before(key) {
                let entry = Cached {
                    token: token.into(),
                    verified: verified.clone(),
                };
                cache.insert(key, Arc::new(entry));
            }
        }
        Ok((verified, false))
    }

    fn cache_key(&self, token: &str) -> u64 {
        #[cfg(test)]
        if self.colliding_keys {
            return 7;
        }
        self.token_hash.hash_one(token.as_bytes())
    }

    /// A cached verification counts only while its key is still in the
    /// issuer's usable set and the token has not expired.
    fn still_valid(&self, v: &Verified) -> bool {
        let Some(issuer) = self.issuers.get(v.issuer) else {
            return false;
        };
        let leeway = issuer.config.leeway.as_secs();
        // Coarse: it can only lag, which keeps a token a tick past its second.
        let now = crate::clock::coarse_unix_secs();
        if now > v.exp.saturating_add(leeway) {
            return false;
        }
        issuer.holds_key(v.key_fingerprint, now)
    }

    pub async fn verify_uncached(&self, token: &str) -> Result<Verified, Failure> {
        let Some((h64, p64, s64)) = segment::split(token) else {
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
        let header: JoseHeader = segment::decode_json(h64)
            .ok_or_else(|| Failure::new(Denial::Malformed("token header is not base64url JSON")))?;
        let alg_name = header.alg.as_ref().and_then(Value::as_str).unwrap_or("");
        let kid = header.kid.as_ref().and_then(Value::as_str);
        let fail = |d: Denial, issuer: Option<usize>| Failure {
            denial: d,
            issuer,
            kid: kid.map(str::to_string),
            alg: Some(alg_name.chars().take(16).collect()),
        };
        if header.crit {
            return Err(fail(
                Denial::Malformed(
                    "token has critical header parameters this gateway does not understand",
                ),
                None,
            ));
        }
        if header.b64 {
            return Err(fail(
                Denial::Malformed("unencoded payloads are not accepted"),
                None,
            ));
        }
        match &header.typ {
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
        let claims: Map<String, Value> = segment::decode_json(p64).ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::jwk::{generate, public_jwk};
    use crate::cli::mint::{claims, Signer};
    use crate::config::Config;

    /// The header reader must judge every header as the map it replaced did.
    #[test]
    fn the_header_is_read_as_a_map_of_it_would_be() {
        let headers = [
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"alg":"none","alg":"RS256","kid":"a","kid":"b"}"#,
            r#"{"\u0061lg":"ES256","k\u0069d":"k\"2","typ":"at+jwt"}"#,
            r#"{"alg":7,"kid":null,"typ":["JWT"],"b64":null,"x":{"y":[1,{"z":2}]}}"#,
            r#"{"alg":"RS256","crit":["exp"],"b64":false}"#,
            r#"{}"#,
        ];
        for text in headers {
            let map: Map<String, Value> = serde_json::from_str(text).unwrap();
            let read: JoseHeader = serde_json::from_str(text).unwrap();
            assert_eq!(read.alg.as_ref(), map.get("alg"), "{text}");
            assert_eq!(read.kid.as_ref(), map.get("kid"), "{text}");
            assert_eq!(read.typ.as_ref(), map.get("typ"), "{text}");
            assert_eq!(read.crit, map.contains_key("crit"), "{text}");
            assert_eq!(read.b64, map.contains_key("b64"), "{text}");
        }
        for not_an_object in ["[1]", r#""alg""#, r#"{"alg":"RS256""#, r#"{"alg":}"#, ""] {
            assert!(
                serde_json::from_str::<JoseHeader>(not_an_object).is_err(),
                "{not_an_object}"
            );
        }
    }

    #[tokio::test]
    async fn a_token_under_another_tokens_cache_key_is_verified_on_its_own() {
        crate::install_crypto_providers();
        let dir = tempfile::tempdir().unwrap();
        let pair = generate(Algorithm::ES256).unwrap();
        let jwk = public_jwk(&pair, Algorithm::ES256).unwrap();
        let kid = jwk["kid"].as_str().map(str::to_string);
        std::fs::write(
            dir.path().join("jwks.json"),
            serde_json::json!({ "keys": [jwk] }).to_string(),
        )
        .unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[[issuer]]\nid = \"t\"\nissuer = \"https://idp.t/\"\njwks_file = \"jwks.json\"\n\
             audiences = [\"t\"]\nalgorithms = [\"ES256\"]\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap_or_else(|p| panic!("{p}"));
        let metrics = Arc::new(Metrics::new());
        let keys = IssuerKeys::new(Arc::new(config.issuers[0].clone()), metrics.clone());
        let client = super::super::fetch::client(None).unwrap();
        keys.load_once(&client).await.expect("keys load");
        let mut verifier = Verifier::new(vec![keys], 100, metrics);
        verifier.colliding_keys = true;

        let signer = Signer::from_key_pair(&pair, Some(Algorithm::ES256), kid).unwrap();
        let alice = signer
            .sign(&claims("https://idp.t/", "t", "alice", 600))
            .unwrap();
        let bob = signer
            .sign(&claims("https://idp.t/", "t", "bob", 600))
            .unwrap();
        // Seen twice, alice's verification is cached under the shared key.
        for _ in 0..2 {
            verifier.verify(&alice).await.unwrap();
        }
        let (v, cached) = verifier.verify(&alice).await.unwrap();
        assert!(cached && v.claim_str("sub") == Some("alice"));

        let (v, cached) = verifier.verify(&bob).await.unwrap();
        assert!(!cached, "bob's token must not be answered by alice's entry");
        assert_eq!(v.claim_str("sub"), Some("bob"));

        // Alice's signature under other claims: a key match, not a hit.
        let (_, rest) = alice.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let (head, _) = bob.rsplit_once('.').unwrap();
        let forged = format!("{head}.{sig}");
        let f = verifier.verify(&forged).await.unwrap_err();
        assert_eq!(f.denial, Denial::BadSignature);
    }
}
