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
    let span = tracing::info_span!("request", correlation_id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;

    // Error envelopes carry the correlation id too.
    if let Some(mut envelope) = response.extensions_mut().remove::<ErrorEnvelope>() {
        envelope.correlation_id = Some(id.clone());
        let body = serde_json::to_vec(&envelope).expect("envelope serializes");
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
