//! Policy components: WebAssembly components behind the WIT interfaces of `wit/`, run by
//! wasmtime under an epoch deadline and a memory cap.
//!
//! - [`bindings`] holds the generated code, behind a wall;
//! - [`runtime`] is the shared engine, its epoch ticker, and compilation with a
//!   precompiled-artifact cache;
//! - [`admission`] is the admission policy host.
//!
//! Two error channels: a policy's "no" is a value it returns; a trap, a timeout or an
//! invalid output is a [`PolicyFailure`], and the instance that produced it is discarded.

pub mod admission;
mod bindings;
mod runtime;

pub use runtime::{PolicyMeta, PolicyRuntime};

/// How a policy call failed (never a policy's own "no").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, out of memory, stack overflow).
    Trap,
    /// The call ran past its epoch deadline.
    Timeout,
    /// The guest returned something the host refuses.
    Invalid,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy} failed ({}): {message}", kind.as_str())]
pub struct PolicyFailure {
    pub policy: &'static str,
    pub kind: FailureKind,
    pub message: String,
}

/// Why a component was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Component {
        path: std::path::PathBuf,
        message: String,
    },
}
