//! CORS for routes that set `cors`: preflights are answered by the gateway,
//! without a token and without reaching the upstream; actual responses (errors
//! included, so a browser can read why it was refused) carry the allowed-origin
//! headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{empty, Body};
use crate::config::CorsConfig;

/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let m = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()?;
    Method::from_bytes(m.trim().as_bytes()).ok()
}

fn allowed_origin<'a>(cors: &CorsConfig, origin: &'a str) -> Option<&'a str> {
    cors.origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        .then_some(origin)
}

fn wildcard(cors: &CorsConfig) -> bool {
    cors.origins.iter().any(|o| o == "*")
}

/// Adds the allowed-origin headers to a response for `origin`, when allowed.
pub fn decorate(cors: &CorsConfig, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else {
        return;
    };
    if allowed_origin(cors, origin).is_none() {
        return;
    }
    if wildcard(cors) {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else if let Ok(v) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        // Explicit origins may send credentials (a token cookie).
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The gateway's answer to a preflight: 204 with what is allowed, or 403.
pub fn answer_preflight(
    cors: &CorsConfig,
    requested: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    let origin = headers.get(header::ORIGIN);
    let origin_ok = origin
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| allowed_origin(cors, o).is_some());
    let method_ok = cors.methods.is_empty()
        || cors
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(requested.as_str()));
    let mut resp = Response::new(empty());
    if !origin_ok || !method_ok {
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut()
            .append(header::VARY, HeaderValue::from_static("Origin"));
        return resp;
    }
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    decorate(cors, origin, h);
    let methods = if cors.methods.is_empty() {
        requested.as_str().to_string()
    } else {
        cors.methods.join(", ")
    };
    if let Ok(v) = HeaderValue::from_str(&methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let allow_headers = if cors.headers.is_empty() {
        "authorization, content-type, dpop".to_string()
    } else {
        cors.headers.join(", ")
    };
    if let Ok(v) = HeaderValue::from_str(&allow_headers) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cors.max_age.as_secs().to_string()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    resp
}
