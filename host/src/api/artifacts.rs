//! `POST /v1/artifacts` and `GET /v1/artifacts/{id}`: the caller's artifacts (an admin
//! sees every one), content-addressed, `ETag` = the id.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orchd_contracts::{ArtifactRequest, ErrorCode};

use super::extract::ApiJson;
use crate::artifacts::{PutError, parse_id};
use crate::auth::Principal;
use crate::config::valid_id;
use crate::errors::ApiError;
use crate::state::AppState;

const MAX_TAGS: usize = 32;

fn validate(req: &ArtifactRequest) -> Result<(), ApiError> {
    if req.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    if let Some(bad) = req
        .tags
        .iter()
        .find(|t| t.is_empty() || t.chars().count() > 128)
    {
        return Err(ApiError::invalid(
            "tags",
            format!("tag {bad:?} must be 1-128 chars"),
        ));
    }
    if req.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::invalid("metadata", "must be an object"));
    }
    if let Some(parent) = &req.parent
        && parse_id(parent).is_none()
        && !valid_id(parent)
    {
        return Err(ApiError::invalid(
            "parent",
            "must be an artifact id (sha256:<hex>) or an id of [A-Za-z0-9._:-]",
        ));
    }
    Ok(())
}

fn etag(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{id}\"")).expect("ids are header-safe")
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(req): ApiJson<ArtifactRequest>,
) -> Result<Response, ApiError> {
    validate(&req)?;
    let store = Arc::clone(&state.artifacts);
    let owner = principal.name.clone();
    let created = tokio::task::spawn_blocking(move || store.put(&owner, &req))
        .await
        .map_err(|e| ApiError::internal(format!("artifact write did not finish: {e}")))?
        .map_err(|e| match e {
            PutError::TooLarge { .. } => ApiError::new(ErrorCode::PayloadTooLarge, e.to_string()),
            PutError::Io(io) => {
                tracing::error!(error = %io, "artifact store write failed");
                ApiError::internal("the artifact store could not write the document")
            }
        })?;
    tracing::info!(artifact = %created.id, kind = created.kind.as_str(), "artifact stored");
    let mut response = (StatusCode::CREATED, Json(&created)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(&created.id));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/artifacts/{}", created.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `If-None-Match` names this id (or `*`).
fn matches(headers: &HeaderMap, id: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|tag| tag == id || tag == "*")
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = Arc::clone(&state.artifacts);
    let (owner, admin, wanted) = (principal.name.clone(), principal.is_admin(), id.clone());
    let doc = tokio::task::spawn_blocking(move || store.get(&owner, admin, &wanted))
        .await
        .map_err(|e| ApiError::internal(format!("artifact read did not finish: {e}")))?
        .map_err(|e| {
            tracing::error!(artifact = %id, error = %e, "artifact store read failed");
            ApiError::internal("the artifact store could not read the document")
        })?
        .ok_or_else(|| ApiError::not_found("artifact", &id))?;
    if matches(&headers, &id) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(&id))]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag(&id)),
        ],
        Vec::clone(&doc),
    )
        .into_response())
}
