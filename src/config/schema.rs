//! The sections of the configuration file and their defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::reader::{child_path, tables, At, FromToml, Source, Table};
use super::*;

const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

pub fn read(src: &Source, text: &str) -> Option<Config> {
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            src.report(span, "(syntax)", e.message().trim().to_string());
            return None;
        }
    };
    let root = Table::root(&doc);

    let server = read_server(src, &root);
    let admin = read_admin(src, &root);
    let token = read_token(src, &root);
    let issuers = read_issuers(src, &root);
    let identity = read_identity(src, &root);
    let revocation = read_revocation(src, &root);
    let upstreams = read_upstreams(src, &root);
    let routes = read_routes(src, &root, &issuers, &upstreams);
    root.finish(
        src,
        &[
            "server",
            "admin",
            "token",
            "issuer",
            "identity",
            "revocation",
            "upstream",
            "route",
        ],
    );

    Some(Config {
        file: src.file().to_path_buf(),
        server: server?,
        admin,
        token,
        issuers,
        identity,
        revocation,
        upstreams,
        routes,
    })
}

fn read_server(src: &Source, root: &Table) -> Option<ServerConfig> {
    let empty = DeTable::default();
    let spanned = toml::Spanned::new(0..0, DeValue::Table(empty));
    let t = match root.sub_table(src, "server") {
        Some(t) => t,
        None => Table::from_value(src, &spanned, "server".into())?,
    };
    let listen: Vec<SocketAddr> = t.or(src, "listen", vec![SocketAddr::from(([0, 0, 0, 0], 8443))]);
    if listen.is_empty() {
        src.report_at(
            t.key_loc(src, "listen"),
            &t.field("listen"),
            "needs at least one address",
        );
    }
    let tls = t.sub_table(src, "tls").and_then(|tls| {
        let cert = tls.required_at::<PathBuf>(src, "cert");
        let key = tls.required_at::<PathBuf>(src, "key");
        let client_ca = tls.get_at::<PathBuf>(src, "client_ca");
        let client_auth = match tls.get_at::<String>(src, "client_auth") {
            None => {
                if client_ca.is_some() {
                    ClientAuth::Optional
                } else {
                    ClientAuth::None
                }
            }
            Some(a) => match a.value.as_str() {
                "none" => ClientAuth::None,
                "optional" => ClientAuth::Optional,
                "required" => ClientAuth::Required,
                other => {
                    src.report_at(
                        a.loc,
                        &a.field,
                        format!("\"{other}\" is not one of \"none\", \"optional\", \"required\""),
                    );
                    ClientAuth::None
                }
            },
        };
        if client_auth != ClientAuth::None && client_ca.is_none() {
            src.report_at(
                tls.key_loc(src, "client_ca"),
                &tls.field("client_ca"),
                "is required when client_auth is \"optional\" or \"required\"",
            );
        }
        tls.finish(src, &["cert", "key", "client_ca", "client_auth"]);
        Some(ServerTls {
            cert: cert?,
            key: key?,
            client_ca,
            client_auth,
        })
    });
    let trusted_proxies = t
        .get::<Vec<At<String>>>(src, "trusted_proxies")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| match IpNet::parse(&s) {
            Ok(n) => Some(n),
            Err(e) => {
                src.report_at(s.loc, &s.field, e);
                None
            }
        })
        .collect();
    let max_header_bytes = t.or(src, "max_header_bytes", 16384usize);
    if max_header_bytes < 1024 {
        src.report_at(
            t.key_loc(src, "max_header_bytes"),
            &t.field("max_header_bytes"),
            "must be at least 1024",
        );
    }
    let max_connections = t.or(src, "max_connections", 10000usize);
    if max_connections == 0 {
        src.report_at(
            t.key_loc(src, "max_connections"),
            &t.field("max_connections"),
            "must be at least 1",
        );
    }
    let server = ServerConfig {
        listen,
        tls,
        http2: t.or(src, "http2", true),
        trusted_proxies,
        header_read_timeout: positive(src, &t, "header_read_timeout", Duration::from_secs(10)),
        idle_timeout: positive(src, &t, "idle_timeout", Duration::from_secs(60)),
        max_header_bytes,
        max_connections,
        shutdown_grace: t.or(src, "shutdown_grace", Duration::from_secs(30)),
        workers: t.or(src, "workers", 0usize),
        fast_path: t.or(src, "fast_path", true),
    };
    t.finish(
        src,
        &[
            "listen",
            "tls",
            "http2",
            "trusted_proxies",
            "header_read_timeout",
            "idle_timeout",
            "max_header_bytes",
            "max_connections",
            "shutdown_grace",
            "workers",
            "fast_path",
        ],
    );
    Some(server)
}

fn positive(src: &Source, t: &Table, key: &str, default: Duration) -> Duration {
    match t.get_at::<Duration>(src, key) {
        Some(d) if d.is_zero() => {
            src.report_at(d.loc, &d.field, "must be longer than zero");
            default
        }
        Some(d) => d.value,
        None => default,
    }
}

fn read_admin(src: &Source, root: &Table) -> AdminConfig {
    let Some(t) = root.sub_table(src, "admin") else {
        return AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            token_file: None,
        };
    };
    let listen = match t.raw("listen").map(|v| v.get_ref()) {
        Some(DeValue::Boolean(false)) => None,
        _ => Some(t.or(src, "listen", SocketAddr::from(([127, 0, 0, 1], 9901)))),
    };
    let admin = AdminConfig {
        listen,
        token_file: t.get_at(src, "token_file"),
    };
    t.finish(src, &["listen", "token_file"]);
    admin
}

fn read_token(src: &Source, root: &Table) -> TokenConfig {
    let defaults = TokenConfig {
        header: true,
        cookie: None,
        csrf_origins: Vec::new(),
        query: false,
        max_bytes: 8192,
        cache_entries: 100_000,
    };
    let Some(t) = root.sub_table(src, "token") else {
        return defaults;
    };
    let cfg = TokenConfig {
        header: t.or(src, "header", defaults.header),
        cookie: t.get(src, "cookie"),
        csrf_origins: t.or(src, "csrf_origins", Vec::new()),
        query: t.or(src, "query", false),
        max_bytes: t.or(src, "max_bytes", defaults.max_bytes),
        cache_entries: t.or(src, "cache_entries", defaults.cache_entries),
    };
    if !cfg.header && cfg.cookie.is_none() && !cfg.query {
        src.report_at(
            t.loc(src),
            &t.path,
            "no token source is enabled: set header = true, a cookie or query = true",
        );
    }
    t.finish(
        src,
        &[
            "header",
            "cookie",
            "csrf_origins",
            "query",
            "max_bytes",
            "cache_entries",
        ],
    );
    cfg
}

fn read_issuers(src: &Source, root: &Table) -> Vec<IssuerConfig> {
    let Some(v) = root.raw("issuer") else {
        return Vec::new();
    };
    let mut out: Vec<IssuerConfig> = Vec::new();
    for (_, t) in tables(src, v, "issuer") {
        if let Some(i) = read_issuer(src, &t) {
            if out.iter().any(|o| o.id == i.id) {
                src.report_at(
                    t.key_loc(src, "id"),
                    &t.field("id"),
                    format!("\"{}\" is used by another [[issuer]]", i.id),
                );
            }
            out.push(i);
        }
        t.finish(
            src,
            &[
                "id",
                "issuer",
                "discovery",
                "jwks_uri",
                "jwks_file",
                "secret_file",
                "audiences",
                "algorithms",
                "leeway",
                "max_lifetime",
                "ca",
                "refresh",
                "min_refresh",
                "stale_for",
                "fetch_timeout",
                "dpop_nonce",
            ],
        );
    }
    out
}

fn read_issuer(src: &Source, t: &Table) -> Option<IssuerConfig> {
    let id = t.required_at::<String>(src, "id");
    if let Some(id) = &id {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            src.report_at(
                id.loc,
                &id.field,
                "must be letters, digits, '-', '_' or '.' (it becomes a metrics label)",
            );
        }
    }
    let issuer = t.required_at::<String>(src, "issuer");
    let discovery = t.get_at::<bool>(src, "discovery");
    let jwks_uri = t.get_at::<String>(src, "jwks_uri");
    let jwks_file = t.get_at::<PathBuf>(src, "jwks_file");
    let secret_file = t.get_at::<PathBuf>(src, "secret_file");
    let mut sources = Vec::new();
    if discovery.as_ref().is_some_and(|d| d.value) {
        sources.push(KeySource::Discovery);
    }
    if let Some(u) = jwks_uri {
        if let Err(e) = check_idp_url(&u) {
            src.report_at(u.loc, &u.field, e);
        }
        sources.push(KeySource::JwksUri(u));
    }
    if let Some(f) = jwks_file {
        sources.push(KeySource::JwksFile(f));
    }
    if let Some(f) = secret_file {
        sources.push(KeySource::Secret(f));
    }
    if sources.len() != 1 {
        src.report_at(
            t.loc(src),
            &t.path,
            "needs exactly one key source: discovery = true, jwks_uri, jwks_file or secret_file",
        );
    }
    if let (Some(iss), Some(KeySource::Discovery)) = (&issuer, sources.first()) {
        if let Err(e) = check_idp_url(iss) {
            src.report_at(iss.loc, &iss.field, format!("{e} (needed for discovery)"));
        }
    }
    let audiences = t.required_at::<Vec<String>>(src, "audiences");
    if let Some(a) = &audiences {
        if a.is_empty() {
            src.report_at(a.loc, &a.field, "needs at least one audience");
        }
    }
    let algorithms: Vec<jsonwebtoken::Algorithm> = match t
        .required_at::<Vec<At<String>>>(src, "algorithms")
    {
        None => Vec::new(),
        Some(list) => {
            if list.is_empty() {
                src.report_at(list.loc, &list.field, "needs at least one algorithm");
            }
            list.value
                .iter()
                .filter_map(|a| {
                    if a.eq_ignore_ascii_case("none") {
                        src.report_at(a.loc, &a.field, "\"none\" is never accepted");
                        return None;
                    }
                    match ALGORITHMS.iter().find(|x| **x == a.as_str()) {
                        Some(x) => jsonwebtoken::Algorithm::from_str(x).ok(),
                        None => {
                            src.report_at(
                                a.loc,
                                &a.field,
                                format!("\"{}\" is not one of {}", a.value, ALGORITHMS.join(", ")),
                            );
                            None
                        }
                    }
                })
                .collect()
        }
    };
    let hmac = algorithms.iter().filter(|a| is_hmac(**a)).count();
    if hmac > 0 && hmac < algorithms.len() {
        src.report_at(
            t.key_loc(src, "algorithms"),
            &t.field("algorithms"),
            "mixes HMAC (HS*) and public-key algorithms; an issuer is one or the other, so that a public key can never be used as an HMAC secret",
        );
    }
    match sources.first() {
        Some(KeySource::Secret(f)) if hmac != algorithms.len() || algorithms.is_empty() => {
            src.report_at(f.loc, &f.field, "is only for HS256/HS384/HS512 algorithms");
        }
        Some(KeySource::Secret(_)) | None => {}
        Some(_) if hmac > 0 => src.report_at(
            t.key_loc(src, "algorithms"),
            &t.field("algorithms"),
            "HS* algorithms need secret_file, not a JWKS",
        ),
        Some(_) => {}
    }
    let refresh = positive(src, t, "refresh", Duration::from_secs(15 * 60));
    let min_refresh = positive(src, t, "min_refresh", Duration::from_secs(30));
    if min_refresh > refresh {
        src.report_at(
            t.key_loc(src, "min_refresh"),
            &t.field("min_refresh"),
            "must not be longer than refresh",
        );
    }
    let cfg = IssuerConfig {
        leeway: t.or(src, "leeway", Duration::from_secs(30)),
        max_lifetime: positive(src, t, "max_lifetime", Duration::from_secs(24 * 3600)),
        ca: t.get_at(src, "ca"),
        refresh,
        min_refresh,
        stale_for: t.or(src, "stale_for", Duration::from_secs(24 * 3600)),
        fetch_timeout: positive(src, t, "fetch_timeout", Duration::from_secs(5)),
        dpop_nonce: t.or(src, "dpop_nonce", false),
        loc: t.loc(src),
        field: t.path.clone(),
        id: id?.value,
        issuer: issuer?.value,
        keys: sources.into_iter().next()?,
        audiences: audiences?.value,
        algorithms,
    };
    Some(cfg)
}

fn is_hmac(a: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::*;
    matches!(a, HS256 | HS384 | HS512)
}

/// Identity-provider URLs must be https, except on loopback hosts.
fn check_idp_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("\"{url}\" is not a URL"))?;
    let host = uri.host().unwrap_or("");
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => Err(format!(
            "\"{url}\" must use https:// (http:// is only allowed for loopback hosts)"
        )),
        _ => Err(format!("\"{url}\" must be an https:// URL")),
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn read_identity(src: &Source, root: &Table) -> IdentityConfig {
    let mut cfg = IdentityConfig {
        headers: Vec::new(),
        strip: Vec::new(),
        forward_authorization: false,
        claims_header: None,
        assertion: None,
    };
    let Some(t) = root.sub_table(src, "identity") else {
        return cfg;
    };
    if let Some(h) = t.sub_table(src, "headers") {
        for (name, kv) in h.entries() {
            let field = child_path(&h.path, name);
            let claim = String::from_toml(src, kv.value, &field);
            match (header_name(name), claim) {
                (Ok(n), Some(c)) => cfg.headers.push((n, c)),
                (Err(e), _) => src.report(kv.key.span(), &field, e),
                _ => {}
            }
        }
    }
    cfg.strip = t
        .get::<Vec<At<String>>>(src, "strip")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let body = p.trim_start_matches('*').trim_end_matches('*');
            if body.contains('*') || p.is_empty() {
                src.report_at(
                    p.loc,
                    &p.field,
                    "a pattern may only have '*' at its start or end",
                );
                None
            } else {
                Some(normalize_header(&p))
            }
        })
        .collect();
    cfg.forward_authorization = t.or(src, "forward_authorization", false);
    if let Some(c) = t.get_at::<String>(src, "claims_header") {
        match header_name(&c) {
            Ok(n) => cfg.claims_header = Some(n),
            Err(e) => src.report_at(c.loc, &c.field, e),
        }
    }
    if let Some(a) = t.sub_table(src, "assertion") {
        let header = a
            .get_at::<String>(src, "header")
            .and_then(|h| match header_name(&h) {
                Ok(n) => Some(n),
                Err(e) => {
                    src.report_at(h.loc, &h.field, e);
                    None
                }
            })
            .unwrap_or_else(|| http::HeaderName::from_static("x-identity-assertion"));
        let key = a.required_at::<PathBuf>(src, "key");
        let ttl = positive(src, &a, "ttl", Duration::from_secs(60));
        let issuer = a.or(src, "issuer", "portcullis".to_string());
        a.finish(src, &["header", "key", "ttl", "issuer"]);
        if let Some(key) = key {
            cfg.assertion = Some(AssertionConfig {
                header,
                key,
                ttl,
                issuer,
            });
        }
    }
    t.finish(
        src,
        &[
            "headers",
            "strip",
            "forward_authorization",
            "claims_header",
            "assertion",
        ],
    );
    cfg
}

fn header_name(name: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("\"{name}\" is not a valid header name"))
}

/// Header names compare case-insensitively and with `_` spelled as `-`, because
/// some servers and CGI-style frameworks treat the two as the same header.
pub fn normalize_header(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn read_revocation(src: &Source, root: &Table) -> RevocationConfig {
    let mut cfg = RevocationConfig {
        store: None,
        redis: None,
    };
    let Some(t) = root.sub_table(src, "revocation") else {
        return cfg;
    };
    cfg.store = t.get(src, "store");
    if let Some(r) = t.sub_table(src, "redis") {
        let url = r.required_at::<String>(src, "url");
        if let Some(u) = &url {
            if u.starts_with("rediss://") {
                src.report_at(
                    u.loc,
                    &u.field,
                    "rediss:// (Redis over TLS) is not supported by this build; use redis:// on a private network",
                );
            } else if !u.starts_with("redis://") {
                src.report_at(u.loc, &u.field, "must start with redis://");
            }
        }
        let prefix = r.or(src, "prefix", "portcullis:".to_string());
        r.finish(src, &["url", "prefix"]);
        if let Some(url) = url {
            cfg.redis = Some(RedisConfig {
                url: url.value,
                prefix,
            });
        }
    }
    t.finish(src, &["store", "redis"]);
    cfg
}

fn read_upstreams(src: &Source, root: &Table) -> BTreeMap<String, UpstreamConfig> {
    let mut out = BTreeMap::new();
    let Some(t) = root.sub_table(src, "upstream") else {
        return out;
    };
    for (name, kv) in t.entries() {
        let Some(u) = Table::from_value(src, kv.value, child_path("upstream", name)) else {
            continue;
        };
        let endpoints: Vec<http::Uri> = u
            .required::<Vec<At<String>>>(src, "endpoints")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| match parse_endpoint(&e) {
                Ok(uri) => Some(uri),
                Err(msg) => {
                    src.report_at(e.loc, &e.field, msg);
                    None
                }
            })
            .collect();
        if endpoints.is_empty() {
            src.report_at(
                u.key_loc(src, "endpoints"),
                &u.field("endpoints"),
                "needs at least one endpoint",
            );
        }
        let tls = u.sub_table(src, "tls").map(|tls| {
            let cfg = UpstreamTls {
                ca: tls.get_at(src, "ca"),
                server_name: tls.get(src, "server_name"),
                cert: tls.get_at(src, "cert"),
                key: tls.get_at(src, "key"),
            };
            if cfg.cert.is_some() != cfg.key.is_some() {
                src.report_at(
                    tls.loc(src),
                    &tls.path,
                    "cert and key go together (client certificate)",
                );
            }
            tls.finish(src, &["ca", "server_name", "cert", "key"]);
            cfg
        });
        let cfg = UpstreamConfig {
            name: name.to_string(),
            endpoints,
            connect_timeout: positive(src, &u, "connect_timeout", Duration::from_secs(2)),
            response_timeout: positive(src, &u, "response_timeout", Duration::from_secs(30)),
            idle_timeout: positive(src, &u, "idle_timeout", Duration::from_secs(90)),
            tls,
        };
        u.finish(
            src,
            &[
                "endpoints",
                "connect_timeout",
                "response_timeout",
                "idle_timeout",
                "tls",
            ],
        );
        out.insert(name.to_string(), cfg);
    }
    out
}

fn parse_endpoint(e: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = e
        .parse()
        .map_err(|_| format!("\"{e}\" is not a URL like \"http://10.0.0.5:8080\""))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{e}\" must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(format!("\"{e}\" has no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "\"{e}\" has a path; endpoints are scheme://host:port only"
        ));
    }
    Ok(uri)
}

fn read_routes(
    src: &Source,
    root: &Table,
    issuers: &[IssuerConfig],
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> Vec<RouteConfig> {
    let Some(v) = root.raw("route") else {
        return Vec::new();
    };
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, t) in tables(src, v, "route") {
        let host = t.get_at::<String>(src, "host").and_then(|h| {
            let lower = h.to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix("*.") {
                if rest.is_empty() || rest.contains('*') {
                    src.report_at(
                        h.loc,
                        &h.field,
                        "a wildcard host looks like \"*.example.com\"",
                    );
                    return None;
                }
                Some(HostMatch::Wildcard(format!(".{rest}")))
            } else if lower.contains('*') || lower.contains(':') || lower.is_empty() {
                src.report_at(
                    h.loc,
                    &h.field,
                    "must be a host name without port, or \"*.example.com\"",
                );
                None
            } else {
                Some(HostMatch::Exact(lower))
            }
        });
        let path_prefix = t.required_at::<String>(src, "path_prefix").and_then(|p| {
            if !p.starts_with('/') {
                src.report_at(p.loc, &p.field, "must start with '/'");
                return None;
            }
            if crate::route::path_is_unsafe(&p) {
                src.report_at(
                    p.loc,
                    &p.field,
                    "must not contain dot segments, '\\' or encoded slashes",
                );
                return None;
            }
            let trimmed = p.trim_end_matches('/');
            Some(if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            })
        });
        let methods = t.get::<Vec<At<String>>>(src, "methods").map(|ms| {
            ms.into_iter()
                .filter_map(|m| {
                    let upper = m.to_ascii_uppercase();
                    match http::Method::from_bytes(upper.as_bytes()) {
                        Ok(method) => Some(method),
                        Err(_) => {
                            src.report_at(
                                m.loc,
                                &m.field,
                                format!("\"{}\" is not an HTTP method", m.value),
                            );
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        });
        let upstream = t.required_at::<String>(src, "upstream").and_then(|u| {
            if upstreams.contains_key(u.as_str()) {
                Some(u.value)
            } else {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                src.report_at(
                    u.loc,
                    &u.field,
                    format!(
                        "no [upstream.{}] is defined (known: {})",
                        u.value,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                None
            }
        });
        let auth = match t.get_at::<String>(src, "auth") {
            None => Some(AuthMode::Required),
            Some(a) => match a.as_str() {
                "required" => Some(AuthMode::Required),
                "optional" => Some(AuthMode::Optional),
                "public" => Some(AuthMode::Public),
                other => {
                    src.report_at(
                        a.loc,
                        &a.field,
                        format!("\"{other}\" is not one of \"required\", \"optional\", \"public\""),
                    );
                    None
                }
            },
        };
        let route_issuers = t.get::<Vec<At<String>>>(src, "issuers").map(|list| {
            list.into_iter()
                .filter_map(|id| {
                    if issuers.iter().any(|i| i.id == id.value) {
                        Some(id.value)
                    } else {
                        src.report_at(
                            id.loc,
                            &id.field,
                            format!("no [[issuer]] has id \"{}\"", id.value),
                        );
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        let claims = t
            .sub_table(src, "claims")
            .map(|c| {
                c.entries()
                    .filter_map(|(name, kv)| {
                        let field = child_path(&c.path, name);
                        let values = match kv.value.get_ref() {
                            DeValue::String(_) => {
                                String::from_toml(src, kv.value, &field).map(|s| vec![s])
                            }
                            _ => Vec::<String>::from_toml(src, kv.value, &field),
                        }?;
                        if values.is_empty() {
                            src.report(kv.value.span(), &field, "needs at least one value");
                        }
                        Some((name.to_string(), values))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let cors = t.sub_table(src, "cors").map(|c| {
            let cfg = CorsConfig {
                origins: c.required(src, "origins").unwrap_or_default(),
                methods: c.or(src, "methods", Vec::new()),
                headers: c.or(src, "headers", Vec::new()),
                max_age: c.or(src, "max_age", Duration::from_secs(600)),
            };
            c.finish(src, &["origins", "methods", "headers", "max_age"]);
            cfg
        });
        let id = t.get_at::<String>(src, "id");
        let scopes = t.or(src, "scopes", Vec::new());
        let require_bound_token = t.or(src, "require_bound_token", false);
        let forward_authorization = t.get(src, "forward_authorization");
        let max_body_bytes = t.get(src, "max_body_bytes");
        t.finish(
            src,
            &[
                "id",
                "host",
                "path_prefix",
                "methods",
                "upstream",
                "auth",
                "issuers",
                "scopes",
                "claims",
                "require_bound_token",
                "forward_authorization",
                "cors",
                "max_body_bytes",
            ],
        );
        let (Some(path_prefix), Some(upstream), Some(auth)) = (path_prefix, upstream, auth) else {
            continue;
        };
        let id = match id {
            Some(id) => {
                if out.iter().any(|r| r.id == id.value) {
                    src.report_at(
                        id.loc,
                        &id.field,
                        format!("\"{}\" is used by another route", id.value),
                    );
                }
                id.value
            }
            None => format!("route{i}"),
        };
        out.push(RouteConfig {
            id,
            host,
            path_prefix,
            methods,
            upstream,
            auth,
            issuers: route_issuers,
            scopes,
            claims,
            require_bound_token,
            forward_authorization,
            cors,
            max_body_bytes,
        });
    }
    out
}
