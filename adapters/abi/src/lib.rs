//! The stable ABI between orchestratord and engine adapter libraries (`.so`).
//!
//! This is the only crate both the host and adapters compile against. It holds:
//! - [`types`]: the `#[repr(C)]` data that crosses the boundary;
//! - [`ffi`]: the `#[sabi_trait]` objects (client, job, event sink) and the root module;
//! - [`plugin`]: plain Rust traits an adapter implements, and [`export_adapter!`], which
//!   generates every exported entry point wrapped in `catch_unwind`, so an adapter cannot
//!   write an unguarded one.
//!
//! Rules: no `async` and no tokio objects cross the boundary; later versions only append
//! (prefix types); the interface version is this crate's package version.
// `#[sabi_trait]` expands to impls that rustc flags as non-local definitions.
#![allow(non_local_definitions)]
// abi_stable's derives and `#[sabi_trait]` expand to `unsafe impl`s and unsafe calls;
// nothing in this crate writes `unsafe` by hand.
#![allow(unsafe_code)]

pub mod ffi;
pub mod legacy;
pub mod plugin;
pub mod testing;
pub mod types;

pub use abi_stable;
pub use ffi::{AdapterModRef, FfiClientBox, FfiEventSinkBox, FfiJobBox};
pub use types::*;

/// The ABI version this crate defines; adapters report the version they were built with.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");
