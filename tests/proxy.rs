mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use portcullis::RunningGateway;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- helpers

/// Bound on how long a raw exchange may take before we stop reading.
const RAW_WAIT: Duration = Duration::from_secs(5);

/// A key whose JWKS is written to `dir/jwks.json`.
fn key_in(dir: &Path) -> TestKey {
    let key = TestKey::new(Algorithm::ES256);
    std::fs::write(dir.join("jwks.json"), jwks(&[&key])).unwrap();
    key
}

/// `base_config` for a local JWKS file and ES256, plus `routes`.
fn config(upstream: &str, routes: &str) -> String {
    base_config("jwks_file = \"jwks.json\"", upstream, "\"ES256\"") + routes
}

/// Adds lines to the `[server]` table of a configuration made by `base_config`.
fn with_server(cfg: &str, extra: &str) -> String {
    cfg.replacen("[server]\n", &format!("[server]\n{extra}\n"), 1)
}

async fn start(dir: &Path, cfg: &str) -> (RunningGateway, SocketAddr) {
    let gw = gateway(dir, cfg).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    (gw, addr)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The status code of a raw HTTP/1.1 response.
fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"))
}

/// Every value the upstream received under a name that means `name` once
/// compared case-insensitively with `_` read as `-`.
fn values_like(headers: &HeaderMap, name: &str) -> Vec<String> {
    let want = name.to_ascii_lowercase().replace('_', "-");
    headers
        .iter()
        .filter(|(k, _)| k.as_str().replace('_', "-") == want)
        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Header names the upstream received that start with `prefix` (normalized).
fn names_starting(headers: &HeaderMap, prefix: &str) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.replace('_', "-").starts_with(prefix))
        .collect()
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

const PUBLIC_AND_PRIVATE: &str = r#"
[[route]]
id = "private"
path_prefix = "/private"
upstream = "app"
auth = "required"

[[route]]
id = "public"
path_prefix = "/public"
upstream = "app"
auth = "public"
"#;

// ---------------------------------------------------------------- 1. hop-by-hop

#[tokio::test]
async fn hop_by_hop_headers_and_connection_named_headers_never_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let req = "GET /public/hop HTTP/1.1\r\n\
               Host: gw.test\r\n\
               Connection: close, X-Secret\r\n\
               Keep-Alive: timeout=5, max=100\r\n\
               TE: trailers\r\n\
               Trailer: X-Checksum\r\n\
               Proxy-Connection: keep-alive\r\n\
               X-Secret: do-not-forward\r\n\
               X-Kept: yes\r\n\
               \r\n";
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.count(), 1);
    let seen = up.last();
    for h in [
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "x-secret",
    ] {
        assert!(
            seen.headers.get(h).is_none(),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    // The upstream connection may carry its own Connection header, but never the
    // client's tokens.
    for v in seen.headers.get_all("connection") {
        let v = v.to_str().unwrap().to_ascii_lowercase();
        assert!(!v.contains("x-secret"), "client Connection forwarded: {v}");
    }
    assert_eq!(
        seen.headers["x-kept"], "yes",
        "an end-to-end header was lost"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn upgrade_header_without_an_upgrade_is_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let req = "GET /public/up HTTP/1.1\r\n\
               Host: gw.test\r\n\
               Connection: close\r\n\
               Upgrade: h2c\r\n\
               \r\n";
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let seen = up.last();
    assert!(
        seen.headers.get("upgrade").is_none(),
        "Upgrade reached the upstream: {:?}",
        seen.headers
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_named_by_the_client_are_removed_over_a_kept_alive_connection() {
    // Same rule with a keep-alive connection: two requests on one socket, the
    // Connection-named header removed from both.
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let req = "GET /public/1 HTTP/1.1\r\n\
               Host: gw.test\r\n\
               Connection: keep-alive, X-Internal-Token\r\n\
               X-Internal-Token: one\r\n\
               \r\n\
               GET /public/2 HTTP/1.1\r\n\
               Host: gw.test\r\n\
               Connection: close, x-internal-token\r\n\
               X-Internal-Token: two\r\n\
               \r\n";
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for s in seen {
        assert!(
            s.headers.get("x-internal-token").is_none(),
            "{}: {:?}",
            s.uri,
            s.headers
        );
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 2. identity and forwarding headers

/// Client-forged identity headers in every spelling, as raw lines.
const FORGED: &str = "x-user-id: forged-1\r\n\
                      X-USER-ID: forged-2\r\n\
                      X_User_Id: forged-3\r\n\
                      x-user-anything: forged-4\r\n\
                      X_USER_OTHER: forged-5\r\n\
                      X-User-Email: forged@evil.test\r\n\
                      X-Token-Issuer: https://evil.test/\r\n\
                      X-User-Roles: admin\r\n";

#[tokio::test]
async fn client_identity_headers_are_stripped_on_a_required_route() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    // No email claim: the gateway has no value, so the client's must not survive either.
    let t = key.token("alice", json!({"roles": ["reader"]}));
    let req = format!(
        "GET /private/me HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
         Authorization: Bearer {t}\r\n{FORGED}\r\n"
    );
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let h = up.last().headers;
    assert_eq!(values_like(&h, "x-user-id"), vec!["alice"], "{h:?}");
    assert_eq!(values_like(&h, "x-user-roles"), vec!["reader"], "{h:?}");
    assert_eq!(values_like(&h, "x-token-issuer"), vec![ISS], "{h:?}");
    assert!(values_like(&h, "x-user-email").is_empty(), "{h:?}");
    assert!(values_like(&h, "x-user-anything").is_empty(), "{h:?}");
    assert!(values_like(&h, "x-user-other").is_empty(), "{h:?}");
    for (_, v) in h.iter() {
        assert!(
            !v.as_bytes().starts_with(b"forged"),
            "a forged value reached the upstream: {h:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn client_identity_headers_are_stripped_on_a_public_route() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    // Without a token.
    let req =
        format!("GET /public/me HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{FORGED}\r\n");
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let h = up.last().headers;
    assert!(names_starting(&h, "x-user-").is_empty(), "{h:?}");
    assert!(values_like(&h, "x-token-issuer").is_empty(), "{h:?}");

    // With a valid token: a public route ignores it, so no identity is injected either.
    let t = key.token("alice", json!({"email": "a@example.com"}));
    let req = format!(
        "GET /public/me HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
         Authorization: Bearer {t}\r\n{FORGED}\r\n"
    );
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let h = up.last().headers;
    assert!(names_starting(&h, "x-user-").is_empty(), "{h:?}");
    assert!(values_like(&h, "x-token-issuer").is_empty(), "{h:?}");
    assert!(h.get("authorization").is_none(), "{h:?}");
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let req = "GET /public/fwd HTTP/1.1\r\n\
               Host: Shop.Example.com:8443\r\n\
               Connection: close\r\n\
               X-Forwarded-For: 6.6.6.6\r\n\
               X_Forwarded_For: 7.7.7.7\r\n\
               X-Forwarded-Proto: https\r\n\
               X-Forwarded-Host: evil.test\r\n\
               \r\n";
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    let h = up.last().headers;
    assert_eq!(
        values_like(&h, "x-forwarded-for"),
        vec!["127.0.0.1"],
        "{h:?}"
    );
    assert_eq!(values_like(&h, "x-forwarded-proto"), vec!["http"], "{h:?}");
    assert_eq!(
        values_like(&h, "x-forwarded-host"),
        vec!["Shop.Example.com:8443"],
        "{h:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_on_the_tls_listener_say_https() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let certs = Certs::new(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(
        &config(&up.url(), PUBLIC_AND_PRIVATE),
        "tls = { cert = \"server.crt\", key = \"server.key\" }",
    );
    let (gw, addr) = start(dir.path(), &cfg).await;

    let url = format!("https://localhost:{}/public/tls", addr.port());
    let r = Client::tls(&certs.ca_pem, false)
        .get(
            &url,
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "evil.test"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(
        values_like(&h, "x-forwarded-for"),
        vec!["127.0.0.1"],
        "{h:?}"
    );
    assert_eq!(values_like(&h, "x-forwarded-proto"), vec!["https"], "{h:?}");
    assert_eq!(
        values_like(&h, "x-forwarded-host"),
        vec![format!("localhost:{}", addr.port())],
        "{h:?}"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 3. claim rendering

#[tokio::test]
async fn array_claims_are_joined_with_commas() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let t = key.token("alice", json!({"roles": ["a", "b"]}));
    let r = Client::plain()
        .get(
            &format!("http://{addr}/private/x"),
            &[("authorization", &bearer(&t))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(values_like(&up.last().headers, "x-user-roles"), vec!["a,b"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn claims_with_control_or_non_ascii_bytes_arrive_percent_encoded_and_cannot_inject_headers() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let t = key.token(
        "Zoë",
        json!({"email": "x\r\nX-Admin: 1", "roles": ["ok", "y\nX-Admin: 2"]}),
    );
    let r = Client::plain()
        .get(
            &format!("http://{addr}/private/x"),
            &[("authorization", &bearer(&t))],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(values_like(&h, "x-user-id"), vec!["Zo%C3%AB"], "{h:?}");
    assert_eq!(
        values_like(&h, "x-user-email"),
        vec!["x%0D%0AX-Admin:%201"],
        "{h:?}"
    );
    assert_eq!(
        values_like(&h, "x-user-roles"),
        vec!["ok,y%0AX-Admin:%202"],
        "{h:?}"
    );
    assert!(
        h.get("x-admin").is_none(),
        "a claim injected a header: {h:?}"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 4. request id

#[tokio::test]
async fn well_formed_client_request_id_is_kept_and_returned() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let longest = "a".repeat(128);
    for id in ["abc-123_X.y", "7", longest.as_str()] {
        let r = Client::plain()
            .get(
                &format!("http://{addr}/public/rid"),
                &[("x-request-id", id)],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-request-id"], id, "response for {id}");
        assert_eq!(
            values_like(&up.last().headers, "x-request-id"),
            vec![id],
            "upstream for {id}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_client_request_id_is_replaced_by_a_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let too_long = "a".repeat(129);
    for bad in [
        too_long.as_str(),
        "has spaces in it",
        "semi;colon",
        "a/b",
        "",
    ] {
        let r = Client::plain()
            .get(
                &format!("http://{addr}/public/rid"),
                &[("x-request-id", bad)],
            )
            .await;
        assert_eq!(r.status, 200);
        let got = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert!(
            is_uuid(&got),
            "{bad:?} was answered with request id {got:?}"
        );
        assert_eq!(
            values_like(&up.last().headers, "x-request-id"),
            vec![got.clone()],
            "the upstream and the client must see the same generated id"
        );
    }
    // Without a client id, one is generated as well.
    let r = Client::plain()
        .get(&format!("http://{addr}/public/rid"), &[])
        .await;
    assert!(is_uuid(r.headers["x-request-id"].to_str().unwrap()));
    gw.shutdown().await;
}

#[tokio::test]
async fn request_id_is_returned_on_gateway_errors_too() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let r = Client::plain()
        .get(
            &format!("http://{addr}/private/x"),
            &[("x-request-id", "trace-401")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["x-request-id"], "trace-401");
    assert_eq!(r.json()["request_id"], "trace-401");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 5. bodies

#[tokio::test]
async fn large_bodies_stream_through_both_ways_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let r = Client::plain()
        .request(
            "POST",
            &format!("http://{addr}/public/upload"),
            &[("content-type", "application/octet-stream")],
            &body,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().body.len(),
        body.len(),
        "upstream got a different body"
    );
    assert!(up.last().body == body, "upstream got different bytes");
    assert_eq!(r.body.len(), body.len(), "client got a different body");
    assert!(r.body == body, "client got different bytes");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 6. round robin

#[tokio::test]
async fn requests_are_spread_round_robin_over_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let cfg = config(&a.url(), PUBLIC_AND_PRIVATE).replacen(
        &format!("endpoints = [\"{}\"]", a.url()),
        &format!("endpoints = [\"{}\", \"{}\"]", a.url(), b.url()),
        1,
    );
    assert!(cfg.contains(&b.url()));
    let (gw, addr) = start(dir.path(), &cfg).await;

    let client = Client::plain();
    for i in 0..10 {
        let r = client
            .get(&format!("http://{addr}/public/rr/{i}"), &[])
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.count() + b.count(), 10);
    assert_eq!(
        (a.count(), b.count()),
        (5, 5),
        "sequential requests to two healthy endpoints should alternate"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 7. upstream failures

#[tokio::test]
async fn refused_upstream_connection_is_502_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let dead = closed_port().await;
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{dead}"), PUBLIC_AND_PRIVATE),
    )
    .await;
    let errors = |kind: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                "portcullis_upstream_errors_total",
                &[("upstream", "app"), ("kind", kind)],
            )
            .await
        }
    };
    assert_eq!(errors("connect").await, 0.0);

    let r = Client::plain()
        .get(
            &format!("http://{addr}/public/x"),
            &[("x-request-id", "refused-1")],
        )
        .await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert!(j["error"].is_string(), "{j}");
    assert!(j["error_description"].is_string(), "{j}");
    assert_eq!(j["request_id"], "refused-1");
    assert_eq!(errors("connect").await, 1.0);
    assert_eq!(errors("timeout").await, 0.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504_and_counted_as_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().delay = Duration::from_secs(3);
    let cfg = config(&up.url(), PUBLIC_AND_PRIVATE).replacen(
        "response_timeout = \"2s\"",
        "response_timeout = \"300ms\"",
        1,
    );
    assert!(cfg.contains("300ms"));
    let (gw, addr) = start(dir.path(), &cfg).await;

    let r = Client::plain()
        .get(
            &format!("http://{addr}/public/slow"),
            &[("x-request-id", "slow-1")],
        )
        .await;
    assert_eq!(r.status, 504);
    let j = r.json();
    assert!(j["error"].is_string(), "{j}");
    assert_eq!(j["request_id"], "slow-1");
    let m = |kind: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                "portcullis_upstream_errors_total",
                &[("upstream", "app"), ("kind", kind)],
            )
            .await
        }
    };
    assert_eq!(m("timeout").await, 1.0);
    assert_eq!(m("connect").await, 0.0);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 8. refusals stay at the gate

#[tokio::test]
async fn refused_requests_never_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let other = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;
    let url = format!("http://{addr}/private/x");
    let c = Client::plain();

    let r = c.get(&url, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.www_authenticate(), r#"Bearer realm="portcullis""#);

    let r = c.request("POST", &url, &[], b"payload").await;
    assert_eq!(r.status, 401);

    let r = c.get(&url, &[("authorization", "Bearer not.a.jwt")]).await;
    assert_eq!(r.status, 401);

    // Signed by a key the issuer never published.
    let forged = other.token("mallory", json!({}));
    let r = c.get(&url, &[("authorization", &bearer(&forged))]).await;
    assert_eq!(r.status, 401);

    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 9. Authorization forwarding

#[tokio::test]
async fn authorization_is_not_forwarded_by_default_but_is_with_route_forward_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let routes = r#"
[[route]]
path_prefix = "/plain"
upstream = "app"

[[route]]
path_prefix = "/passthrough"
upstream = "app"
forward_authorization = true
"#;
    let (gw, addr) = start(dir.path(), &config(&up.url(), routes)).await;
    let t = key.token("alice", json!({}));
    let auth = bearer(&t);

    let r = Client::plain()
        .get(
            &format!("http://{addr}/plain/x"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert!(
        h.get("authorization").is_none(),
        "Authorization forwarded by default"
    );
    assert_eq!(values_like(&h, "x-user-id"), vec!["alice"]);

    let r = Client::plain()
        .get(
            &format!("http://{addr}/passthrough/x"),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(h["authorization"], auth.as_str());
    assert_eq!(values_like(&h, "x-user-id"), vec!["alice"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_is_extended_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(
        &config(&up.url(), PUBLIC_AND_PRIVATE),
        "trusted_proxies = [\"127.0.0.0/8\"]",
    );
    let (gw, addr) = start(dir.path(), &cfg).await;

    let r = Client::plain()
        .get(
            &format!("http://{addr}/public/x"),
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "gopher"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = up.last().headers;
    assert_eq!(
        values_like(&h, "x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"],
        "{h:?}"
    );
    assert_eq!(values_like(&h, "x-forwarded-proto"), vec!["http"], "{h:?}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- streaming

/// Reads from `s` into `buf` until `needle` appears; panics after `RAW_WAIT`.
async fn read_until<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, needle: &[u8]) {
    let found = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    let work = async {
        while !found(buf) {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before {:?} arrived; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(RAW_WAIT, work)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{:?} did not arrive in time; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            )
        });
}

#[tokio::test]
async fn response_body_streams_to_the_client_before_the_upstream_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    // A raw upstream that sends the head and a first chunk, then waits to be
    // told the client has it before it sends the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"\r\n\r\n").await;
        s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nfirst-part-0123\n\r\n",
        )
        .await
        .unwrap();
        s.flush().await.unwrap();
        let _ = tokio::time::timeout(RAW_WAIT, go_rx).await;
        s.write_all(b"b\r\nsecond-part\r\n0\r\n\r\n").await.unwrap();
        s.flush().await.unwrap();
        let _ = tokio::time::timeout(RAW_WAIT, s.read_u8()).await;
    });
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{up_addr}"), PUBLIC_AND_PRIVATE),
    )
    .await;

    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /public/stream HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Only reachable if the gateway passes the first chunk on while the
    // upstream's body is still open.
    read_until(&mut c, &mut buf, b"first-part-0123").await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    go_tx.send(()).unwrap();
    read_until(&mut c, &mut buf, b"second-part").await;
    drop(c);
    gw.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn request_body_streams_to_the_upstream_before_the_client_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    // A raw upstream that reports when the first part of the body has reached it,
    // then answers once the body is complete.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"first-part").await;
        first_tx.send(()).unwrap();
        read_until(&mut s, &mut buf, b"second-part").await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        s.flush().await.unwrap();
        let _ = tokio::time::timeout(RAW_WAIT, s.read_u8()).await;
    });
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{up_addr}"), PUBLIC_AND_PRIVATE),
    )
    .await;

    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"POST /public/upload HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\na\r\nfirst-part\r\n",
    )
    .await
    .unwrap();
    c.flush().await.unwrap();
    // Only reachable if the gateway forwards the body while it is still arriving.
    tokio::time::timeout(RAW_WAIT, first_rx)
        .await
        .expect("the first part of the body never reached the upstream")
        .unwrap();
    c.write_all(b"b\r\nsecond-part\r\n0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut c, &mut buf, b"\r\n\r\nok").await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    drop(c);
    gw.shutdown().await;
    upstream.abort();
}

// ---------------------------------------------------------------- more upstream failures

#[tokio::test]
async fn upstream_closing_the_connection_without_an_answer_is_502_counted_as_reset() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    // Accepts, reads the request head, hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(RAW_WAIT, s.read(&mut buf)).await;
            drop(s);
        }
    });
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{up_addr}"), PUBLIC_AND_PRIVATE),
    )
    .await;

    let r = Client::plain()
        .get(
            &format!("http://{addr}/public/x"),
            &[("x-request-id", "reset-1")],
        )
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["request_id"], "reset-1");
    assert_eq!(
        metric(
            &gw,
            "portcullis_upstream_errors_total",
            &[("upstream", "app"), ("kind", "reset")]
        )
        .await,
        1.0
    );
    gw.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn an_endpoint_that_refuses_is_ejected_and_traffic_goes_to_the_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let live = Upstream::start().await;
    let dead = closed_port().await;
    let cfg = config(&live.url(), PUBLIC_AND_PRIVATE).replacen(
        &format!("endpoints = [\"{}\"]", live.url()),
        &format!("endpoints = [\"http://{dead}\", \"{}\"]", live.url()),
        1,
    );
    assert!(cfg.contains(&dead.to_string()));
    let (gw, addr) = start(dir.path(), &cfg).await;

    let c = Client::plain();
    let mut failures = 0;
    for i in 0..10 {
        let r = c.get(&format!("http://{addr}/public/e/{i}"), &[]).await;
        match r.status.as_u16() {
            200 => {}
            502 => failures += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(
        failures <= 1,
        "the refusing endpoint kept getting traffic: {failures} failures"
    );
    assert_eq!(live.count() + failures, 10);
    gw.shutdown().await;
}

#[tokio::test]
async fn no_healthy_endpoint_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let dead = closed_port().await;
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{dead}"), PUBLIC_AND_PRIVATE),
    )
    .await;
    let c = Client::plain();
    // The first request finds the endpoint refusing and ejects it...
    let r = c.get(&format!("http://{addr}/public/1"), &[]).await;
    assert_eq!(r.status, 502);
    // ...so the next one finds no healthy endpoint at all.
    let r = c.get(&format!("http://{addr}/public/2"), &[]).await;
    assert_eq!(r.status, 503);
    let j = r.json();
    assert!(j["error"].is_string() && j["request_id"].is_string(), "{j}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- response headers, upgrades

/// A raw upstream on loopback that answers every request on a connection with
/// `answer(request head)`, then keeps the socket for whatever follows.
async fn raw_upstream<F>(answer: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                read_until(&mut s, &mut buf, b"\r\n\r\n").await;
                let head = String::from_utf8_lossy(&buf).into_owned();
                let (bytes, echo) = answer(&head);
                s.write_all(&bytes).await.unwrap();
                s.flush().await.unwrap();
                if echo {
                    // After a switch of protocols: echo every byte back.
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = match tokio::time::timeout(RAW_WAIT, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = tokio::time::timeout(RAW_WAIT, s.read_u8()).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn hop_by_hop_headers_from_the_upstream_never_reach_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let (up_addr, task) = raw_upstream(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
              Connection: X-Upstream-Secret\r\n\
              X-Upstream-Secret: internal\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              X-End-To-End: kept\r\n\r\nok"
                .to_vec(),
            false,
        )
    })
    .await;
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{up_addr}"), PUBLIC_AND_PRIVATE),
    )
    .await;

    let r = Client::plain()
        .get(&format!("http://{addr}/public/resp"), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    for h in ["x-upstream-secret", "keep-alive", "proxy-connection"] {
        assert!(
            r.headers.get(h).is_none(),
            "{h} reached the client: {:?}",
            r.headers
        );
    }
    for v in r.headers.get_all("connection") {
        assert!(
            !v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("x-upstream-secret"),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(r.headers["x-end-to-end"], "kept");
    gw.shutdown().await;
    task.abort();
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Answers a WebSocket handshake with 101 and then echoes; anything else with 400.
fn websocket_upstream(head: &str) -> (Vec<u8>, bool) {
    let lower = head.to_ascii_lowercase();
    let upgrade = lower.contains("\r\nupgrade: websocket\r\n")
        && lower
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("upgrade"));
    if upgrade {
        (
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
            )
            .into_bytes(),
            true,
        )
    } else {
        (
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\nno upgrade".to_vec(),
            false,
        )
    }
}

#[tokio::test]
async fn websocket_upgrade_passes_through_after_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let (up_addr, task) = raw_upstream(websocket_upstream).await;
    let (gw, addr) = start(
        dir.path(),
        &config(&format!("http://{up_addr}"), PUBLIC_AND_PRIVATE),
    )
    .await;

    let t = key.token("alice", json!({}));
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /private/ws HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {t}\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut c, &mut buf, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&buf).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade was not proxied: {head}"
    );
    assert!(head.contains(WS_ACCEPT), "{head}");
    // Bytes now flow both ways through the gateway.
    c.write_all(b"frame-bytes-after-upgrade").await.unwrap();
    let mut echoed = Vec::new();
    read_until(&mut c, &mut echoed, b"frame-bytes-after-upgrade").await;
    drop(c);
    gw.shutdown().await;
    task.abort();
}

#[tokio::test]
async fn websocket_upgrade_without_a_token_is_refused_before_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, addr) = start(dir.path(), &config(&up.url(), PUBLIC_AND_PRIVATE)).await;

    let req = format!(
        "GET /private/ws HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 401, "{resp}");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}
