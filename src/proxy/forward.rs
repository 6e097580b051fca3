//! The forward itself: the request goes to one endpoint over a pooled
//! connection, bodies streamed both ways, bounded by `response_timeout`.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{header, Request, Response, Uri, Version};

use super::deadline::TimerSlot;
use super::exchange::{ExchangeError, Outgoing};
use super::pool::{PooledBody, SendError};
use super::upstream::{Endpoint, Upstream, UpstreamBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// The connection could not be made (refused, unreachable, TLS failed).
    Connect,
    Timeout,
    /// The connection broke before a response head arrived.
    Reset,
    NoEndpoint,
    /// The client's body went past the route's `max_body_bytes` mid-stream.
    BodyTooLarge,
}

impl ForwardError {
    pub fn kind(self) -> &'static str {
        match self {
            ForwardError::Connect | ForwardError::NoEndpoint => "connect",
            ForwardError::Timeout => "timeout",
            ForwardError::Reset | ForwardError::BodyTooLarge => "reset",
        }
    }
}

/// Whether the error came from the request body passing its limit (the
/// client's fault, not the upstream's).
pub(super) fn body_limit_hit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Sends `req`; the upstream has `response_timeout` from `started` to answer.
pub fn forward<'a>(
    up: &'a Upstream,
    mut req: Request<UpstreamBody>,
    path_and_query: PathAndQuery,
    timer: &'a Arc<TimerSlot>,
    started: std::time::Instant,
) -> impl std::future::Future<Output = Result<Response<PooledBody>, ForwardError>> + 'a {
    send(
        up,
        move |ep| {
            // Origin form on the wire; the endpoint's authority stands in for a missing Host.
            *req.uri_mut() = Uri::from(path_and_query);
            if !req.headers().contains_key(header::HOST) {
                req.headers_mut().insert(header::HOST, ep.host.clone());
            }
            // Upstreams are spoken to in HTTP/1.1 whatever the client used.
            *req.version_mut() = Version::HTTP_11;
            Outgoing::new(req)
        },
        timer,
        started,
    )
}

/// Sends what `encode` makes for the endpoint picked; the upstream has
/// `response_timeout` from `started` to answer.
/// (An `async move` block, not an `async fn`: see `pipeline::handle`.)
#[allow(clippy::manual_async_fn)] // see `handle`
pub fn send<'a>(
    up: &'a Upstream,
    encode: impl FnOnce(&Endpoint) -> Outgoing + 'a,
    timer: &'a Arc<TimerSlot>,
    started: std::time::Instant,
) -> impl std::future::Future<Output = Result<Response<PooledBody>, ForwardError>> + 'a {
    async move {
        let idx = up.pick().ok_or(ForwardError::NoEndpoint)?;
        let ep = &up.endpoints[idx];
        let out = encode(ep);
        // Pinned where it is: moving the send future into the timeout copied it
        // (about a kilobyte) on every request.
        let sent = std::pin::pin!(ep.pool.send(&up.connector, &ep.uri, out));
        let deadline = tokio::time::Instant::from_std(started) + up.response_timeout;
        match timer.within(deadline, sent).await {
            None => Err(ForwardError::Timeout),
            Some(Ok(resp)) => Ok(resp),
            Some(Err(SendError::Connect(e))) => {
                up.eject(idx);
                tracing::warn!(upstream = %up.name, "connect failed: {}", crate::auth::fetch::error_chain(&*e));
                Err(ForwardError::Connect)
            }
            Some(Err(SendError::Request(ExchangeError::BodyTooLarge))) => {
                Err(ForwardError::BodyTooLarge)
            }
            Some(Err(SendError::Request(e))) => {
                tracing::warn!(upstream = %up.name, "upstream failed: {e}");
                Err(ForwardError::Reset)
            }
        }
    }
}
