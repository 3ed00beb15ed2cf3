//! `GET /v1/policies`, `POST /v1/policies/reload`, `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use orchd_contracts::{
    PoliciesResponse, PolicyRefusal, PolicyStatus, ReloadResponse, ReloadResult,
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

pub async fn metrics() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(),
    )
}
