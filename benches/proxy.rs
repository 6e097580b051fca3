//! The request path besides verification: route matching among 1,000 routes,
//! path normalisation, and the header rewrite. Run: `cargo bench --bench proxy`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use portcullis::config::Config;
use portcullis::proxy::headers::{remove_hop_by_hop, IdentityPlan};
use portcullis::route::{normalize_path, RouteTable};
use serde_json::json;

fn config_with_routes(n: usize) -> Config {
    let mut toml = String::from("[upstream.app]\nendpoints = [\"http://127.0.0.1:9\"]\n\n[identity]\nheaders = { \"X-User-Id\" = \"sub\", \"X-User-Email\" = \"email\", \"X-User-Roles\" = \"roles\", \"X-Token-Issuer\" = \"iss\" }\nstrip = [\"X-User-*\"]\n");
    for i in 0..n {
        let host = match i % 4 {
            0 => format!("host = \"api{}.example.com\"\n", i % 50),
            1 => "host = \"*.example.com\"\n".to_string(),
            _ => String::new(),
        };
        toml.push_str(&format!(
            "\n[[route]]\n{host}path_prefix = \"/svc{}/v{}/items\"\nupstream = \"app\"\nauth = \"public\"\n",
            i / 10,
            i % 10
        ));
    }
    Config::parse(&toml, Path::new("bench.toml")).expect("valid bench config")
}

fn bench(c: &mut Criterion) {
    let config = config_with_routes(1000);
    let table = RouteTable::new(&config.routes, false);
    let mut g = c.benchmark_group("proxy");
    g.bench_function("route_lookup_1000_routes_exact_host", |b| {
        b.iter(|| {
            black_box(matches!(
                table.lookup(
                    black_box("api7.example.com"),
                    "/svc57/v7/items/42",
                    &Method::GET
                ),
                portcullis::route::RouteMatch::Found(_)
            ))
        })
    });
    g.bench_function("route_lookup_1000_routes_no_host_match", |b| {
        b.iter(|| {
            black_box(matches!(
                table.lookup(black_box("other.test"), "/svc99/v9/items/42", &Method::GET),
                portcullis::route::RouteMatch::Found(_)
            ))
        })
    });
    g.bench_function("normalize_path", |b| {
        b.iter(|| black_box(normalize_path(black_box("/svc57/v7/items/42/detail")).is_some()))
    });
    let plan = IdentityPlan::new(&config.identity);
    let claims = json!({
        "sub": "248289761001", "email": "jane@example.com", "roles": ["reader", "writer"],
        "iss": "https://idp.example.com/", "aud": "api", "exp": 1_900_000_000u64
    });
    let claims = claims.as_object().expect("object").clone();
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"),
        ("x-user-id", "forged"),
        ("connection", "keep-alive"),
        ("x-request-id", "abc-123"),
        ("content-type", "application/json"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    g.bench_function("header_rewrite", |b| {
        b.iter(|| {
            let mut h = base.clone();
            remove_hop_by_hop(&mut h);
            plan.strip_client_identity(&mut h);
            // Rendered every time, as for a token the cache has not kept.
            for (name, value) in plan.render(&claims, None) {
                h.insert(name, value);
            }
            black_box(h.len())
        })
    });
    g.bench_function("header_clone_only_baseline", |b| {
        b.iter(|| black_box(base.clone().len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
