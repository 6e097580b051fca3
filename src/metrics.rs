//! Every metric the gateway exports, registered in one place. Label values come
//! from the configuration (route, issuer and upstream ids) or from small fixed
//! sets, never from request data, so cardinality stays bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::denial::AUTH_RESULTS;

pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub auth_decisions_total: IntCounterVec,
    pub auth_duration_seconds: Histogram,
    pub token_cache_hits_total: IntCounter,
    pub token_cache_misses_total: IntCounter,
    pub token_bytes: Histogram,
    pub jwks_refresh_total: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_last_success_timestamp_seconds: IntGaugeVec,
    pub revocations: IntGaugeVec,
    pub revocation_sync_errors_total: IntCounter,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_duration_seconds: HistogramVec,
    pub upstream_errors_total: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub tls_handshake_errors_total: IntCounter,
    pub config_reloads_total: IntCounterVec,
    pub panics_total: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("portcullis")
}

fn hopts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("portcullis")
        .buckets(buckets.to_vec())
}

// Both expects run only in `Metrics::new`, over literal definitions into the
// registry it has just made: no input, configuration or request reaches them.
macro_rules! register {
    ($reg:expr, $m:expr) => {{
        let m = $m.expect("metric definitions are static and valid");
        $reg.register(Box::new(m.clone()))
            .expect("each metric is registered once");
        m
    }};
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            requests_total: register!(r, IntCounterVec::new(
                opts("requests_total", "Requests answered, by route, method and status."),
                &["route", "method", "status"]
            )),
            request_duration_seconds: register!(r, HistogramVec::new(
                hopts("request_duration_seconds", "Time from request head to response head.", LATENCY_BUCKETS),
                &["route"]
            )),
            auth_decisions_total: register!(r, IntCounterVec::new(
                opts("auth_decisions_total", "Authentication decisions by issuer and result."),
                &["issuer", "result"]
            )),
            auth_duration_seconds: register!(r, Histogram::with_opts(hopts(
                "auth_duration_seconds",
                "Time spent deciding on a token.",
                &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0]
            ))),
            token_cache_hits_total: register!(r, IntCounter::with_opts(opts(
                "token_cache_hits_total", "Tokens found already verified in the cache."))),
            token_cache_misses_total: register!(r, IntCounter::with_opts(opts(
                "token_cache_misses_total", "Tokens that had to be verified."))),
            token_bytes: register!(r, Histogram::with_opts(hopts(
                "token_bytes", "Size of presented tokens.",
                &[256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0]))),
            jwks_refresh_total: register!(r, IntCounterVec::new(
                opts("jwks_refresh_total", "Key set fetches by issuer and result."),
                &["issuer", "result"]
            )),
            jwks_keys: register!(r, IntGaugeVec::new(
                opts("jwks_keys", "Usable keys per issuer."), &["issuer"]
            )),
            jwks_last_success_timestamp_seconds: register!(r, IntGaugeVec::new(
                opts("jwks_last_success_timestamp_seconds", "Unix time of the last successful key load."),
                &["issuer"]
            )),
            revocations: register!(r, IntGaugeVec::new(
                opts("revocations", "Revocation entries by kind."), &["kind"]
            )),
            revocation_sync_errors_total: register!(r, IntCounter::with_opts(opts(
                "revocation_sync_errors_total", "Failed revocation syncs with Redis."))),
            upstream_requests_total: register!(r, IntCounterVec::new(
                opts("upstream_requests_total", "Responses from upstreams by status."),
                &["upstream", "status"]
            )),
            upstream_duration_seconds: register!(r, HistogramVec::new(
                hopts("upstream_duration_seconds", "Time from forwarding to the upstream's response head.", LATENCY_BUCKETS),
                &["upstream"]
            )),
            upstream_errors_total: register!(r, IntCounterVec::new(
                opts("upstream_errors_total", "Upstream failures by kind (connect, timeout, reset)."),
                &["upstream", "kind"]
            )),
            connections_active: register!(r, IntGaugeVec::new(
                opts("connections_active", "Open client connections per listener."), &["listener"]
            )),
            tls_handshake_errors_total: register!(r, IntCounter::with_opts(opts(
                "tls_handshake_errors_total", "TLS handshakes that failed."))),
            config_reloads_total: register!(r, IntCounterVec::new(
                opts("config_reloads_total", "Configuration reloads by result."), &["result"]
            )),
            panics_total: register!(r, IntCounter::with_opts(opts(
                "panics_total", "Request handlers that panicked (the connection was closed, the process kept serving)."))),
            registry: r,
        }
    }

    /// Exports every label combination the configuration can produce at zero,
    /// so that dashboards and alerts see the series before the first event.
    pub fn init_labels(&self, config: &crate::config::Config) {
        for issuer in config
            .issuers
            .iter()
            .map(|i| i.id.as_str())
            .chain(["unknown"])
        {
            for r in AUTH_RESULTS {
                self.auth_decisions_total.with_label_values(&[issuer, r]);
            }
        }
        for issuer in &config.issuers {
            for r in ["ok", "error"] {
                self.jwks_refresh_total.with_label_values(&[&issuer.id, r]);
            }
            self.jwks_keys.with_label_values(&[&issuer.id]);
            self.jwks_last_success_timestamp_seconds
                .with_label_values(&[&issuer.id]);
        }
        for kind in ["jti", "sub"] {
            self.revocations.with_label_values(&[kind]);
        }
        for u in config.upstreams.keys() {
            for kind in ["connect", "timeout", "reset"] {
                self.upstream_errors_total.with_label_values(&[u, kind]);
            }
        }
        for r in ["ok", "error"] {
            self.config_reloads_total.with_label_values(&[r]);
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Method labels, a fixed set: arbitrary client methods must not create series.
pub const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// The position of a method's label in [`METHOD_LABELS`].
pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

pub fn gauge_guard(g: IntGauge) -> GaugeGuard {
    g.inc();
    GaugeGuard(g)
}

/// Decrements a gauge when dropped, so an early return or a panic cannot leak a count.
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
