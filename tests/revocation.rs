//! Revocation end to end: the admin API (`/revocations`), enforcement on the
//! request path, durability of the local store across SIGKILL and torn writes,
//! expiry, sharing between replicas through a real Redis (propagation time,
//! outage, restart empty), and readiness before the first Redis sync.
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{Proc, BIN};
use common::*;
use jsonwebtoken::Algorithm;
use portcullis::RunningGateway;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "admin-secret-0123456789abcdef";
const REVOKED_METRIC: &str = "portcullis_auth_decisions_total";
const GAUGE: &str = "portcullis_revocations";
const SYNC_ERRORS: &str = "portcullis_revocation_sync_errors_total";
/// The issuer's `leeway` in `base_config`.
const LEEWAY: u64 = 5;

// ---------------------------------------------------------------- helpers

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `n` distinct free loopback ports (all held while choosing, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The test configuration: one ES256 issuer from `jwks.json`, a catch-all
/// route, a local store, optionally the admin token and Redis.
fn config(
    up: &Upstream,
    listen: &str,
    admin_listen: &str,
    admin_token: bool,
    issuer_extra: &str,
    redis_port: Option<u16>,
) -> String {
    let jwks_line = format!("jwks_file = \"jwks.json\"\n{issuer_extra}");
    let mut cfg = base_config(&jwks_line, &up.url(), "\"ES256\"");
    let server = "[server]\nlisten = [\"127.0.0.1:0\"]";
    assert!(cfg.contains(server), "base_config changed shape");
    cfg = cfg.replace(server, &format!("[server]\nlisten = [\"{listen}\"]"));
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"";
    assert!(cfg.contains(admin), "base_config changed shape");
    let token = if admin_token {
        "\ntoken_file = \"admin.token\""
    } else {
        ""
    };
    cfg = cfg.replace(
        admin,
        &format!("[admin]\nlisten = \"{admin_listen}\"{token}"),
    );
    cfg.push_str(
        "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n\n\
         [revocation]\nstore = \"data/revocations.log\"\n",
    );
    if let Some(p) = redis_port {
        cfg.push_str(&format!(
            "redis = {{ url = \"redis://127.0.0.1:{p}/0\", prefix = \"test:\" }}\n"
        ));
    }
    cfg
}

fn write_files(dir: &Path, key: &TestKey) {
    std::fs::write(dir.join("jwks.json"), jwks(&[key])).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("data").join("revocations.log")
}

/// An in-process gateway on port 0 (not yet waited ready).
async fn start_gateway(
    dir: &Path,
    key: &TestKey,
    up: &Upstream,
    admin_token: bool,
    issuer_extra: &str,
    redis_port: Option<u16>,
) -> RunningGateway {
    write_files(dir, key);
    let cfg = config(
        up,
        "127.0.0.1:0",
        "127.0.0.1:0",
        admin_token,
        issuer_extra,
        redis_port,
    );
    gateway(dir, &cfg).await
}

/// A proxied request with a Bearer token.
async fn call(client: &Client, addr: SocketAddr, token: &str) -> Reply {
    client
        .get(
            &format!("http://{addr}/api/x"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
}

async fn call_once(addr: SocketAddr, token: &str) -> Reply {
    call(&Client::plain(), addr, token).await
}

/// An admin request; `auth` is the whole `Authorization` value.
async fn admin_raw(
    admin: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    Client::plain()
        .request(method, &format!("http://{admin}{path}"), &headers, body)
        .await
}

fn bearer_admin() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

async fn post(admin: SocketAddr, body: &Value) -> Reply {
    admin_raw(
        admin,
        "POST",
        "/revocations",
        Some(&bearer_admin()),
        body.to_string().as_bytes(),
    )
    .await
}

/// POST that must be acknowledged; returns the stored entry.
async fn post_ok(admin: SocketAddr, body: &Value) -> Value {
    let r = post(admin, body).await;
    assert_eq!(
        r.status,
        201,
        "POST {body} was not acknowledged: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

async fn delete(admin: SocketAddr, query: &str) -> Reply {
    admin_raw(
        admin,
        "DELETE",
        &format!("/revocations?{query}"),
        Some(&bearer_admin()),
        b"",
    )
    .await
}

async fn list(admin: SocketAddr, query: &str) -> Value {
    let r = admin_raw(
        admin,
        "GET",
        &format!("/revocations?{query}"),
        Some(&bearer_admin()),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Every listed entry (one page of up to 1000).
async fn listed(admin: SocketAddr) -> Vec<Value> {
    let l = list(admin, "limit=1000").await;
    l["entries"].as_array().unwrap().clone()
}

fn lists_jti(entries: &[Value], jti: &str) -> bool {
    entries.iter().any(|e| e["jti"] == json!(jti))
}

fn assert_revoked(r: &Reply, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: expected refusal as revoked, got {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let w = r.www_authenticate();
    assert!(
        w.contains("error=\"invalid_token\"") && w.contains("error_description=\"token revoked\""),
        "{what}: WWW-Authenticate {w:?}"
    );
    assert_eq!(r.json()["error_description"], "token revoked", "{what}");
}

fn assert_passes(r: &Reply, what: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: expected to pass, got {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

async fn revoked_count(gw: &RunningGateway) -> f64 {
    metric(
        gw,
        REVOKED_METRIC,
        &[("issuer", "main"), ("result", "revoked")],
    )
    .await
}

async fn gauge(gw: &RunningGateway, kind: &str) -> f64 {
    metric(gw, GAUGE, &[("kind", kind)]).await
}

async fn readyz(admin: SocketAddr) -> Reply {
    Client::plain()
        .get(&format!("http://{admin}/readyz"), &[])
        .await
}

// ---------------------------------------------------------------- processes

/// SIGKILL now, and reap it; asserts it died of that signal.
fn kill9(p: &mut Proc) {
    use std::os::unix::process::ExitStatusExt;
    let status = p.kill();
    assert_eq!(
        status.signal(),
        Some(9),
        "{} did not die of SIGKILL",
        p.what()
    );
}

/// A gateway run as `portcullis run --config F`, on fresh loopback ports.
struct ChildGw {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn spawn_gateway(dir: &Path, up: &Upstream, n: usize, redis_port: Option<u16>) -> ChildGw {
    let ports = free_ports(2);
    let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let cfg = config(
        up,
        &addr.to_string(),
        &admin.to_string(),
        true,
        "",
        redis_port,
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = dir.join(format!("gateway-{n}.log"));
    let proc = Proc::spawn_logged(
        Command::new(BIN).arg("run").arg("--config").arg(&path),
        &log,
    )
    .named(format!("gateway #{n}"));
    ChildGw { proc, addr, admin }
}

/// The status of a plain GET, or None when nothing answers.
async fn probe_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1)?.parse().ok()
}

async fn wait_child_ready(gw: &mut ChildGw) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = gw.proc.exited() {
            panic!(
                "{} exited with {status} before being ready:\n{}",
                gw.proc.what(),
                gw.proc.log_text()
            );
        }
        if probe_status(gw.admin, "/readyz").await == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became ready:\n{}",
            gw.proc.what(),
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- Redis

fn start_redis(port: u16) -> Proc {
    let bin = if Path::new("/usr/bin/redis-server").exists() {
        "/usr/bin/redis-server"
    } else {
        "redis-server"
    };
    Proc::try_spawn(
        Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]),
    )
    .expect("redis-server must be installed (apt-get install redis-server)")
    .named(format!("redis-server on {port}"))
}

async fn redis_ping(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(500),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf.starts_with(b"+PONG")
}

async fn wait_redis(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_ping(port).await {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} never answered PING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug)]
enum Resp {
    /// A simple string: not needed by these tests.
    Other,
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// Parses one RESP value; None when more bytes are needed.
fn parse_resp(b: &[u8]) -> Option<(Resp, usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..end]).ok()?;
    let after = end + 2;
    match b.first()? {
        b'+' => Some((Resp::Other, after)),
        b':' => Some((Resp::Int(line.parse().ok()?), after)),
        b'-' => Some((Resp::Error(line.into()), after)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Resp::Bulk(None), after));
            }
            let n = n as usize;
            if b.len() < after + n + 2 {
                return None;
            }
            Some((
                Resp::Bulk(Some(b[after..after + n].to_vec())),
                after + n + 2,
            ))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Resp::Array(None), after));
            }
            let mut at = after;
            let mut items = Vec::new();
            for _ in 0..n {
                let (v, used) = parse_resp(&b[at..])?;
                items.push(v);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        _ => panic!("not RESP: {:?}", String::from_utf8_lossy(b)),
    }
}

/// One Redis command over a raw connection.
async fn redis_cmd(port: u16, args: &[&str]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((v, _)) = parse_resp(&buf) {
            if let Resp::Error(e) = &v {
                panic!("Redis refused {args:?}: {e}");
            }
            return v;
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("Redis answered within 5 s")
            .unwrap();
        assert!(n > 0, "Redis closed the connection mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Every live revocation entry stored in Redis under `test:rev:*`, as JSON.
/// Redis holds each change as `{"op": "add", "entry": ..., "at": ...}` or, for
/// a deletion, a tombstone `{"op": "del", "key": ..., "expires_at": ...}`;
/// each key must expire (EXPIRETIME) exactly when its entry (or tombstone) does.
async fn redis_entries(port: u16) -> Vec<Value> {
    let Resp::Array(Some(keys)) = redis_cmd(port, &["KEYS", "test:rev:*"]).await else {
        panic!("KEYS did not answer an array");
    };
    let mut out = Vec::new();
    for k in keys {
        let Resp::Bulk(Some(k)) = k else { continue };
        let k = String::from_utf8(k).unwrap();
        if let Resp::Bulk(Some(v)) = redis_cmd(port, &["GET", &k]).await {
            let v: Value = serde_json::from_slice(&v)
                .unwrap_or_else(|_| panic!("{k} holds no JSON: {:?}", String::from_utf8_lossy(&v)));
            let Resp::Int(at) = redis_cmd(port, &["EXPIRETIME", &k]).await else {
                panic!("EXPIRETIME {k} did not answer an integer");
            };
            let (expires, live) = match v["op"].as_str() {
                Some("add") => (v["entry"]["expires_at"].as_i64(), Some(v["entry"].clone())),
                Some("del") => (v["expires_at"].as_i64(), None),
                _ => panic!("{k} holds neither an entry nor a tombstone: {v}"),
            };
            assert_eq!(
                Some(at),
                expires,
                "the Redis key {k} does not expire with its entry {v}"
            );
            out.extend(live);
        }
    }
    out
}

/// Polls a replica until it refuses `token` as revoked; the time since `t0`.
async fn time_to_refusal(client: &Client, addr: SocketAddr, token: &str, t0: Instant) -> Duration {
    loop {
        let r = call(client, addr, token).await;
        if r.status == 401 {
            assert_revoked(&r, "propagated revocation");
            return t0.elapsed();
        }
        assert_passes(&r, "before the revocation arrives");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the revocation never reached the replica on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a replica until it lets `token` through again; the time since `t0`.
async fn time_to_pass(client: &Client, addr: SocketAddr, token: &str, t0: Instant) -> Duration {
    loop {
        let r = call(client, addr, token).await;
        if r.status == 200 {
            return t0.elapsed();
        }
        assert_revoked(&r, "before the removal arrives");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the removal never reached the replica on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until it lists the revocation sync as degraded; it must
/// stay 200 meanwhile.
async fn wait_degraded(admin: SocketAddr) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = readyz(admin).await;
        assert_eq!(
            r.status,
            200,
            "readiness must stay 200 while Redis is down after a first sync: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        let degraded = body["degraded"].as_array().cloned().unwrap_or_default();
        if degraded
            .iter()
            .any(|d| d.as_str().unwrap_or("").contains("revocation sync"))
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the replica on {admin} never noticed Redis was gone: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- API and enforcement

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_jti_is_refused_until_its_entry_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, true, "", None).await;
    wait_ready(&gw).await;
    let (addr, admin) = (gw.listen_addrs()[0], gw.admin_addr().unwrap());

    let t1 = key.token("alice", json!({"jti": "jti-1"}));
    let t2 = key.token("alice", json!({"jti": "jti-2"}));
    assert_passes(&call_once(addr, &t1).await, "t1 before revocation");
    assert_passes(&call_once(addr, &t2).await, "t2 before revocation");
    assert_eq!(gauge(&gw, "jti").await, 0.0);
    assert_eq!(gauge(&gw, "sub").await, 0.0);

    // Default expiry: now + the longest max_lifetime (24h default) + leeway.
    let before = now();
    let stored = post_ok(admin, &json!({"jti": "jti-1"})).await;
    let after = now();
    assert_eq!(stored["jti"], "jti-1");
    let exp = stored["expires_at"]
        .as_u64()
        .expect("expires_at in the reply");
    assert!(
        exp >= before + 24 * 3600 && exp <= after + 24 * 3600 + LEEWAY,
        "default expires_at {exp} is not now + max_lifetime (+ leeway)"
    );
    assert_eq!(stored.as_object().unwrap().len(), 2, "{stored}");

    let seen = up.count();
    let refused = revoked_count(&gw).await;
    assert_revoked(&call_once(addr, &t1).await, "t1 after revocation");
    assert_eq!(up.count(), seen, "a revoked token reached the upstream");
    assert_eq!(revoked_count(&gw).await, refused + 1.0);
    // A cached verification does not bypass the check either.
    assert_revoked(&call_once(addr, &t1).await, "t1 again");
    assert_eq!(revoked_count(&gw).await, refused + 2.0);
    assert_passes(
        &call_once(addr, &t2).await,
        "another jti of the same subject",
    );
    assert_passes(
        &call_once(addr, &key.token("bob", json!({}))).await,
        "another subject",
    );

    // An explicit expiry is stored as given.
    let exp = now() + 1000;
    let stored = post_ok(admin, &json!({"jti": "jti-x", "expires_at": exp})).await;
    assert_eq!(stored, json!({"jti": "jti-x", "expires_at": exp}));
    assert_eq!(gauge(&gw, "jti").await, 2.0);
    assert_eq!(gauge(&gw, "sub").await, 0.0);

    // A jti with reserved characters, deleted through a percent-encoded query.
    let odd = "rev/a b&c=d+é?#%";
    let t_odd = key.token("alice", json!({"jti": odd}));
    post_ok(admin, &json!({"jti": odd})).await;
    assert_revoked(&call_once(addr, &t_odd).await, "odd jti");
    assert_eq!(gauge(&gw, "jti").await, 3.0);
    let r = delete(admin, &format!("jti={}", pct(odd))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_passes(&call_once(addr, &t_odd).await, "odd jti after DELETE");

    let r = delete(admin, "jti=jti-1").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_passes(&call_once(addr, &t1).await, "t1 after DELETE");
    assert_eq!(gauge(&gw, "jti").await, 1.0);

    // Deleting what is not there.
    let r = delete(admin, "jti=jti-1").await;
    assert_eq!(r.status, 404);
    let r = delete(admin, "jti=never-revoked").await;
    assert_eq!(r.status, 404);
    assert_eq!(gauge(&gw, "jti").await, 1.0);
    let entries = listed(admin).await;
    assert_eq!(entries, vec![json!({"jti": "jti-x", "expires_at": exp})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_cutoff_refuses_that_subjects_tokens_issued_at_or_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    // max_lifetime 10m so that tokens without iat can fall on either side.
    let gw = start_gateway(dir.path(), &key, &up, true, "max_lifetime = \"10m\"", None).await;
    wait_ready(&gw).await;
    let (addr, admin) = (gw.listen_addrs()[0], gw.admin_addr().unwrap());
    let n = now();
    let cut = n - 100;

    let alice_old = key.token("alice", json!({"iat": cut - 50}));
    let alice_at = key.token("alice", json!({"iat": cut}));
    let alice_after = key.token("alice", json!({"iat": cut + 1}));
    let alice_new = key.token("alice", json!({"iat": n}));
    // Without iat a token counts as issued at exp - max_lifetime (600 s).
    let alice_no_iat_old = key.token("alice", json!({"iat": null, "exp": n + 300}));
    let alice_no_iat_new = key.token("alice", json!({"iat": null, "exp": n + 590}));
    let bob_old = key.token("bob", json!({"iat": cut - 50}));
    for (t, what) in [
        (&alice_old, "alice_old"),
        (&alice_at, "alice_at"),
        (&alice_no_iat_old, "alice_no_iat_old"),
    ] {
        assert_passes(&call_once(addr, t).await, what);
    }

    // The issuer by its id; the stored entry names its iss.
    let stored = post_ok(
        admin,
        &json!({"iss": "main", "sub": "alice", "not_before": cut}),
    )
    .await;
    assert_eq!(
        stored,
        json!({"iss": ISS, "sub": "alice", "not_before": cut, "expires_at": cut + 600 + LEEWAY})
    );
    assert_eq!(gauge(&gw, "sub").await, 1.0);
    assert_eq!(gauge(&gw, "jti").await, 0.0);

    let seen = up.count();
    let refused = revoked_count(&gw).await;
    assert_revoked(&call_once(addr, &alice_old).await, "alice, iat < cut-off");
    assert_revoked(&call_once(addr, &alice_at).await, "alice, iat = cut-off");
    assert_revoked(
        &call_once(addr, &alice_no_iat_old).await,
        "alice, no iat, exp - max_lifetime < cut-off",
    );
    assert_eq!(up.count(), seen, "a revoked token reached the upstream");
    assert_eq!(revoked_count(&gw).await, refused + 3.0);
    assert_passes(
        &call_once(addr, &alice_after).await,
        "alice, iat = cut-off + 1",
    );
    assert_passes(&call_once(addr, &alice_new).await, "alice, iat now");
    assert_passes(
        &call_once(addr, &alice_no_iat_new).await,
        "alice, no iat, exp - max_lifetime > cut-off",
    );
    assert_passes(&call_once(addr, &bob_old).await, "bob is unaffected");

    // The issuer by its iss; not_before defaults to now.
    let t = now();
    let stored = post_ok(admin, &json!({"iss": ISS, "sub": "bob"})).await;
    let nb = stored["not_before"].as_u64().unwrap();
    assert!(nb >= t && nb <= now(), "default not_before {nb} is not now");
    assert_eq!(stored["iss"], ISS);
    assert_revoked(&call_once(addr, &bob_old).await, "bob after his cut-off");
    assert_eq!(gauge(&gw, "sub").await, 2.0);

    // DELETE by iss (percent-encoded URL) and by issuer id.
    let r = delete(admin, &format!("iss={}&sub=alice", pct(ISS))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_passes(&call_once(addr, &alice_old).await, "alice after DELETE");
    assert_passes(
        &call_once(addr, &alice_no_iat_old).await,
        "alice, no iat, after DELETE",
    );
    assert_revoked(&call_once(addr, &bob_old).await, "bob still cut off");
    assert_eq!(gauge(&gw, "sub").await, 1.0);
    let r = delete(admin, "iss=main&sub=bob").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_passes(&call_once(addr, &bob_old).await, "bob after DELETE");
    assert_eq!(gauge(&gw, "sub").await, 0.0);

    let r = delete(admin, &format!("iss={}&sub=alice", pct(ISS))).await;
    assert_eq!(r.status, 404, "a second DELETE finds nothing");
    let r = delete(admin, "iss=main&sub=carol").await;
    assert_eq!(r.status, 404);
    assert_eq!(list(admin, "").await["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_list_is_paged_with_limit_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, true, "", None).await;
    wait_ready(&gw).await;
    let admin = gw.admin_addr().unwrap();

    let empty = list(admin, "").await;
    assert_eq!(empty["total"], 0);
    assert_eq!(empty["entries"], json!([]));
    assert!(empty["next_offset"].is_null());

    let mut posted = BTreeSet::new();
    for j in ["p-1", "p-2", "p-3"] {
        posted.insert(post_ok(admin, &json!({"jti": j})).await.to_string());
    }
    for s in ["dave", "erin"] {
        posted.insert(
            post_ok(admin, &json!({"iss": "main", "sub": s}))
                .await
                .to_string(),
        );
    }
    assert_eq!(gauge(&gw, "jti").await, 3.0);
    assert_eq!(gauge(&gw, "sub").await, 2.0);

    let all = list(admin, "").await;
    assert_eq!(all["total"], 5);
    assert!(all["next_offset"].is_null(), "{all}");
    let all_set: BTreeSet<String> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(all_set, posted, "the list is what was acknowledged");

    let mut paged = Vec::new();
    let mut offset = 0;
    let mut pages = 0;
    loop {
        let page = list(admin, &format!("limit=2&offset={offset}")).await;
        assert_eq!(page["total"], 5, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 2, "limit ignored: {page}");
        paged.extend(entries.iter().map(|e| e.to_string()));
        pages += 1;
        match page["next_offset"].as_u64() {
            Some(next) => {
                assert_eq!(next as usize, offset + entries.len(), "{page}");
                offset = next as usize;
            }
            None => break,
        }
        assert!(pages < 10, "paging never ends");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged.len(), 5, "pages overlap or miss entries: {paged:?}");
    assert_eq!(paged.iter().cloned().collect::<BTreeSet<_>>(), posted);
    // The pages are the unpaged list, in order.
    let all_order: Vec<String> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(paged, all_order);

    let past = list(admin, "limit=2&offset=10").await;
    assert_eq!(past["entries"], json!([]));
    assert_eq!(past["total"], 5);
    assert!(past["next_offset"].is_null());
}

// ---------------------------------------------------------------- admin auth and validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_api_refuses_a_missing_or_wrong_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, true, "", None).await;
    wait_ready(&gw).await;
    let (addr, admin) = (gw.listen_addrs()[0], gw.admin_addr().unwrap());
    let t = key.token("alice", json!({"jti": "auth-1"}));
    let body = json!({"jti": "auth-1"}).to_string();

    let wrong_same_len = format!("Bearer {}", "x".repeat(ADMIN_TOKEN.len()));
    let prefix = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let longer = format!("Bearer {ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for auth in [
        None,
        Some("Bearer"),
        Some(wrong_same_len.as_str()),
        Some(prefix.as_str()),
        Some(longer.as_str()),
        Some(basic.as_str()),
    ] {
        for (method, path, b) in [
            ("GET", "/revocations", ""),
            ("POST", "/revocations", body.as_str()),
            ("DELETE", "/revocations?jti=auth-1", ""),
        ] {
            let r = admin_raw(admin, method, path, auth, b.as_bytes()).await;
            assert_eq!(
                r.status,
                401,
                "{method} {path} with Authorization {auth:?}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(
                r.www_authenticate().starts_with("Bearer"),
                "401 without a Bearer challenge"
            );
        }
    }
    // Nothing was stored by the refused POSTs.
    assert_passes(&call_once(addr, &t).await, "token after refused POSTs");
    assert_eq!(list(admin, "").await["total"], 0);
    // And the right token works.
    post_ok(admin, &json!({"jti": "auth-1"})).await;
    assert_revoked(&call_once(addr, &t).await, "after an authorized POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_file_the_revocation_api_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, false, "", None).await;
    wait_ready(&gw).await;
    let (addr, admin) = (gw.listen_addrs()[0], gw.admin_addr().unwrap());
    let t = key.token("alice", json!({"jti": "off-1"}));
    let body = json!({"jti": "off-1"}).to_string();
    for auth in [None, Some(bearer_admin())] {
        for (method, path, b) in [
            ("GET", "/revocations", ""),
            ("POST", "/revocations", body.as_str()),
            ("DELETE", "/revocations?jti=off-1", ""),
        ] {
            let r = admin_raw(admin, method, path, auth.as_deref(), b.as_bytes()).await;
            assert_eq!(
                r.status,
                403,
                "{method} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    assert_passes(&call_once(addr, &t).await, "nothing was revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_revocation_requests_are_400_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, true, "", None).await;
    wait_ready(&gw).await;
    let admin = gw.admin_addr().unwrap();
    let n = now();

    let cases: Vec<(String, &str)> = vec![
        ("{\"jti\": ".into(), "not JSON"),
        ("not json at all".into(), "not JSON"),
        ("[\"jti\"]".into(), "JSON object"),
        (
            json!({"jti": "a", "reason": "x"}).to_string(),
            "unknown field \"reason\"",
        ),
        (
            json!({"jti": "a", "iss": ISS, "sub": "alice"}).to_string(),
            "either",
        ),
        (json!({"jti": "a", "sub": "alice"}).to_string(), "either"),
        (json!({"sub": "alice"}).to_string(), "either"),
        (json!({}).to_string(), "either"),
        (
            json!({"jti": "a", "expires_at": n - 10}).to_string(),
            "in the past",
        ),
        (
            json!({"iss": "https://other.example/", "sub": "alice"}).to_string(),
            "not a configured issuer",
        ),
        (
            json!({"iss": "other", "sub": "alice"}).to_string(),
            "not a configured issuer",
        ),
        (
            json!({"jti": "a", "not_before": n}).to_string(),
            "not_before",
        ),
        (
            json!({"iss": ISS, "sub": "alice", "expires_at": n + 100}).to_string(),
            "expires_at",
        ),
        (json!({"jti": ""}).to_string(), "non-empty string"),
        (json!({"jti": 7}).to_string(), "non-empty string"),
        (
            json!({"jti": "a", "expires_at": "tomorrow"}).to_string(),
            "unix time",
        ),
        (
            json!({"iss": ISS, "sub": "alice", "not_before": n - 10 * 24 * 3600}).to_string(),
            "so old",
        ),
    ];
    for (body, reason) in &cases {
        let r = admin_raw(
            admin,
            "POST",
            "/revocations",
            Some(&bearer_admin()),
            body.as_bytes(),
        )
        .await;
        assert_eq!(
            r.status,
            400,
            "POST {body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let j = r.json();
        assert_eq!(j["error"], "invalid_request", "POST {body}: {j}");
        let d = j["error_description"].as_str().unwrap_or("");
        assert!(
            d.contains(reason),
            "POST {body}: description {d:?} does not say {reason:?}"
        );
    }
    for (query, reason) in [
        ("", "?jti="),
        ("jti=", "?jti="),
        ("sub=alice", "?jti="),
        ("jti=a&sub=alice", "?jti="),
        ("jti=%ZZ", "percent-encoding"),
        ("iss=other&sub=alice", "not a configured issuer"),
    ] {
        let r = delete(admin, query).await;
        assert_eq!(r.status, 400, "DELETE ?{query}");
        let d = r.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(d.contains(reason), "DELETE ?{query}: {d:?}");
    }
    assert_eq!(
        list(admin, "").await["total"],
        0,
        "a refused request stored something"
    );
}

// ---------------------------------------------------------------- durability

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_revocations_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    write_files(dir.path(), &key);

    let mut gw = spawn_gateway(dir.path(), &up, 1, None);
    wait_child_ready(&mut gw).await;
    let n = now();
    let jtis: Vec<String> = (0..6).map(|i| format!("durable-{i}")).collect();
    let tokens: Vec<String> = jtis
        .iter()
        .map(|j| key.token("alice", json!({"jti": j})))
        .collect();
    let mallory = key.token("mallory", json!({"iat": n - 10}));
    let innocent = key.token("alice", json!({"jti": "not-revoked"}));
    assert_passes(&call_once(gw.addr, &tokens[0]).await, "before");

    let mut acked = BTreeSet::new();
    acked.insert(
        post_ok(
            gw.admin,
            &json!({"iss": "main", "sub": "mallory", "not_before": n}),
        )
        .await
        .to_string(),
    );
    for j in &jtis {
        acked.insert(post_ok(gw.admin, &json!({"jti": j})).await.to_string());
    }
    // Right after the last 201.
    kill9(&mut gw.proc);

    let mut gw2 = spawn_gateway(dir.path(), &up, 2, None);
    wait_child_ready(&mut gw2).await;
    for (t, j) in tokens.iter().zip(&jtis) {
        assert_revoked(&call_once(gw2.addr, t).await, j);
    }
    assert_revoked(&call_once(gw2.addr, &mallory).await, "mallory's cut-off");
    assert_passes(&call_once(gw2.addr, &innocent).await, "an unrevoked token");
    let listed: BTreeSet<String> = listed(gw2.admin)
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        listed, acked,
        "the list after SIGKILL is what was acknowledged"
    );
}

/// Appends bytes to the store, as a crash in the middle of a write leaves them.
fn append_to_store(dir: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(store_path(dir))
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_garbage_tail_in_the_store_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    write_files(dir.path(), &key);
    let tok = |j: &str| key.token("alice", json!({"jti": j}));

    let mut gw = spawn_gateway(dir.path(), &up, 1, None);
    wait_child_ready(&mut gw).await;
    let mut acked = BTreeSet::new();
    for j in ["kept-1", "kept-2", "kept-3"] {
        acked.insert(post_ok(gw.admin, &json!({"jti": j})).await.to_string());
    }
    kill9(&mut gw.proc);

    // A record cut short: its length and CRC header promise more than follows.
    let payload = br#"{"op":"add","entry":{"jti":"torn","expires_at":4000000000}}"#;
    let mut torn = Vec::new();
    torn.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    torn.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    torn.extend_from_slice(&payload[..payload.len() / 2]);
    append_to_store(dir.path(), &torn);

    let mut gw = spawn_gateway(dir.path(), &up, 2, None);
    wait_child_ready(&mut gw).await;
    for j in ["kept-1", "kept-2", "kept-3"] {
        assert_revoked(&call_once(gw.addr, &tok(j)).await, j);
    }
    let now_listed: BTreeSet<String> = listed(gw.admin)
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(now_listed, acked);
    // A write after the recovery must not land behind the torn bytes.
    acked.insert(
        post_ok(gw.admin, &json!({"jti": "after-torn"}))
            .await
            .to_string(),
    );
    kill9(&mut gw.proc);

    // Plain garbage this time (a length no record has, then noise).
    let garbage: Vec<u8> = (0..61u8).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
    append_to_store(dir.path(), &garbage);

    let mut gw = spawn_gateway(dir.path(), &up, 3, None);
    wait_child_ready(&mut gw).await;
    for j in ["kept-1", "kept-2", "kept-3", "after-torn"] {
        assert_revoked(&call_once(gw.addr, &tok(j)).await, j);
    }
    assert_passes(
        &call_once(gw.addr, &tok("other")).await,
        "an unrevoked token",
    );
    let now_listed: BTreeSet<String> = listed(gw.admin)
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(now_listed, acked);
    acked.insert(
        post_ok(gw.admin, &json!({"jti": "after-garbage"}))
            .await
            .to_string(),
    );
    kill9(&mut gw.proc);

    let mut gw = spawn_gateway(dir.path(), &up, 4, None);
    wait_child_ready(&mut gw).await;
    for j in ["kept-1", "kept-2", "kept-3", "after-torn", "after-garbage"] {
        assert_revoked(&call_once(gw.addr, &tok(j)).await, j);
    }
    let now_listed: BTreeSet<String> = listed(gw.admin)
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(now_listed, acked);
}

// ---------------------------------------------------------------- expiry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_jti_entry_stops_being_enforced_and_leaves_list_gauge_and_store() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, true, "", None).await;
    wait_ready(&gw).await;
    let (addr, admin) = (gw.listen_addrs()[0], gw.admin_addr().unwrap());
    let short = key.token("alice", json!({"jti": "short"}));
    let long = key.token("alice", json!({"jti": "long"}));

    let exp = now() + 3;
    let stored = post_ok(admin, &json!({"jti": "short", "expires_at": exp})).await;
    assert_eq!(stored, json!({"jti": "short", "expires_at": exp}));
    post_ok(admin, &json!({"jti": "long"})).await;
    assert!(now() < exp, "the box was too slow to check before expiry");
    assert_revoked(&call_once(addr, &short).await, "short before expiry");
    assert_eq!(gauge(&gw, "jti").await, 2.0);

    // Enforcement stops as soon as the clock reaches expires_at.
    while now() < exp {
        assert!(started.elapsed() < Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_passes(&call_once(addr, &short).await, "short at its expiry");
    assert_revoked(&call_once(addr, &long).await, "long still revoked");

    // The list, the gauge and the store drop it within the sweep period
    // (20 s; SPEC allows 60 s), bounded here by 45 s from the start.
    let deadline = started + Duration::from_secs(45);
    let store = store_path(dir.path());
    loop {
        let entries = listed(admin).await;
        let in_list = lists_jti(&entries, "short");
        let g = gauge(&gw, "jti").await;
        let bytes = std::fs::read(&store).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let in_store = text.contains("\"short\"");
        assert!(lists_jti(&entries, "long"), "the live entry left the list");
        if !in_list && g == 1.0 && !in_store {
            assert!(text.contains("\"long\""), "compaction lost the live entry");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired entry still present after 45 s: list {in_list}, gauge {g}, store {in_store}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_revoked(&call_once(addr, &long).await, "long after the sweep");
    assert_passes(&call_once(addr, &short).await, "short after the sweep");
}

// ---------------------------------------------------------------- Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_shares_revocations_within_a_second_and_survives_an_empty_restart() {
    let port = free_ports(1)[0];
    let mut redis = start_redis(port);
    wait_redis(port).await;
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut gws = Vec::new();
    for d in &dirs[..3] {
        let gw = start_gateway(d.path(), &key, &up, true, "", Some(port)).await;
        wait_ready(&gw).await;
        gws.push(gw);
    }
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.listen_addrs()[0]).collect();
    let admins: Vec<SocketAddr> = gws.iter().map(|g| g.admin_addr().unwrap()).collect();
    let clients: Vec<Client> = (0..3).map(|_| Client::plain()).collect();
    let n = now();

    // 1. A jti revoked on A reaches B and C within a second.
    let t1 = key.token("alice", json!({"jti": "shared-1"}));
    for i in 0..3 {
        assert_passes(&call(&clients[i], addrs[i], &t1).await, "before");
    }
    post_ok(admins[0], &json!({"jti": "shared-1"})).await;
    let t0 = Instant::now();
    assert_revoked(&call(&clients[0], addrs[0], &t1).await, "on A itself");
    let (db, dc) = tokio::join!(
        time_to_refusal(&clients[1], addrs[1], &t1, t0),
        time_to_refusal(&clients[2], addrs[2], &t1, t0)
    );
    eprintln!("propagation jti A->B {db:?}, A->C {dc:?}");
    // The 201 came only once the entry was in Redis, expiring with it.
    assert!(
        redis_entries(port)
            .await
            .iter()
            .any(|e| e["jti"] == "shared-1"),
        "acknowledged but not in Redis"
    );

    // 2. A subject cut-off revoked on B reaches A and C within a second.
    let carol = key.token("carol", json!({"iat": n - 10}));
    for i in 0..3 {
        assert_passes(&call(&clients[i], addrs[i], &carol).await, "carol before");
    }
    post_ok(
        admins[1],
        &json!({"iss": ISS, "sub": "carol", "not_before": n}),
    )
    .await;
    let t0 = Instant::now();
    assert_revoked(&call(&clients[1], addrs[1], &carol).await, "on B itself");
    let (sa, sc) = tokio::join!(
        time_to_refusal(&clients[0], addrs[0], &carol, t0),
        time_to_refusal(&clients[2], addrs[2], &carol, t0)
    );
    eprintln!("propagation sub B->A {sa:?}, B->C {sc:?}");
    for (d, what) in [(db, "A->B"), (dc, "A->C"), (sa, "B->A"), (sc, "B->C")] {
        assert!(
            d < Duration::from_secs(1),
            "revocation took {d:?} to reach a replica ({what}); SPEC: within 1 s"
        );
    }

    // A removal travels the same way.
    let td = key.token("alice", json!({"jti": "shared-del"}));
    post_ok(admins[0], &json!({"jti": "shared-del"})).await;
    let t0 = Instant::now();
    tokio::join!(
        time_to_refusal(&clients[1], addrs[1], &td, t0),
        time_to_refusal(&clients[2], addrs[2], &td, t0)
    );
    let r = delete(admins[1], "jti=shared-del").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t0 = Instant::now();
    let (xa, xc) = tokio::join!(
        time_to_pass(&clients[0], addrs[0], &td, t0),
        time_to_pass(&clients[2], addrs[2], &td, t0)
    );
    eprintln!("propagation of a DELETE B->A {xa:?}, B->C {xc:?}");
    for (d, what) in [(xa, "B->A"), (xc, "B->C")] {
        assert!(
            d < Duration::from_secs(1),
            "a removal took {d:?} to reach a replica ({what})"
        );
    }
    assert!(
        !redis_entries(port)
            .await
            .iter()
            .any(|e| e["jti"] == "shared-del"),
        "a removed entry is still in Redis"
    );

    // 3. A replica started afterwards enforces both from its first sync.
    let gd = start_gateway(dirs[3].path(), &key, &up, true, "", Some(port)).await;
    wait_ready(&gd).await;
    let d_addr = gd.listen_addrs()[0];
    assert_revoked(&call_once(d_addr, &t1).await, "jti on a later replica");
    assert_revoked(
        &call_once(d_addr, &carol).await,
        "cut-off on a later replica",
    );
    gws.push(gd);
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.listen_addrs()[0]).collect();
    let admins: Vec<SocketAddr> = gws.iter().map(|g| g.admin_addr().unwrap()).collect();

    // 4. Redis goes away.
    kill9(&mut redis);
    let r = post(admins[0], &json!({"jti": "outage-0"})).await;
    assert_eq!(
        r.status,
        503,
        "a POST right after Redis died: {}",
        String::from_utf8_lossy(&r.body)
    );
    let immediate_listed = lists_jti(&listed(admins[0]).await, "outage-0");
    eprintln!("POST racing the outage on A: 503, entry kept locally: {immediate_listed}");
    for (i, admin) in admins.iter().enumerate() {
        let body = wait_degraded(*admin).await;
        eprintln!("replica {i} readiness during the outage: {body}");
        let jti = format!("outage-{}", i + 1);
        let r = post(*admin, &json!({"jti": jti})).await;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "unavailable");
        assert!(
            !lists_jti(&listed(*admin).await, &jti),
            "a POST answered 503 left an entry behind on replica {i}"
        );
        let r = delete(*admin, "jti=shared-1").await;
        assert_eq!(
            r.status, 503,
            "a DELETE that cannot be shared: {}",
            r.status
        );
    }
    for (i, addr) in addrs.iter().enumerate() {
        assert_revoked(
            &call_once(*addr, &t1).await,
            &format!("jti on {i}, Redis down"),
        );
        assert_revoked(
            &call_once(*addr, &carol).await,
            &format!("cut-off on {i}, Redis down"),
        );
        let r = readyz(admins[i]).await;
        assert_eq!(r.status, 200, "readiness during the outage");
    }
    for gw in &gws {
        assert!(metric(gw, SYNC_ERRORS, &[]).await > 0.0);
    }

    // 5. Redis comes back empty on the same port.
    let restarted = Instant::now();
    let _redis2 = start_redis(port);
    wait_redis(port).await;
    assert!(
        redis_entries(port).await.is_empty(),
        "the new Redis is not empty"
    );
    for (i, admin) in admins.iter().enumerate() {
        let jti = format!("after-restart-{i}");
        loop {
            let r = post(*admin, &json!({"jti": jti})).await;
            if r.status == 201 {
                break;
            }
            assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
            assert!(
                restarted.elapsed() < Duration::from_secs(15),
                "replica {i} did not reconnect to Redis within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "all replicas accept POSTs {:?} after the Redis restart",
        restarted.elapsed()
    );
    for admin in &admins {
        let r = readyz(*admin).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["degraded"],
            json!([]),
            "still degraded after reconnecting"
        );
    }
    // The replicas merged what they had into the empty Redis.
    let in_redis = redis_entries(port).await;
    assert!(
        in_redis.iter().any(|e| e["jti"] == "shared-1"),
        "shared-1 is not back in Redis: {in_redis:?}"
    );
    assert!(
        in_redis
            .iter()
            .any(|e| e["sub"] == "carol" && e["iss"] == ISS && e["not_before"] == n),
        "carol's cut-off is not back in Redis: {in_redis:?}"
    );
    for i in 0..4 {
        let jti = format!("after-restart-{i}");
        assert!(
            in_redis.iter().any(|e| e["jti"] == json!(jti)),
            "{jti} not in Redis"
        );
    }
    // A fresh replica with an empty store learns them from Redis alone.
    let ge = start_gateway(dirs[4].path(), &key, &up, true, "", Some(port)).await;
    wait_ready(&ge).await;
    let e_addr = ge.listen_addrs()[0];
    assert_revoked(
        &call_once(e_addr, &t1).await,
        "jti on a replica started after the restart",
    );
    assert_revoked(
        &call_once(e_addr, &carol).await,
        "cut-off on a replica started after the restart",
    );
    let t3 = key.token("alice", json!({"jti": "after-restart-3"}));
    assert_revoked(
        &call_once(e_addr, &t3).await,
        "an entry posted after the restart",
    );

    // 6. Live propagation works again after the reconnection.
    let t2 = key.token("alice", json!({"jti": "shared-2"}));
    for i in 0..3 {
        assert_passes(&call(&clients[i], addrs[i], &t2).await, "shared-2 before");
    }
    post_ok(admins[2], &json!({"jti": "shared-2"})).await;
    let t0 = Instant::now();
    let (ra, rb) = tokio::join!(
        time_to_refusal(&clients[0], addrs[0], &t2, t0),
        time_to_refusal(&clients[1], addrs[1], &t2, t0)
    );
    eprintln!("propagation after the restart C->A {ra:?}, C->B {rb:?}");
    for (d, what) in [(ra, "C->A"), (rb, "C->B")] {
        assert!(
            d < Duration::from_secs(1),
            "after the Redis restart, revocation took {d:?} to reach a replica ({what})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_reached_redis_is_not_ready() {
    let port = free_ports(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let gw = start_gateway(dir.path(), &key, &up, true, "", Some(port)).await;
    let admin = gw.admin_addr().unwrap();

    // Keys load from a file at once; only the revocation sync is missing.
    for _ in 0..10 {
        let r = readyz(admin).await;
        assert_eq!(r.status, 503, "ready without a first revocation sync");
        let body = r.json();
        let reasons = body["reasons"].to_string();
        assert!(
            reasons.contains("revocation sync"),
            "503 without naming the revocation sync: {body}"
        );
        assert!(!reasons.contains("issuer"), "keys should be loaded: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = post(admin, &json!({"jti": "never"})).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));

    // Once Redis answers, the replica syncs and becomes ready.
    let _redis = start_redis(port);
    wait_redis(port).await;
    let since = Instant::now();
    while readyz(admin).await.status != 200 {
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "never became ready after Redis came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post_ok(admin, &json!({"jti": "now-shared"})).await;
    let t = key.token("alice", json!({"jti": "now-shared"}));
    assert_revoked(
        &call_once(gw.listen_addrs()[0], &t).await,
        "after the first sync",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_not_undone_by_a_replica_that_was_down_during_it() {
    let port = free_ports(1)[0];
    let _redis = start_redis(port);
    wait_redis(port).await;
    let key = TestKey::new(Algorithm::ES256);
    let up = Upstream::start().await;
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = start_gateway(dir_a.path(), &key, &up, true, "", Some(port)).await;
    wait_ready(&a).await;
    let (a_addr, a_admin) = (a.listen_addrs()[0], a.admin_addr().unwrap());
    write_files(dir_b.path(), &key);
    let mut b = spawn_gateway(dir_b.path(), &up, 1, Some(port));
    wait_child_ready(&mut b).await;
    let t = key.token("alice", json!({"jti": "undo-me"}));

    post_ok(a_admin, &json!({"jti": "undo-me"})).await;
    time_to_refusal(&Client::plain(), b.addr, &t, Instant::now()).await;
    // B goes down with the entry in its local store; meanwhile it is deleted.
    kill9(&mut b.proc);
    let r = delete(a_admin, "jti=undo-me").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_passes(&call_once(a_addr, &t).await, "on A after DELETE");

    // B comes back and syncs. Observe B, A (through a full resync period,
    // 10 s) and a fresh replica, then judge.
    let mut b = spawn_gateway(dir_b.path(), &up, 2, Some(port));
    wait_child_ready(&mut b).await;
    let on_b = call_once(b.addr, &t).await.status;
    let watch = Instant::now();
    let mut on_a = Vec::new();
    while watch.elapsed() < Duration::from_secs(12) {
        on_a.push(call_once(a_addr, &t).await.status.as_u16());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let c = start_gateway(dir_c.path(), &key, &up, true, "", Some(port)).await;
    wait_ready(&c).await;
    let on_c = call_once(c.listen_addrs()[0], &t).await.status;
    let in_redis = redis_entries(port)
        .await
        .iter()
        .any(|e| e["jti"] == "undo-me");
    eprintln!(
        "after B restarted: B {on_b}, A over 12 s {on_a:?}, fresh C {on_c}, in Redis {in_redis}"
    );
    assert!(
        on_b == 200 && on_a.iter().all(|s| *s == 200) && on_c == 200 && !in_redis,
        "an acknowledged DELETE was undone by a replica that was down during it: \
         B {on_b}, A {on_a:?}, fresh C {on_c}, back in Redis {in_redis}"
    );
}
