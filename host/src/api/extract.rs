//! `ApiJson<T>`: the body as `T`, or an envelope naming the field (400) or the limit (413).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use orchd_contracts::ErrorCode;
use serde::de::DeserializeOwned;

use crate::errors::ApiError;

pub struct ApiJson<T>(pub T);

/// How long a request body may take to arrive (`limits.body_read_timeout_ms`), put in the
/// request's extensions by the edge middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyReadTimeout(pub std::time::Duration);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // JSON only: a `text/plain` or form body is what a cross-site page can send
        // without a preflight.
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::new(
                ErrorCode::InvalidParams,
                "Content-Type: the body must be application/json",
            )
            .with_status(axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let within = req
            .extensions()
            .get::<BodyReadTimeout>()
            .map_or(std::time::Duration::from_secs(30), |t| t.0);
        let read = tokio::time::timeout(within, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidParams,
                    format!(
                        "the request body did not arrive within {} ms (limits.body_read_timeout_ms)",
                        within.as_millis()
                    ),
                )
                .with_status(axum::http::StatusCode::REQUEST_TIMEOUT)
            })?;
        let bytes = read.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body exceeds limits.max_body_bytes",
                )
            } else {
                ApiError::new(
                    ErrorCode::InvalidParams,
                    format!("cannot read body: {rejection}"),
                )
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                // Name the field when the problem is inside one (`kind: unknown variant …`).
                let message = if path == "." || inner.is_syntax() || inner.is_eof() {
                    format!("invalid JSON body: {inner}")
                } else {
                    format!("invalid JSON body: {path}: {inner}")
                };
                ApiError::new(ErrorCode::InvalidParams, message)
            })
            .and_then(|v| {
                de.end().map(|()| v).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidParams, format!("invalid JSON body: {e}"))
                })
            })?;
        Ok(ApiJson(value))
    }
}
