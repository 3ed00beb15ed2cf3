//! The model catalog (API.md §3).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelState {
    Active,
    Retired,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Retired => "Retired",
        }
    }
}

/// Body of `POST /v1/catalog/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogModelRequest {
    pub id: String,
    /// `sha256:<64 hex>` of the model file.
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub manifests: Vec<Value>,
    #[serde(default)]
    pub signatures: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_policy: Option<Value>,
}

/// The last verification of a model's local file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// `pass` (the file's SHA-256 is the digest), `warn` (no local file to check), `fail`.
    pub result: String,
    /// `sha256:<hex>` of the local file, when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub reason: String,
    pub checked_ms: u64,
}

/// A catalog entry as `GET /v1/catalog/models/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogModel {
    #[serde(flatten)]
    pub model: CatalogModelRequest,
    pub state: ModelState,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// Body of `POST /v1/catalog/models/{id}/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRequest {
    pub state: ModelState,
    /// Retiring: pools serving the model drain within this long.
    #[serde(
        default,
        deserialize_with = "crate::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline_ms: Option<u64>,
}
