//! The configuration: one TOML file, read into typed values with every problem
//! reported by file, line, column and key path.

mod duration;
mod files;
mod reader;
mod schema;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::{format_duration, parse_duration};
pub use files::{load_pem_certs, load_pem_key, read_secret};
pub use reader::{At, Loc, Problem, Problems};
pub use schema::{is_loopback_host, normalize_header};

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; relative paths in it were resolved against its folder.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub token: TokenConfig,
    pub issuers: Vec<IssuerConfig>,
    pub identity: IdentityConfig,
    pub revocation: RevocationConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<ServerTls>,
    pub http2: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub workers: usize,
    /// Plain HTTP/1 requests served without hyper (`server::fast`); off,
    /// every request takes the general path.
    pub fast_path: bool,
}

#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: At<PathBuf>,
    pub key: At<PathBuf>,
    pub client_ca: Option<At<PathBuf>>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// An address range such as `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{s}\" has a prefix length outside 0-{max}"))?,
        };
        Ok(IpNet {
            addr: canonical(addr),
            prefix,
        })
    }
}

/// IPv4-mapped IPv6 addresses are compared as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    pub token_file: Option<At<PathBuf>>,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub header: bool,
    pub cookie: Option<String>,
    pub csrf_origins: Vec<String>,
    pub query: bool,
    pub max_bytes: usize,
    pub cache_entries: u64,
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Discovery,
    JwksUri(At<String>),
    JwksFile(At<PathBuf>),
    Secret(At<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub id: String,
    pub issuer: String,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub max_lifetime: Duration,
    pub ca: Option<At<PathBuf>>,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub stale_for: Duration,
    pub fetch_timeout: Duration,
    pub dpop_nonce: bool,
    /// Where the block starts, for problems found when its keys are loaded.
    pub loc: Loc,
    pub field: String,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Header name (lower case) and the claim path it carries.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Patterns of client-sent header names to remove, normalised (lower case, `_` as `-`).
    pub strip: Vec<String>,
    pub forward_authorization: bool,
    pub claims_header: Option<http::HeaderName>,
    pub assertion: Option<AssertionConfig>,
}

#[derive(Debug, Clone)]
pub struct AssertionConfig {
    pub header: http::HeaderName,
    pub key: At<PathBuf>,
    pub ttl: Duration,
    pub issuer: String,
}

#[derive(Debug, Clone)]
pub struct RevocationConfig {
    pub store: Option<PathBuf>,
    pub redis: Option<RedisConfig>,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<http::Uri>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// How long a kept-alive upstream connection may sit unused.
    pub idle_timeout: Duration,
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: Option<At<PathBuf>>,
    pub server_name: Option<String>,
    pub cert: Option<At<PathBuf>>,
    pub key: Option<At<PathBuf>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    Public,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The `route` label in metrics and logs.
    pub id: String,
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    pub methods: Option<Vec<http::Method>>,
    pub upstream: String,
    pub auth: AuthMode,
    pub issuers: Option<Vec<String>>,
    pub scopes: Vec<String>,
    pub claims: Vec<(String, Vec<String>)>,
    pub require_bound_token: bool,
    pub forward_authorization: Option<bool>,
    pub cors: Option<CorsConfig>,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    pub headers: Vec<String>,
    pub max_age: Duration,
}

/// Where `portcullis run` and `check` look when no `--config` is given.
pub fn default_path() -> PathBuf {
    std::env::var_os("PORTCULLIS_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config/portcullis.toml"))
}

impl Config {
    /// Reads and validates a configuration file and every file it names.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem {
                file: path.to_path_buf(),
                loc: Loc { line: 0, col: 0 },
                field: "(file)".into(),
                message: format!("cannot read the configuration: {e}"),
            }])
        })?;
        Self::parse(&text, path)
    }

    /// Validates configuration text as if read from `file` (relative paths
    /// resolve against its folder), including every file it names.
    pub fn parse(text: &str, file: &Path) -> Result<Config, Problems> {
        let src = reader::Source::new(file, text);
        let config = schema::read(&src, text);
        // Files are checked even when the text has problems, so that one
        // run of `check` lists everything there is to fix.
        if let Some(c) = &config {
            files::check_files(&src, c);
        }
        match config {
            Some(c) if !src.has_problems() => Ok(c),
            _ => Err(Problems(src.into_problems())),
        }
    }

    pub fn issuer(&self, id: &str) -> Option<&IssuerConfig> {
        self.issuers.iter().find(|i| i.id == id)
    }
}

/// Makes a problem that points at a value read earlier (for checks made while
/// starting, such as a JWKS document that does not parse).
pub fn problem_at<T>(file: &Path, at: &At<T>, message: impl Into<String>) -> Problem {
    Problem {
        file: file.to_path_buf(),
        loc: at.loc,
        field: at.field.clone(),
        message: message.into(),
    }
}
