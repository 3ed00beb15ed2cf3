//! Plain data that crosses the library boundary. Every type is `#[repr(C)]` + `StableAbi`.

use abi_stable::StableAbi;
use abi_stable::std_types::{RString, RVec};

/// What went wrong, in terms the error-mapping policy understands.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The adapter's configuration is invalid.
    Config,
    /// The request cannot be served by this engine (bad parameters).
    InvalidRequest,
    /// Connection refused, reset or closed by the engine.
    Transport,
    /// The engine did not answer in time (connect, first byte, or idle mid-stream).
    Timeout,
    /// The engine answered with an error status.
    Upstream,
    /// The engine's output could not be parsed (untrusted input).
    Protocol,
    /// The adapter panicked; the panic was contained at the boundary.
    Panic,
    /// Anything else inside the adapter.
    Internal,
}

/// When in a task's life a failure happened.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Outside of any task (construction, health, props).
    Control,
    /// The task was accepted but no token was produced yet.
    BeforeFirstToken,
    /// At least one token was delivered.
    MidStream,
}

/// A classified adapter failure.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct AdapterError {
    pub kind: ErrorKind,
    pub phase: Phase,
    /// HTTP status from the engine, 0 when there was none.
    pub upstream_status: u16,
    pub message: RString,
}

impl AdapterError {
    pub fn new(kind: ErrorKind, phase: Phase, message: impl Into<String>) -> Self {
        Self {
            kind,
            phase,
            upstream_status: 0,
            message: RString::from(message.into()),
        }
    }
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({:?}", self.kind, self.phase)?;
        if self.upstream_status != 0 {
            write!(f, ", upstream status {}", self.upstream_status)?;
        }
        write!(f, "): {}", self.message)
    }
}

impl std::error::Error for AdapterError {}

/// Capabilities an adapter declares.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub streaming: bool,
    pub cancel: bool,
    pub embeddings: bool,
    pub rerank: bool,
    pub tokenize: bool,
    pub metrics: bool,
}

/// Identity of an adapter library, read once at load.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct AdapterInfo {
    pub name: RString,
    pub version: RString,
    /// The [`crate::ABI_VERSION`] the library was compiled against.
    pub abi_version: RString,
    pub engines: RVec<RString>,
    pub features: Features,
}

/// Liveness and readiness of one engine replica.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct Health {
    pub live: bool,
    pub ready: bool,
    pub message: RString,
}

/// What a replica can do right now.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct Props {
    pub slots_total: u32,
    pub slots_free: u32,
    pub ctx_max: u32,
    pub engine_version: RString,
    pub model: RString,
}

/// One task handed to an engine.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct SubmitRequest {
    pub task_id: RString,
    pub model: RString,
    pub prompt: RString,
    pub max_tokens: u32,
    pub seed: u64,
    /// Extra engine parameters as a JSON object (may be empty).
    pub params_json: RString,
}

/// An event of a running task, delivered through the host's sink in order.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum Event {
    Started { engine_version: RString },
    Token { text: RString },
    End { tokens_in: u32, tokens_out: u32 },
    Error(AdapterError),
}

/// The host's answer to an emitted event.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStatus {
    /// Keep going.
    Continue,
    /// The task is over for the host (canceled or consumer gone): stop work now.
    Stop,
}
