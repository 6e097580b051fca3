// Bounded randomized property tests (proptest is not a dependency): a seeded
// xorshift generator, a fixed number of cases per property, and on a failure
// the seed, the case number and a shrunk counterexample. Set
// PORTCULLIS_FUZZ_SEED to explore other seeds; the default keeps runs
// reproducible.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use portcullis::auth::fetch;
use portcullis::auth::keys::IssuerKeys;
use portcullis::auth::verify::Verifier;
use portcullis::cli::jwk::{generate, public_jwk};
use portcullis::cli::mint::{claims, Signer};
use portcullis::config::Config;
use portcullis::metrics::Metrics;
use portcullis::proxy::headers::{render_claim, IdentityPlan};
use portcullis::route::normalize_path;
use portcullis::server::framing::{FramingVerdict, FramingWatch};
use serde_json::{json, Map, Value};

const CASES: usize = 20_000;

// ---------------------------------------------------------------- generator

/// xorshift64*: small, fast, good enough to drive test inputs.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let seed = std::env::var("PORTCULLIS_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Rng((seed ^ salt.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed_note() -> String {
    format!(
        "PORTCULLIS_FUZZ_SEED={}",
        std::env::var("PORTCULLIS_FUZZ_SEED").unwrap_or_else(|_| "(default)".into())
    )
}

/// Removes pieces one at a time while `fails` still holds: a smaller counterexample.
fn shrink<T: Clone>(mut pieces: Vec<T>, fails: impl Fn(&[T]) -> bool) -> Vec<T> {
    let mut i = 0;
    let mut rounds = 0;
    while i < pieces.len() && rounds < 10_000 {
        rounds += 1;
        let mut fewer = pieces.clone();
        fewer.remove(i);
        if fails(&fewer) {
            pieces = fewer;
        } else {
            i += 1;
        }
    }
    pieces
}

// ---------------------------------------------------------------- normalize_path

/// Pieces that paths are built from: separators, dot segments raw and
/// encoded, encoded slashes and backslashes, NUL, matrix parameters, escapes
/// of unreserved characters, broken escapes, and plain text.
const PATH_PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "//",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    ".%2e",
    "%2e.",
    "%2e%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "\0",
    "%00",
    ";",
    ";x",
    ";jsessionid=1",
    "a",
    "b",
    "z",
    "A",
    "0",
    "9",
    "-",
    "_",
    "~",
    "%61",
    "%41",
    "%7e",
    "%7E",
    "%2d",
    "%5f",
    "%30",
    "%39",
    "%",
    "%%",
    "%2",
    "%3",
    "%6",
    "%36",
    "%31",
    "%32",
    "%65",
    "%25",
    "%252e",
    "%20",
    "é",
    "%c3%a9",
    "+",
    "=",
    "&",
    "@",
    ":",
    "admin",
];

fn gen_path(rng: &mut Rng) -> Vec<&'static str> {
    let mut pieces = vec!["/"];
    for _ in 0..rng.below(14) {
        pieces.push(*rng.pick(PATH_PIECES));
    }
    pieces
}

/// `None` when `out` breaks no rule, else the broken rule.
fn path_rule_broken(out: &str) -> Option<&'static str> {
    if !out.starts_with('/') {
        return Some("does not start with '/'");
    }
    let lower = out.to_ascii_lowercase();
    if out.contains('\\') || lower.contains("%5c") {
        return Some("contains a backslash");
    }
    if out.contains('\0') || lower.contains("%00") {
        return Some("contains NUL");
    }
    if lower.contains("%2f") {
        return Some("contains an encoded slash");
    }
    let dot = lower.split('/').any(|seg| {
        let seg = seg.replace("%2e", ".");
        let seg = seg.split(';').next().unwrap_or("");
        seg == "." || seg == ".."
    });
    if dot {
        return Some("contains a dot segment");
    }
    None
}

fn unsafe_output(input: &str) -> Option<String> {
    let out = normalize_path(input)?;
    path_rule_broken(&out).map(|rule| format!("normalize_path({input:?}) = {out:?}, which {rule}"))
}

fn not_idempotent(input: &str) -> Option<String> {
    let out = normalize_path(input)?;
    match normalize_path(&out) {
        Some(again) if again == out => None,
        again => Some(format!(
            "normalize_path is not idempotent: {input:?} -> {out:?} -> {again:?} \
             (the path forwarded upstream means another path once decoded)"
        )),
    }
}

/// Runs `property` over CASES generated paths; panics with a shrunk counterexample.
fn check_paths(salt: u64, property: fn(&str) -> Option<String>) -> usize {
    let mut rng = Rng::new(salt);
    let mut accepted = 0;
    for case in 0..CASES {
        let pieces = gen_path(&mut rng);
        let input: String = pieces.concat();
        if let Some(problem) = property(&input) {
            let small = shrink(pieces, |p| property(&p.concat()).is_some());
            panic!(
                "case {case} ({}): {problem}\nshrunk: {}",
                seed_note(),
                property(&small.concat()).unwrap()
            );
        }
        if normalize_path(&input).is_some() {
            accepted += 1;
        }
    }
    accepted
}

#[test]
fn normalize_path_never_returns_a_dot_segment_encoded_slash_backslash_or_nul() {
    let accepted = check_paths(1, unsafe_output);
    // The generator must exercise both outcomes, or the property says little.
    assert!(
        accepted > CASES / 20 && accepted < CASES - CASES / 20,
        "{accepted} of {CASES} paths accepted"
    );
    let mut rng = Rng::new(11);
    for case in 0..CASES {
        let input: String = gen_path(&mut rng).concat();
        if input.split('/').any(|s| s == "." || s == "..") {
            assert!(
                normalize_path(&input).is_none(),
                "case {case}: {input:?} has a dot segment and was accepted"
            );
        }
    }
}

#[test]
fn normalize_path_is_idempotent() {
    check_paths(1, not_idempotent);
}

// ---------------------------------------------------------------- render_claim

const CHAR_POOL: &[char] = &[
    'a', 'Z', '0', ' ', '\t', '\r', '\n', '\0', '\u{7f}', '\u{1b}', '%', ',', '"', ':', ';', '=',
    '\\', '/', 'é', '中', '😀', '\u{2028}', '\u{85}', '\u{feff}', '\u{200b}', '~',
];

fn gen_string(rng: &mut Rng) -> String {
    (0..rng.below(12)).map(|_| *rng.pick(CHAR_POOL)).collect()
}

fn gen_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => json!(rng.chance(2)),
        2 => match rng.below(3) {
            0 => json!(rng.next() as i64),
            1 => json!((rng.next() % 100_000) as f64 / 7.0),
            _ => json!(rng.next()),
        },
        3 | 4 => Value::String(gen_string(rng)),
        5 => Value::Array(
            (0..rng.below(5))
                .map(|_| gen_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(4) {
                m.insert(gen_string(rng), gen_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a scalar in a header should read as once decoded.
fn plain(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[test]
fn render_claim_always_gives_one_visible_ascii_header_value_that_decodes_back() {
    let mut rng = Rng::new(2);
    for case in 0..CASES {
        let v = gen_value(&mut rng, 2);
        let out = render_claim(&v);
        let Some(s) = out else {
            assert!(v.is_null(), "case {case}: {v} rendered to nothing");
            continue;
        };
        assert!(
            HeaderValue::from_str(&s).is_ok(),
            "case {case} ({}): {v} -> {s:?} is not a header value",
            seed_note()
        );
        assert!(
            s.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "case {case} ({}): {v} -> {s:?} has bytes outside visible ASCII",
            seed_note()
        );
        match &v {
            Value::Array(items) => {
                let want: Vec<String> = items.iter().filter_map(plain).collect();
                let got: Vec<Option<String>> = if want.is_empty() && s.is_empty() {
                    Vec::new()
                } else {
                    s.split(',').map(percent_decode).collect()
                };
                let got: Vec<String> = got.into_iter().map(|g| g.unwrap()).collect();
                assert_eq!(got, want, "case {case}: {v} -> {s:?} is ambiguous");
            }
            other => assert_eq!(
                percent_decode(&s),
                plain(other),
                "case {case}: {v} -> {s:?} does not decode back"
            ),
        }
    }
}

// ---------------------------------------------------------------- strip_client_identity

fn issuer_only_config(dir: &std::path::Path, key: &Value) -> String {
    std::fs::write(dir.join("jwks.json"), json!({"keys": [key]}).to_string()).unwrap();
    "[[issuer]]\nid = \"fuzz\"\nissuer = \"https://idp.fuzz.example/\"\njwks_file = \"jwks.json\"\naudiences = [\"fuzz\"]\nalgorithms = [\"ES256\"]\n".to_string()
}

/// Names the plan owns (normalized) and patterns, as configured below.
const OWNED_EXACT: &[&str] = &[
    "x-user-id",
    "x-user-email",
    "x-tenant",
    "x-jwt-claims",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];
const OWNED_PREFIX: &[&str] = &["x-user-", "x-internal-"];
const OTHER_NAMES: &[&str] = &[
    "x-request-id",
    "accept",
    "content-type",
    "user-agent",
    "x-userid",
    "x-user",
    "x-tenants",
    "x-tenant-id",
    "x-jwt-claims-x",
    "x-internal",
    "x-forwarded",
    "xx-user-id",
    "forwarded-for",
];
const OWNED_EXTRA: &[&str] = &[
    "x-user-anything",
    "x-user--id",
    "x-internal-secret",
    "x-user-",
];

fn owned(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    OWNED_EXACT.contains(&n.as_str()) || OWNED_PREFIX.iter().any(|p| n.starts_with(p))
}

/// `name` with a random case per letter and `_` or `-` per separator.
fn spelling(rng: &mut Rng, name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' if rng.chance(2) => '_',
            c if rng.chance(2) => c.to_ascii_uppercase(),
            c => c,
        })
        .collect()
}

#[test]
fn strip_client_identity_removes_every_spelling_of_owned_headers_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let pair = generate(Algorithm::ES256).unwrap();
    let jwk = public_jwk(&pair, Algorithm::ES256).unwrap();
    let toml = issuer_only_config(dir.path(), &jwk)
        + "\n[identity]\nheaders = { \"X-User-Id\" = \"sub\", \"X-User-Email\" = \"email\", \"X_Tenant\" = \"tenant\" }\n\
           strip = [\"X-User-*\", \"X_Internal-*\"]\nclaims_header = \"X-Jwt-Claims\"\n";
    let path = dir.path().join("fuzz.toml");
    let config = Config::parse(&toml, &path).unwrap_or_else(|p| panic!("{p}"));
    let plan = IdentityPlan::new(&config.identity);

    let mut rng = Rng::new(3);
    let mut stripped_total = 0;
    for case in 0..CASES {
        let mut h = HeaderMap::new();
        for i in 0..1 + rng.below(8) {
            let base = match rng.below(3) {
                0 => *rng.pick(OWNED_EXACT),
                1 => *rng.pick(OWNED_EXTRA),
                _ => *rng.pick(OTHER_NAMES),
            };
            let name = spelling(&mut rng, base);
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_str(&format!("v{i}")).unwrap());
        }
        let before = h.clone();
        plan.strip_client_identity(&mut h);
        for name in before.keys() {
            let kept: Vec<_> = h.get_all(name).iter().collect();
            if owned(name.as_str()) {
                assert!(
                    kept.is_empty(),
                    "case {case} ({}): {name} survived the strip",
                    seed_note()
                );
                stripped_total += 1;
            } else {
                let was: Vec<_> = before.get_all(name).iter().collect();
                assert_eq!(
                    kept,
                    was,
                    "case {case} ({}): {name} is not the plan's but was changed",
                    seed_note()
                );
            }
        }
        assert!(
            h.keys().all(|k| before.contains_key(k)),
            "case {case}: the strip added headers"
        );
    }
    assert!(stripped_total > CASES / 2);
}

// ---------------------------------------------------------------- verify_uncached

struct VerifySetup {
    verifier: Verifier,
    tokens: Vec<String>,
    _dir: tempfile::TempDir,
}

const FUZZ_ISS: &str = "https://idp.fuzz.example/";

/// A verifier as benches/verify.rs builds one (ES256 key from a JWKS file, no
/// cache), and a few valid tokens for it.
fn verify_setup() -> VerifySetup {
    portcullis::install_crypto_providers();
    let dir = tempfile::tempdir().unwrap();
    let pair = generate(Algorithm::ES256).unwrap();
    let jwk = public_jwk(&pair, Algorithm::ES256).unwrap();
    let kid = jwk["kid"].as_str().unwrap().to_string();
    let toml = issuer_only_config(dir.path(), &jwk);
    let path = dir.path().join("fuzz.toml");
    std::fs::write(&path, &toml).unwrap();
    let config = Config::load(&path).unwrap_or_else(|p| panic!("{p}"));
    let metrics = Arc::new(Metrics::new());
    let keys = IssuerKeys::new(Arc::new(config.issuers[0].clone()), metrics.clone());
    let client = fetch::client(None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(keys.load_once(&client)).expect("keys load");
    let verifier = Verifier::new(vec![keys], 0, metrics);
    let signer = Signer::from_key_pair(&pair, Some(Algorithm::ES256), Some(kid)).unwrap();
    let tokens = (0..4)
        .map(|i| {
            let mut c = claims(FUZZ_ISS, "fuzz", &format!("user{i}"), 3600);
            c.insert("scope".into(), json!("a b"));
            signer.sign(&c).unwrap()
        })
        .collect();
    VerifySetup {
        verifier,
        tokens,
        _dir: dir,
    }
}

/// Runs the verification, turning a panic into an Err naming it.
fn verify(s: &VerifySetup, token: &str) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| {
        s.verifier
            .verify_uncached(token)
            .now_or_never()
            .expect("a JWKS-file issuer never waits")
            .is_ok()
    }))
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn gen_garbage(rng: &mut Rng) -> String {
    let len = rng.below(400);
    (0..len)
        .map(|_| match rng.below(10) {
            0..=5 => *rng.pick(B64URL) as char,
            6 | 7 => '.',
            8 => (rng.below(95) as u8 + 0x20) as char,
            _ => *rng.pick(CHAR_POOL),
        })
        .collect()
}

/// One random change to a token: a character replaced, deleted, inserted or
/// case-flipped, parts swapped or borrowed from another valid token, a claim
/// rewritten under the old signature, the alg or kid changed.
fn mutate(rng: &mut Rng, t: &str, others: &[String]) -> String {
    let mut chars: Vec<char> = t.chars().collect();
    let parts: Vec<&str> = t.split('.').collect();
    match rng.below(10) {
        0 if !chars.is_empty() => {
            let i = rng.below(chars.len());
            chars[i] = *rng.pick(B64URL) as char;
            chars.into_iter().collect()
        }
        1 if !chars.is_empty() => {
            chars.remove(rng.below(chars.len()));
            chars.into_iter().collect()
        }
        2 => {
            let i = rng.below(chars.len() + 1);
            let c = if rng.chance(3) {
                *rng.pick(&['.', '=', '+', '/', ' ', '\0'])
            } else {
                *rng.pick(B64URL) as char
            };
            chars.insert(i, c);
            chars.into_iter().collect()
        }
        3 if !chars.is_empty() => {
            let i = rng.below(chars.len());
            chars[i] = if chars[i].is_ascii_lowercase() {
                chars[i].to_ascii_uppercase()
            } else {
                chars[i].to_ascii_lowercase()
            };
            chars.into_iter().collect()
        }
        4 if parts.len() == 3 => {
            let o: Vec<&str> = rng.pick(others).split('.').collect();
            let k = rng.below(3);
            let mut p = parts.clone();
            p[k] = o[k];
            p.join(".")
        }
        5 if parts.len() == 3 => {
            let n = rng.below(chars.len());
            chars[..n].iter().collect()
        }
        6 if parts.len() == 3 => {
            // A claim rewritten, the old signature kept.
            let mut c: Map<String, Value> = URL_SAFE_NO_PAD
                .decode(parts[1])
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            match rng.below(4) {
                0 => c.insert("sub".into(), json!("admin")),
                1 => c.insert("exp".into(), json!(4_102_444_800u64)),
                2 => c.insert("scope".into(), json!("a b admin")),
                _ => c.insert("aud".into(), json!(["fuzz", "other"])),
            };
            let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
            format!("{}.{p}.{}", parts[0], parts[2])
        }
        7 if parts.len() == 3 => {
            // The header rewritten: another alg, kid, typ or an extra member.
            let mut h: Map<String, Value> = URL_SAFE_NO_PAD
                .decode(parts[0])
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            match rng.below(5) {
                0 => h.insert(
                    "alg".into(),
                    json!(rng.pick(&["none", "HS256", "RS256", "ES384", "EdDSA", "es256"])),
                ),
                1 => h.insert("kid".into(), json!(gen_string(rng))),
                2 => h.insert(
                    "typ".into(),
                    json!(rng.pick(&["JWT", "at+jwt", "dpop+jwt"])),
                ),
                3 => h.remove("kid"),
                _ => h.insert("x".into(), json!(1)),
            };
            let h64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap());
            format!("{h64}.{}.{}", parts[1], parts[2])
        }
        8 if parts.len() == 3 => {
            // The signature's bytes changed, still canonical base64url.
            let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
            if sig.is_empty() {
                return t.to_string() + "A";
            }
            let i = rng.below(sig.len());
            sig[i] ^= 1 << rng.below(8);
            format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig))
        }
        _ => {
            let sep = *rng.pick(&[".", "..", ""]);
            format!(
                "{t}{sep}{}",
                gen_garbage(rng).chars().take(8).collect::<String>()
            )
        }
    }
}

#[test]
fn verify_uncached_never_panics_on_garbage_and_never_accepts_a_mutated_token() {
    let s = verify_setup();
    for t in &s.tokens {
        assert_eq!(verify(&s, t), Ok(true), "control: a valid token is refused");
    }
    let mut rng = Rng::new(4);
    for case in 0..CASES / 2 {
        let g = gen_garbage(&mut rng);
        match verify(&s, &g) {
            Ok(false) => {}
            Ok(true) => panic!("case {case} ({}): garbage {g:?} was accepted", seed_note()),
            Err(p) => panic!(
                "case {case} ({}): verify_uncached({g:?}) panicked: {p}",
                seed_note()
            ),
        }
    }
    let mut refused = 0;
    for case in 0..CASES / 2 {
        let original = rng.pick(&s.tokens).clone();
        let mut t = original.clone();
        for _ in 0..1 + rng.below(3) {
            t = mutate(&mut rng, &t, &s.tokens);
        }
        if s.tokens.contains(&t) {
            continue;
        }
        match verify(&s, &t) {
            Ok(false) => refused += 1,
            Ok(true) => panic!(
                "case {case} ({}): a mutated token was accepted:\n  original {original}\n  mutated  {t}",
                seed_note()
            ),
            Err(p) => panic!(
                "case {case} ({}): verify_uncached({t:?}) panicked: {p}",
                seed_note()
            ),
        }
    }
    assert!(
        refused > CASES / 2 - CASES / 10,
        "{refused} mutated tokens checked"
    );
}

// ---------------------------------------------------------------- framing watch

/// Pieces of HTTP/1 byte streams: request lines, every framing header,
/// chunk sizes with extensions, bodies, trailers, bare CR/LF and junk.
const REQUEST_LINES: &[&str] = &[
    "GET / HTTP/1.1\r\n",
    "POST /x HTTP/1.1\r\n",
    "PRI * HTTP/2.0\r\n",
    "\r\n",
];
const HEADER_LINES: &[&str] = &[
    "Host: a\r\n",
    "Content-Length: 0\r\n",
    "Content-Length: 5\r\n",
    "content-length: 17\r\n",
    "Content-Length: 5, 5\r\n",
    "Transfer-Encoding: chunked\r\n",
    "transfer-encoding: gzip, chunked\r\n",
    "Transfer-Encoding: xchunked\r\n",
    "Upgrade: websocket\r\n",
];
const BODY_PIECES: &[&str] = &[
    "5\r\nhello\r\n",
    "a;x=y\r\n0123456789\r\n",
    "0\r\n\r\n",
    "0\r\nTrailer: t\r\n\r\n",
    "ffffffffffffffffffff\r\n",
    "hello",
    "0123456789ab",
    "\r\n",
    "\r",
    "\n",
    " \t",
    "\0\u{7f}",
];

fn gen_wire(rng: &mut Rng) -> Vec<&'static str> {
    let mut pieces = Vec::new();
    for _ in 0..1 + rng.below(4) {
        pieces.push(*rng.pick(REQUEST_LINES));
        for _ in 0..rng.below(5) {
            pieces.push(*rng.pick(HEADER_LINES));
        }
        pieces.push("\r\n");
        for _ in 0..rng.below(4) {
            pieces.push(*rng.pick(BODY_PIECES));
        }
    }
    pieces
}

fn first_ambiguous_fed_as(bytes: &[u8], cuts: &[usize]) -> Option<u64> {
    let verdict = Arc::new(FramingVerdict::default());
    let mut watch = FramingWatch::new(256, verdict.clone());
    let mut at = 0;
    for &c in cuts {
        watch.feed(&bytes[at..c]);
        at = c;
    }
    watch.feed(&bytes[at..]);
    verdict.first_ambiguous()
}

#[test]
fn the_framing_watch_never_panics_and_its_verdict_never_depends_on_how_bytes_arrive() {
    let mut rng = Rng::new(7);
    for case in 0..CASES / 4 {
        let pieces = gen_wire(&mut rng);
        let bytes = pieces.concat().into_bytes();
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        let fails = |pieces: &[&str]| {
            let bytes = pieces.concat().into_bytes();
            let cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
            catch_unwind(AssertUnwindSafe(|| {
                first_ambiguous_fed_as(&bytes, &[]) != first_ambiguous_fed_as(&bytes, &cuts)
            }))
            .unwrap_or(true)
        };
        if fails(&pieces) {
            let small = shrink(pieces, fails);
            panic!(
                "case {case} ({}): verdict differs by split or panicked for {:?} cut at {cuts:?}",
                seed_note(),
                small.concat()
            );
        }
    }
}
