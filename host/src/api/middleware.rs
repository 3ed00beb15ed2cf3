//! Correlation ids on every response and every log line, and the request log.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use orchd_contracts::ErrorEnvelope;
use tracing::Instrument;

const HEADER: &str = "x-correlation-id";

/// The request's correlation id (echoed or generated).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// ≤ 128 printable ASCII characters, else replaced.
fn acceptable(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    (!bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| (0x20..0x7f).contains(b)))
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

pub async fn correlation(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(acceptable)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        %method,
        %path,
        key = tracing::field::Empty,
        task_id = tracing::field::Empty,
        session_id = tracing::field::Empty,
        pool_id = tracing::field::Empty,
        engine = tracing::field::Empty,
        engine_version = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;

    // Error envelopes carry the correlation id too; the OpenAI front door answers in
    // OpenAI's error shape instead.
    if let Some(mut envelope) = response.extensions_mut().remove::<ErrorEnvelope>() {
        envelope.correlation_id = Some(id.clone());
        let body = if super::openai::is_openai_path(&path) {
            let shaped = super::openai::openai_error(&envelope, response.status().as_u16());
            serde_json::to_vec(&shaped).expect("error serializes")
        } else {
            serde_json::to_vec(&envelope).expect("envelope serializes")
        };
        response
            .headers_mut()
            .remove(axum::http::header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_us = started.elapsed().as_micros() as u64,
            "request"
        )
    });
    response
}

/// Bytes of the request head as it came in: request line and header lines.
fn head_bytes(req: &Request) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// 431 with an envelope for a request head over `limits.max_header_bytes` (hyper's own,
/// larger, buffer bound answers a bare 431 beyond that).
pub async fn limit_head(
    axum::extract::State(max): axum::extract::State<usize>,
    req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let size = head_bytes(&req);
    if size > max {
        return crate::errors::ApiError::new(
            orchd_contracts::ErrorCode::PayloadTooLarge,
            format!("request head is {size} bytes; the limit is {max}"),
        )
        .with_status(axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        .into_response();
    }
    next.run(req).await
}

/// Routes anyone may call without a key.
fn exempt(path: &str) -> bool {
    matches!(path, "/metrics" | "/healthz" | "/readyz")
}

/// Routes of the control plane (API.md §2–3): the admin role only.
fn admin_only(path: &str) -> bool {
    [
        "/v1/policies",
        "/v1/pools",
        "/v1/capabilities",
        "/v1/adapters",
        "/v1/catalog",
    ]
    .iter()
    .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}

fn presented_key(req: &Request) -> Option<&str> {
    let headers = req.headers();
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401 without a key, 403 for an unknown key or a role too low; otherwise the caller's
/// [`Principal`] goes into the request's extensions. Only the key's fingerprint is logged.
pub async fn authenticate(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::state::AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    use orchd_contracts::ErrorCode;

    use crate::auth::Principal;
    use crate::errors::ApiError;

    let path = req.uri().path().to_owned();
    if exempt(&path) {
        return next.run(req).await;
    }
    let principal = if state.keys.is_open() {
        Principal::open()
    } else {
        match presented_key(&req).map(|k| state.keys.authenticate(k)) {
            None => {
                return ApiError::new(
                    ErrorCode::Unauthenticated,
                    "missing API key: send X-API-Key or Authorization: Bearer",
                )
                .into_response();
            }
            Some(None) => {
                tracing::info!("request with an unknown API key refused");
                return ApiError::new(ErrorCode::Forbidden, "unknown API key").into_response();
            }
            Some(Some(p)) => p,
        }
    };
    tracing::Span::current().record("key", principal.fingerprint.as_str());
    if admin_only(&path) && !principal.is_admin() {
        return ApiError::new(ErrorCode::Forbidden, format!("{path} needs the admin role"))
            .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes() {
        assert!(exempt("/metrics") && exempt("/healthz") && !exempt("/v1/tasks"));
        assert!(admin_only("/v1/policies") && admin_only("/v1/policies/reload"));
        assert!(admin_only("/v1/pools/p/drain") && !admin_only("/v1/poolsX"));
        assert!(!admin_only("/v1/tasks/x"));
    }
}
