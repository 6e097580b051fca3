//! Route policy over the TLS listener: auth modes, issuers, scopes and claims,
//! token sources (header, cookie with its CSRF check, query) and CORS.

mod common;

use std::net::SocketAddr;

use common::*;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use portcullis::RunningGateway;
use serde_json::json;
use tempfile::TempDir;

// ---------------------------------------------------------------- helpers

const OTHER_ISS: &str = "https://other.test.example/";
const APP_ORIGIN: &str = "https://app.example.com";

/// A TLS gateway with issuer "main" (`key`) and issuer "other" (`other_key`),
/// one recording upstream, and HTTPS clients trusting the test CA.
struct Env {
    _dir: TempDir,
    key: TestKey,
    other_key: TestKey,
    certs: Certs,
    up: Upstream,
    gw: RunningGateway,
    addr: SocketAddr,
}

impl Env {
    /// `extra` goes after the issuers and upstream (a `[token]` table, say);
    /// `routes` after it.
    async fn start(extra: &str, routes: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::new(Algorithm::ES256);
        let other_key = TestKey::new(Algorithm::ES256);
        std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
        std::fs::write(dir.path().join("other-jwks.json"), jwks(&[&other_key])).unwrap();
        let certs = Certs::new(dir.path());
        let up = Upstream::start().await;
        let cfg = config(&up, extra, routes);
        let gw = gateway(dir.path(), &cfg).await;
        wait_ready(&gw).await;
        let addr = gw.listen_addrs()[0];
        Env {
            _dir: dir,
            key,
            other_key,
            certs,
            up,
            gw,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// HTTP/1.1 over TLS.
    fn h1(&self) -> Client {
        Client::tls(&self.certs.ca_pem, false)
    }

    /// h2 over TLS (ALPN).
    fn h2(&self) -> Client {
        Client::tls(&self.certs.ca_pem, true)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.h1().get(&self.url(path), headers).await
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.h1()
            .request("POST", &self.url(path), headers, b"{}")
            .await
    }

    /// A token from issuer "other" for the test audience.
    fn other_token(&self, sub: &str) -> String {
        let c = portcullis::cli::mint::claims(OTHER_ISS, AUD, sub, 300);
        self.other_key.sign(&c)
    }

    /// The sum of `auth_decisions_total` over every issuer for `result`.
    async fn decisions(&self, result: &str) -> f64 {
        let admin = self.gw.admin_addr().unwrap();
        let (_, _, body) = http_get(&format!("http://{admin}/metrics"), &[]).await;
        let want = format!("result=\"{result}\"");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("portcullis_auth_decisions_total{"))
            .filter(|l| {
                l.split_once('}')
                    .is_some_and(|(labels, _)| labels.split(['{', ',']).any(|p| p == want))
            })
            .map(|l| l.rsplit(' ').next().unwrap().trim().parse::<f64>().unwrap())
            .sum()
    }

    async fn shutdown(self) {
        self.gw.shutdown().await;
    }
}

/// `base_config` on TLS, plus issuer "other", `extra` and `routes`.
fn config(up: &Upstream, extra: &str, routes: &str) -> String {
    let base = base_config("jwks_file = \"jwks.json\"", &up.url(), "\"ES256\"");
    let base = base.replacen(
        "[server]\n",
        "[server]\ntls = { cert = \"server.crt\", key = \"server.key\" }\n",
        1,
    );
    assert!(base.contains("tls = {"), "no [server] table to extend");
    format!(
        r#"{base}
[[issuer]]
id = "other"
issuer = "{OTHER_ISS}"
jwks_file = "other-jwks.json"
audiences = ["{AUD}"]
algorithms = ["ES256"]
leeway = "5s"

{extra}
{routes}"#
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The single value of `name` as the upstream received it, if any.
fn header(h: &HeaderMap, name: &str) -> Option<String> {
    let all: Vec<String> = h
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    assert!(all.len() <= 1, "{name} appears {} times: {h:?}", all.len());
    all.into_iter().next()
}

fn identity_headers(h: &HeaderMap) -> Vec<String> {
    h.keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| {
            let k = k.replace('_', "-");
            k.starts_with("x-user-") || k == "x-token-issuer"
        })
        .collect()
}

fn reply_header(r: &Reply, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// Splits a comma-separated header value into lower-case items.
fn items(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

// ---------------------------------------------------------------- 1. auth modes

const AUTH_MODES: &str = r#"
[[route]]
id = "required"
path_prefix = "/required"
upstream = "app"
auth = "required"

[[route]]
id = "optional"
path_prefix = "/optional"
upstream = "app"
auth = "optional"

[[route]]
id = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"
"#;

#[tokio::test]
async fn required_route_refuses_a_missing_token_and_forwards_a_valid_one_with_identity() {
    let env = Env::start("", AUTH_MODES).await;

    let r = env.get("/required/x", &[("x-user-id", "mallory")]).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.www_authenticate(), r#"Bearer realm="portcullis""#);
    assert_eq!(r.json()["error"], "unauthorized");
    assert_eq!(env.up.count(), 0, "a refused request reached the upstream");

    let t = env.key.token("alice", json!({"email": "a@example.com"}));
    for client in [env.h1(), env.h2()] {
        let r = client
            .get(&env.url("/required/x"), &[("authorization", &bearer(&t))])
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let h = env.up.last().headers;
        assert_eq!(header(&h, "x-user-id").as_deref(), Some("alice"), "{h:?}");
        assert_eq!(header(&h, "x-user-email").as_deref(), Some("a@example.com"));
        assert_eq!(header(&h, "x-token-issuer").as_deref(), Some(ISS));
    }
    assert_eq!(env.up.count(), 2);
    env.shutdown().await;
}

#[tokio::test]
async fn optional_route_passes_without_a_token_with_no_identity_headers() {
    let env = Env::start("", AUTH_MODES).await;

    let r = env
        .get(
            "/optional/x",
            &[
                ("x-user-id", "mallory"),
                ("x-user-roles", "admin"),
                ("x-token-issuer", ISS),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.count(), 1);
    let h = env.up.last().headers;
    assert!(
        identity_headers(&h).is_empty(),
        "client-sent identity headers reached the upstream: {h:?}"
    );

    // A valid token on an optional route is used.
    let t = env.key.token("alice", json!({}));
    let r = env
        .get("/optional/x", &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        header(&env.up.last().headers, "x-user-id").as_deref(),
        Some("alice")
    );
    env.shutdown().await;
}

#[tokio::test]
async fn optional_route_refuses_an_invalid_token() {
    let env = Env::start("", AUTH_MODES).await;

    // Garbage, a forged signature and an expired token: each 401, none forwarded.
    let good = env.key.token("alice", json!({}));
    let forged = {
        let (signed, _) = good.rsplit_once('.').unwrap();
        let other = env.other_key.token("alice", json!({}));
        let (_, sig) = other.rsplit_once('.').unwrap();
        format!("{signed}.{sig}")
    };
    let now = portcullis::cli::mint::now() as i64;
    let expired = env
        .key
        .token("alice", json!({"iat": now - 600, "exp": now - 300}));
    for (what, t) in [
        ("garbage", "not-a-jwt".to_string()),
        ("forged", forged),
        ("expired", expired),
    ] {
        let r = env
            .get("/optional/x", &[("authorization", &bearer(&t))])
            .await;
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert!(
            r.www_authenticate().contains(r#"error="invalid_token""#),
            "{what}: {}",
            r.www_authenticate()
        );
    }
    assert_eq!(env.up.count(), 0, "an invalid token reached the upstream");
    env.shutdown().await;
}

#[tokio::test]
async fn public_route_ignores_any_token_and_strips_identity_headers() {
    let env = Env::start("", AUTH_MODES).await;

    let now = portcullis::cli::mint::now() as i64;
    let valid = env.key.token("alice", json!({"roles": ["admin"]}));
    let expired = env
        .key
        .token("alice", json!({"iat": now - 600, "exp": now - 300}));
    let tokens = [
        "garbage".to_string(),
        "a.b.c".to_string(),
        expired,
        valid.clone(),
    ];
    for (i, t) in tokens.iter().enumerate() {
        let r = env
            .get(
                "/public/x",
                &[
                    ("authorization", &bearer(t)),
                    ("x-user-id", "mallory"),
                    ("X_User_Roles", "admin"),
                    ("x-token-issuer", ISS),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "token #{i}: {:?}", r.body);
        assert_eq!(env.up.count(), i + 1);
        let h = env.up.last().headers;
        assert!(
            identity_headers(&h).is_empty(),
            "token #{i}: identity headers reached a public upstream: {h:?}"
        );
        assert!(
            h.get("authorization").is_none(),
            "token #{i}: the Authorization header was forwarded: {h:?}"
        );
    }

    // Over h2 as well.
    let r = env
        .h2()
        .get(
            &env.url("/public/y"),
            &[("authorization", "Bearer junk"), ("x-user-id", "mallory")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert!(identity_headers(&env.up.last().headers).is_empty());
    env.shutdown().await;
}

// ---------------------------------------------------------------- 2. issuers, scopes, claims

const REQUIREMENTS: &str = r#"
[[route]]
id = "other-only"
path_prefix = "/other-only"
upstream = "app"
auth = "required"
issuers = ["other"]

[[route]]
id = "scoped"
path_prefix = "/scoped"
upstream = "app"
auth = "required"
scopes = ["a", "b"]

[[route]]
id = "roles"
path_prefix = "/roles"
upstream = "app"
auth = "required"
claims = { roles = ["admin", "manager"] }

[[route]]
id = "nested"
path_prefix = "/nested"
upstream = "app"
auth = "required"
claims = { "realm_access.roles" = ["admin"] }
"#;

#[tokio::test]
async fn route_issuers_refuse_a_token_from_another_issuer_with_403() {
    let env = Env::start("", REQUIREMENTS).await;

    let before = env.decisions("insufficient_scope").await;
    let t = env.key.token("alice", json!({}));
    let r = env
        .get("/other-only/x", &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert!(
        r.www_authenticate()
            .contains(r#"error="insufficient_scope""#),
        "{}",
        r.www_authenticate()
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(env.up.count(), 0);
    assert_eq!(env.decisions("insufficient_scope").await, before + 1.0);

    // The listed issuer's token passes.
    let t = env.other_token("bob");
    let r = env
        .get("/other-only/x", &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        header(&env.up.last().headers, "x-user-id").as_deref(),
        Some("bob")
    );
    env.shutdown().await;
}

#[tokio::test]
async fn route_scopes_are_read_from_scope_string_or_scp_array() {
    let env = Env::start("", REQUIREMENTS).await;

    for (what, extra) in [
        ("scope string", json!({"scope": "a b c"})),
        ("scp array", json!({"scp": ["a", "b"]})),
    ] {
        let t = env.key.token("alice", extra);
        let r = env
            .get("/scoped/x", &[("authorization", &bearer(&t))])
            .await;
        assert_eq!(r.status, 200, "{what}: {:?}", r.body);
    }
    assert_eq!(env.up.count(), 2);
    env.shutdown().await;
}

#[tokio::test]
async fn a_missing_scope_is_403_insufficient_scope_naming_it_and_counted() {
    let env = Env::start("", REQUIREMENTS).await;

    let main_before = metric(
        &env.gw,
        "portcullis_auth_decisions_total",
        &[("issuer", "main"), ("result", "insufficient_scope")],
    )
    .await;
    assert_eq!(main_before, 0.0, "the series is exported from start at 0");

    let t = env.key.token("alice", json!({"scope": "a"}));
    let r = env
        .get("/scoped/x", &[("authorization", &bearer(&t))])
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let wa = r.www_authenticate();
    assert!(wa.starts_with("Bearer "), "{wa}");
    assert!(wa.contains(r#"error="insufficient_scope""#), "{wa}");
    assert!(wa.contains(r#"scope="b""#), "{wa}");
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(env.up.count(), 0);
    assert_eq!(
        metric(
            &env.gw,
            "portcullis_auth_decisions_total",
            &[("issuer", "main"), ("result", "insufficient_scope")],
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &env.gw,
            "portcullis_auth_decisions_total",
            &[("issuer", "main"), ("result", "allowed")],
        )
        .await,
        0.0,
        "a refused token was counted as allowed"
    );

    // A `scope` claim of "ab" or "a,b" does not hold "b".
    for s in ["ab", "a,b", "a b-extra"] {
        let t = env.key.token("alice", json!({ "scope": s }));
        let r = env
            .get("/scoped/x", &[("authorization", &bearer(&t))])
            .await;
        assert_eq!(r.status, 403, "scope {s:?}: {:?}", r.body);
    }
    assert_eq!(env.up.count(), 0);
    env.shutdown().await;
}

#[tokio::test]
async fn route_claims_match_any_listed_value_in_arrays_and_scalars() {
    let env = Env::start("", REQUIREMENTS).await;

    let pass = [
        json!({"roles": ["user", "manager"]}),
        json!({"roles": ["admin"]}),
        json!({"roles": "admin"}),
        json!({"roles": "manager"}),
    ];
    for (i, extra) in pass.iter().enumerate() {
        let t = env.key.token("alice", extra.clone());
        let r = env.get("/roles/x", &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 200, "{extra}: {:?}", r.body);
        assert_eq!(env.up.count(), i + 1);
    }
    let fail = [
        json!({}),
        json!({"roles": []}),
        json!({"roles": ["user", "guest"]}),
        json!({"roles": "user"}),
        json!({"roles": "admin manager"}),
        json!({"roles": ["Admin"]}),
        json!({"roles": {"admin": true}}),
        json!({"role": "admin"}),
    ];
    for extra in &fail {
        let t = env.key.token("alice", extra.clone());
        let r = env.get("/roles/x", &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 403, "{extra}: {:?}", r.body);
        assert!(
            r.www_authenticate()
                .contains(r#"error="insufficient_scope""#),
            "{extra}: {}",
            r.www_authenticate()
        );
    }
    assert_eq!(
        env.up.count(),
        pass.len(),
        "a refused token reached the upstream"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn nested_claims_are_matched_by_dotted_path() {
    let env = Env::start("", REQUIREMENTS).await;

    let pass = [
        json!({"realm_access": {"roles": ["offline", "admin"]}}),
        json!({"realm_access": {"roles": "admin"}}),
    ];
    for extra in &pass {
        let t = env.key.token("alice", extra.clone());
        let r = env
            .get("/nested/x", &[("authorization", &bearer(&t))])
            .await;
        assert_eq!(r.status, 200, "{extra}: {:?}", r.body);
    }
    let fail = [
        json!({}),
        json!({"realm_access": {"roles": ["user"]}}),
        json!({"realm_access": ["admin"]}),
        json!({"realm_access": {"groups": ["admin"]}}),
        json!({"roles": ["admin"]}),
        json!({"realm_access": {"roles": {"admin": 1}}}),
    ];
    for extra in &fail {
        let t = env.key.token("alice", extra.clone());
        let r = env
            .get("/nested/x", &[("authorization", &bearer(&t))])
            .await;
        assert_eq!(r.status, 403, "{extra}: {:?}", r.body);
    }
    assert_eq!(env.up.count(), pass.len());
    env.shutdown().await;
}

// ---------------------------------------------------------------- 3. cookie tokens and CSRF

const COOKIE_TOKEN: &str = r#"
[token]
cookie = "access_token"
csrf_origins = ["https://app.example.com"]
"#;

const API: &str = r#"
[[route]]
id = "api"
path_prefix = "/api"
upstream = "app"
auth = "required"
"#;

fn cookie(t: &str) -> String {
    format!("access_token={t}")
}

#[tokio::test]
async fn a_cookie_token_authenticates_a_get() {
    let env = Env::start(COOKIE_TOKEN, API).await;

    let t = env.key.token("alice", json!({}));
    let r = env.get("/api/x", &[("cookie", &cookie(&t))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        header(&env.up.last().headers, "x-user-id").as_deref(),
        Some("alice")
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_cookie_token_on_post_without_origin_or_referer_is_403_csrf() {
    let env = Env::start(COOKIE_TOKEN, API).await;

    let before = env.decisions("csrf").await;
    let t = env.key.token("alice", json!({}));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = env
            .h1()
            .request(method, &env.url("/api/x"), &[("cookie", &cookie(&t))], b"")
            .await;
        assert_eq!(r.status, 403, "{method}: {:?}", r.body);
    }
    assert_eq!(
        env.up.count(),
        0,
        "a cross-site request reached the upstream"
    );
    assert_eq!(env.decisions("csrf").await, before + 4.0);
    env.shutdown().await;
}

#[tokio::test]
async fn a_cookie_token_on_post_from_a_foreign_origin_is_403() {
    let env = Env::start(COOKIE_TOKEN, API).await;

    let t = env.key.token("alice", json!({}));
    let c = cookie(&t);
    let cases: [&[(&str, &str)]; 4] = [
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        &[("referer", "https://evil.example/app.example.com")],
        // The Origin decides; an allowed Referer does not rescue a foreign Origin.
        &[
            ("origin", "https://evil.example"),
            ("referer", "https://app.example.com/page"),
        ],
    ];
    let before = env.decisions("csrf").await;
    for extra in cases {
        let mut headers = vec![("cookie", c.as_str())];
        headers.extend_from_slice(extra);
        let r = env.post("/api/x", &headers).await;
        assert_eq!(r.status, 403, "{extra:?}: {:?}", r.body);
    }
    assert_eq!(env.up.count(), 0);
    assert_eq!(env.decisions("csrf").await, before + 4.0);
    env.shutdown().await;
}

#[tokio::test]
async fn a_cookie_token_on_post_from_an_allowed_origin_or_referer_passes() {
    let env = Env::start(COOKIE_TOKEN, API).await;

    let t = env.key.token("alice", json!({}));
    let c = cookie(&t);
    let r = env
        .post("/api/x", &[("cookie", &c), ("origin", APP_ORIGIN)])
        .await;
    assert_eq!(r.status, 200, "Origin: {:?}", r.body);
    let r = env
        .post(
            "/api/x",
            &[
                ("cookie", &c),
                ("referer", "https://app.example.com/orders?x=1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "Referer: {:?}", r.body);
    assert_eq!(env.up.count(), 2);

    // A header token needs no Origin: CSRF concerns ambient credentials only.
    let r = env.post("/api/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.count(), 3);
    env.shutdown().await;
}

#[tokio::test]
async fn the_token_cookie_is_not_forwarded_but_other_cookies_are() {
    let env = Env::start(COOKIE_TOKEN, API).await;

    let t = env.key.token("alice", json!({}));
    let jar = format!("theme=dark; access_token={t}; lang=en");
    let r = env.get("/api/x", &[("cookie", &jar)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let h = env.up.last().headers;
    let cookies: Vec<String> = h
        .get_all("cookie")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(';')
                .map(|p| p.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(cookies.contains(&"theme=dark".to_string()), "{cookies:?}");
    assert!(cookies.contains(&"lang=en".to_string()), "{cookies:?}");
    assert!(
        !cookies.iter().any(|c| c.starts_with("access_token")),
        "the token cookie reached the upstream: {cookies:?}"
    );
    assert!(
        !format!("{h:?}").contains(&t),
        "the token reached the upstream: {h:?}"
    );

    // Only the token cookie: no Cookie header at all upstream.
    let r = env.get("/api/x", &[("cookie", &cookie(&t))]).await;
    assert_eq!(r.status, 200);
    let h = env.up.last().headers;
    assert!(
        h.get_all("cookie")
            .iter()
            .all(|v| !v.to_str().unwrap().contains("access_token")),
        "{h:?}"
    );
    env.shutdown().await;
}

// ---------------------------------------------------------------- 4. query tokens, ambiguity

#[tokio::test]
async fn query_tokens_are_ignored_unless_enabled() {
    let env = Env::start("", API).await;

    let t = env.key.token("alice", json!({}));
    let r = env.get(&format!("/api/x?access_token={t}"), &[]).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        r.www_authenticate(),
        r#"Bearer realm="portcullis""#,
        "a query token with query = false counts as no token"
    );
    assert_eq!(env.up.count(), 0);
    assert_eq!(env.decisions("missing").await, 1.0);
    env.shutdown().await;
}

#[tokio::test]
async fn an_enabled_query_token_authenticates_and_is_removed_from_the_upstream_uri() {
    let env = Env::start("[token]\nquery = true\n", API).await;

    let t = env.key.token("alice", json!({}));
    let r = env
        .get(&format!("/api/x?a=1&access_token={t}&b=two%20words"), &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = env.up.last();
    assert_eq!(seen.uri, "/api/x?a=1&b=two%20words");
    assert_eq!(header(&seen.headers, "x-user-id").as_deref(), Some("alice"));

    // Alone in the query: no `?` left behind.
    let r = env.get(&format!("/api/y?access_token={t}"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(env.up.last().uri, "/api/y");

    // A token in the query and in the header at once is ambiguous.
    let r = env
        .get(
            &format!("/api/z?access_token={t}"),
            &[("authorization", &bearer(&t))],
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.www_authenticate().contains(r#"error="invalid_request""#));
    assert_eq!(env.up.count(), 2);
    env.shutdown().await;
}

#[tokio::test]
async fn a_token_in_header_and_cookie_at_once_is_400_invalid_request() {
    let env = Env::start(COOKIE_TOKEN, API).await;

    let t = env.key.token("alice", json!({}));
    let other = env.key.token("bob", json!({}));
    for (what, c) in [
        ("same token", cookie(&t)),
        ("different tokens", cookie(&other)),
    ] {
        let r = env
            .get("/api/x", &[("authorization", &bearer(&t)), ("cookie", &c)])
            .await;
        assert_eq!(r.status, 400, "{what}: {:?}", r.body);
        let wa = r.www_authenticate();
        assert!(wa.starts_with("Bearer "), "{what}: {wa}");
        assert!(wa.contains(r#"error="invalid_request""#), "{what}: {wa}");
        assert_eq!(r.json()["error"], "invalid_request");
    }

    // Two Authorization headers are ambiguous as well.
    let r = env
        .get(
            "/api/x",
            &[
                ("authorization", &bearer(&t)),
                ("authorization", &bearer(&other)),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.www_authenticate().contains(r#"error="invalid_request""#));
    assert_eq!(env.up.count(), 0);
    env.shutdown().await;
}

// ---------------------------------------------------------------- 5. CORS

const CORS: &str = r#"
[[route]]
id = "cors"
path_prefix = "/cors"
upstream = "app"
auth = "required"
cors = { origins = ["https://app.example.com"], methods = ["GET", "POST"], headers = ["authorization", "content-type"], max_age = "10m" }
"#;

#[tokio::test]
async fn a_cors_preflight_is_answered_204_without_a_token_and_never_forwarded() {
    let env = Env::start("", CORS).await;

    for client in [env.h1(), env.h2()] {
        let r = client
            .request(
                "OPTIONS",
                &env.url("/cors/orders"),
                &[
                    ("origin", APP_ORIGIN),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type",
                    ),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, 204, "{:?} {:?}", r.headers, r.body);
        assert_eq!(
            reply_header(&r, "access-control-allow-origin").as_deref(),
            Some(APP_ORIGIN)
        );
        let methods = items(&reply_header(&r, "access-control-allow-methods").unwrap());
        assert!(methods.contains(&"get".to_string()), "{methods:?}");
        assert!(methods.contains(&"post".to_string()), "{methods:?}");
        let allowed = items(&reply_header(&r, "access-control-allow-headers").unwrap());
        assert!(
            allowed.contains(&"authorization".to_string()),
            "{allowed:?}"
        );
        assert!(allowed.contains(&"content-type".to_string()), "{allowed:?}");
        assert_eq!(
            reply_header(&r, "access-control-max-age").as_deref(),
            Some("600")
        );
    }
    assert_eq!(env.up.count(), 0, "a preflight reached the upstream");
    env.shutdown().await;
}

#[tokio::test]
async fn a_cors_preflight_from_a_disallowed_origin_is_403_and_never_forwarded() {
    let env = Env::start("", CORS).await;

    let r = env
        .h1()
        .request(
            "OPTIONS",
            &env.url("/cors/orders"),
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.headers);
    assert!(
        r.headers.get("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );
    assert_eq!(
        env.up.count(),
        0,
        "a refused preflight reached the upstream"
    );

    // An allowed origin asking for a method the CORS policy does not list.
    let r = env
        .h1()
        .request(
            "OPTIONS",
            &env.url("/cors/orders"),
            &[
                ("origin", APP_ORIGIN),
                ("access-control-request-method", "DELETE"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.headers);
    assert!(r.headers.get("access-control-allow-methods").is_none());
    assert_eq!(
        env.up.count(),
        0,
        "a refused preflight reached the upstream"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn cors_headers_are_on_actual_responses_for_the_allowed_origin_including_401() {
    let env = Env::start("", CORS).await;

    let t = env.key.token("alice", json!({}));
    let r = env
        .get(
            "/cors/orders",
            &[("origin", APP_ORIGIN), ("authorization", &bearer(&t))],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        reply_header(&r, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN)
    );
    assert_eq!(env.up.count(), 1);

    // Refused for want of a token: the browser can still read why.
    let r = env.get("/cors/orders", &[("origin", APP_ORIGIN)]).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        reply_header(&r, "access-control-allow-origin").as_deref(),
        Some(APP_ORIGIN)
    );
    assert_eq!(env.up.count(), 1);

    // Another origin gets no CORS grant.
    let r = env
        .get(
            "/cors/orders",
            &[
                ("origin", "https://evil.example"),
                ("authorization", &bearer(&t)),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );
    env.shutdown().await;
}
