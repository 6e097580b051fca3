//! The forward itself: the request goes to one endpoint over a pooled
//! connection, bodies streamed both ways, bounded by `response_timeout`.

use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::upstream::{Upstream, UpstreamBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// The connection could not be made (refused, unreachable, TLS failed).
    Connect,
    Timeout,
    /// The connection broke before a response head arrived.
    Reset,
    NoEndpoint,
}

impl ForwardError {
    pub fn kind(self) -> &'static str {
        match self {
            ForwardError::Connect | ForwardError::NoEndpoint => "connect",
            ForwardError::Timeout => "timeout",
            ForwardError::Reset => "reset",
        }
    }
}

pub async fn forward(
    up: &Upstream,
    mut req: Request<UpstreamBody>,
    path_and_query: PathAndQuery,
) -> Result<Response<Incoming>, ForwardError> {
    let idx = up.pick().ok_or(ForwardError::NoEndpoint)?;
    let ep = &up.endpoints[idx];
    let uri = Uri::builder()
        .scheme(ep.scheme.clone())
        .authority(ep.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ForwardError::Connect)?;
    *req.uri_mut() = uri;
    // Upstreams are spoken to in HTTP/1.1 whatever the client used.
    *req.version_mut() = Version::HTTP_11;
    match tokio::time::timeout(up.response_timeout, up.client.request(req)).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) if e.is_connect() => {
            up.eject(idx);
            tracing::warn!(upstream = %up.name, "connect failed: {}", crate::auth::fetch::error_chain(&e));
            Err(ForwardError::Connect)
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %up.name, "upstream failed: {}", crate::auth::fetch::error_chain(&e));
            Err(ForwardError::Reset)
        }
    }
}
