//! Where a token comes from: the `Authorization` header, a cookie, or (only
//! when enabled) the `access_token` query parameter. A request that presents
//! more than one is ambiguous and refused, so that no component downstream can
//! pick a different token than the one the gateway checked.

use http::{header, HeaderMap, Uri};

use crate::config::TokenConfig;
use crate::denial::Denial;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub token: String,
    pub source: TokenSource,
    /// `Authorization: DPoP ...` rather than `Bearer`.
    pub dpop_scheme: bool,
}

/// Splits `Authorization` into a scheme we know and its credentials. Other
/// schemes (Basic, say) count as no token: they may be for the upstream.
fn from_authorization(value: &[u8]) -> Result<Option<(String, bool)>, Denial> {
    match plain_bearer(value) {
        Some(token) => Ok(Some((token.to_string(), false))),
        None => from_authorization_general(value),
    }
}

/// The usual value, `Bearer ` and a token of visible ASCII, checked in one
/// pass (a branch-free fold the compiler vectorises). `None` leaves the value
/// to [`from_authorization_general`], which would judge this one the same.
pub(crate) fn plain_bearer(value: &[u8]) -> Option<&str> {
    let token = value
        .get(7..)
        .filter(|_| value[..7].eq_ignore_ascii_case(b"bearer "))?;
    let visible = token
        .iter()
        .fold(true, |ok, &c| ok & (c.wrapping_sub(0x21) < 0x5e));
    // Visible ASCII is UTF-8, so the conversion below cannot fail.
    (visible && !token.is_empty())
        .then(|| std::str::from_utf8(token).ok())
        .flatten()
}

fn from_authorization_general(value: &[u8]) -> Result<Option<(String, bool)>, Denial> {
    let s = std::str::from_utf8(value)
        .map_err(|_| Denial::Malformed("Authorization header is not text"))?;
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let dpop = if scheme.eq_ignore_ascii_case("bearer") {
        false
    } else if scheme.eq_ignore_ascii_case("dpop") {
        true
    } else {
        return Ok(None);
    };
    let token = rest.trim();
    if token.is_empty() {
        return Err(Denial::Malformed("empty bearer token"));
    }
    if token.contains(' ') {
        return Err(Denial::Malformed("bearer token contains spaces"));
    }
    Ok(Some((token.to_string(), dpop)))
}

fn from_cookies(headers: &HeaderMap, name: &str) -> Result<Option<String>, Denial> {
    let mut found: Option<String> = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((k, val)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() == name {
                let val = val.trim().trim_matches('"');
                match &found {
                    Some(prev) if prev != val => {
                        return Err(Denial::InvalidRequest(
                            "the token cookie is sent twice with different values",
                        ));
                    }
                    _ => found = Some(val.to_string()),
                }
            }
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// The value of `access_token` in a query string, percent-decoded.
pub fn from_query(query: &str) -> Result<Option<String>, Denial> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "access_token" {
            if found.is_some() {
                return Err(Denial::InvalidRequest(
                    "access_token appears twice in the query",
                ));
            }
            found = Some(percent_decode(v).ok_or(Denial::Malformed(
                "access_token is not valid percent-encoding",
            ))?);
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Removes `access_token` from a query string before it goes upstream or into a log.
pub fn strip_access_token(query: &str) -> String {
    query
        .split('&')
        .filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != "access_token")
        .collect::<Vec<_>>()
        .join("&")
}

/// Finds the request's token in the configured sources.
pub fn extract(
    headers: &HeaderMap,
    uri: &Uri,
    cfg: &TokenConfig,
) -> Result<Option<Presented>, Denial> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let first = auth.next();
    if auth.next().is_some() {
        return Err(Denial::InvalidRequest("more than one Authorization header"));
    }
    // At most one may be found; a second is an error, so nothing is collected.
    let mut found: Option<Presented> = None;
    let mut places = 0;
    if cfg.header {
        if let Some(v) = first {
            if let Some((token, dpop_scheme)) = from_authorization(v.as_bytes())? {
                places += 1;
                found = Some(Presented {
                    token,
                    source: TokenSource::Header,
                    dpop_scheme,
                });
            }
        }
    }
    if let Some(name) = &cfg.cookie {
        if let Some(token) = from_cookies(headers, name)? {
            places += 1;
            found = Some(Presented {
                token,
                source: TokenSource::Cookie,
                dpop_scheme: false,
            });
        }
    }
    if cfg.query {
        if let Some(token) = uri.query().map(from_query).transpose()?.flatten() {
            places += 1;
            found = Some(Presented {
                token,
                source: TokenSource::Query,
                dpop_scheme: false,
            });
        }
    }
    if places > 1 {
        return Err(Denial::InvalidRequest(
            "a token is presented in more than one place",
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TokenConfig {
        TokenConfig {
            header: true,
            cookie: Some("access_token".into()),
            csrf_origins: vec![],
            query: true,
            max_bytes: 8192,
            cache_entries: 0,
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bEaReR abc.def.ghi".parse().unwrap());
        let p = extract(&h, &Uri::from_static("/"), &cfg())
            .unwrap()
            .unwrap();
        assert_eq!(p.token, "abc.def.ghi");
        assert_eq!(p.source, TokenSource::Header);
    }

    #[test]
    fn other_schemes_are_no_token() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(extract(&h, &Uri::from_static("/"), &cfg()).unwrap(), None);
    }

    #[test]
    fn two_sources_are_ambiguous() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        h.insert(header::COOKIE, "x=1; access_token=d.e.f".parse().unwrap());
        assert!(matches!(
            extract(&h, &Uri::from_static("/"), &cfg()),
            Err(Denial::InvalidRequest(_))
        ));
    }

    #[test]
    fn query_token_is_found_and_stripped() {
        let uri = Uri::from_static("/x?a=1&access_token=t.o.k&b=2");
        let p = extract(&HeaderMap::new(), &uri, &cfg()).unwrap().unwrap();
        assert_eq!(p.token, "t.o.k");
        assert_eq!(strip_access_token(uri.query().unwrap()), "a=1&b=2");
    }

    #[test]
    fn the_plain_bearer_shortcut_judges_as_the_general_parser_does() {
        let values: [&[u8]; 14] = [
            b"Bearer abc.def.ghi",
            b"bearer abc.def.ghi",
            b"BEARER a",
            b"Bearer ",
            b"Bearer",
            b"Bearer  two.spaces.before",
            b"Bearer a.b.c ",
            b"Bearer a b",
            b"Bearer a\tb",
            b"Bearer caf\xc3\xa9",
            b"Bearer \xff\xfe",
            b"DPoP abc.def.ghi",
            b"Basic dXNlcjpwYXNz",
            b"Bearer~abc",
        ];
        for v in values {
            let general = from_authorization_general(v);
            assert_eq!(
                from_authorization(v),
                general,
                "{:?}",
                String::from_utf8_lossy(v)
            );
            if let Some(t) = plain_bearer(v) {
                assert_eq!(general, Ok(Some((t.to_string(), false))));
            }
        }
        // The shortcut is taken for the usual shape, and only for it.
        assert_eq!(plain_bearer(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(plain_bearer(b"Bearer a b"), None);
        assert_eq!(plain_bearer(b"Bearer a\x7f"), None);
    }
}
