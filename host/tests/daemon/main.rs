//! Integration tests: the real `orchestratord` from `target/dist`, driven over HTTP.
//! One test binary (modules by area) so the daemon's dependencies link once.

mod adapters;
mod admission;
mod auth;
mod cancel;
mod config;
mod edge;
mod metrics;
mod policies;
mod policy_faults;
mod sessions;
mod shutdown;
mod tasks;
