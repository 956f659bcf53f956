//! The v2 VBS disk-restore API (`backends.md` §3): OpenStack Cinder's
//! block-storage backups, as VBS serves them under `/v2/{project_id}`. The
//! JSON shapes ([`wire`]) are shared by the simulator and the adapter.
//!
//! Like every adapter crate, nothing here depends on tonic, sled or the
//! daemon.

pub mod sim;
pub mod wire;
