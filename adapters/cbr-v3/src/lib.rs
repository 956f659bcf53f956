//! The v3 project-backup API ("CBR", `backends.md` §2): the adapter
//! ([`CbrV3`]), its JSON shapes ([`wire`]), shared by the simulator and the
//! adapter, and a simulator of the API ([`sim`]) that mounts the Keystone simulator of
//! `custos-openstack`.
//!
//! Like every adapter crate, nothing here depends on tonic, sled or the
//! daemon.

pub mod adapter;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;

pub use adapter::{CbrConfig, CbrV3};
