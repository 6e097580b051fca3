//! Metric series resolved before the request that counts in them.
//!
//! `with_label_values` hashes the label strings and takes a read lock inside
//! the prometheus crate on every call; five such calls per proxied request
//! were the one lock left on the request path. A route, an upstream and an
//! issuer hold their own series instead: fixed ones at build time, and those
//! keyed by status (and method) resolved on first use into a few slots that
//! are read without a lock afterwards.

use std::cell::LazyCell;
use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter};

use crate::metrics::{method_index, Metrics, METHOD_LABELS};

/// Distinct (method, status) pairs a route keeps at hand; rarer ones are
/// counted through the label lookup, as before.
const SLOTS: usize = 16;

/// Counters of one series family told apart by a small key, e.g. a status.
pub struct CounterSlots {
    slots: [OnceLock<(u32, IntCounter)>; SLOTS],
}

impl Default for CounterSlots {
    fn default() -> Self {
        CounterSlots {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl CounterSlots {
    /// Increments the counter for `key`, resolving it with `resolve` the first
    /// time (or every time, once all slots hold other keys).
    pub fn inc(&self, key: u32, resolve: impl FnOnce() -> IntCounter) {
        // Resolved at most once, and only when a slot or the overflow needs it.
        let counter = LazyCell::new(resolve);
        let start = (key as usize).wrapping_mul(0x9E37_79B9) >> 7;
        for i in 0..SLOTS {
            let slot = &self.slots[(start + i) % SLOTS];
            let (k, held) = slot.get_or_init(|| (key, LazyCell::force(&counter).clone()));
            if *k == key {
                held.inc();
                return;
            }
        }
        LazyCell::force(&counter).inc();
    }
}

/// `requests_total` and `request_duration_seconds` of one route (or of the
/// requests that matched none).
pub struct RouteSeries {
    route: String,
    pub duration: Histogram,
    requests: CounterSlots,
}

impl RouteSeries {
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        RouteSeries {
            route: route.to_string(),
            duration: metrics.request_duration_seconds.with_label_values(&[route]),
            requests: CounterSlots::default(),
        }
    }

    pub fn count(&self, metrics: &Metrics, method: &http::Method, status: http::StatusCode) {
        let index = method_index(method);
        let key = u32::from(status.as_u16()) | ((index as u32) << 16);
        self.requests.inc(key, || {
            metrics.requests_total.with_label_values(&[
                &self.route,
                METHOD_LABELS[index],
                status.as_str(),
            ])
        });
    }
}

/// `upstream_requests_total` and `upstream_duration_seconds` of one upstream.
pub struct UpstreamSeries {
    upstream: String,
    pub duration: Histogram,
    responses: CounterSlots,
}

impl UpstreamSeries {
    pub fn new(metrics: &Metrics, upstream: &str) -> Self {
        UpstreamSeries {
            upstream: upstream.to_string(),
            duration: metrics
                .upstream_duration_seconds
                .with_label_values(&[upstream]),
            responses: CounterSlots::default(),
        }
    }

    pub fn count(&self, metrics: &Metrics, status: http::StatusCode) {
        self.responses.inc(u32::from(status.as_u16()), || {
            metrics
                .upstream_requests_total
                .with_label_values(&[&self.upstream, status.as_str()])
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, StatusCode};

    fn requests(m: &Metrics, route: &str, method: &str, status: &str) -> u64 {
        m.requests_total
            .with_label_values(&[route, method, status])
            .get()
    }

    #[test]
    fn counts_land_in_the_labelled_series_also_past_the_slots() {
        let m = Metrics::new();
        let s = RouteSeries::new(&m, "api");
        // More distinct pairs than slots: the overflow is still counted.
        let methods = [Method::GET, Method::POST, Method::PUT];
        let statuses: Vec<StatusCode> = (200..210)
            .map(|c| StatusCode::from_u16(c).expect("valid"))
            .collect();
        for round in 1..=3 {
            for method in &methods {
                for status in &statuses {
                    s.count(&m, method, *status);
                    assert_eq!(requests(&m, "api", method.as_str(), status.as_str()), round);
                }
            }
        }
        assert_eq!(requests(&m, "other", "GET", "200"), 0);
        s.duration.observe(0.5);
        assert_eq!(
            m.request_duration_seconds
                .with_label_values(&["api"])
                .get_sample_count(),
            1
        );

        let u = UpstreamSeries::new(&m, "app");
        for _ in 0..2 {
            u.count(&m, StatusCode::OK);
        }
        u.count(&m, StatusCode::BAD_GATEWAY);
        let up = |status| {
            m.upstream_requests_total
                .with_label_values(&["app", status])
                .get()
        };
        assert_eq!((up("200"), up("502")), (2, 1));
    }
}
