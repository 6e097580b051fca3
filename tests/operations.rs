mod common;

// Operations and hardening, from the outside: reloads (in-process, SIGHUP, a
// changed file, a rotated certificate), the drain on SIGTERM (HTTP/1.1, h2
// and upgraded connections), connection and request limits, upstream faults
// and upstream TLS, and a bounded soak that watches the resident memory of a
// real `portcullis run` process.
//
// Every child process is owned by a guard that kills it on Drop; every loop is
// bounded in count and in time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use common::process::{Proc, BIN};
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- configuration

/// An ES256 key whose JWKS is written to `dir/jwks.json`.
fn key_in(dir: &Path) -> TestKey {
    let key = TestKey::new(Algorithm::ES256);
    std::fs::write(dir.join("jwks.json"), jwks(&[&key])).unwrap();
    key
}

/// A configuration on the given addresses; `server_extra` goes into `[server]`,
/// `rest` (upstreams and routes) at the end.
fn config_text(listen: &str, admin: &str, server_extra: &str, rest: &str) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
{server_extra}

[admin]
listen = "{admin}"

[[issuer]]
id = "main"
issuer = "{ISS}"
jwks_file = "jwks.json"
audiences = ["{AUD}"]
algorithms = ["ES256"]
leeway = "5s"

[identity]
headers = {{ "X-User-Id" = "sub" }}
{rest}"#
    )
}

fn upstream_block(name: &str, url: &str) -> String {
    format!(
        "\n[upstream.{name}]\nendpoints = [\"{url}\"]\nconnect_timeout = \"1s\"\nresponse_timeout = \"5s\"\n"
    )
}

fn route_block(prefix: &str, upstream: &str, auth: &str) -> String {
    format!(
        "\n[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\nauth = \"{auth}\"\n"
    )
}

async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn counter(v: f64) -> f64 {
    v.max(0.0)
}

// ---------------------------------------------------------------- raw HTTP

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 response (Content-Length, chunked or until close):
/// (status, head, body). None on timeout or a connection that closed first.
async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<(u16, String, Vec<u8>)> {
    let work = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = lower
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        let mut body = buf[head_end..].to_vec();
        if status == 101 || status == 204 || status == 304 {
            return Some((status, head, body));
        }
        if let Some(len) = length {
            while body.len() < len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        } else if chunked {
            while find(&body, b"0\r\n\r\n").is_none() {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body = dechunk(&body);
        } else {
            let _ = s.read_to_end(&mut body).await;
        }
        Some((status, head, body))
    };
    tokio::time::timeout(limit, work).await.ok().flatten()
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = find(b, b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..p])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + size]);
        b = &b[p + 2 + size + 2..];
    }
    out
}

/// A GET on a fresh connection: the status, or None when nothing answers.
async fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    read_response(&mut s, Duration::from_secs(3))
        .await
        .map(|(st, _, _)| st)
}

/// The admin `/metrics` text of a child process.
async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (_, _, body) = read_response(&mut s, Duration::from_secs(3))
        .await
        .expect("metrics answer");
    String::from_utf8_lossy(&body).into_owned()
}

/// One series from Prometheus text: exact `name{labels}` as printed.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(-1.0)
}

fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- child process

/// `portcullis run --config dir/portcullis.toml`, killed and reaped on Drop
/// (the process itself, through `Deref`, is a `Proc` logging to `gateway.log`).
struct ChildGw {
    proc: Proc,
    /// The gateway and admin listeners, as the process reports them once serving.
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

impl std::ops::Deref for ChildGw {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for ChildGw {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl ChildGw {
    fn spawn(dir: &Path, toml: &str) -> ChildGw {
        let config = dir.join("portcullis.toml");
        std::fs::write(&config, toml).unwrap();
        let proc = Proc::spawn_logged(
            Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(&config)
                .env_remove("PORTCULLIS_CONFIG")
                .env("RUST_LOG", "info"),
            &dir.join("gateway.log"),
        );
        let unknown: SocketAddr = "0.0.0.0:0".parse().unwrap();
        ChildGw {
            proc,
            addr: unknown,
            admin: unknown,
            config,
        }
    }

    /// The addresses from the "portcullis is serving" log line (the
    /// configuration listens on port 0, so no port can be taken meanwhile).
    fn serving_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("portcullis is serving"))?;
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &v["fields"];
        let listen = fields["listen"].as_str()?;
        let addr = listen
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let admin = fields["admin"]
            .as_str()?
            .trim_start_matches("Some(")
            .trim_end_matches(')')
            .parse()
            .ok()?;
        Some((addr, admin))
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.exited() {
                panic!("portcullis exited ({s}) before ready:\n{}", self.log_text());
            }
            if let Some((addr, admin)) = self.serving_addrs() {
                (self.addr, self.admin) = (addr, admin);
                if probe(admin, "/readyz").await == Some(200) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "portcullis never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Open file descriptors of the process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident set size in kB, from /proc/<pid>/status.
    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

/// Writes `text` to `path` and puts the modification time back, so that only
/// a SIGHUP (not the file watcher) can notice the change.
fn write_keeping_mtime(path: &Path, text: &[u8]) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, text).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(mtime).unwrap();
}

/// Writes `text` to `path` through a rename, with a modification time later
/// than any the file had.
fn write_changed(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(1))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------- certificates

/// A CA of its own (rcgen), for certificates with exactly the names a test needs.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        init();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A server certificate for `names`: (cert PEM, key PEM).
    fn server(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate: (cert PEM, key PEM, DER).
    fn client(&self, name: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

fn certs_of(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn key_of(pem: &str) -> rustls_pki_types::PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether a TLS handshake with `addr` succeeds for a client that trusts only `ca_pem`.
async fn handshake_ok(ca_pem: &str, addr: SocketAddr) -> bool {
    init();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_of(ca_pem) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Some(_))
    )
}

// ---------------------------------------------------------------- 1. reload in process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_for_new_requests_refuses_a_bad_file_and_lets_in_flight_requests_finish(
) {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    {
        let mut ba = a.behaviour.lock().unwrap();
        ba.body = Some(Bytes::from_static(b"from-a"));
        ba.delay = Duration::from_millis(1000);
    }
    b.behaviour.lock().unwrap().body = Some(Bytes::from_static(b"from-b"));
    let ups = upstream_block("a", &a.url()) + &upstream_block("b", &b.url());
    let v1 = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "",
        &(ups.clone() + &route_block("/svc", "a", "public")),
    );
    let gw = gateway(dir.path(), &v1).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let ok0 = metric(&gw, "portcullis_config_reloads_total", &[("result", "ok")]).await;
    let err0 = metric(
        &gw,
        "portcullis_config_reloads_total",
        &[("result", "error")],
    )
    .await;
    assert_eq!((ok0, err0), (0.0, 0.0), "reload counters start at 0");

    // A request in flight on the old route...
    let started = Instant::now();
    let inflight = tokio::spawn(async move {
        Client::plain()
            .get(&format!("http://{addr}/svc/slow"), &[])
            .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async { a.count() == 1 }).await,
        "the slow request never reached upstream a"
    );

    // ...while the route moves to upstream b.
    let path = dir.path().join("portcullis.toml");
    let v2 = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "",
        &(ups.clone() + &route_block("/svc", "b", "public") + &route_block("/new", "b", "public")),
    );
    std::fs::write(&path, &v2).unwrap();
    gw.reload(Config::load(&path).expect("v2 is valid"))
        .await
        .expect("a valid configuration reloads");
    assert!(
        !inflight.is_finished(),
        "the slow request finished before the reload; the test proves nothing"
    );
    let r = Client::plain()
        .get(&format!("http://{addr}/svc/after"), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "from-b", "a new request still used the old route");
    let r = Client::plain()
        .get(&format!("http://{addr}/new/x"), &[])
        .await;
    assert_eq!(
        r.status, 200,
        "the route added by the reload does not serve"
    );

    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, "from-a",
        "the in-flight request did not finish on its old upstream"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(a.count(), 1);
    assert_eq!(b.count(), 2);
    assert_eq!(
        metric(&gw, "portcullis_config_reloads_total", &[("result", "ok")]).await,
        1.0
    );

    // An invalid file is refused with `portcullis check`'s own lines.
    let bad = dir.path().join("bad.toml");
    let bad_text = v2.replacen("[server]\n", "[server]\nheader_read_timeuot = \"1s\"\n", 1)
        + &route_block("/onlybad", "nope", "public");
    std::fs::write(&bad, &bad_text).unwrap();
    let err = gw
        .reload_file(&bad)
        .await
        .expect_err("an invalid configuration must be refused");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["check", "--config", bad.to_str().unwrap()])
            .env_remove("PORTCULLIS_CONFIG")
            .output(),
    )
    .await
    .expect("check finishes")
    .expect("check runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}:", bad.display());
    let printed: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.strip_prefix(&prefix)
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    let refused: Vec<&str> = err.lines().collect();
    assert!(
        refused.len() >= 2,
        "both problems should be named: {err}\n--- check said\n{stderr}"
    );
    assert_eq!(
        refused, printed,
        "the reload refusal differs from `portcullis check`"
    );
    for l in &refused {
        let rest = l.strip_prefix(&prefix).unwrap();
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap();
        let col = parts.next().unwrap();
        assert!(
            line.parse::<usize>().is_ok() && col.parse::<usize>().is_ok(),
            "not FILE:LINE:COL: {l}"
        );
    }
    assert!(err.contains("server.header_read_timeuot"), "{err}");
    assert!(err.contains("].upstream"), "{err}");
    assert_eq!(
        metric(
            &gw,
            "portcullis_config_reloads_total",
            &[("result", "error")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&gw, "portcullis_config_reloads_total", &[("result", "ok")]).await,
        1.0
    );

    // The last good configuration keeps serving.
    let r = Client::plain()
        .get(&format!("http://{addr}/svc/still"), &[])
        .await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"from-b"[..]));
    let r = Client::plain()
        .get(&format!("http://{addr}/onlybad"), &[])
        .await;
    assert_eq!(r.status, 404, "a route of the refused file is serving");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 2. reload as a process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_a_changed_file_reload_a_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let ups = upstream_block("app", &up.url());
    let text = |routes: &[&str]| {
        let mut rest = ups.clone();
        for r in routes {
            rest += &route_block(r, "app", "public");
        }
        config_text("127.0.0.1:0", "127.0.0.1:0", "", &rest)
    };
    let mut gw = ChildGw::spawn(dir.path(), &text(&["/one"]));
    gw.wait_ready().await;
    let (addr, admin) = (gw.addr, gw.admin);
    assert_eq!(probe(addr, "/one").await, Some(200));
    assert_eq!(probe(addr, "/two").await, Some(404));

    // SIGHUP: the file changes without a new modification time, so only the
    // signal can apply it. The watcher (every 2 s) must not have seen it.
    write_keeping_mtime(&gw.config, text(&["/one", "/two"]).as_bytes());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        probe(addr, "/two").await,
        Some(404),
        "applied without a signal or a new modification time"
    );
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(2), || async {
            probe(addr, "/two").await == Some(200)
        })
        .await,
        "SIGHUP did not apply the edited file:\n{}",
        gw.log_text()
    );
    let m = scrape(admin).await;
    assert_eq!(
        series(&m, "portcullis_config_reloads_total{result=\"ok\"}"),
        1.0
    );

    // The file alone (no signal): the watcher applies it within ~5 s.
    let t0 = Instant::now();
    write_changed(&gw.config, text(&["/one", "/two", "/three"]).as_bytes());
    assert!(
        eventually(Duration::from_secs(6), || async {
            probe(addr, "/three").await == Some(200)
        })
        .await,
        "a changed configuration file was not applied:\n{}",
        gw.log_text()
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // A broken edit is refused and counted; the last good one keeps serving.
    let broken = text(&["/one"]) + &route_block("/four", "missing", "public");
    write_changed(&gw.config, broken.as_bytes());
    assert!(
        eventually(Duration::from_secs(6), || async {
            series(
                &scrape(admin).await,
                "portcullis_config_reloads_total{result=\"error\"}",
            ) >= 1.0
        })
        .await,
        "a broken file was not counted as a failed reload:\n{}",
        gw.log_text()
    );
    assert_eq!(probe(addr, "/three").await, Some(200));
    assert_eq!(probe(addr, "/four").await, Some(404));
    let log = gw.log_text();
    let config_path = gw.config.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&config_path) && l.contains("].upstream")),
        "the refusal is not logged with FILE:LINE:COL and the key path:\n{log}"
    );
    assert!(gw.exited().is_none(), "a bad reload stopped the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_used_for_new_handshakes_after_sighup_and_after_a_file_change() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let (ca_a, ca_b, ca_c) = (Ca::new("CA a"), Ca::new("CA b"), Ca::new("CA c"));
    let (cert_file, key_file) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let (cert, key) = ca_a.server(&["localhost", "127.0.0.1"]);
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "tls = { cert = \"server.crt\", key = \"server.key\" }",
        &(upstream_block("app", &up.url()) + &route_block("/", "app", "public")),
    );
    let mut gw = ChildGw::spawn(dir.path(), &toml);
    gw.wait_ready().await;
    let addr = gw.addr;
    assert!(handshake_ok(&ca_a.pem, addr).await);
    assert!(!handshake_ok(&ca_b.pem, addr).await);

    // Rotation 1: new files, old modification times, then SIGHUP.
    let (cert, key) = ca_b.server(&["localhost", "127.0.0.1"]);
    write_keeping_mtime(&key_file, key.as_bytes());
    write_keeping_mtime(&cert_file, cert.as_bytes());
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || async {
            handshake_ok(&ca_b.pem, addr).await
        })
        .await,
        "after SIGHUP a client trusting only the new CA still fails:\n{}",
        gw.log_text()
    );
    assert!(
        !handshake_ok(&ca_a.pem, addr).await,
        "the old certificate is still served"
    );
    let r = Client::tls(&ca_b.pem, false)
        .get(&format!("https://localhost:{}/x", addr.port()), &[])
        .await;
    assert_eq!(r.status, 200);

    // Rotation 2: the files alone; the watcher notices them.
    let t0 = Instant::now();
    let (cert, key) = ca_c.server(&["localhost", "127.0.0.1"]);
    write_changed(&key_file, key.as_bytes());
    write_changed(&cert_file, cert.as_bytes());
    assert!(
        eventually(Duration::from_secs(7), || async {
            handshake_ok(&ca_c.pem, addr).await
        })
        .await,
        "a replaced certificate file was not picked up:\n{}",
        gw.log_text()
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert!(!handshake_ok(&ca_b.pem, addr).await);
    let r = Client::tls(&ca_c.pem, true)
        .get(&format!("https://localhost:{}/x", addr.port()), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
}

// ---------------------------------------------------------------- 3. drain

/// An h2 (prior knowledge, plaintext) GET on a fresh connection.
async fn h2c_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_refuses_new_connections_finishes_in_flight_requests_and_exits_0()
{
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    {
        let mut b = up.behaviour.lock().unwrap();
        b.delay = Duration::from_millis(1500);
        b.body = Some(Bytes::from_static(b"slow-done"));
    }
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "shutdown_grace = \"5s\"",
        &(upstream_block("app", &up.url()) + &route_block("/", "app", "public")),
    );
    let mut gw = ChildGw::spawn(dir.path(), &toml);
    gw.wait_ready().await;
    let (addr, admin) = (gw.addr, gw.admin);

    let h1 = tokio::spawn(async move {
        Client::plain()
            .get(&format!("http://{addr}/slow/h1"), &[])
            .await
    });
    let h2 = tokio::spawn(async move { h2c_get(addr, "/slow/h2").await });
    assert!(
        eventually(Duration::from_secs(5), || async { up.count() == 2 }).await,
        "the slow requests did not reach the upstream"
    );
    let t0 = Instant::now();
    gw.signal("TERM");

    assert!(
        eventually(Duration::from_secs(1), || async {
            probe(admin, "/readyz").await == Some(503)
        })
        .await,
        "/readyz did not turn 503 on SIGTERM"
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            TcpStream::connect(addr).await.is_err()
        })
        .await,
        "the listener still accepts connections while draining"
    );
    assert!(
        !h1.is_finished() && !h2.is_finished(),
        "the slow requests ended before the checks; the test proves nothing"
    );
    assert!(gw.exited().is_none(), "exited with requests in flight");

    let r = h1.await.unwrap();
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"slow-done"[..]));
    let (status, body) = h2.await.unwrap().expect("the h2 request finishes");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"slow-done"[..]));
    let status = gw.wait_exit_async(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    assert!(
        t0.elapsed() < Duration::from_millis(4500),
        "the drain waited for the whole grace with nothing left: {:?}",
        t0.elapsed()
    );
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upstream that answers a WebSocket handshake with 101 and then echoes
/// every byte until the other side closes.
async fn websocket_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if !head.contains("\r\nupgrade: websocket\r\n") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    let n = match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return,
                    };
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Opens a WebSocket through the gateway; panics unless it is switched.
async fn open_websocket(addr: SocketAddr, token: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut c, Duration::from_secs(5))
        .await
        .expect("an answer to the upgrade");
    assert_eq!(status, 101, "{head}");
    c
}

/// Sends `msg` and reads the echo back.
async fn echo(c: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    c.write_all(msg).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while got.len() < msg.len() {
            match c.read(&mut chunk).await {
                Ok(0) => return Err("closed".to_string()),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .map_err(|_| "no echo".to_string())??;
    if got == msg {
        Ok(())
    } else {
        Err(format!("echoed {got:?}"))
    }
}

/// A connection that the other side closed (EOF or reset) within `limit`.
async fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 256];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn ws_config(up: SocketAddr, grace: &str) -> String {
    config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!("shutdown_grace = \"{grace}\""),
        &(upstream_block("ws", &format!("http://{up}")) + &route_block("/ws", "ws", "required")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_keep_working_during_the_drain_until_the_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let (up, task) = websocket_upstream().await;
    let mut gw = ChildGw::spawn(dir.path(), &ws_config(up, "4s"));
    gw.wait_ready().await;
    let (addr, admin) = (gw.addr, gw.admin);
    let t = key.token("alice", json!({}));
    let mut ws1 = open_websocket(addr, &t).await;
    let mut ws2 = open_websocket(addr, &t).await;
    echo(&mut ws1, b"before").await.unwrap();

    let t0 = Instant::now();
    gw.signal("TERM");
    assert!(
        eventually(Duration::from_secs(1), || async {
            probe(admin, "/readyz").await == Some(503)
        })
        .await
    );
    // Both keep working while the gateway drains.
    if let Err(e) = echo(&mut ws1, b"during-1").await {
        panic!("ws1 during the drain: {e}\n{}", gw.log_text());
    }
    if let Err(e) = echo(&mut ws2, b"during-2").await {
        panic!("ws2 during the drain: {e}\n{}", gw.log_text());
    }
    drop(ws1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Err(e) = echo(&mut ws2, b"still-open").await {
        panic!(
            "ws2 {:?} into the drain: {e}\n{}",
            t0.elapsed(),
            gw.log_text()
        );
    }
    assert!(
        gw.exited().is_none(),
        "exited {:?} after SIGTERM while a WebSocket was open:\n{}",
        t0.elapsed(),
        gw.log_text()
    );

    // The grace ends: the process exits 0 and the last WebSocket is closed.
    let status = gw.wait_exit_async(Duration::from_secs(8)).await;
    let at = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    assert!(
        at >= Duration::from_millis(3500) && at < Duration::from_millis(7000),
        "exit {at:?} after SIGTERM with a 4 s grace:\n{}",
        gw.log_text()
    );
    assert!(
        closed_within(&mut ws2, Duration::from_secs(2)).await,
        "the WebSocket outlived the process"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_as_soon_as_the_last_websocket_closes() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_in(dir.path());
    let (up, task) = websocket_upstream().await;
    let mut gw = ChildGw::spawn(dir.path(), &ws_config(up, "20s"));
    gw.wait_ready().await;
    let (addr, admin) = (gw.addr, gw.admin);
    let mut ws = open_websocket(addr, &key.token("alice", json!({}))).await;
    gw.signal("TERM");
    assert!(
        eventually(Duration::from_secs(1), || async {
            probe(admin, "/readyz").await == Some(503)
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    if let Err(e) = echo(&mut ws, b"draining").await {
        panic!("echo during the drain: {e}\n{}", gw.log_text());
    }
    assert!(
        gw.exited().is_none(),
        "exited while a WebSocket was open:\n{}",
        gw.log_text()
    );
    let closed = Instant::now();
    drop(ws);
    let status = gw.wait_exit_async(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    assert!(
        closed.elapsed() < Duration::from_secs(3),
        "the drain went on {:?} after the last WebSocket closed",
        closed.elapsed()
    );
    task.abort();
}

// ---------------------------------------------------------------- 4. limits

async fn get_keep_alive(c: &mut TcpStream, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n");
    c.write_all(req.as_bytes()).await.ok()?;
    read_response(c, Duration::from_secs(5))
        .await
        .map(|(s, _, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_connections_in_the_backlog_without_using_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().body = Some(Bytes::from_static(b"ok"));
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "max_connections = 2",
        &(upstream_block("app", &up.url()) + &route_block("/", "app", "public")),
    );
    let mut gw = ChildGw::spawn(dir.path(), &toml);
    gw.wait_ready().await;
    let (addr, admin) = (gw.addr, gw.admin);

    let mut c1 = TcpStream::connect(addr).await.unwrap();
    let mut c2 = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_keep_alive(&mut c1, "/1").await, Some(200));
    assert_eq!(get_keep_alive(&mut c2, "/2").await, Some(200));
    let fds_held = gw.fds();

    // A third connection is made by the kernel, but not served.
    let mut c3 = TcpStream::connect(addr).await.unwrap();
    c3.write_all(b"GET /3 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut extra = Vec::new();
    for _ in 0..100 {
        extra.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), c3.read(&mut first)).await;
    assert!(
        early.is_err(),
        "a third connection was answered while two are held: {early:?}"
    );
    let fds_flood = gw.fds();
    assert!(
        fds_flood <= fds_held + 3,
        "101 waiting connections cost the gateway descriptors: {fds_held} -> {fds_flood}"
    );
    let m = scrape(admin).await;
    let active = sum_of(&m, "portcullis_connections_active");
    assert!(active <= 2.0, "connections_active = {active}");
    assert_eq!(up.count(), 2);

    // One held connection closes: the waiting one is served.
    drop(c1);
    let served = read_response(&mut c3, Duration::from_secs(5)).await;
    let (status, _, body) = served.expect("the waiting connection was never served");
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    assert_eq!(get_keep_alive(&mut c2, "/2b").await, Some(200));
    drop(extra);
    assert!(gw.exited().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_by_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "header_read_timeout = \"1s\"",
        &(upstream_block("app", &up.url()) + &route_block("/", "app", "public")),
    );
    let gw = gateway(dir.path(), &toml).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];

    let mut c = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let head = b"GET /slow HTTP/1.1\r\nHost: gw.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = None;
    let mut chunk = [0u8; 1024];
    for b in head.iter().cycle().take(40) {
        if c.write_all(&[*b]).await.is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), c.read(&mut chunk)).await {
            Err(_) => {}
            Ok(_) => {
                // EOF, a reset, or a 408: the gateway gave up on the header.
                cut = Some(t0.elapsed());
                break;
            }
        }
    }
    let cut = cut.expect("a header trickled over 12 s was never cut off");
    assert!(
        cut >= Duration::from_millis(800) && cut <= Duration::from_secs(3),
        "cut off after {cut:?} with header_read_timeout = 1s"
    );
    assert_eq!(up.count(), 0);
    // Ordinary clients are still served.
    let r = Client::plain().get(&format!("http://{addr}/ok"), &[]).await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_completes_is_cut_off_by_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let certs = Certs::new(dir.path());
    let up = Upstream::start().await;
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "header_read_timeout = \"1s\"\ntls = { cert = \"server.crt\", key = \"server.key\" }",
        &(upstream_block("app", &up.url()) + &route_block("/", "app", "public")),
    );
    let gw = gateway(dir.path(), &toml).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let before = metric(&gw, "portcullis_tls_handshake_errors_total", &[]).await;

    // A client that sends the first bytes of a ClientHello, then nothing.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let t0 = Instant::now();
    assert!(
        closed_within(&mut c, Duration::from_secs(4)).await,
        "an unfinished TLS handshake was kept open"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        metric(&gw, "portcullis_tls_handshake_errors_total", &[]).await,
        counter(before) + 1.0
    );
    let r = Client::tls(&certs.ca_pem, false)
        .get(&format!("https://localhost:{}/ok", addr.port()), &[])
        .await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

/// An upstream that answers with a chunked body: `parts` pieces, one every `every`.
async fn trickling_upstream(
    parts: usize,
    every: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                for i in 0..parts {
                    tokio::time::sleep(every).await;
                    let piece = format!("part{i:02};");
                    let frame = format!("{:x}\r\n{piece}\r\n", piece.len());
                    if s.write_all(frame.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_keep_alive_connection_but_not_a_busy_one() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().body = Some(Bytes::from_static(b"ok"));
    let (slow, task) = trickling_upstream(10, Duration::from_millis(300)).await;
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "idle_timeout = \"1s\"",
        &(upstream_block("app", &up.url())
            + &upstream_block("slow", &format!("http://{slow}"))
            + &route_block("/", "app", "public")
            + &route_block("/trickle", "slow", "public")),
    );
    let gw = gateway(dir.path(), &toml).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];

    // Silent after its response: closed after ~1 s.
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_keep_alive(&mut c, "/a").await, Some(200));
    let t0 = Instant::now();
    assert!(
        closed_within(&mut c, Duration::from_secs(5)).await,
        "an idle keep-alive connection was kept past idle_timeout"
    );
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle <= Duration::from_secs(3),
        "closed after {idle:?} with idle_timeout = 1s"
    );

    // A response trickling for ~3 s moves bytes all the time: not idle.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /trickle HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let (status, _, body) = read_response(&mut c, Duration::from_secs(8))
        .await
        .expect("the trickling response was cut off");
    assert_eq!(status, 200);
    let want: String = (0..10).map(|i| format!("part{i:02};")).collect();
    assert_eq!(String::from_utf8_lossy(&body), want);
    assert!(t0.elapsed() >= Duration::from_millis(2500));
    gw.shutdown().await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_cuts_a_client_that_stalls_mid_body_but_not_one_that_trickles() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let (up, seen) = body_recording_upstream().await;
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "idle_timeout = \"1s\"",
        &(upstream_block("app", &format!("http://{up}")) + &route_block("/", "app", "public")),
    );
    let gw = gateway(dir.path(), &toml).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let head = b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n";

    // Ten bytes of a hundred, then silence: the connection is idle while the
    // request is in flight, and is cut after about a second.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(head).await.unwrap();
    c.write_all(b"0123456789").await.unwrap();
    let t0 = Instant::now();
    assert!(
        closed_within(&mut c, Duration::from_secs(6)).await,
        "a client silent mid-body was kept past idle_timeout"
    );
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle <= Duration::from_secs(3),
        "closed after {idle:?} with idle_timeout = 1s"
    );

    // The same body in ten pieces 400 ms apart (4 s in all): bytes keep
    // moving, so it is never idle, and the whole body arrives.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(head).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write_all(b"0123456789").await.unwrap();
    }
    let (status, _, _) = read_response(&mut c, Duration::from_secs(5))
        .await
        .expect("the trickled upload was cut off");
    assert_eq!(status, 200);
    assert!(
        seen.lock().unwrap().contains(&Ok(100)),
        "the upstream never saw the whole trickled body: {:?}",
        seen.lock().unwrap()
    );
    gw.shutdown().await;
}

/// What an upstream made of a request body: its length, or the error that ended it.
type BodyOutcome = Result<usize, String>;

/// An upstream that records how each request body ended, and answers 200.
async fn body_recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<BodyOutcome>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<BodyOutcome>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s3 = s2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s4 = s3.clone();
                    async move {
                        let outcome = match req.into_body().collect().await {
                            Ok(c) => Ok(c.to_bytes().len()),
                            Err(e) => Err(e.to_string()),
                        };
                        s4.lock().unwrap().push(outcome);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"got"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn chunked_request(path: &str, total: usize, piece: usize) -> Vec<u8> {
    let mut out =
        format!("POST {path} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    let mut left = total;
    while left > 0 {
        let n = left.min(piece);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'x', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_bytes_refuses_a_large_content_length_and_never_forwards_a_large_chunked_body_whole(
) {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let (up, seen) = body_recording_upstream().await;
    let routes = format!(
        "{}\n[[route]]\npath_prefix = \"/upload\"\nupstream = \"app\"\nauth = \"public\"\nmax_body_bytes = 1024\n",
        upstream_block("app", &format!("http://{up}"))
    );
    let gw = gateway(
        dir.path(),
        &config_text("127.0.0.1:0", "127.0.0.1:0", "", &routes),
    )
    .await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let c = Client::plain();

    let r = c
        .request("POST", &format!("http://{addr}/upload"), &[], &[b'x'; 2048])
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused body reached the upstream"
    );
    // At the limit it passes.
    let r = c
        .request("POST", &format!("http://{addr}/upload"), &[], &[b'x'; 1024])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(seen.lock().unwrap().as_slice(), &[Ok(1024)]);
    seen.lock().unwrap().clear();

    // Chunked, no length: cut off at the limit, never forwarded whole.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&chunked_request("/upload", 2048, 256))
        .await
        .unwrap();
    let answer = read_response(&mut s, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcomes = seen.lock().unwrap().clone();
    assert!(
        !outcomes.contains(&Ok(2048)),
        "the upstream received the whole over-limit body: {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| matches!(o, Err(_) | Ok(0..=1024))),
        "{outcomes:?}"
    );
    let status = answer.as_ref().map(|(s, _, _)| *s);
    assert!(
        status.is_none_or(|s| !(200..300).contains(&s)),
        "an over-limit chunked body was answered {status:?}"
    );
    eprintln!("over-limit chunked body: client got {status:?}, upstream saw {outcomes:?}");

    // A chunked body within the limit passes whole.
    seen.lock().unwrap().clear();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&chunked_request("/upload", 1000, 256))
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap().as_slice(), &[Ok(1000)]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_does_not_stop_the_gateway_serving_others() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().delay = Duration::from_secs(2);
    let fast = Upstream::start().await;
    let toml = config_text(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "",
        &(upstream_block("app", &up.url())
            + &upstream_block("fast", &fast.url())
            + &route_block("/", "app", "public")
            + &route_block("/fast", "fast", "public")),
    );
    let gw = gateway(dir.path(), &toml).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];

    // hyper's h2 client resets a stream (RST_STREAM CANCEL) when its response
    // future is dropped after the request was sent: HEADERS then RST, in bulk.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let mut conn_task = tokio::spawn(conn);
    let sent = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut waves = Vec::new();
    for w in 0..20 {
        let mut batch = Vec::new();
        for i in 0..100 {
            let mut send = send.clone();
            let sent = sent.clone();
            batch.push(tokio::spawn(async move {
                if send.ready().await.is_err() {
                    return;
                }
                let req = Request::get(format!("http://{addr}/reset/{w}/{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let fut = send.send_request(req);
                sent.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_millis(2), fut).await;
            }));
        }
        for b in batch {
            let _ = b.await;
        }
        waves.push(t0.elapsed());
        if conn_task.is_finished() || t0.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let attacker_closed = conn_task.is_finished();
    let sent = sent.load(Ordering::Relaxed);
    let conn_end = if attacker_closed {
        format!("{:?}", (&mut conn_task).await)
    } else {
        "open".to_string()
    };

    // Others are served promptly, over h1 and h2.
    let t1 = Instant::now();
    let r = Client::plain()
        .get(&format!("http://{addr}/fast/after"), &[])
        .await;
    assert_eq!(r.status, 200);
    let (status, _) = tokio::time::timeout(Duration::from_secs(3), h2c_get(addr, "/fast/h2"))
        .await
        .expect("an h2 request after the flood timed out")
        .expect("an h2 request after the flood failed");
    assert_eq!(status, 200);
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    assert_eq!(metric(&gw, "portcullis_panics_total", &[]).await, 0.0);
    eprintln!(
        "rapid reset: {sent} streams opened and reset in {:?}; upstream saw {}; attacker connection: {conn_end}",
        t0.elapsed(),
        up.count()
    );
    assert!(
        sent >= 100,
        "too few streams were opened to mean anything: {sent}"
    );
    assert!(
        attacker_closed,
        "{sent} streams opened and reset at once and the gateway kept the connection: {conn_end}"
    );
    conn_task.abort();
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 5. upstream faults

/// A recording HTTP upstream on a port that refused until now.
async fn upstream_on(port: ClosedPort, hits: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    let listener = port.open();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"back"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_endpoint_is_ejected_for_about_5s_then_tried_again_and_all_ejected_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let live = Upstream::start().await;
    let dead = closed_port().await;
    let (d1, d2) = (closed_port().await, closed_port().await);
    let rest = format!(
        "\n[upstream.mixed]\nendpoints = [\"http://{dead}\", \"{}\"]\nconnect_timeout = \"1s\"\n\
         \n[upstream.gone]\nendpoints = [\"http://{d1}\", \"http://{d2}\"]\nconnect_timeout = \"1s\"\n{}{}",
        live.url(),
        route_block("/mixed", "mixed", "public"),
        route_block("/gone", "gone", "public"),
    );
    let gw = gateway(
        dir.path(),
        &config_text("127.0.0.1:0", "127.0.0.1:0", "", &rest),
    )
    .await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let c = Client::plain();

    let mut failures = 0;
    for i in 0..6 {
        match c
            .get(&format!("http://{addr}/mixed/{i}"), &[])
            .await
            .status
            .as_u16()
        {
            200 => {}
            502 => failures += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        failures <= 1,
        "{failures} requests went to the refusing endpoint"
    );
    let ejected_at = Instant::now();

    // The endpoint comes back; while it is ejected it gets nothing.
    let hits = Arc::new(AtomicUsize::new(0));
    let back = upstream_on(dead, hits.clone()).await;
    for i in 0..6 {
        let r = c
            .get(&format!("http://{addr}/mixed/ejected/{i}"), &[])
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(ejected_at.elapsed() < Duration::from_secs(4));
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "an ejected endpoint got traffic within its 5 s"
    );
    // After the ejection it is in the round robin again.
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(ejected_at.elapsed()) + Duration::from_millis(600),
    )
    .await;
    for i in 0..6 {
        let r = c.get(&format!("http://{addr}/mixed/back/{i}"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert!(
        hits.load(Ordering::Relaxed) >= 2,
        "the endpoint was never tried again after its ejection: {} hits",
        hits.load(Ordering::Relaxed)
    );

    // Both endpoints refuse: each is ejected in turn, then no healthy endpoint is left.
    let first = c.get(&format!("http://{addr}/gone/1"), &[]).await.status;
    let second = c.get(&format!("http://{addr}/gone/2"), &[]).await.status;
    assert_eq!((first.as_u16(), second.as_u16()), (502, 502));
    let r = c.get(&format!("http://{addr}/gone/3"), &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].is_string());
    back.abort();
    gw.shutdown().await;
}

/// An HTTPS upstream (hyper + rustls); with `client_ca`, it requires a client
/// certificate from that CA. Records the client certificate (DER) per request.
async fn tls_upstream(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> (SocketAddr, Arc<Mutex<Vec<Option<Vec<u8>>>>>) {
    init();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs_of(ca) {
                roots.add(c).unwrap();
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs_of(cert_pem), key_of(key_pem))
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let s3 = s2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                let svc = service_fn(move |_req: Request<Incoming>| {
                    s3.lock().unwrap().push(peer.clone());
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls-ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_use_the_configured_ca_server_name_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let _key = key_in(dir.path());
    let ca = Ca::new("upstream CA");
    std::fs::write(dir.path().join("up-ca.crt"), &ca.pem).unwrap();
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]);
    let (by_ip, seen_ip) = tls_upstream(&cert, &key, None).await;
    let (cert, key) = ca.server(&["localhost"]);
    let (by_name, seen_name) = tls_upstream(&cert, &key, None).await;
    let (cert, key) = ca.server(&["localhost", "127.0.0.1"]);
    let (mtls, seen_mtls) = tls_upstream(&cert, &key, Some(&ca.pem)).await;
    let (ccert, ckey, cder) = ca.client("portcullis");
    std::fs::write(dir.path().join("gw-client.crt"), ccert).unwrap();
    std::fs::write(dir.path().join("gw-client.key"), ckey).unwrap();

    let ups: Vec<(&str, SocketAddr, &str)> = vec![
        ("trusted", by_ip, "tls = { ca = \"up-ca.crt\" }"),
        ("untrusted", by_ip, ""),
        (
            "named",
            by_name,
            "tls = { ca = \"up-ca.crt\", server_name = \"localhost\" }",
        ),
        ("unnamed", by_name, "tls = { ca = \"up-ca.crt\" }"),
        (
            "mtls",
            mtls,
            "tls = { ca = \"up-ca.crt\", cert = \"gw-client.crt\", key = \"gw-client.key\" }",
        ),
        ("nocert", mtls, "tls = { ca = \"up-ca.crt\" }"),
    ];
    let mut rest = String::new();
    for (name, a, tls) in &ups {
        rest += &format!(
            "\n[upstream.{name}]\nendpoints = [\"https://{a}\"]\nconnect_timeout = \"1s\"\nresponse_timeout = \"3s\"\n{tls}\n"
        );
        rest += &route_block(&format!("/{name}"), name, "public");
    }
    let gw = gateway(
        dir.path(),
        &config_text("127.0.0.1:0", "127.0.0.1:0", "", &rest),
    )
    .await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let c = Client::plain();
    let status = |name: &'static str| {
        let c = &c;
        async move { c.get(&format!("http://{addr}/{name}/x"), &[]).await }
    };

    let r = status("trusted").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"tls-ok"[..]));
    assert_eq!(seen_ip.lock().unwrap().len(), 1);
    assert_eq!(
        status("untrusted").await.status,
        502,
        "an upstream certificate from an unknown CA was accepted"
    );
    assert_eq!(seen_ip.lock().unwrap().len(), 1);

    let r = status("named").await;
    assert_eq!(r.status, 200, "server_name = \"localhost\" was not used");
    assert_eq!(seen_name.lock().unwrap().len(), 1);
    assert_eq!(
        status("unnamed").await.status,
        502,
        "a certificate without 127.0.0.1 was accepted for https://127.0.0.1"
    );
    assert_eq!(seen_name.lock().unwrap().len(), 1);

    let r = status("mtls").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        seen_mtls.lock().unwrap().as_slice(),
        &[Some(cder.clone())],
        "the upstream did not see the configured client certificate"
    );
    assert_eq!(
        status("nocert").await.status,
        502,
        "an upstream requiring a client certificate answered without one"
    );
    assert_eq!(seen_mtls.lock().unwrap().len(), 1);
    gw.shutdown().await;
}

// ---------------------------------------------------------------- 6. soak

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_twenty_thousand_mixed_requests_keep_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let idp = JwksServer::start(jwks(&[&key])).await;
    let up = Upstream::start().await;
    up.behaviour.lock().unwrap().body = Some(Bytes::from_static(b"ok"));
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[[issuer]]
id = "main"
issuer = "{ISS}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
algorithms = ["ES256"]
min_refresh = "10m"
refresh = "1h"

[identity]
headers = {{ "X-User-Id" = "sub" }}
{rest}"#,
        jwks = idp.jwks_url(),
        rest = upstream_block("app", &up.url()) + &route_block("/api", "app", "required"),
    );
    let mut gw = ChildGw::spawn(dir.path(), &toml);
    gw.wait_ready().await;
    let (addr, admin) = (gw.addr, gw.admin);
    let fetches_at_start = idp.fetches();

    // 64 valid tokens (cache hits after the second), and per request a token
    // with a bad signature or a made-up kid (never cached, always checked).
    let valid: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|i| key.token(&format!("user{i}"), json!({})))
            .collect(),
    );
    let template = valid[0].clone();
    let (h64, rest) = template.split_once('.').unwrap();
    let sig = rest.split_once('.').unwrap().1.to_string();
    let h64 = h64.to_string();
    let claims = serde_json::Value::Object(portcullis::cli::mint::claims(ISS, AUD, "mallory", 300));

    const WORKERS: usize = 16;
    async fn run(
        addr: SocketAddr,
        from: usize,
        to: usize,
        valid: Arc<Vec<String>>,
        h64: String,
        sig: String,
        claims: serde_json::Value,
    ) -> Vec<String> {
        let c = Client::plain();
        let mut wrong = Vec::new();
        let url = format!("http://{addr}/api/items");
        for n in from..to {
            let (token, want) = match n % 3 {
                0 => (valid[n % valid.len()].clone(), 200),
                1 => {
                    let mut p = claims.clone();
                    p["jti"] = json!(format!("forged-{n}"));
                    let p64 = URL_SAFE_NO_PAD.encode(p.to_string());
                    (format!("{h64}.{p64}.{sig}"), 401)
                }
                _ => {
                    let h =
                        json!({"alg": "ES256", "typ": "JWT", "kid": format!("no-such-kid-{n}")});
                    let p64 = URL_SAFE_NO_PAD.encode(claims.to_string());
                    (
                        format!("{}.{p64}.{sig}", URL_SAFE_NO_PAD.encode(h.to_string())),
                        401,
                    )
                }
            };
            let auth = format!("Bearer {token}");
            let r = c.get(&url, &[("authorization", &auth)]).await;
            if r.status.as_u16() != want {
                wrong.push(format!("request {n}: {} instead of {want}", r.status));
            }
        }
        wrong
    }
    let phase = |from: usize, to: usize| {
        let per = (to - from).div_ceil(WORKERS);
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let a = from + w * per;
            let b = (a + per).min(to);
            tasks.push(tokio::spawn(run(
                addr,
                a,
                b,
                valid.clone(),
                h64.clone(),
                sig.clone(),
                claims.clone(),
            )));
        }
        async move {
            let mut wrong = Vec::new();
            for t in tasks {
                wrong.extend(t.await.expect("a soak worker failed"));
            }
            wrong
        }
    };

    let t0 = Instant::now();
    let mut wrong = phase(0, 2_000).await;
    let warm_kb = gw.rss_kb();
    wrong.extend(phase(2_000, 20_000).await);
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end_kb = gw.rss_kb();
    let growth_kb = end_kb as i64 - warm_kb as i64;
    println!(
        "soak: 20000 requests (16 clients) in {took:?}; VmRSS after 2000-request warm-up: {warm_kb} kB; at the end: {end_kb} kB; growth: {growth_kb} kB"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(up.count(), (0..20_000).filter(|n| n % 3 == 0).count());
    assert!(
        growth_kb < 20 * 1024,
        "resident memory grew {growth_kb} kB over 18000 requests"
    );
    assert!(
        idp.fetches() <= fetches_at_start + 1,
        "made-up kids caused a refetch storm: {} fetches",
        idp.fetches() - fetches_at_start
    );
    let m = scrape(admin).await;
    assert_eq!(
        series(
            &m,
            "portcullis_auth_decisions_total{issuer=\"main\",result=\"unknown_kid\"}"
        ),
        (0..20_000).filter(|n| n % 3 == 2).count() as f64
    );
    assert!(gw.exited().is_none());
}
