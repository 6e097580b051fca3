//! The admin status page (`/` on the admin listener) in a real browser:
//! headless Chromium (Debian's `chromium` package) renders it, it shows the
//! live figures, and it loads nothing but itself.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_TOKEN: &str = "status-page-admin-token-0123456789";
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'";

/// Fails (never skips) when the browser is missing.
fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: this test drives headless Chromium. CI installs it with \
         `apt-get install -y chromium` (Debian's package); on a dev machine run \
         `apt-get update && apt-get install -y chromium`"
    );
}

struct Browser {
    stdout: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

/// Runs headless Chromium once against `url` with `extra` flags, in a fresh
/// profile under `scratch`, in its own process group; the whole group is
/// killed on timeout (and swept after a normal exit).
async fn chromium(scratch: &Path, url: &str, extra: &[String]) -> Browser {
    let profile = scratch.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // The browser's own background fetches (update checks, accounts)
        // must not leave loopback: every host name fails to resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .env("HOME", scratch)
    .env("XDG_CONFIG_HOME", scratch.join("config"))
    .env("XDG_CACHE_HOME", scratch.join("cache"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let pid = child.id().expect("chromium has a pid");
    let out = tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await;
    // The launcher execs the browser, so `pid` leads the group that holds the
    // browser and its helpers (zygote, renderer, GPU, crash handler).
    kill_group(pid);
    let out = match out {
        Ok(r) => r.expect("waiting for chromium"),
        Err(_) => panic!(
            "chromium did not finish within {CHROMIUM_TIMEOUT:?} (killed process group {pid}): {url} {extra:?}"
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}) on {url} {extra:?}:\n{}",
        out.status,
        tail(&stderr, 40)
    );
    Browser {
        stdout: out.stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// SIGKILL to the process group `pgid` (one we created); errors are ignored,
/// the group is usually gone already.
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The text of the element carrying `id="<id>"` (up to its first child tag).
fn text_of(html: &str, id: &str) -> String {
    let attr = format!("id=\"{id}\"");
    let at = html
        .find(&attr)
        .unwrap_or_else(|| panic!("no element with {attr} in:\n{html}"));
    let rest = &html[at..];
    let open = rest.find('>').expect("tag ends") + 1;
    let close = rest[open..].find('<').expect("text ends");
    rest[open..open + close].trim().to_string()
}

/// The figure of element `id` as a number.
fn figure(html: &str, id: &str) -> u64 {
    let t = text_of(html, id);
    t.parse()
        .unwrap_or_else(|_| panic!("#{id} is not a number: {t:?}"))
}

/// Sum of every series of `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .map(|l| {
            let v = l.rsplit(' ').next().unwrap();
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample: {l}")) as u64
        })
        .sum()
}

/// Every value of attribute `name` (quoted or not) in `html`.
fn attribute_values(html: &str, name: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    let pat = format!("{name}=");
    while let Some(i) = lower[from..].find(&pat) {
        let at = from + i;
        from = at + pat.len();
        // Only an attribute: preceded by whitespace, not part of a longer name.
        if !html[..at].ends_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let rest = &html[from..];
        let v = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest
                .split(|c: char| c.is_ascii_whitespace() || c == '>')
                .next()
                .unwrap_or(""),
        };
        out.push(v.to_string());
    }
    out
}

/// The static checks: nothing in the page can make the browser fetch
/// anything from another host (or run anything).
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for banned in [
        "<script",
        "<link",
        "@import",
        "url(",
        "<iframe",
        "<frame",
        "<object",
        "<embed",
        "<img",
        "<video",
        "<audio",
        "<source",
        "<form",
        "<base",
        "javascript:",
    ] {
        assert!(
            !lower.contains(banned),
            "the status page contains {banned:?}:\n{html}"
        );
    }
    for attr in [
        "src",
        "href",
        "srcset",
        "action",
        "formaction",
        "poster",
        "background",
        "data",
        "ping",
    ] {
        for v in attribute_values(html, attr) {
            assert!(
                v.starts_with('/') && !v.starts_with("//") && !v.contains('\\'),
                "{attr}={v:?} is not a same-host relative link:\n{html}"
            );
        }
    }
    let hrefs = attribute_values(html, "href");
    assert!(
        hrefs.iter().any(|h| h == "/metrics"),
        "the page links /metrics: {hrefs:?}"
    );
    // The refresh reloads the page itself, never another URL.
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "the page refreshes itself every 5 s:\n{html}"
    );
    assert!(!lower.contains("url="), "a refresh to another URL:\n{html}");
}

/// Every URL request the page (not the browser's own machinery) started, from
/// a Chromium net log: requests initiated by the page's origin or made in its
/// network-isolation context (top-frame site http://127.0.0.1).
fn page_requests(netlog: &Path, origin: &str) -> Vec<String> {
    let text = std::fs::read_to_string(netlog)
        .unwrap_or_else(|e| panic!("chromium wrote no net log at {}: {e}", netlog.display()));
    let log: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the net log is not JSON ({e}): {}", netlog.display()));
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("the net log names URL_REQUEST_START_JOB");
    let mut urls = Vec::new();
    for e in log["events"].as_array().expect("net log events") {
        if e["type"].as_u64() != Some(start_job) {
            continue;
        }
        let p = &e["params"];
        let Some(url) = p["url"].as_str() else {
            continue; // the end of a job
        };
        let by_page = p["initiator"].as_str() == Some(origin)
            || p["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("http://127.0.0.1 "));
        if by_page {
            urls.push(url.to_string());
        }
    }
    urls
}

/// Flags for a `--dump-dom` run that also writes a net log to `netlog` and
/// logs the page's console (where CSP violations are reported) to stderr.
fn dump_dom_flags(netlog: &Path) -> Vec<String> {
    vec![
        format!("--log-net-log={}", netlog.display()),
        "--net-log-capture-mode=Default".to_string(),
        "--enable-logging=stderr".to_string(),
        "--v=0".to_string(),
        "--dump-dom".to_string(),
    ]
}

/// Console lines reporting a load the page's CSP blocked.
fn csp_blocks(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("Content Security Policy") || l.contains("Refused to"))
        .map(str::to_string)
        .collect()
}

/// A loopback server answering `/` with `html` (and `csp`, if any), 404 otherwise.
async fn serve_page(html: &'static str, csp: Option<&'static str>) -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let mut r = http::Response::new(Full::new(bytes::Bytes::from_static(
                            if req.uri().path() == "/" {
                                html.as_bytes()
                            } else {
                                b""
                            },
                        )));
                        if req.uri().path() != "/" {
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        let h = r.headers_mut();
                        h.insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                        if let Some(c) = csp {
                            h.insert("content-security-policy", c.parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The checks are not blind: each catches a page that does load (or try to
/// load) something from elsewhere. Statically, for several ways of pulling in
/// an asset; in the browser, a page with external assets and no CSP shows
/// them in the net log, and the same page under the status page's CSP shows
/// the blocked loads on the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_checks_catch_external_assets() {
    require_chromium();
    const GOOD: &str = r#"<html><head><meta http-equiv="refresh" content="5"><style>b{color:red}</style></head><body><a href="/metrics">m</a>BAD</body></html>"#;
    assert_self_contained(&GOOD.replace("BAD", ""));
    for bad in [
        r#"<img src="http://img.invalid/a.png">"#,
        r#"<a href="//evil.invalid/">x</a>"#,
        r#"<a href=https://evil.invalid/>x</a>"#,
        r#"<script>1</script>"#,
        r#"<link rel="icon" href="/favicon.ico">"#,
        r#"<style>@import "x.css";</style>"#,
        r#"<div style="background:url(http://x.invalid/)">x</div>"#,
        r#"<meta http-equiv="refresh" content="0;url=http://x.invalid/">"#,
    ] {
        let page = GOOD.replace("BAD", bad);
        let caught = std::panic::catch_unwind(|| assert_self_contained(&page));
        assert!(caught.is_err(), "the static check missed {bad}");
    }

    const EXTERNAL: &str = r#"<!doctype html><html><head><title>external</title><link rel="stylesheet" href="http://cdn.invalid/x.css"></head><body><img src="http://img.invalid/a.png"><script src="http://js.invalid/a.js"></script></body></html>"#;
    let (open, strict) = (
        serve_page(EXTERNAL, None).await,
        serve_page(EXTERNAL, Some(CSP)).await,
    );
    let scratch = tempfile::tempdir().unwrap();
    let (open_dir, strict_dir) = (scratch.path().join("open"), scratch.path().join("strict"));
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::create_dir_all(&strict_dir).unwrap();
    let (open_url, strict_url) = (format!("http://{open}/"), format!("http://{strict}/"));
    let (open_flags, strict_flags) = (
        dump_dom_flags(&open_dir.join("net.json")),
        dump_dom_flags(&strict_dir.join("net.json")),
    );
    let (open_run, strict_run) = tokio::join!(
        chromium(&open_dir, &open_url, &open_flags),
        chromium(&strict_dir, &strict_url, &strict_flags)
    );
    assert!(String::from_utf8_lossy(&open_run.stdout).contains("<title>external</title>"));
    assert!(String::from_utf8_lossy(&strict_run.stdout).contains("<title>external</title>"));

    let fetched = page_requests(&open_dir.join("net.json"), &format!("http://{open}"));
    for asset in [
        "http://cdn.invalid/x.css",
        "http://img.invalid/a.png",
        "http://js.invalid/a.js",
    ] {
        assert!(
            fetched.iter().any(|u| u == asset),
            "the net log check missed {asset}: {fetched:?}"
        );
    }
    let blocked = csp_blocks(&strict_run.stderr);
    for asset in [
        "http://cdn.invalid/x.css",
        "http://img.invalid/a.png",
        "http://js.invalid/a.js",
    ] {
        assert!(
            blocked.iter().any(|l| l.contains(asset)),
            "the console check missed the blocked {asset}:\n{}",
            tail(&strict_run.stderr, 40)
        );
    }
    let fetched = page_requests(&strict_dir.join("net.json"), &format!("http://{strict}"));
    assert_eq!(
        fetched,
        vec![strict_url.clone()],
        "under the CSP only the page loads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_live_figures_in_headless_chromium_without_external_assets() {
    require_chromium();
    let t0 = Instant::now();

    // A gateway with one issuer, one named route, the admin API and a local
    // revocation store.
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::ES256);
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let up = Upstream::start().await;
    let mut cfg = base_config("jwks_file = \"jwks.json\"", &up.url(), "\"ES256\"");
    let admin_line = "[admin]\nlisten = \"127.0.0.1:0\"";
    assert!(cfg.contains(admin_line), "base_config changed shape");
    cfg = cfg.replace(
        admin_line,
        &format!("{admin_line}\ntoken_file = \"admin.token\""),
    );
    cfg.push_str(
        "\n[[route]]\nid = \"status-api\"\npath_prefix = \"/api\"\nupstream = \"app\"\nauth = \"required\"\n\n\
         [revocation]\nstore = \"data/revocations.log\"\n",
    );
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let admin = gw.admin_addr().unwrap();
    let client = Client::plain();

    // Traffic: 3 allowed, 2 refused for want of a token.
    let token = key.token("alice", json!({}));
    for i in 0..3 {
        let r = client
            .get(
                &format!("http://{addr}/api/ok/{i}"),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for i in 0..2 {
        let r = client
            .get(&format!("http://{addr}/api/anon/{i}"), &[])
            .await;
        assert_eq!(r.status, 401, "{:?}", r.body);
    }
    assert_eq!(up.count(), 3);
    // One revocation, through the admin API.
    let r = client
        .request(
            "POST",
            &format!("http://{admin}/revocations"),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
            json!({"jti": "status-page-revoked"}).to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // The gateway's own count of requests (all routes, all statuses).
    let metrics = client.get(&format!("http://{admin}/metrics"), &[]).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let requests = metric_sum(&metrics, "portcullis_requests_total");
    assert_eq!(requests, 5, "requests_total counts the 5 proxied requests");

    let page = format!("http://{admin}/");
    let origin = format!("http://{admin}");
    let scratch = tempfile::tempdir().unwrap();
    let (dom_dir, shot_dir) = (scratch.path().join("dom"), scratch.path().join("shot"));
    let netlog: PathBuf = dom_dir.join("net.json");
    let png: PathBuf = shot_dir.join("status.png");
    std::fs::create_dir_all(&dom_dir).unwrap();
    std::fs::create_dir_all(&shot_dir).unwrap();

    // 1. The DOM as Chromium built it, with a net log and the console on stderr.
    // 2. Separately, a screenshot (the two browsers run side by side).
    let dom_flags = dump_dom_flags(&netlog);
    let shot_flags = vec![
        format!("--screenshot={}", png.display()),
        "--window-size=1200,1600".to_string(),
    ];
    let (dom_run, shot_run) = tokio::join!(
        chromium(&dom_dir, &page, &dom_flags),
        chromium(&shot_dir, &page, &shot_flags)
    );
    let dom = String::from_utf8_lossy(&dom_run.stdout).into_owned();

    // It renders: a real PNG of the requested size, with more than a blank page in it.
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}); chromium said:\n{}",
            png.display(),
            tail(&shot_run.stderr, 40)
        )
    });
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 1600), "screenshot size");
    assert!(
        bytes.len() > 20_000,
        "the screenshot is only {} bytes: a blank page?",
        bytes.len()
    );

    // It shows the live figures.
    assert!(
        dom.contains("<title>portcullis status</title>"),
        "chromium did not load the status page:\n{dom}\n---\n{}",
        tail(&dom_run.stderr, 40)
    );
    assert_eq!(text_of(&dom, "status"), "ready");
    assert!(dom.contains(r#"id="status" class="ok""#), "{dom}");
    assert_eq!(figure(&dom, "requests"), requests, "#requests vs /metrics");
    assert_eq!(figure(&dom, "allowed"), 3, "#allowed");
    assert_eq!(figure(&dom, "refused"), 2, "#refused");
    assert_eq!(figure(&dom, "revocations"), 1, "#revocations");
    // Issuers: the id, its iss, its key id.
    assert!(
        dom.contains(&format!(
            "<td>main</td><td><code>{ISS}</code></td><td><code>{}</code></td>",
            key.kid
        )),
        "issuer main with kid {} is listed:\n{dom}",
        key.kid
    );
    // Routes: id, host, prefix, methods, auth, upstream.
    assert!(
        dom.contains("<td>status-api</td><td>any</td><td><code>/api</code></td><td>any</td>"),
        "route status-api is listed:\n{dom}"
    );
    assert!(dom.contains("<td>app</td>"), "the route's upstream:\n{dom}");
    // Refusals by reason: the two requests without a token.
    assert!(
        dom.contains("<td>unknown</td><td>missing</td><td>2</td>"),
        "refusals by reason show 2 missing:\n{dom}"
    );
    assert!(
        dom.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "{dom}"
    );

    // No external assets, statically: the bytes the gateway serves...
    let raw = client.get(&page, &[]).await;
    assert_eq!(raw.status, 200);
    let html = String::from_utf8(raw.body.to_vec()).expect("UTF-8 page");
    assert_eq!(
        raw.headers
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap()),
        Some(CSP),
        "the status page's CSP"
    );
    assert_eq!(
        raw.headers["content-type"], "text/html; charset=utf-8",
        "content type"
    );
    assert_self_contained(&html);
    // ...and the DOM the browser built from them.
    assert_self_contained(&dom);
    // The raw page agrees with what the browser showed.
    assert_eq!(text_of(&html, "status"), "ready");
    assert_eq!(figure(&html, "requests"), requests);
    assert_eq!(figure(&html, "allowed"), 3);
    assert_eq!(figure(&html, "refused"), 2);

    // ...and dynamically: the browser made no request for the page other
    // than the page itself, and the CSP had nothing to block.
    let fetched = page_requests(&netlog, &origin);
    assert!(
        fetched.contains(&page),
        "the net log shows the page load itself ({page}): {fetched:?}"
    );
    for u in &fetched {
        assert!(
            *u == page || *u == format!("{origin}/favicon.ico"),
            "the page made the browser fetch {u} (all: {fetched:?})"
        );
    }
    let blocked = csp_blocks(&dom_run.stderr);
    assert!(
        blocked.is_empty(),
        "the page tried to load something its CSP blocked:\n{}",
        blocked.join("\n")
    );

    eprintln!(
        "status page: dom run {:?}, screenshot run {:?} ({} bytes), whole test {:?}",
        dom_run.elapsed,
        shot_run.elapsed,
        bytes.len(),
        t0.elapsed()
    );
    gw.shutdown().await;
}
