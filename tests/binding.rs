//! Sender-constrained tokens over the TLS listener: DPoP (RFC 9449) proofs and
//! server nonces, certificate-bound tokens (RFC 8705) over mutual TLS, and
//! `require_bound_token`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::RunningGateway;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- helpers

const ROUTES: &str = r#"
[[route]]
id = "api"
path_prefix = "/api"
upstream = "app"
auth = "required"

[[route]]
id = "bound"
path_prefix = "/bound"
upstream = "app"
auth = "required"
require_bound_token = true
"#;

/// A TLS gateway for issuer "main" (`key`) with one recording upstream.
struct Env {
    _dir: TempDir,
    key: TestKey,
    certs: Certs,
    up: Upstream,
    gw: RunningGateway,
    addr: SocketAddr,
}

impl Env {
    /// `tls_extra`: more members of the `[server] tls` table (mTLS);
    /// `issuer_extra`: more lines in the `[[issuer]]` table.
    async fn start(tls_extra: &str, issuer_extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::new(Algorithm::ES256);
        std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
        let certs = Certs::new(dir.path());
        let up = Upstream::start().await;
        let base = base_config("jwks_file = \"jwks.json\"", &up.url(), "\"ES256\"");
        let cfg =
            base.replacen(
                "[server]\n",
                &format!(
                    "[server]\ntls = {{ cert = \"server.crt\", key = \"server.key\"{tls_extra} }}\n"
                ),
                1,
            )
            .replacen(
                "leeway = \"5s\"\n",
                &format!("leeway = \"5s\"\n{issuer_extra}\n"),
                1,
            ) + ROUTES;
        assert!(cfg.contains("tls = {") && cfg.contains(issuer_extra));
        let gw = gateway(dir.path(), &cfg).await;
        wait_ready(&gw).await;
        let addr = gw.listen_addrs()[0];
        Env {
            _dir: dir,
            key,
            certs,
            up,
            gw,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    fn client(&self) -> Client {
        Client::tls(&self.certs.ca_pem, false)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.client().get(&self.url(path), headers).await
    }

    async fn binding_failed(&self) -> f64 {
        metric(
            &self.gw,
            "portcullis_auth_decisions_total",
            &[("issuer", "main"), ("result", "binding_failed")],
        )
        .await
    }

    async fn handshake_errors(&self) -> f64 {
        metric(&self.gw, "portcullis_tls_handshake_errors_total", &[]).await
    }

    async fn shutdown(self) {
        self.gw.shutdown().await;
    }
}

fn now() -> i64 {
    portcullis::cli::mint::now() as i64
}

fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The public JWK of `k` as a proof embeds it (no kid, use or alg).
fn bare_jwk(k: &TestKey) -> Value {
    let mut jwk = k.jwk.clone();
    let o = jwk.as_object_mut().unwrap();
    for m in ["kid", "use", "alg"] {
        o.remove(m);
    }
    jwk
}

fn jkt(k: &TestKey) -> String {
    portcullis::cli::jwk::thumbprint(&k.jwk).unwrap()
}

/// Signs `header.payload` with `key`/`alg` (the signature part is base64url).
fn compact(header: &Value, payload: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

/// The claims of a fresh, correct proof for `method url` carrying `token`.
fn proof_claims(method: &str, url: &str, token: &str) -> Value {
    json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": method,
        "htu": url,
        "iat": now(),
        "ath": ath(token),
    })
}

fn proof_header(k: &TestKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": bare_jwk(k)})
}

/// A DPoP proof made and signed by `k` with these claims.
fn proof_with(k: &TestKey, claims: &Value) -> String {
    compact(&proof_header(k), claims, &k.signer.key, k.signer.alg)
}

/// A correct proof by `k` for `method url` carrying `token`.
fn proof(k: &TestKey, method: &str, url: &str, token: &str) -> String {
    proof_with(k, &proof_claims(method, url, token))
}

fn dpop_auth(t: &str) -> String {
    format!("DPoP {t}")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Asserts a 401 counted as `binding_failed` that did not reach the upstream.
async fn assert_binding_failed(env: &Env, what: &str, r: &Reply, before: (usize, f64)) {
    assert_eq!(r.status, 401, "{what}: {:?}", r.body);
    assert_eq!(r.json()["error"], "invalid_token", "{what}: {:?}", r.body);
    assert!(
        r.www_authenticate().contains(r#"error="invalid_token""#),
        "{what}: {}",
        r.www_authenticate()
    );
    assert_eq!(env.up.count(), before.0, "{what}: reached the upstream");
    assert_eq!(
        env.binding_failed().await,
        before.1 + 1.0,
        "{what}: not counted as binding_failed"
    );
}

async fn counters(env: &Env) -> (usize, f64) {
    (env.up.count(), env.binding_failed().await)
}

// ---------------------------------------------------------------- 6. DPoP

#[tokio::test]
async fn a_dpop_bound_token_with_a_valid_proof_is_forwarded() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let url = env.url("/api/orders");

    let p = proof(&pk, "GET", &url, &t);
    let r = env
        .get(
            "/api/orders",
            &[("authorization", &dpop_auth(&t)), ("dpop", &p)],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.count(), 1);
    let seen = env.up.last();
    assert_eq!(
        seen.headers.get("x-user-id").map(|v| v.to_str().unwrap()),
        Some("alice")
    );
    assert!(
        seen.headers.get("dpop").is_none() && seen.headers.get("authorization").is_none(),
        "the proof or token was forwarded: {:?}",
        seen.headers
    );

    // Each request gets its own proof; a POST with a query string is fine
    // (htu carries no query), and the token itself may be reused.
    let p = proof(&pk, "POST", &env.url("/api/orders"), &t);
    let r = env
        .client()
        .request(
            "POST",
            &env.url("/api/orders?page=2"),
            &[("authorization", &dpop_auth(&t)), ("dpop", &p)],
            b"{}",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Over h2 (the URL comes from :authority).
    let p = proof(&pk, "GET", &url, &t);
    let r = Client::tls(&env.certs.ca_pem, true)
        .get(&url, &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.count(), 3);
    env.shutdown().await;
}

#[tokio::test]
async fn a_replayed_dpop_proof_is_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let p = proof(&pk, "GET", &env.url("/api/x"), &t);
    let h = [("authorization", dpop_auth(&t)), ("dpop", p)];
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let r = env.get("/api/x", &h).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let before = counters(&env).await;
    let r = env.get("/api/x", &h).await;
    assert_binding_failed(&env, "replayed proof", &r, before).await;

    // Also on a new connection.
    let before = counters(&env).await;
    let r = Client::tls(&env.certs.ca_pem, false)
        .get(&env.url("/api/x"), &h)
        .await;
    assert_binding_failed(&env, "replayed proof, new connection", &r, before).await;
    env.shutdown().await;
}

#[tokio::test]
async fn dpop_proofs_for_another_url_or_method_are_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let port = env.addr.port();
    let cases = [
        (
            "other path",
            "GET",
            format!("https://127.0.0.1:{port}/api/y"),
        ),
        (
            "other port",
            "GET",
            format!("https://127.0.0.1:{}/api/x", port ^ 1),
        ),
        ("default port", "GET", "https://127.0.0.1/api/x".to_string()),
        (
            "other scheme",
            "GET",
            format!("http://127.0.0.1:{port}/api/x"),
        ),
        (
            "other host",
            "GET",
            format!("https://localhost:{port}/api/x"),
        ),
        (
            "wrong htm",
            "POST",
            format!("https://127.0.0.1:{port}/api/x"),
        ),
        (
            "lower-case htm",
            "get",
            format!("https://127.0.0.1:{port}/api/x"),
        ),
    ];
    for (what, method, htu) in cases {
        let before = counters(&env).await;
        let p = proof(&pk, method, &htu, &t);
        let r = env
            .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
            .await;
        assert_binding_failed(&env, what, &r, before).await;
    }

    // Normalisation that RFC 9449 allows: case of scheme and host, no query.
    let p = proof(
        &pk,
        "GET",
        &format!("HTTPS://127.0.0.1:{port}/api/x?q=1"),
        &t,
    );
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    env.shutdown().await;
}

#[tokio::test]
async fn dpop_proofs_with_a_stale_or_future_iat_are_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let url = env.url("/api/x");
    for (what, iat) in [
        ("stale iat", json!(now() - 300)),
        ("future iat", json!(now() + 300)),
        ("iat two minutes ahead", json!(now() + 120)),
        ("no iat", Value::Null),
        ("string iat", json!(now().to_string())),
    ] {
        let mut c = proof_claims("GET", &url, &t);
        if iat.is_null() {
            c.as_object_mut().unwrap().remove("iat");
        } else {
            c["iat"] = iat;
        }
        let before = counters(&env).await;
        let p = proof_with(&pk, &c);
        let r = env
            .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
            .await;
        assert_binding_failed(&env, what, &r, before).await;
    }

    // Within the window (a few seconds old) is fine.
    let mut c = proof_claims("GET", &url, &t);
    c["iat"] = json!(now() - 10);
    let p = proof_with(&pk, &c);
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    env.shutdown().await;
}

#[tokio::test]
async fn a_dpop_bound_token_needs_exactly_one_proof_header() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let url = env.url("/api/x");

    let before = counters(&env).await;
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t))])
        .await;
    assert_binding_failed(&env, "missing DPoP header", &r, before).await;

    let before = counters(&env).await;
    let (p1, p2) = (proof(&pk, "GET", &url, &t), proof(&pk, "GET", &url, &t));
    let r = env
        .get(
            "/api/x",
            &[
                ("authorization", &dpop_auth(&t)),
                ("dpop", &p1),
                ("dpop", &p2),
            ],
        )
        .await;
    assert_binding_failed(&env, "two DPoP headers", &r, before).await;

    let before = counters(&env).await;
    let r = env
        .get(
            "/api/x",
            &[
                ("authorization", &dpop_auth(&t)),
                ("dpop", &format!("{p1}, {p2}")),
            ],
        )
        .await;
    assert_binding_failed(&env, "two proofs in one header", &r, before).await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_dpop_proof_by_another_key_or_for_another_token_is_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let intruder = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let other_t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let url = env.url("/api/x");

    // A correct proof, but made by a key the token is not bound to.
    let before = counters(&env).await;
    let p = proof(&intruder, "GET", &url, &t);
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_binding_failed(&env, "proof by another key", &r, before).await;

    // The bound key's jwk in the header, signed by another key.
    let before = counters(&env).await;
    let p = compact(
        &proof_header(&pk),
        &proof_claims("GET", &url, &t),
        &intruder.signer.key,
        Algorithm::ES256,
    );
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_binding_failed(&env, "bound jwk, foreign signature", &r, before).await;

    // `ath` of another token bound to the same key.
    let before = counters(&env).await;
    let p = proof(&pk, "GET", &url, &other_t);
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_binding_failed(&env, "ath of another token", &r, before).await;

    // No `ath` at all.
    let before = counters(&env).await;
    let mut c = proof_claims("GET", &url, &t);
    c.as_object_mut().unwrap().remove("ath");
    let r = env
        .get(
            "/api/x",
            &[
                ("authorization", &dpop_auth(&t)),
                ("dpop", &proof_with(&pk, &c)),
            ],
        )
        .await;
    assert_binding_failed(&env, "no ath", &r, before).await;
    env.shutdown().await;
}

#[tokio::test]
async fn malformed_dpop_proof_headers_are_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let url = env.url("/api/x");
    let claims = || proof_claims("GET", &url, &t);

    // A private key in the embedded jwk (the thumbprint still matches).
    let mut with_d = proof_header(&pk);
    with_d["jwk"]["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let private = compact(&with_d, &claims(), &pk.signer.key, Algorithm::ES256);

    // A symmetric algorithm, MACed with a secret.
    let mut hs = proof_header(&pk);
    hs["alg"] = json!("HS256");
    let secret = EncodingKey::from_secret(&[42u8; 32]).unwrap();
    let hs256 = compact(&hs, &claims(), &secret, Algorithm::HS256);

    // `alg: none`, no signature.
    let mut none = proof_header(&pk);
    none["alg"] = json!("none");
    let unsigned = raw_token(&none, &claims(), "");

    // Not typ dpop+jwt.
    let mut jwt = proof_header(&pk);
    jwt["typ"] = json!("JWT");
    let wrong_typ = compact(&jwt, &claims(), &pk.signer.key, Algorithm::ES256);

    // No jwk.
    let mut no_jwk = proof_header(&pk);
    no_jwk.as_object_mut().unwrap().remove("jwk");
    let without_jwk = compact(&no_jwk, &claims(), &pk.signer.key, Algorithm::ES256);

    // No jti.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("jti");
    let without_jti = proof_with(&pk, &c);

    for (what, p) in [
        ("private key in jwk", private),
        ("alg HS256", hs256),
        ("alg none", unsigned),
        ("typ JWT", wrong_typ),
        ("no jwk", without_jwk),
        ("no jti", without_jti),
        ("not a JWT", "garbage".to_string()),
    ] {
        let before = counters(&env).await;
        let r = env
            .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
            .await;
        assert_binding_failed(&env, what, &r, before).await;
    }
    env.shutdown().await;
}

#[tokio::test]
async fn a_dpop_bound_token_sent_as_bearer_is_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));

    for with_proof in [false, true] {
        let p = proof(&pk, "GET", &env.url("/api/x"), &t);
        let mut h = vec![("authorization", bearer(&t))];
        if with_proof {
            h.push(("dpop", p));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let before = counters(&env).await;
        let r = env.get("/api/x", &h).await;
        assert_binding_failed(&env, &format!("Bearer, proof: {with_proof}"), &r, before).await;
    }
    env.shutdown().await;
}

#[tokio::test]
async fn an_unbound_token_sent_with_the_dpop_scheme_is_refused() {
    let env = Env::start("", "").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({}));

    // The same token as a bearer token works: only the scheme is wrong.
    let r = env.get("/api/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let before = counters(&env).await;
    let p = proof(&pk, "GET", &env.url("/api/x"), &t);
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_binding_failed(&env, "unbound token, DPoP scheme", &r, before).await;
    env.shutdown().await;
}

#[tokio::test]
async fn dpop_server_nonces_are_demanded_and_then_accepted() {
    let env = Env::start("", "dpop_nonce = true").await;
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let url = env.url("/api/x");

    let before = counters(&env).await;
    let p = proof(&pk, "GET", &url, &t);
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let wa = r.www_authenticate();
    assert!(wa.starts_with("DPoP "), "{wa}");
    assert!(wa.contains(r#"error="use_dpop_nonce""#), "{wa}");
    let nonce = r
        .headers
        .get("dpop-nonce")
        .expect("a DPoP-Nonce header")
        .to_str()
        .unwrap()
        .to_string();
    assert!(!nonce.is_empty());
    assert_eq!(env.up.count(), before.0);
    assert_eq!(env.binding_failed().await, before.1 + 1.0);

    // A made-up nonce is not accepted either.
    let mut c = proof_claims("GET", &url, &t);
    c["nonce"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let r = env
        .get(
            "/api/x",
            &[
                ("authorization", &dpop_auth(&t)),
                ("dpop", &proof_with(&pk, &c)),
            ],
        )
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert!(r.headers.get("dpop-nonce").is_some());
    assert_eq!(env.up.count(), before.0);

    // A fresh proof carrying the server's nonce.
    let mut c = proof_claims("GET", &url, &t);
    c["nonce"] = json!(nonce);
    let r = env
        .get(
            "/api/x",
            &[
                ("authorization", &dpop_auth(&t)),
                ("dpop", &proof_with(&pk, &c)),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?} {:?}", r.headers, r.body);
    assert_eq!(env.up.count(), before.0 + 1);
    env.shutdown().await;
}

// ---------------------------------------------------------------- 7. mTLS-bound tokens

const MTLS_OPTIONAL: &str = r#", client_ca = "ca.crt", client_auth = "optional""#;
const MTLS_REQUIRED: &str = r#", client_ca = "ca.crt", client_auth = "required""#;

fn x5t(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

#[tokio::test]
async fn a_certificate_bound_token_passes_over_a_connection_with_that_certificate() {
    let env = Env::start(MTLS_OPTIONAL, "").await;
    let (cert, key, der) = env.certs.client_cert("client-a");
    let t = env
        .key
        .token("alice", json!({"cnf": {"x5t#S256": x5t(&der)}}));

    let r = Client::mtls(&env.certs.ca_pem, &cert, &key)
        .get(&env.url("/api/x"), &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.count(), 1);
    assert_eq!(
        env.up
            .last()
            .headers
            .get("x-user-id")
            .map(|v| v.to_str().unwrap()),
        Some("alice")
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_certificate_bound_token_over_another_or_no_certificate_is_refused() {
    let env = Env::start(MTLS_OPTIONAL, "").await;
    let (_, _, der) = env.certs.client_cert("client-a");
    let (cert_b, key_b, _) = env.certs.client_cert("client-b");
    let t = env
        .key
        .token("alice", json!({"cnf": {"x5t#S256": x5t(&der)}}));

    let before = counters(&env).await;
    let r = Client::mtls(&env.certs.ca_pem, &cert_b, &key_b)
        .get(&env.url("/api/x"), &[("authorization", &bearer(&t))])
        .await;
    assert_binding_failed(&env, "another client certificate", &r, before).await;

    let before = counters(&env).await;
    let r = env.get("/api/x", &[("authorization", &bearer(&t))]).await;
    assert_binding_failed(&env, "no client certificate", &r, before).await;

    // An unbound token needs no certificate on an optional-mTLS listener.
    let plain = env.key.token("alice", json!({}));
    let r = env
        .get("/api/x", &[("authorization", &bearer(&plain))])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    env.shutdown().await;
}

/// A TLS client without a client certificate, trusting the test CA.
fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Connects over TLS without a client certificate and tries one request.
/// `Ok(bytes)` holds whatever HTTP came back; `Err` says where it failed.
async fn try_without_client_cert(ca_pem: &str, addr: SocketAddr) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        tls_connector(ca_pem).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    // TLS 1.3: the server judges the client's (empty) certificate after the
    // client has finished, so the refusal may surface on the first read.
    tls.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await {
        Err(_) => Err("read timed out".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) => Ok(out),
    }
}

#[tokio::test]
async fn required_client_auth_refuses_a_tls_connection_without_a_certificate() {
    let env = Env::start(MTLS_REQUIRED, "").await;
    let (cert, key, der) = env.certs.client_cert("client-a");

    // With a certificate the listener serves (and a bound token passes).
    let t = env
        .key
        .token("alice", json!({"cnf": {"x5t#S256": x5t(&der)}}));
    let r = Client::mtls(&env.certs.ca_pem, &cert, &key)
        .get(&env.url("/api/x"), &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.count(), 1);

    let errors_before = env.handshake_errors().await;
    assert!(errors_before >= 0.0, "the counter is exported");
    let outcome = try_without_client_cert(&env.certs.ca_pem, env.addr).await;
    match &outcome {
        Err(e) => assert!(!e.contains("timed out"), "{e}"),
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "the server answered without a client certificate: {}",
            String::from_utf8_lossy(bytes)
        ),
    }
    assert_eq!(
        env.up.count(),
        1,
        "a request without a certificate was served"
    );

    // The counter grows (the server side may record it a moment later).
    let mut errors = env.handshake_errors().await;
    for _ in 0..100 {
        if errors > errors_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        errors = env.handshake_errors().await;
    }
    assert_eq!(errors, errors_before + 1.0, "client said: {outcome:?}");
    env.shutdown().await;
}

// ---------------------------------------------------------------- 8. require_bound_token

#[tokio::test]
async fn require_bound_token_refuses_bearer_tokens_and_accepts_dpop_bound_ones() {
    let env = Env::start(MTLS_OPTIONAL, "").await;
    let t = env.key.token("alice", json!({}));

    // The same token is fine on a route without the requirement.
    let r = env.get("/api/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let before = counters(&env).await;
    let r = env.get("/bound/x", &[("authorization", &bearer(&t))]).await;
    assert_binding_failed(&env, "unbound bearer token", &r, before).await;

    // Presenting a client certificate does not bind a token that is not bound to it.
    let (cert, key, der) = env.certs.client_cert("client-a");
    let before = counters(&env).await;
    let r = Client::mtls(&env.certs.ca_pem, &cert, &key)
        .get(&env.url("/bound/x"), &[("authorization", &bearer(&t))])
        .await;
    assert_binding_failed(&env, "unbound token over mTLS", &r, before).await;

    // DPoP-bound with a good proof.
    let pk = TestKey::new(Algorithm::ES256);
    let bound = env.key.token("alice", json!({"cnf": {"jkt": jkt(&pk)}}));
    let p = proof(&pk, "GET", &env.url("/bound/x"), &bound);
    let r = env
        .get(
            "/bound/x",
            &[("authorization", &dpop_auth(&bound)), ("dpop", &p)],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Certificate-bound over that certificate.
    let cert_bound = env
        .key
        .token("alice", json!({"cnf": {"x5t#S256": x5t(&der)}}));
    let r = Client::mtls(&env.certs.ca_pem, &cert, &key)
        .get(
            &env.url("/bound/x"),
            &[("authorization", &bearer(&cert_bound))],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    env.shutdown().await;
}

// ---------------------------------------------------------------- scheme and confirmation consistency

#[tokio::test]
async fn a_certificate_bound_token_sent_with_the_dpop_scheme_is_refused() {
    // RFC 9449 7.1: a token presented under the DPoP scheme is accepted only when
    // the proof's key is the key the token is bound to. This token is bound to a
    // certificate, not to any DPoP key, so no proof can match it.
    let env = Env::start(MTLS_OPTIONAL, "").await;
    let (cert, key, der) = env.certs.client_cert("client-a");
    let t = env
        .key
        .token("alice", json!({"cnf": {"x5t#S256": x5t(&der)}}));
    let client = Client::mtls(&env.certs.ca_pem, &cert, &key);

    // As a bearer token over its certificate: fine.
    let r = client
        .get(&env.url("/api/x"), &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let pk = TestKey::new(Algorithm::ES256);
    let p = proof(&pk, "GET", &env.url("/api/x"), &t);
    let before = counters(&env).await;
    let r = client
        .get(
            &env.url("/api/x"),
            &[("authorization", &dpop_auth(&t)), ("dpop", &p)],
        )
        .await;
    assert_binding_failed(&env, "certificate-bound token, DPoP scheme", &r, before).await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_token_bound_to_a_dpop_key_and_a_certificate_needs_both() {
    // RFC 8705 3: a token with cnf.x5t#S256 is accepted only over a connection
    // presenting that certificate; a DPoP proof does not stand in for it.
    let env = Env::start(MTLS_OPTIONAL, "").await;
    let (cert_a, key_a, der_a) = env.certs.client_cert("client-a");
    let (cert_b, key_b, _) = env.certs.client_cert("client-b");
    let pk = TestKey::new(Algorithm::ES256);
    let t = env.key.token(
        "alice",
        json!({"cnf": {"jkt": jkt(&pk), "x5t#S256": x5t(&der_a)}}),
    );
    let url = env.url("/api/x");

    // Both bindings satisfied.
    let p = proof(&pk, "GET", &url, &t);
    let r = Client::mtls(&env.certs.ca_pem, &cert_a, &key_a)
        .get(&url, &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // A good proof, but another certificate.
    let before = counters(&env).await;
    let p = proof(&pk, "GET", &url, &t);
    let r = Client::mtls(&env.certs.ca_pem, &cert_b, &key_b)
        .get(&url, &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_binding_failed(&env, "good proof, another certificate", &r, before).await;

    // A good proof, no certificate.
    let before = counters(&env).await;
    let p = proof(&pk, "GET", &url, &t);
    let r = env
        .get("/api/x", &[("authorization", &dpop_auth(&t)), ("dpop", &p)])
        .await;
    assert_binding_failed(&env, "good proof, no certificate", &r, before).await;
    env.shutdown().await;
}
