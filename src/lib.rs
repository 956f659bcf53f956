//! Custos: a backup orchestrator daemon. One gRPC API in front of many
//! cloud backup APIs; every request becomes a durable job driven to its end.
//!
//! `main.rs` parses flags and calls [`server::run`] or the CLI; everything
//! else lives in this library so tests can use it.

pub mod api;
pub mod backends;
pub mod cli;
pub mod config;
#[cfg(feature = "sim")]
pub mod dev;
pub mod engine;
pub mod job;
pub mod names;
pub mod schedule;
pub mod schedule_record;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod tls;
