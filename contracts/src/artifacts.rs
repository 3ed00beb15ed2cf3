//! `POST /v1/artifacts` and `GET /v1/artifacts/{id}` (API.md §3).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Plan,
    Summary,
    Diff,
    Trace,
    Transcript,
    Other,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Summary => "summary",
            Self::Diff => "diff",
            Self::Trace => "trace",
            Self::Transcript => "transcript",
            Self::Other => "other",
        }
    }
}

/// Body of `POST /v1/artifacts`. `content` is any JSON value (a string for text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRequest {
    pub kind: ArtifactKind,
    pub content: Value,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(
        default,
        deserialize_with = "crate::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Value>,
}

/// The 201 of `POST /v1/artifacts`; `GET` answers the same fields plus the document's
/// `content`, `parent` and `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactCreated {
    /// `sha256:<hex>` of the canonical document (kind, content, tags, parent, metadata).
    pub id: String,
    pub kind: ArtifactKind,
    pub digest: String,
    pub created_ms: u64,
    pub tags: Vec<String>,
}
