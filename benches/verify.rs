//! Verification cost per algorithm, cold (signature checked) and cached (a
//! verified-token cache hit), plus what a cache hit saves. Run: `cargo bench --bench verify`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::FutureExt;
use jsonwebtoken::Algorithm;
use portcullis::auth::fetch;
use portcullis::auth::keys::IssuerKeys;
use portcullis::auth::verify::Verifier;
use portcullis::cli::jwk::{generate, public_jwk};
use portcullis::cli::mint::{claims, Signer};
use portcullis::config::Config;
use portcullis::metrics::Metrics;
use serde_json::json;

const ISS: &str = "https://idp.bench.example/";
const AUD: &str = "bench";

struct Setup {
    verifier: Verifier,
    token: String,
    signer: Signer,
}

fn setup(rt: &tokio::runtime::Runtime, alg: Algorithm) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let hmac = matches!(alg, Algorithm::HS256);
    let (signer, key_line) = if hmac {
        let secret = [7u8; 32];
        std::fs::write(dir.path().join("secret"), secret).expect("write");
        (
            Signer::from_secret(&secret, alg, None).expect("signer"),
            "secret_file = \"secret\"".to_string(),
        )
    } else {
        let keygen_alg = match alg {
            Algorithm::PS256 | Algorithm::RS256 => Algorithm::RS256,
            other => other,
        };
        let pair = generate(keygen_alg).expect("keygen");
        let mut jwk = public_jwk(&pair, keygen_alg).expect("jwk");
        jwk["alg"] = json!(format!("{alg:?}"));
        let kid = jwk["kid"].as_str().expect("kid").to_string();
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [jwk]}).to_string(),
        )
        .expect("write");
        (
            Signer::from_key_pair(&pair, Some(alg), Some(kid)).expect("signer"),
            "jwks_file = \"jwks.json\"".to_string(),
        )
    };
    let toml = format!(
        "[[issuer]]\nid = \"bench\"\nissuer = \"{ISS}\"\n{key_line}\naudiences = [\"{AUD}\"]\nalgorithms = [\"{alg:?}\"]\n"
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, toml).expect("write");
    let config = Config::load(&path).expect("valid bench config");
    let metrics = Arc::new(Metrics::new());
    let keys = IssuerKeys::new(Arc::new(config.issuers[0].clone()), metrics.clone());
    let client = fetch::client(None).expect("client");
    rt.block_on(keys.load_once(&client)).expect("keys load");
    let verifier = Verifier::new(vec![keys], 100_000, metrics);
    let mut c = claims(ISS, AUD, "alice", 3600);
    c.insert("scope".into(), json!("orders:read orders:write"));
    let token = signer.sign(&c).expect("sign");
    Setup {
        verifier,
        token,
        signer,
    }
}

fn bench(c: &mut Criterion) {
    portcullis::install_crypto_providers();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("verify");
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ] {
        let s = setup(&rt, alg);
        let name = format!("{alg:?}");
        group.bench_with_input(BenchmarkId::new("cold", &name), &s, |b, s| {
            b.iter(|| {
                s.verifier
                    .verify_uncached(&s.token)
                    .now_or_never()
                    .expect("a known kid never waits")
                    .expect("valid")
            })
        });
        group.bench_with_input(BenchmarkId::new("cached", &name), &s, |b, s| {
            b.iter(|| {
                s.verifier
                    .verify(&s.token)
                    .now_or_never()
                    .expect("a known kid never waits")
                    .expect("valid")
            })
        });
    }
    group.finish();

    // Every token new, with the cache on: what a first sighting costs beyond
    // the signature (parsing, the cache lookup, the doorkeeper). Then each
    // token twice in a row, the second admitting it to the cache: the mean of
    // a first and a second sighting. HS256 keeps the signature cheap so that
    // the rest shows; the pool is larger than the cache, so entries are
    // evicted as in production.
    let s = setup(&rt, Algorithm::HS256);
    let pool: Vec<String> = (0..300_000)
        .map(|i| {
            let mut c = claims(ISS, AUD, "alice", 3600);
            c.insert("jti".into(), json!(format!("bench-{i}")));
            s.signer.sign(&c).expect("sign")
        })
        .collect();
    let mut next = 0usize;
    let mut group = c.benchmark_group("first_seen");
    group.bench_function("HS256 verify_uncached", |b| {
        b.iter(|| {
            next = (next + 1) % pool.len();
            s.verifier
                .verify_uncached(&pool[next])
                .now_or_never()
                .expect("a known kid never waits")
                .expect("valid")
        })
    });
    group.bench_function("HS256 verify, cache on", |b| {
        b.iter(|| {
            next = (next + 1) % pool.len();
            s.verifier
                .verify(&pool[next])
                .now_or_never()
                .expect("a known kid never waits")
                .expect("valid")
        })
    });
    let mut twice = 0usize;
    group.bench_function("HS256 verify, cache on, each token twice", |b| {
        b.iter(|| {
            twice += 1;
            s.verifier
                .verify(&pool[(twice / 2) % pool.len()])
                .now_or_never()
                .expect("a known kid never waits")
                .expect("valid")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
