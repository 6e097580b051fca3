//! DPoP (RFC 9449): proof-of-possession for access tokens bound to a key
//! (`cnf.jkt`). A stolen DPoP-bound token is useless without the private key
//! that signs a fresh proof for each request.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::{public_key, thumbprint};
use super::segment;
use super::verify::now_unix;
use crate::denial::Denial;

/// How far a proof's `iat` may be from now (plus the issuer's leeway).
pub const PROOF_WINDOW: Duration = Duration::from_secs(60);

/// What the request says, to compare the proof's `htm` and `htu` with.
pub struct Target<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub path: &'a str,
}

/// Remembers proof `jti`s for the window, so that each proof is used once.
pub struct ReplayCache {
    seen: Cache<[u8; 32], ()>,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache {
            seen: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(PROOF_WINDOW * 2 + Duration::from_secs(60))
                .build(),
        }
    }
}

impl ReplayCache {
    /// True when this (key, jti) pair is new; records it.
    fn first_use(&self, jkt: &str, jti: &str) -> bool {
        let mut h = Sha256::new();
        h.update(jkt.as_bytes());
        h.update([0]);
        h.update(jti.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        self.seen.entry(key).or_insert(()).is_fresh()
    }
}

const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn bad(why: &'static str) -> Denial {
    Denial::BindingFailed(why)
}

/// `htu` comparison (RFC 9449 4.3 step 9, RFC 3986 6.2.2-6.2.3): scheme and
/// host case-insensitive, default ports dropped, no query or fragment.
fn normalize_url(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = match (scheme.as_str(), uri.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    Some(format!("{scheme}://{host}{port}{path}"))
}

/// Checks one `DPoP` proof for a request carrying `access_token` whose
/// `cnf.jkt` is `jkt`. `nonce`: the nonce the proof must carry, if the issuer
/// demands one (checked by the caller, which knows how nonces are made).
pub fn check_proof(
    proof: &str,
    access_token: &str,
    jkt: &str,
    target: &Target<'_>,
    leeway: Duration,
    replay: &ReplayCache,
) -> Result<Map<String, Value>, Denial> {
    let Some((h64, p64, s64)) = segment::split(proof) else {
        return Err(bad("DPoP proof is not a JWT"));
    };
    let header: Map<String, Value> =
        segment::decode_json(h64).ok_or(bad("DPoP proof header is not base64url JSON"))?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(bad("DPoP proof typ is not dpop+jwt"));
    }
    let alg: Algorithm = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .filter(|a| ASYMMETRIC.contains(a))
        .ok_or(bad("DPoP proof alg is not an asymmetric algorithm"))?;
    let jwk = header.get("jwk").ok_or(bad("DPoP proof has no jwk"))?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|k| jwk.get(k).is_some())
    {
        return Err(bad("DPoP proof jwk contains a private key"));
    }
    let (key, family, _) =
        public_key(jwk).map_err(|_| bad("DPoP proof jwk is not a usable public key"))?;
    if !family.contains(&alg) {
        return Err(bad("DPoP proof alg does not fit its key"));
    }
    let message = &proof.as_bytes()[..h64.len() + 1 + p64.len()];
    if !matches!(
        jsonwebtoken::crypto::verify(s64, message, &key, alg),
        Ok(true)
    ) {
        return Err(bad("DPoP proof signature is invalid"));
    }
    let thumb = thumbprint(jwk).map_err(|_| bad("DPoP proof jwk has no thumbprint"))?;
    if thumb != jkt {
        return Err(bad("DPoP proof key does not match the token's cnf.jkt"));
    }
    let claims: Map<String, Value> =
        segment::decode_json(p64).ok_or(bad("DPoP proof payload is not base64url JSON"))?;
    let s = |k: &str| claims.get(k).and_then(Value::as_str);
    if s("htm") != Some(target.method) {
        return Err(bad("DPoP proof htm does not match the request method"));
    }
    let htu = s("htu").and_then(normalize_url);
    let expected = normalize_url(&format!(
        "{}://{}{}",
        target.scheme, target.host, target.path
    ));
    if htu.is_none() || htu != expected {
        return Err(bad("DPoP proof htu does not match the request URL"));
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(bad("DPoP proof has no iat"))?;
    let now = now_unix();
    let window = (PROOF_WINDOW + leeway).as_secs();
    if iat + window < now || iat > now + leeway.as_secs() {
        return Err(bad("DPoP proof iat is outside the accepted window"));
    }
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()));
    if s("ath") != Some(ath.as_str()) {
        return Err(bad("DPoP proof ath does not match the access token"));
    }
    let jti = s("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(bad("DPoP proof has no jti"))?;
    if !replay.first_use(jkt, jti) {
        return Err(bad("DPoP proof was already used"));
    }
    Ok(claims)
}

/// Stateless server nonces: the time they were made and an HMAC over it.
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
}

impl Default for Nonces {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        // aws-lc's generator fails only if the kernel's does, and then no key
        // this process makes could be trusted either: stopping is right.
        aws_lc_rs::rand::fill(&mut secret).expect("the system random generator works");
        Nonces {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
        }
    }
}

impl Nonces {
    pub fn issue(&self) -> String {
        let t = now_unix().to_be_bytes();
        let tag = aws_lc_rs::hmac::sign(&self.key, &t);
        let mut v = t.to_vec();
        v.extend_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(v)
    }

    /// A nonce this gateway made within the proof window.
    pub fn valid(&self, nonce: &str) -> bool {
        let Ok(v) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if v.len() != 24 {
            return false;
        }
        let (t, tag) = v.split_at(8);
        let expect = aws_lc_rs::hmac::sign(&self.key, t);
        if aws_lc_rs::constant_time::verify_slices_are_equal(tag, &expect.as_ref()[..16]).is_err() {
            return false;
        }
        let made = u64::from_be_bytes(t.try_into().unwrap_or([0; 8]));
        let now = now_unix();
        made <= now + 5 && now - made.min(now) <= PROOF_WINDOW.as_secs() * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_comparison_follows_rfc3986_normalisation() {
        assert_eq!(
            normalize_url("HTTPS://API.example.com:443/a?b=1"),
            normalize_url("https://api.example.com/a")
        );
        assert_ne!(
            normalize_url("https://api.example.com:8443/a"),
            normalize_url("https://api.example.com/a")
        );
    }

    #[test]
    fn nonces_round_trip_and_forgeries_fail() {
        let n = Nonces::default();
        let x = n.issue();
        assert!(n.valid(&x));
        assert!(!Nonces::default().valid(&x));
        assert!(!n.valid("AAAA"));
    }
}
