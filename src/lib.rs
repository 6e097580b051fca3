//! portcullis: an authenticating reverse-proxy gateway.
//!
//! [`Gateway::start`] takes a validated [`config::Config`] and returns a
//! [`RunningGateway`] bound to its addresses (port 0 works, for tests), which
//! [`RunningGateway::shutdown`] drains and stops. `main.rs` only parses the
//! command line and calls into this crate.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cors;
pub mod demo;
pub mod denial;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod revocation;
pub mod route;
pub mod series;
pub mod server;

mod gateway;

pub use gateway::{Gateway, RunningGateway, StartError};

/// Installs aws-lc-rs as the one crypto provider of rustls and jsonwebtoken.
/// Safe to call more than once.
pub fn install_crypto_providers() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}
