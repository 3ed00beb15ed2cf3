//! The HTTP edge: routes, the JSON extractor, correlation ids, SSE.

mod artifacts;
mod extract;
mod middleware;
mod policies;
mod sessions;
mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use orchd_contracts::ErrorCode;

use crate::errors::ApiError;
use crate::state::AppState;

pub use middleware::CorrelationId;

/// The daemon's router; tests call it in-process.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/tasks", post(tasks::create))
        .route("/v1/tasks/{id}", get(tasks::status))
        .route("/v1/tasks/{id}/stream", get(tasks::stream))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/v1/artifacts", post(artifacts::create))
        .route("/v1/artifacts/{id}", get(artifacts::get))
        .route("/v1/policies", get(policies::list))
        .route("/v1/policies/reload", post(policies::reload))
        .route("/metrics", get(policies::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.settings.max_header_bytes,
            middleware::limit_head,
        ))
        .layer(axum::middleware::from_fn(middleware::correlation))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Result<&'static str, ApiError> {
    if state.is_ready() {
        Ok("ready")
    } else if state.is_shutting_down() {
        Err(ApiError::new(ErrorCode::PoolUnavailable, "shutting down").retry_after_ms(1000))
    } else {
        Err(ApiError::new(ErrorCode::PoolUnready, "no pool is ready").retry_after_ms(1000))
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParams,
        format!("method {method} is not allowed on {}", uri.path()),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}
