//! Kept-alive upstream connections: reused while healthy, never reused once
//! the upstream closed them or a response was abandoned mid-body, closed after
//! `idle_timeout`. Driven through a real gateway against a raw loopback
//! upstream that counts its connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROUTES: &str = r#"
[[route]]
id = "public"
path_prefix = "/"
upstream = "app"
auth = "public"
"#;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers every request and keeps the connection.
    KeepAlive,
    /// Answers, then closes shortly after without saying so in the response.
    CloseAfterAnswer,
}

/// A loopback upstream that counts connections, requests and connections
/// the gateway closed. `/big` answers 8 MiB slowly; anything else a short body.
struct CountingUpstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed_by_gateway: Arc<AtomicUsize>,
}

impl CountingUpstream {
    async fn start(mode: Mode) -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed_by_gateway = Arc::new(AtomicUsize::new(0));
        let (a, r, c) = (accepts.clone(), requests.clone(), closed_by_gateway.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, mode, r.clone(), c.clone()));
            }
        });
        CountingUpstream {
            addr,
            accepts,
            requests,
            closed_by_gateway,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn closed_by_gateway(&self) -> usize {
        self.closed_by_gateway.load(Ordering::SeqCst)
    }

    /// Waits up to `within` for the gateway to have closed `n` connections.
    async fn wait_closed(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.closed_by_gateway() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn serve(mut s: TcpStream, mode: Mode, requests: Arc<AtomicUsize>, closed: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        requests.fetch_add(1, Ordering::SeqCst);
        if head.starts_with("POST /early ") {
            // Answers at once without reading the body, then keeps reading
            // (and discarding) whatever the body turns out to be.
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                .await
                .is_err()
            {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(Ok(_)) => {}
                    Err(_) => return,
                }
            }
        }
        if head.starts_with("POST /refuse-body ") {
            // Refuses without reading the body, and hangs up: the rest of the
            // request meets a closed (reset) connection.
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo much")
                .await;
            return;
        }
        if let Some(raw) = canned(&head) {
            if s.write_all(raw).await.is_err() {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if raw.starts_with(b"HTTP/1.0") {
                // Its body ends where the connection does.
                return;
            }
            continue;
        }
        if head.starts_with("GET /big ") {
            let size = 8 << 20;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let block = vec![b'x'; 16 * 1024];
            for _ in 0..size / block.len() {
                if s.write_all(&block).await.is_err() {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            continue;
        }
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if s.write_all(answer).await.is_err() {
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if mode == Mode::CloseAfterAnswer {
            // Closed a moment later: after the gateway has pooled the connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
    }
}

/// Replies written byte for byte, for `GET /raw/<name>`: the framings an
/// upstream may use, and ones it must not.
fn canned(head: &str) -> Option<&'static [u8]> {
    let name = head.strip_prefix("GET /raw/")?.split(' ').next()?;
    Some(match name {
        "chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "length-and-chunked" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "until-close" => b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
        "two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        "bad-status" => b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        "bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
        _ => return None,
    })
}

/// Reads from the gateway until `done` says so (5 s at most per read).
async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while !done(&got) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the gateway stopped sending")
            .unwrap();
        assert!(n > 0, "gateway closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

async fn start_gateway(
    dir: &std::path::Path,
    up: &CountingUpstream,
    upstream_extra: &str,
) -> (portcullis::RunningGateway, SocketAddr) {
    let _key = {
        let key = TestKey::new(Algorithm::ES256);
        std::fs::write(dir.join("jwks.json"), jwks(&[&key])).unwrap();
        key
    };
    let cfg = base_config("jwks_file = \"jwks.json\"", &up.url(), "\"ES256\"").replacen(
        "response_timeout = \"2s\"\n",
        &format!("response_timeout = \"2s\"\n{upstream_extra}\n"),
        1,
    ) + ROUTES;
    assert!(cfg.contains(upstream_extra));
    let gw = gateway(dir, &cfg).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    (gw, addr)
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;
    let client = Client::plain();
    for i in 0..20 {
        let r = client.get(&format!("http://{addr}/seq/{i}"), &[]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 20);
    assert_eq!(up.accepts(), 1, "the kept-alive connection was not reused");
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_the_upstream_closed_are_never_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::CloseAfterAnswer).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;
    let client = Client::plain();
    for i in 0..10 {
        let r = client.get(&format!("http://{addr}/closing/{i}"), &[]).await;
        assert_eq!(r.status, 200, "request {i} failed: {:?}", r.body);
        // Time for the upstream's close to reach the gateway before the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.accepts(), 10, "each request needed a fresh connection");
    let errors = metric(
        &gw,
        "portcullis_upstream_errors_total",
        &[("upstream", "app")],
    )
    .await;
    // -1 is "no such series": no upstream error of any kind was counted.
    assert!(errors <= 0.0, "upstream errors counted: {errors}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_response_abandoned_mid_body_closes_its_upstream_connection() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;

    // Read the head and a little of the body, then hang up.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut s, |got| got.len() >= 64 * 1024).await;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    drop(s);

    assert!(
        up.wait_closed(1, Duration::from_secs(5)).await,
        "the upstream connection of an abandoned response must be closed"
    );
    let r = Client::plain()
        .get(&format!("http://{addr}/after"), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.accepts(),
        2,
        "the next request needs a new connection, not the half-read one"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "idle_timeout = \"300ms\"").await;
    let client = Client::plain();
    let r = client.get(&format!("http://{addr}/once"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.closed_by_gateway(), 0);
    assert!(
        up.wait_closed(1, Duration::from_secs(3)).await,
        "an upstream connection idle past idle_timeout must be closed"
    );
    let r = client.get(&format!("http://{addr}/again"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.accepts(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_timeout_must_be_a_positive_duration() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(
        "jwks_file = \"jwks.json\"",
        "http://127.0.0.1:9",
        "\"ES256\"",
    )
    .replacen(
        "response_timeout = \"2s\"\n",
        "response_timeout = \"2s\"\nidle_timeout = \"0s\"\n",
        1,
    ) + ROUTES;
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, cfg).unwrap();
    let err = portcullis::config::Config::load(&path)
        .map(|_| ())
        .expect_err("idle_timeout = 0s must be refused")
        .to_string();
    assert!(err.contains("idle_timeout"), "{err}");
    assert!(err.contains("portcullis.toml:"), "{err}");
}

#[tokio::test]
async fn a_connection_still_sending_a_slow_body_is_not_handed_to_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;

    // A client declares a large body, sends a little of it, and stalls; the
    // upstream has already answered.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /early HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000000\r\n\r\nsome")
        .await
        .unwrap();
    read_until(&mut slow, |got| got.ends_with(b"early")).await;

    // Another client must not wait behind that body (response_timeout is 2 s).
    let started = Instant::now();
    let r = Client::plain()
        .get(&format!("http://{addr}/next"), &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the next request waited {:?} for another client's body",
        started.elapsed()
    );
    drop(slow);
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_reply_framings_arrive_whole_and_decide_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;
    let client = Client::plain();
    let get = |path: &'static str| {
        let client = &client;
        async move { client.get(&format!("http://{addr}{path}"), &[]).await }
    };

    // Chunked (with an extension and a trailer) and 1xx before the final
    // reply: delivered whole, on one kept-alive connection.
    let r = get("/raw/chunked").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello world"[..]));
    let r = get("/raw/continue").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    let r = get("/plain").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(up.accepts(), 1, "clean replies keep the connection");

    // A length beside a transfer coding: read as chunked, the length not
    // passed on, and the connection not trusted with another message.
    let r = get("/raw/length-and-chunked").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"abc"[..]));
    assert_ne!(
        r.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"100"[..])
    );
    assert!(
        up.wait_closed(1, Duration::from_secs(5)).await,
        "that connection was closed"
    );
    let r = get("/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.accepts(), 2);

    // No length at all (HTTP/1.0): the body runs until the upstream closes.
    let r = get("/raw/until-close").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"until close"[..]));

    // Framing an upstream must not use is a 502, never a guess.
    for path in ["/raw/two-lengths", "/raw/bad-status"] {
        let r = get(path).await;
        assert_eq!(r.status, 502, "{path}: {:?}", r.body);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_broken_chunk_cuts_the_reply_instead_of_completing_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /raw/bad-chunk HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the gateway kept the cut reply open");
    // hyper drops the connection on a body error, flushed head or not: the
    // client sees nothing, or a head with an unfinished body.
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a reply the upstream broke was completed: {text:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reply_sent_before_the_upstream_hangs_up_on_the_body_still_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let up = CountingUpstream::start(Mode::KeepAlive).await;
    let (gw, addr) = start_gateway(dir.path(), &up, "").await;
    let body = vec![b'x'; 4 << 20];
    let r = Client::plain()
        .request("POST", &format!("http://{addr}/refuse-body"), &[], &body)
        .await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (413, &b"too much"[..]));
    gw.shutdown().await;
}
