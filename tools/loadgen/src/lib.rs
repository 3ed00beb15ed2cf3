//! orchestratord's load generator and benchmark suite.
//!
//! - [`stream`]: one stream against the daemon or an engine directly, with the client-side
//!   checks (order, gaps, terminal frame).
//! - [`load`]: closed- and open-loop load with a mix of cancels, disconnects and reconnects,
//!   and the report (latency percentiles, errors, violations).
//! - [`suite`]: the scenarios `cargo xtask bench` runs, [`plot`] the SVG it draws, and
//!   [`procs`] the processes it starts.

pub mod load;
pub mod plot;
pub mod procs;
pub mod stream;
pub mod suite;
