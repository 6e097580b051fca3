//! "Why 401?": every check the gateway makes on a token, in order, with its
//! outcome, for `POST /debug/verify` and `portcullis token inspect`. The trace
//! shows the token's header and claims, never its signature or any secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::Method;
use serde::Serialize;
use serde_json::{Map, Value};

use super::policy;
use super::verify::{now_unix, Verified, Verifier};
use crate::config::AuthMode;
use crate::denial::Denial;
use crate::route::{normalize_path, RouteMatch, RouteTable};

#[derive(Debug, Serialize)]
pub struct Step {
    pub check: &'static str,
    /// `pass`, `fail`, `skip` (not reached or not applicable) or `note`.
    pub outcome: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Trace {
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub status: u16,
    /// The `result` label this decision is counted under.
    pub result: &'static str,
    pub description: String,
    pub issuer: Option<String>,
    pub header: Value,
    pub claims: Value,
    pub steps: Vec<Step>,
}

/// A request to evaluate route policy for.
pub struct RouteQuery {
    pub method: Method,
    pub host: String,
    pub path: String,
}

fn step(check: &'static str, outcome: &'static str, detail: impl Into<String>) -> Step {
    Step {
        check,
        outcome,
        detail: detail.into(),
    }
}

fn decode(part: Option<&str>) -> Value {
    part.and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn relative(t: u64, now: u64) -> String {
    if t > now {
        format!("in {}s", t - now)
    } else {
        format!("{}s ago", now - t)
    }
}

/// Explains what the gateway decides for `token`. `revoked` answers the
/// revocation question for a verified token (`None`: no revocation data).
pub async fn explain(
    verifier: &Verifier,
    revoked: &(dyn Fn(&Verified, u64) -> Option<bool> + Sync),
    routes: Option<&RouteTable>,
    token: &str,
    query: Option<RouteQuery>,
) -> Trace {
    let token = token.trim();
    let mut parts = token.split('.');
    let (h, p) = (parts.next(), parts.next());
    let header = decode(h);
    let claims = decode(p);
    let mut steps = Vec::new();
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);

    steps.push(step(
        "format",
        if token.split('.').count() == 3 {
            "pass"
        } else {
            "fail"
        },
        format!(
            "{} bytes, {} dot-separated parts",
            token.len(),
            token.split('.').count()
        ),
    ));
    steps.push(step(
        "header",
        if header.is_object() { "pass" } else { "fail" },
        format!(
            "alg {:?}, kid {:?}, typ {:?}{}",
            get(&header, "alg").unwrap_or_default(),
            get(&header, "kid").unwrap_or_default(),
            get(&header, "typ").unwrap_or_default(),
            if header.get("crit").is_some() {
                ", crit present (refused)"
            } else {
                ""
            }
        ),
    ));
    for untrusted in ["jku", "x5u", "jwk", "x5c"] {
        if header.get(untrusted).is_some() {
            steps.push(step(
                "header",
                "note",
                format!("`{untrusted}` is present and ignored: keys come only from configuration"),
            ));
        }
    }
    let iss = get(&claims, "iss").unwrap_or_default();
    let issuer = verifier.issuers.iter().find(|i| i.config.issuer == iss);
    steps.push(match issuer {
        Some(i) => step(
            "issuer",
            "pass",
            format!("iss {iss:?} is issuer `{}`", i.id()),
        ),
        None => step(
            "issuer",
            "fail",
            format!("iss {iss:?} matches no configured issuer"),
        ),
    });
    if let Some(i) = issuer {
        let alg = get(&header, "alg").unwrap_or_default();
        let allowed: Vec<String> = i
            .config
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        steps.push(step(
            "algorithm",
            if allowed.contains(&alg) {
                "pass"
            } else {
                "fail"
            },
            format!("{alg:?}; issuer `{}` allows {}", i.id(), allowed.join(", ")),
        ));
        let kid = get(&header, "kid");
        steps.push(match (i.current(), &kid) {
            (None, _) => step("key", "fail", "the issuer has no usable keys (never loaded, or stale)"),
            (Some(k), Some(kid)) if k.has_kid(kid) => step("key", "pass", format!("kid {kid:?} is in the key set")),
            (Some(k), Some(kid)) => step("key", "fail", format!("kid {kid:?} is not among {:?} (an unknown kid triggers one rate-limited refetch)", k.kids())),
            (Some(k), None) => step("key", "pass", format!("no kid: every key of the algorithm is tried ({} keys)", k.keys.len())),
        });
    }

    let result = verifier.verify_uncached(token).await;
    let now = now_unix();
    let outcome_of = |failed: bool| if failed { "fail" } else { "pass" };
    let (denial, verified) = match result {
        Ok(v) => (None, Some(v)),
        Err(f) => (Some(f.denial), None),
    };
    let sig_failed = matches!(denial, Some(Denial::BadSignature));
    let before_sig = matches!(
        denial,
        Some(
            Denial::Malformed(_)
                | Denial::WrongIssuer
                | Denial::DisallowedAlg
                | Denial::UnknownKid(_)
        )
    ) && verified.is_none()
        && !matches!(denial, Some(Denial::Malformed(m)) if m.contains("exp") || m.contains("nbf") || m.contains("iat") || m.contains("lifetime"));
    steps.push(step(
        "signature",
        if before_sig {
            "skip"
        } else {
            outcome_of(sig_failed)
        },
        if before_sig {
            "not checked".to_string()
        } else if sig_failed {
            "does not verify with the key".into()
        } else {
            "verifies".into()
        },
    ));
    if !before_sig && !sig_failed {
        let num = |k: &str| claims.get(k).and_then(Value::as_u64);
        steps.push(match num("exp") {
            None => step("exp", "fail", "missing (required)"),
            Some(e) => step(
                "exp",
                outcome_of(matches!(denial, Some(Denial::Expired))),
                format!("expires {}", relative(e, now)),
            ),
        });
        steps.push(match num("nbf") {
            None => step("nbf", "skip", "absent"),
            Some(n) => step(
                "nbf",
                outcome_of(matches!(denial, Some(Denial::NotYetValid)) && n > now),
                format!("valid from {}", relative(n, now)),
            ),
        });
        steps.push(match num("iat") {
            None => step(
                "iat",
                "note",
                "absent: counts as issued at exp - max_lifetime for subject cut-offs",
            ),
            Some(t) => step(
                "iat",
                outcome_of(t > now + 300),
                format!("issued {}", relative(t, now)),
            ),
        });
        steps.push(step(
            "aud",
            outcome_of(matches!(denial, Some(Denial::WrongAudience))),
            format!(
                "aud {}",
                claims
                    .get("aud")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "absent".into())
            ),
        ));
        steps.push(step(
            "lifetime",
            outcome_of(matches!(denial, Some(Denial::Malformed(m)) if m.contains("lifetime"))),
            match issuer {
                Some(i) => format!("max_lifetime {}s", i.config.max_lifetime.as_secs()),
                None => String::new(),
            },
        ));
    }

    let mut final_denial = denial;
    let mut issuer_id = issuer.map(|i| i.id().to_string());
    if let Some(v) = &verified {
        issuer_id = Some(verifier.issuer_id(Some(v.issuer)).to_string());
        let max = verifier.issuers[v.issuer].config.max_lifetime.as_secs();
        match revoked(v, max) {
            Some(true) => {
                steps.push(step(
                    "revocation",
                    "fail",
                    "the token's jti or its subject's cut-off is revoked",
                ));
                final_denial = Some(Denial::Revoked);
            }
            Some(false) => steps.push(step("revocation", "pass", "not revoked")),
            None => steps.push(step(
                "revocation",
                "skip",
                "no revocation list available here",
            )),
        }
        let cnf = v.claims.get("cnf").and_then(Value::as_object);
        steps.push(match cnf {
            Some(c) if c.contains_key("jkt") => step("binding", "note", "DPoP-bound: each request needs `Authorization: DPoP` and a fresh proof signed by the key with that thumbprint"),
            Some(c) if c.contains_key("x5t#S256") => step("binding", "note", "certificate-bound: only over a TLS connection presenting the client certificate with that SHA-256 thumbprint"),
            _ => step("binding", "pass", "a bearer token (not sender-constrained)"),
        });
        if final_denial.is_none() {
            if let (Some(routes), Some(q)) = (routes, &query) {
                let host = q.host.split(':').next().unwrap_or("").to_ascii_lowercase();
                let path = normalize_path(&q.path).map(|p| p.into_owned());
                match path.as_deref().map(|p| routes.lookup(&host, p, &q.method)) {
                    None => {
                        steps.push(step(
                            "route",
                            "fail",
                            "the path is refused before routing (400)",
                        ));
                        final_denial = Some(Denial::BadPath);
                    }
                    Some(RouteMatch::NoRoute) => {
                        steps.push(step("route", "fail", "no route matches (404)"));
                        final_denial = Some(Denial::NoRoute);
                    }
                    Some(RouteMatch::MethodNotAllowed(allow)) => {
                        steps.push(step(
                            "route",
                            "fail",
                            format!(
                                "method not allowed (405); allowed: {}",
                                allow.to_str().unwrap_or("")
                            ),
                        ));
                        final_denial = Some(Denial::MethodNotAllowed(allow));
                    }
                    Some(RouteMatch::Found(r)) => {
                        steps.push(step(
                            "route",
                            "pass",
                            format!(
                                "route `{}` to upstream `{}`, auth {:?}",
                                r.id, r.upstream, r.auth
                            ),
                        ));
                        if r.auth == AuthMode::Public {
                            steps.push(step(
                                "policy",
                                "note",
                                "public route: the token is ignored",
                            ));
                        } else if r.require_bound_token && cnf.is_none() {
                            steps.push(step(
                                "policy",
                                "fail",
                                "the route requires a sender-constrained token",
                            ));
                            final_denial = Some(Denial::BindingFailed(
                                "this route requires a sender-constrained token",
                            ));
                        } else {
                            match policy::check(r, v, issuer_id.as_deref().unwrap_or("")) {
                                Ok(()) => steps.push(step(
                                    "policy",
                                    "pass",
                                    format!(
                                        "issuers {:?}, scopes {:?}, claims {:?}",
                                        r.issuers, r.scopes, r.claims
                                    ),
                                )),
                                Err(d) => {
                                    let missing = match &d {
                                        Denial::InsufficientScope(s) if !s.is_empty() => {
                                            format!("missing scopes: {s}")
                                        }
                                        _ => format!(
                                            "issuers {:?} or claims {:?} not satisfied",
                                            r.issuers, r.claims
                                        ),
                                    };
                                    steps.push(step("policy", "fail", missing));
                                    final_denial = Some(d);
                                }
                            }
                        }
                    }
                }
            } else {
                steps.push(step(
                    "route",
                    "skip",
                    "give method, host and path to check a route's policy",
                ));
            }
        }
    }

    let (decision, status, result, description) = match &final_denial {
        None => ("allow", 200, "allowed", "the token passes".to_string()),
        Some(d) => (
            "deny",
            d.status().as_u16(),
            d.auth_result().unwrap_or("refused"),
            d.description().to_string(),
        ),
    };
    Trace {
        decision,
        status,
        result,
        description,
        issuer: issuer_id,
        header,
        claims: if claims.is_object() {
            claims
        } else {
            Value::Object(Map::new())
        },
        steps,
    }
}

impl Trace {
    /// The human-readable form `token inspect` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            out.push_str(&format!(
                "  {:<5} {:<11} {}\n",
                s.outcome, s.check, s.detail
            ));
        }
        out.push_str(&format!(
            "decision: {} ({} {}): {}\n",
            self.decision, self.status, self.result, self.description
        ));
        out
    }
}
