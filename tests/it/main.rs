//! Black-box tests: the real daemon process, real gRPC clients, the CF
//! simulator. One test binary (links once).
#![allow(clippy::unwrap_used)]

mod harness;

mod api_conventions;
mod auth_and_config;
mod cbr;
mod cli;
mod contract;
mod crash;
mod describe;
mod dev_mode;
mod engine;
mod errors;
mod faults;
mod flows;
mod limits;
mod metrics;
mod output;
mod schedules;
mod secrets;
mod tls;
mod validation;
mod vbs;
