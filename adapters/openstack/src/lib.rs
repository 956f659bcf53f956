//! What the OpenStack-style backends share: Keystone v3 tokens
//! ([`keystone`]) and the service client built on them ([`service`]: base
//! URL, `X-Auth-Token`, a service's error dialect, the submit rule), used
//! by the v3 project-backup (CBR) and v2 VBS adapters,
//! and a Keystone simulator ([`sim`]) that their simulators mount.
//!
//! Like every adapter crate, nothing here depends on tonic, sled or the
//! daemon.

pub mod keystone;
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;

pub use keystone::{Credentials, Keystone, KeystoneAuth};
pub use service::{ErrorDialect, ServiceClient};
