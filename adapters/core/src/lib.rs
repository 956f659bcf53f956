//! The contract between the Custos daemon and its backend adapters.
//!
//! The daemon drives every backend through one trait, [`Backend`], used as
//! `Arc<dyn Backend>`. An adapter knows its backend's URLs, JSON and error
//! dialect; the daemon knows none of that. This crate also holds what every
//! adapter needs: the error model ([`BackendError`]), an HTTP helper that
//! classifies transport failures ([`http`]), a token cache ([`token`]) and
//! the backoff schedule ([`backoff`]).
//!
//! With the `conformance` feature, the `conformance` module holds the
//! contract's rules as async tests that every adapter runs against its
//! simulator.
//!
//! With the `sim` feature, the `sim` module holds what every backend
//! simulator shares (server loop, armed faults, injections).
//!
//! Nothing here depends on tonic, sled or the daemon.

pub mod backoff;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod http;
pub mod observe;
mod secret;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod token;
mod types;

pub use error::{BackendError, ErrorDetail, ErrorKind};
pub use secret::Secret;
pub use types::*;
