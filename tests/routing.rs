mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::RunningGateway;
use serde_json::json;

// ---------------------------------------------------------------- helpers

const RAW_WAIT: Duration = Duration::from_secs(5);

fn key_in(dir: &Path) -> TestKey {
    let key = TestKey::new(Algorithm::ES256);
    std::fs::write(dir.join("jwks.json"), jwks(&[&key])).unwrap();
    key
}

/// `base_config` (upstream `app`) for a local JWKS file and ES256, plus `rest`
/// (more upstreams and routes).
fn config(upstream: &str, rest: &str) -> String {
    base_config("jwks_file = \"jwks.json\"", upstream, "\"ES256\"") + rest
}

/// Adds lines to the `[server]` table of a configuration made by `base_config`.
fn with_server(cfg: &str, extra: &str) -> String {
    let out = cfg.replacen("[server]\n", &format!("[server]\n{extra}\n"), 1);
    assert_ne!(out, cfg, "no [server] table to extend");
    out
}

fn upstream_section(name: &str, up: &Upstream) -> String {
    format!(
        "\n[upstream.{name}]\nendpoints = [\"{}\"]\nconnect_timeout = \"1s\"\nresponse_timeout = \"2s\"\n",
        up.url()
    )
}

async fn start(dir: &Path, cfg: &str) -> (RunningGateway, SocketAddr) {
    let gw = gateway(dir, cfg).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    (gw, addr)
}

fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"))
}

/// A GET with a given Host header; returns the status.
async fn get_host(addr: SocketAddr, host: &str, path: &str) -> u16 {
    Client::plain()
        .get(&format!("http://{addr}{path}"), &[("host", host)])
        .await
        .status
        .as_u16()
}

fn assert_json_error(r: &Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status);
    let j = r.json();
    assert!(j["error"].is_string(), "{j}");
    assert!(j["error_description"].is_string(), "{j}");
    assert!(
        j["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{j}"
    );
}

// ---------------------------------------------------------------- 10. host and prefix

/// Three upstreams, one per host group, so the one that saw a request names the route.
struct HostSetup {
    exact: Upstream,
    wild: Upstream,
    any: Upstream,
}

impl HostSetup {
    async fn new() -> HostSetup {
        HostSetup {
            exact: Upstream::start().await,
            wild: Upstream::start().await,
            any: Upstream::start().await,
        }
    }

    /// Requests seen so far by (exact, wild, any).
    fn counts(&self) -> [usize; 3] {
        [self.exact.count(), self.wild.count(), self.any.count()]
    }
}

/// Sends one request and names the upstream that received it; panics unless
/// exactly one upstream saw it.
async fn routed_to(s: &HostSetup, addr: SocketAddr, host: &str, path: &str) -> &'static str {
    let before = s.counts();
    let status = get_host(addr, host, path).await;
    assert_eq!(status, 200, "{host}{path}");
    let after = s.counts();
    let moved: Vec<usize> = (0..3).filter(|i| after[*i] != before[*i]).collect();
    assert_eq!(moved.len(), 1, "{host}{path}: {before:?} -> {after:?}");
    ["exact", "wild", "any"][moved[0]]
}

fn host_routes(s: &HostSetup) -> String {
    upstream_section("exact", &s.exact)
        + &upstream_section("wild", &s.wild)
        + &upstream_section("any", &s.any)
        + r#"
[[route]]
host = "api.example.com"
path_prefix = "/x"
upstream = "exact"
auth = "public"

[[route]]
host = "*.example.com"
path_prefix = "/x"
upstream = "wild"
auth = "public"

[[route]]
path_prefix = "/"
upstream = "any"
auth = "public"

[[route]]
path_prefix = "/x/deep"
upstream = "any"
auth = "public"
"#
}

#[tokio::test]
async fn exact_host_beats_wildcard_host_which_beats_no_host() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let s = HostSetup::new().await;
    let (gw, addr) = start(dir.path(), &config(&s.any.url(), &host_routes(&s))).await;

    assert_eq!(routed_to(&s, addr, "api.example.com", "/x").await, "exact");
    assert_eq!(
        routed_to(&s, addr, "api.example.com", "/x/1").await,
        "exact"
    );
    assert_eq!(routed_to(&s, addr, "www.example.com", "/x").await, "wild");
    assert_eq!(routed_to(&s, addr, "other.test", "/x").await, "any");
    gw.shutdown().await;
}

#[tokio::test]
async fn host_matching_ignores_port_and_case() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let s = HostSetup::new().await;
    let (gw, addr) = start(dir.path(), &config(&s.any.url(), &host_routes(&s))).await;

    assert_eq!(
        routed_to(&s, addr, "api.example.com:8443", "/x").await,
        "exact"
    );
    assert_eq!(routed_to(&s, addr, "API.Example.COM", "/x").await, "exact");
    assert_eq!(routed_to(&s, addr, "www.example.com:1", "/x").await, "wild");
    assert_eq!(routed_to(&s, addr, "other.test:80", "/x").await, "any");
    gw.shutdown().await;
}

#[tokio::test]
async fn wildcard_host_matches_any_subdomain_depth_but_not_the_bare_domain() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let s = HostSetup::new().await;
    let (gw, addr) = start(dir.path(), &config(&s.any.url(), &host_routes(&s))).await;

    assert_eq!(routed_to(&s, addr, "a.b.example.com", "/x").await, "wild");
    assert_eq!(routed_to(&s, addr, "a.b.c.example.com", "/x").await, "wild");
    assert_eq!(routed_to(&s, addr, "example.com", "/x").await, "any");
    assert_eq!(routed_to(&s, addr, "badexample.com", "/x").await, "any");
    assert_eq!(
        routed_to(&s, addr, "example.com.evil.test", "/x").await,
        "any"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn most_specific_host_group_with_a_matching_route_wins_over_a_longer_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let s = HostSetup::new().await;
    let (gw, addr) = start(dir.path(), &config(&s.any.url(), &host_routes(&s))).await;

    // The no-host group has the longer prefix /x/deep, but the exact host group
    // has a route for the path, so it wins.
    assert_eq!(
        routed_to(&s, addr, "api.example.com", "/x/deep").await,
        "exact"
    );
    assert_eq!(
        routed_to(&s, addr, "www.example.com", "/x/deep").await,
        "wild"
    );
    // The host groups have nothing for /y: fall through to the no-host routes.
    assert_eq!(routed_to(&s, addr, "api.example.com", "/y").await, "any");
    assert_eq!(routed_to(&s, addr, "www.example.com", "/y").await, "any");
    gw.shutdown().await;
}

#[tokio::test]
async fn longest_prefix_wins_and_prefixes_match_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let orders = Upstream::start().await;
    let special = Upstream::start().await;
    let rest = upstream_section("special", &special)
        + r#"
[[route]]
path_prefix = "/orders"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/orders/special/"
upstream = "special"
auth = "public"
"#;
    let (gw, addr) = start(dir.path(), &config(&orders.url(), &rest)).await;
    let c = Client::plain();

    for (path, want_orders, want_special) in [
        ("/orders", 1, 0),
        ("/orders/", 2, 0),
        ("/orders/7", 3, 0),
        ("/orders?page=2", 4, 0),
        ("/orders/specialx", 5, 0),
        ("/orders/special", 5, 1),
        ("/orders/special/1", 5, 2),
    ] {
        let r = c.get(&format!("http://{addr}{path}"), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            (orders.count(), special.count()),
            (want_orders, want_special),
            "{path} went to the wrong route"
        );
    }
    // The upstream sees the path as sent, query included.
    assert_eq!(special.last().uri, "/orders/special/1");
    assert!(orders
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.uri == "/orders?page=2"));

    for path in ["/ordersx", "/order", "/ordersx/7", "/"] {
        let r = c.get(&format!("http://{addr}{path}"), &[]).await;
        assert_json_error(&r, 404);
    }
    assert_eq!((orders.count(), special.count()), (5, 2));
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 11. methods

#[tokio::test]
async fn method_not_allowed_is_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = r#"
[[route]]
path_prefix = "/read"
methods = ["GET"]
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/"
upstream = "app"
auth = "public"
"#;
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;
    let c = Client::plain();

    let r = c.get(&format!("http://{addr}/read/1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);

    // The winning prefix is /read; the catch-all "/" does not rescue a POST.
    let r = c
        .request("POST", &format!("http://{addr}/read/1"), &[], b"x")
        .await;
    assert_json_error(&r, 405);
    let allow = r.headers.get("allow").expect("405 without Allow");
    assert_eq!(allow, "GET");
    assert_eq!(up.count(), 1, "a 405 reached the upstream");
    gw.shutdown().await;
}

#[tokio::test]
async fn allow_lists_the_methods_of_every_route_at_the_winning_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = r#"
[[route]]
path_prefix = "/items"
methods = ["GET"]
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/items"
methods = ["PUT", "POST"]
upstream = "app"
auth = "public"
"#;
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;
    let c = Client::plain();

    for m in ["GET", "PUT", "POST"] {
        let r = c
            .request(m, &format!("http://{addr}/items/1"), &[], b"")
            .await;
        assert_eq!(r.status, 200, "{m}");
    }
    let r = c
        .request("DELETE", &format!("http://{addr}/items/1"), &[], b"")
        .await;
    assert_json_error(&r, 405);
    let allow = r.headers["allow"].to_str().unwrap();
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["GET", "POST", "PUT"], "Allow: {allow}");
    assert_eq!(up.count(), 3);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 12. no route

#[tokio::test]
async fn no_matching_route_is_404_json() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = r#"
[[route]]
path_prefix = "/api"
upstream = "app"
auth = "public"

[[route]]
host = "only.example.com"
path_prefix = "/"
upstream = "app"
auth = "public"
"#;
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;
    let c = Client::plain();

    let r = c
        .get(
            &format!("http://{addr}/nothing"),
            &[("x-request-id", "nr-1")],
        )
        .await;
    assert_json_error(&r, 404);
    assert_eq!(r.json()["request_id"], "nr-1");
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));

    // A route for another host does not answer for this one.
    let r = c
        .get(
            &format!("http://{addr}/nothing"),
            &[("host", "else.example.com")],
        )
        .await;
    assert_json_error(&r, 404);
    assert_eq!(get_host(addr, "only.example.com", "/nothing").await, 200);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 13. bad paths

#[tokio::test]
async fn paths_with_dot_segments_encoded_slashes_backslashes_or_nul_are_400_before_routing() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    // A catch-all public route: any path that got past the check would be forwarded.
    let rest = r#"
[[route]]
path_prefix = "/"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/admin"
upstream = "app"
auth = "required"
"#;
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;

    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2E/admin",
        "/public/..",
        "/a/./b",
        "/a/%2e/b",
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/public/..?x=1",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
        assert_eq!(raw_status(&resp), 400, "{path}: {resp}");
    }
    assert_eq!(up.count(), 0, "a bad path reached the upstream");

    // Near misses are ordinary paths.
    for path in ["/a/..b", "/a/b.c", "/a%20b", "/..."] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
        assert_eq!(raw_status(&resp), 200, "{path}: {resp}");
    }
    assert_eq!(up.count(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_path_answer_is_json_from_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"public\"\n";
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;

    let req = "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let j: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {resp}"));
    assert!(j["error"].is_string() && j["request_id"].is_string(), "{j}");
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 14. TLS

const CATCH_ALL: &str = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"public\"\n";
const TLS_LINE: &str = "tls = { cert = \"server.crt\", key = \"server.key\" }";

#[tokio::test]
async fn tls_listener_serves_http1() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let certs = Certs::new(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(&config(&up.url(), CATCH_ALL), TLS_LINE);
    let (gw, addr) = start(dir.path(), &cfg).await;

    let r = Client::tls(&certs.ca_pem, false)
        .get(&format!("https://localhost:{}/hello", addr.port()), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(up.last().uri, "/hello");
    assert_eq!(up.last().version, http::Version::HTTP_11);
    gw.shutdown().await;
}

#[tokio::test]
async fn tls_listener_negotiates_http2_by_alpn_and_speaks_http1_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let certs = Certs::new(dir.path());
    let up = Upstream::start().await;
    let rest = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let cfg = with_server(&config(&up.url(), rest), TLS_LINE);
    let (gw, addr) = start(dir.path(), &cfg).await;

    let t = key.token("alice", json!({}));
    let r = Client::tls(&certs.ca_pem, true)
        .request(
            "POST",
            &format!("https://localhost:{}/h2?q=1", addr.port()),
            &[("authorization", &format!("Bearer {t}"))],
            b"over h2",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, "over h2");
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/h2?q=1");
    assert_eq!(seen.body, "over h2");
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("localhost:{}", addr.port()).as_str()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tls_listener_with_http2_off_answers_http1_to_an_h2_capable_client() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let certs = Certs::new(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(
        &config(&up.url(), CATCH_ALL),
        &format!("{TLS_LINE}\nhttp2 = false"),
    );
    let (gw, addr) = start(dir.path(), &cfg).await;

    let r = Client::tls(&certs.ca_pem, true)
        .get(&format!("https://localhost:{}/v", addr.port()), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 15. several listeners

#[tokio::test]
async fn every_listen_address_serves() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let cfg = config(&up.url(), CATCH_ALL).replacen(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]",
        1,
    );
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let addrs = gw.listen_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_ne!(addrs[0], addrs[1]);
    for (i, a) in addrs.iter().enumerate() {
        let r = Client::plain()
            .get(&format!("http://{a}/listener/{i}"), &[])
            .await;
        assert_eq!(r.status, 200, "{a}");
        assert_eq!(up.last().uri, format!("/listener/{i}"));
    }
    assert_eq!(up.count(), 2);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 16. admin

const AUTH_RESULTS: &[&str] = &[
    "allowed",
    "missing",
    "malformed",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "unknown_kid",
    "disallowed_alg",
    "revoked",
    "binding_failed",
    "insufficient_scope",
    "csrf",
];

#[tokio::test]
async fn healthz_is_200() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, _) = start(dir.path(), &config(&up.url(), CATCH_ALL)).await;
    let admin = gw.admin_addr().unwrap();
    let (status, _, _) = http_get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn every_auth_result_is_exported_at_zero_from_start() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (gw, _) = start(dir.path(), &config(&up.url(), CATCH_ALL)).await;
    for result in AUTH_RESULTS {
        assert_eq!(
            metric(
                &gw,
                "portcullis_auth_decisions_total",
                &[("issuer", "main"), ("result", result)]
            )
            .await,
            0.0,
            "auth_decisions_total{{issuer=\"main\",result=\"{result}\"}}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_export_the_spec_families_once_traffic_flowed() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = "\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;
    let t = key.token("alice", json!({}));
    let r = Client::plain()
        .get(
            &format!("http://{addr}/m"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
    assert_eq!(r.status, 200);

    let admin = gw.admin_addr().unwrap();
    let (status, headers, body) = http_get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&body);
    for family in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds",
        "portcullis_auth_decisions_total",
        "portcullis_auth_duration_seconds",
        "portcullis_token_bytes",
        "portcullis_upstream_requests_total",
        "portcullis_upstream_errors_total",
        "portcullis_connections_active",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} "))),
            "{family} missing from /metrics:\n{text}"
        );
    }
    assert_eq!(
        metric(
            &gw,
            "portcullis_auth_decisions_total",
            &[("issuer", "main"), ("result", "allowed")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_upstream_requests_total",
            &[("upstream", "app"), ("status", "200")]
        )
        .await,
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_total_counts_by_route_method_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = "\n[[route]]\nid = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\n";
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;
    let t = key.token("alice", json!({}));
    let auth = format!("Bearer {t}");
    let c = Client::plain();
    let url = format!("http://{addr}/api/x");

    for _ in 0..2 {
        let r = c.get(&url, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200);
    }
    let r = c
        .request("POST", &url, &[("authorization", &auth)], b"")
        .await;
    assert_eq!(r.status, 200);
    let r = c.get(&url, &[]).await;
    assert_eq!(r.status, 401);

    let count = |method: &'static str, status: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                "portcullis_requests_total",
                &[("route", "api"), ("method", method), ("status", status)],
            )
            .await
        }
    };
    assert_eq!(count("GET", "200").await, 2.0);
    assert_eq!(count("POST", "200").await, 1.0);
    assert_eq!(count("GET", "401").await, 1.0);
    assert_eq!(
        metric(
            &gw,
            "portcullis_request_duration_seconds_count",
            &[("route", "api")]
        )
        .await,
        4.0
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 17. header limits

#[tokio::test]
async fn request_header_larger_than_max_header_bytes_is_431() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(&config(&up.url(), CATCH_ALL), "max_header_bytes = 16384");
    let (gw, addr) = start(dir.path(), &cfg).await;

    let big = "a".repeat(20 * 1024);
    let req =
        format!("GET /big HTTP/1.1\r\nHost: gw.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    assert_eq!(up.count(), 0);

    // Under the limit is fine.
    let fits = "a".repeat(8 * 1024);
    let req = format!(
        "GET /fits HTTP/1.1\r\nHost: gw.test\r\nX-Big: {fits}\r\nConnection: close\r\n\r\n"
    );
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(up.count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_max_header_bytes_below_8k_is_enforced_too() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(&config(&up.url(), CATCH_ALL), "max_header_bytes = 2048");
    let (gw, addr) = start(dir.path(), &cfg).await;

    // 6 KB of header: three times the configured limit.
    let big = "a".repeat(6 * 1024);
    let req =
        format!("GET /big HTTP/1.1\r\nHost: gw.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 431, "{resp}");
    assert_eq!(up.count(), 0);

    let req = "GET /small HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    gw.shutdown().await;
}

#[tokio::test]
async fn request_header_larger_than_max_header_bytes_over_http2_is_431() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let certs = Certs::new(dir.path());
    let up = Upstream::start().await;
    let cfg = with_server(
        &config(&up.url(), CATCH_ALL),
        &format!("{TLS_LINE}\nmax_header_bytes = 16384"),
    );
    let (gw, addr) = start(dir.path(), &cfg).await;

    let big = "a".repeat(20 * 1024);
    let r = Client::tls(&certs.ca_pem, true)
        .get(
            &format!("https://localhost:{}/big", addr.port()),
            &[("x-big", &big)],
        )
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 431);
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn percent_encoded_letters_cannot_reach_a_protected_prefix_through_a_public_one() {
    // `/%61dmin` is the same URI as `/admin` (RFC 3986 6.2.2.2) and upstreams
    // decode it so. Whether the gateway refuses it or routes it to the protected
    // route, it must not forward it unauthenticated through the public catch-all.
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let rest = r#"
[[route]]
path_prefix = "/"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/admin"
upstream = "app"
auth = "required"
"#;
    let (gw, addr) = start(dir.path(), &config(&up.url(), rest)).await;

    for path in [
        "/%61dmin",
        "/%61dmin/users",
        "/adm%69n/users",
        "/%61%64%6d%69%6e",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let resp = raw(addr, req.as_bytes(), RAW_WAIT).await;
        let status = raw_status(&resp);
        assert!(
            status == 400 || status == 401,
            "{path} was answered {status}, reaching the upstream as {:?} without a token",
            up.seen.lock().unwrap().last().map(|s| s.uri.clone())
        );
    }
    assert_eq!(up.count(), 0);
    gw.shutdown().await;
}
