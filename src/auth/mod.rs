//! Authentication: where the token comes from, the keys it is checked against,
//! the checks themselves, and what each route requires of the result.

pub mod digest_key;
pub mod doorkeeper;
pub mod dpop;
pub mod fetch;
pub mod jwks;
pub mod keys;
pub mod policy;
pub mod segment;
pub mod token;
pub mod trace;
pub mod verify;
