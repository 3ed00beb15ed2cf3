//! Cucumber world and steps live in `tests/bdd.rs`; this crate has no library code.
