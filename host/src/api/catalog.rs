//! `/v1/catalog/models`: register, read, delete, verify (async) and retire models.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use orchd_contracts::ErrorCode;
use orchd_contracts::catalog::{CatalogModel, CatalogModelRequest, ModelState, StateRequest};
use serde_json::{Value, json};

use super::extract::ApiJson;
use crate::catalog::{CatalogError, verify as verify_file};
use crate::config::valid_id;
use crate::errors::ApiError;
use crate::state::AppState;

fn db_error(e: CatalogError) -> ApiError {
    match e {
        CatalogError::Exists(id) => ApiError::new(
            ErrorCode::Conflict,
            format!("model {id:?} is already in the catalog"),
        ),
        other => {
            tracing::error!(error = %other, "catalog failure");
            ApiError::internal("the catalog could not complete the operation")
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("catalog call did not return: {e}")))?
        .map_err(db_error)
}

/// Strict trust: asked for by the request's `X-Trust-Policy: strict` header or the entry's
/// own `trust_policy.mode`.
pub fn strict(headers: &HeaderMap) -> bool {
    headers
        .get("x-trust-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("strict"))
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CatalogModelRequest>,
) -> Result<(StatusCode, Json<CatalogModel>), ApiError> {
    if !valid_id(&req.id) && !req.id.starts_with("hf:") {
        return Err(ApiError::invalid(
            "id",
            "must be 1-128 chars of [A-Za-z0-9._:-]",
        ));
    }
    if !valid_digest(&req.digest) {
        return Err(ApiError::invalid("digest", "must be sha256:<64 hex>"));
    }
    // An object (`{"mode": "strict"}`); anything else is refused rather than read as
    // "not strict", which would turn strict trust off by a typo.
    let entry_strict = match &req.trust_policy {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Object(t)) => match t.get("mode") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(m)) => m.eq_ignore_ascii_case("strict"),
            Some(_) => {
                return Err(ApiError::invalid("trust_policy.mode", "must be a string"));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "trust_policy",
                "must be an object, e.g. {\"mode\": \"strict\"}",
            ));
        }
    };
    if (entry_strict || strict(&headers)) && req.signatures.is_empty() {
        return Err(ApiError::new(
            ErrorCode::UntrustedArtifact,
            format!(
                "model {:?} has no signatures and strict trust is required",
                req.id
            ),
        ));
    }
    let catalog = Arc::clone(&state.catalog);
    let created = blocking(move || catalog.create(&req)).await?;
    crate::metrics::model_state(&created.model.id, Some(created.state.as_str()));
    tracing::info!(model_id = %created.model.id, "catalog model registered");
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<CatalogModel>, ApiError> {
    let catalog = Arc::clone(&state.catalog);
    let wanted = id.clone();
    blocking(move || catalog.get(&wanted))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("model", &id))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let catalog = Arc::clone(&state.catalog);
    let wanted = id.clone();
    if blocking(move || catalog.delete(&wanted)).await? {
        crate::metrics::model_state(&id, None);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("model", &id))
    }
}

pub async fn verify(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let catalog = Arc::clone(&state.catalog);
    let wanted = id.clone();
    let model = blocking(move || catalog.get(&wanted))
        .await?
        .ok_or_else(|| ApiError::not_found("model", &id))?;
    let engine = state
        .pools()
        .iter()
        .find(|p| p.model_ref == id)
        .map_or_else(|| "unknown".to_owned(), |p| p.engine.clone());
    let catalog = Arc::clone(&state.catalog);
    tokio::task::spawn_blocking(move || {
        let v = verify_file(&model.model);
        crate::metrics::catalog_verification(&v.result, &v.reason, &engine);
        tracing::info!(
            model_id = %model.model.id, result = %v.result, reason = %v.reason,
            "catalog verification"
        );
        if let Err(e) = catalog.record_verification(&model.model.id, &v) {
            tracing::error!(model_id = %model.model.id, error = %e, "verification not recorded");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "started"}))))
}

pub async fn set_state(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StateRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let catalog = Arc::clone(&state.catalog);
    let wanted = id.clone();
    if !blocking(move || catalog.set_state(&wanted, req.state)).await? {
        return Err(ApiError::not_found("model", &id));
    }
    crate::metrics::model_state(&id, Some(req.state.as_str()));
    tracing::info!(model_id = %id, state = req.state.as_str(), "catalog model state");
    // Retiring with a deadline drains the pools that serve the model.
    let mut draining = Vec::new();
    if req.state == ModelState::Retired
        && let Some(deadline_ms) = req.deadline_ms
    {
        for pool in state.pools().iter().filter(|p| p.model_ref == id) {
            if let Some(this_drain) =
                pool.begin_drain(std::time::Duration::from_millis(deadline_ms))
            {
                pool.publish();
                draining.push(pool.id.clone());
                let (drainer, pool) = (Arc::clone(&state), Arc::clone(pool));
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(deadline_ms)).await;
                    if pool.is_drain(this_drain) {
                        drainer.end_pool_tasks(&pool, "drain").await;
                    }
                });
            }
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": req.state, "draining_pools": draining})),
    ))
}
