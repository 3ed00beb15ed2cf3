//! The HTTP edge: routes, the JSON extractor, correlation ids, SSE.

mod artifacts;
mod catalog;
mod extract;
mod middleware;
mod openai;
mod policies;
pub(crate) mod pools;
mod sessions;
mod tasks;

/// Fuzzing entry points (the `fuzz/` targets and their corpus replay).
#[doc(hidden)]
pub mod fuzzing {
    pub use super::openai::fuzzing::request as openai_request;
    pub use super::tasks::next_after as last_event_id;
}

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, delete, get, post, put};
use orchd_contracts::ErrorCode;

use crate::errors::ApiError;
use crate::state::AppState;

pub use middleware::CorrelationId;

/// Every operation the daemon serves, as (method, path). The OpenAPI contract marks
/// exactly these `x-orchd-status: served`, and the router is built from this table: a test
/// holds the two together.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{id}"),
    ("GET", "/v1/tasks/{id}/stream"),
    ("POST", "/v1/tasks/{id}/cancel"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/artifacts"),
    ("GET", "/v1/artifacts/{id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/pools"),
    ("POST", "/v1/pools"),
    ("PUT", "/v1/pools/{id}"),
    ("DELETE", "/v1/pools/{id}"),
    ("POST", "/v1/pools/{id}/replicas"),
    ("DELETE", "/v1/pools/{id}/replicas/{replica_id}"),
    ("GET", "/v1/pools/{id}/health"),
    ("POST", "/v1/pools/{id}/drain"),
    ("POST", "/v1/pools/{id}/undrain"),
    ("POST", "/v1/pools/{id}/reload"),
    ("GET", "/v1/placements"),
    ("GET", "/v1/adapters"),
    ("GET", "/v1/capabilities"),
    ("POST", "/v1/catalog/models"),
    ("GET", "/v1/catalog/models/{id}"),
    ("DELETE", "/v1/catalog/models/{id}"),
    ("POST", "/v1/catalog/models/{id}/verify"),
    ("POST", "/v1/catalog/models/{id}/state"),
    ("GET", "/v1/policies"),
    ("POST", "/v1/policies/reload"),
    ("POST", "/v1/policies/{kind}/config"),
    ("GET", "/v1/policies/{kind}/shadow"),
    ("POST", "/v1/policies/{kind}/shadow"),
    ("DELETE", "/v1/policies/{kind}/shadow"),
    ("POST", "/v1/policies/{kind}/replay"),
    ("GET", "/metrics"),
    ("GET", "/ui"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

fn handler(method: &str, path: &str) -> MethodRouter<Arc<AppState>> {
    match (method, path) {
        ("POST", "/v1/tasks") => post(tasks::create),
        ("GET", "/v1/tasks/{id}") => get(tasks::status),
        ("GET", "/v1/tasks/{id}/stream") => get(tasks::stream),
        ("POST", "/v1/tasks/{id}/cancel") => post(tasks::cancel),
        ("GET", "/v1/sessions/{id}") => get(sessions::get),
        ("DELETE", "/v1/sessions/{id}") => delete(sessions::delete),
        ("POST", "/v1/artifacts") => post(artifacts::create),
        ("GET", "/v1/artifacts/{id}") => get(artifacts::get),
        ("POST", "/v1/chat/completions") => post(openai::chat),
        ("POST", "/v1/completions") => post(openai::completions),
        ("POST", "/v1/embeddings") => post(openai::embeddings),
        ("GET", "/v1/models") => get(openai::models),
        ("GET", "/v1/pools") => get(pools::list),
        ("POST", "/v1/pools") => post(pools::create),
        ("PUT", "/v1/pools/{id}") => put(pools::replace),
        ("DELETE", "/v1/pools/{id}") => delete(pools::remove),
        ("POST", "/v1/pools/{id}/replicas") => post(pools::add_replica),
        ("DELETE", "/v1/pools/{id}/replicas/{replica_id}") => delete(pools::remove_replica),
        ("GET", "/v1/pools/{id}/health") => get(pools::health),
        ("POST", "/v1/pools/{id}/drain") => post(pools::drain),
        ("POST", "/v1/pools/{id}/undrain") => post(pools::undrain),
        ("POST", "/v1/pools/{id}/reload") => post(pools::reload),
        ("GET", "/v1/adapters") => get(pools::adapters),
        ("GET", "/v1/capabilities") => get(pools::capabilities),
        ("POST", "/v1/catalog/models") => post(catalog::create),
        ("GET", "/v1/catalog/models/{id}") => get(catalog::get),
        ("DELETE", "/v1/catalog/models/{id}") => delete(catalog::delete),
        ("POST", "/v1/catalog/models/{id}/verify") => post(catalog::verify),
        ("POST", "/v1/catalog/models/{id}/state") => post(catalog::set_state),
        ("GET", "/v1/policies") => get(policies::list),
        ("POST", "/v1/policies/reload") => post(policies::reload),
        ("POST", "/v1/policies/{kind}/config") => post(policies::set_config),
        ("GET", "/v1/policies/{kind}/shadow") => get(policies::shadow_get),
        ("POST", "/v1/policies/{kind}/shadow") => post(policies::shadow_start),
        ("DELETE", "/v1/policies/{kind}/shadow") => delete(policies::shadow_stop),
        ("POST", "/v1/policies/{kind}/replay") => post(policies::replay_run),
        ("GET", "/metrics") => get(policies::metrics),
        ("GET", "/ui") => get(status_page),
        ("GET", "/v1/tasks") => get(tasks::list),
        ("GET", "/v1/placements") => get(pools::placements),
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(readyz),
        _ => unreachable!("ROUTES names {method} {path}, which has no handler"),
    }
}

/// `GET /ui`: the status page (pools, running tasks, policies, recent placements, charts
/// from `/metrics`), one HTML file embedded in the binary: no CDN, no other asset. It
/// asks for an admin key once and keeps it in the tab's sessionStorage, sending it as
/// `X-API-Key`; the key never goes into a URL. Served without a key (it holds no data).
async fn status_page() -> impl axum::response::IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                 form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        include_str!("api/ui/index.html"),
    )
}

/// `s` cut to 64 characters, for echoing client input in messages and logs.
pub fn truncated(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// The daemon's router; tests call it in-process.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.settings.max_body_bytes;
    let mut paths: BTreeMap<&str, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for &(method, path) in ROUTES {
        let route = handler(method, path);
        let merged = match paths.remove(path) {
            Some(existing) => existing.merge(route),
            None => route,
        };
        paths.insert(path, merged);
    }
    paths
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::browser_edge,
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
    if state.is_ready() && state.decisions.ledger.is_up() {
        Ok("ready")
    } else if state.is_ready() {
        Err(ApiError::new(
            ErrorCode::Internal,
            format!(
                "the state store ({}) is unreachable",
                state.decisions.ledger.store_name()
            ),
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .retry_after_ms(1000))
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
