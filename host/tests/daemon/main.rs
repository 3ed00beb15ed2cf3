//! Integration tests: the real `orchestratord` from `target/dist`, driven over HTTP.
//! One test binary (modules by area) so the daemon's dependencies link once.

mod adapters;
mod admission;
mod artifacts;
mod auth;
mod browser;
mod cancel;
mod catalog;
mod chat;
mod config;
mod contract;
mod deadlines;
mod edge;
mod errors;
mod hardening;
mod metrics;
mod openai;
mod outsider;
mod policies;
mod policy_faults;
mod pools;
mod prefix;
mod resume;
mod retry;
mod sessions;
mod shutdown;
mod state;
mod stream;
mod tasks;
mod tracing;
mod upgrades;
mod watch;
