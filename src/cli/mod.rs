//! The command-line tools besides `run`: key generation and token minting.
//! They live in the library so that tests and the demo use the same code.

pub mod inspect;
pub mod jwk;
pub mod mint;
