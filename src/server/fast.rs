//! HTTP/1 requests served from their bytes, without hyper.
//!
//! Most requests a gateway sees are the same shape: a `GET` or `HEAD` with no
//! body, a `Host`, a bearer token, a few plain headers, sent whole in one
//! packet on a kept-alive connection. For those, hyper's server built a
//! header map that the rewrite then edited and hyper wrote out again, and
//! that was more of a request's CPU than its authentication. Here such a
//! request is read with `httparse` into borrowed slices, authenticated by the
//! same code as every other request (`pipeline::admit`), and its upstream
//! head is written straight from the client's lines.
//!
//! Anything else (a body, an upgrade, `Expect`, hop-by-hop or forwarding
//! headers from the client, a header the identity plan owns, a head split
//! across reads, pipelined requests, a route with CORS or binding rules, a
//! refusal that comes before verification) is handed to hyper with the bytes
//! read so far, and hyper serves the connection from there: this path only
//! ever takes the requests whose handling it shares with the general one.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::framing::Watched;
use crate::config::AuthMode;
use crate::denial::Denial;
use crate::pipeline::{self, ConnInfo, Ctx, Runtime, Target};
use crate::proxy::exchange::{write_field, write_fields, Outgoing};
use crate::proxy::forward::send;
use crate::proxy::headers::{remove_hop_by_hop, HOP_BY_HOP};
use crate::proxy::pool::PooledBody;
use crate::route::{normalize_path, Route, RouteMatch};

/// How a run of requests on this path ended.
pub enum Outcome {
    /// The connection fell idle between requests (see `framing::Watched`).
    Parked,
    /// The client closed or asked to close, or the connection failed.
    Closed,
    /// A request this path does not serve: hyper takes these bytes and the
    /// rest of the connection.
    Handoff(BytesMut),
}

/// Header lines this path reads; a head with more goes to hyper.
const MAX_FIELDS: usize = 32;

/// Serves requests until one is not for this path, the connection parks, or
/// it closes. `first` is true for a connection's first request, which must
/// arrive within `header_read_timeout` as under hyper.
pub async fn serve<T>(
    io: &mut Watched<T>,
    rt: &arc_swap::ArcSwap<Runtime>,
    conn: &Arc<ConnInfo>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    mut first: bool,
) -> Outcome
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        // A drain closes a connection between requests (an idle one parks
        // within `PARK_AFTER` and is closed by the listener).
        if *stop.borrow() {
            return Outcome::Closed;
        }
        buf.reserve(4096);
        let read = if first {
            let wait = rt.load().config.server.header_read_timeout;
            tokio::select! {
                r = tokio::time::timeout(wait, io.read_buf(&mut buf)) => match r {
                    Ok(r) => r,
                    Err(_) => return Outcome::Closed,
                },
                _ = stop.changed() => return Outcome::Closed,
            }
        } else {
            io.read_buf(&mut buf).await
        };
        first = false;
        match read {
            Ok(0) if io.is_parked() => return Outcome::Parked,
            Ok(0) | Err(_) => return Outcome::Closed,
            Ok(_) => {}
        }
        let rt = rt.load_full();
        let started = Instant::now();
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut parsed = httparse::Request::new(&mut fields);
        let len = match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return Outcome::Handoff(buf),
        };
        // Pipelined requests, or bytes of a body: hyper's to frame.
        if len != buf.len() || len > rt.config.server.max_header_bytes {
            return Outcome::Handoff(buf);
        }
        let Some(req) = Plain::read(&rt, &parsed) else {
            return Outcome::Handoff(buf);
        };
        let close = req.close;
        let mut next = BytesMut::new();
        out.clear();
        let served = {
            // Pinned where it is made and caught there: moving it into the
            // catch copied it (several kilobytes) on every request.
            let mut pinned =
                std::pin::pin!(respond(&rt, conn, &req, started, io, &mut out, &mut next));
            std::panic::AssertUnwindSafe(pinned.as_mut())
                .catch_unwind()
                .await
        };
        let answered = match served {
            Ok(Served::Done) => true,
            Ok(Served::Broken) => false,
            Ok(Served::Gone) => return Outcome::Closed,
            Ok(Served::Handoff) => {
                buf.extend_from_slice(&next);
                return Outcome::Handoff(buf);
            }
            Err(_) => {
                // As the general path answers a panic: a 500, counted and logged.
                rt.metrics.panics_total.inc();
                let mut ctx = Ctx::new(
                    pipeline::request_id(None),
                    req.method.clone(),
                    req.target.to_string(),
                );
                ctx.host = req.host.to_string();
                tracing::error!(request_id = ?ctx.request_id, "request handler panicked");
                let resp = pipeline::internal_error();
                pipeline::record(&rt, conn, &ctx, resp.status(), started);
                out.clear();
                write_response(io, &mut out, resp, &req, &ctx).await;
                // Part of an answer may have gone out before the panic: what
                // follows on this connection could not be trusted to frame.
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
        };
        if !answered {
            return Outcome::Closed;
        }
        conn.framing.answered_one();
        if close {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        if !next.is_empty() {
            return Outcome::Handoff(next);
        }
        buf.clear();
    }
}

/// A request this path can serve, borrowed from the read buffer.
struct Plain<'b> {
    method: Method,
    /// The request target: origin-form, path and query.
    target: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    host: &'b str,
    authorization: Option<&'b [u8]>,
    request_id: Option<&'b [u8]>,
    /// The client's header lines, in order, to be copied upstream as they are.
    fields: &'b [httparse::Header<'b>],
    close: bool,
}

impl<'b> Plain<'b> {
    /// The request, if it is one this path serves; `None` hands it to hyper.
    fn read(rt: &Runtime, req: &'b httparse::Request<'b, 'b>) -> Option<Plain<'b>> {
        if req.version != Some(1) {
            return None;
        }
        let method = match req.method? {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            _ => return None,
        };
        let target = req.path?;
        // Origin-form, and a target hyper's URI parser would take.
        if !target.starts_with('/') || http::uri::PathAndQuery::try_from(target).is_err() {
            return None;
        }
        let mut host = None;
        let mut authorization = None;
        let mut request_id = None;
        let mut close = false;
        let cookie_tokens = rt.config.token.cookie.is_some();
        for f in req.headers.iter() {
            let name = f.name;
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("host") {
                // Visible ASCII, as `HeaderValue::to_str` reads it on the general path.
                if host.is_some()
                    || !f
                        .value
                        .iter()
                        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
                {
                    return None;
                }
                host = Some(std::str::from_utf8(f.value).ok()?);
            } else if is("authorization") {
                if authorization.is_some() {
                    return None;
                }
                authorization = Some(f.value);
            } else if is("x-request-id") {
                if request_id.is_some() {
                    return None;
                }
                request_id = Some(f.value);
            } else if is("connection") {
                if f.value.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            } else if SENT_TO_HYPER.iter().any(|n| is(n))
                || HOP_BY_HOP.iter().any(|h| is(h.as_str()))
                || (cookie_tokens && is("cookie"))
                || rt.identity.owns(name)
            {
                return None;
            }
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Some(Plain {
            method,
            target,
            path,
            query,
            host: host?,
            authorization,
            request_id,
            fields: req.headers,
            close,
        })
    }
}

/// Client headers whose handling is the general path's, besides the
/// hop-by-hop ones (`proxy::headers::HOP_BY_HOP`): bodies and what hyper
/// answers for them, forwarding headers (the rules for trusted proxies), and
/// DPoP proofs.
const SENT_TO_HYPER: &[&str] = &[
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "dpop",
];

enum Served {
    Done,
    /// Nothing was answered, counted or logged: hyper takes the request.
    Handoff,
    /// The client hung up before its answer was ready: the request is
    /// dropped, as hyper drops it (nothing counted, nothing logged).
    Gone,
    /// The client connection failed while its answer was written.
    Broken,
}

/// One request, its answer written. While the upstream is asked, the client
/// is watched as hyper watches it; bytes it sends meanwhile are kept in
/// `next` (its next request, and hyper's).
async fn respond<T>(
    rt: &Runtime,
    conn: &ConnInfo,
    req: &Plain<'_>,
    started: Instant,
    io: &mut Watched<T>,
    out: &mut Vec<u8>,
    next: &mut BytesMut,
) -> Served
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // Decided before anything is counted, so that a handoff leaves no trace.
    let Some(path) = normalize_path(req.path) else {
        return Served::Handoff;
    };
    let route = match rt
        .routes
        .lookup(&pipeline::route_host(req.host), &path, &req.method)
    {
        RouteMatch::Found(r) => r,
        _ => return Served::Handoff,
    };
    if route.cors.is_some()
        || route.require_bound_token
        || rt.assertions.is_some()
        || req.query.is_some_and(|q| q.contains("access_token"))
    {
        return Served::Handoff;
    }
    let token = match (route.auth, req.authorization) {
        (AuthMode::Public, _) => None,
        (_, Some(v)) if rt.config.token.header => match crate::auth::token::plain_bearer(v) {
            Some(t) => Some(t),
            None => return Served::Handoff,
        },
        (AuthMode::Optional, None) => None,
        _ => return Served::Handoff,
    };
    let request_id = pipeline::request_id(
        req.request_id
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .as_ref(),
    );
    // Logged as `pipeline::path_for_log` writes it (no token can be in the query here).
    let logged = match req.query {
        Some("") if rt.config.token.query => req.path,
        _ => req.target,
    };
    let mut ctx = Ctx::new(request_id, req.method.clone(), logged.to_string());
    ctx.host = req.host.to_string();
    ctx.route = Some(route.clone());
    // Counted as the general path counts it, though no body header can
    // make a request of this shape ambiguous.
    let reply = if conn.framing.next_request_is_ambiguous() {
        Err(Denial::AmbiguousFraming)
    } else {
        let mut call = std::pin::pin!(forward(rt, conn, req, route, &path, token, &mut ctx));
        let mut watching = true;
        loop {
            tokio::select! {
                biased;
                r = &mut call => break r,
                r = io.read_buf(next), if watching => match r {
                    Ok(0) | Err(_) => return Served::Gone,
                    Ok(_) => watching = false,
                },
            }
        }
    };
    // Counted and logged when the head is ready, as hyper's path does.
    let written = match reply {
        Ok(resp) => {
            pipeline::record(rt, conn, &ctx, resp.status(), started);
            write_response(io, out, resp, req, &ctx).await
        }
        Err(denial) => {
            let resp = pipeline::refuse(rt, &mut ctx, denial);
            pipeline::record(rt, conn, &ctx, resp.status(), started);
            write_response(io, out, resp, req, &ctx).await
        }
    };
    if written {
        Served::Done
    } else {
        Served::Broken
    }
}

/// Authenticates, writes the upstream head from the client's lines, and sends it.
async fn forward(
    rt: &Runtime,
    conn: &ConnInfo,
    req: &Plain<'_>,
    route: &Route,
    path: &str,
    token: Option<&str>,
    ctx: &mut Ctx,
) -> Result<Response<PooledBody>, Denial> {
    let verified = match token {
        Some(token) => {
            pipeline::measure_token(rt, token)?;
            let no_headers = HeaderMap::new();
            let target = Target {
                headers: &no_headers,
                method: &req.method,
                path: req.path,
            };
            Some(pipeline::admit(rt, conn, token, false, &target, route, ctx).await?)
        }
        None => None,
    };
    let upstream = rt
        .upstreams
        .get(&route.upstream)
        .ok_or(Denial::NoHealthyEndpoint)?;

    let identity = verified
        .as_ref()
        .map_or(&[][..], |v| rt.identity.rendered(v, token));
    let mut head = Vec::with_capacity(
        req.target.len()
            + req
                .fields
                .iter()
                .map(|f| f.name.len() + f.value.len() + 4)
                .sum::<usize>()
            + identity
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>()
            + 160,
    );
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    // The upstream gets the path as routed (unreserved escapes decoded), and
    // an empty query dropped where tokens are stripped from queries, as
    // `pipeline::rewrite` writes it.
    let strip_query = rt.config.token.query || !route.forward_authorization;
    if path == req.path && (req.query.is_none() || !strip_query) {
        head.extend_from_slice(req.target.as_bytes());
    } else {
        head.extend_from_slice(path.as_bytes());
        match req.query {
            Some(q) if !q.is_empty() || !strip_query => {
                head.push(b'?');
                head.extend_from_slice(q.as_bytes());
            }
            _ => {}
        }
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for f in req.fields {
        let is = |n: &str| f.name.eq_ignore_ascii_case(n);
        // Credentials stay at the gateway unless the route forwards them;
        // the request id and `Connection` are the gateway's own.
        if (is("authorization") && !route.forward_authorization)
            || is("x-request-id")
            || is("connection")
        {
            continue;
        }
        write_field(&mut head, f.name.as_bytes(), f.value);
    }
    for (name, value) in identity {
        write_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    write_field(&mut head, b"x-forwarded-for", conn.forwarded_for.as_bytes());
    let proto: &[u8] = if conn.tls { b"https" } else { b"http" };
    write_field(&mut head, b"x-forwarded-proto", proto);
    write_field(&mut head, b"x-forwarded-host", req.host.as_bytes());
    write_field(&mut head, b"x-request-id", ctx.request_id.as_bytes());
    head.extend_from_slice(b"\r\n");

    let head_request = req.method == Method::HEAD;
    let sent = Instant::now();
    let call = std::pin::pin!(send(
        upstream,
        move |_| Outgoing::head_only(head, head_request),
        &conn.timer,
        sent,
    ));
    let resp = pipeline::call_upstream(rt, upstream, call, sent, ctx).await?;
    if resp.status().is_informational() {
        // Nothing was asked to switch protocols.
        return Err(Denial::UpstreamFailed);
    }
    Ok(resp)
}

/// Writes the response (hop-by-hop headers out, the request id in, a body
/// of unknown length chunked); false when the client connection failed.
async fn write_response<T, B>(
    io: &mut Watched<T>,
    out: &mut Vec<u8>,
    resp: Response<B>,
    req: &Plain<'_>,
    ctx: &Ctx,
) -> bool
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes> + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status;
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&pipeline::X_REQUEST_ID);
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let bodiless = no_content || req.method == Method::HEAD;
    let mut length = parts.headers.contains_key(header::CONTENT_LENGTH);
    // A body whose size is known (a refusal's) gets a length, as hyper gives
    // it: to a HEAD as well, never with a status that has no content.
    let exact = (!length && !no_content)
        .then(|| body.size_hint().exact())
        .flatten();
    length |= exact.is_some();
    let chunked = !bodiless && !length;

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(out, &parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        write_date(out);
    }
    write_field(out, b"x-request-id", ctx.request_id.as_bytes());
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(n) = exact {
        write_field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if !bodiless {
        loop {
            // What is ready goes out with the head in one write; the rest as it comes.
            let frame = match body.frame().now_or_never() {
                Some(f) => f,
                None => {
                    if !out.is_empty() {
                        if io.write_all(out).await.is_err() {
                            return false;
                        }
                        out.clear();
                    }
                    body.frame().await
                }
            };
            match frame {
                None => break,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        if chunked {
                            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                        } else {
                            out.extend_from_slice(&data);
                        }
                    }
                }
                // The upstream broke off: the client cannot be told by a
                // status any more, only by the connection closing.
                Some(Err(_)) => return false,
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let ok = io.write_all(out).await.is_ok() && io.flush().await.is_ok();
    out.clear();
    ok
}

/// A `Date` line, formatted once a second per thread (as hyper does).
fn write_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = crate::clock::coarse_unix_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now);
            *d = (now, httpdate::fmt_http_date(at));
        }
        write_field(out, b"date", d.1.as_bytes());
    });
}

pin_project_lite::pin_project! {
    /// A connection's IO with bytes already read from it in front: what the
    /// fast path read before handing a request to hyper.
    pub struct Prefixed<T> {
        prefix: Bytes,
        #[pin]
        inner: T,
    }
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    /// The IO back, once hyper has read all of the prefix.
    pub fn into_inner(self) -> Option<T> {
        self.prefix.is_empty().then_some(self.inner)
    }
}

impl<T: AsyncRead> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
