//! Path safety and the route table: host (exact, then `*.` wildcard, then
//! none), longest whole-segment path prefix, then method.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{AuthMode, CorsConfig, HostMatch, RouteConfig};

/// A path that could mean a different resource once an upstream normalises it:
/// dot segments (raw or percent-encoded), encoded slashes or backslashes, raw
/// backslashes, NUL. Refused before routing, so a public prefix can never lead
/// to a protected one.
pub fn path_is_unsafe(path: &str) -> bool {
    if !path.starts_with('/') {
        return true;
    }
    let mut escapes_or_dots = false;
    for &c in path.as_bytes() {
        match c {
            b'\\' | 0 => return true,
            b'%' | b'.' => escapes_or_dots = true,
            _ => {}
        }
    }
    // Without a `%` or a `.` no escape and no dot segment can be present:
    // most paths end here, without the lowercased copy below.
    if !escapes_or_dots {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return true;
    }
    lower.split('/').any(|seg| {
        let seg = seg.replace("%2e", ".");
        // `..;x` is a dot segment to servers that read `;` as a parameter.
        let seg = seg.split(';').next().unwrap_or("");
        seg == "." || seg == ".."
    })
}

/// Decodes percent-encoded unreserved characters (RFC 3986 2.3: `%61` and `a`
/// are the same URI), so that `/%61dmin` is routed, and forwarded, as
/// `/admin`; then refuses unsafe paths. `None`: the path is unsafe.
pub fn normalize_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let b = path.as_bytes();
    let unreserved = |c: u8| c.is_ascii_alphanumeric() || b"-._~".contains(&c);
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    // A `%` that does not start an escape is invalid (RFC 3986 2.1), and could
    // become one once its neighbours are decoded (`%%36%31` -> `%61`).
    let stray = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).copied().and_then(hex).is_some()
                && b.get(i + 2).copied().and_then(hex).is_some())
    });
    if stray {
        return None;
    }
    let decodable = |i: usize| -> Option<u8> {
        if b.get(i) != Some(&b'%') {
            return None;
        }
        let c = hex(*b.get(i + 1)?)? * 16 + hex(*b.get(i + 2)?)?;
        unreserved(c).then_some(c)
    };
    let path: std::borrow::Cow<'_, str> = if (0..b.len()).any(|i| decodable(i).is_some()) {
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if let Some(c) = decodable(i) {
                out.push(c);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        std::borrow::Cow::Owned(String::from_utf8(out).ok()?)
    } else {
        std::borrow::Cow::Borrowed(path)
    };
    if path_is_unsafe(&path) {
        None
    } else {
        Some(path)
    }
}

/// A route, ready for the request path.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration; indexes the runtime's per-route state.
    pub index: usize,
    pub id: String,
    pub host: Option<HostMatch>,
    pub prefix: String,
    pub methods: Option<Vec<Method>>,
    pub upstream: String,
    pub auth: AuthMode,
    pub issuers: Option<Vec<String>>,
    pub scopes: Vec<String>,
    pub claims: Vec<(String, Vec<String>)>,
    pub require_bound_token: bool,
    pub forward_authorization: bool,
    pub cors: Option<CorsConfig>,
    pub max_body_bytes: Option<usize>,
}

impl Route {
    fn allows(&self, m: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(m))
    }
}

pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    MethodNotAllowed(HeaderValue),
    NoRoute,
}

/// The routes of one host group, by path prefix: a lookup tries the path's
/// own segment prefixes, longest first, so it costs a few hash probes however
/// many routes there are.
#[derive(Debug, Default)]
struct Group {
    by_prefix: HashMap<String, Vec<Arc<Route>>>,
}

impl Group {
    fn add(&mut self, route: Arc<Route>) {
        self.by_prefix
            .entry(route.prefix.clone())
            .or_default()
            .push(route);
    }

    /// The routes at the longest prefix of `path` (whole segments).
    fn longest(&self, path: &str) -> Option<&[Arc<Route>]> {
        let mut end = path.len();
        loop {
            if let Some(v) = self.by_prefix.get(&path[..end]) {
                return Some(v);
            }
            match path[..end].rfind('/') {
                Some(0) if end > 1 => end = 1,
                Some(i) if i > 0 => end = i,
                _ => return None,
            }
        }
    }
}

/// Routes grouped by how specifically they name the host.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Group>,
    /// `.example.com` suffixes, longest (most specific) first.
    wildcard: Vec<(String, Group)>,
    any: Group,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig], forward_authorization: bool) -> RouteTable {
        let mut t = RouteTable::default();
        for (index, r) in routes.iter().enumerate() {
            let route = Arc::new(Route {
                index,
                id: r.id.clone(),
                host: r.host.clone(),
                prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
                upstream: r.upstream.clone(),
                auth: r.auth,
                issuers: r.issuers.clone(),
                scopes: r.scopes.clone(),
                claims: r.claims.clone(),
                require_bound_token: r.require_bound_token,
                forward_authorization: r.forward_authorization.unwrap_or(forward_authorization),
                cors: r.cors.clone(),
                max_body_bytes: r.max_body_bytes,
            });
            match &r.host {
                Some(HostMatch::Exact(h)) => t.exact.entry(h.clone()).or_default().add(route),
                Some(HostMatch::Wildcard(s)) => match t.wildcard.iter_mut().find(|(w, _)| w == s) {
                    Some((_, g)) => g.add(route),
                    None => {
                        let mut g = Group::default();
                        g.add(route);
                        t.wildcard.push((s.clone(), g));
                    }
                },
                None => t.any.add(route),
            }
        }
        t.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t
    }

    /// Finds the route for a request. `host` is lower case without its port.
    pub fn lookup(&self, host: &str, path: &str, method: &Method) -> RouteMatch<'_> {
        let exact = self.exact.get(host);
        let wild = self
            .wildcard
            .iter()
            .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, g)| g);
        let groups = exact
            .into_iter()
            .chain(wild)
            .chain(std::iter::once(&self.any));
        for group in groups {
            let Some(routes) = group.longest(path) else {
                continue;
            };
            let mut allow: Vec<&str> = Vec::new();
            for r in routes {
                if r.allows(method) {
                    return RouteMatch::Found(r);
                }
                for m in r.methods.iter().flatten() {
                    if !allow.contains(&m.as_str()) {
                        allow.push(m.as_str());
                    }
                }
            }
            let allow = HeaderValue::from_str(&allow.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            return RouteMatch::MethodNotAllowed(allow);
        }
        RouteMatch::NoRoute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_recognised() {
        for p in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/.%2E/admin",
            "/a/./b",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a%00",
            "relative",
        ] {
            assert!(path_is_unsafe(p), "{p}");
        }
        for p in ["/", "/orders", "/a/b.c/d", "/a/..b", "/a%20b"] {
            assert!(!path_is_unsafe(p), "{p}");
        }
        assert!(path_is_unsafe("/public/..;/admin"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_routing() {
        assert_eq!(normalize_path("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize_path("/x%7e").unwrap(), "/x~");
        assert!(normalize_path("/p/%2E%2e/admin").is_none());
        assert!(normalize_path("/p/%2e%2E;x/admin").is_none());
        assert!(normalize_path("/a%2fb").is_none());
        assert!(normalize_path("/%%36%31dmin").is_none());
        assert!(normalize_path("/%6%39").is_none());
        assert!(normalize_path("/100%").is_none());
    }
}
