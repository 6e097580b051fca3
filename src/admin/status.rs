//! The status page at the admin listener's `/`: what a human on call wants at a
//! glance. Self-contained HTML (no external assets, no script), refreshed by
//! the browser every 5 s.

use std::fmt::Write;
use std::time::Instant;

use prometheus::core::Collector;

use super::{readiness, AdminState};
use crate::auth::verify::now_unix;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Sum of a counter family, optionally only the series whose `label` equals `value`.
fn total(c: &prometheus::IntCounterVec, label: Option<(&str, &str)>) -> u64 {
    c.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            })
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

pub fn render(state: &AdminState, started: Instant) -> String {
    let rt = state.runtime.load();
    let m = &rt.metrics;
    let (ready, reasons, degraded) = readiness(state);
    let up = started.elapsed().as_secs().max(1);
    let requests = total(&m.requests_total, None);
    let allowed = total(&m.auth_decisions_total, Some(("result", "allowed")));
    let decisions = total(&m.auth_decisions_total, None);
    let refused = decisions - allowed;
    let now = now_unix();
    let mut h = String::with_capacity(8192);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>portcullis status</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
th{{background:#f3f3f3}}.ok{{color:#1a7f37}}.bad{{color:#c62828}}.warn{{color:#b26a00}}code{{font-size:13px}}</style></head><body>
<h1>portcullis</h1>
<p>Status: <b id="status" class="{cls}">{status}</b> &middot; up {up}s &middot; version {ver}</p>"#,
        cls = if ready { "ok" } else { "bad" },
        status = if ready { "ready" } else { "not ready" },
        ver = env!("CARGO_PKG_VERSION"),
    );
    for r in &reasons {
        let _ = write!(h, r#"<p class="bad">{}</p>"#, esc(r));
    }
    for d in &degraded {
        let _ = write!(h, r#"<p class="warn">degraded: {}</p>"#, esc(d));
    }
    let _ = write!(
        h,
        r#"<h2>Traffic since start</h2><table>
<tr><th>requests</th><td id="requests">{requests}</td><td>{rps:.2}/s</td></tr>
<tr><th>tokens allowed</th><td id="allowed">{allowed}</td><td>{aps:.2}/s</td></tr>
<tr><th>tokens refused</th><td id="refused">{refused}</td><td>{fps:.2}/s</td></tr>
<tr><th>token cache hits / misses</th><td>{hits} / {misses}</td><td></td></tr></table>"#,
        rps = requests as f64 / up as f64,
        aps = allowed as f64 / up as f64,
        fps = refused as f64 / up as f64,
        hits = m.token_cache_hits_total.get(),
        misses = m.token_cache_misses_total.get(),
    );
    h.push_str(
        "<h2>Refusals by reason</h2><table><tr><th>issuer</th><th>result</th><th>count</th></tr>",
    );
    for mf in m.auth_decisions_total.collect() {
        for s in mf.get_metric() {
            let v = s.get_counter().get_value() as u64;
            let label = |n: &str| {
                s.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            if v > 0 && label("result") != "allowed" {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{v}</td></tr>",
                    esc(&label("issuer")),
                    esc(&label("result"))
                );
            }
        }
    }
    h.push_str("</table><h2>Issuers</h2><table><tr><th>id</th><th>iss</th><th>keys (kid)</th><th>last successful load</th><th>last refresh</th></tr>");
    for i in &rt.verifier.issuers {
        let kids = i
            .current()
            .map(|k| k.kids().join(", "))
            .unwrap_or_else(|| "none".into());
        let last = i.last_success_unix();
        let age = if last == 0 {
            "never".to_string()
        } else {
            format!("{}s ago", now.saturating_sub(last))
        };
        let refresh = match i.last_error() {
            Some(e) => format!(r#"<span class="bad">error: {}</span>"#, esc(&e)),
            None if last == 0 => "pending".into(),
            None => r#"<span class="ok">ok</span>"#.into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{age}</td><td>{refresh}</td></tr>",
            esc(i.id()),
            esc(&i.config.issuer),
            esc(&kids)
        );
    }
    h.push_str("</table><h2>Routes</h2><table><tr><th>id</th><th>host</th><th>prefix</th><th>methods</th><th>auth</th><th>upstream</th></tr>");
    for r in &rt.config.routes {
        let host = match &r.host {
            Some(crate::config::HostMatch::Exact(x)) => x.clone(),
            Some(crate::config::HostMatch::Wildcard(x)) => format!("*{x}"),
            None => "any".into(),
        };
        let methods = r
            .methods
            .as_ref()
            .map(|ms| ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "any".into());
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.id),
            esc(&host),
            esc(&r.path_prefix),
            esc(&methods),
            format!("{:?}", r.auth).to_ascii_lowercase(),
            esc(&r.upstream)
        );
    }
    let revs = &state.revocations;
    let sync = match &revs.redis {
        None => "local store only".to_string(),
        Some(r) if r.connected() => r#"<span class="ok">synced with Redis</span>"#.to_string(),
        Some(r) => format!(
            r#"<span class="bad">Redis unreachable: {}</span>"#,
            esc(&r.last_error().unwrap_or_default())
        ),
    };
    let _ = write!(
        h,
        r#"</table><h2>Revocation</h2><table><tr><th>entries</th><td id="revocations">{}</td></tr><tr><th>sync</th><td>{sync}</td></tr><tr><th>sync errors</th><td>{}</td></tr></table>
<p>Metrics: <a href="/metrics">/metrics</a> &middot; readiness: <a href="/readyz">/readyz</a></p></body></html>"#,
        revs.len(),
        m.revocation_sync_errors_total.get()
    );
    h
}
