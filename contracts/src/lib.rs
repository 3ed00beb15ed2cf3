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
pub use policies::{PoliciesResponse, PolicyRefusal, PolicyStatus, ReloadResponse, ReloadResult};
pub use stream::{EndFrame, MetricsFrame, StartedFrame, TokenFrame};
pub use task::{
    Determinism, KvHint, PlacementMode, PlacementRequest, Priority, SessionStatus, TaskAccepted,
    TaskRequest, TaskState, TaskStatus, TaskStreams, Workload,
};
