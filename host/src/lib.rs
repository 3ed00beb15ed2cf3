//! orchestratord: the daemon that sits in front of LLM inference engines.
//!
//! The host runs queue, dispatch and streaming natively; admission, budget, placement and
//! error mapping are WebAssembly policy components ([`policy`]); engines
//! are reached through adapter libraries loaded over a stable ABI ([`adapters`]).
//! See `ARCHITECTURE.md` for the codemap.

pub mod adapters;
pub mod admit;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod decisions;
pub mod directory;
pub mod dirwatch;
pub mod dispatch;
pub mod errors;
pub mod filestamp;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod health;
pub mod logline;
pub mod logsink;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod prefix;
pub mod queue;
pub mod server;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod store;
pub mod streamtoken;
pub mod supervisor;
pub mod task;
pub mod trace;

pub use api::app;
