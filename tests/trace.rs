mod common;

// "Why 401?": the decision trace, from the admin listener (`POST /debug/verify`)
// and from the command line (`portcullis token inspect`, the real binary as a
// child process owned by a guard that kills it on drop). Every wait is bounded.
// Neither ever shows the token's signature or the admin secret.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{portcullis, Output, Proc};
use common::*;
use jsonwebtoken::Algorithm;
use portcullis::RunningGateway;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "trace-admin-secret-0123456789abcdef";

/// Every check a valid bearer token passes.
const PASSING: &[&str] = &[
    "format",
    "header",
    "issuer",
    "algorithm",
    "key",
    "signature",
    "exp",
    "aud",
    "revocation",
    "binding",
];

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signature_of(token: &str) -> &str {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS");
    assert!(parts[2].len() > 20, "a real signature part");
    parts[2]
}

/// The routes both the gateway and `token inspect` are given.
const ROUTES: &str = r#"
[[route]]
path_prefix = "/admin"
upstream = "app"
scopes = ["admin:write"]

[[route]]
path_prefix = "/x"
upstream = "app"
methods = ["GET"]

[[route]]
path_prefix = "/"
upstream = "app"
"#;

/// An ES256 issuer from `jwks.json`, the admin token, a revocation store, the routes.
fn config(up_url: &str) -> String {
    let cfg = base_config("jwks_file = \"jwks.json\"", up_url, "\"ES256\"");
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"";
    assert!(cfg.contains(admin), "base_config changed shape");
    cfg.replace(admin, &format!("{admin}\ntoken_file = \"admin.token\""))
        + ROUTES
        + "\n[revocation]\nstore = \"data/revocations.log\"\n"
}

async fn start(dir: &Path, key: &TestKey) -> (RunningGateway, Upstream) {
    std::fs::write(dir.join("jwks.json"), jwks(&[key])).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let up = Upstream::start().await;
    let gw = gateway(dir, &config(&up.url())).await;
    wait_ready(&gw).await;
    (gw, up)
}

// ---------------------------------------------------------------- /debug/verify

/// `POST /debug/verify{query}` with `auth` as the whole Authorization value.
async fn debug_verify(gw: &RunningGateway, query: &str, auth: Option<&str>, token: &str) -> Reply {
    let admin = gw.admin_addr().unwrap();
    let mut headers = vec![("content-type", "text/plain")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    Client::plain()
        .request(
            "POST",
            &format!("http://{admin}/debug/verify{query}"),
            &headers,
            token.as_bytes(),
        )
        .await
}

/// The trace for `token` (with the admin token), checked free of secrets.
async fn trace(gw: &RunningGateway, query: &str, token: &str) -> Value {
    let r = debug_verify(gw, query, Some(&format!("Bearer {ADMIN_TOKEN}")), token).await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{body}");
    assert_no_secrets(&body, token);
    r.json()
}

fn assert_no_secrets(text: &str, token: &str) {
    assert!(
        !text.contains(signature_of(token)),
        "the output contains the token's signature:\n{text}"
    );
    assert!(
        !text.contains(ADMIN_TOKEN),
        "the output contains the admin token:\n{text}"
    );
}

/// Outcome of the first step named `check`.
fn outcome<'a>(t: &'a Value, check: &str) -> &'a str {
    step(t, check)["outcome"].as_str().unwrap()
}

fn step<'a>(t: &'a Value, check: &str) -> &'a Value {
    t["steps"]
        .as_array()
        .expect("steps array")
        .iter()
        .find(|s| s["check"] == check)
        .unwrap_or_else(|| panic!("no `{check}` step in {t:#}"))
}

fn assert_denied(t: &Value, status: u16, result: &str) {
    assert_eq!(t["decision"], "deny", "{t:#}");
    assert_eq!(t["status"], status, "{t:#}");
    assert_eq!(t["result"], result, "{t:#}");
}

#[tokio::test]
async fn debug_verify_requires_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, _up) = start(dir.path(), &key).await;
    let token = key.token("alice", json!({}));
    for auth in [
        None,
        Some("Bearer wrong-admin-token".to_string()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(format!("Bearer {token}")),
    ] {
        let r = debug_verify(&gw, "", auth.as_deref(), &token).await;
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 401, "{auth:?}: {body}");
        assert_no_secrets(&body, &token);
        assert!(
            r.json().get("steps").is_none() && r.json().get("decision").is_none(),
            "{auth:?}: a trace was answered without the admin token: {body}"
        );
    }
    // With it, the trace.
    let t = trace(&gw, "", &token).await;
    assert_eq!(t["decision"], "allow");
    gw.shutdown().await;
}

#[tokio::test]
async fn debug_verify_passes_every_check_of_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, up) = start(dir.path(), &key).await;
    let token = key.token("alice", json!({"scope": "read"}));
    let t = trace(&gw, "", &token).await;
    assert_eq!(t["decision"], "allow", "{t:#}");
    assert_eq!(t["status"], 200);
    assert_eq!(t["result"], "allowed");
    assert_eq!(t["issuer"], "main");
    for check in PASSING {
        assert_eq!(outcome(&t, check), "pass", "`{check}` in {t:#}");
    }
    assert!(
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["outcome"] != "fail"),
        "{t:#}"
    );
    // The decoded claims are shown; the token itself is not.
    assert_eq!(t["claims"]["sub"], "alice");
    assert_eq!(t["header"]["kid"], key.kid.as_str());
    // Nothing is proxied by a trace.
    assert_eq!(up.count(), 0);

    // With a route that the token satisfies, the policy passes too.
    let t = trace(&gw, "?method=GET&path=/x/1", &token).await;
    assert_eq!(t["result"], "allowed", "{t:#}");
    assert_eq!(outcome(&t, "route"), "pass", "{t:#}");
    assert_eq!(outcome(&t, "policy"), "pass", "{t:#}");
    gw.shutdown().await;
}

#[tokio::test]
async fn debug_verify_explains_an_expired_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, _up) = start(dir.path(), &key).await;
    let now = now_unix();
    let token = key.token("alice", json!({"iat": now - 7200, "exp": now - 3600}));
    let t = trace(&gw, "", &token).await;
    assert_denied(&t, 401, "expired");
    assert_eq!(outcome(&t, "exp"), "fail", "{t:#}");
    assert_eq!(outcome(&t, "signature"), "pass", "{t:#}");
    assert_eq!(outcome(&t, "issuer"), "pass", "{t:#}");
    gw.shutdown().await;
}

#[tokio::test]
async fn debug_verify_explains_a_forged_signature() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, _up) = start(dir.path(), &key).await;
    // Same kid and claims, signed by another key.
    let forger = TestKey::new(Algorithm::ES256).with_kid(&key.kid);
    let token = forger.token("mallory", json!({}));
    let t = trace(&gw, "", &token).await;
    assert_denied(&t, 401, "bad_signature");
    assert_eq!(outcome(&t, "signature"), "fail", "{t:#}");
    assert_eq!(outcome(&t, "key"), "pass", "{t:#}");

    // A valid token's header and payload with the signature part swapped.
    let good = key.token("alice", json!({}));
    let other = forger.token("alice", json!({}));
    let spliced = format!(
        "{}.{}",
        good.rsplit_once('.').unwrap().0,
        signature_of(&other)
    );
    let t = trace(&gw, "", &spliced).await;
    assert_denied(&t, 401, "bad_signature");
    assert_eq!(outcome(&t, "signature"), "fail", "{t:#}");
    gw.shutdown().await;
}

#[tokio::test]
async fn debug_verify_explains_a_wrong_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, _up) = start(dir.path(), &key).await;
    let token = key.token("alice", json!({"iss": "https://evil.example/"}));
    let t = trace(&gw, "", &token).await;
    assert_denied(&t, 401, "wrong_issuer");
    assert_eq!(outcome(&t, "issuer"), "fail", "{t:#}");
    gw.shutdown().await;
}

#[tokio::test]
async fn debug_verify_with_a_route_names_the_missing_scope() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, _up) = start(dir.path(), &key).await;
    let token = key.token("alice", json!({"scope": "read profile"}));
    let t = trace(&gw, "?method=GET&path=/admin", &token).await;
    assert_denied(&t, 403, "insufficient_scope");
    assert_eq!(outcome(&t, "route"), "pass", "{t:#}");
    let policy = step(&t, "policy");
    assert_eq!(policy["outcome"], "fail", "{t:#}");
    assert!(
        policy["detail"].as_str().unwrap().contains("admin:write"),
        "the policy step should name the missing scope: {policy}"
    );
    // The token checks themselves passed.
    for check in PASSING {
        assert_eq!(outcome(&t, check), "pass", "`{check}` in {t:#}");
    }

    // The same token with the scope is allowed on that route.
    let scoped = key.token("alice", json!({"scope": "read admin:write"}));
    let t = trace(&gw, "?method=GET&path=/admin/users", &scoped).await;
    assert_eq!(t["result"], "allowed", "{t:#}");
    assert_eq!(outcome(&t, "policy"), "pass", "{t:#}");
    gw.shutdown().await;
}

#[tokio::test]
async fn debug_verify_reports_a_revoked_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let (gw, _up) = start(dir.path(), &key).await;
    let token = key.token("alice", json!({"jti": "trace-jti-1"}));
    let t = trace(&gw, "", &token).await;
    assert_eq!(t["result"], "allowed", "{t:#}");

    let admin = gw.admin_addr().unwrap();
    let r = Client::plain()
        .request(
            "POST",
            &format!("http://{admin}/revocations"),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
            json!({"jti": "trace-jti-1"}).to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // Enforced within 1 s (allow 3 s).
    let deadline = Instant::now() + Duration::from_secs(3);
    let t = loop {
        let t = trace(&gw, "", &token).await;
        if t["result"] != "allowed" || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_denied(&t, 401, "revoked");
    assert_eq!(outcome(&t, "revocation"), "fail", "{t:#}");
    assert_eq!(outcome(&t, "signature"), "pass", "{t:#}");

    // Another token of the same subject is not affected.
    let other = key.token("alice", json!({}));
    let t = trace(&gw, "", &other).await;
    assert_eq!(t["result"], "allowed", "{t:#}");
    gw.shutdown().await;
}

// ---------------------------------------------------------------- token inspect

/// Runs the binary to completion (at most 60 s), `stdin` written then closed.
fn run_cli(args: &[&str], cwd: &Path, stdin: Option<&str>) -> Output {
    let mut cmd = portcullis(args, cwd);
    let p = match stdin {
        Some(text) => Proc::spawn_with_input(&mut cmd, text),
        None => Proc::spawn(&mut cmd),
    };
    p.named(format!("portcullis {args:?}"))
        .finish(Duration::from_secs(60))
}

/// A configuration for `inspect`: keys from a local `jwks.json`, no network.
fn inspect_setup(dir: &Path, key: &TestKey) -> String {
    std::fs::write(dir.join("jwks.json"), jwks(&[key])).unwrap();
    let cfg = base_config(
        "jwks_file = \"jwks.json\"",
        "http://127.0.0.1:9",
        "\"ES256\"",
    ) + ROUTES;
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, cfg).unwrap();
    path.to_str().unwrap().to_string()
}

fn inspect(dir: &Path, config: &str, extra: &[&str], token: &str, stdin: Option<&str>) -> Output {
    let mut args = vec!["token", "inspect", "--config", config];
    args.extend_from_slice(extra);
    args.push(token);
    run_cli(&args, dir, stdin)
}

/// (outcome, check) of each printed step line.
fn printed_steps(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("decision:"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

fn decision_line(o: &Output) -> String {
    let lines: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("decision: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one decision line expected\n--- stdout\n{}\n--- stderr\n{}",
        o.stdout,
        o.stderr
    );
    assert!(
        o.stdout.trim_end().ends_with(lines[0]),
        "the decision comes last:\n{}",
        o.stdout
    );
    lines[0].to_string()
}

fn assert_output_free_of(o: &Output, token: &str) {
    assert!(
        !o.stdout.contains(signature_of(token)) && !o.stderr.contains(signature_of(token)),
        "the output contains the token's signature\n--- stdout\n{}\n--- stderr\n{}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn token_inspect_allows_a_valid_token_and_prints_each_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let config = inspect_setup(dir.path(), &key);
    let token = key.token("alice", json!({}));
    let o = inspect(dir.path(), &config, &[], &token, None);
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert!(
        decision_line(&o).starts_with("decision: allow (200 allowed)"),
        "{}",
        o.stdout
    );
    let steps = printed_steps(&o.stdout);
    for check in PASSING {
        assert!(
            steps.iter().any(|(out, c)| out == "pass" && c == check),
            "no `pass {check}` line:\n{}",
            o.stdout
        );
    }
    assert!(!steps.iter().any(|(out, _)| out == "fail"), "{}", o.stdout);
    assert_output_free_of(&o, &token);
}

#[test]
fn token_inspect_explains_an_expired_token_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let config = inspect_setup(dir.path(), &key);
    let now = now_unix();
    let token = key.token("alice", json!({"iat": now - 7200, "exp": now - 3600}));
    let o = inspect(dir.path(), &config, &[], &token, None);
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert!(
        decision_line(&o).starts_with("decision: deny (401 expired)"),
        "{}",
        o.stdout
    );
    let steps = printed_steps(&o.stdout);
    assert!(
        steps.iter().any(|(out, c)| out == "fail" && c == "exp"),
        "no `fail exp` line:\n{}",
        o.stdout
    );
    assert!(
        steps
            .iter()
            .any(|(out, c)| out == "pass" && c == "signature"),
        "{}",
        o.stdout
    );
    assert_output_free_of(&o, &token);
}

#[test]
fn token_inspect_with_a_route_reports_a_disallowed_method_as_405() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let config = inspect_setup(dir.path(), &key);
    let token = key.token("alice", json!({}));
    let o = inspect(
        dir.path(),
        &config,
        &["--path", "/x", "--method", "POST"],
        &token,
        None,
    );
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    let d = decision_line(&o);
    assert!(d.starts_with("decision: deny (405 "), "{}", o.stdout);
    assert!(
        printed_steps(&o.stdout)
            .iter()
            .any(|(out, c)| out == "fail" && c == "route"),
        "{}",
        o.stdout
    );
    assert_output_free_of(&o, &token);

    // GET on the same route is allowed.
    let o = inspect(
        dir.path(),
        &config,
        &["--path", "/x", "--method", "GET"],
        &token,
        None,
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        decision_line(&o).starts_with("decision: allow (200 allowed)"),
        "{}",
        o.stdout
    );
}

#[test]
fn token_inspect_reads_the_token_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let config = inspect_setup(dir.path(), &key);
    let token = key.token("alice", json!({}));
    let o = inspect(dir.path(), &config, &[], "-", Some(&format!("{token}\n")));
    assert_eq!(
        o.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert!(
        decision_line(&o).starts_with("decision: allow (200 allowed)"),
        "{}",
        o.stdout
    );
    assert_output_free_of(&o, &token);

    // An expired one through stdin too: the trace is of that token.
    let now = now_unix();
    let expired = key.token("alice", json!({"iat": now - 7200, "exp": now - 3600}));
    let o = inspect(dir.path(), &config, &[], "-", Some(&expired));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        decision_line(&o).starts_with("decision: deny (401 expired)"),
        "{}",
        o.stdout
    );
    assert_output_free_of(&o, &expired);
}

#[test]
fn token_inspect_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let config = inspect_setup(dir.path(), &key);
    let text = std::fs::read_to_string(&config).unwrap();
    let bad = text.replace("leeway = \"5s\"", "leeway = \"5s\"\nleewya = \"5s\"");
    assert_ne!(bad, text, "base_config changed shape");
    std::fs::write(&config, bad).unwrap();
    let token = key.token("alice", json!({}));
    let o = inspect(dir.path(), &config, &[], &token, None);
    assert_eq!(
        o.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    assert!(
        o.stderr.contains("leewya"),
        "the problem is named:\n{}",
        o.stderr
    );
    assert!(
        !o.stdout.contains("decision:"),
        "no decision from a bad configuration:\n{}",
        o.stdout
    );
    assert_output_free_of(&o, &token);

    // A configuration file that does not exist is a usage error too.
    let missing = dir.path().join("nope.toml");
    let o = inspect(dir.path(), missing.to_str().unwrap(), &[], &token, None);
    assert_eq!(
        o.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
}
