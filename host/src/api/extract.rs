//! `ApiJson<T>`: the body as `T`, or an envelope naming the field (400) or the limit (413).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use orchd_contracts::ErrorCode;
use serde::de::DeserializeOwned;

use crate::errors::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
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
        let value = T::deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| {
                ApiError::new(ErrorCode::InvalidParams, format!("invalid JSON body: {e}"))
            })?;
        Ok(ApiJson(value))
    }
}
