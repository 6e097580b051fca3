//! The header rewrite between client and upstream: hop-by-hop headers out,
//! every client-sent identity header out, the verified identity in. Upstreams
//! can trust identity headers because no client-sent copy survives this step,
//! whatever its case or `_`/`-` spelling, and no claim value can break out of
//! its header.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::auth::policy::claim;
use crate::auth::verify::Verified;
use crate::config::{normalize_header, IdentityConfig};

/// Pre-built names: removing by `&str` parsed each name again, twice per request.
pub(crate) static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none, or only a `Connection: keep-alive`: comparing
    // the few names present is cheaper than hashing each of the nine for a
    // removal, and nothing is allocated unless `Connection` names a header
    // outside the list.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for t in tokens {
            // `from_bytes` folds case, as header names compare.
            if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                if !HOP_BY_HOP.contains(&name) && !named.contains(&name) {
                    named.push(name);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in &named {
        headers.remove(name);
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl Pattern {
    fn parse(p: &str) -> Pattern {
        let starts = p.starts_with('*');
        let ends = p.ends_with('*') && p.len() > 1;
        let body = p.trim_matches('*').to_string();
        match (starts, ends) {
            (true, true) => Pattern::Contains(body),
            (true, false) => Pattern::Suffix(body),
            (false, true) => Pattern::Prefix(body),
            (false, false) => Pattern::Exact(body),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(s) => name == s,
            Pattern::Prefix(s) => name.starts_with(s.as_str()),
            Pattern::Suffix(s) => name.ends_with(s.as_str()),
            Pattern::Contains(s) => name.contains(s.as_str()),
        }
    }
}

/// What the gateway removes from and adds to every forwarded request.
#[derive(Debug, Clone)]
pub struct IdentityPlan {
    pub headers: Vec<(HeaderName, String)>,
    strip: Vec<Pattern>,
    pub claims_header: Option<HeaderName>,
}

/// Headers the gateway itself sets, which a client must never be able to pre-fill.
const ALWAYS_STRIPPED: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

impl IdentityPlan {
    pub fn new(cfg: &IdentityConfig) -> IdentityPlan {
        let mut strip: Vec<Pattern> = cfg.strip.iter().map(|p| Pattern::parse(p)).collect();
        let own = cfg
            .headers
            .iter()
            .map(|(h, _)| h.clone())
            .chain(cfg.claims_header.clone())
            .chain(cfg.assertion.as_ref().map(|a| a.header.clone()));
        strip.extend(own.map(|h| Pattern::Exact(normalize_header(h.as_str()))));
        strip.extend(
            ALWAYS_STRIPPED
                .iter()
                .map(|h| Pattern::Exact((*h).to_string())),
        );
        IdentityPlan {
            headers: cfg.headers.clone(),
            strip,
            claims_header: cfg.claims_header.clone(),
        }
    }

    /// Removes every client-sent header that the plan owns, compared
    /// case-insensitively and with `_` read as `-`.
    pub fn strip_client_identity(&self, headers: &mut HeaderMap) {
        // Clients rarely send one: the names are collected only when they do.
        if !headers.keys().any(|n| self.owns(n.as_str())) {
            return;
        }
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.owns(n.as_str()))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
        }
    }

    /// Whether a client-sent header of this name is one the plan owns
    /// (compared case-insensitively, with `_` read as `-`).
    pub fn owns(&self, name: &str) -> bool {
        if !name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
            return self.strip.iter().any(|p| p.matches(name));
        }
        // Raw names keep the client's case: folded on the stack when short.
        let mut buf = [0u8; 64];
        match buf.get_mut(..name.len()) {
            Some(folded) => {
                for (o, b) in folded.iter_mut().zip(name.bytes()) {
                    *o = if b == b'_' {
                        b'-'
                    } else {
                        b.to_ascii_lowercase()
                    };
                }
                // ASCII in, ASCII out.
                let n = std::str::from_utf8(folded).unwrap_or_default();
                self.strip.iter().any(|p| p.matches(n))
            }
            None => {
                let n = normalize_header(name);
                self.strip.iter().any(|p| p.matches(&n))
            }
        }
    }

    /// The identity headers for verified claims (and, for `claims_header`,
    /// the token they came from).
    pub fn render(
        &self,
        claims: &serde_json::Map<String, Value>,
        token: Option<&str>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.headers.len() + 1);
        for (name, path) in &self.headers {
            if let Some(value) = claim(claims, path).and_then(header_value) {
                out.push((name.clone(), value));
            }
        }
        let payload = || token.and_then(|t| t.split('.').nth(1));
        if let (Some(name), Some(payload)) = (&self.claims_header, payload()) {
            if let Ok(v) = HeaderValue::from_str(payload) {
                out.push((name.clone(), v));
            }
        }
        out
    }

    /// Adds the identity headers of a verified token, rendered once per
    /// cached verification.
    pub fn add_identity(&self, headers: &mut HeaderMap, verified: &Verified, token: Option<&str>) {
        for (name, value) in self.rendered(verified, token) {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// The identity headers for a verification, rendered once and kept with it.
    pub fn rendered<'v>(
        &self,
        verified: &'v Verified,
        token: Option<&str>,
    ) -> &'v [(HeaderName, HeaderValue)] {
        verified
            .identity
            .get_or_init(|| self.render(&verified.claims, token))
    }
}

/// Renders a claim for a header: strings as they are, arrays joined with `,`,
/// objects as JSON; every byte outside visible ASCII, and `%` and `,` inside
/// array elements, percent-encoded, so the value is one unambiguous header.
pub fn render_claim(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|i| scalar(i).map(|s| percent_encode(&s, true)))
                .collect();
            Some(parts.join(","))
        }
        other => scalar(other).map(|s| percent_encode(&s, false)),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn header_value(v: &Value) -> Option<HeaderValue> {
    render_claim(v).and_then(|s| HeaderValue::from_str(&s).ok())
}

pub fn percent_encode(s: &str, in_list: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let visible = (0x21..=0x7e).contains(&b);
        if !visible || b == b'%' || (in_list && b == b',') {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connection_named_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.append("connection", " X-Other ,, Bad Name".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("x-other").is_none() && h.get("connection").is_none());
        assert!(h.get("x-kept").is_some());
        assert_eq!(h.len(), 1);

        // Hop-by-hop headers go without a `Connection` naming them.
        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn claims_cannot_inject_headers() {
        assert_eq!(
            render_claim(&json!("a\r\nX-Admin: yes")).unwrap(),
            "a%0D%0AX-Admin:%20yes"
        );
        assert_eq!(render_claim(&json!(["a,b", "c"])).unwrap(), "a%2Cb,c");
        assert_eq!(render_claim(&json!("100%")).unwrap(), "100%25");
        assert_eq!(render_claim(&json!("Zoë")).unwrap(), "Zo%C3%AB");
        assert_eq!(render_claim(&json!({"a": 1})).unwrap(), "{\"a\":1}");
    }

    #[test]
    fn patterns() {
        assert!(Pattern::parse("x-user-*").matches("x-user-id"));
        assert!(!Pattern::parse("x-user-*").matches("x-userid"));
        assert!(Pattern::parse("*-email").matches("x-user-email"));
        assert!(Pattern::parse("x-a").matches("x-a"));
    }
}
