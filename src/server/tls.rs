//! TLS for the gateway's listeners (rustls): certificate and key from PEM
//! files, ALPN h2 and http/1.1, optional or required client certificates.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::config::{load_pem_certs, load_pem_key, ClientAuth, ServerTls};

pub fn server_config(tls: &ServerTls, http2: bool) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = load_pem_certs(&tls.cert)?;
    let key = load_pem_key(&tls.key)?;
    let builder = rustls::ServerConfig::builder();
    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(ca), mode) if mode != ClientAuth::None => {
            let mut roots = RootCertStore::empty();
            for c in load_pem_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| format!("{}: {e}", ca.display()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}
