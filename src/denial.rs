//! Every way a request can be refused, in one place: each variant maps here,
//! and only here, to its status code, `WWW-Authenticate` header, JSON body and
//! the `result` label of `auth_decisions_total`. Add a reason once; every
//! output follows.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// Why a request did not reach its upstream (or why the upstream did not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No token on a route that requires one.
    Missing,
    /// The token is not a well-formed JWT, or breaks a rule of its shape.
    Malformed(&'static str),
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnknownKid(&'static str),
    DisallowedAlg,
    Revoked,
    BindingFailed(&'static str),
    /// The issuer demands DPoP server nonces: here is one to use.
    UseDpopNonce(String),
    /// The token is valid but lacks what the route requires; carries the
    /// space-separated scopes that were missing (possibly empty for claims).
    InsufficientScope(String),
    /// A cookie token on an unsafe method without an allowed `Origin`.
    Csrf,
    /// Two tokens, two `Authorization` headers: the request is ambiguous.
    InvalidRequest(&'static str),
    /// Dot segments, encoded slashes, backslashes or NUL in the path.
    BadPath,
    /// A `Host` that cannot be read, or that disagrees with `:authority`.
    BadHost,
    NoRoute,
    MethodNotAllowed(HeaderValue),
    /// The request head is larger than `max_header_bytes`.
    HeaderTooLarge,
    /// An HTTP/1 request (or one before it on its connection) carried both
    /// `Content-Length` and `Transfer-Encoding`, or `Content-Length` twice.
    AmbiguousFraming,
    /// The body is larger than the route's `max_body_bytes`.
    PayloadTooLarge,

    /// The upstream refused the connection or reset it.
    UpstreamFailed,
    UpstreamTimeout,
    NoHealthyEndpoint,
}

impl Denial {
    pub fn status(&self) -> StatusCode {
        use Denial::*;
        match self {
            Missing | Malformed(_) | BadSignature | Expired | NotYetValid | WrongIssuer
            | WrongAudience | UnknownKid(_) | DisallowedAlg | Revoked | BindingFailed(_)
            | UseDpopNonce(_) => StatusCode::UNAUTHORIZED,
            InsufficientScope(_) | Csrf => StatusCode::FORBIDDEN,
            InvalidRequest(_) | BadPath | BadHost | AmbiguousFraming => StatusCode::BAD_REQUEST,
            NoRoute => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,

            UpstreamFailed => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            NoHealthyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `result` label of `auth_decisions_total`, for refusals that are
    /// authentication decisions.
    pub fn auth_result(&self) -> Option<&'static str> {
        use Denial::*;
        Some(match self {
            Missing => "missing",
            Malformed(_) | InvalidRequest(_) => "malformed",
            BadSignature => "bad_signature",
            Expired => "expired",
            NotYetValid => "not_yet_valid",
            WrongIssuer => "wrong_issuer",
            WrongAudience => "wrong_audience",
            UnknownKid(_) => "unknown_kid",
            DisallowedAlg => "disallowed_alg",
            Revoked => "revoked",
            BindingFailed(_) | UseDpopNonce(_) => "binding_failed",
            InsufficientScope(_) => "insufficient_scope",
            Csrf => "csrf",
            _ => return None,
        })
    }

    /// The `error` field of the body (RFC 6750 codes for token problems).
    pub fn error_code(&self) -> &'static str {
        use Denial::*;
        match self {
            Missing => "unauthorized",
            Malformed(_) | BadSignature | Expired | NotYetValid | WrongIssuer | WrongAudience
            | UnknownKid(_) | DisallowedAlg | Revoked | BindingFailed(_) => "invalid_token",
            InsufficientScope(_) => "insufficient_scope",
            UseDpopNonce(_) => "use_dpop_nonce",
            Csrf => "csrf_check_failed",
            InvalidRequest(_) => "invalid_request",
            BadPath => "bad_path",
            BadHost => "bad_host",
            NoRoute => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            HeaderTooLarge => "header_too_large",
            AmbiguousFraming => "ambiguous_framing",
            PayloadTooLarge => "payload_too_large",

            UpstreamFailed => "bad_gateway",
            UpstreamTimeout => "gateway_timeout",
            NoHealthyEndpoint => "no_healthy_upstream",
        }
    }

    /// A description that names the reason and never echoes the token.
    pub fn description(&self) -> &'static str {
        use Denial::*;
        match self {
            Missing => "a bearer token is required",
            Malformed(why) => why,
            BadSignature => "signature verification failed",
            Expired => "token expired",
            NotYetValid => "token not yet valid",
            WrongIssuer => "untrusted issuer",
            WrongAudience => "token audience not accepted",
            UnknownKid(why) => why,
            DisallowedAlg => "token algorithm not allowed",
            Revoked => "token revoked",
            BindingFailed(why) => why,
            UseDpopNonce(_) => "a fresh DPoP proof with the server nonce is required",
            InsufficientScope(_) => "the token lacks a scope or claim this route requires",
            Csrf => "cross-site request refused: Origin is not allowed",
            InvalidRequest(why) => why,
            BadPath => "path contains dot segments, encoded slashes, backslashes or NUL",
            BadHost => "missing or inconsistent Host",
            NoRoute => "no route matches this request",
            MethodNotAllowed(_) => "method not allowed on this route",
            HeaderTooLarge => "request header fields too large",
            AmbiguousFraming => {
                "Content-Length with Transfer-Encoding, or Content-Length repeated, on this connection"
            }
            PayloadTooLarge => "request body larger than this route accepts",

            UpstreamFailed => "the upstream service could not be reached",
            UpstreamTimeout => "the upstream service did not answer in time",
            NoHealthyEndpoint => "no healthy upstream endpoint",
        }
    }

    fn www_authenticate(&self) -> Option<String> {
        use Denial::*;
        match self {
            Missing => Some(r#"Bearer realm="portcullis""#.to_string()),
            UseDpopNonce(_) => Some(format!(
                r#"DPoP realm="portcullis", error="use_dpop_nonce", error_description="{}""#,
                self.description()
            )),
            InvalidRequest(why) => Some(format!(
                r#"Bearer realm="portcullis", error="invalid_request", error_description="{why}""#
            )),
            InsufficientScope(scope) if scope.is_empty() => Some(format!(
                r#"Bearer realm="portcullis", error="insufficient_scope", error_description="{}""#,
                self.description()
            )),
            InsufficientScope(scope) => Some(format!(
                r#"Bearer realm="portcullis", error="insufficient_scope", error_description="{}", scope="{}""#,
                self.description(),
                scope
            )),
            _ if self.status() == StatusCode::UNAUTHORIZED => Some(format!(
                r#"Bearer realm="portcullis", error="invalid_token", error_description="{}""#,
                self.description()
            )),
            _ => None,
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = serde_json::json!({
            "error": self.error_code(),
            "error_description": self.description(),
            "request_id": request_id,
        });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(v) = self.www_authenticate() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        match self {
            Denial::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, allow);
            }
            // The bytes after an ambiguous head cannot be trusted to start a request.
            Denial::AmbiguousFraming => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Denial::UseDpopNonce(nonce) => {
                if let Ok(v) = HeaderValue::from_str(&nonce) {
                    h.insert(HeaderName::from_static("dpop-nonce"), v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// Every `result` label value, exported at 0 from start.
pub const AUTH_RESULTS: &[&str] = &[
    "allowed",
    "missing",
    "malformed",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "unknown_kid",
    "disallowed_alg",
    "revoked",
    "binding_failed",
    "insufficient_scope",
    "csrf",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_refusal_has_a_known_result_label() {
        let all = [
            Denial::Missing,
            Denial::Malformed("x"),
            Denial::BadSignature,
            Denial::Expired,
            Denial::NotYetValid,
            Denial::WrongIssuer,
            Denial::WrongAudience,
            Denial::UnknownKid("x"),
            Denial::DisallowedAlg,
            Denial::Revoked,
            Denial::BindingFailed("x"),
            Denial::InsufficientScope("a".into()),
            Denial::Csrf,
            Denial::InvalidRequest("x"),
        ];
        for d in all {
            let r = d.auth_result().expect("auth refusal");
            assert!(AUTH_RESULTS.contains(&r), "{r}");
        }
    }

    #[test]
    fn missing_token_challenge_has_no_error_code() {
        let resp = Denial::Missing.into_response("id");
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="portcullis""#
        );
    }
}
