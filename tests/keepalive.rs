//! Keep-alive connections across idle gaps. Between requests an HTTP/1
//! connection is parked (hyper's session ends, its buffers are freed) once it
//! has been idle for `PARK_AFTER`; these tests drive real sockets, plain and
//! TLS, across that boundary and check nothing is lost or cut on the way.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use portcullis::server::framing::PARK_AFTER;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const GAP: Duration = Duration::from_millis(PARK_AFTER.as_millis() as u64 * 3);

fn config(up: &str, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shutdown_grace = "20s"
{server_extra}

[admin]
listen = "127.0.0.1:0"

[[issuer]]
id = "main"
issuer = "{ISS}"
jwks_file = "jwks.json"
audiences = ["{AUD}"]
algorithms = ["RS256"]

[upstream.app]
endpoints = ["{up}"]
connect_timeout = "1s"
response_timeout = "5s"

[[route]]
path_prefix = "/"
upstream = "app"
auth = "public"
"#
    )
}

async fn start(dir: &Path, up: &Upstream, server_extra: &str) -> portcullis::RunningGateway {
    let key = TestKey::new(jsonwebtoken::Algorithm::RS256);
    std::fs::write(dir.join("jwks.json"), jwks(&[&key])).unwrap();
    gateway(dir, &config(&up.url(), server_extra)).await
}

/// `start` with a TLS listener; the certificates are written to `dir`.
async fn start_tls(dir: &Path, up: &Upstream) -> (portcullis::RunningGateway, Certs) {
    let certs = Certs::new(dir);
    let gw = start(
        dir,
        up,
        "tls = { cert = \"server.crt\", key = \"server.key\" }",
    )
    .await;
    (gw, certs)
}

/// A TLS client configuration that trusts only the test CA.
fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// One HTTP/1.1 response read off the stream: status and body.
async fn response<S: AsyncRead + Unpin>(s: &mut S) -> (u16, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("response head within 10 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = text[9..12].parse().unwrap();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut body))
        .await
        .expect("body within 20 s")
        .expect("the whole body before the connection closed");
    (status, body)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n").into_bytes()
}

async fn exchange_across_gaps<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, up: &Upstream) {
    let before = up.count();
    for (i, gap) in [Duration::ZERO, GAP, GAP * 2].into_iter().enumerate() {
        tokio::time::sleep(gap).await;
        s.write_all(&get(&format!("/after-gap/{i}"))).await.unwrap();
        let (status, _) = response(s).await;
        assert_eq!(status, 200, "request {i} after {gap:?} idle");
        assert_eq!(up.last().uri, format!("/after-gap/{i}"));
    }
    // Two pipelined in one write, after a gap.
    tokio::time::sleep(GAP).await;
    let mut both = get("/pipelined/a");
    both.extend(get("/pipelined/b"));
    s.write_all(&both).await.unwrap();
    assert_eq!(response(s).await.0, 200);
    assert_eq!(response(s).await.0, 200);
    assert_eq!(
        up.count() - before,
        5,
        "every request reached the upstream once"
    );
}

#[tokio::test]
async fn a_plain_keep_alive_connection_serves_again_after_idling() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let gw = start(dir.path(), &up, "").await;
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    exchange_across_gaps(&mut s, &up).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tls_keep_alive_connection_serves_again_after_idling() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let (gw, certs) = start_tls(dir.path(), &up).await;
    let mut cfg = client_config(&certs.ca_pem);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    exchange_across_gaps(&mut s, &up).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_large_answer_to_a_slow_reader_arrives_whole_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    up.behaviour.lock().unwrap().body = Some(Bytes::from(big.clone()));
    let gw = start(dir.path(), &up, "").await;
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    s.write_all(&get("/big")).await.unwrap();
    // Let the gateway fill the socket buffers and stall on writing for
    // longer than the park delay before reading anything.
    tokio::time::sleep(GAP * 2).await;
    let (status, body) = response(&mut s).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), big.len());
    assert!(body == big, "the body arrived altered");
    up.behaviour.lock().unwrap().body = None;
    tokio::time::sleep(GAP).await;
    s.write_all(&get("/small")).await.unwrap();
    assert_eq!(response(&mut s).await.0, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_paused_mid_head_or_mid_body_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let gw = start(dir.path(), &up, "").await;
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    s.write_all(b"POST /paused HTTP/1.1\r\nHost: gw.test\r\n")
        .await
        .unwrap();
    tokio::time::sleep(GAP).await;
    s.write_all(b"Content-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(GAP).await;
    s.write_all(b"world").await.unwrap();
    let (status, body) = response(&mut s).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"helloworld");
    let seen = up.last();
    assert_eq!(
        (seen.uri.as_str(), &seen.body[..]),
        ("/paused", &b"helloworld"[..])
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_once_by_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let gw = start(dir.path(), &up, "").await;
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    s.write_all(&get("/one")).await.unwrap();
    assert_eq!(response(&mut s).await.0, 200);
    tokio::time::sleep(GAP).await;
    let t = Instant::now();
    gw.shutdown().await;
    // shutdown_grace is 20 s: an idle connection must not hold the drain.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the drain waited {:?} for an idle connection",
        t.elapsed()
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the idle connection was closed")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn a_client_hanging_up_mid_request_cancels_the_upstream_call() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().delay = Duration::from_millis(1500);
    let gw = start(dir.path(), &up, "").await;
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    s.write_all(&get("/slow")).await.unwrap();
    // Longer than the park delay: the request is in flight, not idle.
    tokio::time::sleep(GAP).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(up.count(), 1, "the upstream saw the request");
    // The control: the same request, waited for, is counted under these labels.
    let mut s = TcpStream::connect(gw.listen_addrs()[0]).await.unwrap();
    s.write_all(&get("/slow")).await.unwrap();
    assert_eq!(response(&mut s).await.0, 200);
    // Only the control's 200 was counted.
    let labels = [("route", "route0"), ("method", "GET"), ("status", "200")];
    let answered = metric(&gw, "portcullis_requests_total", &labels).await;
    assert_eq!(
        answered, 1.0,
        "the upstream call went on after the client hung up"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tls_request_sent_with_the_handshakes_last_flight_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let (gw, certs) = start_tls(dir.path(), &up).await;
    let addr = gw.listen_addrs()[0];
    let ca = certs.ca_pem.clone();
    // Blocking rustls, so that the client's Finished and its request leave
    // in one write: the gateway's handshake reads both off the socket.
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let cfg = client_config(&ca);
        let mut tls = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        tls.writer()
            .write_all(b"GET /with-finished HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).unwrap();
        }
        while tls.wants_write() {
            tls.write_tls(&mut sock).unwrap();
        }
        let mut stream = rustls::Stream::new(&mut tls, &mut sock);
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert_eq!(up.last().uri, "/with-finished");
    gw.shutdown().await;
}
