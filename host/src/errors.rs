//! The one place that maps failures to public error codes, HTTP statuses and envelopes.
//!
//! Handlers return `Result<_, ApiError>`; SSE `error` frames carry the same envelope. The
//! engine-failure table here is the built-in fallback of API.md (the error-mapping policy
//! takes precedence once it is loaded).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orchd_contracts::{ErrorCode, ErrorEnvelope};

use crate::adapters::{EngineFailure, FailureKind};
use crate::policy::PolicyFailure;

/// HTTP status of each public code (API.md's table). Stream-only codes give the status
/// used when the failure happens before anything was streamed.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidParams | DeadlineUnmet | UntrustedArtifact => StatusCode::BAD_REQUEST,
        AdmissionReject | QueueFullDropLru | BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
        PoolUnready | PoolUnavailable | ReplicaExhausted | PolicyUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        DecodeTimeout | Internal => StatusCode::INTERNAL_SERVER_ERROR,
        WorkerReset => StatusCode::BAD_GATEWAY,
        ModelDeprecated => StatusCode::GONE,
        NotFound => StatusCode::NOT_FOUND,
        Conflict => StatusCode::CONFLICT,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

/// Whether a client may retry a request that failed with `code` (API.md's table).
pub fn retriable_of(code: ErrorCode) -> bool {
    use ErrorCode::*;
    matches!(
        code,
        AdmissionReject
            | QueueFullDropLru
            | PoolUnready
            | PoolUnavailable
            | ReplicaExhausted
            | DecodeTimeout
            | WorkerReset
            | PolicyUnavailable
            | Conflict
    )
}

/// `Retry-After` in whole seconds: `max(1, ceil(ms / 1000))`.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// An error answer: the envelope plus, rarely, a status outside the code table.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Boxed: errors travel through many `Result`s and should stay one pointer wide.
    pub envelope: Box<ErrorEnvelope>,
    status: StatusCode,
    /// A rate limit's state, sent as `X-RateLimit-*` (refusals by a rate limit).
    rate: Option<Box<crate::budget::RateState>>,
}

/// `X-RateLimit-{Limit,Remaining,Reset}-{Requests,Tokens}` (OpenAI's names; the reset is
/// the time to the window's end, in seconds: `"12s"`).
pub fn rate_headers(headers: &mut axum::http::HeaderMap, rate: &crate::budget::RateState) {
    let reset_s = rate
        .reset_ms
        .saturating_sub(crate::store::now_ms())
        .div_ceil(1000);
    let reset = HeaderValue::from_str(&format!("{reset_s}s")).expect("ascii");
    for (what, limit, left) in [
        ("requests", rate.requests_limit, rate.requests_left),
        ("tokens", rate.tokens_limit, rate.tokens_left),
    ] {
        if let (Some(limit), Some(left)) = (limit, left) {
            headers.insert(
                axum::http::HeaderName::from_bytes(format!("x-ratelimit-limit-{what}").as_bytes())
                    .expect("valid name"),
                HeaderValue::from(limit),
            );
            headers.insert(
                axum::http::HeaderName::from_bytes(
                    format!("x-ratelimit-remaining-{what}").as_bytes(),
                )
                .expect("valid name"),
                HeaderValue::from(left),
            );
            headers.insert(
                axum::http::HeaderName::from_bytes(format!("x-ratelimit-reset-{what}").as_bytes())
                    .expect("valid name"),
                reset.clone(),
            );
        }
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            envelope: Box::new(ErrorEnvelope {
                code,
                message: message.into(),
                engine: None,
                pool_id: None,
                retriable: Some(retriable_of(code)),
                retry_after_ms: None,
                policy_label: None,
                correlation_id: None,
                artifact_id: None,
            }),
            status: status_of(code),
            rate: None,
        }
    }

    pub fn from_envelope(envelope: ErrorEnvelope) -> Self {
        Self {
            status: status_of(envelope.code),
            envelope: Box::new(envelope),
            rate: None,
        }
    }

    /// Sends a rate limit's state with the error.
    pub fn rate(mut self, rate: crate::budget::RateState) -> Self {
        self.rate = Some(Box::new(rate));
        self
    }

    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidParams, format!("{field}: {problem}"))
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("unknown {what} {:?}", crate::api::truncated(id)),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// A request the router has no route or method for.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn engine(mut self, engine: &str) -> Self {
        self.envelope.engine = Some(engine.to_owned());
        self
    }

    pub fn pool(mut self, pool_id: &str) -> Self {
        self.envelope.pool_id = Some(pool_id.to_owned());
        self
    }

    /// The state store could not be reached for `what` (budgets, sessions, the task
    /// directory): fail closed with 503, retriable after a second.
    pub fn store_down(what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::Internal,
            format!("the state store ({what}) is unreachable; retry shortly: {e}"),
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .retry_after_ms(1_000)
        .retriable()
    }

    /// Marks the error retriable (whatever its code's default).
    pub fn retriable(mut self) -> Self {
        self.envelope.retriable = Some(true);
        self
    }

    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.envelope.retry_after_ms = Some(ms);
        self
    }

    pub fn policy_label(mut self, label: &str) -> Self {
        self.envelope.policy_label = Some(label.to_owned());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A broken policy: fail closed, distinct from a policy's own "no".
    pub fn policy_unavailable(failure: &PolicyFailure) -> Self {
        Self::new(
            ErrorCode::PolicyUnavailable,
            format!(
                "the {} policy is unavailable ({}); retry later",
                failure.policy,
                failure.kind.as_str()
            ),
        )
        .retry_after_ms(1000)
        .policy_label(failure.policy)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(&self.envelope)).into_response();
        if let Some(ms) = self.envelope.retry_after_ms {
            let headers = response.headers_mut();
            headers.insert("retry-after", HeaderValue::from(retry_after_secs(ms)));
            headers.insert("x-backoff-ms", HeaderValue::from(ms));
        }
        if let Some(rate) = &self.rate {
            rate_headers(response.headers_mut(), rate);
        }
        // The correlation middleware fills `correlation_id` and re-renders the body.
        response.extensions_mut().insert(*self.envelope);
        response
    }
}

/// The built-in mapping of engine failures (API.md): used for SSE `error` frames and for
/// failures before anything was streamed.
pub fn engine_failure(failure: &EngineFailure, engine: &str, pool_id: &str) -> ApiError {
    use ErrorCode::*;
    let code = match failure.kind {
        FailureKind::Transport | FailureKind::Protocol | FailureKind::Panic => WorkerReset,
        FailureKind::Timeout | FailureKind::Stall => DecodeTimeout,
        FailureKind::InvalidRequest => InvalidParams,
        FailureKind::Upstream => match failure.upstream_status {
            Some(400..=422) => InvalidParams,
            Some(429 | 503) => PoolUnavailable,
            _ => WorkerReset,
        },
        FailureKind::Config | FailureKind::Internal => Internal,
    };
    ApiError::new(code, format!("engine {engine}: {}", failure.message))
        .engine(engine)
        .pool(pool_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::FailurePhase;

    #[test]
    fn every_code_has_the_status_of_the_table() {
        let expected = [
            ("INVALID_PARAMS", 400),
            ("DEADLINE_UNMET", 400),
            ("ADMISSION_REJECT", 429),
            ("QUEUE_FULL_DROP_LRU", 429),
            ("BUDGET_EXCEEDED", 429),
            ("POOL_UNREADY", 503),
            ("POOL_UNAVAILABLE", 503),
            ("REPLICA_EXHAUSTED", 503),
            ("DECODE_TIMEOUT", 500),
            ("WORKER_RESET", 502),
            ("POLICY_UNAVAILABLE", 503),
            ("UNTRUSTED_ARTIFACT", 400),
            ("MODEL_DEPRECATED", 410),
            ("NOT_FOUND", 404),
            ("CONFLICT", 409),
            ("UNAUTHENTICATED", 401),
            ("FORBIDDEN", 403),
            ("PAYLOAD_TOO_LARGE", 413),
            ("INTERNAL", 500),
        ];
        assert_eq!(expected.len(), ErrorCode::ALL.len());
        for (code, status) in expected {
            let code = ErrorCode::parse(code).unwrap();
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
    }

    fn check(kind: FailureKind, status: Option<u16>, expected: ErrorCode) {
        let f = EngineFailure {
            kind,
            phase: FailurePhase::MidStream,
            upstream_status: status,
            message: "x".into(),
        };
        assert_eq!(engine_failure(&f, "e", "p").envelope.code, expected);
    }

    #[test]
    fn engine_failures_map_to_the_table() {
        check(FailureKind::Transport, None, ErrorCode::WorkerReset);
        check(FailureKind::Panic, None, ErrorCode::WorkerReset);
        check(FailureKind::Timeout, None, ErrorCode::DecodeTimeout);
        check(FailureKind::Upstream, Some(400), ErrorCode::InvalidParams);
        check(FailureKind::Upstream, Some(503), ErrorCode::PoolUnavailable);
        check(FailureKind::Upstream, Some(500), ErrorCode::WorkerReset);
        check(FailureKind::Internal, None, ErrorCode::Internal);
    }
}
