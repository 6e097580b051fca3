//! Every signature algorithm the gateway accepts verifies end to end: keys from
//! a `jwks_file` and from a `jwks_uri` for the public-key families, and from a
//! `secret_file` for HMAC.
mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use portcullis::cli::mint::{claims, Signer};
use portcullis::config::Config;
use serde_json::{json, Value};

/// The issuer whose keys come from the JWKS server.
const ISS_URI: &str = "https://idp-uri.test.example/";

fn header_of(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

/// The token with one bit of its signature flipped (still valid base64url).
fn flip_signature(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn two_issuer_config(jwks_uri: &str, alg: &str, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[[issuer]]
id = "file"
issuer = "{ISS}"
jwks_file = "jwks.json"
audiences = ["{AUD}"]
algorithms = ["{alg}"]
leeway = "5s"

[[issuer]]
id = "uri"
issuer = "{ISS_URI}"
jwks_uri = "{jwks_uri}"
audiences = ["{AUD}"]
algorithms = ["{alg}"]
leeway = "5s"

[identity]
headers = {{ "X-User-Id" = "sub", "X-Token-Issuer" = "iss" }}

[upstream.app]
endpoints = ["{upstream}"]
connect_timeout = "1s"
response_timeout = "2s"

[[route]]
path_prefix = "/"
upstream = "app"
"#
    )
}

async fn bearer(gw: &portcullis::RunningGateway, token: &str) -> Reply {
    let addr = gw.listen_addrs()[0];
    Client::plain()
        .get(
            &format!("http://{addr}/alg"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}

fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

/// A public-key algorithm, round trip through both key sources. `jwk_alg`:
/// what the published JWK says in `alg` (None: the member is removed).
async fn public_key_round_trip(alg: Algorithm, jwk_alg: Option<&str>) {
    let family = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Algorithm::RS256,
        other => other,
    };
    let mut key = TestKey::new(family);
    if family != alg {
        key.signer = Signer::from_pem(&key.pem, Some(alg), Some(key.kid.clone())).unwrap();
        key.alg = alg;
    }
    match jwk_alg {
        Some(a) => key.jwk["alg"] = json!(a),
        None => {
            key.jwk.as_object_mut().unwrap().remove("alg");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
    let srv = JwksServer::start(jwks(&[&key])).await;
    let up = Upstream::start().await;
    let gw = gateway(
        dir.path(),
        &two_issuer_config(&srv.jwks_url(), &alg_name(alg), &up.url()),
    )
    .await;
    wait_ready(&gw).await;
    assert!(srv.fetches() >= 1, "the jwks_uri was fetched at start");

    // Key from the file.
    let t_file = key.token("alice", json!({}));
    assert_eq!(header_of(&t_file)["alg"], json!(alg_name(alg)));
    let r = bearer(&gw, &t_file).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{alg:?} from jwks_file: {:?}",
        r.body
    );
    assert_eq!(up.last().headers["x-user-id"], "alice");
    assert_eq!(up.last().headers["x-token-issuer"], ISS);

    // Key from the JWKS server.
    let t_uri = key.sign(&claims(ISS_URI, AUD, "bob", 300));
    let r = bearer(&gw, &t_uri).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{alg:?} from jwks_uri: {:?}",
        r.body
    );
    assert_eq!(up.last().headers["x-user-id"], "bob");
    assert_eq!(up.last().headers["x-token-issuer"], ISS_URI);

    // The signature is really checked with this algorithm.
    let seen = up.count();
    for (t, id) in [(&t_file, "file"), (&t_uri, "uri")] {
        let before = metric(
            &gw,
            "portcullis_auth_decisions_total",
            &[("issuer", id), ("result", "bad_signature")],
        )
        .await;
        let r = bearer(&gw, &flip_signature(t)).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{alg:?} tampered ({id})"
        );
        let after = metric(
            &gw,
            "portcullis_auth_decisions_total",
            &[("issuer", id), ("result", "bad_signature")],
        )
        .await;
        assert_eq!(after, before + 1.0, "{alg:?}: bad_signature for {id}");
    }
    assert_eq!(up.count(), seen, "a tampered token reached the upstream");

    for id in ["file", "uri"] {
        let allowed = metric(
            &gw,
            "portcullis_auth_decisions_total",
            &[("issuer", id), ("result", "allowed")],
        )
        .await;
        assert_eq!(allowed, 1.0, "allowed decisions for {id}");
    }
    gw.shutdown().await;
}

/// An HMAC algorithm with a `secret_file` of `len` bytes.
async fn hmac_round_trip(alg: Algorithm, len: usize) {
    let secret: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let other: Vec<u8> = (0..len).map(|i| b'A' + (i % 26) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs.secret"), &secret).unwrap();
    let up = Upstream::start().await;
    let cfg = base_config(
        "secret_file = \"hs.secret\"",
        &up.url(),
        &format!("\"{}\"", alg_name(alg)),
    ) + "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;

    let signer = Signer::from_secret(&secret, alg, None).unwrap();
    let t = signer.sign(&claims(ISS, AUD, "alice", 300)).unwrap();
    assert_eq!(header_of(&t)["alg"], json!(alg_name(alg)));
    let r = bearer(&gw, &t).await;
    assert_eq!(r.status, StatusCode::OK, "{alg:?}: {:?}", r.body);
    assert_eq!(up.last().headers["x-user-id"], "alice");

    let forged = Signer::from_secret(&other, alg, None)
        .unwrap()
        .sign(&claims(ISS, AUD, "mallory", 300))
        .unwrap();
    for bad in [forged, flip_signature(&t)] {
        let r = bearer(&gw, &bad).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{alg:?}: {:?}", r.body);
    }
    assert_eq!(
        metric(
            &gw,
            "portcullis_auth_decisions_total",
            &[("issuer", "main"), ("result", "bad_signature")],
        )
        .await,
        2.0
    );
    assert_eq!(up.count(), 1, "only the valid token reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn rs256_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::RS256, Some("RS256")).await;
}

#[tokio::test]
async fn rs384_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::RS384, Some("RS384")).await;
}

#[tokio::test]
async fn rs512_verifies_with_a_jwk_without_alg() {
    public_key_round_trip(Algorithm::RS512, None).await;
}

#[tokio::test]
async fn ps256_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::PS256, Some("PS256")).await;
}

#[tokio::test]
async fn ps384_verifies_with_a_jwk_without_alg() {
    public_key_round_trip(Algorithm::PS384, None).await;
}

#[tokio::test]
async fn ps512_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::PS512, Some("PS512")).await;
}

#[tokio::test]
async fn es256_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::ES256, Some("ES256")).await;
}

#[tokio::test]
async fn es384_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::ES384, Some("ES384")).await;
}

#[tokio::test]
async fn eddsa_verifies_from_jwks_file_and_jwks_uri() {
    public_key_round_trip(Algorithm::EdDSA, Some("EdDSA")).await;
}

#[tokio::test]
async fn hs256_verifies_with_a_32_byte_secret_file() {
    hmac_round_trip(Algorithm::HS256, 32).await;
}

#[tokio::test]
async fn hs384_verifies_with_a_48_byte_secret_file() {
    hmac_round_trip(Algorithm::HS384, 48).await;
}

#[tokio::test]
async fn hs512_verifies_with_a_64_byte_secret_file() {
    hmac_round_trip(Algorithm::HS512, 64).await;
}

#[tokio::test]
async fn hmac_secret_file_trailing_newline_is_trimmed() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let dir = tempfile::tempdir().unwrap();
    let mut file = secret.clone();
    file.extend_from_slice(b"\r\n");
    std::fs::write(dir.path().join("hs.secret"), &file).unwrap();
    let up = Upstream::start().await;
    let cfg = base_config("secret_file = \"hs.secret\"", &up.url(), "\"HS256\"")
        + "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let t = Signer::from_secret(&secret, Algorithm::HS256, None)
        .unwrap()
        .sign(&claims(ISS, AUD, "alice", 300))
        .unwrap();
    let r = bearer(&gw, &t).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    gw.shutdown().await;
}

#[tokio::test]
async fn hmac_secret_shorter_than_hash_output_is_a_configuration_error() {
    for (alg, len) in [("HS256", 31), ("HS384", 47), ("HS512", 63)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hs.secret"), "k".repeat(len)).unwrap();
        let cfg = base_config(
            "secret_file = \"hs.secret\"",
            "http://127.0.0.1:9",
            &format!("\"{alg}\""),
        ) + "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, cfg).unwrap();
        assert!(
            Config::load(&path).is_err(),
            "{alg} with a {len}-byte secret was accepted"
        );
        // One byte more is enough.
        std::fs::write(dir.path().join("hs.secret"), "k".repeat(len + 1)).unwrap();
        if let Err(p) = Config::load(&path) {
            panic!("{alg} with a {}-byte secret was refused: {p}", len + 1);
        }
    }
}
