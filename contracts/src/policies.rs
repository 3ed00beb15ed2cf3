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
