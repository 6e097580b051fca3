mod common;

// The signed identity assertion, verified the way a downstream service is told
// to: fetch the gateway's JWKS from the admin listener and check the JWT with
// `jsonwebtoken`, audience = the upstream's name, issuer = "portcullis".
//
// Real sockets on loopback, the real binary for `check`/`run` (owned by a
// guard that kills it on drop), every wait bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::process::{portcullis, Output, Proc};
use common::*;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis::cli::jwk::{generate, public_jwk};
use portcullis::RunningGateway;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const HEADER: &str = "x-identity-assertion";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- set-up

/// A fresh assertion key for `alg`: (PKCS#8 PEM, its public JWK as the library makes it).
fn assertion_key(alg: Algorithm) -> (String, Value) {
    init();
    let pair = generate(alg).expect("keygen");
    let jwk = public_jwk(&pair, alg).expect("public jwk");
    (pair.serialize_pem(), jwk)
}

/// `base_config` for an ES256 issuer read from `jwks.json`, plus `extra`
/// (the assertion table, more upstreams, routes).
fn config(up: &Upstream, extra: &str) -> String {
    base_config("jwks_file = \"jwks.json\"", &up.url(), "\"ES256\"") + extra
}

const ROUTES: &str = r#"
[[route]]
path_prefix = "/public"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/"
upstream = "app"
"#;

fn assertion_table(ttl: &str) -> String {
    format!("\n[identity.assertion]\nkey = \"assertion.pem\"\nttl = \"{ttl}\"\n")
}

/// Writes the issuer's JWKS and the assertion key, starts the gateway, waits ready.
async fn start(
    dir: &Path,
    idp: &TestKey,
    assertion_pem: Option<&str>,
    cfg: &str,
) -> RunningGateway {
    std::fs::write(dir.join("jwks.json"), jwks(&[idp])).unwrap();
    if let Some(pem) = assertion_pem {
        std::fs::write(dir.join("assertion.pem"), pem).unwrap();
    }
    let gw = gateway(dir, cfg).await;
    wait_ready(&gw).await;
    gw
}

async fn get_with_token(gw: &RunningGateway, path: &str, token: &str) -> Reply {
    let addr = gw.listen_addrs()[0];
    Client::plain()
        .get(
            &format!("http://{addr}{path}"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}

/// Every value of the assertion header the upstream saw on `seen`.
fn assertions_in(seen: &Seen) -> Vec<String> {
    seen.headers
        .get_all(HEADER)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The single assertion on the upstream's last request.
fn the_assertion(up: &Upstream) -> String {
    let seen = up.last();
    let all = assertions_in(&seen);
    assert_eq!(
        all.len(),
        1,
        "the upstream should get exactly one {HEADER}: {:?}",
        seen.headers
    );
    all.into_iter().next().unwrap()
}

/// Header names as the normalisation rule compares them: lower case, `_` as `-`.
fn normalized_names(seen: &Seen) -> Vec<String> {
    seen.headers
        .keys()
        .map(|k| k.as_str().to_ascii_lowercase().replace('_', "-"))
        .collect()
}

async fn fetch_jwks(gw: &RunningGateway) -> Value {
    let admin = gw.admin_addr().expect("admin listener");
    let r = Client::plain()
        .get(&format!("http://{admin}/.well-known/jwks.json"), &[])
        .await;
    assert_eq!(
        r.status,
        200,
        "GET /.well-known/jwks.json: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| k["kid"].as_str().expect("every key has a kid").to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("the assertion has a JWS header")
        .kid
        .expect("the assertion header has a kid")
}

/// Verifies an assertion as a downstream service would: the key from the
/// gateway's JWKS by `kid`, audience `aud`, issuer "portcullis".
fn verify(
    jwks: &Value,
    token: &str,
    alg: Algorithm,
    aud: &str,
) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
    let kid = kid_of(token);
    let jwk_json = jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} is not in the published JWKS {jwks}"))
        .clone();
    let jwk: Jwk = serde_json::from_value(jwk_json).expect("the published JWK parses");
    let key = DecodingKey::from_jwk(&jwk)?;
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&["portcullis"]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    Ok(jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)?.claims)
}

/// RFC 7638 thumbprint of an EC or OKP public JWK, computed here independently.
fn rfc7638(jwk: &Value) -> String {
    let s = |k: &str| {
        jwk[k]
            .as_str()
            .unwrap_or_else(|| panic!("jwk has no {k}: {jwk}"))
    };
    let canonical = match s("kty") {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
        other => panic!("unexpected kty {other} in {jwk}"),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn num(claims: &Map<String, Value>, k: &str) -> u64 {
    claims
        .get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("claim {k} is not a number: {claims:?}"))
}

/// The published JWKS holds exactly the public half of the configured key, kid = RFC 7638.
fn assert_publishes(jwks: &Value, file_jwk: &Value) {
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "one key expected: {jwks}");
    let k = &keys[0];
    assert!(k.get("d").is_none(), "the private key is published: {k}");
    for field in ["kty", "crv", "x", "y"] {
        assert_eq!(k.get(field), file_jwk.get(field), "{field} differs: {k}");
    }
    assert_eq!(
        k["kid"].as_str().unwrap(),
        rfc7638(k),
        "kid is not the RFC 7638 thumbprint"
    );
}

// ---------------------------------------------------------------- 1. the assertion

#[tokio::test]
async fn upstream_receives_an_es256_assertion_verifiable_with_the_admin_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let idp = TestKey::new(Algorithm::ES256);
    let (pem, file_jwk) = assertion_key(Algorithm::ES256);
    let up = Upstream::start().await;
    let cfg = config(&up, &(assertion_table("60s") + ROUTES));
    let gw = start(dir.path(), &idp, Some(&pem), &cfg).await;

    let token = idp.token(
        "alice",
        json!({"email": "alice@example.com", "roles": ["admin", "dev"]}),
    );
    let before = now_unix();
    let r = get_with_token(&gw, "/x", &token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let assertion = the_assertion(&up);
    assert_ne!(assertion, token, "the access token is not an assertion");

    let jwks = fetch_jwks(&gw).await;
    assert_publishes(&jwks, &file_jwk);
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(rfc7638(&file_jwk).as_str()));

    let claims = verify(&jwks, &assertion, Algorithm::ES256, "app")
        .unwrap_or_else(|e| panic!("the assertion does not verify: {e:?}"));
    assert_eq!(claims["iss"], "portcullis");
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["idp"], ISS);
    // The identity the headers carry is in it too.
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["roles"], json!(["admin", "dev"]));
    let (iat, exp) = (num(&claims, "iat"), num(&claims, "exp"));
    assert!(
        iat + 5 >= before && iat <= now_unix() + 5,
        "iat {iat} is not now ({before})"
    );
    assert!(exp > iat, "exp {exp} <= iat {iat}");
    assert!(exp - iat <= 60, "lifetime {} exceeds the ttl", exp - iat);

    // An assertion never outlives the access token it vouches for.
    let short = idp.token("bob", json!({"exp": now_unix() + 20}));
    let r = get_with_token(&gw, "/x", &short).await;
    assert_eq!(r.status, 200);
    let a = the_assertion(&up);
    let c = verify(&jwks, &a, Algorithm::ES256, "app").expect("verifies");
    assert_eq!(c["sub"], "bob");
    assert!(
        num(&c, "exp") <= now_unix() + 20,
        "assertion exp {} is after the token's",
        num(&c, "exp")
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_eddsa_assertion_key_signs_verifiable_assertions() {
    let dir = tempfile::tempdir().unwrap();
    let idp = TestKey::new(Algorithm::ES256);
    let (pem, file_jwk) = assertion_key(Algorithm::EdDSA);
    let up = Upstream::start().await;
    let cfg = config(&up, &(assertion_table("60s") + ROUTES));
    let gw = start(dir.path(), &idp, Some(&pem), &cfg).await;

    let token = idp.token("carol", json!({}));
    let r = get_with_token(&gw, "/x", &token).await;
    assert_eq!(r.status, 200);
    let assertion = the_assertion(&up);
    let jwks = fetch_jwks(&gw).await;
    assert_publishes(&jwks, &file_jwk);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(
        jsonwebtoken::decode_header(&assertion).unwrap().alg,
        Algorithm::EdDSA
    );
    let claims = verify(&jwks, &assertion, Algorithm::EdDSA, "app")
        .unwrap_or_else(|e| panic!("the EdDSA assertion does not verify: {e:?}"));
    assert_eq!(claims["sub"], "carol");
    assert_eq!(claims["idp"], ISS);
    assert!(num(&claims, "exp") - num(&claims, "iat") <= 60);
    gw.shutdown().await;
}

/// A raw HTTP/1.1 request with headers spelled exactly as given.
async fn raw_get(gw: &RunningGateway, path: &str, headers: &[(&str, &str)]) -> String {
    let addr = gw.listen_addrs()[0];
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw(addr, req.as_bytes(), Duration::from_secs(5)).await
}

#[tokio::test]
async fn client_sent_assertion_headers_never_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let idp = TestKey::new(Algorithm::ES256);
    let (pem, _) = assertion_key(Algorithm::ES256);
    let up = Upstream::start().await;
    let cfg = config(&up, &(assertion_table("60s") + ROUTES));
    let gw = start(dir.path(), &idp, Some(&pem), &cfg).await;
    let token = idp.token("dave", json!({}));
    let bearer = format!("Bearer {token}");
    // An attacker's own well-formed assertion, signed by a key the gateway does not have.
    let forged = TestKey::new(Algorithm::ES256).sign(
        &json!({"iss": "portcullis", "aud": "app", "sub": "admin", "iat": now_unix(), "exp": now_unix() + 60})
            .as_object()
            .unwrap()
            .clone(),
    );
    let spellings = [
        "X-Identity-Assertion",
        "x-identity-assertion",
        "X-IDENTITY-ASSERTION",
        "X_Identity_Assertion",
        "x_identity-assertion",
    ];

    // Protected route: only the gateway's own assertion arrives.
    for spelling in spellings {
        let before = up.count();
        let resp = raw_get(
            &gw,
            "/x",
            &[("Authorization", &bearer), (spelling, &forged)],
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{spelling}: {resp}");
        assert_eq!(up.count(), before + 1);
        let seen = up.last();
        let names = normalized_names(&seen);
        assert_eq!(
            names.iter().filter(|n| *n == HEADER).count(),
            1,
            "{spelling}: one assertion header expected: {:?}",
            seen.headers
        );
        let values = assertions_in(&seen);
        assert_eq!(values.len(), 1, "{spelling}: {:?}", seen.headers);
        assert_ne!(
            values[0], forged,
            "{spelling}: the client's value reached the upstream"
        );
        let jwks = fetch_jwks(&gw).await;
        let c = verify(&jwks, &values[0], Algorithm::ES256, "app").unwrap_or_else(|e| {
            panic!("{spelling}: the upstream's assertion does not verify: {e:?}")
        });
        assert_eq!(c["sub"], "dave");
    }

    // Both spellings at once.
    let resp = raw_get(
        &gw,
        "/x",
        &[
            ("Authorization", &bearer),
            ("X-Identity-Assertion", &forged),
            ("X_IDENTITY_ASSERTION", &forged),
        ],
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert_eq!(
        normalized_names(&seen)
            .iter()
            .filter(|n| *n == HEADER)
            .count(),
        1,
        "{:?}",
        seen.headers
    );
    assert_ne!(assertions_in(&seen), vec![forged.clone()]);

    // Public route: no assertion is added, and the client's never passes, token or not.
    for spelling in spellings {
        for auth in [None, Some(bearer.as_str())] {
            let before = up.count();
            let mut headers = vec![(spelling, forged.as_str())];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let resp = raw_get(&gw, "/public/page", &headers).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{spelling}: {resp}");
            assert_eq!(up.count(), before + 1);
            let seen = up.last();
            assert!(
                !normalized_names(&seen).iter().any(|n| n == HEADER),
                "{spelling} (token: {}): an assertion header reached the upstream on a public route: {:?}",
                auth.is_some(),
                seen.headers
            );
        }
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 2. audience

#[tokio::test]
async fn an_assertion_is_bound_to_its_upstream_and_refused_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let idp = TestKey::new(Algorithm::ES256);
    let (pem, _) = assertion_key(Algorithm::ES256);
    let app = Upstream::start().await;
    let other = Upstream::start().await;
    let extra = assertion_table("60s")
        + &format!(
            r#"
[upstream.other]
endpoints = ["{}"]
connect_timeout = "1s"
response_timeout = "2s"

[[route]]
path_prefix = "/a"
upstream = "app"

[[route]]
path_prefix = "/b"
upstream = "other"
"#,
            other.url()
        );
    let cfg = config(&app, &extra);
    let gw = start(dir.path(), &idp, Some(&pem), &cfg).await;
    let token = idp.token("erin", json!({}));

    let r = get_with_token(&gw, "/a/1", &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(other.count(), 0);
    let for_app = the_assertion(&app);
    let r = get_with_token(&gw, "/b/1", &token).await;
    assert_eq!(r.status, 200);
    let for_other = the_assertion(&other);
    assert_ne!(for_app, for_other, "one assertion served two upstreams");

    let jwks = fetch_jwks(&gw).await;
    let c = verify(&jwks, &for_app, Algorithm::ES256, "app").expect("app's assertion verifies");
    assert_eq!(c["aud"], "app");
    let c =
        verify(&jwks, &for_other, Algorithm::ES256, "other").expect("other's assertion verifies");
    assert_eq!(c["aud"], "other");
    assert_eq!(c["sub"], "erin");

    // Replayed to the other service, each is refused for its audience.
    let e = verify(&jwks, &for_app, Algorithm::ES256, "other")
        .expect_err("app's assertion must not verify for `other`");
    assert_eq!(e.kind(), &ErrorKind::InvalidAudience, "{e:?}");
    let e = verify(&jwks, &for_other, Algorithm::ES256, "app")
        .expect_err("other's assertion must not verify for `app`");
    assert_eq!(e.kind(), &ErrorKind::InvalidAudience, "{e:?}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 3. rotation

#[tokio::test]
async fn a_rotated_key_signs_new_assertions_and_the_old_key_stays_published_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let idp = TestKey::new(Algorithm::ES256);
    let (pem_a, jwk_a) = assertion_key(Algorithm::ES256);
    let (pem_b, jwk_b) = assertion_key(Algorithm::ES256);
    let (kid_a, kid_b) = (rfc7638(&jwk_a), rfc7638(&jwk_b));
    let up = Upstream::start().await;
    let cfg = config(&up, &(assertion_table("3s") + ROUTES));
    let gw = start(dir.path(), &idp, Some(&pem_a), &cfg).await;

    // A fresh access token (new jti) per request, so no assertion comes from a cache.
    let fresh = |n: usize| idp.token(&format!("user-{n}"), json!({}));
    let r = get_with_token(&gw, "/x", &fresh(0)).await;
    assert_eq!(r.status, 200);
    let first = the_assertion(&up);
    assert_eq!(kid_of(&first), kid_a);
    assert_eq!(kids(&fetch_jwks(&gw).await), vec![kid_a.clone()]);
    let c = verify(&fetch_jwks(&gw).await, &first, Algorithm::ES256, "app").unwrap();
    assert!(num(&c, "exp") - num(&c, "iat") <= 3);

    // Replace the key file atomically.
    let tmp = dir.path().join("assertion.pem.new");
    std::fs::write(&tmp, &pem_b).unwrap();
    std::fs::rename(&tmp, dir.path().join("assertion.pem")).unwrap();

    let mut last_a = first;
    let mut n = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_with_token(&gw, "/x", &fresh(n)).await;
        n += 1;
        assert_eq!(r.status, 200);
        let a = the_assertion(&up);
        let kid = kid_of(&a);
        let jwks = fetch_jwks(&gw).await;
        verify(&jwks, &a, Algorithm::ES256, "app")
            .unwrap_or_else(|e| panic!("an assertion during rotation does not verify: {e:?}"));
        if kid == kid_b {
            break;
        }
        assert_eq!(kid, kid_a, "an assertion signed by an unknown key");
        last_a = a;
        assert!(
            Instant::now() < deadline,
            "the new key never signed an assertion within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_a_exp = num(
        &verify(&fetch_jwks(&gw).await, &last_a, Algorithm::ES256, "app").unwrap_or_else(|e| {
            panic!("the last old-key assertion no longer verifies right after rotation: {e:?}")
        }),
        "exp",
    );

    // From now on only the new key signs.
    for _ in 0..3 {
        let r = get_with_token(&gw, "/x", &fresh(n)).await;
        n += 1;
        assert_eq!(r.status, 200);
        assert_eq!(kid_of(&the_assertion(&up)), kid_b);
    }

    // Both keys are published; the old one goes only once its last assertion has expired.
    let jwks = fetch_jwks(&gw).await;
    let published = kids(&jwks);
    assert!(
        published.contains(&kid_a) && published.contains(&kid_b),
        "both kids must be published right after rotation: {published:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let published = kids(&fetch_jwks(&gw).await);
        assert!(
            published.contains(&kid_b),
            "the new key is not published: {published:?}"
        );
        if !published.contains(&kid_a) {
            let now = now_unix();
            assert!(
                now >= last_a_exp,
                "the old key left the JWKS at {now}, before its last assertion expired at {last_a_exp}"
            );
            assert_eq!(published, vec![kid_b.clone()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old key was still published 15 s after rotation (ttl 3s): {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 4. check

/// A complete configuration whose only variable part is the assertion key file.
fn check_config(dir: &Path) -> PathBuf {
    let idp = TestKey::new(Algorithm::ES256);
    std::fs::write(dir.join("jwks.json"), jwks(&[&idp])).unwrap();
    let toml = r#"[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[[issuer]]
id = "main"
issuer = "https://idp.example.com/"
jwks_file = "jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["ES256"]

[identity]
headers = { "X-User-Id" = "sub" }

[identity.assertion]
key = "assertion.pem"
ttl = "60s"

[upstream.app]
endpoints = ["http://127.0.0.1:9"]

[[route]]
path_prefix = "/"
upstream = "app"
"#;
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The line of the `key = "assertion.pem"` setting in `check_config`.
fn key_line(file: &Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .position(|l| l.starts_with("key = \"assertion.pem\""))
        .expect("the key line")
        + 1
}

/// Runs `check` and asserts it refuses the key at its line, naming the field and `words`.
fn assert_check_refuses_key(dir: &Path, file: &Path, words: &[&str]) {
    let Output {
        code,
        stdout: out,
        stderr: err,
    } = Proc::spawn(&mut portcullis(
        &["check", "--config", file.to_str().unwrap()],
        dir,
    ))
    .finish(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(2),
        "check should refuse\nstdout:\n{out}\nstderr:\n{err}"
    );
    let prefix = format!("{}:{}:", file.display(), key_line(file));
    let line = err
        .lines()
        .find(|l| l.starts_with(&prefix) && l.contains(": identity.assertion.key: "))
        .unwrap_or_else(|| {
            panic!("no `{prefix}COL: identity.assertion.key: ...` problem printed:\n{err}")
        });
    for w in words {
        assert!(line.contains(w), "the problem should mention {w:?}: {line}");
    }
    // A bad configuration never starts a gateway either.
    let Output {
        code,
        stdout: out,
        stderr: err,
    } = Proc::spawn(&mut portcullis(
        &["run", "--config", file.to_str().unwrap()],
        dir,
    ))
    .finish(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(2),
        "run should refuse\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(err.contains("identity.assertion.key"), "{err}");
}

#[test]
fn check_accepts_es256_and_eddsa_assertion_keys() {
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let dir = tempfile::tempdir().unwrap();
        let file = check_config(dir.path());
        std::fs::write(dir.path().join("assertion.pem"), assertion_key(alg).0).unwrap();
        let Output {
            code,
            stdout: out,
            stderr: err,
        } = Proc::spawn(&mut portcullis(
            &["check", "--config", file.to_str().unwrap()],
            dir.path(),
        ))
        .finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{alg:?}: stdout:\n{out}\nstderr:\n{err}");
    }
}

#[test]
fn check_refuses_an_rsa_assertion_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = check_config(dir.path());
    std::fs::write(
        dir.path().join("assertion.pem"),
        generate(Algorithm::RS256).unwrap().serialize_pem(),
    )
    .unwrap();
    assert_check_refuses_key(dir.path(), &file, &["assertion.pem", "ES256"]);
}

#[test]
fn check_refuses_a_p384_assertion_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = check_config(dir.path());
    std::fs::write(
        dir.path().join("assertion.pem"),
        generate(Algorithm::ES384).unwrap().serialize_pem(),
    )
    .unwrap();
    assert_check_refuses_key(dir.path(), &file, &["assertion.pem", "ES256"]);
}

#[test]
fn check_refuses_a_missing_assertion_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = check_config(dir.path());
    assert!(!dir.path().join("assertion.pem").exists());
    assert_check_refuses_key(dir.path(), &file, &["assertion.pem"]);
}

// ---------------------------------------------------------------- 5. no assertion

#[tokio::test]
async fn the_assertion_jwks_is_404_when_no_assertion_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let idp = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let cfg = config(&up, ROUTES);
    let gw = start(dir.path(), &idp, None, &cfg).await;
    let admin = gw.admin_addr().unwrap();
    let r = Client::plain()
        .get(&format!("http://{admin}/.well-known/jwks.json"), &[])
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    // And the gateway adds no assertion upstream.
    let token = idp.token("frank", json!({}));
    let r = get_with_token(&gw, "/x", &token).await;
    assert_eq!(r.status, 200);
    assert!(
        assertions_in(&up.last()).is_empty(),
        "{:?}",
        up.last().headers
    );
    gw.shutdown().await;
}
