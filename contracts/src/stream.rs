//! Data of the SSE frames of `GET /v1/tasks/{id}/stream`. The `error` frame carries an
//! [`crate::ErrorEnvelope`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedFrame {
    pub queue_position: u32,
    pub predicted_start_ms: u64,
    pub pool_id: String,
    pub replica_id: String,
    pub engine: String,
    pub engine_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFrame {
    pub t: String,
    pub i: u32,
    /// A chat task that asked for `logprobs`: those of this frame's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<crate::chat::TokenLogprob>>,
}

/// Additive: clients ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsFrame {
    pub queue_depth: u32,
    pub tokens_out: u32,
    pub elapsed_ms: u64,
    pub tokens_per_s: f64,
    /// Probability that the task ends before its deadline, from its measured decode rate.
    pub on_time_probability: f64,
    /// Budget left for the task's key and session (the tighter), when a budget applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_budget_remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget_remaining_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_budget_remaining: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndFrame {
    pub tokens_out: u32,
    pub decode_ms: u64,
    pub decode_time_ms: u64,
    pub tokens_in: u32,
    pub canceled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_id: Option<String>,
    /// An `embedding` task's result: one vector per input, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// Why generation stopped, as the engine said (`stop`, `length`, `tool_calls`,
    /// `content_filter`); absent where the engine gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Prompt tokens the engine served from its cache, where it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
}
