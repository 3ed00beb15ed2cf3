//! `GET /v1/sessions/{id}` and `DELETE /v1/sessions/{id}`, in the caller's namespace.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use orchd_contracts::SessionStatus;

use crate::auth::Principal;
use crate::errors::ApiError;
use crate::sessions::Sessions;
use crate::state::AppState;

fn store_down(e: crate::store::StoreError) -> ApiError {
    ApiError::store_down("sessions", e)
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SessionStatus>, ApiError> {
    let view = state
        .sessions
        .touch(&principal.name, &id)
        .map_err(store_down)?
        .ok_or_else(|| ApiError::not_found("session", &id))?;
    let (_, left) = state
        .decisions
        .ledger
        .left(
            &principal.name,
            &Sessions::account(&principal.name, &id),
            "",
        )
        .await
        .map_err(store_down)?;
    Ok(Json(SessionStatus {
        ttl_ms_remaining: view.ttl_remaining.as_millis() as u64,
        turns: view.turns,
        kv_bytes: 0,
        kv_warmth: 0.0,
        tokens_budget_remaining: left.tokens,
        time_budget_remaining_ms: left.time_ms,
        cost_budget_remaining: left.cost,
    }))
}

/// Forgets the session and cancels its tasks.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tasks = state.session_tasks(&principal.name, &id);
    if !state
        .sessions
        .remove(&principal.name, &id)
        .map_err(store_down)?
        && tasks.is_empty()
    {
        return Err(ApiError::not_found("session", &id));
    }
    for task in tasks {
        state.cancel(&task, "client").await;
    }
    Ok(StatusCode::NO_CONTENT)
}
