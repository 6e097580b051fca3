mod common;

// Attacks, one named test each, over real sockets against an in-process
// gateway. Every test asserts the status the attacker gets AND that nothing
// of the refused request reached the upstream; each has a control request
// that passes, so that a gateway refusing everything could not pass it.

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::cli::mint::claims;
use portcullis::RunningGateway;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HMAC_ISS: &str = "https://hmac.test.example/";
const DECISIONS: &str = "portcullis_auth_decisions_total";
const RAW_WAIT: Duration = Duration::from_secs(5);
/// The kid under which the Wycheproof P-256 test key is published.
const WYCHEPROOF_KID: &str = "wycheproof-p256";
const WYCHEPROOF_P256: &str = "/work/shared/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json";
/// The order n of P-256, big-endian.
const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

// ---------------------------------------------------------------- environment

struct Env {
    gw: RunningGateway,
    addr: SocketAddr,
    up: Upstream,
    rsa: TestKey,
    ec: TestKey,
    hmac_secret: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn wycheproof() -> Value {
    serde_json::from_str(&std::fs::read_to_string(WYCHEPROOF_P256).unwrap()).unwrap()
}

/// The first Wycheproof group: one key, 114 vectors.
fn wycheproof_group() -> Value {
    wycheproof()["testGroups"][0].clone()
}

impl Env {
    /// Issuer "main" (RS256 and ES256 from a JWKS file that also publishes the
    /// Wycheproof key), issuer "hmac" (HS256), and routes: `/` and `/public`
    /// public, `/admin` and `/api` required.
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let rsa = TestKey::new(Algorithm::RS256);
        let ec = TestKey::new(Algorithm::ES256);
        let mut wp = wycheproof_group()["publicKeyJwk"].clone();
        wp["kid"] = json!(WYCHEPROOF_KID);
        wp["alg"] = json!("ES256");
        let keys = json!({"keys": [rsa.jwk, ec.jwk, wp]});
        std::fs::write(dir.path().join("jwks.json"), keys.to_string()).unwrap();
        let hmac_secret = b"0123456789abcdef0123456789abcdef-hmac".to_vec();
        std::fs::write(dir.path().join("hs.secret"), &hmac_secret).unwrap();
        let up = Upstream::start().await;
        let toml = format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
max_header_bytes = 32768

[admin]
listen = "127.0.0.1:0"

[token]
max_bytes = 16384

[[issuer]]
id = "main"
issuer = "{ISS}"
jwks_file = "jwks.json"
audiences = ["{AUD}"]
algorithms = ["RS256", "ES256"]
leeway = "5s"

[[issuer]]
id = "hmac"
issuer = "{HMAC_ISS}"
secret_file = "hs.secret"
audiences = ["{AUD}"]
algorithms = ["HS256"]

[identity]
headers = {{ "X-User-Id" = "sub" }}
strip = ["X-User-*"]

[upstream.app]
endpoints = ["{up}"]
connect_timeout = "1s"
response_timeout = "3s"

[[route]]
path_prefix = "/"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/public"
upstream = "app"
auth = "public"

[[route]]
path_prefix = "/admin"
upstream = "app"
auth = "required"

[[route]]
path_prefix = "/api"
upstream = "app"
auth = "required"
"#,
            up = up.url()
        );
        let gw = gateway(dir.path(), &toml).await;
        wait_ready(&gw).await;
        let addr = gw.listen_addrs()[0];
        Env {
            gw,
            addr,
            up,
            rsa,
            ec,
            hmac_secret,
            _dir: dir,
        }
    }

    async fn api(&self, token: &str) -> Reply {
        Client::plain()
            .get(
                &format!("http://{}/api/x", self.addr),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
    }

    async fn decisions(&self, issuer: &str, result: &str) -> f64 {
        metric(
            &self.gw,
            DECISIONS,
            &[("issuer", issuer), ("result", result)],
        )
        .await
    }

    /// A refused token: 401 `invalid_token`, nothing upstream.
    async fn refused(&self, what: &str, token: &str) -> Reply {
        let before = self.up.count();
        let r = self.api(token).await;
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert!(
            r.www_authenticate().contains("error=\"invalid_token\""),
            "{what}: {}",
            r.www_authenticate()
        );
        assert_eq!(self.up.count(), before, "{what}: reached the upstream");
        r
    }

    /// A refused token counted under `issuer`/`result`.
    async fn refused_as(&self, what: &str, token: &str, issuer: &str, result: &str) {
        let before = self.decisions(issuer, result).await;
        self.refused(what, token).await;
        assert_eq!(
            self.decisions(issuer, result).await,
            before + 1.0,
            "{what}: not counted as {issuer}/{result}"
        );
    }

    /// A control: this token passes and reaches the upstream.
    async fn allowed(&self, what: &str, token: &str) {
        let before = self.up.count();
        let r = self.api(token).await;
        assert_eq!(r.status, 200, "control {what}: {:?}", r.body);
        assert_eq!(self.up.count(), before + 1);
    }

    async fn raw(&self, bytes: &[u8]) -> String {
        raw(self.addr, bytes, RAW_WAIT).await
    }
}

fn valid_claims() -> Map<String, Value> {
    claims(ISS, AUD, "alice", 300)
}

/// Signs `header.payload` exactly as given.
fn sign_raw(header: &Value, payload: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let unsigned = raw_token(header, payload, "");
    let message = unsigned.trim_end_matches('.');
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{sig}")
}

/// HS256 over `header.payload` with any secret, the empty one included.
fn hs256_raw(header: &Value, payload: &Value, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let unsigned = raw_token(header, payload, "");
    let message = unsigned.trim_end_matches('.');
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        message.as_bytes(),
    );
    format!("{message}.{}", b64(tag.as_ref()))
}

fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {resp:?}"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sig_of(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

fn unsigned_part(token: &str) -> &str {
    token.rsplit_once('.').unwrap().0
}

// ---------------------------------------------------------------- algorithms

#[tokio::test]
async fn alg_none_in_every_spelling_and_shape_is_refused() {
    let env = Env::start().await;
    let payload = Value::Object(valid_claims());
    let genuine = env.rsa.token("alice", json!({}));
    let algs = [
        json!("none"),
        json!("None"),
        json!("NONE"),
        json!("nOnE"),
        json!("noNe"),
        json!(" none"),
        json!("none "),
        json!("none\u{0}"),
        json!("NONE\t"),
        json!(""),
        json!(null),
        json!(["none"]),
        json!({"none": true}),
        json!(0),
    ];
    for alg in &algs {
        for kid in [Some(env.rsa.kid.as_str()), None] {
            for sig in ["", sig_of(&genuine), "AAAA"] {
                let mut header = json!({"alg": alg, "typ": "JWT"});
                if let Some(k) = kid {
                    header["kid"] = json!(k);
                }
                let t = raw_token(&header, &payload, sig);
                env.refused(&format!("alg {alg} kid {kid:?} sig {sig:.8}"), &t)
                    .await;
            }
        }
    }
    // No alg at all.
    let t = raw_token(&json!({"typ": "JWT", "kid": env.rsa.kid}), &payload, "");
    env.refused("no alg", &t).await;
    env.allowed("RS256", &genuine).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn rs256_to_hs256_key_confusion_is_refused_even_with_an_hmac_issuer_configured() {
    let env = Env::start().await;
    let pair = rcgen::KeyPair::from_pem(&env.rsa.pem).unwrap();
    let pem = pair.public_key_pem();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("public key PEM", pem.clone().into_bytes()),
        (
            "public key PEM, trimmed",
            pem.trim_end().as_bytes().to_vec(),
        ),
        (
            "SubjectPublicKeyInfo DER",
            rcgen::PublicKeyData::subject_public_key_info(&pair),
        ),
        (
            "modulus",
            URL_SAFE_NO_PAD
                .decode(env.rsa.jwk["n"].as_str().unwrap())
                .unwrap(),
        ),
        ("JWK JSON", env.rsa.jwk.to_string().into_bytes()),
    ];
    for (what, secret) in &secrets {
        let key = EncodingKey::from_secret(secret).unwrap();
        for iss in [ISS, HMAC_ISS] {
            let mut c = valid_claims();
            c.insert("iss".into(), json!(iss));
            let header = json!({"alg": "HS256", "typ": "JWT", "kid": env.rsa.kid});
            let t = sign_raw(&header, &Value::Object(c), &key, Algorithm::HS256);
            env.refused(&format!("HS256 keyed with the RSA {what}, iss {iss}"), &t)
                .await;
        }
    }
    // Against the RSA issuer it is counted as an algorithm it does not allow.
    let key = EncodingKey::from_secret(pem.as_bytes()).unwrap();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": env.rsa.kid});
    let t = sign_raw(
        &header,
        &Value::Object(valid_claims()),
        &key,
        Algorithm::HS256,
    );
    env.refused_as("HS256 keyed with the PEM", &t, "main", "disallowed_alg")
        .await;

    // Controls: both issuers accept their own tokens.
    env.allowed("RS256", &env.rsa.token("alice", json!({})))
        .await;
    let mut c = valid_claims();
    c.insert("iss".into(), json!(HMAC_ISS));
    let t = sign_raw(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &Value::Object(c),
        &EncodingKey::from_secret(&env.hmac_secret).unwrap(),
        Algorithm::HS256,
    );
    env.allowed("HS256 of the hmac issuer", &t).await;
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- key ids and keys

#[tokio::test]
async fn kid_injection_is_refused_as_an_unknown_key() {
    let env = Env::start().await;
    let payload = Value::Object(valid_claims());
    let kids = [
        "../../../../dev/null".to_string(),
        "/dev/null".to_string(),
        "../../../../etc/passwd".to_string(),
        "' OR 1=1 --".to_string(),
        "x' UNION SELECT 'secret' --".to_string(),
        "K".repeat(10 * 1024),
        "kid\u{0}with-nul".to_string(),
        "kid\r\nX-Injected: yes".to_string(),
        "${jndi:ldap://127.0.0.1/a}".to_string(),
        "|cat /etc/passwd".to_string(),
        format!("{}\u{0}", env.rsa.kid),
        format!("{} ", env.rsa.kid),
    ];
    for kid in &kids {
        // Signed with the real key: only the kid is wrong.
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let t = sign_raw(&header, &payload, &env.rsa.signer.key, Algorithm::RS256);
        let what = format!("kid {:?}", &kid[..kid.len().min(40)]);
        assert!(t.len() <= 16384, "{what}: token too large for this test");
        env.refused_as(&what, &t, "main", "unknown_kid").await;
        // A kid naming an empty file: HMAC with an empty key.
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
        let t = hs256_raw(&header, &payload, b"");
        let r = env
            .refused(&format!("{what}, HS256 with an empty key"), &t)
            .await;
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("dev/null") && !body.contains("OR 1=1") && !body.contains("Injected"),
            "the refusal echoes the kid: {body}"
        );
    }
    env.allowed("the real kid", &env.rsa.token("alice", json!({})))
        .await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn attacker_keys_named_by_jku_x5u_jwk_or_x5c_are_never_used() {
    let env = Env::start().await;
    let attacker = TestKey::new(Algorithm::RS256);
    let evil = JwksServer::start(jwks(&[&attacker])).await;
    let pair = rcgen::KeyPair::from_pem(&attacker.pem).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["idp.test.example".to_string()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    let x5c = STANDARD.encode(cert.der());
    let payload = Value::Object(claims(ISS, AUD, "mallory", 300));
    let mut jwk_as_legit = attacker.jwk.clone();
    jwk_as_legit["kid"] = json!(env.rsa.kid);
    let headers = [
        json!({"alg": "RS256", "jwk": attacker.jwk}),
        json!({"alg": "RS256", "kid": attacker.kid, "jku": evil.jwks_url()}),
        json!({"alg": "RS256", "kid": env.rsa.kid, "jwk": jwk_as_legit, "jku": evil.jwks_url()}),
        json!({"alg": "RS256", "x5u": format!("http://{}/.well-known/openid-configuration", evil.addr)}),
        json!({"alg": "RS256", "x5c": [x5c]}),
        json!({"alg": "RS256", "kid": env.rsa.kid, "x5c": [x5c]}),
        json!({"alg": "RS256", "jku": evil.jwks_url(), "x5u": evil.jwks_url(), "jwk": attacker.jwk, "x5c": [x5c]}),
    ];
    for h in &headers {
        let t = sign_raw(h, &payload, &attacker.signer.key, Algorithm::RS256);
        env.refused(&format!("header {h}"), &t).await;
    }
    let (jwks_fetches, other_fetches) = {
        let st = evil.state.lock().unwrap();
        (st.jwks_fetches, st.discovery_fetches)
    };
    assert_eq!(
        (jwks_fetches, other_fetches),
        (0, 0),
        "an attacker's URL was fetched"
    );
    env.allowed("the real key", &env.rsa.token("alice", json!({})))
        .await;
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- signatures

/// A P1363 signature of two 32-byte halves.
fn p1363(r: &[u8], s: &[u8]) -> String {
    let mut out = vec![0u8; 64];
    out[32 - r.len()..32].copy_from_slice(r);
    out[64 - s.len()..].copy_from_slice(s);
    b64(&out)
}

#[tokio::test]
async fn ecdsa_psychic_signatures_are_refused_as_bad_signatures() {
    let env = Env::start().await;
    let genuine = env.ec.token("alice", json!({}));
    let sig = URL_SAFE_NO_PAD.decode(sig_of(&genuine)).unwrap();
    let (r, s) = sig.split_at(32);
    let n = hex(P256_N);
    let cases = [
        ("r = s = 0 (CVE-2022-21449)", p1363(&[0], &[0])),
        ("r = s = n", p1363(&n, &n)),
        ("r = 0, s = n", p1363(&[0], &n)),
        ("r = n, s = 0", p1363(&n, &[0])),
        ("r = 0, genuine s", p1363(&[0], s)),
        ("genuine r, s = 0", p1363(r, &[0])),
        ("r = s = 1", p1363(&[1], &[1])),
        ("r = n, genuine s", p1363(&n, s)),
    ];
    for (what, sig) in &cases {
        let t = format!("{}.{sig}", unsigned_part(&genuine));
        env.refused_as(what, &t, "main", "bad_signature").await;
    }
    env.allowed("the genuine ES256 token", &genuine).await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn a_stripped_signature_is_refused() {
    let env = Env::start().await;
    for genuine in [
        env.rsa.token("alice", json!({})),
        env.ec.token("alice", json!({})),
    ] {
        let unsigned = unsigned_part(&genuine);
        for (what, t) in [
            ("header.payload.", format!("{unsigned}.")),
            ("header.payload", unsigned.to_string()),
            ("header.payload..", format!("{unsigned}..")),
            ("header.payload.=", format!("{unsigned}.=")),
            ("header.payload.A", format!("{unsigned}.A")),
            ("signature padded", format!("{genuine}==")),
        ] {
            env.refused(what, &t).await;
        }
        env.allowed("the genuine token", &genuine).await;
    }
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- sizes

#[tokio::test]
async fn an_oversized_token_and_a_megabyte_header_are_refused_without_harm() {
    let env = Env::start().await;
    // Validly signed, but larger than token.max_bytes (16384).
    let big = env.rsa.token("alice", json!({"pad": "p".repeat(17_000)}));
    assert!(big.len() > 16384 && big.len() < 30_000);
    env.refused("a validly signed token over max_bytes", &big)
        .await;

    // A 1 MB Authorization header over raw TCP: 431, or the connection cut.
    let before = env.up.count();
    let mut s = TcpStream::connect(env.addr).await.unwrap();
    let head = format!(
        "GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {}\r\n\r\n",
        "A".repeat(1 << 20)
    );
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(head.as_bytes()).await;
    };
    let mut out = Vec::new();
    let read = async {
        let _ = tokio::time::timeout(RAW_WAIT, rd.read_to_end(&mut out)).await;
    };
    tokio::join!(write, read);
    let text = String::from_utf8_lossy(&out);
    if !text.is_empty() {
        assert_eq!(raw_status(&text), 431, "{text:.200}");
    }
    // Many small headers add up too.
    let mut many = String::from("GET /public/x HTTP/1.1\r\nHost: gw.test\r\n");
    for i in 0..4000 {
        many.push_str(&format!("X-Pad-{i}: vvvvvvvv\r\n"));
    }
    many.push_str("\r\n");
    let resp = env.raw(many.as_bytes()).await;
    if !resp.is_empty() {
        assert_eq!(raw_status(&resp), 431, "{resp:.200}");
    }
    assert_eq!(
        env.up.count(),
        before,
        "an oversized request reached the upstream"
    );
    // Still serving.
    env.allowed(
        "a normal token after the flood",
        &env.rsa.token("alice", json!({})),
    )
    .await;
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- nested tokens

#[tokio::test]
async fn a_nested_jwt_is_never_unwrapped() {
    let env = Env::start().await;
    let inner = env.rsa.token("alice", json!({}));
    let attacker = TestKey::new(Algorithm::RS256);
    // The payload is the inner token itself, not a JSON claims set.
    let wrap = |header: &Value, key: &EncodingKey, alg: Algorithm| {
        let h64 = b64(header.to_string().as_bytes());
        let p64 = b64(inner.as_bytes());
        let msg = format!("{h64}.{p64}");
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
        format!("{msg}.{sig}")
    };
    let cases = [
        (
            "signed by the issuer, cty JWT",
            wrap(
                &json!({"alg": "RS256", "cty": "JWT", "kid": env.rsa.kid}),
                &env.rsa.signer.key,
                Algorithm::RS256,
            ),
        ),
        (
            "signed by an attacker, cty JWT",
            wrap(
                &json!({"alg": "RS256", "cty": "JWT", "kid": attacker.kid}),
                &attacker.signer.key,
                Algorithm::RS256,
            ),
        ),
        (
            "signed by an attacker under the issuer's kid",
            wrap(
                &json!({"alg": "RS256", "cty": "JWT", "kid": env.rsa.kid}),
                &attacker.signer.key,
                Algorithm::RS256,
            ),
        ),
        (
            "alg none, cty JWT",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "cty": "JWT"}).to_string().as_bytes()),
                b64(inner.as_bytes())
            ),
        ),
    ];
    for (what, t) in &cases {
        env.refused(what, t).await;
    }
    // cty JWT on an ordinary claims set signed by the issuer: if accepted, it
    // is as a plain token whose own claims are the identity.
    let mut c = valid_claims();
    c.insert("sub".into(), json!("outer"));
    c.insert("token".into(), json!(inner));
    let t = sign_raw(
        &json!({"alg": "RS256", "cty": "JWT", "kid": env.rsa.kid}),
        &Value::Object(c),
        &env.rsa.signer.key,
        Algorithm::RS256,
    );
    let before = env.up.count();
    let r = env.api(&t).await;
    match r.status.as_u16() {
        401 => assert_eq!(env.up.count(), before),
        200 => assert_eq!(
            env.up.last().headers["x-user-id"],
            "outer",
            "the identity came from the nested token"
        ),
        s => panic!("cty JWT claims set answered {s}"),
    }
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- paths

#[tokio::test]
async fn a_public_prefix_never_leads_to_a_protected_one() {
    let env = Env::start().await;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public/..;jsessionid=1/admin",
        "/public/.%2e/admin",
        "/public/..%2fadmin",
        "/public/%2e%2e%2fadmin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/public/%2%65%2%65/admin",
        "/public/%%32%65%%32%65/admin",
    ] {
        let resp = env.raw(get(path).as_bytes()).await;
        assert_eq!(raw_status(&resp), 400, "{path}: {resp:.200}");
    }
    for path in [
        "/%61dmin",
        "/%61dmin/users",
        "/adm%69n",
        "/%61%64%6d%69%6e/users",
    ] {
        let resp = env.raw(get(path).as_bytes()).await;
        let status = raw_status(&resp);
        assert!(
            status == 400 || status == 401,
            "{path} was answered {status} without a token; the upstream saw {:?}",
            env.up.seen.lock().unwrap().last().map(|s| s.uri.clone())
        );
    }
    assert_eq!(env.up.count(), 0, "a traversal reached the upstream");
    // Controls: the public prefix serves, the protected one asks for a token.
    assert_eq!(
        raw_status(&env.raw(get("/public/ok").as_bytes()).await),
        200
    );
    assert_eq!(raw_status(&env.raw(get("/admin").as_bytes()).await), 401);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn an_escape_assembled_by_decoding_cannot_reach_a_protected_prefix() {
    // `%%36%31` decodes (unreserved `%36` = '6', `%31` = '1') to `%61`, an
    // escape that was not in the request: forwarded, `/%%36%31dmin` arrives as
    // `/%61dmin`, which the upstream reads as `/admin`. It must be refused, or
    // routed as `/admin` (401 without a token), never forwarded unauthenticated.
    let env = Env::start().await;
    for path in ["/%%36%31dmin", "/%%36%31dmin/users", "/%%36%31%%36%34min"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let resp = env.raw(req.as_bytes()).await;
        let status = raw_status(&resp);
        assert!(
            status == 400 || status == 401,
            "{path} was answered {status} without a token; the upstream saw {:?}",
            env.up.seen.lock().unwrap().last().map(|s| s.uri.clone())
        );
    }
    assert_eq!(
        env.up.count(),
        0,
        "an assembled escape reached the upstream"
    );
    let resp = env
        .raw(b"GET /public/%25 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&resp), 200, "control: {resp}");
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- framing

/// Sends raw bytes and returns everything the gateway answered on that
/// connection until it closed (or `RAW_WAIT` passed).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(RAW_WAIT, s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn responses_in(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_never_forwarded() {
    let env = Env::start().await;
    // CL.TE: a front end reading Content-Length would forward 4 bytes and
    // leave the rest; a back end reading chunked would see a second request.
    let cl_te = b"POST /public/first HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n\
Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    // TE.CL: the chunked body ends at once; Content-Length claims the rest.
    let te_cl = b"POST /public/first HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\
Content-Length: 48\r\n\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    // Identical duplicates, which hyper would fold into one line.
    let cl_cl = b"POST /public/first HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\n\
Content-Length: 5\r\n\r\nhelloGET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    for (what, bytes) in [
        ("CL.TE", &cl_te[..]),
        ("TE.CL", &te_cl[..]),
        ("CL.CL", &cl_cl[..]),
    ] {
        let (resp, closed) = exchange(env.addr, bytes).await;
        assert_eq!(raw_status(&resp), 400, "{what}: {resp}");
        assert!(resp.contains("ambiguous_framing"), "{what}: {resp}");
        assert_eq!(responses_in(&resp), 1, "{what}: {resp}");
        assert!(
            closed,
            "{what}: the connection was kept open after an ambiguous request"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = env.up.seen.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "the upstream saw {:?}",
        seen.iter().map(|s| s.uri.clone()).collect::<Vec<_>>()
    );

    // Pipelined behind a clean request: the clean one is served, the
    // ambiguous one and everything after it refused.
    let mut pipelined = b"GET /public/clean HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_vec();
    pipelined.extend_from_slice(cl_te);
    let (resp, closed) = exchange(env.addr, &pipelined).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(responses_in(&resp), 2, "{resp}");
    assert!(resp.contains("ambiguous_framing"), "{resp}");
    assert!(closed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = env.up.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.uri.clone()).collect::<Vec<_>>(),
        vec!["/public/clean".to_string()]
    );

    // A body that merely contains such a head is data, not a request.
    let bait = "POST /public/smuggled HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1\r\n\
Transfer-Encoding: chunked\r\n\r\n";
    let chunked = format!(
        "POST /public/upload HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
{:x}\r\n{bait}\r\n0\r\n\r\nGET /public/after HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        bait.len()
    );
    let (resp, _) = exchange(env.addr, chunked.as_bytes()).await;
    assert_eq!(responses_in(&resp), 2, "{resp}");
    assert!(!resp.contains(" 400 "), "{resp}");
    let last = env.up.last();
    assert_eq!(last.uri, "/public/after");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn ambiguous_or_unknown_framing_is_400_and_never_forwarded() {
    let env = Env::start().await;
    let cases: [(&str, &[u8]); 9] = [
        (
            "two different Content-Length headers",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "a Content-Length list of different values",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        (
            "Transfer-Encoding: xchunked",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: gzip",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked, xchunked",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "xchunked with Content-Length",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
        ),
        (
            "Content-Length: -1",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: -1\r\n\r\nhello",
        ),
        (
            "Content-Length: +5",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "Content-Length: 0x5",
            b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0x5\r\n\r\nhello",
        ),
    ];
    for (what, bytes) in cases {
        let (resp, _) = exchange(env.addr, bytes).await;
        assert_eq!(raw_status(&resp), 400, "{what}: {resp}");
        assert_eq!(responses_in(&resp), 1, "{what}: {resp}");
    }
    assert_eq!(
        env.up.count(),
        0,
        "an ambiguous request reached the upstream"
    );
    let (resp, _) = exchange(
        env.addr,
        b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "control: {resp}");
    assert_eq!(&env.up.last().body[..], b"hello");
    env.gw.shutdown().await;
}

#[tokio::test]
async fn a_host_that_disagrees_with_the_absolute_form_target_is_400() {
    let env = Env::start().await;
    for (what, req) in [
        (
            "absolute-form vs Host",
            "GET http://a.example/public/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute-form vs Host on a protected path",
            "GET http://a.example/admin HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Host headers",
            "GET /public/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "no Host in HTTP/1.1",
            "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let resp = env.raw(req.as_bytes()).await;
        assert_eq!(raw_status(&resp), 400, "{what}: {resp}");
    }
    assert_eq!(env.up.count(), 0);
    let resp = env
        .raw(b"GET http://a.example/public/x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&resp), 200, "control: {resp}");
    assert_eq!(env.up.count(), 1);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn obs_fold_and_control_characters_in_headers_are_400() {
    let env = Env::start().await;
    let cases: [(&str, &[u8]); 6] = [
        (
            "obs-fold",
            b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n",
        ),
        (
            "obs-fold with a tab",
            b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-Folded: a\r\n\tX-User-Id: admin\r\nConnection: close\r\n\r\n",
        ),
        (
            "a bare CR in a value",
            b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-Cr: a\rX-User-Id: admin\r\nConnection: close\r\n\r\n",
        ),
        (
            "a NUL in a value",
            b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-Nul: a\x00b\r\nConnection: close\r\n\r\n",
        ),
        (
            "whitespace before the colon",
            b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-User-Id : admin\r\nConnection: close\r\n\r\n",
        ),
        (
            "a space in a header name",
            b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX User: admin\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let resp = env.raw(bytes).await;
        assert_eq!(raw_status(&resp), 400, "{what}: {resp}");
    }
    assert_eq!(env.up.count(), 0, "a malformed header reached the upstream");
    let resp = env
        .raw(b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-Fine: a b\tc\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&resp), 200, "control: {resp}");
    env.gw.shutdown().await;
}

// ---------------------------------------------------------------- Wycheproof

/// Big-endian unsigned arithmetic, enough for Wycheproof's transformations.
fn trim(v: &[u8]) -> Vec<u8> {
    let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    v[i..].to_vec()
}

fn add(a: &[u8], b: &[u8]) -> Vec<u8> {
    let n = a.len().max(b.len()) + 1;
    let mut out = vec![0u8; n];
    let mut carry = 0u16;
    for i in 0..n {
        let x = if i < a.len() { a[a.len() - 1 - i] } else { 0 } as u16;
        let y = if i < b.len() { b[b.len() - 1 - i] } else { 0 } as u16;
        let s = x + y + carry;
        out[n - 1 - i] = s as u8;
        carry = s >> 8;
    }
    trim(&out)
}

/// a - b, for a >= b.
fn sub(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a.to_vec();
    let mut borrow = 0i16;
    for i in 0..a.len() {
        let x = a[a.len() - 1 - i] as i16;
        let y = if i < b.len() { b[b.len() - 1 - i] } else { 0 } as i16;
        let mut d = x - y - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[a.len() - 1 - i] = d as u8;
    }
    assert_eq!(borrow, 0, "a < b");
    trim(&out)
}

fn pow2(bits: usize) -> Vec<u8> {
    let mut v = vec![0u8; bits / 8 + 1];
    v[0] = 1 << (bits % 8);
    v
}

/// A Wycheproof "replaced r by ..." / "replaced s by ..." transformation of
/// a P1363 signature: whether r was replaced, and the new value.
fn transform(sig: &[u8], comment: &str) -> Option<(bool, Vec<u8>)> {
    let n = hex(P256_N);
    let (r, s) = sig.split_at(sig.len() / 2);
    let (which, how) = comment.strip_prefix("replaced ")?.split_once(" by ")?;
    let x = if which == "r" { r } else { s };
    let y = match how.trim_start_matches(['r', 's']).trim() {
        "+ n" => add(x, &n),
        "+ 256 * n" => add(x, &[n.as_slice(), &[0]].concat()),
        "+ 2**256" => add(x, &pow2(256)),
        "+ 2**320" => add(x, &pow2(320)),
        _ if how == "n - r" || how == "n - s" => sub(&n, x),
        _ => return None,
    };
    Some((which == "r", y))
}

/// P1363 encoding of (r, s), both halves at the larger width (at least 32).
fn encode(r: &[u8], s: &[u8]) -> Vec<u8> {
    let (r, s) = (trim(r), trim(s));
    let w = r.len().max(s.len()).max(32);
    let mut out = vec![0u8; 2 * w];
    out[w - r.len()..w].copy_from_slice(&r);
    out[2 * w - s.len()..].copy_from_slice(&s);
    out
}

#[test]
fn wycheproof_p256_vectors_are_decided_right_by_the_verifiers_signature_check() {
    // The call the gateway makes for every ES256 token, with the Wycheproof key
    // and message: every valid vector accepted, every invalid one refused.
    portcullis::install_crypto_providers();
    let g = wycheproof_group();
    let jwk = &g["publicKeyJwk"];
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap(),
    )
    .unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for t in g["tests"].as_array().unwrap() {
        let msg = hex(t["msg"].as_str().unwrap());
        let sig = b64(&hex(t["sig"].as_str().unwrap()));
        let ok = matches!(
            jsonwebtoken::crypto::verify(&sig, &msg, &key, Algorithm::ES256),
            Ok(true)
        );
        match t["result"].as_str().unwrap() {
            "valid" => {
                valid += 1;
                assert!(ok, "valid vector {} refused: {}", t["tcId"], t["comment"]);
            }
            _ => {
                invalid += 1;
                assert!(
                    !ok,
                    "invalid vector {} accepted: {}",
                    t["tcId"], t["comment"]
                );
            }
        }
    }
    assert_eq!((valid, invalid), (56, 58));
}

#[tokio::test]
async fn wycheproof_p256_invalid_signatures_are_refused_by_the_gateway() {
    let env = Env::start().await;
    let g = wycheproof_group();
    let tests = g["tests"].as_array().unwrap();
    // tcId 1 is the malleated form (r, n - s) of the signature the
    // transformations start from: undo it to get that signature.
    assert_eq!(tests[0]["comment"], "signature malleability");
    let malleated = hex(tests[0]["sig"].as_str().unwrap());
    let (r1, s1) = malleated.split_at(32);
    let base = [r1.to_vec(), sub(&hex(P256_N), s1)].concat();
    assert_eq!(base.len(), 64);
    let genuine = env.ec.token("alice", json!({}));
    let genuine_sig = URL_SAFE_NO_PAD.decode(sig_of(&genuine)).unwrap();
    let unsigned = unsigned_part(&genuine).to_string();
    let payload64 = unsigned.split_once('.').unwrap().1.to_string();
    let wp_header = b64(json!({"alg": "ES256", "typ": "JWT", "kid": WYCHEPROOF_KID})
        .to_string()
        .as_bytes());

    let mut sent = 0;
    for t in tests.iter().filter(|t| t["result"] == "invalid") {
        let id = &t["tcId"];
        let comment = t["comment"].as_str().unwrap();
        let vector = hex(t["sig"].as_str().unwrap());
        if let Some((is_r, y)) = transform(&base, comment) {
            // A transformation of a valid signature: check ours against
            // Wycheproof's own, then apply it to a signature the gateway
            // would accept. (Wycheproof's "replaced s" vectors hold the new
            // value in the r half and the old s in the s half; both shapes
            // are sent.)
            let mine = encode(&y, &base[32..]);
            assert_eq!(
                mine, vector,
                "tcId {id} ({comment}): transformation differs"
            );
            let (gr, gs) = genuine_sig.split_at(32);
            let (_, gy) = transform(&genuine_sig, comment).unwrap();
            let mut forged = vec![if is_r {
                encode(&gy, gs)
            } else {
                encode(gr, &gy)
            }];
            if !is_r {
                forged.push(encode(&gy, gs));
            }
            for f in forged {
                let tok = format!("{unsigned}.{}", b64(&f));
                env.refused_as(
                    &format!("tcId {id}: {comment}"),
                    &tok,
                    "main",
                    "bad_signature",
                )
                .await;
            }
        } else {
            // A signature that is invalid for any key and message (r or s
            // out of range): sent as is, under the Wycheproof key.
            let tok = format!("{wp_header}.{payload64}.{}", b64(&vector));
            env.refused_as(
                &format!("tcId {id}: {comment}"),
                &tok,
                "main",
                "bad_signature",
            )
            .await;
        }
        sent += 1;
        if sent == 58 {
            break;
        }
    }
    assert!(sent >= 50, "only {sent} vectors were sent");
    assert_eq!(env.up.count(), 0);
    env.allowed("the genuine ES256 token", &genuine).await;
    env.gw.shutdown().await;
}
