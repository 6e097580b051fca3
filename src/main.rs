//! The command line. Everything it does is in the library; this file parses
//! arguments, sets up logging and the runtime, and maps outcomes to exit codes
//! (0 ok, 2 bad configuration or usage, 1 runtime failure).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Parser, Subcommand};
use portcullis::config::{self, Config};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An authenticating reverse-proxy gateway: TLS in, JWT verified, identity forwarded."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given configuration.
    Run {
        /// Defaults to $PORTCULLIS_CONFIG, then config/portcullis.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and every file it names.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A real gateway with a demo issuer and an echo upstream, and curl commands to try.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Where the self-signed certificate is written.
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
    },
    /// Tokens for testing.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write a private key (PEM) and its public JWKS.
    Keygen {
        /// RS256, PS256, ES256, ES384 or EdDSA.
        #[arg(long)]
        alg: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Explain, check by check, what the configured gateway decides for a token.
    Inspect {
        #[arg(long)]
        config: Option<PathBuf>,
        /// With --path: check that route's policy too.
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "")]
        host: String,
        #[arg(long)]
        path: Option<String>,
        /// The token, or - to read it from standard input.
        token: String,
    },
    /// Sign a token.
    Mint {
        /// PEM private key, or a raw secret with --alg HS256/HS384/HS512.
        #[arg(long)]
        key: PathBuf,
        /// Defaults from the key type (RS256 for RSA).
        #[arg(long)]
        alg: Option<String>,
        /// Defaults to the key's RFC 7638 thumbprint (what keygen writes as kid).
        #[arg(long)]
        kid: Option<String>,
        #[arg(long)]
        iss: String,
        #[arg(long)]
        aud: String,
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// Extra claim, name=value (value parsed as JSON when it is JSON).
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_writer(std::io::stdout)
        .try_init();
}

/// `workers = 1` runs everything on the calling thread: the same single worker,
/// without the multi-threaded scheduler's hand-offs between the thread that
/// blocks on the main future and the worker (about a sixth of the CPU per
/// proxied request in the load benchmark).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.on_thread_park(release_freed_memory).enable_all().build()
}

/// Called as a worker goes idle: at most once a second, hands the memory this
/// thread has freed back to the system. mimalloc keeps freed pages for a
/// second before it releases them, and only releases them when it is next
/// called: after a burst (10,000 connections each sending a request, say) a
/// gateway that then sits idle kept the burst's peak, about 8 MB of
/// 10,000 connections' 33 MB, for as long as it stayed idle. The coarse clock
/// is read once per park, not per request.
fn release_freed_memory() {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<Option<u64>> = const { Cell::new(None) };
    }
    let now = portcullis::clock::coarse_millis();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.saturating_sub(t) < 1000 => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: mi_collect only walks this thread's own heap and mimalloc's
        // arenas; it has no preconditions and is safe from any thread.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

// The request path allocates and frees many small, short-lived buffers across
// tokio's threads; glibc's per-thread arenas spent ~8% of CPU there (malloc,
// free, consolidation, heap mprotect churn). mimalloc cut CPU per proxied
// request by about a sixth in the load benchmark. Built without transparent
// huge pages so idle RSS stays ~11 MB instead of ~18 MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::install_crypto_providers();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(config),
        Command::Run { config } => run(config),
        Command::Demo {
            listen,
            admin_listen,
            certs,
        } => demo(listen, admin_listen, certs),
        Command::Keygen { alg, out } => keygen(&alg, &out),
        Command::Token {
            command:
                TokenCommand::Inspect {
                    config,
                    method,
                    host,
                    path,
                    token,
                },
        } => inspect(config, method, host, path, token),
        Command::Token {
            command:
                TokenCommand::Mint {
                    key,
                    alg,
                    kid,
                    iss,
                    aud,
                    sub,
                    ttl,
                    claims,
                },
        } => mint(key, alg, kid, iss, aud, sub, ttl, claims),
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let path = path.unwrap_or_else(config::default_path);
    Config::load(&path).map_err(|problems| {
        for p in &problems.0 {
            eprintln!("{p}");
        }
        eprintln!(
            "{}: {} problem{}",
            path.display(),
            problems.0.len(),
            if problems.0.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(2)
    })
}

fn check(path: Option<PathBuf>) -> ExitCode {
    match load(path) {
        Ok(c) => {
            println!("{}: ok", c.file.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let path = path.unwrap_or_else(config::default_path);
    let config = match load(Some(path.clone())) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging();
    let rt = match runtime(config.server.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let mut gw = match portcullis::Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        gw.watch_config(path.clone());
        serve_until_stopped(&gw, &path).await;
        tracing::info!("stopping: draining in-flight requests");
        gw.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
async fn serve_until_stopped(gw: &portcullis::RunningGateway, path: &std::path::Path) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    let _ = gw.reload_file(path).await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (gw, path);
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn demo(listen: SocketAddr, admin: SocketAddr, certs: PathBuf) -> ExitCode {
    init_logging();
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let d = match portcullis::demo::start(listen, admin, &certs).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("demo: {e}");
                return ExitCode::from(1);
            }
        };
        println!("{}", portcullis::demo::instructions(&d));
        wait_for_stop().await;
        d.stop().await;
        ExitCode::SUCCESS
    })
}

fn inspect(
    path: Option<PathBuf>,
    method: String,
    host: String,
    route_path: Option<String>,
    token: String,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let token = if token == "-" {
        let mut s = String::new();
        if std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).is_err() {
            eprintln!("token inspect: cannot read the token from standard input");
            return ExitCode::from(2);
        }
        s.trim().to_string()
    } else {
        token
    };
    let query = match route_path {
        Some(p) => match http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => Some(portcullis::auth::trace::RouteQuery {
                method: m,
                host,
                path: p,
            }),
            Err(_) => {
                eprintln!("token inspect: --method {method} is not an HTTP method");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(portcullis::cli::inspect::inspect(&config, &token, query)) {
        Ok(trace) => {
            print!("{}", trace.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("token inspect: {e}");
            ExitCode::from(1)
        }
    }
}

fn keygen(alg: &str, out: &std::path::Path) -> ExitCode {
    use portcullis::cli::jwk::{generate, public_jwk, KEYGEN_ALGS};
    let Some(alg) = KEYGEN_ALGS
        .iter()
        .find(|a| **a == alg)
        .and_then(|a| jsonwebtoken::Algorithm::from_str(a).ok())
    else {
        eprintln!("keygen: --alg must be one of {}", KEYGEN_ALGS.join(", "));
        return ExitCode::from(2);
    };
    let result = (|| -> Result<(PathBuf, PathBuf), String> {
        std::fs::create_dir_all(out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let key_path = out.join("private.pem");
        let jwks_path = out.join("jwks.json");
        if key_path.exists() {
            return Err(format!(
                "{} exists; refusing to overwrite a private key",
                key_path.display()
            ));
        }
        let key = generate(alg)?;
        let jwk = public_jwk(&key, alg)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        let jwks = serde_json::to_string_pretty(&serde_json::json!({ "keys": [jwk] }))
            .map_err(|e| e.to_string())?;
        std::fs::write(&jwks_path, jwks + "\n")
            .map_err(|e| format!("cannot write {}: {e}", jwks_path.display()))?;
        Ok((key_path, jwks_path))
    })();
    match result {
        Ok((k, j)) => {
            println!(
                "wrote {} (private, keep it secret) and {} (public)",
                k.display(),
                j.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygen: {e}");
            ExitCode::from(1)
        }
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn mint(
    key: PathBuf,
    alg: Option<String>,
    kid: Option<String>,
    iss: String,
    aud: String,
    sub: String,
    ttl: String,
    extra: Vec<String>,
) -> ExitCode {
    use portcullis::cli::mint::{claims, parse_claim, Signer};
    let result = (|| -> Result<String, (u8, String)> {
        let usage = |e: String| (2u8, e);
        let alg = alg
            .map(|a| {
                jsonwebtoken::Algorithm::from_str(&a)
                    .map_err(|_| usage(format!("--alg {a}: unknown algorithm")))
            })
            .transpose()?;
        let ttl = config::parse_duration(&ttl).map_err(|e| usage(format!("--ttl: {e}")))?;
        let signer = match alg {
            Some(
                a @ (jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512),
            ) => {
                let secret = config::read_secret(&key).map_err(|e| (1, e))?;
                Signer::from_secret(&secret, a, kid)
            }
            _ => {
                let pem = std::fs::read_to_string(&key)
                    .map_err(|e| (1, format!("cannot read {}: {e}", key.display())))?;
                Signer::from_pem(&pem, alg, kid)
            }
        }
        .map_err(|e| (1, e))?;
        let mut c = claims(&iss, &aud, &sub, ttl.as_secs() as i64);
        for kv in &extra {
            let (k, v) = parse_claim(kv).map_err(usage)?;
            c.insert(k, v);
        }
        signer.sign(&c).map_err(|e| (1, e))
    })();
    match result {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("token mint: {e}");
            ExitCode::from(code)
        }
    }
}
