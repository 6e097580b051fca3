//! The key life cycle of an issuer: discovery, refresh honouring
//! `Cache-Control: max-age`, rotation under traffic, the unknown-kid refetch
//! and its rate limit, outages and `stale_for`, bad keys inside a good JWKS,
//! `secret_file`/`jwks_file` reloads, `max_lifetime`, and the key metrics.
//!
//! Everything runs over real loopback sockets; every wait is a bounded poll.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use portcullis::cli::mint::{claims, Signer};
use portcullis::RunningGateway;
use serde_json::{json, Value};

const ROUTE: &str = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";

// ---------------------------------------------------------------- helpers

/// A gateway with the usual single issuer "main" (iss = `ISS`), whose key
/// source and life-cycle options are `issuer_lines`.
async fn start_main(
    dir: &tempfile::TempDir,
    up: &Upstream,
    issuer_lines: &str,
    algorithms: &str,
) -> RunningGateway {
    let cfg = base_config(issuer_lines, &up.url(), algorithms) + ROUTE;
    gateway(dir.path(), &cfg).await
}

/// One `[[issuer]]` block with audience `AUD`.
fn issuer_block(id: &str, iss: &str, lines: &str, algorithms: &str) -> String {
    format!(
        r#"
[[issuer]]
id = "{id}"
issuer = "{iss}"
{lines}
audiences = ["{AUD}"]
algorithms = [{algorithms}]
leeway = "5s"
"#
    )
}

/// A configuration with several issuers, one upstream and a catch-all route.
fn multi_config(issuers: &[String], upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"
{}
[identity]
headers = {{ "X-User-Id" = "sub", "X-Token-Issuer" = "iss" }}

[upstream.app]
endpoints = ["{upstream}"]
connect_timeout = "1s"
response_timeout = "2s"
{ROUTE}"#,
        issuers.concat()
    )
}

/// A token for issuer `iss` (audience `AUD`), valid for 5 minutes.
fn token_for(key: &TestKey, iss: &str, sub: &str) -> String {
    key.sign(&claims(iss, AUD, sub, 300))
}

async fn send(client: &Client, gw: &RunningGateway, token: &str) -> Reply {
    let addr = gw.listen_addrs()[0];
    client
        .get(
            &format!("http://{addr}/resource"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}

/// Sends `token` until the verified-token cache answers for it, each reply a
/// 200. The cache admits a token on its second verification; a third use
/// proves it is there.
async fn send_until_cached(client: &Client, gw: &RunningGateway, token: &str) {
    for _ in 0..2 {
        let r = send(client, gw, token).await;
        assert_eq!(r.status, 200, "{}", show(&r));
    }
    let hits = metric(gw, "portcullis_token_cache_hits_total", &[]).await;
    let r = send(client, gw, token).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    assert_eq!(
        metric(gw, "portcullis_token_cache_hits_total", &[]).await,
        hits + 1.0,
        "the third use is a cache hit"
    );
}

/// `error_description` of a JSON error body, or "" when there is none.
fn description(r: &Reply) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error_description"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn show(r: &Reply) -> String {
    format!(
        "{} {} (WWW-Authenticate: {})",
        r.status,
        String::from_utf8_lossy(&r.body),
        r.www_authenticate()
    )
}

async fn readyz(gw: &RunningGateway) -> (StatusCode, Value) {
    let admin = gw.admin_addr().unwrap();
    let (status, _, body) = http_get(&format!("http://{admin}/readyz"), &[]).await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v)
}

fn degraded(v: &Value) -> Vec<String> {
    v["degraded"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn refreshes(gw: &RunningGateway, issuer: &str, result: &str) -> f64 {
    metric(
        gw,
        "portcullis_jwks_refresh_total",
        &[("issuer", issuer), ("result", result)],
    )
    .await
}

async fn decisions(gw: &RunningGateway, issuer: &str, result: &str) -> f64 {
    metric(
        gw,
        "portcullis_auth_decisions_total",
        &[("issuer", issuer), ("result", result)],
    )
    .await
}

fn set_delay(srv: &JwksServer, d: Duration) {
    srv.state.lock().unwrap().delay = d;
}

fn set_cache_control(srv: &JwksServer, cc: Option<&str>) {
    srv.state.lock().unwrap().cache_control = cc.map(str::to_string);
}

fn discovery_fetches(srv: &JwksServer) -> usize {
    srv.state.lock().unwrap().discovery_fetches
}

/// A signer of the same key material under another `kid` (the key's own
/// signer is left alone).
fn signer_with_kid(key: &TestKey, kid: &str) -> Signer {
    Signer::from_pem(&key.pem, Some(key.alg), Some(kid.to_string())).unwrap()
}

/// The ways an identity provider's JWKS endpoint can fail.
#[derive(Clone, Copy, Debug)]
enum Outage {
    Http500,
    /// Answers later than `fetch_timeout`.
    Timeout,
    /// 200 with a body that is not a JWKS.
    Garbage,
}

fn break_endpoint(srv: &JwksServer, how: Outage) {
    let mut s = srv.state.lock().unwrap();
    match how {
        Outage::Http500 => s.status = StatusCode::INTERNAL_SERVER_ERROR,
        Outage::Timeout => s.delay = Duration::from_secs(3),
        Outage::Garbage => s.jwks = "<html>upstream proxy error</html>".to_string(),
    }
}

fn heal_endpoint(srv: &JwksServer, good_jwks: String) {
    let mut s = srv.state.lock().unwrap();
    s.status = StatusCode::OK;
    s.delay = Duration::ZERO;
    s.jwks = good_jwks;
}

/// The issuer options the outage tests use: refresh every second, a fetch
/// that gives up after 500 ms.
fn outage_lines(srv: &JwksServer, stale_for: Option<&str>) -> String {
    let mut s = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1s\"\nmin_refresh = \"1s\"\nfetch_timeout = \"500ms\"",
        srv.jwks_url()
    );
    if let Some(st) = stale_for {
        s.push_str(&format!("\nstale_for = \"{st}\""));
    }
    s
}

// ---------------------------------------------------------------- discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_reads_jwks_uri_from_the_openid_configuration() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    let iss = srv.issuer_url();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = multi_config(
        &[issuer_block("idp", &iss, "discovery = true", "\"ES256\"")],
        &up.url(),
    );
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    assert!(
        discovery_fetches(&srv) >= 1,
        "the discovery document was read"
    );
    assert!(srv.fetches() >= 1, "the jwks_uri it names was fetched");

    let client = Client::plain();
    let r = send(&client, &gw, &token_for(&key, &iss, "alice")).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    assert_eq!(up.last().headers["x-user-id"], "alice");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_url_drops_the_trailing_slash_of_the_issuer() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    // Configured and discovered issuer both end in '/', the discovery URL must not
    // become "//.well-known/...".
    let iss = format!("{}/", srv.issuer_url());
    srv.state.lock().unwrap().discovery_issuer = Some(iss.clone());
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = multi_config(
        &[issuer_block("idp", &iss, "discovery = true", "\"ES256\"")],
        &up.url(),
    );
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    assert!(discovery_fetches(&srv) >= 1);
    let r = send(&Client::plain(), &gw, &token_for(&key, &iss, "alice")).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_naming_another_issuer_gives_that_issuer_no_keys() {
    let key_a = TestKey::new(Algorithm::ES256);
    let key_b = TestKey::new(Algorithm::ES256);
    let srv_a = JwksServer::start(jwks(&[&key_a])).await;
    let srv_b = JwksServer::start(jwks(&[&key_b])).await;
    let iss_a = srv_a.issuer_url();
    // The document claims to be someone else.
    srv_a.state.lock().unwrap().discovery_issuer = Some("http://127.0.0.1:1".to_string());
    let iss_b = "https://b.test.example/";
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = multi_config(
        &[
            issuer_block(
                "a",
                &iss_a,
                "discovery = true\nrefresh = \"1s\"\nmin_refresh = \"1s\"",
                "\"ES256\"",
            ),
            issuer_block(
                "b",
                iss_b,
                &format!("jwks_uri = \"{}\"", srv_b.jwks_url()),
                "\"ES256\"",
            ),
        ],
        &up.url(),
    );
    let gw = gateway(dir.path(), &cfg).await;
    let client = Client::plain();
    let token_b = token_for(&key_b, iss_b, "bob");
    assert!(
        eventually(Duration::from_secs(10), || async {
            send(&client, &gw, &token_b).await.status == 200
        })
        .await,
        "issuer b works although issuer a's discovery is wrong"
    );
    // Give issuer a a few refresh rounds: it must never get keys.
    assert!(
        eventually(Duration::from_secs(8), || async {
            discovery_fetches(&srv_a) >= 3
        })
        .await,
        "issuer a's discovery is retried"
    );
    let token_a = token_for(&key_a, &iss_a, "alice");
    let r = send(&client, &gw, &token_a).await;
    assert_eq!(r.status, 401, "{}", show(&r));
    assert!(
        r.www_authenticate().contains("invalid_token"),
        "{}",
        show(&r)
    );
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys", &[("issuer", "a")]).await,
        0.0
    );
    assert!(refreshes(&gw, "a", "error").await >= 3.0);
    assert_eq!(refreshes(&gw, "a", "ok").await, 0.0);
    assert_eq!(up.count(), 1, "only bob's request reached the upstream");

    // Once the document names the configured issuer, the keys load.
    srv_a.state.lock().unwrap().discovery_issuer = None;
    assert!(
        eventually(Duration::from_secs(8), || async {
            send(&client, &gw, &token_a).await.status == 200
        })
        .await,
        "issuer a gets its keys once discovery names it"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_only_against_the_keys_of_their_own_issuer() {
    // Both issuers publish a key under the same kid: a token must still be
    // checked only against the keys of the issuer its `iss` names.
    let key_a = TestKey::new(Algorithm::ES256).with_kid("shared");
    let key_b = TestKey::new(Algorithm::ES256).with_kid("shared");
    let only_b = TestKey::new(Algorithm::ES256).with_kid("b-only");
    let srv_a = JwksServer::start(jwks(&[&key_a])).await;
    let srv_b = JwksServer::start(jwks(&[&key_b, &only_b])).await;
    let iss_a = srv_a.issuer_url();
    let iss_b = "https://b.test.example/";
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = multi_config(
        &[
            issuer_block("a", &iss_a, "discovery = true", "\"ES256\""),
            issuer_block(
                "b",
                iss_b,
                &format!("jwks_uri = \"{}\"", srv_b.jwks_url()),
                "\"ES256\"",
            ),
        ],
        &up.url(),
    );
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let client = Client::plain();

    let r = send(&client, &gw, &token_for(&key_a, &iss_a, "alice")).await;
    assert_eq!(r.status, 200, "a's key, a's iss: {}", show(&r));
    assert_eq!(up.last().headers["x-token-issuer"], iss_a.as_str());
    let r = send(&client, &gw, &token_for(&key_b, iss_b, "bob")).await;
    assert_eq!(r.status, 200, "b's key, b's iss: {}", show(&r));
    assert_eq!(up.last().headers["x-token-issuer"], iss_b);
    let r = send(&client, &gw, &token_for(&only_b, iss_b, "bob")).await;
    assert_eq!(r.status, 200, "b's second key: {}", show(&r));
    let seen = up.count();

    let bad_sig_a = decisions(&gw, "a", "bad_signature").await;
    let bad_sig_b = decisions(&gw, "b", "bad_signature").await;
    // Same kid, other issuer's key.
    let r = send(&client, &gw, &token_for(&key_b, &iss_a, "mallory")).await;
    assert_eq!(r.status, 401, "b's key with a's iss: {}", show(&r));
    let r = send(&client, &gw, &token_for(&key_a, iss_b, "mallory")).await;
    assert_eq!(r.status, 401, "a's key with b's iss: {}", show(&r));
    assert_eq!(decisions(&gw, "a", "bad_signature").await, bad_sig_a + 1.0);
    assert_eq!(decisions(&gw, "b", "bad_signature").await, bad_sig_b + 1.0);
    // A kid only b publishes is unknown to a.
    let r = send(&client, &gw, &token_for(&only_b, &iss_a, "mallory")).await;
    assert_eq!(r.status, 401, "b-only kid with a's iss: {}", show(&r));
    assert_eq!(description(&r), "unknown key id", "{}", show(&r));
    assert_eq!(up.count(), seen, "no refused request reached the upstream");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- refresh timing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_follows_cache_control_max_age() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    set_cache_control(&srv, Some("public, max-age=2"));
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let before = srv.fetches();
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let grown = srv.fetches() - before;
    // Every ~2 s: about 2 in 5.5 s. Never the 1 h refresh period, never a hot loop.
    assert!(
        (2..=5).contains(&grown),
        "max-age=2 over 5.5 s gave {grown} fetches"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_age_the_refresh_period_applies_and_traffic_causes_no_fetch() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let before = srv.fetches();
    let client = Client::plain();
    let end = Instant::now() + Duration::from_secs(3);
    let mut sent = 0;
    while Instant::now() < end {
        let r = send(&client, &gw, &key.token(&format!("u{sent}"), json!({}))).await;
        assert_eq!(r.status, 200, "{}", show(&r));
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent >= 5);
    assert_eq!(
        srv.fetches(),
        before,
        "no max-age and refresh = 1h: no refetch within 3 s"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_below_min_refresh_is_raised_to_min_refresh() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    set_cache_control(&srv, Some("max-age=0"));
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"2s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let before = srv.fetches();
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let grown = srv.fetches() - before;
    // Every 2 s: about 2; max-age=0 taken literally would be a hot loop.
    assert!(
        (1..=4).contains(&grown),
        "max-age=0 with min_refresh 2s over 5.5 s gave {grown} fetches"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_above_refresh_is_capped_at_refresh() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    set_cache_control(&srv, Some("max-age=3600"));
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"2s\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let before = srv.fetches();
    assert!(
        eventually(Duration::from_secs(9), || async {
            srv.fetches() >= before + 2
        })
        .await,
        "max-age=3600 with refresh 2s: two refetches expected within 9 s, saw {}",
        srv.fetches() - before
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_traffic_refuses_no_token_of_a_published_key() {
    let old = Arc::new(TestKey::new(Algorithm::ES256).with_kid("old"));
    let new = Arc::new(TestKey::new(Algorithm::ES256).with_kid("new"));
    let srv = JwksServer::start(jwks(&[&old])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = Arc::new(start_main(&dir, &up, &lines, "\"ES256\"").await);
    wait_ready(&gw).await;
    let started = Instant::now();
    let client = Arc::new(Client::plain());
    // Verified (and cached) while its key is published.
    let cached_old = old.token("cached", json!({}));
    send_until_cached(&client, &gw, &cached_old).await;

    // 1: [old]   2: [old, new]   3: [new]
    let phase = Arc::new(AtomicU8::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let new_sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (phase, stop, failures, new_sent) = (
            phase.clone(),
            stop.clone(),
            failures.clone(),
            new_sent.clone(),
        );
        let (old, new, client, gw) = (old.clone(), new.clone(), client.clone(), gw.clone());
        workers.push(tokio::spawn(async move {
            let started = started;
            let mut i = 0usize;
            let hard_end = Instant::now() + Duration::from_secs(14);
            while !stop.load(Ordering::Acquire) && Instant::now() < hard_end {
                i += 1;
                let p = phase.load(Ordering::Acquire);
                let use_new = match p {
                    1 => false,
                    2 => (i + w).is_multiple_of(2),
                    _ => true,
                };
                let key = if use_new { &new } else { &old };
                let t = key.token(&format!("w{w}-{i}"), json!({}));
                let r = send(&client, &gw, &t).await;
                if use_new {
                    new_sent.fetch_add(1, Ordering::Relaxed);
                }
                if r.status != 200 {
                    failures.lock().unwrap().push(format!(
                        "phase {p} at {:?}, kid {}: {}",
                        started.elapsed(),
                        key.kid,
                        show(&r)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // The start fetch counts for min_refresh: let it pass before the new key shows up.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    {
        let mut s = srv.state.lock().unwrap();
        s.jwks = jwks(&[&old, &new]);
        // A real identity provider takes a moment to answer; tokens keep coming meanwhile.
        s.delay = Duration::from_millis(300);
        s.cache_control = Some("max-age=2".to_string());
    }
    phase.store(2, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(2000)).await;

    srv.set_jwks(jwks(&[&new]));
    phase.store(3, Ordering::Release);
    let switched = Instant::now();
    // The old key is gone after the next refresh (max-age=2), cached tokens included.
    let gone = eventually(Duration::from_secs(6), || async {
        send(&client, &gw, &cached_old).await.status == 401
    })
    .await;
    // Keep new-key traffic flowing a little after the removal too.
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(switched.elapsed())).await;
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests with a token of a published key were refused, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(4)
            .chain(failures.last())
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        new_sent.load(Ordering::Relaxed) >= 20,
        "the traffic really used the new key"
    );
    assert!(
        gone,
        "a cached token of the removed key is refused after the next refresh"
    );
    let r = send(&client, &gw, &old.token("fresh-old", json!({}))).await;
    assert_eq!(
        r.status,
        401,
        "a fresh token of the removed key: {}",
        show(&r)
    );
    let r = send(&client, &gw, &cached_old).await;
    assert_eq!(r.status, 401, "stays refused: {}", show(&r));
    if let Ok(gw) = Arc::try_unwrap(gw) {
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_during_an_unknown_kid_refetch_share_it() {
    let old = TestKey::new(Algorithm::ES256).with_kid("old");
    let new = TestKey::new(Algorithm::ES256).with_kid("new");
    let srv = JwksServer::start(jwks(&[&old])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    // Past min_refresh since the start fetch.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = srv.fetches();
    {
        let mut s = srv.state.lock().unwrap();
        s.jwks = jwks(&[&old, &new]);
        s.delay = Duration::from_millis(1500);
    }
    let client = Client::plain();
    let first_token = new.token("first", json!({}));
    let first = send(&client, &gw, &first_token);
    let second = async {
        // Once the refetch the first request triggered is in flight...
        let started = eventually(Duration::from_secs(5), || async { srv.fetches() > before }).await;
        assert!(started, "the unknown kid triggered a refetch");
        // ...a second token with the same new kid arrives.
        send(&client, &gw, &new.token("second", json!({}))).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, 200, "first: {}", show(&first));
    assert_eq!(
        second.status,
        200,
        "a request arriving while the refetch runs waits for it: {}",
        show(&second)
    );
    assert_eq!(srv.fetches() - before, 1, "one shared refetch");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_key_is_refused_after_the_next_refresh_even_from_the_token_cache() {
    let keep = TestKey::new(Algorithm::ES256).with_kid("keep");
    let drop_me = TestKey::new(Algorithm::ES256).with_kid("drop");
    let srv = JwksServer::start(jwks(&[&keep, &drop_me])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1s\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let t_keep = keep.token("keep", json!({}));
    let t_drop = drop_me.token("drop", json!({}));
    for t in [&t_keep, &t_drop] {
        send_until_cached(&client, &gw, t).await;
    }
    // A cache hit stays one across refreshes of an unchanged set.
    let f0 = srv.fetches();
    assert!(
        eventually(Duration::from_secs(6), || async { srv.fetches() >= f0 + 2 }).await,
        "refreshes happen"
    );
    let hits = metric(&gw, "portcullis_token_cache_hits_total", &[]).await;
    let r = send(&client, &gw, &t_drop).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    assert_eq!(
        metric(&gw, "portcullis_token_cache_hits_total", &[]).await,
        hits + 1.0,
        "a cached verification survives refreshes while its key stays published"
    );

    srv.set_jwks(jwks(&[&keep]));
    let f1 = srv.fetches();
    assert!(
        eventually(Duration::from_secs(8), || async {
            send(&client, &gw, &t_drop).await.status == 401
        })
        .await,
        "the cached token of the removed key is refused after the next refresh"
    );
    assert!(srv.fetches() > f1, "it took a refresh");
    let r = send(&client, &gw, &t_drop).await;
    assert_eq!(r.status, 401, "{}", show(&r));
    assert!(
        r.www_authenticate().contains("invalid_token"),
        "{}",
        show(&r)
    );
    let r = send(&client, &gw, &t_keep).await;
    assert_eq!(r.status, 200, "the remaining key still works: {}", show(&r));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_is_refused_when_its_kid_is_reused_for_another_key() {
    let first = TestKey::new(Algorithm::ES256).with_kid("k1");
    let replacement = TestKey::new(Algorithm::ES256).with_kid("k1");
    let srv = JwksServer::start(jwks(&[&first])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1s\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let t_first = first.token("alice", json!({}));
    send_until_cached(&client, &gw, &t_first).await;

    // Same kid, other key material.
    srv.set_jwks(jwks(&[&replacement]));
    let t_new = replacement.token("bob", json!({}));
    assert!(
        eventually(Duration::from_secs(8), || async {
            send(&client, &gw, &t_new).await.status == 200
        })
        .await,
        "the replacement key is picked up"
    );
    let r = send(&client, &gw, &t_first).await;
    assert_eq!(
        r.status,
        401,
        "a cached token of the replaced key material: {}",
        show(&r)
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- unknown kids

/// 1,000 tokens with made-up kids, signed by a real key, sent 50 at a time.
async fn flood_unknown_kids(client: &Client, gw: &RunningGateway, key: &TestKey, n: usize) {
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let kid = uuid::Uuid::new_v4().to_string();
            signer_with_kid(key, &kid)
                .sign(&claims(ISS, AUD, &format!("flood{i}"), 300))
                .unwrap()
        })
        .collect();
    for chunk in tokens.chunks(50) {
        let replies =
            futures_util::future::join_all(chunk.iter().map(|t| send(client, gw, t))).await;
        for r in replies {
            assert_eq!(r.status, 401, "{}", show(&r));
            assert_eq!(description(&r), "unknown key id", "{}", show(&r));
            assert!(
                r.www_authenticate().contains("invalid_token"),
                "{}",
                show(&r)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_costs_at_most_one_fetch_per_min_refresh() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"30s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let before = srv.fetches();
    let unknown0 = decisions(&gw, "main", "unknown_kid").await;
    flood_unknown_kids(&client, &gw, &key, 1000).await;
    let extra = srv.fetches() - before;
    assert!(extra <= 1, "1,000 unknown kids caused {extra} JWKS fetches");
    assert_eq!(
        decisions(&gw, "main", "unknown_kid").await,
        unknown0 + 1000.0
    );
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // The gateway still serves the real key.
    let r = send(&client, &gw, &key.token("alice", json!({}))).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_a_single_refetch() {
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"2s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    // Past min_refresh since the start fetch: a refetch is allowed now.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let client = Client::plain();
    let before = srv.fetches();
    let started = Instant::now();
    flood_unknown_kids(&client, &gw, &key, 300).await;
    let elapsed = started.elapsed();
    let extra = srv.fetches() - before;
    let allowed = 1 + (elapsed.as_secs_f64() / 2.0).floor() as usize;
    assert!(
        extra >= 1,
        "an unknown kid past min_refresh triggers a refetch"
    );
    assert!(
        extra <= allowed,
        "300 unknown kids in {elapsed:?} caused {extra} fetches (at most {allowed})"
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- outages

async fn keys_survive_an_outage(how: Outage) {
    let key = TestKey::new(Algorithm::ES256);
    let good = jwks(&[&key]);
    let srv = JwksServer::start(good.clone()).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_main(&dir, &up, &outage_lines(&srv, None), "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let cached = key.token("cached", json!({}));
    send_until_cached(&client, &gw, &cached).await;

    let errors0 = refreshes(&gw, "main", "error").await;
    break_endpoint(&srv, how);
    let ok0 = refreshes(&gw, "main", "ok").await;
    let broke = Instant::now();
    let mut i = 0;
    // Longer than `refresh` (1 s), with at least two failed refreshes.
    loop {
        i += 1;
        for t in [&cached, &key.token(&format!("u{i}"), json!({}))] {
            let r = send(&client, &gw, t).await;
            assert_eq!(
                r.status,
                200,
                "{how:?} for {:?}: a valid token was refused: {}",
                broke.elapsed(),
                show(&r)
            );
        }
        if broke.elapsed() >= Duration::from_millis(3000)
            && refreshes(&gw, "main", "error").await >= errors0 + 2.0
        {
            break;
        }
        assert!(
            broke.elapsed() < Duration::from_secs(12),
            "{how:?}: failed refreshes are not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refreshes(&gw, "main", "ok").await <= ok0 + 1.0,
        "{how:?}: failed fetches are not counted as ok"
    );
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{how:?}: still ready within stale_for: {body}");

    heal_endpoint(&srv, good);
    let ok1 = refreshes(&gw, "main", "ok").await;
    assert!(
        eventually(Duration::from_secs(8), || async {
            refreshes(&gw, "main", "ok").await > ok1
        })
        .await,
        "{how:?}: refreshes succeed again after recovery"
    );
    let r = send(&client, &gw, &key.token("after", json!({}))).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_kept_while_the_jwks_endpoint_returns_500() {
    keys_survive_an_outage(Outage::Http500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_kept_while_the_jwks_endpoint_times_out() {
    keys_survive_an_outage(Outage::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_kept_while_the_jwks_endpoint_returns_garbage() {
    keys_survive_an_outage(Outage::Garbage).await;
}

async fn keys_dropped_after_stale_for(how: Outage) {
    let key = TestKey::new(Algorithm::ES256);
    let good = jwks(&[&key]);
    let srv = JwksServer::start(good.clone()).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_main(&dir, &up, &outage_lines(&srv, Some("2s")), "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let cached = key.token("cached", json!({}));
    send_until_cached(&client, &gw, &cached).await;

    break_endpoint(&srv, how);
    let broke = Instant::now();
    let mut refused_at = None;
    while broke.elapsed() < Duration::from_secs(10) {
        let r = send(&client, &gw, &cached).await;
        if r.status != 200 {
            refused_at = Some((unix_now_f64(), broke.elapsed(), r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (refused_unix, after, r) = refused_at.unwrap_or_else(|| {
        panic!("{how:?}: keys still used 10 s into the outage with stale_for = 2s")
    });
    assert_eq!(r.status, 401, "{how:?}: {}", show(&r));
    assert_eq!(
        description(&r),
        "signing keys unavailable",
        "{how:?}: {}",
        show(&r)
    );
    assert!(
        r.www_authenticate().contains("invalid_token"),
        "{}",
        show(&r)
    );
    // Counted from the last successful fetch, not earlier.
    let last_ok = metric(
        &gw,
        "portcullis_jwks_last_success_timestamp_seconds",
        &[("issuer", "main")],
    )
    .await;
    assert!(
        refused_unix >= last_ok + 2.0,
        "{how:?}: keys dropped at {refused_unix:.2}, less than stale_for after the last success {last_ok}"
    );
    assert!(
        after <= Duration::from_secs(6),
        "{how:?}: keys dropped only {after:?} into the outage"
    );

    let unknown0 = decisions(&gw, "main", "unknown_kid").await;
    let r = send(&client, &gw, &key.token("fresh", json!({}))).await;
    assert_eq!(r.status, 401, "{how:?}: a fresh token: {}", show(&r));
    assert_eq!(description(&r), "signing keys unavailable");
    assert_eq!(
        decisions(&gw, "main", "unknown_kid").await,
        unknown0 + 1.0,
        "counted as result=\"unknown_kid\""
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(&gw, "portcullis_jwks_keys", &[("issuer", "main")]).await == 0.0
        })
        .await,
        "{how:?}: jwks_keys is 0 once the keys are dropped"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            readyz(&gw).await.0 == 503
        })
        .await,
        "{how:?}: the only issuer has no keys: not ready ({})",
        readyz(&gw).await.1
    );

    heal_endpoint(&srv, good);
    assert!(
        eventually(Duration::from_secs(8), || async {
            send(&client, &gw, &cached).await.status == 200
        })
        .await,
        "{how:?}: tokens pass again after the endpoint recovers"
    );
    let r = send(&client, &gw, &key.token("after", json!({}))).await;
    assert_eq!(r.status, 200, "{}", show(&r));
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{how:?}: ready again: {body}");
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys", &[("issuer", "main")]).await,
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_dropped_after_stale_for_of_http_500_and_come_back() {
    keys_dropped_after_stale_for(Outage::Http500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_dropped_after_stale_for_of_timeouts_and_come_back() {
    keys_dropped_after_stale_for(Outage::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_dropped_after_stale_for_of_garbage_and_come_back() {
    keys_dropped_after_stale_for(Outage::Garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_dropped_at_stale_for_even_while_a_fetch_hangs() {
    // The identity provider accepts the connection and never answers within
    // fetch_timeout (5 s), which is longer than stale_for (2 s): the keys must
    // not outlive stale_for because a fetch is still waiting.
    let key = TestKey::new(Algorithm::ES256);
    let srv = JwksServer::start(jwks(&[&key])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1s\"\nmin_refresh = \"1s\"\nfetch_timeout = \"5s\"\nstale_for = \"2s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let cached = key.token("cached", json!({}));
    send_until_cached(&client, &gw, &cached).await;

    set_delay(&srv, Duration::from_secs(12));
    let broke = Instant::now();
    let mut refused_unix = None;
    while broke.elapsed() < Duration::from_secs(10) {
        if send(&client, &gw, &cached).await.status != 200 {
            refused_unix = Some(unix_now_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_ok = metric(
        &gw,
        "portcullis_jwks_last_success_timestamp_seconds",
        &[("issuer", "main")],
    )
    .await;
    let refused_unix = refused_unix.expect("keys dropped within 10 s of a hanging IdP");
    // The last success was before last_ok + 1 (whole seconds); stale at < last_ok + 3;
    // one more second of slack for a loaded machine.
    assert!(
        refused_unix <= last_ok + 4.0,
        "keys last loaded at {last_ok} were still accepted until {refused_unix:.2} with stale_for = 2s"
    );
    let r = send(&client, &gw, &key.token("fresh", json!({}))).await;
    assert_eq!(description(&r), "signing keys unavailable", "{}", show(&r));
    set_delay(&srv, Duration::ZERO);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_lists_a_stale_issuer_as_degraded_while_another_has_keys() {
    let key_a = TestKey::new(Algorithm::ES256);
    let key_b = TestKey::new(Algorithm::ES256);
    let (good_a, good_b) = (jwks(&[&key_a]), jwks(&[&key_b]));
    let srv_a = JwksServer::start(good_a.clone()).await;
    let srv_b = JwksServer::start(good_b.clone()).await;
    let (iss_a, iss_b) = ("https://a.test.example/", "https://b.test.example/");
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = multi_config(
        &[
            issuer_block(
                "alpha",
                iss_a,
                &outage_lines(&srv_a, Some("2s")),
                "\"ES256\"",
            ),
            issuer_block(
                "beta",
                iss_b,
                &outage_lines(&srv_b, Some("2s")),
                "\"ES256\"",
            ),
        ],
        &up.url(),
    );
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let (token_a, token_b) = (
        token_for(&key_a, iss_a, "alice"),
        token_for(&key_b, iss_b, "bob"),
    );
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200);
    assert!(degraded(&body).is_empty(), "{body}");

    // a's identity provider goes away: a is degraded, the replica stays ready.
    srv_a.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        eventually(Duration::from_secs(10), || async {
            send(&client, &gw, &token_a).await.status == 401
        })
        .await,
        "a's keys are dropped after stale_for"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            !degraded(&readyz(&gw).await.1).is_empty()
        })
        .await,
        "alpha is listed as degraded: {}",
        readyz(&gw).await.1
    );
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "another issuer still has keys: {body}");
    let d = degraded(&body);
    assert!(
        d.iter().any(|x| x.contains("alpha")) && !d.iter().any(|x| x.contains("beta")),
        "degraded names issuer alpha only: {body}"
    );
    let r = send(&client, &gw, &token_b).await;
    assert_eq!(r.status, 200, "b is unaffected: {}", show(&r));
    let r = send(&client, &gw, &token_a).await;
    assert_eq!(description(&r), "signing keys unavailable", "{}", show(&r));

    // b's goes away too: no issuer can decide anything.
    srv_b.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&gw).await.0 == 503
        })
        .await,
        "no issuer has keys: not ready"
    );
    let r = send(&client, &gw, &token_b).await;
    assert_eq!(r.status, 401, "{}", show(&r));

    srv_a.set_status(StatusCode::OK);
    srv_b.set_status(StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (s, b) = readyz(&gw).await;
            s == 200 && degraded(&b).is_empty()
        })
        .await,
        "ready and not degraded after recovery"
    );
    for t in [&token_a, &token_b] {
        let r = send(&client, &gw, t).await;
        assert_eq!(r.status, 200, "{}", show(&r));
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------- bad keys

/// base64url without padding.
fn b64(bytes: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_in_the_jwks_does_not_stop_its_good_keys_loading() {
    let rsa = TestKey::new(Algorithm::RS256).with_kid("rsa-good");
    let ec = TestKey::new(Algorithm::ES256).with_kid("ec-good");
    let later = TestKey::new(Algorithm::ES256).with_kid("ec-later");
    // 512-bit modulus.
    let weak_rsa = json!({"kty": "RSA", "kid": "weak", "use": "sig", "alg": "RS256",
        "n": b64(&[0xc5u8; 64]), "e": "AQAB"});
    // x is not base64url at all.
    let mut broken_ec = ec.jwk.clone();
    broken_ec["kid"] = json!("broken-ec");
    broken_ec["x"] = json!("not*base64!");
    let missing_n = json!({"kty": "RSA", "kid": "no-n", "e": "AQAB"});
    let odd_kty = json!({"kty": "XYZ", "kid": "odd"});
    let doc = |good: &[&TestKey]| {
        let mut keys = vec![
            weak_rsa.clone(),
            broken_ec.clone(),
            missing_n.clone(),
            odd_kty.clone(),
        ];
        keys.extend(good.iter().map(|k| k.jwk.clone()));
        json!({ "keys": keys }).to_string()
    };
    let srv = JwksServer::start(doc(&[&rsa, &ec])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "jwks_uri = \"{}\"\nrefresh = \"1h\"\nmin_refresh = \"1s\"",
        srv.jwks_url()
    );
    let gw = start_main(&dir, &up, &lines, "\"RS256\", \"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    for k in [&rsa, &ec] {
        let r = send(&client, &gw, &k.token("alice", json!({}))).await;
        assert_eq!(r.status, 200, "{}: {}", k.kid, show(&r));
    }
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys", &[("issuer", "main")]).await,
        2.0,
        "exactly the two good keys are usable"
    );
    assert_eq!(refreshes(&gw, "main", "ok").await, 1.0);
    assert_eq!(refreshes(&gw, "main", "error").await, 0.0);
    // A token naming the weak key's kid (signed with a good RSA key) is refused.
    let weak_kid = signer_with_kid(&rsa, "weak")
        .sign(&claims(ISS, AUD, "mallory", 300))
        .unwrap();
    let r = send(&client, &gw, &weak_kid).await;
    assert_eq!(r.status, 401, "{}", show(&r));

    // The same holds on a refresh: a new good key next to the bad ones is picked up.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    srv.set_jwks(doc(&[&rsa, &ec, &later]));
    let r = send(&client, &gw, &later.token("bob", json!({}))).await;
    assert_eq!(r.status, 200, "new key beside bad ones: {}", show(&r));
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys", &[("issuer", "main")]).await,
        3.0
    );
    gw.shutdown().await;
}

// ---------------------------------------------------------------- local files

fn write_atomically(path: &std::path::Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hs.secret");
    let old_secret = b"0123456789abcdef0123456789abcdef-old".to_vec();
    let new_secret = b"fedcba9876543210fedcba9876543210-new".to_vec();
    // Trailing newline is trimmed.
    std::fs::write(&path, [old_secret.as_slice(), b"\n"].concat()).unwrap();
    let up = Upstream::start().await;
    let gw = start_main(&dir, &up, "secret_file = \"hs.secret\"", "\"HS256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let sign = |secret: &[u8], sub: &str| {
        Signer::from_secret(secret, Algorithm::HS256, None)
            .unwrap()
            .sign(&claims(ISS, AUD, sub, 300))
            .unwrap()
    };
    let t_old = sign(&old_secret, "old");
    let t_new = sign(&new_secret, "new");
    send_until_cached(&client, &gw, &t_old).await;
    let r = send(&client, &gw, &t_new).await;
    assert_eq!(r.status, 401, "not yet the new secret: {}", show(&r));

    // Let the mtime move past the first load before rewriting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_atomically(&path, &[new_secret.as_slice(), b"\r\n"].concat());
    assert!(
        eventually(Duration::from_secs(6), || async {
            send(&client, &gw, &t_new).await.status == 200
        })
        .await,
        "a token signed with the new secret passes after the file changed"
    );
    // The old token was cached while its secret was current: refused now.
    let r = send(&client, &gw, &t_old).await;
    assert_eq!(r.status, 401, "old secret, cached token: {}", show(&r));
    let r = send(&client, &gw, &sign(&old_secret, "old2")).await;
    assert_eq!(r.status, 401, "old secret, fresh token: {}", show(&r));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let old = TestKey::new(Algorithm::ES256).with_kid("old");
    let new = TestKey::new(Algorithm::ES256).with_kid("new");
    std::fs::write(&path, jwks(&[&old])).unwrap();
    let up = Upstream::start().await;
    let gw = start_main(&dir, &up, "jwks_file = \"jwks.json\"", "\"ES256\"").await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let t_old = old.token("old", json!({}));
    let t_new = new.token("new", json!({}));
    send_until_cached(&client, &gw, &t_old).await;

    tokio::time::sleep(Duration::from_millis(50)).await;
    write_atomically(&path, jwks(&[&new]).as_bytes());
    assert!(
        eventually(Duration::from_secs(6), || async {
            send(&client, &gw, &t_new).await.status == 200
        })
        .await,
        "the new key of the rewritten file is used"
    );
    let r = send(&client, &gw, &t_old).await;
    assert_eq!(r.status, 401, "the removed key, cached token: {}", show(&r));
    gw.shutdown().await;
}

// ---------------------------------------------------------------- max_lifetime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_refuses_tokens_that_live_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
    let up = Upstream::start().await;
    let gw = start_main(
        &dir,
        &up,
        "jwks_file = \"jwks.json\"\nmax_lifetime = \"1h\"",
        "\"ES256\"",
    )
    .await;
    wait_ready(&gw).await;
    let client = Client::plain();
    let now = portcullis::cli::mint::now() as i64;
    let cases: &[(&str, Value, u16)] = &[
        (
            "exp - iat = 30m",
            json!({"iat": now, "exp": now + 1800}),
            200,
        ),
        (
            "exp - iat = 2h",
            json!({"iat": now, "exp": now + 7200}),
            401,
        ),
        (
            "exp - iat = 2h10m although exp - now = 10m",
            json!({"iat": now - 7200, "exp": now + 600}),
            401,
        ),
        (
            "exp - iat = 55m, issued 50m ago",
            json!({"iat": now - 3000, "exp": now + 300}),
            200,
        ),
        (
            "no iat, exp - now = 30m",
            json!({"iat": null, "exp": now + 1800}),
            200,
        ),
        (
            "no iat, exp - now = 2h",
            json!({"iat": null, "exp": now + 7200}),
            401,
        ),
    ];
    for (what, extra, want) in cases {
        let r = send(&client, &gw, &key.token("alice", extra.clone())).await;
        assert_eq!(r.status.as_u16(), *want, "{what}: {}", show(&r));
        if *want == 401 {
            assert!(
                r.www_authenticate().contains("error=\"invalid_token\""),
                "{what}: {}",
                show(&r)
            );
        }
    }
    gw.shutdown().await;
}

// ---------------------------------------------------------------- metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_metrics_count_refreshes_keys_and_last_success() {
    let k1 = TestKey::new(Algorithm::ES256);
    let k2 = TestKey::new(Algorithm::ES256);
    let k3 = TestKey::new(Algorithm::RS256);
    let srv = JwksServer::start(jwks(&[&k1, &k2, &k3])).await;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let started_unix = unix_now_f64();
    let gw = start_main(&dir, &up, &outage_lines(&srv, None), "\"ES256\", \"RS256\"").await;
    wait_ready(&gw).await;
    let keys = || metric(&gw, "portcullis_jwks_keys", &[("issuer", "main")]);
    let last_ok = || {
        metric(
            &gw,
            "portcullis_jwks_last_success_timestamp_seconds",
            &[("issuer", "main")],
        )
    };
    assert_eq!(keys().await, 3.0);
    let t = last_ok().await;
    assert!(
        t >= started_unix.floor() && t <= unix_now_f64() + 1.0,
        "last success {t} is the start fetch (test started at {started_unix})"
    );
    assert!(refreshes(&gw, "main", "ok").await >= 1.0);
    assert_eq!(refreshes(&gw, "main", "error").await, 0.0);

    // Successful refreshes are counted and move the timestamp.
    assert!(
        eventually(Duration::from_secs(8), || async {
            refreshes(&gw, "main", "ok").await >= 3.0
        })
        .await,
        "periodic refreshes are counted as ok"
    );
    let ok = refreshes(&gw, "main", "ok").await;
    let fetched = srv.fetches() as f64;
    assert!(
        ok <= fetched && ok >= fetched - 1.0,
        "ok count {ok} vs {fetched} fetches"
    );
    assert!(
        eventually(Duration::from_secs(5), || async { last_ok().await > t }).await,
        "the last-success timestamp advances"
    );

    // The key count follows the published set.
    srv.set_jwks(jwks(&[&k1, &k3]));
    assert!(
        eventually(Duration::from_secs(6), || async { keys().await == 2.0 }).await,
        "jwks_keys follows the key set"
    );

    // Failures are counted as errors and leave the timestamp alone.
    srv.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let e0 = refreshes(&gw, "main", "error").await;
    assert!(
        eventually(Duration::from_secs(8), || async {
            refreshes(&gw, "main", "error").await >= e0 + 2.0
        })
        .await,
        "failed refreshes are counted as error"
    );
    let frozen = last_ok().await;
    let ok_frozen = refreshes(&gw, "main", "ok").await;
    assert!(
        eventually(Duration::from_secs(6), || async {
            refreshes(&gw, "main", "error").await >= e0 + 3.0
        })
        .await
    );
    assert_eq!(last_ok().await, frozen, "no success, no new timestamp");
    assert_eq!(refreshes(&gw, "main", "ok").await, ok_frozen);
    assert_eq!(keys().await, 2.0, "keys are kept within stale_for");
    assert!(
        unix_now_f64() - frozen < 15.0,
        "last success {frozen} is recent"
    );
    gw.shutdown().await;
}
