//! The error envelope and the public error codes (API.md, "Error envelope").

use serde::{Deserialize, Serialize};

/// Every public error code. The HTTP status of each lives in the host's error module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidParams,
    DeadlineUnmet,
    AdmissionReject,
    QueueFullDropLru,
    BudgetExceeded,
    PoolUnready,
    PoolUnavailable,
    ReplicaExhausted,
    DecodeTimeout,
    WorkerReset,
    PolicyUnavailable,
    UntrustedArtifact,
    ModelDeprecated,
    NotFound,
    Conflict,
    Unauthenticated,
    Forbidden,
    PayloadTooLarge,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        Self::InvalidParams,
        Self::DeadlineUnmet,
        Self::AdmissionReject,
        Self::QueueFullDropLru,
        Self::BudgetExceeded,
        Self::PoolUnready,
        Self::PoolUnavailable,
        Self::ReplicaExhausted,
        Self::DecodeTimeout,
        Self::WorkerReset,
        Self::PolicyUnavailable,
        Self::UntrustedArtifact,
        Self::ModelDeprecated,
        Self::NotFound,
        Self::Conflict,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::PayloadTooLarge,
        Self::Internal,
    ];

    /// The code as it appears on the wire, e.g. `QUEUE_FULL_DROP_LRU`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParams => "INVALID_PARAMS",
            Self::DeadlineUnmet => "DEADLINE_UNMET",
            Self::AdmissionReject => "ADMISSION_REJECT",
            Self::QueueFullDropLru => "QUEUE_FULL_DROP_LRU",
            Self::BudgetExceeded => "BUDGET_EXCEEDED",
            Self::PoolUnready => "POOL_UNREADY",
            Self::PoolUnavailable => "POOL_UNAVAILABLE",
            Self::ReplicaExhausted => "REPLICA_EXHAUSTED",
            Self::DecodeTimeout => "DECODE_TIMEOUT",
            Self::WorkerReset => "WORKER_RESET",
            Self::PolicyUnavailable => "POLICY_UNAVAILABLE",
            Self::UntrustedArtifact => "UNTRUSTED_ARTIFACT",
            Self::ModelDeprecated => "MODEL_DEPRECATED",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Internal => "INTERNAL",
        }
    }

    /// Parses a wire code (as a policy returns it).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every non-2xx response and of SSE `error` frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// On a task's terminal `error` frame: the id of its transcript artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_json_and_parse() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
