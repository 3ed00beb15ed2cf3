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

/// `limits.max_body_bytes`, put in the request's extensions by the edge middleware.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A body declared over the limit is read and dropped up to this much before the 413
/// goes out, so a client still sending it reads the answer instead of a broken pipe.
const DRAIN_CAP: u64 = 64 << 20;

fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        "request body exceeds limits.max_body_bytes",
    )
}

/// Reads and drops a body (at most `DRAIN_CAP`, within `within`).
async fn drain(body: axum::body::Body, within: std::time::Duration) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(within, async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_CAP {
                break;
            }
        }
    })
    .await;
}

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
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(len), Some(limit)) = (declared, req.extensions().get::<BodyLimit>())
            && len > limit.0 as u64
        {
            if len <= DRAIN_CAP {
                drain(req.into_body(), within).await;
            }
            return Err(too_large());
        }
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
                too_large()
            } else {
                ApiError::new(
                    ErrorCode::InvalidParams,
                    format!("cannot read body: {rejection}"),
                )
            }
        })?;
        let value = match parse::<T>(&bytes) {
            // JSON has one number type: `8.0` is the integer 8 (JSON Schema agrees), but
            // serde's integer fields refuse it. Only then, whole-number floats are rewritten
            // as integers and the body parsed again (the common path parses once).
            Err(e) if e.envelope.message.contains("invalid type: floating point") => {
                let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    return Err(e);
                };
                if !integral_floats_to_ints(&mut v) {
                    return Err(e);
                }
                let bytes = serde_json::to_vec(&v).expect("a JSON value serializes");
                parse::<T>(&bytes)?
            }
            other => other?,
        };
        Ok(ApiJson(value))
    }
}

/// Parses a body, naming the field a problem is in.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de)
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
        })
}

/// Rewrites every float with no fractional part (within ±2^53, where floats are exact) as
/// an integer; `true` if any was.
fn integral_floats_to_ints(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => {
                *v = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
                true
            }
            _ => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, item| integral_floats_to_ints(item) | any),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |any, item| integral_floats_to_ints(item) | any),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_number_floats_fill_integer_fields() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Body {
            n: u32,
            t: f64,
            list: Vec<i64>,
        }
        let parsed = |text: &str| -> Result<Body, ApiError> {
            match parse::<Body>(text.as_bytes()) {
                Err(e) if e.envelope.message.contains("invalid type: floating point") => {
                    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
                    if !integral_floats_to_ints(&mut v) {
                        return Err(e);
                    }
                    parse(&serde_json::to_vec(&v).unwrap())
                }
                other => other,
            }
        };
        assert_eq!(
            parsed(r#"{"n": 8.0, "t": 1.0, "list": [-3.0, 4]}"#).unwrap(),
            Body {
                n: 8,
                t: 1.0,
                list: vec![-3, 4]
            }
        );
        let err = parsed(r#"{"n": 8.5, "t": 1, "list": []}"#).unwrap_err();
        assert!(
            err.envelope.message.contains("n: invalid type"),
            "{:?}",
            err.envelope
        );
    }
}
