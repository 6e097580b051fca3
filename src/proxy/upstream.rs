//! Upstream pools: pooled connections per upstream, endpoints used round robin,
//! an endpoint that refuses connections ejected for a while.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::HeaderValue;
use hyper::body::Incoming;

/// The request body as forwarded: as received, or bounded by the route's `max_body_bytes`.
pub type UpstreamBody = http_body_util::Either<Incoming, http_body_util::Limited<Incoming>>;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use super::pool::Pool;

use crate::config::{load_pem_certs, load_pem_key, UpstreamConfig};
use crate::metrics::Metrics;
use crate::series::UpstreamSeries;

/// How long an endpoint that refused a connection is left out.
const EJECT_FOR: Duration = Duration::from_secs(5);

pub struct Endpoint {
    pub authority: Authority,
    /// The authority as a `Host` value, for requests that arrived without one.
    pub host: HeaderValue,
    /// `scheme://authority`, what the connector dials.
    pub uri: http::Uri,
    pub pool: Arc<Pool>,
    /// Milliseconds since the pool's epoch until which this endpoint is skipped.
    ejected_until: AtomicU64,
}

pub struct Upstream {
    pub name: String,
    pub series: UpstreamSeries,
    pub endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    epoch: Instant,
    pub connector: HttpsConnector<HttpConnector>,
    pub response_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, metrics: &Metrics) -> Result<Upstream, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls_cfg = cfg.tls.as_ref();
        if let Some(ca) = tls_cfg.and_then(|t| t.ca.as_ref()) {
            for c in load_pem_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let tls = match tls_cfg.and_then(|t| t.cert.as_ref().zip(t.key.as_ref())) {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_pem_certs(cert)?, load_pem_key(key)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?,
            None => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = match tls_cfg.and_then(|t| t.server_name.clone()) {
            Some(name) => {
                let name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                    format!("tls.server_name \"{name}\" is not a valid server name")
                })?;
                https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => https,
        };
        let connector = https.enable_http1().wrap_connector(http);
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|u| {
                // `check` refuses such an endpoint first; never panic on one.
                let authority = u
                    .authority()
                    .cloned()
                    .ok_or_else(|| format!("upstream endpoint {u} has no host"))?;
                let scheme = u.scheme().cloned().unwrap_or(Scheme::HTTP);
                let uri = http::Uri::builder()
                    .scheme(scheme)
                    .authority(authority.clone())
                    .path_and_query("/")
                    .build()
                    .map_err(|e| format!("upstream endpoint {u}: {e}"))?;
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|e| format!("upstream endpoint {u}: {e}"))?;
                Ok(Endpoint {
                    authority,
                    host,
                    uri,
                    pool: Pool::new(cfg.idle_timeout),
                    ejected_until: AtomicU64::new(0),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Upstream {
            series: UpstreamSeries::new(metrics, &cfg.name),
            name: cfg.name.clone(),
            endpoints,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            connector,
            response_timeout: cfg.response_timeout,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next endpoint in round-robin order that is not ejected. The clock
    /// is read only when an endpoint has been ejected, not on every request.
    pub fn pick(&self) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut now = None;
        (0..n).map(|i| (start + i) % n).find(|i| {
            let ejected_until = &self.endpoints[*i].ejected_until;
            let until = ejected_until.load(Ordering::Relaxed);
            if until == 0 {
                return true;
            }
            if until > *now.get_or_insert_with(|| self.now_ms()) {
                return false;
            }
            // Served its time: back to the path without a clock read, unless
            // it was ejected again meanwhile.
            let _ = ejected_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
            true
        })
    }

    pub fn eject(&self, idx: usize) {
        if let Some(e) = self.endpoints.get(idx) {
            let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
            e.ejected_until.store(until, Ordering::Relaxed);
            tracing::warn!(
                upstream = %self.name,
                endpoint = %e.authority,
                "endpoint refused a connection; ejected for {EJECT_FOR:?}"
            );
        }
    }
}

/// Looked up by name on every request: foldhash, not SipHash (a table built
/// from the operator's configuration has no attacker-chosen keys).
pub type Upstreams = std::collections::HashMap<String, Arc<Upstream>, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn two_endpoints() -> Upstream {
        let cfg = UpstreamConfig {
            name: "u".into(),
            endpoints: vec![
                "http://127.0.0.1:1".parse().unwrap(),
                "http://127.0.0.1:2".parse().unwrap(),
            ],
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            tls: None,
        };
        Upstream::new(&cfg, &Metrics::new()).unwrap()
    }

    #[test]
    fn an_ejected_endpoint_is_skipped_until_its_time_is_served() {
        let up = two_endpoints();
        up.eject(0);
        for _ in 0..4 {
            assert_eq!(up.pick(), Some(1));
        }
        up.eject(1);
        assert_eq!(up.pick(), None, "every endpoint ejected");
        // Endpoint 0's time is up: it is picked again and its mark cleared.
        up.endpoints[0].ejected_until.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(up.pick(), Some(0));
        assert_eq!(up.endpoints[0].ejected_until.load(Ordering::Relaxed), 0);
        assert_eq!(up.pick(), Some(0));
    }
}
