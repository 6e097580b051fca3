//! One request, top to bottom. Every request walks the same phases in order:
//!
//! ```text
//! normalize (request id, host, path) -> route -> extract token -> verify
//!   -> revocation -> binding -> route policy -> rewrite headers -> forward
//!   -> log + metrics
//! ```
//!
//! A phase that refuses returns a [`Denial`]; [`handle`] turns it into the
//! response, the metrics and the log line in one place. What a phase learns for
//! later ones (route, verified identity, timings) travels in [`Ctx`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Limited};
use hyper::body::Incoming;

use crate::access_log::{AccessLine, AccessLog, AuthFields};
use crate::auth::dpop;
use crate::auth::policy;
use crate::auth::token::{self, Presented, TokenSource};
use crate::auth::verify::{Verified, Verifier};
use crate::body::{self, Body};
use crate::config::{AuthMode, Config};
use crate::cors;
use crate::denial::Denial;
use crate::metrics::Metrics;
use crate::proxy::deadline::TimerSlot;
use crate::proxy::forward::{forward, ForwardError};
use crate::proxy::headers::{remove_hop_by_hop, IdentityPlan};
use crate::proxy::pool::PooledBody;
use crate::proxy::upstream::{Upstream, Upstreams};
use crate::route::{normalize_path, Route, RouteMatch, RouteTable};
use crate::series::RouteSeries;
use crate::server::framing::FramingVerdict;

/// The hot state requests read: built from one configuration, swapped whole on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub verifier: Arc<Verifier>,
    pub upstreams: Upstreams,
    pub identity: IdentityPlan,
    pub metrics: Arc<Metrics>,
    /// By route index, then for requests that matched no route.
    pub route_series: Vec<RouteSeries>,
    pub no_route_series: RouteSeries,
    /// `auth_decisions_total{result="allowed"}` by issuer index.
    pub allowed: Vec<prometheus::IntCounter>,
    pub access_log: AccessLog,
    pub revocations: Arc<crate::revocation::Revocations>,
    pub dpop_replay: Arc<dpop::ReplayCache>,
    pub dpop_nonces: Arc<dpop::Nonces>,
    pub assertions: Option<Arc<crate::proxy::assertion::Assertions>>,
    pub upgrades: Arc<crate::reload::UpgradeTracker>,
    /// The Bearer secret of the admin API; `None` disables it.
    pub admin_token: Option<Vec<u8>>,
}

/// What the gateway knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    pub listener: String,
    /// SHA-256 of the client certificate (DER), base64url, when mTLS presented one.
    pub client_cert_sha256: Option<String>,
    /// Whether the raw HTTP/1 bytes showed ambiguous framing (see `server::framing`).
    pub framing: Arc<FramingVerdict>,
    /// The peer as the access log prints it, written once per connection.
    remote_text: String,
    /// The peer's address as `X-Forwarded-For` carries it, written once per connection.
    pub(crate) forwarded_for: HeaderValue,
    /// The timer this connection's waits borrow (see `proxy::deadline`).
    pub timer: Arc<TimerSlot>,
}

impl ConnInfo {
    pub fn new(
        remote: SocketAddr,
        tls: bool,
        listener: String,
        client_cert_sha256: Option<String>,
        framing: Arc<FramingVerdict>,
    ) -> ConnInfo {
        let ip = crate::config::canonical(remote.ip()).to_string();
        ConnInfo {
            remote,
            tls,
            listener,
            client_cert_sha256,
            framing,
            remote_text: remote.to_string(),
            // An address prints as digits, dots and colons: always a valid value.
            forwarded_for: HeaderValue::from_str(&ip)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            timer: Arc::default(),
        }
    }
}

/// What a request's phases learned, for the later phases and the log line.
pub(crate) struct Ctx {
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    pub(crate) host: String,
    pub(crate) path_for_log: String,
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) auth: AuthFields,
    /// The issuer the token named, when it named a configured one.
    pub(crate) issuer: Option<usize>,
    pub(crate) upstream_ms: Option<f64>,
    /// The request's `Origin`, for CORS headers on the response.
    pub(crate) origin: Option<HeaderValue>,
}

impl Ctx {
    pub(crate) fn new(request_id: HeaderValue, method: Method, path_for_log: String) -> Ctx {
        Ctx {
            request_id,
            method,
            host: String::new(),
            path_for_log,
            route: None,
            auth: AuthFields {
                result: "none",
                ..Default::default()
            },
            issuer: None,
            upstream_ms: None,
            origin: None,
        }
    }
}

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static DPOP: HeaderName = HeaderName::from_static("dpop");

/// The client's `X-Request-Id` when it is a sensible one, else a new UUID.
pub(crate) fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = given {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
        {
            return v.clone();
        }
    }
    let id = uuid::Builder::from_random_bytes(fast_random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Random bytes for request ids from a per-thread xorshift generator seeded
/// once from the system: ids must be unique, not secret, and a system call
/// per request would cost more than the rest of the id.
fn fast_random() -> [u8; 16] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new({
            let mut seed = [0u8; 16];
            let _ = aws_lc_rs::rand::fill(&mut seed);
            let a = u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8])) | 1;
            let b = u64::from_le_bytes(seed[8..].try_into().unwrap_or([2; 8])) | 1;
            (a, b)
        });
    }
    STATE.with(|s| {
        // xorshift128+
        let (mut s0, mut s1) = s.get();
        let mut out = [0u8; 16];
        for half in out.chunks_mut(8) {
            let mut x = s0;
            let y = s1;
            s0 = y;
            x ^= x << 23;
            s1 = x ^ y ^ (x >> 17) ^ (y >> 26);
            half.copy_from_slice(&s1.wrapping_add(y).to_le_bytes());
        }
        s.set((s0, s1));
        out
    })
}

/// The host as the client sent it (`:authority` or `Host`), port included.
fn client_host(req: &Request<Incoming>) -> Result<Option<String>, Denial> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(Denial::BadHost);
    }
    let header_host = header_host
        .map(|h| h.to_str().map_err(|_| Denial::BadHost))
        .transpose()?;
    let authority = req.uri().authority().map(|a| a.as_str());
    match (authority, header_host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(Denial::BadHost),
        (Some(a), _) => Ok(Some(a.to_string())),
        (None, Some(h)) => Ok(Some(h.to_string())),
        (None, None) if req.version() == http::Version::HTTP_10 => Ok(None),
        (None, None) => Err(Denial::BadHost),
    }
}

/// The host for routing: lower case, without port.
pub(crate) fn route_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = h.trim_end_matches('.');
    // Usually already lower case: then it is borrowed, not copied.
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        h.to_ascii_lowercase().into()
    } else {
        h.into()
    }
}

/// Entry point for every request on a gateway listener.
///
/// A plain function returning an `async move` block rather than an `async
/// fn`, here and in [`phases`] and `forward`: an `async fn` keeps each
/// argument twice across an await (as argument and as local), and the
/// request (about 270 bytes) was held that way at three levels, in every
/// in-flight request's future and in each copy hyper makes of it.
#[allow(clippy::manual_async_fn)] // deliberate, for the size: see above
pub fn handle(
    rt: Arc<Runtime>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> {
    async move {
        let started = Instant::now();
        let http1 = req.version() <= Version::HTTP_11;
        let mut ctx = Ctx::new(
            request_id(req.headers().get(&X_REQUEST_ID)),
            req.method().clone(),
            path_for_log(&req, rt.config.token.query),
        );
        let outcome = guarded(phases(&rt, &conn, req, &mut ctx), &rt.metrics).await;
        let mut resp = match outcome {
            Some(Ok(resp)) => resp,
            Some(Err(denial)) => refuse(&rt, &mut ctx, denial),
            None => {
                tracing::error!(request_id = ?ctx.request_id, "request handler panicked");
                internal_error()
            }
        };
        // Unique per response: HTTP/2's HPACK would enter each one in the
        // connection's header table, evicting the entries that do repeat.
        let mut request_id = ctx.request_id.clone();
        request_id.set_sensitive(true);
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        if let Some(c) = ctx.route.as_ref().and_then(|r| r.cors.as_ref()) {
            cors::decorate(c, ctx.origin.as_ref(), resp.headers_mut());
        }
        record(&rt, &conn, &ctx, resp.status(), started);
        if http1 {
            resp = resp.map(|b| conn.framing.count_answer(b));
        }
        Ok(resp)
    }
}

/// The answer to a refused request, its authentication decision counted.
pub(crate) fn refuse(rt: &Runtime, ctx: &mut Ctx, denial: Denial) -> Response<Body> {
    if let Some(result) = denial.auth_result() {
        ctx.auth.result = result;
        rt.metrics
            .auth_decisions_total
            .with_label_values(&[rt.verifier.issuer_id(ctx.issuer), result])
            .inc();
    }
    denial.into_response(ctx.request_id.to_str().unwrap_or("-"))
}

/// The answer to a request whose handling panicked.
pub(crate) fn internal_error() -> Response<Body> {
    let mut r = Response::new(body::full(
        r#"{"error":"internal_error","error_description":"internal error"}"#,
    ));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// Counts a finished request in its route's series and writes its log line.
pub(crate) fn record(
    rt: &Runtime,
    conn: &ConnInfo,
    ctx: &Ctx,
    status: StatusCode,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let series = ctx
        .route
        .as_ref()
        .and_then(|r| rt.route_series.get(r.index))
        .unwrap_or(&rt.no_route_series);
    series.count(&rt.metrics, &ctx.method, status);
    series.duration.observe(elapsed.as_secs_f64());
    rt.access_log.write(&AccessLine {
        level: "INFO",
        msg: "access",
        request_id: ctx.request_id.to_str().unwrap_or("-"),
        remote: &conn.remote_text,
        method: ctx.method.as_str(),
        host: &ctx.host,
        path: &ctx.path_for_log,
        route: ctx.route.as_ref().map(|r| r.id.as_str()),
        upstream: ctx.route.as_ref().map(|r| r.upstream.as_str()),
        status: status.as_u16(),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        upstream_ms: ctx.upstream_ms,
        auth: &ctx.auth,
    });
}

/// Runs a request's phases so that a panic in them costs that request a 500
/// and a count in `panics_total`, never the connection's neighbours or the process.
/// A plain function returning a combinator, not an `async fn`: as an
/// `async fn` the phases' future was held twice (argument and local), and
/// every in-flight request paid for both.
fn guarded<'a, T: 'a>(
    phases: impl std::future::Future<Output = T> + 'a,
    metrics: &'a Metrics,
) -> impl std::future::Future<Output = Option<T>> + 'a {
    std::panic::AssertUnwindSafe(phases)
        .catch_unwind()
        .map(move |r| match r {
            Ok(v) => Some(v),
            Err(_) => {
                metrics.panics_total.inc();
                None
            }
        })
}

fn path_for_log(req: &Request<Incoming>, strip_token: bool) -> String {
    let path = req.uri().path();
    match req.uri().query() {
        Some(q) if strip_token || q.contains("access_token") => {
            let q = token::strip_access_token(q);
            if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            }
        }
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

#[allow(clippy::manual_async_fn)] // see `handle`
fn phases<'a>(
    rt: &'a Runtime,
    conn: &'a ConnInfo,
    mut req: Request<Incoming>,
    ctx: &'a mut Ctx,
) -> impl Future<Output = Result<Response<Body>, Denial>> + 'a {
    async move {
        if req.version() <= Version::HTTP_11 && conn.framing.next_request_is_ambiguous() {
            return Err(Denial::AmbiguousFraming);
        }
        // Normalize: size, host and path are settled before anything looks at them.
        // (hyper enforces the limit while reading HTTP/1.1 heads, but not below 8 KiB.)
        let head: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if head > rt.config.server.max_header_bytes {
            return Err(Denial::HeaderTooLarge);
        }
        let host_given = match client_host(&req)? {
            Some(h) => {
                ctx.host = h;
                true
            }
            None => false,
        };
        let path = normalize_path(req.uri().path())
            .ok_or(Denial::BadPath)?
            .into_owned();

        // Route. A CORS preflight is routed by the method it asks about.
        let preflight = cors::preflight_method(req.method(), req.headers());
        let method = preflight.as_ref().unwrap_or(req.method());
        let route = match rt.routes.lookup(&route_host(&ctx.host), &path, method) {
            RouteMatch::Found(r) => r,
            RouteMatch::MethodNotAllowed(allow) => return Err(Denial::MethodNotAllowed(allow)),
            RouteMatch::NoRoute => return Err(Denial::NoRoute),
        };
        ctx.route = Some(route.clone());
        if let (Some(requested), Some(c)) = (&preflight, &route.cors) {
            return Ok(cors::answer_preflight(c, requested, req.headers()));
        }
        ctx.origin = req.headers().get(header::ORIGIN).cloned();

        // Authenticate.
        let presented = if route.auth == AuthMode::Public {
            None
        } else {
            authenticate(rt, conn, &req, route, ctx).await?
        };

        // Rewrite.
        let upgrade = requested_upgrade(req.headers(), req.version());
        let pq = rewrite(
            rt,
            upgrade.clone(),
            &path,
            conn,
            &mut req,
            route,
            presented.as_ref().map(|(p, _)| p),
            presented.as_ref().map(|(_, v)| &**v),
            host_given.then_some(ctx.host.as_str()),
            ctx,
        )?;

        // Forward.
        let upstream = rt
            .upstreams
            .get(&route.upstream)
            .ok_or(Denial::NoHealthyEndpoint)?;
        let client_upgrade = upgrade.map(|_| hyper::upgrade::on(&mut req));
        let req = match route.max_body_bytes {
            Some(max) => {
                let declared = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > max as u64) {
                    return Err(Denial::PayloadTooLarge);
                }
                // A body without a length is cut off at the limit mid-stream.
                req.map(|b| Either::Right(Limited::new(b, max)))
            }
            None => req.map(Either::Left),
        };
        let sent = Instant::now();
        // Pinned where it is made: passed by value, the call (about a
        // kilobyte) was copied into `call_upstream` on every request.
        let call = std::pin::pin!(forward(upstream, req, pq, &conn.timer, sent));
        let resp = call_upstream(rt, upstream, call, sent, ctx).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                return Ok(splice_upgrade(client, resp, rt.upgrades.enter()));
            }
        }
        let (mut parts, incoming) = resp.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body::stream(incoming)))
    }
}

/// Awaits the upstream's answer (sent at `sent`), times and counts it; a
/// failure becomes the client's refusal.
pub(crate) async fn call_upstream(
    rt: &Runtime,
    upstream: &Upstream,
    call: std::pin::Pin<&mut impl Future<Output = Result<Response<PooledBody>, ForwardError>>>,
    sent: Instant,
    ctx: &mut Ctx,
) -> Result<Response<PooledBody>, Denial> {
    let result = call.await;
    let took = sent.elapsed();
    ctx.upstream_ms = Some(took.as_secs_f64() * 1000.0);
    let m = &rt.metrics;
    match result {
        Ok(resp) => {
            upstream.series.count(m, resp.status());
            upstream.series.duration.observe(took.as_secs_f64());
            Ok(resp)
        }
        Err(ForwardError::BodyTooLarge) => Err(Denial::PayloadTooLarge),
        Err(e) => {
            m.upstream_errors_total
                .with_label_values(&[upstream.name.as_str(), e.kind()])
                .inc();
            Err(match e {
                ForwardError::Timeout => Denial::UpstreamTimeout,
                ForwardError::NoEndpoint => Denial::NoHealthyEndpoint,
                ForwardError::Connect | ForwardError::Reset | ForwardError::BodyTooLarge => {
                    Denial::UpstreamFailed
                }
            })
        }
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (WebSocket, say).
fn requested_upgrade(headers: &http::HeaderMap, version: http::Version) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Answers 101 to the client and joins the two upgraded connections.
fn splice_upgrade(
    client: hyper::upgrade::OnUpgrade,
    mut resp: Response<PooledBody>,
    guard: crate::reload::UpgradeGuard,
) -> Response<Body> {
    let upstream = resp.body_mut().take_upgraded();
    tokio::spawn(async move {
        let _open = guard;
        let Some((mut u, early)) = upstream else {
            return;
        };
        match client.await {
            Ok(c) => {
                let mut c = hyper_util::rt::TokioIo::new(c);
                // Bytes the upstream sent right behind its 101 go first.
                if !early.is_empty()
                    && tokio::io::AsyncWriteExt::write_all(&mut c, &early)
                        .await
                        .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, body::empty())
}

const UNSAFE_METHODS: &[Method] = &[Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// Extract, verify, revocation, binding, policy. `Ok(None)`: an optional route
/// without a token.
async fn authenticate(
    rt: &Runtime,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    route: &Route,
    ctx: &mut Ctx,
) -> Result<Option<(Presented, Arc<Verified>)>, Denial> {
    let cfg = &rt.config.token;
    let presented = token::extract(req.headers(), req.uri(), cfg)?;
    let Some(presented) = presented else {
        return match route.auth {
            AuthMode::Optional => Ok(None),
            _ => Err(Denial::Missing),
        };
    };
    measure_token(rt, &presented.token)?;
    if presented.source == TokenSource::Cookie && UNSAFE_METHODS.contains(req.method()) {
        csrf_check(req.headers(), &cfg.csrf_origins)?;
    }
    let target = Target {
        headers: req.headers(),
        method: req.method(),
        path: req.uri().path(),
    };
    let verified = admit(
        rt,
        conn,
        &presented.token,
        presented.dpop_scheme,
        &target,
        route,
        ctx,
    )
    .await?;
    Ok(Some((presented, verified)))
}

/// Counts a presented token's size and refuses one past `token.max_bytes`.
pub(crate) fn measure_token(rt: &Runtime, token: &str) -> Result<(), Denial> {
    rt.metrics.token_bytes.observe(token.len() as f64);
    if token.len() > rt.config.token.max_bytes {
        return Err(Denial::Malformed(
            "token is larger than this gateway accepts",
        ));
    }
    Ok(())
}

/// What a DPoP proof is checked against: the request as it arrived.
pub(crate) struct Target<'a> {
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
}

/// Verify, revocation, binding, policy, for a token already extracted.
pub(crate) async fn admit(
    rt: &Runtime,
    conn: &ConnInfo,
    token: &str,
    dpop_scheme: bool,
    target: &Target<'_>,
    route: &Route,
    ctx: &mut Ctx,
) -> Result<Arc<Verified>, Denial> {
    let started = Instant::now();
    let result = rt.verifier.verify(token).await;
    rt.metrics
        .auth_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    let verified = match result {
        Ok((v, _cached)) => v,
        Err(f) => {
            ctx.issuer = f.issuer;
            ctx.auth.iss = f
                .issuer
                .map(|i| rt.verifier.issuers[i].config.issuer.clone());
            ctx.auth.kid = f.kid;
            ctx.auth.alg = f.alg;
            return Err(f.denial);
        }
    };
    ctx.issuer = Some(verified.issuer);
    let issuer_id = rt.verifier.issuer_id(ctx.issuer);
    ctx.auth.verified = Some(verified.clone());

    let max_lifetime = rt.verifier.issuers[verified.issuer]
        .config
        .max_lifetime
        .as_secs();
    if rt.revocations.is_revoked(&verified, max_lifetime) {
        return Err(Denial::Revoked);
    }
    binding_check(
        rt,
        conn,
        target,
        &ctx.host,
        (token, dpop_scheme),
        &verified,
        route,
    )?;
    policy::check(route, &verified, issuer_id)?;

    ctx.auth.result = "allowed";
    match rt.allowed.get(verified.issuer) {
        Some(c) => c.inc(),
        None => rt
            .metrics
            .auth_decisions_total
            .with_label_values(&[issuer_id, "allowed"])
            .inc(),
    }
    Ok(verified)
}

/// A cookie token on an unsafe method needs an allowed `Origin` (or `Referer`).
fn csrf_check(headers: &http::HeaderMap, allowed: &[String]) -> Result<(), Denial> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            let r = headers.get(header::REFERER)?.to_str().ok()?;
            let uri: http::Uri = r.parse().ok()?;
            Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
        });
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(&o)) => Ok(()),
        _ => Err(Denial::Csrf),
    }
}

/// Sender-constrained tokens (RFC 8705 certificate binding; RFC 9449 DPoP).
fn binding_check(
    rt: &Runtime,
    conn: &ConnInfo,
    req: &Target<'_>,
    host: &str,
    (token, dpop_scheme): (&str, bool),
    v: &Verified,
    route: &Route,
) -> Result<(), Denial> {
    let cnf = v.claims.get("cnf").and_then(|c| c.as_object());
    let jkt = cnf.and_then(|c| c.get("jkt"));
    let x5t = cnf.and_then(|c| c.get("x5t#S256")).and_then(|x| x.as_str());
    if let Some(jkt) = jkt {
        if !dpop_scheme {
            return Err(Denial::BindingFailed(
                "DPoP-bound token presented as a bearer token",
            ));
        }
        let jkt = jkt
            .as_str()
            .ok_or(Denial::BindingFailed("cnf.jkt is not a string"))?;
        let mut proofs = req.headers.get_all(&DPOP).iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(Denial::BindingFailed(
                "a DPoP-bound token needs exactly one DPoP proof header",
            ));
        };
        let proof = proof
            .to_str()
            .map_err(|_| Denial::BindingFailed("DPoP proof is not text"))?;
        let issuer = &rt.verifier.issuers[v.issuer].config;
        let target = dpop::Target {
            method: req.method.as_str(),
            scheme: if conn.tls { "https" } else { "http" },
            host,
            path: req.path,
        };
        let claims = dpop::check_proof(proof, token, jkt, &target, issuer.leeway, &rt.dpop_replay)?;
        if issuer.dpop_nonce {
            let ok = claims
                .get("nonce")
                .and_then(|n| n.as_str())
                .is_some_and(|n| rt.dpop_nonces.valid(n));
            if !ok {
                return Err(Denial::UseDpopNonce(rt.dpop_nonces.issue()));
            }
        }
    } else if dpop_scheme {
        return Err(Denial::BindingFailed(
            "DPoP scheme used with a token that is not DPoP-bound",
        ));
    }
    // A token bound both ways must pass both checks.
    if let Some(x5t) = x5t {
        return match &conn.client_cert_sha256 {
            Some(have) if have == x5t => Ok(()),
            Some(_) => Err(Denial::BindingFailed(
                "client certificate does not match the token",
            )),
            None => Err(Denial::BindingFailed(
                "token is bound to a client certificate that was not presented",
            )),
        };
    }
    if jkt.is_none() && route.require_bound_token {
        return Err(Denial::BindingFailed(
            "this route requires a sender-constrained token",
        ));
    }
    Ok(())
}

/// Hop-by-hop out, client identity out, verified identity and forwarding headers in.
#[allow(clippy::too_many_arguments)]
fn rewrite(
    rt: &Runtime,
    upgrade: Option<HeaderValue>,
    path: &str,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    route: &Route,
    presented: Option<&Presented>,
    verified: Option<&Verified>,
    host: Option<&str>,
    ctx: &Ctx,
) -> Result<PathAndQuery, Denial> {
    let trusted = rt
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(conn.remote.ip()));
    let headers = req.headers_mut();
    // Room for what is added below (forwarded-for/proto/host, request id,
    // identity): one growth of the map, not one per power of two on the way.
    headers.reserve(8);
    remove_hop_by_hop(headers);
    let prior_xff: Option<String> = if trusted {
        let parts: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    } else {
        None
    };
    if let Some(protocol) = upgrade {
        // The one hop-by-hop exchange that is proxied: an upgrade, after authentication.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    rt.identity.strip_client_identity(headers);
    if !route.forward_authorization {
        // Credentials stay at the gateway, on public routes as well.
        headers.remove(header::AUTHORIZATION);
        headers.remove(&DPOP);
        if let Some(name) = &rt.config.token.cookie {
            strip_cookie(headers, name);
        }
    }
    if let (Some(a), Some(v), Some(p)) = (&rt.assertions, verified, presented) {
        if let Some(value) = a.value(v, &p.token, &route.upstream) {
            headers.insert(a.header().clone(), value);
        }
    }
    if let Some(v) = verified {
        rt.identity
            .add_identity(headers, v, presented.map(|p| p.token.as_str()));
    }
    let xff = match prior_xff {
        Some(prior) => {
            let ip = conn.forwarded_for.to_str().unwrap_or("unknown");
            HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
        }
        None => Some(conn.forwarded_for.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    if let Some(h) = host {
        // Over HTTP/1 the host is the client's Host value: shared, not parsed again.
        let existing = headers.get(header::HOST);
        let had_host = existing.is_some();
        let value = match existing {
            Some(v) if v.as_bytes() == h.as_bytes() => Some(v.clone()),
            _ => HeaderValue::from_str(h).ok(),
        };
        if let Some(v) = value {
            headers.insert(X_FORWARDED_HOST.clone(), v.clone());
            if !had_host {
                headers.insert(header::HOST, v);
            }
        }
    }
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());

    // The upstream gets the path as routed (unreserved escapes decoded).
    let strip_query = rt.config.token.query || !route.forward_authorization;
    if req.uri().path() == path && (req.uri().query().is_none() || !strip_query) {
        // Unchanged: the request's own, shared rather than written and parsed again.
        if let Some(pq) = req.uri().path_and_query() {
            return Ok(pq.clone());
        }
    }
    let pq = match req.uri().query() {
        Some(q) if strip_query => {
            let q = token::strip_access_token(q);
            if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            }
        }
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    PathAndQuery::try_from(pq).map_err(|_| Denial::BadPath)
}

fn strip_cookie(headers: &mut http::HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').map_or(*p, |(k, _)| k.trim()) != name)
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_request_is_caught_and_counted() {
        let m = Metrics::new();
        let out = guarded(async { panic!("boom") }, &m).await;
        let _: Option<()> = out;
        assert!(out.is_none());
        assert_eq!(m.panics_total.get(), 1);
        assert_eq!(guarded(async { 7 }, &m).await, Some(7));
        assert_eq!(m.panics_total.get(), 1);
    }

    #[test]
    fn generated_request_ids_are_uuids_and_differ() {
        let a = request_id(None);
        let b = request_id(None);
        assert_ne!(a, b);
        let a = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(a.get_version_num(), 4);
    }

    #[test]
    fn route_host_drops_port_and_case() {
        assert_eq!(route_host("API.example.com:8443"), "api.example.com");
        assert_eq!(route_host("[::1]:8443"), "::1");
        assert_eq!(route_host("example.com."), "example.com");
    }

    #[test]
    fn csrf_accepts_listed_origin_or_referer() {
        let allowed = vec!["https://app.example.com".to_string()];
        let mut h = http::HeaderMap::new();
        assert_eq!(csrf_check(&h, &allowed), Err(Denial::Csrf));
        h.insert(
            header::REFERER,
            "https://app.example.com/page".parse().unwrap(),
        );
        assert_eq!(csrf_check(&h, &allowed), Ok(()));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert_eq!(csrf_check(&h, &allowed), Err(Denial::Csrf));
    }
}
