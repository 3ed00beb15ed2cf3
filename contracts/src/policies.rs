//! `GET /v1/policies` and `POST /v1/policies/reload`.

use serde::{Deserialize, Serialize};

/// A component file the host refused; the previous version keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRefusal {
    pub sha256: String,
    /// Unix time in ms.
    pub at: u64,
    pub reason: String,
}

/// One policy slot: the version in force and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// `admission`, `budget`, `placement` or `error_mapping`.
    pub kind: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// The `orchd:policy` WIT version the component was built against (`0.2.0`, or the
    /// frozen `0.1.0`).
    pub wit_version: String,
    pub path: String,
    /// Unix time in ms.
    pub loaded_at: u64,
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<PolicyRefusal>,
    /// A new component file being compiled, initialized and self-tested in the background
    /// while this version serves; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loading: Option<PolicyLoading>,
}

/// A component file the host is loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLoading {
    pub sha256: String,
    /// Always `compiling` (compile, link, init and self-test).
    pub state: String,
    /// Unix time in ms when it started.
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoliciesResponse {
    pub policies: Vec<PolicyStatus>,
}

/// What a reload did to one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub kind: String,
    /// `unchanged`, `loaded` or `refused`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub results: Vec<ReloadResult>,
    pub policies: Vec<PolicyStatus>,
}

/// `POST /v1/policies/{kind}/shadow` and `POST /v1/policies/{kind}/replay`: the candidate
/// component to try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCandidate {
    /// A file name in the daemon's policy directory (no path).
    pub component: String,
    /// The candidate's config (a JSON object); default: the config in force.
    #[serde(
        default,
        deserialize_with = "crate::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub config: Option<serde_json::Value>,
}

/// What a candidate is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInfo {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub wit_version: String,
    pub path: String,
}

/// One live decision the candidate would have made differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// When the live decision was made (Unix ms).
    pub at: u64,
    /// The live decision (what two policies must agree on).
    pub live: String,
    /// The candidate's decision, or `failed: <why>`.
    pub candidate: String,
}

/// How a candidate compared with the live policy: `shadow` (every live call since it
/// started) or `replay` (the recorded sample).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComparisonReport {
    pub kind: String,
    /// `shadow` or `replay`.
    pub mode: String,
    pub candidate: CandidateInfo,
    /// Live decisions compared.
    pub decisions: u64,
    pub agreed: u64,
    pub disagreed: u64,
    /// Comparisons where the candidate failed (counted in `disagreed` too).
    pub candidate_errors: u64,
    /// Shadow only: live calls the candidate could not keep up with (not compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// Shadow only: when it started (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// The most recent disagreements (at most 20), oldest first.
    pub disagreements: Vec<Disagreement>,
}
