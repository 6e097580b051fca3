mod common;

// The command line, exercised as a user would: the real binary as a child
// process (`check`, `run`, `keygen`, `token mint`, `demo`), with exit codes,
// printed problems, access-log lines and signals checked from the outside.
//
// Every child process is owned by a `Proc` whose `Drop` kills it, and every
// wait is bounded, so a failing test never leaves a process behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::process::{portcullis, Output, Proc};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

// ---------------------------------------------------------------- child processes

/// Runs the binary to completion (at most 60 s).
fn run_cli(args: &[&str], cwd: &Path) -> Output {
    Proc::spawn(&mut portcullis(args, cwd)).finish(Duration::from_secs(60))
}

fn check(config: &Path, cwd: &Path) -> Output {
    run_cli(&["check", "--config", config.to_str().unwrap()], cwd)
}

/// A port that was free a moment ago on loopback.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// GET over a fresh connection; None when nothing answers.
async fn probe(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------- problems

#[derive(Debug)]
struct Printed {
    line: usize,
    col: usize,
    field: String,
    message: String,
}

/// Every `FILE:LINE:COL: field.path: message` line printed about `file`.
fn problems(stderr: &str, file: &Path) -> Vec<Printed> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (line, rest) = rest.split_once(':')?;
            let (col, rest) = rest.split_once(':')?;
            let (field, message) = rest.strip_prefix(' ')?.split_once(": ")?;
            Some(Printed {
                line: line.parse().ok()?,
                col: col.parse().ok()?,
                field: field.to_string(),
                message: message.to_string(),
            })
        })
        .collect()
}

/// Asserts one problem names `field` at line `line` of `toml` (column inside
/// that line) with a message containing every one of `words`.
fn expect_problem(out: &Output, file: &Path, toml: &str, line: usize, field: &str, words: &[&str]) {
    let all = problems(&out.stderr, file);
    let found = all.iter().find(|p| p.field == field).unwrap_or_else(|| {
        panic!(
            "no problem names `{field}`; printed:\n{}\n(stdout: {})",
            out.stderr, out.stdout
        )
    });
    let text = toml.lines().nth(line - 1).unwrap_or_default();
    assert_eq!(
        found.line, line,
        "`{field}` is on line {line} ({text:?}), printed: {found:?}\n{}",
        out.stderr
    );
    assert!(
        found.col >= 1 && found.col <= text.chars().count(),
        "column {} is outside line {line} ({text:?})",
        found.col
    );
    for w in words {
        assert!(
            found.message.contains(w),
            "the message for `{field}` should mention {w:?}: {found:?}"
        );
    }
}

/// The 1-based number of the line of `toml` that starts with `start`.
fn line_of(toml: &str, start: &str) -> usize {
    let hits: Vec<usize> = toml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with(start))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "exactly one line starts with {start:?}");
    hits[0]
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn es256_jwks() -> String {
    jwks(&[&TestKey::new(Algorithm::ES256)])
}

// ---------------------------------------------------------------- check

#[test]
fn check_lists_every_problem_with_file_line_column_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    write(dir.path(), "jwks.json", &es256_jwks());
    let key = certs.key.file_name().unwrap().to_str().unwrap();
    // Line numbers matter: the assertions below name them.
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
header_read_timeuot = "10s"
tls = {{ cert = "missing-cert.pem", key = "{key}" }}

[[issuer]]
id = "main"
issuer = "https://idp.example.com/"
jwks_file = "jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["none", "ES256"]
leeway = "5 parsecs"

[upstream.app]
endpoints = ["http://127.0.0.1:9"]

[[route]]
path_prefix = "/a"
upstream = "app"

[[route]]
path_prefix = "/b"
upstream = "nowhere"

[bogus]
x = 1
"#
    );
    let file = write(dir.path(), "portcullis.toml", &toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    expect_problem(
        &out,
        &file,
        &toml,
        3,
        "server.header_read_timeuot",
        &["unknown"],
    );
    expect_problem(
        &out,
        &file,
        &toml,
        4,
        "server.tls.cert",
        &["missing-cert.pem"],
    );
    expect_problem(&out, &file, &toml, 11, "issuer[0].algorithms[0]", &["none"]);
    expect_problem(&out, &file, &toml, 12, "issuer[0].leeway", &["5 parsecs"]);
    expect_problem(&out, &file, &toml, 23, "route[1].upstream", &["nowhere"]);
    expect_problem(&out, &file, &toml, 25, "bogus", &["unknown"]);
    // The valid route and issuer settings are not blamed.
    let printed = problems(&out.stderr, &file);
    assert!(
        printed
            .iter()
            .all(|p| p.field != "route[0].upstream" && p.field != "issuer[0].algorithms[1]"),
        "a valid setting was reported:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_a_missing_certificate_file_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    Certs::new(dir.path());
    write(dir.path(), "jwks.json", &es256_jwks());
    let toml = r#"[server]
listen = ["127.0.0.1:0"]
tls = { cert = "nope.crt", key = "server.key" }

[[issuer]]
id = "main"
issuer = "https://idp.example.com/"
jwks_file = "jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["ES256"]
"#;
    let file = write(dir.path(), "portcullis.toml", toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    expect_problem(&out, &file, toml, 3, "server.tls.cert", &["nope.crt"]);
}

/// A complete, valid configuration whose files are named relatively to it:
/// certificates in a sibling folder, the JWKS next to it.
fn valid_config_tree(root: &Path) -> PathBuf {
    let certs = root.join("certs");
    let conf = root.join("conf");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    Certs::new(&certs);
    write(&conf, "jwks.json", &es256_jwks());
    write(&conf, "admin.token", "0123456789abcdef0123456789abcdef\n");
    write(
        &conf,
        "portcullis.toml",
        r#"[server]
listen = ["127.0.0.1:0"]
tls = { cert = "../certs/server.crt", key = "../certs/server.key" }
header_read_timeout = "10s"

[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"

[[issuer]]
id = "main"
issuer = "https://idp.example.com/"
jwks_file = "jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["ES256"]
leeway = "30s"

[identity]
headers = { "X-User-Id" = "sub" }

[upstream.app]
endpoints = ["http://127.0.0.1:9"]

[[route]]
path_prefix = "/"
upstream = "app"
"#,
    )
}

#[test]
fn check_accepts_a_valid_configuration_with_paths_relative_to_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_config_tree(dir.path());
    let out = check(&file, Path::new("/"));
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(problems(&out.stderr, &file).is_empty(), "{}", out.stderr);
}

#[test]
fn check_resolves_paths_against_the_config_folder_not_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_config_tree(dir.path());
    // The working directory has a jwks.json, the configuration's folder does not.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::rename(file.with_file_name("jwks.json"), cwd.join("jwks.json")).unwrap();
    let toml = std::fs::read_to_string(&file).unwrap();
    let out = check(&file, &cwd);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    expect_problem(
        &out,
        &file,
        &toml,
        line_of(&toml, "jwks_file"),
        "issuer[0].jwks_file",
        &["jwks.json"],
    );
}

#[test]
fn check_reports_a_toml_syntax_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[server]\nlisten = [\"127.0.0.1:0\"]\nidle_timeout = = \"60s\"\n";
    let file = write(dir.path(), "portcullis.toml", toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    let printed = problems(&out.stderr, &file);
    assert!(
        printed.iter().any(|p| p.line == 3 && p.col >= 1),
        "no problem at line 3:\n{}",
        out.stderr
    );
}

#[test]
fn check_of_a_missing_file_exits_2_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.toml");
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "the message should name the file:\n{}",
        out.stderr
    );
}

#[test]
fn check_without_config_flag_reads_portcullis_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_config_tree(dir.path());
    let ok = portcullis(&["check"], Path::new("/"))
        .env("PORTCULLIS_CONFIG", &file)
        .status_bounded();
    assert_eq!(ok.code, Some(0), "stderr:\n{}", ok.stderr);
    let absent = dir.path().join("absent.toml");
    let bad = portcullis(&["check"], Path::new("/"))
        .env("PORTCULLIS_CONFIG", &absent)
        .status_bounded();
    assert_eq!(bad.code, Some(2), "stderr:\n{}", bad.stderr);
    assert!(bad.stderr.contains(&absent.display().to_string()));
}

trait Bounded {
    fn status_bounded(&mut self) -> Output;
}

impl Bounded for Command {
    fn status_bounded(&mut self) -> Output {
        Proc::spawn(self).finish(Duration::from_secs(60))
    }
}

fn hmac_issuer_config(algorithms: &str) -> String {
    format!(
        r#"[[issuer]]
id = "hs"
issuer = "https://idp.example.com/"
secret_file = "hs.secret"
audiences = ["https://api.example.com"]
algorithms = [{algorithms}]
"#
    )
}

#[test]
fn check_refuses_an_hmac_secret_shorter_than_the_hash_output() {
    let dir = tempfile::tempdir().unwrap();
    // 31 bytes of secret; with the trimmed newline the file has 32 bytes.
    write(dir.path(), "hs.secret", &format!("{}\n", "s".repeat(31)));
    let toml = hmac_issuer_config("\"HS256\"");
    let file = write(dir.path(), "portcullis.toml", &toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    expect_problem(&out, &file, &toml, 4, "issuer[0].secret_file", &[]);
}

#[test]
fn check_accepts_a_32_byte_hmac_secret_after_trimming_crlf() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "hs.secret", &format!("{}\r\n", "s".repeat(32)));
    let file = write(
        dir.path(),
        "portcullis.toml",
        &hmac_issuer_config("\"HS256\""),
    );
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
}

#[test]
fn check_refuses_an_issuer_mixing_hmac_and_public_key_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "hs.secret", &"s".repeat(64));
    let toml = hmac_issuer_config("\"HS256\", \"RS256\"");
    let file = write(dir.path(), "portcullis.toml", &toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(
        problems(&out.stderr, &file)
            .iter()
            .any(|p| p.field == "issuer[0].algorithms"),
        "no problem names issuer[0].algorithms:\n{}",
        out.stderr
    );
}

#[test]
fn check_points_at_the_algorithms_line_when_an_issuer_mixes_hmac_and_public_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "hs.secret", &"s".repeat(64));
    let toml = hmac_issuer_config("\"HS256\", \"RS256\"");
    let file = write(dir.path(), "portcullis.toml", &toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    // `algorithms` is on line 6; the `[[issuer]]` header on line 1 is not that key.
    expect_problem(&out, &file, &toml, 6, "issuer[0].algorithms", &[]);
}

#[test]
fn check_refuses_plain_http_identity_provider_urls_on_other_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"[[issuer]]
id = "remote"
issuer = "https://idp.example.com/"
jwks_uri = "http://idp.example.com/keys"
audiences = ["https://api.example.com"]
algorithms = ["RS256"]

[[issuer]]
id = "lookalike"
issuer = "https://idp2.example.com/"
jwks_uri = "http://localhost.attacker.example/keys"
audiences = ["https://api.example.com"]
algorithms = ["RS256"]
"#;
    let file = write(dir.path(), "portcullis.toml", toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    expect_problem(&out, &file, toml, 4, "issuer[0].jwks_uri", &["https"]);
    expect_problem(&out, &file, toml, 11, "issuer[1].jwks_uri", &["https"]);
}

#[test]
fn check_accepts_plain_http_identity_provider_urls_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::new();
    for (i, url) in [
        "http://127.0.0.1:1/keys",
        "http://127.8.9.10/keys",
        "http://localhost:1/keys",
        "http://[::1]:1/keys",
    ]
    .iter()
    .enumerate()
    {
        toml += &format!(
            "[[issuer]]\nid = \"i{i}\"\nissuer = \"https://idp{i}.example.com/\"\njwks_uri = \"{url}\"\naudiences = [\"https://api.example.com\"]\nalgorithms = [\"RS256\"]\n\n"
        );
    }
    let file = write(dir.path(), "portcullis.toml", &toml);
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
}

#[test]
fn shipped_example_configuration_passes_check() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
    assert!(
        file.exists(),
        "{} is missing: the repository ships an example configuration",
        file.display()
    );
    let out = check(&file, Path::new("/"));
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
}

#[test]
fn check_without_config_flag_defaults_to_config_portcullis_toml() {
    // From the repository root, `portcullis check` finds the shipped example.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_cli(&["check"], root);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    // From an empty folder there is nothing to find: a usage/config error.
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["check"], dir.path());
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("portcullis.toml"), "{}", out.stderr);
}

// ---------------------------------------------------------------- keygen and mint

fn b64_json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

async fn keygen_then_mint_is_accepted_by_the_gateway(alg: &str) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = run_cli(
        &["keygen", "--alg", alg, "--out", keys.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.code, Some(0), "keygen {alg}: {}", out.stderr);
    let private = keys.join("private.pem");
    let jwks_path = keys.join("jwks.json");
    let pem = std::fs::read_to_string(&private).expect("private.pem written");
    assert!(pem.contains("PRIVATE KEY"), "{pem}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private.pem is readable by others: {mode:o}"
        );
    }
    let set: Value = serde_json::from_str(&std::fs::read_to_string(&jwks_path).unwrap()).unwrap();
    let jwk = &set["keys"][0];
    assert_eq!(set["keys"].as_array().unwrap().len(), 1, "{set}");
    assert_eq!(jwk["alg"], alg, "{set}");
    for private_member in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            jwk.get(private_member).is_none(),
            "the JWKS leaks {private_member}"
        );
    }

    let mut args = vec![
        "token",
        "mint",
        "--key",
        private.to_str().unwrap(),
        "--iss",
        ISS,
        "--aud",
        AUD,
        "--sub",
        "subject-42",
        "--ttl",
        "5m",
        "--claim",
        r#"roles=["admin"]"#,
    ];
    // An RSA PEM does not say whether it is for PKCS#1 v1.5 or PSS.
    if alg == "PS256" {
        args.extend(["--alg", "PS256"]);
    }
    let out = run_cli(&args, dir.path());
    assert_eq!(out.code, Some(0), "mint {alg}: {}", out.stderr);
    let token = out.stdout.trim().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token:?}");
    let header = b64_json(parts[0]);
    let payload = b64_json(parts[1]);
    assert_eq!(header["alg"], alg);
    assert_eq!(header["kid"], jwk["kid"], "mint's kid is keygen's kid");
    assert_eq!(payload["iss"], ISS);
    assert_eq!(payload["aud"], AUD);
    assert_eq!(payload["sub"], "subject-42");
    assert_eq!(payload["roles"], json!(["admin"]));
    let ttl = payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap();
    assert_eq!(ttl, 300, "--ttl 5m");

    let up = Upstream::start().await;
    let cfg = base_config(
        "jwks_file = \"keys/jwks.json\"",
        &up.url(),
        &format!("\"{alg}\""),
    ) + "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let r = Client::plain()
        .get(
            &format!("http://{addr}/hello"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{alg}: {:?}", r.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "subject-42");
    assert_eq!(seen.headers["x-user-roles"], "admin");
    gw.shutdown().await;
}

#[tokio::test]
async fn keygen_es256_key_mints_tokens_the_gateway_accepts() {
    keygen_then_mint_is_accepted_by_the_gateway("ES256").await;
}

#[tokio::test]
async fn keygen_es384_key_mints_tokens_the_gateway_accepts() {
    keygen_then_mint_is_accepted_by_the_gateway("ES384").await;
}

#[tokio::test]
async fn keygen_rs256_key_mints_tokens_the_gateway_accepts() {
    keygen_then_mint_is_accepted_by_the_gateway("RS256").await;
}

#[tokio::test]
async fn keygen_ps256_key_mints_tokens_the_gateway_accepts() {
    keygen_then_mint_is_accepted_by_the_gateway("PS256").await;
}

#[tokio::test]
async fn keygen_eddsa_key_mints_tokens_the_gateway_accepts() {
    keygen_then_mint_is_accepted_by_the_gateway("EdDSA").await;
}

#[test]
fn keygen_with_an_unknown_algorithm_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["HS256", "RS999", "none", ""] {
        let out_dir = dir.path().join(format!("k-{alg}"));
        let out = run_cli(
            &["keygen", "--alg", alg, "--out", out_dir.to_str().unwrap()],
            dir.path(),
        );
        assert_eq!(out.code, Some(2), "--alg {alg:?}: {}", out.stderr);
        assert!(!out_dir.join("private.pem").exists());
        assert!(!out_dir.join("jwks.json").exists());
    }
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let args = ["keygen", "--alg", "ES256", "--out", keys.to_str().unwrap()];
    let first = run_cli(&args, dir.path());
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let pem = std::fs::read(keys.join("private.pem")).unwrap();
    let set = std::fs::read(keys.join("jwks.json")).unwrap();
    let second = run_cli(&args, dir.path());
    assert!(
        matches!(second.code, Some(c) if c != 0),
        "a second keygen into the same folder must fail: {:?}",
        second.code
    );
    assert!(second.stderr.contains("private.pem"), "{}", second.stderr);
    assert_eq!(std::fs::read(keys.join("private.pem")).unwrap(), pem);
    assert_eq!(
        std::fs::read(keys.join("jwks.json")).unwrap(),
        set,
        "the public JWKS must keep matching the kept private key"
    );
}

// ---------------------------------------------------------------- run

const ACCESS_KEYS: &[&str] = &[
    "request_id",
    "remote",
    "method",
    "host",
    "path",
    "route",
    "upstream",
    "status",
    "duration_ms",
    "upstream_ms",
    "auth",
];

fn access_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("request_id").is_some() && v.get("status").is_some())
        .collect()
}

/// A request of the `run` test: request id, path and query, headers, expected status.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_logs_json_access_lines_without_secrets_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    let impostor = TestKey::new(Algorithm::ES256).with_kid(&key.kid);
    write(dir.path(), "jwks.json", &jwks(&[&key]));
    let up = Upstream::start().await;
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]

[admin]
listen = "127.0.0.1:{admin}"

[token]
header = true
cookie = "access_token"
query = true

[[issuer]]
id = "main"
issuer = "{ISS}"
jwks_file = "jwks.json"
audiences = ["{AUD}"]
algorithms = ["ES256"]

[identity]
headers = {{ "X-User-Id" = "sub" }}

[upstream.app]
endpoints = ["{upstream}"]

[[route]]
id = "api"
path_prefix = "/api"
upstream = "app"
"#,
        upstream = up.url()
    );
    let file = write(dir.path(), "portcullis.toml", &toml);
    let mut p = Proc::spawn(
        portcullis(&["run", "--config", file.to_str().unwrap()], Path::new("/"))
            .env("RUST_LOG", "debug"),
    );

    let admin_addr = format!("127.0.0.1:{admin}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe(&admin_addr, "/healthz").await != Some(200) {
        if let Some(s) = p.exited() {
            panic!("run exited early ({s}):\n{}", p.stderr());
        }
        assert!(Instant::now() < deadline, "/healthz never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t_query = key.token("alice", json!({}));
    let t_header = key.token("alice", json!({}));
    let t_cookie = key.token("alice", json!({}));
    let t_forged = impostor.token("mallory", json!({}));
    let cookie_secret = "theme-cookie-value-8c1f2e";
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::plain();
    let bearer = format!("Bearer {t_header}");
    let forged = format!("Bearer {t_forged}");
    let cookie = format!("theme={cookie_secret}; access_token={t_cookie}");
    let cases: Vec<Case> = vec![
        (
            "req-query",
            format!("/api/items?access_token={t_query}&page=2"),
            vec![],
            200,
        ),
        (
            "req-header",
            "/api/items".into(),
            vec![("authorization", bearer.as_str())],
            200,
        ),
        (
            "req-cookie",
            "/api/items".into(),
            vec![("cookie", cookie.as_str())],
            200,
        ),
        ("req-none", "/api/items".into(), vec![], 401),
        (
            "req-forged",
            "/api/items".into(),
            vec![("authorization", forged.as_str())],
            401,
        ),
    ];
    for (id, path, headers, status) in &cases {
        let mut h = headers.clone();
        h.push(("x-request-id", id));
        let r = client.get(&format!("{base}{path}"), &h).await;
        assert_eq!(r.status.as_u16(), *status, "{id}: {:?}", r.body);
    }
    assert_eq!(
        up.count(),
        3,
        "only the three valid requests reach the upstream"
    );

    p.wait_stdout(Duration::from_secs(10), "five access-log lines", |s| {
        access_lines(s).len() >= cases.len()
    })
    .await;

    // SIGTERM while the client still holds its keep-alive connection.
    p.terminate();
    let status = p.wait_exit_async(Duration::from_secs(10)).await;
    drop(client);
    let (stdout, stderr) = (p.stdout(), p.stderr());
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM; stderr:\n{stderr}"
    );

    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "stdout holds a line that is not a JSON object: {line:?}"
        );
    }
    let lines = access_lines(&stdout);
    assert_eq!(
        lines.len(),
        cases.len(),
        "one access line per request:\n{stdout}"
    );
    for l in &lines {
        for k in ACCESS_KEYS {
            assert!(l.get(*k).is_some(), "access line lacks `{k}`: {l}");
        }
        assert!(l["auth"].is_object(), "`auth` is a nested object: {l}");
        assert!(l["auth"]["result"].is_string(), "auth.result: {l}");
        assert!(l["status"].is_u64(), "status is a number: {l}");
        assert!(l["duration_ms"].is_number(), "duration_ms is a number: {l}");
        assert_eq!(l["method"], "GET");
        assert!(
            l["remote"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1"),
            "{l}"
        );
        assert!(
            l["host"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1"),
            "{l}"
        );
        let path = l["path"].as_str().expect("path is a string");
        assert!(path.starts_with("/api/items"), "{l}");
        assert!(
            !path.contains("access_token"),
            "path keeps access_token: {l}"
        );
    }
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line with request_id {id}:\n{stdout}"))
    };
    for id in ["req-query", "req-header", "req-cookie"] {
        let l = by_id(id);
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["route"], "api", "{l}");
        assert_eq!(l["upstream"], "app", "{l}");
        assert!(l["upstream_ms"].is_number(), "{l}");
        assert_eq!(l["auth"]["result"], "allowed", "{l}");
        assert_eq!(l["auth"]["sub"], "alice", "{l}");
        assert_eq!(l["auth"]["iss"], ISS, "{l}");
        assert_eq!(l["auth"]["kid"], key.kid.as_str(), "{l}");
        assert_eq!(l["auth"]["alg"], "ES256", "{l}");
    }
    let q = by_id("req-query")["path"].as_str().unwrap();
    assert!(
        q.contains("page=2"),
        "the rest of the query string is kept: {q}"
    );
    assert_eq!(by_id("req-none")["status"], 401);
    assert_eq!(by_id("req-none")["auth"]["result"], "missing");
    assert_eq!(by_id("req-forged")["status"], 401);
    assert_eq!(by_id("req-forged")["auth"]["result"], "bad_signature");

    for (what, secret) in [
        ("query token", t_query.as_str()),
        ("header token", t_header.as_str()),
        ("cookie token", t_cookie.as_str()),
        ("forged token", t_forged.as_str()),
        ("cookie value", cookie_secret),
    ] {
        // The whole token, and its signature alone, are secrets.
        let sig = secret.rsplit('.').next().unwrap();
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(!text.contains(secret), "the {what} appears on {stream}");
            assert!(
                !text.contains(sig),
                "the {what}'s signature appears on {stream}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_configuration_exits_2_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
idle_timeuot = "60s"

[admin]
listen = "127.0.0.1:{admin}"

[upstream.app]
endpoints = ["http://127.0.0.1:9"]

[[route]]
path_prefix = "/"
upstream = "missing"
"#
    );
    let file = write(dir.path(), "portcullis.toml", &toml);
    let mut p = Proc::spawn(&mut portcullis(
        &["run", "--config", file.to_str().unwrap()],
        Path::new("/"),
    ));
    let status = p.wait_exit_async(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "stderr:\n{}", p.stderr());
    let out = Output {
        code: status.code(),
        stdout: p.stdout(),
        stderr: p.stderr(),
    };
    expect_problem(&out, &file, &toml, 3, "server.idle_timeuot", &["unknown"]);
    expect_problem(&out, &file, &toml, 13, "route[0].upstream", &["missing"]);
    assert_eq!(probe(&format!("127.0.0.1:{port}"), "/").await, None);
    assert_eq!(probe(&format!("127.0.0.1:{admin}"), "/healthz").await, None);
}

// ---------------------------------------------------------------- demo

/// Splits a shell command line the way a POSIX shell would for simple quoting.
fn shell_words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut in_word, mut quote) = (Vec::new(), String::new(), false, None);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {s:?}");
    if in_word {
        out.push(cur);
    }
    out
}

#[derive(Debug)]
struct Curl {
    label: String,
    expect: u16,
    cacert: Option<String>,
    url: String,
    headers: Vec<(String, String)>,
}

/// The curl commands of the demo text, with the status their `# NNN ...` label announces.
/// Commands under a comment that names no status are returned separately.
fn demo_commands(text: &str) -> (Vec<Curl>, Vec<String>) {
    let (mut labelled, mut unlabelled) = (Vec::new(), Vec::new());
    let mut label: Option<(u16, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix("# ") {
            label = comment
                .get(..3)
                .and_then(|c| c.parse().ok())
                .map(|code| (code, comment.to_string()));
            continue;
        }
        if !line.starts_with("curl ") {
            continue;
        }
        let Some((expect, text)) = label.take() else {
            unlabelled.push(line.to_string());
            continue;
        };
        let words = shell_words(line);
        let mut c = Curl {
            label: text,
            expect,
            cacert: None,
            url: String::new(),
            headers: Vec::new(),
        };
        let mut it = words.into_iter().skip(1);
        while let Some(w) = it.next() {
            match w.as_str() {
                "--cacert" => c.cacert = it.next(),
                "-H" | "--header" => {
                    let h = it.next().expect("a header after -H");
                    let (k, v) = h.split_once(':').expect("Name: value");
                    c.headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                u if u.starts_with("http://") || u.starts_with("https://") => c.url = w,
                other => panic!("the demo prints a curl option this test does not know: {other}"),
            }
        }
        assert!(!c.url.is_empty(), "no URL in {line:?}");
        labelled.push(c);
    }
    (labelled, unlabelled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_curl_commands_whose_labels_match_what_the_gateway_answers() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut p = Proc::spawn(&mut portcullis(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--certs",
            certs.to_str().unwrap(),
        ],
        dir.path(),
    ));
    p.wait_stdout(Duration::from_secs(60), "\"Press Ctrl-C\" line", |s| {
        s.contains("Press Ctrl-C")
    })
    .await;
    let text = p.stdout();
    let (cmds, unlabelled) = demo_commands(&text);
    if !unlabelled.is_empty() {
        eprintln!("curl commands without a status label: {unlabelled:#?}");
    }
    assert!(cmds.len() >= 6, "too few labelled curl commands:\n{text}");
    let with_token = |c: &&Curl| {
        c.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.starts_with("Bearer "))
    };
    assert!(
        cmds.iter().filter(with_token).any(|c| c.expect == 200),
        "a valid token is shown"
    );
    assert!(
        cmds.iter()
            .filter(with_token)
            .filter(|c| c.expect == 401)
            .count()
            >= 2,
        "an expired and a forged token are shown"
    );

    for c in &cmds {
        if let Some(rest) = c.url.strip_prefix("http://") {
            // The admin listener (metrics, readiness) is plain HTTP on loopback.
            assert!(
                rest.starts_with("127.0.0.1:"),
                "admin stays on loopback: {c:?}"
            );
            let r = Client::plain().get(&c.url, &[]).await;
            assert_eq!(
                r.status.as_u16(),
                c.expect,
                "`# {}` answered {}",
                c.label,
                r.status
            );
            continue;
        }
        assert!(c.url.starts_with("https://"), "the demo serves TLS: {c:?}");
        let ca = c.cacert.as_deref().expect("--cacert names the demo CA");
        assert!(
            Path::new(ca).starts_with(&certs)
                || Path::new(ca).starts_with(certs.canonicalize().unwrap()),
            "the CA is written under --certs: {ca}"
        );
        let pem = std::fs::read_to_string(ca).expect("the CA file exists");
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = Client::tls(&pem, false).get(&c.url, &headers).await;
        assert_eq!(
            r.status.as_u16(),
            c.expect,
            "`# {}` answered {}: {}",
            c.label,
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if c.expect == 200 {
            let seen = r.json();
            let upstream_id = &seen["headers"]["x-user-id"];
            if with_token(&c) {
                assert!(
                    upstream_id.as_str().is_some_and(|s| !s.is_empty()),
                    "the upstream sees X-User-Id: {seen}"
                );
            } else {
                assert_ne!(
                    upstream_id, "root",
                    "a client-sent X-User-Id reached the upstream"
                );
            }
        }
    }

    p.terminate();
    let status = p.wait_exit_async(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.stderr());
}
