//! Token verification through a running gateway: every refusal reason with its
//! status, challenge, JSON body and metric; headers that must never be trusted;
//! key refresh, the unknown-kid refetch, the verified-token cache, readiness.
mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::cli::mint::{claims, now, Signer};
use portcullis::RunningGateway;
use serde_json::{json, Map, Value};

const ROUTE_ALL: &str = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
const DECISIONS: &str = "portcullis_auth_decisions_total";
const CACHE_HITS: &str = "portcullis_token_cache_hits_total";
/// Bound of every poll loop.
const POLL_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// A gateway with one RS256 issuer whose key is in a `jwks_file`.
struct Env {
    _dir: tempfile::TempDir,
    gw: RunningGateway,
    up: Upstream,
    key: TestKey,
}

impl Env {
    /// `extra` is appended to the configuration after a catch-all route.
    async fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::new(Algorithm::RS256);
        std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
        let up = Upstream::start().await;
        let cfg =
            base_config("jwks_file = \"jwks.json\"", &up.url(), "\"RS256\"") + ROUTE_ALL + extra;
        let gw = gateway(dir.path(), &cfg).await;
        wait_ready(&gw).await;
        Env {
            _dir: dir,
            gw,
            up,
            key,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        get(&self.gw, path, headers).await
    }

    async fn bearer(&self, token: &str) -> Reply {
        self.get("/x", &[("authorization", &format!("Bearer {token}"))])
            .await
    }

    /// Claims of a valid token of this issuer, to be changed by the test.
    fn claims(&self) -> Map<String, Value> {
        claims(ISS, AUD, "alice", 300)
    }

    /// A token with exactly this header and payload, signed by the issuer's key.
    fn sign_raw(&self, header: &Value, payload: &Value) -> String {
        sign_raw(header, payload, &self.key.signer.key, Algorithm::RS256)
    }
}

async fn get(gw: &RunningGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    let addr = gw.listen_addrs()[0];
    Client::plain()
        .get(&format!("http://{addr}{path}"), headers)
        .await
}

async fn bearer(gw: &RunningGateway, token: &str) -> Reply {
    get(gw, "/x", &[("authorization", &format!("Bearer {token}"))]).await
}

/// Signs `header.payload` as given (no normalisation of the header).
fn sign_raw(header: &Value, payload: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let unsigned = raw_token(header, payload, "");
    let message = unsigned.trim_end_matches('.');
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{sig}")
}

/// The token with one bit of its signature flipped (still valid base64url).
fn flip_signature(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Which `issuer` label a refusal is counted under.
#[derive(Clone, Copy, Debug)]
enum Label {
    Main,
    Unknown,
    /// The token's header was refused before its issuer was looked at: the
    /// label may be either.
    Either,
}

async fn decisions(gw: &RunningGateway, result: &str) -> (f64, f64) {
    let main = metric(gw, DECISIONS, &[("issuer", "main"), ("result", result)]).await;
    let unknown = metric(gw, DECISIONS, &[("issuer", "unknown"), ("result", result)]).await;
    (main, unknown)
}

/// Sends the request and checks everything a refusal must be: status,
/// `WWW-Authenticate`, JSON body, one count under `result`, nothing upstream.
/// Returns the reply for further checks.
async fn assert_refused(
    env: &Env,
    headers: &[(&str, &str)],
    status: StatusCode,
    result: &str,
    label: Label,
) -> Reply {
    assert_refused_at(&env.gw, &env.up, "/x", headers, status, result, label).await
}

async fn assert_refused_at(
    gw: &RunningGateway,
    up: &Upstream,
    path: &str,
    headers: &[(&str, &str)],
    status: StatusCode,
    result: &str,
    label: Label,
) -> Reply {
    let seen = up.count();
    let (main0, unknown0) = decisions(gw, result).await;
    assert!(
        main0 >= 0.0 && unknown0 >= 0.0,
        "{result} is exported for main and unknown from start"
    );
    let r = get(gw, path, headers).await;
    let ctx = format!("{headers:?} -> {} {:?}", r.status, r.body);
    assert_eq!(r.status, status, "{ctx}");

    let body = r.json();
    let error = body["error"].as_str().expect("error in body");
    let description = body["error_description"]
        .as_str()
        .expect("error_description in body");
    let request_id = body["request_id"].as_str().expect("request_id in body");
    assert!(!error.is_empty() && !description.is_empty(), "{ctx}");
    assert!(!request_id.is_empty(), "{ctx}");
    if let Some(h) = r.headers.get("x-request-id") {
        assert_eq!(h.to_str().unwrap(), request_id, "{ctx}");
    }
    for (_, v) in headers {
        let cred = v.rsplit(' ').next().unwrap_or(v);
        if cred.len() >= 16 {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(cred)
                    && !r.www_authenticate().contains(cred),
                "the refusal echoes the token: {ctx}"
            );
        }
    }

    let www = r.www_authenticate();
    match (status, result) {
        (StatusCode::UNAUTHORIZED, "missing") => {
            assert_eq!(www, r#"Bearer realm="portcullis""#, "{ctx}");
        }
        (StatusCode::UNAUTHORIZED, _) => {
            assert_eq!(error, "invalid_token", "{ctx}");
            assert_eq!(
                www,
                format!(
                    r#"Bearer realm="portcullis", error="invalid_token", error_description="{description}""#
                ),
                "{ctx}"
            );
        }
        (StatusCode::BAD_REQUEST, _) => {
            assert_eq!(error, "invalid_request", "{ctx}");
            assert!(
                www.starts_with(r#"Bearer realm="portcullis", error="invalid_request""#),
                "{www}"
            );
        }
        (StatusCode::FORBIDDEN, _) => {
            assert_eq!(error, "insufficient_scope", "{ctx}");
            assert!(
                www.starts_with(r#"Bearer realm="portcullis", error="insufficient_scope""#),
                "{www}"
            );
        }
        _ => {}
    }

    let (main1, unknown1) = decisions(gw, result).await;
    let (dm, du) = (main1 - main0, unknown1 - unknown0);
    match label {
        Label::Main => assert!(
            dm == 1.0 && du == 0.0,
            "{result}: main +{dm}, unknown +{du}; {ctx}"
        ),
        Label::Unknown => assert!(
            dm == 0.0 && du == 1.0,
            "{result}: main +{dm}, unknown +{du}; {ctx}"
        ),
        Label::Either => assert!(dm + du == 1.0, "{result}: main +{dm}, unknown +{du}; {ctx}"),
    }
    assert_eq!(up.count(), seen, "a refused request reached the upstream");
    r
}

async fn assert_token_refused(env: &Env, token: &str, result: &str, label: Label) -> Reply {
    let auth = format!("Bearer {token}");
    assert_refused(
        env,
        &[("authorization", &auth)],
        StatusCode::UNAUTHORIZED,
        result,
        label,
    )
    .await
}

async fn assert_allowed(env: &Env, token: &str) {
    let r = env.bearer(token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn description(r: &Reply) -> String {
    r.json()["error_description"].as_str().unwrap().to_string()
}

/// Polls `cond` every 100 ms for at most `POLL_LIMIT`.
async fn poll<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < POLL_LIMIT {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {POLL_LIMIT:?}");
}

async fn readyz(gw: &RunningGateway) -> (StatusCode, Value) {
    let admin = gw.admin_addr().unwrap();
    let (status, _, body) = http_get(&format!("http://{admin}/readyz"), &[]).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A gateway whose one issuer reads its keys from `srv`.
async fn uri_gateway(
    dir: &std::path::Path,
    srv: &JwksServer,
    up: &Upstream,
    timing: &str,
) -> RunningGateway {
    let cfg = base_config(
        &format!("jwks_uri = \"{}\"\n{timing}", srv.jwks_url()),
        &up.url(),
        "\"RS256\"",
    ) + ROUTE_ALL;
    gateway(dir, &cfg).await
}

// ---------------------------------------------------------------- missing token, schemes, sources

#[tokio::test]
async fn missing_token_is_refused_with_401_and_bare_challenge() {
    let env = Env::new("").await;
    assert_refused(
        &env,
        &[],
        StatusCode::UNAUTHORIZED,
        "missing",
        Label::Unknown,
    )
    .await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn basic_authorization_counts_as_missing_token() {
    let env = Env::new("").await;
    assert_refused(
        &env,
        &[("authorization", "Basic dXNlcjpwYXNzd29yZA==")],
        StatusCode::UNAUTHORIZED,
        "missing",
        Label::Unknown,
    )
    .await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn lowercase_bearer_scheme_is_accepted() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({}));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = env
            .get("/x", &[("authorization", &format!("{scheme} {t}"))])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{scheme}: {:?}", r.body);
    }
    assert_eq!(env.up.count(), 3);
    assert_eq!(env.up.last().headers["x-user-id"], "alice");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn two_authorization_headers_are_refused_with_400() {
    let env = Env::new("").await;
    let auth = format!("Bearer {}", env.key.token("alice", json!({})));
    assert_refused(
        &env,
        &[("authorization", &auth), ("authorization", &auth)],
        StatusCode::BAD_REQUEST,
        "malformed",
        Label::Unknown,
    )
    .await;
    assert_refused(
        &env,
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", &auth),
        ],
        StatusCode::BAD_REQUEST,
        "malformed",
        Label::Unknown,
    )
    .await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn token_in_two_places_is_refused_with_400() {
    let env = Env::new("\n[token]\ncookie = \"access_token\"\nquery = true\n").await;
    let t = env.key.token("alice", json!({}));
    let auth = format!("Bearer {t}");
    let cookie = format!("access_token={t}");
    // Each source alone is fine.
    let r = env.get("/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = env.get(&format!("/x?access_token={t}"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let seen = env.up.count();

    assert_refused(
        &env,
        &[("authorization", &auth), ("cookie", &cookie)],
        StatusCode::BAD_REQUEST,
        "malformed",
        Label::Unknown,
    )
    .await;
    for headers in [
        vec![("authorization", auth.as_str())],
        vec![("cookie", cookie.as_str())],
    ] {
        assert_refused_at(
            &env.gw,
            &env.up,
            &format!("/x?access_token={t}"),
            &headers,
            StatusCode::BAD_REQUEST,
            "malformed",
            Label::Unknown,
        )
        .await;
    }
    assert_eq!(env.up.count(), seen);
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- malformed

#[tokio::test]
async fn garbage_token_is_refused_as_malformed() {
    let env = Env::new("").await;
    assert_token_refused(&env, "garbage", "malformed", Label::Unknown).await;
    assert_token_refused(&env, "a.b.c.d.e", "malformed", Label::Unknown).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn two_part_token_is_refused_as_malformed() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({}));
    let (two, _) = t.rsplit_once('.').unwrap();
    assert_token_refused(&env, two, "malformed", Label::Unknown).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn bad_base64_token_is_refused_as_malformed() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({}));
    let parts: Vec<&str> = t.split('.').collect();
    // '*' is not in the base64url alphabet; '+' and '/' belong to the other one.
    let bad_header = format!("*{}.{}.{}", &parts[0][1..], parts[1], parts[2]);
    let std_alphabet = format!("{}+/.{}.{}", parts[0], parts[1], parts[2]);
    let bad_payload = format!("{}.{}*.{}", parts[0], parts[1], parts[2]);
    for bad in [bad_header, std_alphabet, bad_payload] {
        assert_token_refused(&env, &bad, "malformed", Label::Either).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn non_json_header_is_refused_as_malformed() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({}));
    let parts: Vec<&str> = t.split('.').collect();
    for header in ["not json at all", "[\"RS256\"]", "{\"alg\":\"RS256\""] {
        let bad = format!("{}.{}.{}", b64(header), parts[1], parts[2]);
        assert_token_refused(&env, &bad, "malformed", Label::Unknown).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({"exp": null}));
    assert_token_refused(&env, &t, "malformed", Label::Main).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn crit_header_is_refused() {
    let env = Env::new("").await;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": env.key.kid, "crit": ["x-policy"], "x-policy": 1});
    let t = env.sign_raw(&header, &Value::Object(env.claims()));
    assert_token_refused(&env, &t, "malformed", Label::Either).await;
    // The same token without `crit` passes: the refusal is for `crit`.
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": env.key.kid, "x-policy": 1});
    assert_allowed(&env, &env.sign_raw(&header, &Value::Object(env.claims()))).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn dpop_typ_is_refused() {
    let env = Env::new("").await;
    for typ in ["dpop+jwt", "JWE", "id_token+jwt"] {
        let header = json!({"alg": "RS256", "typ": typ, "kid": env.key.kid});
        let t = env.sign_raw(&header, &Value::Object(env.claims()));
        assert_token_refused(&env, &t, "malformed", Label::Either).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn typ_jwt_at_jwt_and_absent_are_accepted() {
    let env = Env::new("").await;
    for typ in [
        json!("JWT"),
        json!("at+jwt"),
        json!("application/at+jwt"),
        Value::Null,
    ] {
        let mut header = json!({"alg": "RS256", "kid": env.key.kid});
        if !typ.is_null() {
            header["typ"] = typ;
        }
        assert_allowed(&env, &env.sign_raw(&header, &Value::Object(env.claims()))).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn oversized_token_is_refused_with_401() {
    let env = Env::new("\n[token]\nmax_bytes = 1024\n").await;
    let small = env.key.token("alice", json!({}));
    assert!(small.len() < 1024, "{}", small.len());
    assert_allowed(&env, &small).await;
    let seen = env.up.count();
    let big = env.key.token("alice", json!({"pad": "x".repeat(1200)}));
    assert!(big.len() > 1024);
    let r = assert_token_refused(&env, &big, "malformed", Label::Either).await;
    assert!(description(&r).contains("larger"), "{:?}", r.body);
    assert_eq!(env.up.count(), seen);
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- signatures

#[tokio::test]
async fn token_signed_by_another_key_with_same_kid_is_refused_as_bad_signature() {
    let env = Env::new("").await;
    let other = TestKey::new(Algorithm::RS256).with_kid(&env.key.kid);
    let t = other.token("alice", json!({}));
    let r = assert_token_refused(&env, &t, "bad_signature", Label::Main).await;
    assert_eq!(description(&r), "signature verification failed");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn flipped_signature_byte_is_refused_as_bad_signature() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({}));
    assert_token_refused(&env, &flip_signature(&t), "bad_signature", Label::Main).await;
    // A changed payload under the original signature, too.
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = env.claims();
    c.insert("sub".into(), json!("admin"));
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64(&Value::Object(c).to_string()),
        parts[2]
    );
    assert_token_refused(&env, &swapped, "bad_signature", Label::Main).await;
    assert_allowed(&env, &t).await;
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- time

#[tokio::test]
async fn expired_token_is_refused_with_401() {
    let env = Env::new("").await;
    let n = now() as i64;
    let t = env
        .key
        .token("alice", json!({"iat": n - 600, "exp": n - 60}));
    let r = assert_token_refused(&env, &t, "expired", Label::Main).await;
    assert_eq!(description(&r), "token expired");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn expired_within_leeway_is_accepted() {
    // base_config: leeway = "5s".
    let env = Env::new("").await;
    let n = now() as i64;
    let t = env
        .key
        .token("alice", json!({"iat": n - 600, "exp": n - 2}));
    assert_allowed(&env, &t).await;
    // nbf and iat a little ahead (clock skew) are within the leeway too.
    let t = env
        .key
        .token("bob", json!({"iat": n + 2, "nbf": n + 2, "exp": n + 300}));
    assert_allowed(&env, &t).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn nbf_in_future_is_refused_as_not_yet_valid() {
    let env = Env::new("").await;
    let n = now() as i64;
    let t = env.key.token("alice", json!({"nbf": n + 120}));
    let r = assert_token_refused(&env, &t, "not_yet_valid", Label::Main).await;
    assert_eq!(description(&r), "token not yet valid");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn iat_in_future_is_refused_as_not_yet_valid() {
    let env = Env::new("").await;
    let n = now() as i64;
    let t = env
        .key
        .token("alice", json!({"iat": n + 120, "exp": n + 400}));
    assert_token_refused(&env, &t, "not_yet_valid", Label::Main).await;
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- iss, aud, kid, alg

#[tokio::test]
async fn wrong_issuer_is_refused_with_unknown_issuer_label() {
    let env = Env::new("").await;
    let t = env
        .key
        .token("alice", json!({"iss": "https://evil.example/"}));
    assert_token_refused(&env, &t, "wrong_issuer", Label::Unknown).await;
    // The trailing slash is part of the exact `iss`.
    let t = env
        .key
        .token("alice", json!({"iss": ISS.trim_end_matches('/')}));
    assert_token_refused(&env, &t, "wrong_issuer", Label::Unknown).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let env = Env::new("").await;
    for aud in [
        json!("https://other.example"),
        json!(["https://other.example", "https://third.example"]),
        json!(null),
    ] {
        let t = env.key.token("alice", json!({"aud": aud}));
        assert_token_refused(&env, &t, "wrong_audience", Label::Main).await;
    }
    // One accepted audience in a list is enough.
    let t = env
        .key
        .token("alice", json!({"aud": ["https://other.example", AUD]}));
    assert_allowed(&env, &t).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let env = Env::new("").await;
    let other = TestKey::new(Algorithm::RS256);
    let t = other.token("alice", json!({}));
    let r = assert_token_refused(&env, &t, "unknown_kid", Label::Main).await;
    assert_eq!(description(&r), "unknown key id");
    // The issuer's own key material under a kid it does not publish.
    let t = TestKey {
        alg: env.key.alg,
        kid: "not-published".into(),
        jwk: env.key.jwk.clone(),
        signer: Signer::from_pem(&env.key.pem, None, Some("not-published".into())).unwrap(),
        pem: env.key.pem.clone(),
    }
    .token("alice", json!({}));
    assert_token_refused(&env, &t, "unknown_kid", Label::Main).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn algorithm_outside_allowlist_is_refused_as_disallowed_alg() {
    let env = Env::new("").await;
    // Another family.
    let ec = TestKey::new(Algorithm::ES256);
    assert_token_refused(
        &env,
        &ec.token("alice", json!({})),
        "disallowed_alg",
        Label::Main,
    )
    .await;
    // The issuer's own RSA key, with an RSA algorithm the issuer does not allow.
    for alg in [Algorithm::PS256, Algorithm::RS512] {
        let s = Signer::from_pem(&env.key.pem, Some(alg), Some(env.key.kid.clone())).unwrap();
        let t = s.sign(&env.claims()).unwrap();
        let r = assert_token_refused(&env, &t, "disallowed_alg", Label::Main).await;
        assert_eq!(description(&r), "token algorithm not allowed");
    }
    // Made-up names.
    for alg in ["RS1", "HS1024", ""] {
        let t = env.sign_raw(
            &json!({"alg": alg, "kid": env.key.kid}),
            &Value::Object(env.claims()),
        );
        assert_token_refused(&env, &t, "disallowed_alg", Label::Either).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn alg_none_with_empty_signature_is_refused_as_disallowed_alg() {
    let env = Env::new("").await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = raw_token(
            &json!({"alg": alg, "typ": "JWT"}),
            &Value::Object(env.claims()),
            "",
        );
        assert!(t.ends_with('.'));
        assert_token_refused(&env, &t, "disallowed_alg", Label::Either).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn alg_none_with_a_signature_is_refused_as_disallowed_alg() {
    let env = Env::new("").await;
    let valid = env.key.token("alice", json!({}));
    let sig = valid.rsplit('.').next().unwrap();
    for alg in ["none", "None", "NONE"] {
        let t = raw_token(
            &json!({"alg": alg, "kid": env.key.kid}),
            &Value::Object(env.claims()),
            sig,
        );
        assert_token_refused(&env, &t, "disallowed_alg", Label::Either).await;
    }
    env.gw.shutdown().await;
}

#[tokio::test]
async fn rsa_public_key_as_hmac_secret_is_refused_as_disallowed_alg() {
    let env = Env::new("").await;
    let pair = rcgen::KeyPair::from_pem(&env.key.pem).unwrap();
    let pem = pair.public_key_pem();
    let secrets: Vec<Vec<u8>> = vec![
        pem.clone().into_bytes(),
        pem.trim_end().as_bytes().to_vec(),
        rcgen::PublicKeyData::subject_public_key_info(&pair),
        pair.public_key_raw().to_vec(),
        URL_SAFE_NO_PAD
            .decode(env.key.jwk["n"].as_str().unwrap())
            .unwrap(),
    ];
    for secret in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let header = json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": env.key.kid});
            let t = sign_raw(
                &header,
                &Value::Object(env.claims()),
                &EncodingKey::from_secret(&secret).unwrap(),
                alg,
            );
            assert_token_refused(&env, &t, "disallowed_alg", Label::Main).await;
        }
    }
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- untrusted header parameters

#[tokio::test]
async fn embedded_jwk_jku_and_x5u_headers_are_ignored() {
    let legit = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&legit])).await;
    let attacker = TestKey::new(Algorithm::RS256);
    let evil = JwksServer::start(jwks(&[&attacker])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = uri_gateway(dir.path(), &srv, &up, "").await;
    wait_ready(&gw).await;
    let x5u = format!("http://{}/.well-known/openid-configuration", evil.addr);

    // The attacker's own kid, with everything that would point at its key.
    let header = json!({
        "alg": "RS256",
        "typ": "JWT",
        "kid": attacker.kid,
        "jwk": attacker.jwk,
        "jku": evil.jwks_url(),
        "x5u": x5u,
    });
    let payload = Value::Object(claims(ISS, AUD, "mallory", 300));
    let t = sign_raw(&header, &payload, &attacker.signer.key, Algorithm::RS256);
    let auth = format!("Bearer {t}");
    assert_refused_at(
        &gw,
        &up,
        "/x",
        &[("authorization", &auth)],
        StatusCode::UNAUTHORIZED,
        "unknown_kid",
        Label::Main,
    )
    .await;

    // The issuer's kid, attacker's key embedded and linked.
    let mut header = header;
    header["kid"] = json!(legit.kid);
    let mut jwk = attacker.jwk.clone();
    jwk["kid"] = json!(legit.kid);
    header["jwk"] = jwk;
    let t = sign_raw(&header, &payload, &attacker.signer.key, Algorithm::RS256);
    let auth = format!("Bearer {t}");
    assert_refused_at(
        &gw,
        &up,
        "/x",
        &[("authorization", &auth)],
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        Label::Main,
    )
    .await;

    // And with no kid at all.
    header.as_object_mut().unwrap().remove("kid");
    let t = sign_raw(&header, &payload, &attacker.signer.key, Algorithm::RS256);
    let auth = format!("Bearer {t}");
    assert_refused_at(
        &gw,
        &up,
        "/x",
        &[("authorization", &auth)],
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        Label::Main,
    )
    .await;

    let (jku_fetches, x5u_fetches) = {
        let st = evil.state.lock().unwrap();
        (st.jwks_fetches, st.discovery_fetches)
    };
    assert_eq!(jku_fetches, 0, "the jku was fetched");
    assert_eq!(x5u_fetches, 0, "the x5u was fetched");
    // The legitimate issuer still works, with the same extra headers.
    let mut header = json!({"alg": "RS256", "kid": legit.kid, "jku": evil.jwks_url()});
    header["jwk"] = legit.jwk.clone();
    let t = sign_raw(&header, &payload, &legit.signer.key, Algorithm::RS256);
    let r = bearer(&gw, &t).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(evil.fetches(), 0);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- key life cycle

#[tokio::test]
async fn jwks_uri_keys_are_refreshed_in_background() {
    let a = TestKey::new(Algorithm::RS256);
    let b = TestKey::new(Algorithm::RS256);
    let c = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&a])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = uri_gateway(
        dir.path(),
        &srv,
        &up,
        "refresh = \"1s\"\nmin_refresh = \"1s\"",
    )
    .await;
    wait_ready(&gw).await;
    assert!(srv.fetches() >= 1, "keys are fetched at start");
    let old = a.token("alice", json!({}));
    let r = bearer(&gw, &old).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Twice: now it is in the verified-token cache as well.
    assert_eq!(bearer(&gw, &old).await.status, StatusCode::OK);

    // Rotate: the IdP now publishes two other keys. No token request is made
    // until the gauge shows the refresher picked them up by itself.
    srv.set_jwks(jwks(&[&b, &c]));
    let g = &gw;
    poll(
        "background refresh installs the new key set",
        || async move { metric(g, "portcullis_jwks_keys", &[("issuer", "main")]).await == 2.0 },
    )
    .await;

    let r = bearer(&gw, &b.token("bob", json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "new key: {:?}", r.body);
    assert_eq!(up.last().headers["x-user-id"], "bob");
    // The old key's token, although cached, is refused.
    let auth = format!("Bearer {old}");
    assert_refused_at(
        &gw,
        &up,
        "/x",
        &[("authorization", &auth)],
        StatusCode::UNAUTHORIZED,
        "unknown_kid",
        Label::Main,
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn valid_token_requests_never_fetch_keys() {
    let a = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&a])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = uri_gateway(
        dir.path(),
        &srv,
        &up,
        "refresh = \"10m\"\nmin_refresh = \"1s\"",
    )
    .await;
    wait_ready(&gw).await;
    assert_eq!(srv.fetches(), 1, "one fetch at start");
    // Past min_refresh, so that a fetch would be allowed if anything asked.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = a.token("alice", json!({}));
    for token in [
        t.clone(),
        t.clone(),
        a.token("bob", json!({})),
        a.token("carol", json!({})),
    ] {
        let r = bearer(&gw, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert_eq!(srv.fetches(), 1, "a request with a known kid fetched keys");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited_by_min_refresh() {
    let a = TestKey::new(Algorithm::RS256);
    let b = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&a])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = uri_gateway(
        dir.path(),
        &srv,
        &up,
        "refresh = \"10m\"\nmin_refresh = \"30s\"",
    )
    .await;
    wait_ready(&gw).await;
    let f0 = srv.fetches();
    assert_eq!(f0, 1);
    // The start fetch counts for min_refresh: an unknown kid now does not fetch.
    srv.set_jwks(jwks(&[&a, &b]));
    for sub in ["x", "y", "z"] {
        let r = bearer(&gw, &b.token(sub, json!({}))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    let forged = TestKey::new(Algorithm::RS256).with_kid("made-up");
    for _ in 0..3 {
        let r = bearer(&gw, &forged.token("x", json!({}))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        srv.fetches(),
        f0,
        "an unknown kid fetched within min_refresh"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_kid_triggers_one_refetch_after_min_refresh() {
    let a = TestKey::new(Algorithm::RS256);
    let b = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&a])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = uri_gateway(
        dir.path(),
        &srv,
        &up,
        "refresh = \"10m\"\nmin_refresh = \"1s\"",
    )
    .await;
    wait_ready(&gw).await;
    let f0 = srv.fetches();
    srv.set_jwks(jwks(&[&a, &b]));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The first token of the new key waits for one refetch and passes.
    let r = bearer(&gw, &b.token("bob", json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(srv.fetches(), f0 + 1);
    // A burst of made-up kids right after: at most one more fetch.
    for i in 0..5 {
        let forged = TestKey::new(Algorithm::RS256).with_kid(&format!("made-up-{i}"));
        let r = bearer(&gw, &forged.token("x", json!({}))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        srv.fetches() <= f0 + 2,
        "{} fetches for a burst of unknown kids",
        srv.fetches() - f0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn readyz_is_503_until_jwks_server_recovers() {
    let a = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&a])).await;
    srv.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = uri_gateway(
        dir.path(),
        &srv,
        &up,
        "refresh = \"1s\"\nmin_refresh = \"1s\"",
    )
    .await;
    assert!(srv.fetches() >= 1, "the start fetch was attempted");
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["reasons"].as_array().is_some_and(|r| !r.is_empty()),
        "503 names its reasons: {body}"
    );
    // Still not ready after a retry or two against the failing server.
    let f = srv.fetches();
    let s = &srv;
    poll("the refresher retries", || async move { s.fetches() > f }).await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let t = a.token("alice", json!({}));
    let r = bearer(&gw, &t).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(up.count(), 0);

    srv.set_status(StatusCode::OK);
    let g = &gw;
    poll(
        "/readyz turns 200 after the JWKS server recovers",
        || async move { readyz(g).await.0 == StatusCode::OK },
    )
    .await;
    let r = bearer(&gw, &t).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- cache

#[tokio::test]
async fn token_cache_hit_is_counted() {
    let env = Env::new("").await;
    let t = env.key.token("alice", json!({}));
    let h0 = metric(&env.gw, CACHE_HITS, &[]).await;
    assert!(h0 >= 0.0, "{CACHE_HITS} is exported");
    // The cache admits a token on its second verification.
    assert_allowed(&env, &t).await;
    assert_eq!(metric(&env.gw, CACHE_HITS, &[]).await, h0);
    assert_allowed(&env, &t).await;
    assert_eq!(metric(&env.gw, CACHE_HITS, &[]).await, h0);
    assert_allowed(&env, &t).await;
    assert_eq!(metric(&env.gw, CACHE_HITS, &[]).await, h0 + 1.0);
    assert_allowed(&env, &t).await;
    assert_eq!(metric(&env.gw, CACHE_HITS, &[]).await, h0 + 2.0);
    // A hit forwards the identity rendered at admission.
    assert_eq!(env.up.last().headers["x-user-id"], "alice");
    // Another token is a miss.
    assert_allowed(&env, &env.key.token("bob", json!({}))).await;
    assert_eq!(metric(&env.gw, CACHE_HITS, &[]).await, h0 + 2.0);
    assert_eq!(env.up.count(), 5);
    assert_eq!(env.up.last().headers["x-user-id"], "bob");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn cached_token_still_enforces_route_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::RS256);
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
    let up = Upstream::start().await;
    let cfg = base_config("jwks_file = \"jwks.json\"", &up.url(), "\"RS256\"")
        + r#"
[[route]]
path_prefix = "/orders"
upstream = "app"
scopes = ["orders:read"]

[[route]]
path_prefix = "/"
upstream = "app"
"#;
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let t = key.token("alice", json!({"scope": "profile orders:write"}));
    let auth = format!("Bearer {t}");
    // Verified twice, so cached, on a route without requirements.
    for _ in 0..2 {
        let r = get(&gw, "/profile", &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let h0 = metric(&gw, CACHE_HITS, &[]).await;

    let r = assert_refused_at(
        &gw,
        &up,
        "/orders/7",
        &[("authorization", &auth)],
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        Label::Main,
    )
    .await;
    assert_eq!(
        metric(&gw, CACHE_HITS, &[]).await,
        h0 + 1.0,
        "the refusal came from a cache hit"
    );
    let www = r.www_authenticate();
    assert!(www.contains(r#"error="insufficient_scope""#), "{www}");
    assert!(www.contains(r#"scope="orders:read""#), "{www}");
    // Again, from the cache again.
    assert_refused_at(
        &gw,
        &up,
        "/orders",
        &[("authorization", &auth)],
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        Label::Main,
    )
    .await;

    // A token with the scope passes, from the cache too.
    let good = format!(
        "Bearer {}",
        key.token("bob", json!({"scope": "orders:read"}))
    );
    for _ in 0..2 {
        let r = get(&gw, "/orders/7", &[("authorization", &good)]).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert_eq!(up.last().headers["x-user-id"], "bob");
    gw.shutdown().await;
}
