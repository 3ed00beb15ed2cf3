//! Policy components: WebAssembly components behind the WIT interfaces of `wit/` (the
//! current `orchd:policy@0.2.0`, and the frozen 0.1.0 that older components were built
//! against), run by wasmtime under an epoch deadline, a memory cap and a stack limit.
//!
//! - [`bindings`] holds the generated code, behind a wall;
//! - [`legacy`] converts between 0.2.0 (what the host decides with) and 0.1.0;
//! - [`runtime`] is the shared engine, its epoch ticker, compilation with a
//!   precompiled-artifact cache, and the sandbox (limits, imports);
//! - [`component`] is one loaded version of any policy, generic over its world;
//! - [`worlds`] describes the four worlds and validates their outputs;
//! - [`set`] holds the version in force of each, and hot reload;
//! - [`watch`] triggers reloads when the policy directory changes.
//!
//! Two error channels: a policy's "no" is a value it returns; a trap, a timeout or an
//! invalid output is a [`PolicyFailure`], and the instance that produced it is discarded.

pub mod bindings;
mod component;
mod legacy;
pub mod observe;
mod runtime;
mod sealed;
mod set;
pub mod watch;
mod worlds;

pub use component::{CallStats, Loaded};

/// The trait every policy world implements (for code generic over slots).
pub mod component_world {
    pub use super::component::World;
}
pub use runtime::{PolicyMeta, PolicyRuntime};
pub use set::{PolicySet, Refusal, ReloadOutcome, Slot};
pub use worlds::{Admission, Budget, ErrorMapping, MAX_RETRY_AFTER_MS, Placement};

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
