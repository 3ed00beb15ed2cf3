//! Engine adapters as the rest of the host sees them: plain Rust traits and types.
//!
//! [`loader`] is the only place that touches the ABI (`abi_stable` types, `R*` strings);
//! it wraps every library in these traits at once.

mod loader;

use std::path::PathBuf;
use std::sync::Arc;

use orchd_contracts::chat;
use tokio::sync::mpsc;

pub use loader::{AdapterRegistry, LoadOutcome, expected_abi_version};

pub mod watch;

/// Identity of a loaded adapter library.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    pub name: String,
    pub version: String,
    pub abi_version: String,
    pub engines: Vec<String>,
    /// What the library says it can do: `streaming`, `cancel`, `embeddings`, …
    pub features: Vec<String>,
    /// The file in the adapter directory it was loaded from.
    pub path: PathBuf,
    /// The daemon's private copy that is mapped (`None`: loaded in place, by a tool).
    pub mapped: Option<PathBuf>,
    pub sha256: String,
}

/// A loaded adapter library: builds one client per replica.
pub trait Adapter: Send + Sync {
    fn info(&self) -> &AdapterInfo;
    /// `config_json` is the replica's adapter config; the adapter validates it.
    fn new_client(&self, config_json: &str) -> Result<Arc<dyn EngineClient>, EngineFailure>;
}

/// A connection to one engine replica.
pub trait EngineClient: Send + Sync {
    fn health(&self) -> Result<EngineHealth, EngineFailure>;
    fn props(&self) -> Result<EngineProps, EngineFailure>;
    /// Starts a task; events arrive on `events` in order. Blocking: call it off the async
    /// workers.
    fn submit(
        &self,
        job: JobSpec,
        events: mpsc::Sender<EngineEvent>,
    ) -> Result<Box<dyn EngineJob>, EngineFailure>;
    /// Starts a chat task (`job.chat` is set) on the engine's own chat endpoint. Blocking,
    /// like `submit`.
    fn submit_chat(
        &self,
        job: JobSpec,
        events: mpsc::Sender<EngineEvent>,
    ) -> Result<Box<dyn EngineJob>, EngineFailure> {
        let _ = (job, events);
        Err(EngineFailure::new(
            FailureKind::InvalidRequest,
            FailurePhase::BeforeFirstToken,
            "this engine adapter does not serve chat",
        ))
    }
    /// One embedding vector per input. Blocking.
    fn embed(&self, inputs: Vec<String>) -> Result<Vec<Vec<f32>>, EngineFailure> {
        let _ = inputs;
        Err(EngineFailure::new(
            FailureKind::InvalidRequest,
            FailurePhase::BeforeFirstToken,
            "this engine adapter does not serve embeddings",
        ))
    }
    /// The engine's token ids for `text`. Blocking.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineFailure> {
        let _ = text;
        Err(EngineFailure::new(
            FailureKind::InvalidRequest,
            FailurePhase::Control,
            "this engine adapter does not tokenize",
        ))
    }
}

/// A running task inside an adapter.
pub trait EngineJob: Send + Sync {
    /// Stops the engine work; idempotent. A failure here is logged, never fatal.
    fn cancel(&self) -> Result<(), EngineFailure>;
}

#[derive(Debug, Clone)]
pub struct EngineHealth {
    pub live: bool,
    pub ready: bool,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct EngineProps {
    pub slots_total: u32,
    pub slots_free: u32,
    pub ctx_max: u32,
    pub engine_version: String,
    pub model: String,
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub task_id: String,
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    pub seed: u64,
    pub params_json: String,
    /// An embedding job: the texts to embed (`prompt` is unused).
    pub inputs: Option<Vec<String>>,
    /// A chat job: the conversation, sent to the engine's own chat endpoint (`prompt` is
    /// only a text rendering of it, for estimates).
    pub chat: Option<Arc<ChatJob>>,
    /// The trace context the engine call carries on (`traceparent`; empty for none).
    pub trace: crate::trace::Propagated,
}

/// A chat task's conversation and options, as the client sent them (validated).
#[derive(Debug, Clone, Default)]
pub struct ChatJob {
    pub messages: Vec<chat::ChatMessage>,
    pub tools: Vec<chat::Tool>,
    pub tool_choice: Option<chat::ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<chat::ResponseFormat>,
    pub logprobs: bool,
    pub top_logprobs: u32,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// (token id, bias)
    pub logit_bias: Vec<(u32, f32)>,
    pub stop: Vec<String>,
}

/// What one engine frame of a chat task added.
#[derive(Debug, Clone, Default)]
pub struct ChatDelta {
    pub content: String,
    pub tool_calls: Vec<chat::ToolCallFrame>,
    pub logprobs: Vec<chat::TokenLogprob>,
}

/// The engine's own account of a finished task; `None` where it said nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineEnd {
    pub tokens_in: Option<u32>,
    pub tokens_out: Option<u32>,
    pub cached_tokens: Option<u32>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub enum EngineEvent {
    Started {
        engine_version: String,
    },
    Token(String),
    /// A chat task's output: content, tool-call fragments, logprobs.
    Delta(ChatDelta),
    End(EngineEnd),
    Error(EngineFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Config,
    InvalidRequest,
    Transport,
    Timeout,
    Upstream,
    Protocol,
    Panic,
    Internal,
    /// Detected by the host: the engine went silent mid-task.
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePhase {
    Control,
    BeforeFirstToken,
    MidStream,
}

/// A classified adapter or engine failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?} failure ({phase:?}): {message}")]
pub struct EngineFailure {
    pub kind: FailureKind,
    pub phase: FailurePhase,
    pub upstream_status: Option<u16>,
    pub message: String,
}

impl EngineFailure {
    pub fn new(kind: FailureKind, phase: FailurePhase, message: impl Into<String>) -> Self {
        Self {
            kind,
            phase,
            upstream_status: None,
            message: message.into(),
        }
    }
}
