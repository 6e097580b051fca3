//! The admin listener: metrics, health, readiness (and, later, the revocation
//! API and the decision trace). It is a separate listener so that it can stay
//! on a private address.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{full, Body};
use crate::pipeline::Runtime;
use crate::revocation::Revocations;

mod revocations;
mod status;

pub struct AdminState {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub draining: AtomicBool,
    pub revocations: Arc<Revocations>,
    pub started: std::time::Instant,
}

/// `Authorization: Bearer <admin token>`, compared in constant time.
fn authorized(state: &AdminState, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
    let rt = state.runtime.load();
    let Some(expected) = &rt.admin_token else {
        return Err(Box::new(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "admin_api_disabled", "error_description": "set admin.token_file to enable the admin API"}),
        )));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes());
    let ok = presented
        .is_some_and(|p| aws_lc_rs::constant_time::verify_slices_are_equal(p, expected).is_ok());
    if ok {
        Ok(())
    } else {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "error_description": "the admin token is missing or wrong"}),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
        );
        Err(Box::new(r))
    }
}

impl AdminState {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Readiness and its reasons: (ready, reasons for not ready, degraded dependencies).
pub fn readiness(state: &AdminState) -> (bool, Vec<String>, Vec<String>) {
    let rt = state.runtime.load();
    let mut reasons = Vec::new();
    let mut degraded = Vec::new();
    if state.draining.load(Ordering::Acquire) {
        reasons.push("draining".to_string());
    }
    let issuers = &rt.verifier.issuers;
    for i in issuers {
        if !i.loaded_once() {
            let why = i.last_error().unwrap_or_else(|| "not loaded yet".into());
            reasons.push(format!("issuer {}: keys never loaded: {why}", i.id()));
        } else if !i.has_keys() {
            degraded.push(format!("issuer {}: no usable keys", i.id()));
        }
    }
    if !issuers.is_empty() && !issuers.iter().any(|i| i.has_keys()) {
        reasons.push("no issuer has usable keys".to_string());
    }
    if !state.revocations.is_loaded() {
        reasons.push("revocations not loaded yet".to_string());
    }
    if let Some(r) = &state.revocations.redis {
        if !r.synced_once() {
            let why = r.last_error().unwrap_or_else(|| "not synced yet".into());
            reasons.push(format!("revocation sync: never synced with Redis: {why}"));
        } else if !r.connected() {
            let why = r.last_error().unwrap_or_default();
            degraded.push(format!(
                "revocation sync: Redis unreachable, enforcing the last synced list: {why}"
            ));
        }
    }
    (reasons.is_empty(), reasons, degraded)
}

pub(crate) fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let rt = state.runtime.load();
            let mut r = Response::new(full(rt.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/.well-known/jwks.json") => match &state.runtime.load().assertions {
            Some(a) => {
                let mut r = json_response(StatusCode::OK, a.jwks());
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=60"),
                );
                r
            }
            None => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "error_description": "no identity assertion is configured"}),
            ),
        },
        (&Method::GET, "/") => {
            let mut r = Response::new(full(status::render(&state, state.started)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            );
            r
        }
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            let (ready, reasons, degraded) = readiness(&state);
            if ready {
                json_response(
                    StatusCode::OK,
                    json!({"status": "ready", "degraded": degraded}),
                )
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not_ready", "reasons": reasons, "degraded": degraded}),
                )
            }
        }
        (&Method::POST, "/debug/verify") => match authorized(&state, &req) {
            Ok(()) => debug_verify(&state, req).await,
            Err(r) => *r,
        },
        (_, "/revocations") => match authorized(&state, &req) {
            Ok(()) => revocations::handle(&state.revocations, req).await,
            Err(r) => *r,
        },
        (_, "/metrics" | "/healthz" | "/readyz") => {
            let mut r = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            r
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    };
    Ok(resp)
}

/// `POST /debug/verify`: the body is a token; `method`, `host` and `path`
/// query parameters add that route's policy to the trace.
async fn debug_verify(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::{BodyExt, Limited};
    let params = match revocations::query_params(req.uri().query()) {
        Ok(p) => p,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": e}),
            )
        }
    };
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "the body must be a token of at most 64 KiB"}),
            )
        }
    };
    let Ok(token) = std::str::from_utf8(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "the body must be the token as text"}),
        );
    };
    let query = match (param("method"), param("path")) {
        (m, Some(path)) => Some(crate::auth::trace::RouteQuery {
            method: Method::from_bytes(
                m.unwrap_or_else(|| "GET".into())
                    .to_ascii_uppercase()
                    .as_bytes(),
            )
            .unwrap_or(Method::GET),
            host: param("host").unwrap_or_default(),
            path,
        }),
        _ => None,
    };
    let rt = state.runtime.load_full();
    let revs = rt.revocations.clone();
    let revoked = move |v: &crate::auth::verify::Verified, max: u64| Some(revs.is_revoked(v, max));
    let trace =
        crate::auth::trace::explain(&rt.verifier, &revoked, Some(&rt.routes), token, query).await;
    json_response(StatusCode::OK, json!(trace))
}

/// Serves the admin listener until its task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
