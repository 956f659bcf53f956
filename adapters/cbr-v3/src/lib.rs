//! The v3 project-backup API ("CBR", `backends.md` §2): its JSON shapes
//! ([`wire`]), shared by the simulator and the adapter to come, and a
//! simulator of the API ([`sim`]) that mounts the Keystone simulator of
//! `custos-openstack`.
//!
//! Like every adapter crate, nothing here depends on tonic, sled or the
//! daemon.

pub mod sim;
pub mod wire;
