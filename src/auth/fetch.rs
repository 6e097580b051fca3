//! Fetching identity-provider documents (discovery, JWKS) over HTTPS, with a
//! time limit and a size limit, off the request path.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Identity-provider documents are small; a larger answer is a misconfiguration or an attack.
const MAX_DOCUMENT: usize = 1024 * 1024;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct Fetched {
    pub body: Bytes,
    /// `Cache-Control: max-age`, when the answer had one.
    pub max_age: Option<Duration>,
}

/// A client that trusts the public web roots and, if given, one extra CA.
pub fn client(extra_ca: Option<&Path>) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = extra_ca {
        for cert in crate::config::load_pem_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

pub async fn get(client: &HttpsClient, url: &str, timeout: Duration) -> Result<Fetched, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("bad URL {url}"))?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_max_age);
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .to_bytes();
        Ok(Fetched { body, max_age })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
}

fn parse_max_age(v: &str) -> Option<Duration> {
    v.split(',').find_map(|d| {
        let (k, val) = d.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("max-age") {
            val.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Discovery: `{issuer without trailing /}/.well-known/openid-configuration`.
pub async fn discover(
    client: &HttpsClient,
    issuer: &str,
    timeout: Duration,
) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = get(client, &url, timeout).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&doc.body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    let found = v.get("issuer").and_then(|i| i.as_str()).unwrap_or("");
    if found != issuer {
        return Err(format!(
            "{url}: the document names issuer \"{found}\", not \"{issuer}\""
        ));
    }
    let jwks = v
        .get("jwks_uri")
        .and_then(|j| j.as_str())
        .ok_or_else(|| format!("{url}: no jwks_uri"))?;
    let uri: http::Uri = jwks
        .parse()
        .map_err(|_| format!("{url}: jwks_uri is not a URL"))?;
    let loopback = uri.host().is_some_and(crate::config::is_loopback_host);
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => return Err(format!("{url}: jwks_uri must be https")),
    }
    Ok(jwks.to_string())
}

pub type SharedClient = Arc<HttpsClient>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_among_other_directives() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }
}
