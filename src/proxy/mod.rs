//! Forwarding to upstreams: pools, the header rewrite, the streaming forward.

pub mod assertion;
pub mod deadline;
pub mod exchange;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod upstream;
