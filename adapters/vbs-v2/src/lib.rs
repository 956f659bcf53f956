//! The v2 VBS disk-restore API (`backends.md` §3): OpenStack Cinder's
//! block-storage backups, as VBS serves them under `/v2/{project_id}`. The
//! adapter ([`VbsV2`]), its JSON shapes ([`wire`]), shared by the simulator
//! and the adapter, and a simulator of the API ([`sim`]) that mounts the
//! Keystone simulator of `custos-openstack`.
//!
//! Like every adapter crate, nothing here depends on tonic, sled or the
//! daemon.

pub mod adapter;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "sim")]
mod sim_config;
pub mod wire;

pub use adapter::{VbsConfig, VbsV2};
