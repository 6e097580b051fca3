//! Turning a JWKS document (or a shared secret) into the keys one issuer may
//! verify with. Each key carries the algorithms it may be used with, derived
//! from its own type and the issuer's allowlist, never from a token's header.

use std::sync::Arc;

use aws_lc_rs::signature::ParsedPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::IssuerConfig;

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The key parsed once per algorithm it may verify, so that a signature
    /// check does not rebuild the key (for RSA that costs as much as the check).
    pub parsed: Vec<(Algorithm, ParsedPublicKey)>,
    /// The algorithms this key may verify: its family, narrowed by the JWK's
    /// own `alg` and by the issuer's allowlist.
    pub algorithms: Vec<Algorithm>,
    /// A digest of the public material: the same key keeps the same value
    /// across refreshes, so cached verifications survive them.
    pub fingerprint: u64,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// The keys of one issuer at one moment.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`. A token without
    /// `kid` may be checked against every key of its algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Arc<VerifyKey>> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg)
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => true,
                    (None, _) => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.kid.as_deref().is_none_or(|have| have == kid))
    }

    pub fn contains(&self, fingerprint: u64) -> bool {
        self.keys.iter().any(|k| k.fingerprint == fingerprint)
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".into()))
            .collect()
    }
}

fn family(kty: &str, crv: Option<&str>) -> Result<&'static [Algorithm], String> {
    use Algorithm::*;
    match (kty, crv) {
        ("RSA", _) => Ok(&[RS256, RS384, RS512, PS256, PS384, PS512]),
        ("EC", Some("P-256")) => Ok(&[ES256]),
        ("EC", Some("P-384")) => Ok(&[ES384]),
        ("EC", c) => Err(format!("unsupported curve {c:?}")),
        ("OKP", Some("Ed25519")) => Ok(&[EdDSA]),
        ("OKP", c) => Err(format!("unsupported curve {c:?}")),
        ("oct", _) => Err("symmetric keys are never taken from a JWKS".into()),
        (other, _) => Err(format!("unsupported key type \"{other}\"")),
    }
}

fn digest(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("sha256 is 32 bytes"))
}

fn string<'a>(jwk: &'a Value, name: &str) -> Result<&'a str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing \"{name}\""))
}

/// The verification key of a public JWK, the algorithms its type allows, and
/// a fingerprint of its material. Symmetric (`oct`) keys are refused.
pub fn public_key(jwk: &Value) -> Result<(DecodingKey, &'static [Algorithm], u64), String> {
    public_key_parts(jwk).map(|(k, f, fp, _)| (k, f, fp))
}

/// The verification algorithm aws-lc-rs uses for a JWS algorithm (the same
/// ones jsonwebtoken's aws-lc backend picks).
fn aws_alg(alg: Algorithm) -> Option<&'static dyn aws_lc_rs::signature::VerificationAlgorithm> {
    use aws_lc_rs::signature as s;
    Some(match alg {
        Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &s::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &s::ED25519,
        _ => return None,
    })
}

/// DER of an RSAPublicKey (PKCS#1): SEQUENCE { INTEGER n, INTEGER e }.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn int(out: &mut Vec<u8>, v: &[u8]) {
        let v: &[u8] = {
            let first = v
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(v.len().saturating_sub(1));
            &v[first..]
        };
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    int(&mut body, n);
    int(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend(body);
    out
}

impl VerifyKey {
    /// Checks a signature (raw bytes) over `message` with this key and `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature_b64: &str) -> bool {
        match self.parsed.iter().find(|(a, _)| *a == alg) {
            Some((_, key)) => match super::segment::decode(signature_b64) {
                Some(sig) => key.verify_sig(message, &sig).is_ok(),
                None => false,
            },
            // HMAC keys are shared secrets: jsonwebtoken compares in constant time.
            None => matches!(
                jsonwebtoken::crypto::verify(signature_b64, message, &self.key, alg),
                Ok(true)
            ),
        }
    }
}

/// A JWK's verification key, the algorithms of its family, its fingerprint,
/// and the key parsed for each of those algorithms.
pub type PublicKeyParts = (
    DecodingKey,
    &'static [Algorithm],
    u64,
    Vec<(Algorithm, ParsedPublicKey)>,
);

/// Like [`public_key`], plus the key parsed for each algorithm of its family.
pub fn public_key_parts(jwk: &Value) -> Result<PublicKeyParts, String> {
    let kty = string(jwk, "kty")?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    let family = family(kty, crv)?;
    let b64 = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| format!("\"{s}\" is not base64url"))
    };
    let raw: Vec<u8> = match kty {
        "RSA" => rsa_public_key_der(&b64(string(jwk, "n")?)?, &b64(string(jwk, "e")?)?),
        "EC" => {
            let mut p = vec![4u8];
            p.extend(b64(string(jwk, "x")?)?);
            p.extend(b64(string(jwk, "y")?)?);
            p
        }
        _ => b64(string(jwk, "x")?)?,
    };
    let mut parsed = Vec::with_capacity(family.len());
    for alg in family {
        if let Some(a) = aws_alg(*alg) {
            let k = ParsedPublicKey::new(a, &raw).map_err(|e| format!("key rejected: {e}"))?;
            parsed.push((*alg, k));
        }
    }
    let (key, fingerprint) = match kty {
        "RSA" => {
            let (n, e) = (string(jwk, "n")?, string(jwk, "e")?);
            let bits = base64_len(n) * 8;
            if bits < 2048 {
                return Err(format!(
                    "RSA key of {bits} bits is too short (2048 at least)"
                ));
            }
            let key = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
            (key, digest(&["RSA", n, e]))
        }
        "EC" => {
            let (x, y) = (string(jwk, "x")?, string(jwk, "y")?);
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            (key, digest(&["EC", crv.unwrap_or(""), x, y]))
        }
        _ => {
            let x = string(jwk, "x")?;
            let key = DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?;
            (key, digest(&["OKP", x]))
        }
    };
    Ok((key, family, fingerprint, parsed))
}

fn parse_key(jwk: &Value, issuer: &IssuerConfig) -> Result<Option<VerifyKey>, String> {
    if let Some(u) = jwk.get("use") {
        if u.as_str() != Some("sig") {
            return Ok(None);
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Ok(None);
        }
    }
    let (key, family, fingerprint, parsed) = public_key_parts(jwk)?;
    let wanted: Option<Algorithm> = match jwk.get("alg").and_then(Value::as_str) {
        None => None,
        Some(a) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| format!("unknown alg \"{a}\""))?,
        ),
    };
    let algorithms: Vec<Algorithm> = family
        .iter()
        .copied()
        .filter(|a| issuer.algorithms.contains(a) && wanted.is_none_or(|w| w == *a))
        .collect();
    if algorithms.is_empty() {
        return Ok(None);
    }
    let parsed = parsed
        .into_iter()
        .filter(|(a, _)| algorithms.contains(a))
        .collect();
    Ok(Some(VerifyKey {
        kid: jwk.get("kid").and_then(Value::as_str).map(str::to_string),
        key,
        parsed,
        algorithms,
        fingerprint,
    }))
}

/// Length in bytes of base64url text without padding.
fn base64_len(s: &str) -> usize {
    let s = s.trim_end_matches('=');
    s.len() * 3 / 4
}

/// Parses a JWKS document. A key that cannot be used is logged and skipped, so
/// one bad key does not take the good ones down with it; a document that is not
/// a JWKS at all is an error.
pub fn parse_jwks(body: &[u8], issuer: &IssuerConfig) -> Result<KeySet, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON document: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS: no \"keys\" array")?;
    let mut out = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        match parse_key(jwk, issuer) {
            Ok(Some(k)) => out.push(Arc::new(k)),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                issuer = %issuer.id,
                index = i,
                kid = jwk.get("kid").and_then(|k| k.as_str()).unwrap_or(""),
                "skipping a JWKS key: {e}"
            ),
        }
    }
    Ok(KeySet { keys: out })
}

/// The shortest secret each HMAC algorithm accepts: its hash output.
fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

pub fn check_secret(secret: &[u8], issuer: &IssuerConfig) -> Result<(), String> {
    let need = issuer
        .algorithms
        .iter()
        .map(|a| min_secret_len(*a))
        .max()
        .unwrap_or(32);
    if secret.len() < need {
        return Err(format!(
            "the secret is {} bytes; {:?} needs at least {need} (the hash output size)",
            secret.len(),
            issuer.algorithms
        ));
    }
    Ok(())
}

pub fn secret_keyset(secret: &[u8], issuer: &IssuerConfig) -> Result<KeySet, String> {
    check_secret(secret, issuer)?;
    let key = DecodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    h.update(b"HMAC\0");
    h.update(secret);
    let fp = u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha256 is 32 bytes"));
    Ok(KeySet {
        keys: vec![Arc::new(VerifyKey {
            kid: None,
            key,
            parsed: Vec::new(),
            algorithms: issuer.algorithms.clone(),
            fingerprint: fp,
        })],
    })
}

/// RFC 7638: SHA-256 over the required members, in lexicographic order, no spaces.
pub fn thumbprint(jwk: &Value) -> Result<String, String> {
    let s = |k: &str| {
        jwk.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("JWK lacks \"{k}\""))
    };
    let canonical = match s("kty")? {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        other => return Err(format!("no thumbprint for kty {other}")),
    };
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}
