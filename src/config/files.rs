//! The files a configuration names, checked when it is loaded, so that a
//! missing certificate or a short HMAC secret is a configuration error with a
//! line number and never a half-started gateway.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::reader::{At, Source};
use super::{Config, KeySource};

pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{} is not a PEM certificate file: {}",
                path.display(),
                pem_error(e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

pub fn load_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "{} is not a PEM private key: {}",
            path.display(),
            pem_error(e)
        )
    })
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM section found".into(),
        other => format!("{other:?}"),
    }
}

/// Reads a file that holds a raw secret; trailing CR and LF are not part of it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

fn report<T>(src: &Source, at: &At<T>, r: Result<(), String>) {
    if let Err(e) = r {
        src.report_at(at.loc, &at.field, e);
    }
}

pub fn check_files(src: &Source, c: &Config) {
    if let Some(tls) = &c.server.tls {
        let cert = load_pem_certs(&tls.cert).map(|_| ());
        let key = load_pem_key(&tls.key).map(|_| ());
        let ca = tls
            .client_ca
            .as_ref()
            .map(|ca| load_pem_certs(ca).map(|_| ()));
        let files_ok = cert.is_ok() && key.is_ok() && ca.as_ref().is_none_or(|r| r.is_ok());
        report(src, &tls.cert, cert);
        report(src, &tls.key, key);
        if let (Some(at), Some(r)) = (&tls.client_ca, ca) {
            report(src, at, r);
        }
        // Only a readable pair can be checked as a pair.
        if files_ok {
            if let Err(e) = crate::server::tls::server_config(tls, c.server.http2) {
                src.report_at(tls.cert.loc, &tls.cert.field, e);
            }
        }
    }
    if let Some(f) = &c.admin.token_file {
        report(
            src,
            f,
            read_secret(f).and_then(|s| {
                if s.len() < 16 {
                    Err(format!(
                        "{} holds {} bytes; an admin token needs at least 16",
                        f.display(),
                        s.len()
                    ))
                } else {
                    Ok(())
                }
            }),
        );
    }
    for issuer in &c.issuers {
        match &issuer.keys {
            KeySource::JwksFile(f) => report(
                src,
                f,
                std::fs::read(&f.value)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))
                    .and_then(|body| {
                        let set = crate::auth::jwks::parse_jwks(&body, issuer)
                            .map_err(|e| format!("{}: {e}", f.display()))?;
                        if set.keys.is_empty() {
                            Err(format!(
                                "{} has no key usable with algorithms {:?}",
                                f.display(),
                                issuer.algorithms
                            ))
                        } else {
                            Ok(())
                        }
                    }),
            ),
            KeySource::Secret(f) => report(
                src,
                f,
                read_secret(f).and_then(|s| crate::auth::jwks::check_secret(&s, issuer)),
            ),
            KeySource::Discovery | KeySource::JwksUri(_) => {}
        }
        if let Some(ca) = &issuer.ca {
            report(src, ca, load_pem_certs(ca).map(|_| ()));
        }
    }
    if let Some(a) = &c.identity.assertion {
        report(src, &a.key, crate::proxy::assertion::check_key(&a.key));
    }
    for u in c.upstreams.values() {
        if let Some(tls) = &u.tls {
            if let Some(ca) = &tls.ca {
                report(src, ca, load_pem_certs(ca).map(|_| ()));
            }
            if let Some(cert) = &tls.cert {
                report(src, cert, load_pem_certs(cert).map(|_| ()));
            }
            if let Some(key) = &tls.key {
                report(src, key, load_pem_key(key).map(|_| ()));
            }
        }
    }
}
