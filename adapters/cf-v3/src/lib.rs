//! Cloud Foundry CAPI v3 service-instance backups (the OSMAPI backup
//! extension): the adapter ([`CfV3`]) and a simulator of the API ([`sim`]).

mod adapter;
#[cfg(feature = "sim")]
pub mod sim;
mod wire;

pub use adapter::{CfAuth, CfConfig, CfV3, Grant};
