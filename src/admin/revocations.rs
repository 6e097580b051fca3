//! The revocation API: `GET /revocations` (paged), `POST /revocations`,
//! `DELETE /revocations?jti=J` or `?iss=I&sub=S`. Every call needs the admin
//! token; a POST is answered 201 only once the entry is durable.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::json_response;
use crate::auth::token::percent_decode;
use crate::body::Body;
use crate::revocation::entry::Key;
use crate::revocation::{RevocationError, Revocations};

const MAX_BODY: usize = 64 * 1024;

/// Query parameters, percent-decoded; shared by the admin endpoints.
pub(crate) fn query_params(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or("bad percent-encoding in the query")?;
        let v = percent_decode(v).ok_or("bad percent-encoding in the query")?;
        out.push((k, v));
    }
    Ok(out)
}

fn bad_request(msg: impl Into<String>) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_request", "error_description": msg.into()}),
    )
}

fn error_response(e: RevocationError) -> Response<Body> {
    match e {
        RevocationError::Invalid(m) => bad_request(m),
        RevocationError::Unavailable(m) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable", "error_description": m}),
        ),
    }
}

pub async fn handle(revs: &Arc<Revocations>, req: Request<Incoming>) -> Response<Body> {
    let params = match query_params(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    match *req.method() {
        Method::GET => {
            let limit = param("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .clamp(1, 1000);
            let offset = param("offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0usize);
            let (entries, total) = revs.list(offset, limit);
            let next = (offset + entries.len() < total).then_some(offset + entries.len());
            json_response(
                StatusCode::OK,
                json!({"entries": entries, "total": total, "next_offset": next}),
            )
        }
        Method::POST => {
            let body: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return bad_request(format!("the body must be at most {MAX_BODY} bytes")),
            };
            let value: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return bad_request(format!("the body is not JSON: {e}")),
            };
            let entry = match revs.entry_from_request(&value) {
                Ok(e) => e,
                Err(e) => return error_response(e),
            };
            match revs.add(entry).await {
                Ok(stored) => json_response(StatusCode::CREATED, json!(stored)),
                Err(e) => error_response(e),
            }
        }
        Method::DELETE => {
            let key = match (param("jti"), param("iss"), param("sub")) {
                (Some(j), None, None) if !j.is_empty() => Key::Jti(j),
                (None, Some(i), Some(s)) if !s.is_empty() => match revs.key_for_subject(&i, &s) {
                    Ok(k) => k,
                    Err(e) => return error_response(e),
                },
                _ => return bad_request("give ?jti=J or ?iss=I&sub=S"),
            };
            match revs.remove(key).await {
                Ok(true) => json_response(StatusCode::OK, json!({"removed": true})),
                Ok(false) => json_response(
                    StatusCode::NOT_FOUND,
                    json!({"removed": false, "error": "not_found", "error_description": "no such revocation"}),
                ),
                Err(e) => error_response(e),
            }
        }
        _ => {
            let mut r = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, POST, DELETE"),
            );
            r
        }
    }
}
