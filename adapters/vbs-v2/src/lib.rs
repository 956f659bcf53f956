//! The v2 VBS disk-restore API (`backends.md` §3): OpenStack Cinder's
//! block-storage backups, as VBS serves them under `/v2/{project_id}`. The
//! adapter ([`VbsV2`]) and its JSON shapes ([`wire`]), shared with the
//! simulator.
//!
//! Like every adapter crate, nothing here depends on tonic, sled or the
//! daemon.

pub mod adapter;
pub mod sim;
mod sim_config;
pub mod wire;

pub use adapter::{VbsConfig, VbsV2};
