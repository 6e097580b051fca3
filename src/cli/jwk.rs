//! Key pairs and their public JWKs, with RFC 7638 thumbprints as key ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use rcgen::{KeyPair, SignatureAlgorithm};
use serde_json::{json, Value};

pub use crate::auth::jwks::thumbprint;

/// The algorithms `keygen` can make keys for.
pub const KEYGEN_ALGS: &[&str] = &["RS256", "PS256", "ES256", "ES384", "EdDSA"];

fn rcgen_alg(alg: Algorithm) -> Result<&'static SignatureAlgorithm, String> {
    use Algorithm::*;
    Ok(match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => &rcgen::PKCS_RSA_SHA256,
        ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        EdDSA => &rcgen::PKCS_ED25519,
        other => return Err(format!("{other:?} keys are shared secrets, not key pairs")),
    })
}

/// Generates a private key for `alg`.
pub fn generate(alg: Algorithm) -> Result<KeyPair, String> {
    KeyPair::generate_for(rcgen_alg(alg)?).map_err(|e| format!("key generation failed: {e}"))
}

/// The algorithm a key is used with by default: RS256 for RSA, by curve otherwise.
pub fn default_alg(key: &KeyPair) -> Result<Algorithm, String> {
    let a = key.algorithm();
    if a == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(Algorithm::ES256)
    } else if a == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(Algorithm::ES384)
    } else if a == &rcgen::PKCS_ED25519 {
        Ok(Algorithm::EdDSA)
    } else if a == &rcgen::PKCS_RSA_SHA256
        || a == &rcgen::PKCS_RSA_SHA384
        || a == &rcgen::PKCS_RSA_SHA512
    {
        Ok(Algorithm::RS256)
    } else {
        Err("unsupported key type".into())
    }
}

/// Reads the DER of an RSAPublicKey (PKCS#1): SEQUENCE { n INTEGER, e INTEGER }.
fn rsa_components(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    fn read_len(b: &[u8], i: &mut usize) -> Option<usize> {
        let first = *b.get(*i)?;
        *i += 1;
        if first < 0x80 {
            return Some(first as usize);
        }
        let n = (first & 0x7f) as usize;
        let mut len = 0usize;
        for _ in 0..n {
            len = (len << 8) | *b.get(*i)? as usize;
            *i += 1;
        }
        Some(len)
    }
    fn read_int(b: &[u8], i: &mut usize) -> Option<Vec<u8>> {
        if *b.get(*i)? != 0x02 {
            return None;
        }
        *i += 1;
        let len = read_len(b, i)?;
        let mut v = b.get(*i..*i + len)?.to_vec();
        *i += len;
        while v.len() > 1 && v[0] == 0 {
            v.remove(0);
        }
        Some(v)
    }
    let parse = || {
        let mut i = 0;
        if *der.first()? != 0x30 {
            return None;
        }
        i += 1;
        read_len(der, &mut i)?;
        let n = read_int(der, &mut i)?;
        let e = read_int(der, &mut i)?;
        Some((n, e))
    };
    parse().ok_or_else(|| "cannot read the RSA public key".to_string())
}

/// The public JWK of a key pair, for `alg`, with `kid` = RFC 7638 thumbprint.
pub fn public_jwk(key: &KeyPair, alg: Algorithm) -> Result<Value, String> {
    let raw = key.public_key_raw();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let mut jwk = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let (crv, n) = if alg == Algorithm::ES256 {
                ("P-256", 32)
            } else {
                ("P-384", 48)
            };
            if raw.len() != 1 + 2 * n || raw[0] != 4 {
                return Err("unexpected EC public key encoding".into());
            }
            json!({"kty": "EC", "crv": crv, "x": b64(&raw[1..1 + n]), "y": b64(&raw[1 + n..])})
        }
        Algorithm::EdDSA => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}),
        _ => {
            let (n, e) = rsa_components(raw)?;
            json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)})
        }
    };
    let kid = thumbprint(&jwk)?;
    let obj = jwk.as_object_mut().ok_or("jwk is an object")?;
    obj.insert("kid".into(), json!(kid));
    obj.insert("use".into(), json!("sig"));
    obj.insert("alg".into(), json!(format!("{alg:?}")));
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // The example key of RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_have_public_jwks() {
        for alg in [
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let k = generate(alg).unwrap();
            let jwk = public_jwk(&k, alg).unwrap();
            assert_eq!(jwk["kid"].as_str().unwrap(), thumbprint(&jwk).unwrap());
        }
    }
}
