//! `portcullis demo`: a real gateway on https://127.0.0.1:8443 with a
//! self-signed certificate (written to `certs/`), a built-in echo upstream that
//! shows the headers it received, and a local issuer whose keys are made at
//! start. It prints curl commands, each labelled with the answer it should get.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::body::{full, Body};
use crate::cli::jwk::{generate, public_jwk};
use crate::cli::mint::{claims, Signer};
use crate::config::Config;
use crate::{Gateway, RunningGateway};

pub const DEMO_ISSUER: &str = "https://demo-issuer.portcullis.local/";
pub const DEMO_AUDIENCE: &str = "demo-api";

/// An upstream that answers every request with a JSON picture of it.
pub async fn echo_upstream(
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    service_fn(
                        |req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(req)) },
                    );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.to_string(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let body = json!({
        "upstream": "portcullis demo echo",
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    let mut r = Response::new(full(serde_json::to_vec_pretty(&body).unwrap_or_default()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Writes a demo CA and a server certificate for 127.0.0.1 and localhost.
fn write_certs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let (ca_path, cert_path, key_path) = (
        dir.join("demo-ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    let write = |p: &Path, s: String| {
        std::fs::write(p, s).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(&ca_path, ca_cert.pem())?;
    write(&cert_path, cert.pem())?;
    write(&key_path, key.serialize_pem())?;
    Ok((ca_path, cert_path, key_path))
}

pub struct Demo {
    pub gateway: RunningGateway,
    pub valid: String,
    pub expired: String,
    pub forged: String,
    pub ca: PathBuf,
    /// The demo's configuration and JWKS, removed by [`Demo::stop`].
    pub work: PathBuf,
}

impl Demo {
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Starts everything; `certs` is where the certificate goes.
pub async fn start(listen: SocketAddr, admin: SocketAddr, certs: &Path) -> Result<Demo, String> {
    let (ca, cert, key) = write_certs(certs)?;
    let work = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let alg = jsonwebtoken::Algorithm::ES256;
    let issuer_key = generate(alg)?;
    let jwk = public_jwk(&issuer_key, alg)?;
    let kid = jwk["kid"].as_str().unwrap_or_default().to_string();
    std::fs::write(work.join("jwks.json"), json!({"keys": [jwk]}).to_string())
        .map_err(|e| e.to_string())?;
    let (echo_addr, _task) = echo_upstream("127.0.0.1:0".parse().map_err(|_| "address")?)
        .await
        .map_err(|e| format!("echo upstream: {e}"))?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let config_text = format!(
        r#"
[server]
listen = ["{listen}"]
tls = {{ cert = {cert:?}, key = {key:?} }}

[admin]
listen = "{admin}"

[[issuer]]
id = "demo"
issuer = "{DEMO_ISSUER}"
jwks_file = "jwks.json"
audiences = ["{DEMO_AUDIENCE}"]
algorithms = ["ES256"]

[identity]
headers = {{ "X-User-Id" = "sub", "X-User-Email" = "email", "X-User-Roles" = "roles", "X-Token-Issuer" = "iss" }}
strip = ["X-User-*"]

[upstream.echo]
endpoints = ["http://{echo_addr}"]

[[route]]
id = "public"
path_prefix = "/public"
upstream = "echo"
auth = "public"

[[route]]
id = "admin-only"
path_prefix = "/admin"
upstream = "echo"
claims = {{ roles = ["admin"] }}

[[route]]
id = "api"
path_prefix = "/"
upstream = "echo"
"#,
        cert = abs(&cert).display().to_string(),
        key = abs(&key).display().to_string(),
    );
    let config_path = work.join("portcullis.toml");
    std::fs::write(&config_path, &config_text).map_err(|e| e.to_string())?;
    let config = Config::load(&config_path).map_err(|p| p.to_string())?;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;

    let signer = Signer::from_key_pair(&issuer_key, Some(alg), Some(kid.clone()))?;
    let mut c = claims(DEMO_ISSUER, DEMO_AUDIENCE, "alice", 3600);
    c.insert("email".into(), "alice@example.com".into());
    c.insert("roles".into(), json!(["reader", "writer"]));
    let valid = signer.sign(&c)?;
    let mut old = claims(DEMO_ISSUER, DEMO_AUDIENCE, "alice", 600);
    let now = crate::cli::mint::now() as i64;
    old.insert("iat".into(), (now - 7200).into());
    old.insert("exp".into(), (now - 3600).into());
    let expired = signer.sign(&old)?;
    let impostor = Signer::from_key_pair(&generate(alg)?, Some(alg), Some(kid))?;
    let mut forged_claims = c.clone();
    forged_claims.insert("roles".into(), json!(["admin"]));
    let forged = impostor.sign(&forged_claims)?;
    Ok(Demo {
        gateway,
        valid,
        expired,
        forged,
        ca: abs(&ca),
        work,
    })
}

/// The text `portcullis demo` prints.
pub fn instructions(d: &Demo) -> String {
    let addr = d.gateway.listen_addrs()[0];
    let admin = d
        .gateway
        .admin_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let host = if addr.ip().is_loopback() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let ca = d.ca.display();
    format!(
        r#"
portcullis demo is serving on https://{host} (certificate authority: {ca})

# 200: a valid token; the echo upstream shows the X-User-* headers portcullis added
curl --cacert {ca} https://{host}/orders -H "Authorization: Bearer {valid}"

# 401 token expired
curl --cacert {ca} https://{host}/orders -H "Authorization: Bearer {expired}"

# 401 signature verification failed (forged with another key under the same kid)
curl --cacert {ca} https://{host}/orders -H "Authorization: Bearer {forged}"

# 401 no token
curl --cacert {ca} https://{host}/orders

# 403 insufficient_scope: valid token, but /admin requires roles=admin
curl --cacert {ca} https://{host}/admin -H "Authorization: Bearer {valid}"

# 200 public route; the forged X-User-Id is stripped before the upstream sees it
curl --cacert {ca} https://{host}/public -H "X-User-Id: root"

# 200: Prometheus metrics, with a reason for every refusal above
curl http://{admin}/metrics

# 200: readiness (the keys are loaded)
curl http://{admin}/readyz

Press Ctrl-C to stop.
"#,
        valid = d.valid,
        expired = d.expired,
        forged = d.forged,
    )
}
