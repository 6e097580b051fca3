//! Listeners: accepting connections within the connection limit, TLS,
//! HTTP/1.1 and HTTP/2, and draining on shutdown.

pub mod fast;
pub mod framing;
pub mod idle;
pub mod listener;
pub mod tls;
