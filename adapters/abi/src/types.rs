//! Plain data that crosses the library boundary. Every type is `#[repr(C)]` + `StableAbi`.

use abi_stable::StableAbi;
use abi_stable::std_types::{ROption, RString, RVec};

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

// ---- Appended in ABI 0.1.3: structured chat. ----
// Nothing above this line changes; later versions append below.

/// The feature name an adapter lists (in [`crate::ffi::AdapterMod::more_features`]) when it
/// serves [`crate::ffi::FfiClient::submit_chat`].
pub const FEATURE_CHAT: &str = "chat";

/// Who wrote a chat message.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// A tool call an assistant message made (sent back in later turns).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ChatToolCall {
    pub id: RString,
    pub name: RString,
    /// The arguments as the model wrote them: JSON text.
    pub arguments: RString,
}

/// One message of a conversation, as the client sent it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// The content when sent as one string; `RNone` when null or sent as parts.
    pub content: ROption<RString>,
    /// The text parts, when the content was sent as a list of parts.
    pub parts: RVec<RString>,
    pub name: ROption<RString>,
    /// An assistant message's tool calls.
    pub tool_calls: RVec<ChatToolCall>,
    /// A `tool` message's answer to this call.
    pub tool_call_id: ROption<RString>,
}

/// A function the model may call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ChatTool {
    pub name: RString,
    pub description: ROption<RString>,
    /// The parameters' JSON Schema, as JSON text.
    pub parameters_json: ROption<RString>,
    pub strict: ROption<bool>,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoiceMode {
    /// The client did not say: the engine's default.
    Unset,
    None,
    Auto,
    Required,
    /// Call the function named in [`ToolChoice::function`].
    Function,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ToolChoice {
    pub mode: ToolChoiceMode,
    pub function: RString,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormatKind {
    /// Plain text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching [`ResponseFormat::schema_json`].
    JsonSchema,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ResponseFormat {
    pub kind: ResponseFormatKind,
    /// The schema's name (`json_schema` only).
    pub name: RString,
    pub description: ROption<RString>,
    /// The JSON Schema as JSON text (`json_schema` only).
    pub schema_json: ROption<RString>,
    pub strict: ROption<bool>,
}

/// A bias added to one token's logit.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct LogitBias {
    pub token: u32,
    pub bias: f32,
}

/// One chat task handed to an engine's own chat endpoint (its template and tool-call
/// parser apply).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub task_id: RString,
    pub model: RString,
    pub messages: RVec<ChatMessage>,
    pub tools: RVec<ChatTool>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: ROption<bool>,
    pub response_format: ResponseFormat,
    /// Return each output token's log probability.
    pub logprobs: bool,
    /// With `logprobs`: this many most likely alternatives per position (0–20).
    pub top_logprobs: u32,
    pub frequency_penalty: ROption<f32>,
    pub presence_penalty: ROption<f32>,
    pub logit_bias: RVec<LogitBias>,
    pub stop: RVec<RString>,
    pub seed: ROption<u64>,
    pub max_tokens: u32,
    /// Further sampler parameters (`temperature`, `top_p`, …) as a JSON object, or empty.
    pub params_json: RString,
}

/// An alternative token at one position.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: RString,
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    pub bytes: RVec<u8>,
}

/// The log probability of one output token, and the most likely alternatives.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: RString,
    pub logprob: f32,
    pub bytes: RVec<u8>,
    pub top: RVec<TopLogprob>,
}

/// A fragment of a tool call: the first fragment of call `index` carries its `id` and
/// `name`; `arguments` fragments concatenate, in order, to the arguments' JSON text.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: ROption<RString>,
    pub name: ROption<RString>,
    pub arguments: RString,
}

/// What one engine frame added to the answer.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ChatDelta {
    pub content: RString,
    pub tool_calls: RVec<ToolCallDelta>,
    /// Log probabilities of the tokens of `content`, when asked for.
    pub logprobs: RVec<TokenLogprob>,
}

/// Token counts as the engine reported them.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the engine's cache, where it says.
    pub cached_tokens: ROption<u32>,
}

/// The end of a chat task.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ChatEnd {
    /// The engine's own finish reason (`stop`, `length`, `tool_calls`, `content_filter`,
    /// …), empty when it gave none.
    pub finish_reason: RString,
    /// `RNone` when the engine reported no usage.
    pub usage: ROption<EngineUsage>,
}

/// An event of a running chat task, delivered in order through
/// [`crate::ffi::FfiEventSink::emit_chat`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum ChatEvent {
    Started { engine_version: RString },
    Delta(ChatDelta),
    End(ChatEnd),
    Error(AdapterError),
}

// ---- Appended in ABI 0.1.4: trace context. ----

/// The W3C trace context of a task's engine call, from
/// [`crate::ffi::FfiEventSink::trace_context`]: an HTTP adapter sends the non-empty ones as
/// the `traceparent` and `tracestate` headers of its request, so the engine's own spans
/// join the task's trace. Empty strings: the task is not traced.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: RString,
    pub tracestate: RString,
}
