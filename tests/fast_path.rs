//! The HTTP/1 fast path (`server::fast`) against the general path.
//!
//! Two gateways run the same configuration, one with `fast_path = false`,
//! in front of one upstream that records the raw bytes of every head it
//! gets. Each request is sent to both; what the client gets back and what
//! the upstream sees must agree, header for header. The fast path copies a
//! client's header names as they were sent, where the general path lowercases
//! them: the upstream's raw bytes show which path served each request.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::server::framing::PARK_AFTER;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that keeps each request head's raw bytes and answers by path:
/// `/chunked` with a chunked body, `/empty` with 204, else 200 and a length.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let h2 = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let heads = h2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                        let length = header_of(&head, "content-length")
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[end + 4..end + 4 + length].to_vec();
                        buf.drain(..end + 4 + length);
                        let target = head.split(' ').nth(1).unwrap_or("").to_string();
                        heads.lock().unwrap().push(head.clone());
                        let answer: Vec<u8> = if target.starts_with("/chunked") {
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-upstream: raw\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()
                        } else if target.starts_with("/empty") {
                            b"HTTP/1.1 204 No Content\r\nx-upstream: raw\r\n\r\n".to_vec()
                        } else {
                            let text = format!("seen {target} {}", body.len());
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\nx-request-id: upstream-own\r\nx-upstream: raw\r\n\r\n{text}",
                                text.len()
                            )
                            .into_bytes()
                        };
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { addr, heads }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.heads.lock().unwrap())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// A head as comparable text: the request or status line, then the header
/// lines with names lowercased, sorted, without the values that differ by
/// nature (`date`, the request id).
fn canonical(head: &str) -> String {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_string();
    let mut fields: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(n, _)| n != "date" && n != "x-request-id")
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    fields.sort();
    format!("{first}\n{}", fields.join("\n"))
}

fn config(up: SocketAddr, fast: bool) -> String {
    let mut c = base_config(
        r#"jwks_file = "jwks.json""#,
        &format!("http://{up}"),
        r#""RS256""#,
    );
    c = c.replace(
        "listen = [\"127.0.0.1:0\"]\n",
        &format!("listen = [\"127.0.0.1:0\"]\nfast_path = {fast}\n"),
    );
    c.push_str(
        r#"
[[route]]
path_prefix = "/pub"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/opt"
upstream = "app"
auth = "optional"

[[route]]
path_prefix = "/admin"
upstream = "app"
scopes = ["admin"]

[[route]]
path_prefix = "/"
upstream = "app"
"#,
    );
    c
}

async fn start(
    dir: &Path,
    up: SocketAddr,
    fast: bool,
    key: &TestKey,
) -> portcullis::RunningGateway {
    std::fs::write(dir.join("jwks.json"), jwks(&[key])).unwrap();
    gateway(dir, &config(up, fast)).await
}

/// Sends one request on a fresh connection and returns the whole answer.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    raw(addr, request.as_bytes(), Duration::from_secs(5)).await
}

/// The answer as comparable text (head canonical, body with the request id blanked).
fn answer(text: &str) -> String {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let rid = header_of(head, "x-request-id").unwrap_or_default();
    let body = if rid.is_empty() {
        body.to_string()
    } else {
        body.replace(&rid, "<request id>")
    };
    format!("{}\n\n{body}", canonical(head))
}

#[tokio::test]
async fn the_fast_path_answers_and_forwards_as_the_general_path_does() {
    let up = RawUpstream::start().await;
    let key = TestKey::new(Algorithm::RS256);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fast = start(d1.path(), up.addr, true, &key).await;
    let general = start(d2.path(), up.addr, false, &key).await;
    let (fa, ga) = (fast.listen_addrs()[0], general.listen_addrs()[0]);

    let good = key.token(
        "alice",
        json!({"email": "a@example.com", "roles": ["r1", "r,2"]}),
    );
    let admin = key.token("root", json!({"scope": "read admin"}));
    let expired = key.token("bob", json!({"exp": 1000, "iat": 900}));
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let other = TestKey::new(Algorithm::RS256).token("eve", json!({}));

    // (request, served by the fast path)
    let cases: Vec<(String, bool)> = vec![
        (format!("GET /api/x?b=2&a=1 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nX-Custom: One\r\nConnection: close\r\n\r\n"), true),
        (format!("HEAD /api/head HTTP/1.1\r\nHost: gw.test:8080\r\nAuthorization: bearer {good}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/%7Euser/b?q HTTP/1.1\r\nHost: GW.test\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/a/../b HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"), false),
        (format!("GET /chunked HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /empty HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nX-Request-Id: abc.DEF-123_x\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nX-Request-Id: not valid!\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {expired}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {forged}\r\nConnection: close\r\n\r\n"), true),
        (format!("HEAD /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {expired}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {other}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /admin/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"), true),
        (format!("GET /admin/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"), true),
        ("GET /pub/p? HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Basic eDp5\r\nConnection: close\r\n\r\n".to_string(), true),
        ("GET /opt/o HTTP/1.1\r\nHost: gw.test\r\nCookie: s=1\r\nConnection: close\r\n\r\n".to_string(), true),
        // The general path's: no token, a spoofed identity header, a body,
        // forwarding headers, an upgrade, a token in the query, HTTP/1.0.
        ("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".to_string(), false),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nX-User-Id: mallory\r\nConnection: close\r\n\r\n"), false),
        (format!("POST /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"), false),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: close\r\n\r\n"), false),
        (format!("GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"), false),
        (format!("GET /api/x?access_token={good} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"), false),
        (format!("GET /api/x HTTP/1.0\r\nHost: gw.test\r\nAuthorization: Bearer {good}\r\n\r\n"), false),
    ];
    for (request, on_fast_path) in &cases {
        let label = request.lines().next().unwrap_or("");
        let from_fast = exchange(fa, request).await;
        let fast_heads = up.take();
        let from_general = exchange(ga, request).await;
        let general_heads = up.take();
        assert!(from_fast.starts_with("HTTP/1."), "{label}: {from_fast}");
        assert_eq!(
            answer(&from_fast),
            answer(&from_general),
            "{label}: the answers differ"
        );
        assert_eq!(
            fast_heads.len(),
            general_heads.len(),
            "{label}: upstream requests"
        );
        for (f, g) in fast_heads.iter().zip(&general_heads) {
            assert_eq!(
                canonical(f),
                canonical(g),
                "{label}: the upstream saw different heads"
            );
            // The request id goes upstream, and is the one the client got.
            let rid = header_of(&from_fast, "x-request-id").unwrap();
            assert_eq!(
                header_of(f, "x-request-id").as_deref(),
                Some(rid.as_str()),
                "{label}"
            );
            // The fast path copies the client's names as sent.
            let kept_case = f.contains("\r\nHost: ");
            assert_eq!(
                kept_case, *on_fast_path,
                "{label}: served by the wrong path:\n{f}"
            );
        }
    }
    fast.shutdown().await;
    general.shutdown().await;
}

/// One connection: a fast request, one the general path takes (with a body),
/// then after an idle gap fast requests again, two of them pipelined.
#[tokio::test]
async fn a_connection_moves_between_the_paths_without_losing_a_byte() {
    let up = RawUpstream::start().await;
    let key = TestKey::new(Algorithm::RS256);
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), up.addr, true, &key).await;
    let token = key.token("alice", json!({}));
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    let post = format!(
        "POST /p HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\nContent-Length: 7\r\n\r\npayload"
    );

    let mut buf = Vec::new();
    s.write_all(get("/one").as_bytes()).await.unwrap();
    assert!(read_answer(&mut s, &mut buf).await.ends_with("seen /one 0"));
    s.write_all(post.as_bytes()).await.unwrap();
    assert!(read_answer(&mut s, &mut buf).await.ends_with("seen /p 7"));
    tokio::time::sleep(PARK_AFTER * 3).await;
    s.write_all(get("/two").as_bytes()).await.unwrap();
    assert!(read_answer(&mut s, &mut buf).await.ends_with("seen /two 0"));
    // A head split across two writes, with a pause between.
    let split = get("/three");
    s.write_all(&split.as_bytes()[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(&split.as_bytes()[20..]).await.unwrap();
    assert!(read_answer(&mut s, &mut buf)
        .await
        .ends_with("seen /three 0"));
    tokio::time::sleep(PARK_AFTER * 3).await;
    s.write_all(format!("{}{}", get("/four"), get("/five")).as_bytes())
        .await
        .unwrap();
    assert!(read_answer(&mut s, &mut buf)
        .await
        .ends_with("seen /four 0"));
    assert!(read_answer(&mut s, &mut buf)
        .await
        .ends_with("seen /five 0"));

    let heads = up.take();
    let targets: Vec<&str> = heads.iter().filter_map(|h| h.split(' ').nth(1)).collect();
    assert_eq!(targets, ["/one", "/p", "/two", "/three", "/four", "/five"]);
    // Which path took which: the first after each idle gap is the fast path's.
    let fast: Vec<bool> = heads.iter().map(|h| h.contains("\r\nHost: ")).collect();
    // The split head is hyper's: it came in two reads.
    assert_eq!(fast[..4], [true, false, true, false], "{heads:#?}");
    let per_route = [("route", "route3"), ("method", "GET"), ("status", "200")];
    assert_eq!(
        metric(&gw, "portcullis_requests_total", &per_route).await,
        5.0
    );
    gw.shutdown().await;
}

/// Reads one answer with a `content-length` off a kept-alive connection;
/// `buf` keeps what came after it.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let read = async {
        loop {
            if let Some(end) = find(buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let n: usize = header_of(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + n {
                    let text = String::from_utf8_lossy(&buf[..end + 4 + n]).into_owned();
                    buf.drain(..end + 4 + n);
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer")
}
