//! `GET /v1/policies`, `POST /v1/policies/reload`, `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use orchd_contracts::{
    PoliciesResponse, PolicyLoading, PolicyRefusal, PolicyStatus, ReloadResponse, ReloadResult,
};

use crate::policy::{Loaded, PolicySet, ReloadOutcome, Slot, watch};
use crate::state::AppState;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status<W: crate::policy::component_world::World>(slot: &Slot<W>) -> PolicyStatus {
    let loaded: Arc<Loaded<W>> = slot.get();
    let meta = loaded.meta();
    let stats = &loaded.stats;
    PolicyStatus {
        kind: meta.kind.to_owned(),
        name: meta.name.clone(),
        version: meta.version.clone(),
        sha256: meta.sha256.clone(),
        wit_version: meta.wit_version.to_owned(),
        path: meta.path.display().to_string(),
        loaded_at: unix_ms(meta.loaded_at),
        calls: stats.calls.load(Ordering::Relaxed),
        errors: stats.errors.load(Ordering::Relaxed),
        timeouts: stats.timeouts.load(Ordering::Relaxed),
        last_error: stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        refused: slot.refusal().map(|r| PolicyRefusal {
            sha256: r.sha256,
            at: unix_ms(r.at),
            reason: r.reason,
        }),
        loading: slot.loading().map(|l| PolicyLoading {
            sha256: l.sha256,
            state: "compiling".to_owned(),
            since: unix_ms(l.since),
        }),
    }
}

pub(super) fn statuses(set: &PolicySet) -> Vec<PolicyStatus> {
    vec![
        status(&set.admission),
        status(&set.budget),
        status(&set.placement),
        status(&set.error_mapping),
    ]
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<PoliciesResponse> {
    Json(PoliciesResponse {
        policies: statuses(&state.decisions.policies),
    })
}

pub async fn reload(State(state): State<Arc<AppState>>) -> Json<ReloadResponse> {
    let outcomes = watch::reload(&state.decisions.policies).await;
    let results = outcomes
        .into_iter()
        .map(|o| match o {
            ReloadOutcome::Unchanged { kind } => ReloadResult {
                kind: kind.to_owned(),
                result: "unchanged".into(),
                reason: None,
            },
            ReloadOutcome::Loaded { kind, .. } => ReloadResult {
                kind: kind.to_owned(),
                result: "loaded".into(),
                reason: None,
            },
            ReloadOutcome::Refused { kind, reason } => ReloadResult {
                kind: kind.to_owned(),
                result: "refused".into(),
                reason: Some(reason),
            },
        })
        .collect();
    Json(ReloadResponse {
        results,
        policies: statuses(&state.decisions.policies),
    })
}

/// `POST /v1/policies/{kind}/config` (admin): the policy's config (a JSON object, what
/// `[policies.<kind>] config` holds), without a restart. The component in force is
/// re-initialized with it (init, self-test) and swapped in; later reloads of its file keep
/// it. A config its `init` refuses is a 400 naming why, and the config in force stays. It
/// lasts until the daemon restarts (then the config file's applies).
pub async fn set_config(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    crate::api::extract::ApiJson(config): crate::api::extract::ApiJson<serde_json::Value>,
) -> Result<Json<PoliciesResponse>, crate::errors::ApiError> {
    if !config.is_object() {
        return Err(crate::errors::ApiError::invalid(
            "body",
            "the config is a JSON object",
        ));
    }
    let policies = Arc::clone(&state.decisions.policies);
    let text = config.to_string();
    let kind_for = kind.clone();
    let result = tokio::task::spawn_blocking(move || policies.reconfigure(&kind_for, &text))
        .await
        .map_err(|e| crate::errors::ApiError::internal(format!("reconfiguring panicked: {e}")))?;
    match result {
        None => Err(crate::errors::ApiError::not_found("policy", &kind)),
        Some(Err(reason)) => Err(crate::errors::ApiError::invalid("body", reason)),
        Some(Ok(_)) => Ok(Json(PoliciesResponse {
            policies: statuses(&state.decisions.policies),
        })),
    }
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(),
    )
}
