//! Signing tokens for testing (`portcullis token mint`) and for the demo.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Map, Value};

use super::jwk::{default_alg, public_jwk};

/// A signing key and the algorithm and key id tokens get.
pub struct Signer {
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: Option<String>,
}

impl Signer {
    /// From a PEM private key; `alg` defaults from the key type, `kid` to its thumbprint.
    pub fn from_pem(
        pem: &str,
        alg: Option<Algorithm>,
        kid: Option<String>,
    ) -> Result<Signer, String> {
        let pair = KeyPair::from_pem(pem).map_err(|e| format!("not a PEM private key: {e}"))?;
        Self::from_key_pair(&pair, alg, kid)
    }

    pub fn from_key_pair(
        pair: &KeyPair,
        alg: Option<Algorithm>,
        kid: Option<String>,
    ) -> Result<Signer, String> {
        let default = default_alg(pair)?;
        let alg = alg.unwrap_or(default);
        let der = pair.serialize_der();
        let key = match default {
            Algorithm::RS256 => {
                if !matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ) {
                    return Err(format!("an RSA key cannot sign {alg:?}"));
                }
                EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())
                    .map_err(|e| e.to_string())?
            }
            Algorithm::EdDSA => EncodingKey::from_ed_der(&der),
            _ => EncodingKey::from_ec_der(&der),
        };
        if default != Algorithm::RS256 && alg != default {
            return Err(format!("this key signs {default:?}, not {alg:?}"));
        }
        let kid = match kid {
            Some(k) => Some(k),
            None => public_jwk(pair, alg)?
                .get("kid")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        Ok(Signer { key, alg, kid })
    }

    /// From an HMAC secret.
    pub fn from_secret(
        secret: &[u8],
        alg: Algorithm,
        kid: Option<String>,
    ) -> Result<Signer, String> {
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!(
                "a shared secret signs HS256/HS384/HS512, not {alg:?}"
            ));
        }
        Ok(Signer {
            key: EncodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            alg,
            kid,
        })
    }

    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| e.to_string())
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The usual claims of an access token, valid from now for `ttl_secs`.
pub fn claims(iss: &str, aud: &str, sub: &str, ttl_secs: i64) -> Map<String, Value> {
    let now = now() as i64;
    let mut c = Map::new();
    c.insert("iss".into(), iss.into());
    c.insert("aud".into(), aud.into());
    c.insert("sub".into(), sub.into());
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), (now + ttl_secs).into());
    c.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
    c
}

/// `k=v` from the command line: `v` as JSON when it parses, else as a string.
pub fn parse_claim(kv: &str) -> Result<(String, Value), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("--claim {kv}: expected name=value"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.to_string(), value))
}
