//! `portcullis token inspect`: the decision trace for a token, computed from a
//! configuration the way a gateway running it would decide: keys loaded as at
//! start (files read, JWKS fetched), revocations read from the local store.

use std::sync::Arc;

use crate::auth::fetch;
use crate::auth::keys::IssuerKeys;
use crate::auth::trace::{explain, RouteQuery, Trace};
use crate::auth::verify::{Verified, Verifier};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::route::RouteTable;

pub async fn inspect(
    config: &Config,
    token: &str,
    query: Option<RouteQuery>,
) -> Result<Trace, String> {
    crate::install_crypto_providers();
    let metrics = Arc::new(Metrics::new());
    let mut issuers = Vec::new();
    for ic in &config.issuers {
        let keys = IssuerKeys::new(Arc::new(ic.clone()), metrics.clone());
        let client = fetch::client(ic.ca.as_deref().map(|p| p.as_path()))?;
        if let Err(e) = keys.load_once(&client).await {
            eprintln!("note: issuer {}: keys not loaded: {e}", ic.id);
        }
        issuers.push(keys);
    }
    let verifier = Verifier::new(issuers, 0, metrics.clone());
    let revocations = Revocations::open_read_only(&config.revocation, &config.issuers, metrics)?;
    let routes = RouteTable::new(&config.routes, config.identity.forward_authorization);
    let revoked = move |v: &Verified, max: u64| Some(revocations.is_revoked(v, max));
    Ok(explain(&verifier, &revoked, Some(&routes), token, query).await)
}
