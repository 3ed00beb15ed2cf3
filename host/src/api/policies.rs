//! `GET /v1/policies`, `POST /v1/policies/reload`, a policy's config, its shadow and
//! replay (`policy/observe.rs`), `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use orchd_contracts::{
    CandidateInfo, ComparisonReport, Disagreement, PoliciesResponse, PolicyCandidate,
    PolicyLoading, PolicyRefusal, PolicyStatus, ReloadResponse, ReloadResult,
};

use crate::errors::ApiError;
use crate::policy::observe::{Comparison, Observed, Shadow};

use crate::policy::{Loaded, PolicySet, ReloadOutcome, Slot, watch};
use crate::state::AppState;

/// Runs `$body` with `$slot` bound to the slot of policy `$kind` (`Some`), or gives
/// `None` for an unknown kind. A macro because each slot has its own world type.
macro_rules! with_slot {
    ($set:expr, $kind:expr, |$slot:ident| $body:expr) => {
        match $kind {
            "admission" => {
                let $slot = &$set.admission;
                Some($body)
            }
            "budget" => {
                let $slot = &$set.budget;
                Some($body)
            }
            "placement" => {
                let $slot = &$set.placement;
                Some($body)
            }
            "error_mapping" => {
                let $slot = &$set.error_mapping;
                Some($body)
            }
            _ => None,
        }
    };
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status<W: crate::policy::observe::Observed>(slot: &Slot<W>) -> PolicyStatus {
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

/// A candidate's file: a plain `.wasm` file name in the policy directory.
fn candidate_path(state: &AppState, name: &str) -> Result<std::path::PathBuf, ApiError> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.ends_with(".wasm")
        && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(ApiError::invalid(
            "component",
            "a .wasm file name in the daemon's policy directory, without a path",
        ));
    }
    let path = state.settings.policies_dir.join(name);
    if !path.is_file() {
        return Err(ApiError::not_found("component", name));
    }
    Ok(path)
}

/// Loads a candidate beside the slot (compile, init with `config` or the config in
/// force, self-test). Blocking.
fn load_candidate<W: Observed>(
    state: &AppState,
    slot: &Slot<W>,
    req: &PolicyCandidate,
) -> Result<Loaded<W>, ApiError> {
    let path = candidate_path(state, &req.component)?;
    let config = match &req.config {
        None => slot.config(),
        Some(c) if c.is_object() => c.to_string(),
        Some(_) => return Err(ApiError::invalid("config", "the config is a JSON object")),
    };
    Loaded::<W>::load(state.decisions.policies.runtime(), &path, &config)
        .map_err(|e| ApiError::invalid("component", e))
}

fn report<W: Observed>(
    mode: &str,
    candidate: &Loaded<W>,
    c: &Comparison,
    shadow: Option<&Shadow<W>>,
) -> ComparisonReport {
    let meta = candidate.meta();
    ComparisonReport {
        kind: W::KIND.to_owned(),
        mode: mode.to_owned(),
        candidate: CandidateInfo {
            name: meta.name.clone(),
            version: meta.version.clone(),
            sha256: meta.sha256.clone(),
            wit_version: meta.wit_version.to_owned(),
            path: meta.path.display().to_string(),
        },
        // `decisions` first: a call it counts has its outcome counted already.
        decisions: c.decisions.load(Ordering::SeqCst),
        agreed: c.agreed.load(Ordering::SeqCst),
        disagreed: c.disagreed.load(Ordering::SeqCst),
        candidate_errors: c.errors.load(Ordering::SeqCst),
        dropped: shadow.map(|_| c.dropped.load(Ordering::SeqCst)),
        started_at: shadow.map(|s| unix_ms(s.started)),
        disagreements: c
            .recent()
            .into_iter()
            .map(|d| Disagreement {
                at: unix_ms(d.at),
                live: d.live,
                candidate: d.candidate,
            })
            .collect(),
    }
}

fn shadow_report<W: Observed>(shadow: &Shadow<W>) -> ComparisonReport {
    report(
        "shadow",
        &shadow.candidate,
        &shadow.comparison,
        Some(shadow),
    )
}

fn start_shadow<W: Observed>(
    state: &AppState,
    slot: &Slot<W>,
    req: &PolicyCandidate,
) -> Result<ComparisonReport, ApiError> {
    let candidate = load_candidate(state, slot, req)?;
    let shadow = slot
        .observer()
        .start_shadow(candidate)
        .map_err(ApiError::internal)?;
    let meta = shadow.candidate.meta();
    tracing::info!(
        policy = W::KIND, candidate = %meta.name, candidate_version = %meta.version,
        sha256 = %meta.sha256, "policy shadow started: the candidate decides beside the live policy, unapplied"
    );
    Ok(shadow_report(&shadow))
}

fn replay<W: Observed>(
    state: &AppState,
    slot: &Slot<W>,
    req: &PolicyCandidate,
) -> Result<ComparisonReport, ApiError> {
    let candidate = load_candidate(state, slot, req)?;
    let (comparison, _) = slot.observer().replay(&candidate);
    Ok(report("replay", &candidate, &comparison, None))
}

/// Runs `f` on the slot of `kind`, on a blocking thread (candidates compile and run
/// guest code).
async fn on_slot(
    state: Arc<AppState>,
    kind: String,
    req: PolicyCandidate,
    f: fn(&str, &AppState, &PolicyCandidate) -> Option<Result<ComparisonReport, ApiError>>,
) -> Result<Json<ComparisonReport>, ApiError> {
    let k = kind.clone();
    tokio::task::spawn_blocking(move || f(&k, &state, &req))
        .await
        .map_err(|e| ApiError::internal(format!("the candidate's load panicked: {e}")))?
        .unwrap_or_else(|| Err(ApiError::not_found("policy", &kind)))
        .map(Json)
}

/// `POST /v1/policies/{kind}/shadow` (admin): loads a candidate component from the policy
/// directory and runs it beside the live policy on every call from now on; its decisions
/// are compared, counted and logged, never applied. Replaces a shadow running.
pub async fn shadow_start(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    crate::api::extract::ApiJson(req): crate::api::extract::ApiJson<PolicyCandidate>,
) -> Result<Json<ComparisonReport>, ApiError> {
    on_slot(state, kind, req, |kind, state, req| {
        with_slot!(state.decisions.policies, kind, |slot| start_shadow(
            state, slot, req
        ))
    })
    .await
}

/// The shadow of `kind`: `Ok(None)` when none runs; with `stop`, it is stopped.
fn shadow_of(state: &AppState, kind: &str, stop: bool) -> Result<ComparisonReport, ApiError> {
    fn one<W: Observed>(slot: &Slot<W>, stop: bool) -> Option<ComparisonReport> {
        let shadow = if stop {
            slot.observer().stop_shadow()
        } else {
            slot.observer().shadow()
        }?;
        if stop {
            tracing::info!(policy = W::KIND, candidate = %shadow.candidate.meta().name, "policy shadow stopped");
        }
        Some(shadow_report(&shadow))
    }
    let report = with_slot!(state.decisions.policies, kind, |slot| one(slot, stop))
        .ok_or_else(|| ApiError::not_found("policy", kind))?;
    report.ok_or_else(|| ApiError::not_found("shadow of policy", kind))
}

/// `GET /v1/policies/{kind}/shadow` (admin): the agreement report of the shadow running.
pub async fn shadow_get(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
) -> Result<Json<ComparisonReport>, ApiError> {
    shadow_of(&state, &kind, false).map(Json)
}

/// `DELETE /v1/policies/{kind}/shadow` (admin): stops the shadow; the final report.
pub async fn shadow_stop(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
) -> Result<Json<ComparisonReport>, ApiError> {
    shadow_of(&state, &kind, true).map(Json)
}

/// `POST /v1/policies/{kind}/replay` (admin): runs a candidate component over the sample
/// of recorded live decisions and reports where it would have decided differently.
pub async fn replay_run(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    crate::api::extract::ApiJson(req): crate::api::extract::ApiJson<PolicyCandidate>,
) -> Result<Json<ComparisonReport>, ApiError> {
    on_slot(state, kind, req, |kind, state, req| {
        with_slot!(state.decisions.policies, kind, |slot| replay(
            state, slot, req
        ))
    })
    .await
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::render(),
    )
}
