//! Revocation lookups with 1,000,000 entries: the request path's cost (hash
//! of the `jti` plus an index probe) and the index's bytes per entry.
//! Run: `cargo bench --bench revocation`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::revocation::entry::Entry;
use portcullis::revocation::index::{jti_hash, subject_hash, Index};

const N: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let far = 4_000_000_000u64;
    let entries: Vec<Entry> = (0..N)
        .map(|i| {
            if i % 10 == 0 {
                Entry::Subject {
                    iss: "https://idp.example.com/".into(),
                    sub: format!("user-{i}"),
                    not_before: 1_700_000_000,
                    expires_at: far,
                }
            } else {
                Entry::Jti {
                    jti: format!("{i:08x}-5d1c-4b7e-9a0f-2c6b8e1d3f47"),
                    expires_at: far,
                }
            }
        })
        .collect();
    let rss_before = rss_bytes();
    let index = Index::default();
    index.rebuild(entries.iter());
    let rss_after = rss_bytes();
    eprintln!(
        "revocation index: {N} entries, {} table bytes ({:.1} per entry); process RSS grew {:.1} bytes per entry while building it",
        index.heap_bytes(),
        index.heap_bytes() as f64 / N as f64,
        rss_after.saturating_sub(rss_before) as f64 / N as f64
    );
    let hits: Vec<String> = (1..N)
        .step_by(7919)
        .filter(|i| i % 10 != 0)
        .map(|i| format!("{i:08x}-5d1c-4b7e-9a0f-2c6b8e1d3f47"))
        .collect();
    let misses: Vec<String> = (0..hits.len())
        .map(|i| format!("miss-{i:08x}-4b7e-9a0f-2c6b8e1d3f47"))
        .collect();
    let now = 1_800_000_000;
    let mut g = c.benchmark_group("revocation_1m");
    let mut i = 0usize;
    g.bench_function("jti_hit", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            black_box(index.jti_revoked(jti_hash(&hits[i]), now))
        })
    });
    g.bench_function("jti_miss", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            black_box(index.jti_revoked(jti_hash(&misses[i]), now))
        })
    });
    g.bench_function("token_check_miss_jti_and_subject", |b| {
        b.iter(|| {
            i = (i + 1) % misses.len();
            let m = &misses[i];
            black_box(
                index.jti_revoked(jti_hash(m), now)
                    || index.subject_revoked(
                        subject_hash("https://idp.example.com/", m),
                        1_750_000_000,
                        now,
                    ),
            )
        })
    });
    g.finish();
}

/// Resident memory of this process, from /proc (0 where there is none).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

criterion_group!(benches, bench);
criterion_main!(benches);
