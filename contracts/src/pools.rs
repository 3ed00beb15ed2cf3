//! The control plane's view of pools and adapters (API.md §2).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub replica_id: String,
    pub live: bool,
    pub ready: bool,
    pub engine_version: String,
    pub slots_total: u32,
    pub active_leases: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_mask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Out of placement for failing (outlier ejection), until its probe task succeeds.
    #[serde(default)]
    pub ejected: bool,
    /// Time left in the current ejection's back-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_for_ms: Option<u64>,
    /// Ejections since the daemon started.
    #[serde(default)]
    pub ejections: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMetrics {
    pub queue_depth: u32,
    pub slots_total: u32,
    pub slots_free: u32,
    pub active_leases: u32,
    pub replicas: Vec<ReplicaView>,
}

/// `GET /v1/pools/{id}/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolHealth {
    pub live: bool,
    pub ready: bool,
    pub draining: bool,
    pub last_error: Option<String>,
    pub metrics: PoolMetrics,
}

/// One entry of `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub pool_id: String,
    pub engine: String,
    pub adapter: String,
    pub model_ref: String,
    pub ctx_max: u32,
    #[serde(flatten)]
    pub health: PoolHealth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// Body of `POST /v1/pools/{id}/drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub deadline_ms: u64,
}

/// Body of `POST /v1/pools/{id}/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The model file launched replicas restart on (`file:/abs/path` or a path).
    pub new_model_ref: String,
}

/// `POST /v1/pools/{id}/undrain`: 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDrainState {
    pub pool_id: String,
    pub draining: bool,
}

/// 202 answer to a drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAccepted {
    pub pool_id: String,
    pub draining: bool,
    pub deadline_ms: u64,
    /// Tasks running or queued on the pool when the drain began.
    pub in_flight: u32,
}

/// One loaded adapter library (`GET /v1/adapters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterView {
    pub name: String,
    pub version: String,
    pub abi_version: String,
    pub engines: Vec<String>,
    pub features: Vec<String>,
    /// The file in the adapter directory it was loaded from.
    pub path: String,
    pub sha256: String,
    /// This version takes new work (the last one loaded of its name); older versions
    /// finish what they started and stay mapped, idle, until a restart.
    #[serde(default)]
    pub serving: bool,
    /// The daemon's private copy that is mapped (never the file above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterList {
    pub adapters: Vec<AdapterView>,
}

/// One placement decision of `GET /v1/placements`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// Unix ms.
    pub at: u64,
    pub task_id: String,
    /// `admission` (which pool's queue) or `dispatch` (which replica).
    pub stage: String,
    /// `assigned`, `wait` or `no_capacity`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Prompt blocks the chosen replica held, when prefix affinity chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_blocks: Option<u32>,
    /// The policy fell back, or failed and the host's fallback chose.
    pub fallback: bool,
}

/// `GET /v1/placements`: the most recent placement decisions (at most 64), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementList {
    pub placements: Vec<PlacementRecord>,
}
