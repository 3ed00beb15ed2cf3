//! Wire types of the orchestratord HTTP API: the JSON edge, and nothing else.
//!
//! Field names are the public contract (`API.md`); request types reject unknown fields.
//! Both the daemon and its tests use these types.

pub mod artifacts;
pub mod catalog;
pub mod chat;
pub mod error;
pub mod openai;
pub mod policies;
pub mod pools;
pub mod stream;
pub mod task;

pub use artifacts::{ArtifactCreated, ArtifactKind, ArtifactRequest};
pub use chat::{ChatMessage, ToolCallFrame};
pub use error::{ErrorCode, ErrorEnvelope};
pub use policies::{
    CandidateInfo, ComparisonReport, Disagreement, PoliciesResponse, PolicyCandidate,
    PolicyLoading, PolicyRefusal, PolicyStatus, ReloadResponse, ReloadResult,
};
pub use pools::{PlacementList, PlacementRecord};
pub use stream::{EndFrame, MetricsFrame, StartedFrame, TokenFrame};
pub use task::{
    Determinism, KvHint, PlacementMode, PlacementRequest, Priority, SessionStatus, TaskAccepted,
    TaskList, TaskRequest, TaskState, TaskStatus, TaskStreams, TaskSummary, Workload,
};

/// For an optional request field: absent is `None`, a value is `Some`, and an explicit
/// `null` is refused (the contract types these fields without null; a null that silently
/// meant "absent" would let e.g. `messages: null` pass as a completion's field).
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}
