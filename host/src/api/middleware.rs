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

/// Loopback `Host` names (any port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6
            .split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned(),
    };
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]") || name.ends_with(".localhost")
}

/// The browser edge, before anything else runs:
/// - a request whose `Origin` is not in `cors.allowed_origins` is refused (403): a page on
///   another site cannot reach the daemon, not even with a "simple" request that needs no
///   preflight;
/// - in open mode, a `Host` that is not a loopback name (or in `server.allowed_hosts`) is
///   refused (403): DNS rebinding cannot turn a page's own origin into the daemon;
/// - a CORS preflight from an allowed origin is answered here (204), and responses to
///   allowed origins carry `Access-Control-Allow-Origin`.
pub async fn browser_edge(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::state::AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    use axum::http::{Method, header};
    use axum::response::IntoResponse;
    use orchd_contracts::ErrorCode;

    use crate::errors::ApiError;

    req.extensions_mut().insert(super::extract::BodyReadTimeout(
        state.settings.body_read_timeout,
    ));
    req.extensions_mut()
        .insert(super::extract::BodyLimit(state.settings.max_body_bytes));
    let cors = &state.settings.cors;
    if state.keys.is_open() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let listed = state
            .settings
            .allowed_hosts
            .iter()
            .any(|h| *h == host || host.rsplit_once(':').is_some_and(|(name, _)| name == h));
        if !host.is_empty() && !is_loopback_host(&host) && !listed {
            tracing::warn!(host = %host, "request with a non-loopback Host refused (open mode)");
            return ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "Host {:?} is not served in open mode (loopback names only; see server.allowed_hosts)",
                    crate::api::truncated(&host)
                ),
            )
            .into_response();
        }
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    // The daemon's own pages (`/ui`): a request whose Origin is the daemon itself is
    // same-origin, whatever `cors.allowed_origins` lists. (In open mode the Host is a
    // loopback name, checked above: a rebound name never gets here.)
    let own = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        });
    if own {
        return next.run(req).await;
    }
    if !cors.allows(&origin) {
        tracing::info!(origin = %crate::api::truncated(&origin), "request from an origin not in cors.allowed_origins refused");
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "origin {:?} is not allowed (cors.allowed_origins)",
                crate::api::truncated(&origin)
            ),
        )
        .into_response();
    }
    let allow_origin = HeaderValue::from_str(&origin).ok();
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut resp = axum::http::StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        if let Some(o) = allow_origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        for (name, value) in [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                cors.allowed_methods.as_str(),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                cors.allowed_headers.as_str(),
            ),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(cors.max_age_s),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return resp;
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Some(o) = allow_origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "x-correlation-id, x-orchd-task-id, retry-after, x-backoff-ms, x-budget-tokens-remaining, x-budget-time-remaining-ms, x-budget-cost-remaining",
        ),
    );
    resp
}

/// Routes anyone may call without a key.
fn exempt(path: &str) -> bool {
    matches!(path, "/metrics" | "/healthz" | "/readyz" | "/ui")
}

/// Routes of the control plane (API.md §2–3): the admin role only.
fn admin_only(path: &str) -> bool {
    [
        "/v1/policies",
        "/v1/pools",
        "/v1/capabilities",
        "/v1/adapters",
        "/v1/catalog",
        "/v1/placements",
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

/// The owner of the task whose stream `req` reads with a valid `?token=`: only `GET
/// /v1/tasks/{id}/stream`, only that task's token.
fn stream_token_owner(state: &crate::state::AppState, req: &Request) -> Option<String> {
    if req.method() != axum::http::Method::GET {
        return None;
    }
    let id = req
        .uri()
        .path()
        .strip_prefix("/v1/tasks/")?
        .strip_suffix("/stream")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    let token = req
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    if !state.stream_tokens.verify(id, token) {
        return None;
    }
    match state.tasks.get(id) {
        Some(t) => Some(t.spec.owner.clone()),
        // Another daemon sharing the store runs it (the token is theirs too): its owner
        // from the task directory; the stream is relayed there.
        None => crate::budget::blocking(|| {
            state
                .store()
                .get_task(id, crate::store::now_ms())
                .ok()
                .flatten()
                .map(|rec| rec.owner)
        }),
    }
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
        Principal::open(state.settings.open_admin)
    } else {
        match presented_key(&req).map(|k| state.keys.authenticate(k)) {
            // EventSource cannot send a key: a stream token stands in for it, on its own
            // task's stream only, for reading.
            None if let Some(owner) = stream_token_owner(&state, &req) => Principal {
                name: owner,
                role: crate::config::Role::Data,
                fingerprint: "stream-token".into(),
            },
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
        let how = if state.keys.is_open() {
            "; open mode is data-only: configure an admin key, or start with --insecure-open-admin"
        } else {
            ""
        };
        return ApiError::new(
            ErrorCode::Forbidden,
            format!("{path} needs the admin role{how}"),
        )
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "[::1]",
            "a.localhost",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "127.0.0.1.evil.example:80",
            "10.0.0.1:8080",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn route_classes() {
        assert!(exempt("/metrics") && exempt("/healthz") && !exempt("/v1/tasks"));
        assert!(admin_only("/v1/policies") && admin_only("/v1/policies/reload"));
        assert!(admin_only("/v1/pools/p/drain") && !admin_only("/v1/poolsX"));
        assert!(!admin_only("/v1/tasks/x"));
    }
}
