//! Test harness: real sockets everywhere. A JWKS server that can be told to
//! misbehave, an upstream that records what reached it, certificates made per
//! test, a gateway started on port 0, and an HTTP client for HTTP/1.1 and h2
//! over TLS.
#![allow(dead_code)]

pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use portcullis::cli::jwk::{generate, public_jwk};
use portcullis::cli::mint::{claims, Signer};
use portcullis::config::Config;
use portcullis::{Gateway, RunningGateway};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ISS: &str = "https://idp.test.example/";
pub const AUD: &str = "https://api.test.example";

pub fn init() {
    portcullis::install_crypto_providers();
}

// ---------------------------------------------------------------- keys

/// A signing key of a test issuer, with its public JWK.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub jwk: Value,
    pub signer: Signer,
    pub pem: String,
}

impl TestKey {
    pub fn new(alg: Algorithm) -> TestKey {
        init();
        let pair = generate(alg).expect("keygen");
        let jwk = public_jwk(&pair, alg).expect("jwk");
        let kid = jwk["kid"].as_str().unwrap().to_string();
        let signer = Signer::from_key_pair(&pair, Some(alg), Some(kid.clone())).expect("signer");
        TestKey {
            alg,
            kid,
            jwk,
            signer,
            pem: pair.serialize_pem(),
        }
    }

    /// The same key material under another kid.
    pub fn with_kid(mut self, kid: &str) -> TestKey {
        self.kid = kid.to_string();
        self.jwk["kid"] = json!(kid);
        self.signer.kid = Some(kid.to_string());
        self
    }

    /// A valid access token for `ISS`/`AUD` with extra claims.
    pub fn token(&self, sub: &str, extra: Value) -> String {
        let mut c = claims(ISS, AUD, sub, 300);
        if let Value::Object(m) = extra {
            for (k, v) in m {
                if v.is_null() {
                    c.remove(&k);
                } else {
                    c.insert(k, v);
                }
            }
        }
        self.signer.sign(&c).expect("sign")
    }

    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        self.signer.sign(claims).expect("sign")
    }
}

pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Builds a compact JWS from raw header and payload JSON and a signature part,
/// for hand-crafted attacks.
pub fn raw_token(header: &Value, payload: &Value, sig: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        sig
    )
}

// ---------------------------------------------------------------- JWKS server

/// What the JWKS server answers, changeable while it runs.
pub struct JwksState {
    pub jwks: String,
    pub status: StatusCode,
    pub delay: Duration,
    pub cache_control: Option<String>,
    pub jwks_fetches: usize,
    pub discovery_fetches: usize,
    /// The `issuer` the discovery document names; None: the server's own issuer URL.
    pub discovery_issuer: Option<String>,
}

pub struct JwksServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<JwksState>>,
}

impl JwksServer {
    pub async fn start(jwks: String) -> JwksServer {
        let state = Arc::new(Mutex::new(JwksState {
            jwks,
            status: StatusCode::OK,
            delay: Duration::ZERO,
            cache_control: None,
            jwks_fetches: 0,
            discovery_fetches: 0,
            discovery_issuer: None,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(jwks_answer(&st, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer { addr, state }
    }

    pub fn issuer_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn set_jwks(&self, jwks: String) {
        self.state.lock().unwrap().jwks = jwks;
    }

    pub fn set_status(&self, s: StatusCode) {
        self.state.lock().unwrap().status = s;
    }

    pub fn fetches(&self) -> usize {
        self.state.lock().unwrap().jwks_fetches
    }
}

async fn jwks_answer(
    st: &Mutex<JwksState>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, delay, body, cc) = {
        let mut s = st.lock().unwrap();
        match req.uri().path() {
            "/.well-known/openid-configuration" => {
                s.discovery_fetches += 1;
                let iss = s
                    .discovery_issuer
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}"));
                let doc = json!({"issuer": iss, "jwks_uri": format!("http://{addr}/jwks.json")});
                (s.status, s.delay, doc.to_string(), None)
            }
            "/jwks.json" => {
                s.jwks_fetches += 1;
                (s.status, s.delay, s.jwks.clone(), s.cache_control.clone())
            }
            _ => (StatusCode::NOT_FOUND, Duration::ZERO, String::new(), None),
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Some(cc) = cc {
        r.headers_mut()
            .insert(http::header::CACHE_CONTROL, cc.parse().unwrap());
    }
    r
}

// ---------------------------------------------------------------- upstream

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the upstream answers.
#[derive(Clone)]
pub struct UpstreamBehaviour {
    pub status: StatusCode,
    pub delay: Duration,
    pub body: Option<Bytes>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behaviour: Arc<Mutex<UpstreamBehaviour>>,
}

impl Upstream {
    /// An upstream that records every request and echoes its body.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let behaviour = Arc::new(Mutex::new(UpstreamBehaviour {
            status: StatusCode::OK,
            delay: Duration::ZERO,
            body: None,
        }));
        let (s2, b2) = (seen.clone(), behaviour.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s3, b3) = (s2.clone(), b2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s4, b4) = (s3.clone(), b3.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            s4.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers.clone(),
                                body: body.clone(),
                            });
                            let b = b4.lock().unwrap().clone();
                            if !b.delay.is_zero() {
                                tokio::time::sleep(b.delay).await;
                            }
                            let mut r = Response::new(Full::new(b.body.unwrap_or(body)));
                            *r.status_mut() = b.status;
                            r.headers_mut()
                                .insert("x-upstream", "test".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            behaviour,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// A closed port on loopback: connecting to it is refused. The socket stays
/// bound (never listening) while the value lives, so no other test's
/// listener (tests run in parallel) can take the port in between, which once
/// turned an expected 502 into a 504.
pub struct ClosedPort {
    pub addr: SocketAddr,
    socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    /// Starts listening on the very port: the endpoint comes back.
    pub fn open(self) -> TcpListener {
        self.socket.listen(1024).unwrap()
    }
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub async fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    ClosedPort { addr, socket }
}

// ---------------------------------------------------------------- certificates

pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: String,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Certs {
    /// A CA and a server certificate for localhost and 127.0.0.1, written to `dir`.
    pub fn new(dir: &Path) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        init();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (ca_p, cert_p, key_p) = (
            dir.join("ca.crt"),
            dir.join("server.crt"),
            dir.join("server.key"),
        );
        std::fs::write(&ca_p, ca_cert.pem()).unwrap();
        std::fs::write(&cert_p, cert.pem()).unwrap();
        std::fs::write(&key_p, key.serialize_pem()).unwrap();
        Certs {
            ca: ca_p,
            cert: cert_p,
            key: key_p,
            ca_pem: ca_cert.pem(),
            ca_issuer: issuer,
        }
    }

    /// A client certificate signed by the same CA: (cert PEM, key PEM, DER).
    pub fn client_cert(&self, name: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca_issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

// ---------------------------------------------------------------- gateway

/// A gateway started from TOML text written to `dir/portcullis.toml`.
pub async fn gateway(dir: &Path, toml: &str) -> RunningGateway {
    init();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, toml).unwrap();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(p) => panic!("test configuration is invalid:\n{p}\n---\n{toml}"),
    };
    Gateway::start(config).await.expect("gateway starts")
}

/// The usual test configuration: one issuer, one upstream, routes appended by the caller.
pub fn base_config(jwks_line: &str, upstream: &str, algorithms: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[[issuer]]
id = "main"
issuer = "{ISS}"
{jwks_line}
audiences = ["{AUD}"]
algorithms = [{algorithms}]
leeway = "5s"

[identity]
headers = {{ "X-User-Id" = "sub", "X-User-Email" = "email", "X-User-Roles" = "roles", "X-Token-Issuer" = "iss" }}
strip = ["X-User-*"]

[upstream.app]
endpoints = ["{upstream}"]
connect_timeout = "1s"
response_timeout = "2s"
"#
    )
}

/// Waits until `/readyz` is 200 (or panics after 10 s).
pub async fn wait_ready(gw: &RunningGateway) {
    let admin = gw.admin_addr().expect("admin listener");
    for _ in 0..200 {
        let (status, _, _) = http_get(&format!("http://{admin}/readyz"), &[]).await;
        if status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never became ready");
}

// ---------------------------------------------------------------- clients

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }

    pub fn www_authenticate(&self) -> String {
        self.headers
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

/// An HTTP client; with `ca`, HTTPS trusting it, offering h2 when `h2`.
pub struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    pub fn plain() -> Client {
        Self::build(None, false, None)
    }

    pub fn tls(ca_pem: &str, h2: bool) -> Client {
        Self::build(Some(ca_pem), h2, None)
    }

    /// HTTPS with a client certificate (cert PEM, key PEM).
    pub fn mtls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Client {
        Self::build(Some(ca_pem), false, Some((cert_pem, key_pem)))
    }

    fn build(ca_pem: Option<&str>, h2: bool, client: Option<(&str, &str)>) -> Client {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        init();
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = ca_pem {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let b = rustls::ClientConfig::builder().with_root_certificates(roots);
        let tls = match client {
            Some((cert, key)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if h2 {
            builder.enable_all_versions().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let inner = HyperClient::builder(TokioExecutor::new()).build(connector);
        Client { inner }
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(15), self.inner.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version,
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", url, headers, b"").await
    }
}

/// A plain GET: (status, headers, body).
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let r = Client::plain().get(url, headers).await;
    (r.status, r.headers, r.body)
}

/// Sends raw bytes and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one metric series in Prometheus text, e.g.
/// `portcullis_auth_decisions_total{issuer="main",result="expired"}`; labels in any order.
pub async fn metric(gw: &RunningGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let admin = gw.admin_addr().unwrap();
    let (_, _, body) = http_get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&body);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let all = labels
            .iter()
            .all(|(k, v)| labels_part.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        let count = if labels_part.is_empty() {
            0
        } else {
            labels_part.split(',').count()
        };
        if all && count == labels.len() {
            return value.trim().parse().unwrap();
        }
    }
    -1.0
}
