//! The control plane (admin role): `GET /v1/pools`, `GET /v1/pools/{id}/health`,
//! `POST /v1/pools/{id}/drain`, `GET /v1/adapters`, `GET /v1/capabilities` — all built
//! from what is loaded and configured at the moment of the request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use orchd_contracts::pools::{
    AdapterList, AdapterView, DrainAccepted, DrainRequest, PoolDrainState, PoolHealth, PoolList,
    PoolMetrics, PoolView, ReplicaView,
};
use orchd_contracts::{ErrorCode, PoliciesResponse};
use serde_json::{Value, json};

use super::extract::ApiJson;
use crate::errors::ApiError;
use crate::pool::{Pool, Replica};
use crate::state::AppState;

/// The API version `GET /v1/capabilities` reports.
pub const API_VERSION: &str = "1.0.0";

fn replica_view(r: &Replica) -> ReplicaView {
    ReplicaView {
        replica_id: r.id.clone(),
        live: r.is_live(),
        ready: r.is_healthy(),
        engine_version: r.engine_version().to_string(),
        slots_total: r.slots_total(),
        active_leases: r.leases(),
        device_mask: r.device_mask.clone(),
        last_error: r.last_error(),
        ejected: r.ejected_until().is_some(),
        ejected_for_ms: r
            .ejected_until()
            .and_then(|t| t.checked_duration_since(std::time::Instant::now()))
            .map(|d| d.as_millis() as u64),
        ejections: r.ejections(),
    }
}

fn health_of(pool: &Pool) -> PoolHealth {
    let replicas: Vec<ReplicaView> = pool.replicas.iter().map(replica_view).collect();
    PoolHealth {
        live: replicas.iter().any(|r| r.live),
        ready: pool.is_ready() && !pool.is_draining(),
        draining: pool.is_draining(),
        last_error: replicas
            .iter()
            .find(|r| !r.ready)
            .and_then(|r| r.last_error.clone()),
        metrics: PoolMetrics {
            queue_depth: pool.queue_depth(),
            slots_total: pool.slots_total(),
            slots_free: pool.slots_free(),
            active_leases: replicas.iter().map(|r| r.active_leases).sum(),
            replicas,
        },
    }
}

fn find(state: &AppState, id: &str) -> Result<Arc<Pool>, ApiError> {
    state
        .pool(id)
        .ok_or_else(|| ApiError::not_found("pool", id))
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<PoolList> {
    Json(PoolList {
        pools: state.pools().iter().map(|p| view(p)).collect(),
    })
}

pub async fn health(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<PoolHealth>, ApiError> {
    let pool = find(&state, &id)?;
    Ok(Json(health_of(&pool)))
}

/// Longest drain deadline accepted.
const MAX_DRAIN_MS: u64 = 24 * 3600 * 1000;

/// `POST /v1/pools/{id}/undrain`: the pool takes new work again; tasks still running or
/// queued keep going and are no longer ended at the drain's deadline. 409 when the pool
/// is not draining (or is reloading, which drains it itself).
pub async fn undrain(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<PoolDrainState>, ApiError> {
    let pool = find(&state, &id)?;
    if pool.is_reloading() || !pool.is_draining() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "pool {id:?} is {}",
                if pool.is_reloading() {
                    "reloading"
                } else {
                    "not draining"
                }
            ),
        )
        .pool(&id));
    }
    pool.end_drain();
    pool.publish();
    tracing::info!(pool_id = %id, "pool undrained: taking new work");
    Ok(Json(PoolDrainState {
        pool_id: id,
        draining: false,
    }))
}

fn view(p: &Pool) -> PoolView {
    PoolView {
        pool_id: p.id.clone(),
        engine: p.engine.clone(),
        adapter: p.adapter.clone(),
        model_ref: p.model_ref.clone(),
        ctx_max: p.ctx_max,
        health: health_of(p),
    }
}

/// A pool from its definition (one `[[pools]]` entry as JSON), built on the loaded adapter
/// it names: its replicas' clients made and probed. The ids of pool `replacing` (and its
/// replicas) are free for it. Blocking (FFI): call off the workers.
pub fn pool_of_definition(
    state: &AppState,
    definition: &str,
    replacing: Option<&str>,
) -> Result<Arc<Pool>, ApiError> {
    let body: Value = serde_json::from_str(definition)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    let pools = state.pools();
    let others = pools.iter().filter(|p| Some(p.id.as_str()) != replacing);
    let pool_ids = others.clone().map(|p| p.id.clone()).collect();
    let replica_ids = others
        .flat_map(|p| p.replicas.iter().map(|r| r.id.clone()))
        .collect();
    let settings =
        crate::config::pool_from_json(body, state.settings.queue_capacity, pool_ids, replica_ids)
            .map_err(|e| ApiError::invalid("body", e))?;
    let pool = crate::startup::build_pool(&state.settings, &settings, &state.adapters)
        .map_err(|e| ApiError::invalid("body", e))?;
    let _ = pool.definition.set(definition.to_owned());
    Ok(pool)
}

/// `GET /v1/placements` (admin): the most recent placement decisions, oldest first.
pub async fn placements(
    State(state): State<Arc<AppState>>,
) -> Json<orchd_contracts::PlacementList> {
    let recent = state
        .decisions
        .recent_placements
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    Json(orchd_contracts::PlacementList { placements: recent })
}

/// Tasks running or queued on pool `id`.
fn in_flight(state: &AppState, id: &str) -> u32 {
    state.tasks.live().iter().filter(|t| t.on_pool(id)).count() as u32
}

/// A pool of the config file is changed there, not through the API.
fn not_from_config(state: &AppState, id: &str) -> Result<(), ApiError> {
    if state.settings.pools.iter().any(|p| p.id == id) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("pool {id:?} is defined in the config file; change it there (and restart)"),
        )
        .pool(id));
    }
    Ok(())
}

/// Builds (off the workers) and stores a pool definition, then puts it in the set in
/// place of the pool with its id, retiring that one; starts it. `201` when new, `200` when
/// it replaced one.
async fn install(
    state: &Arc<AppState>,
    definition: String,
    replacing: Option<String>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    let pool = {
        let (state, definition, replacing) =
            (Arc::clone(state), definition.clone(), replacing.clone());
        tokio::task::spawn_blocking(move || {
            pool_of_definition(&state, &definition, replacing.as_deref())
        })
        .await
        .map_err(|e| ApiError::internal(format!("building the pool panicked: {e}")))??
    };
    let store = Arc::clone(state.store());
    let (pool_id, stored) = (pool.id.clone(), definition);
    tokio::task::spawn_blocking(move || store.put_pool(&pool_id, &stored))
        .await
        .map_err(|e| ApiError::internal(format!("the store write panicked: {e}")))?
        .map_err(|e| ApiError::store_down("pools", e))?;
    let old = if replacing.is_some() {
        state.replace_pool(Arc::clone(&pool))
    } else if state.add_pool(Arc::clone(&pool)) {
        None
    } else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("pool {:?} was created meanwhile", pool.id),
        )
        .pool(&pool.id));
    };
    crate::startup::start_pool(state, &pool);
    tracing::info!(
        pool_id = %pool.id, adapter = %pool.adapter, model_ref = %pool.model_ref,
        replicas = pool.replicas.len(), replaced = old.is_some(), "pool set through the API"
    );
    let status = match old {
        Some(old) => {
            state.retire_pool(old, state.settings.shutdown_grace);
            StatusCode::OK
        }
        None => StatusCode::CREATED,
    };
    Ok((status, Json(view(&pool))))
}

/// `POST /v1/pools` (admin): a pool on any loaded adapter, served at once, without a
/// restart. The body is one `[[pools]]` entry of the config file as JSON (no `launch`:
/// the API never starts a process). It is kept in the state store, so it survives a
/// restart. 409 if the id is taken; 400 naming what is wrong (unknown adapter, bad replica
/// config, an id taken by a replica).
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    state.accepting_tasks()?;
    let id = body["id"].as_str().unwrap_or("").to_owned();
    if state.pool(&id).is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("pool {id:?} exists; PUT /v1/pools/{id} changes it"),
        )
        .pool(&id));
    }
    install(&state, body.to_string(), None).await
}

/// `PUT /v1/pools/{id}` (admin): the pool's new definition (the body's `id`, if any, must
/// be the path's). New work goes to the new pool at once; the old one drains what it holds
/// (its running tasks finish on its replicas). Creates the pool if there is none (201).
pub async fn replace(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    state.accepting_tasks()?;
    not_from_config(&state, &id)?;
    match body.get("id") {
        Some(Value::String(b)) if *b != id => {
            return Err(ApiError::invalid(
                "id",
                format!("{b:?} is not the path's {id:?}"),
            ));
        }
        _ => {}
    }
    if let Some(obj) = body.as_object_mut() {
        obj.insert("id".into(), json!(id));
    }
    let replacing = state.pool(&id).map(|_| id.clone());
    install(&state, body.to_string(), replacing).await
}

/// The stored definition of a pool created through the API, as JSON.
fn definition_of(state: &AppState, id: &str) -> Result<Value, ApiError> {
    let pool = find(state, id)?;
    not_from_config(state, id)?;
    let text = pool
        .definition
        .get()
        .ok_or_else(|| ApiError::internal(format!("pool {id:?} has no stored definition")))?;
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("pool {id:?}: {e}")))
}

/// `POST /v1/pools/{id}/replicas` (admin): adds a replica (`{id, config, device_mask}`) to
/// a pool created through the API; the pool is re-made with it (as a `PUT`).
pub async fn add_replica(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(replica): ApiJson<Value>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    state.accepting_tasks()?;
    let mut definition = definition_of(&state, &id)?;
    match definition["replicas"].as_array_mut() {
        Some(list) => list.push(replica),
        None => return Err(ApiError::internal(format!("pool {id:?}: replicas missing"))),
    }
    let (_, view) = install(&state, definition.to_string(), Some(id)).await?;
    Ok((StatusCode::CREATED, view))
}

/// `DELETE /v1/pools/{id}/replicas/{replica_id}` (admin): removes a replica from a pool
/// created through the API (its running tasks finish on it). A pool keeps at least one
/// replica: removing the last one is 409 (DELETE the pool instead).
pub async fn remove_replica(
    State(state): State<Arc<AppState>>,
    Path((id, replica_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<PoolView>), ApiError> {
    let mut definition = definition_of(&state, &id)?;
    let list = definition["replicas"]
        .as_array_mut()
        .ok_or_else(|| ApiError::internal(format!("pool {id:?}: replicas missing")))?;
    let before = list.len();
    list.retain(|r| r["id"] != replica_id.as_str());
    if list.len() == before {
        return Err(ApiError::not_found("replica", &replica_id));
    }
    if list.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{replica_id:?} is pool {id:?}'s last replica; DELETE the pool instead"),
        )
        .pool(&id));
    }
    install(&state, definition.to_string(), Some(id)).await
}

/// `DELETE /v1/pools/{id}` (admin): removes a pool created through the API. New work no
/// longer finds it at once; what it holds drains within the shutdown grace (then ends with
/// `POOL_UNAVAILABLE`), and it is gone from the state store (a restart does not bring it
/// back). A pool of the config file is removed there, not here (409).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    find(&state, &id)?;
    not_from_config(&state, &id)?;
    let store = Arc::clone(state.store());
    let key = id.clone();
    tokio::task::spawn_blocking(move || store.delete_pool(&key))
        .await
        .map_err(|e| ApiError::internal(format!("the store write panicked: {e}")))?
        .map_err(|e| ApiError::store_down("pools", e))?;
    let Some(pool) = state.remove_pool(&id) else {
        return Err(ApiError::not_found("pool", &id));
    };
    let in_flight = in_flight(&state, &id);
    let grace = state.settings.shutdown_grace;
    tracing::info!(pool_id = %id, in_flight, grace_ms = grace.as_millis() as u64, "pool removed; draining what it holds");
    state.retire_pool(pool, grace);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"pool_id": id, "removed": true, "in_flight": in_flight})),
    ))
}

pub async fn drain(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DrainRequest>,
) -> Result<(StatusCode, Json<DrainAccepted>), ApiError> {
    let pool = find(&state, &id)?;
    if req.deadline_ms > MAX_DRAIN_MS {
        return Err(ApiError::invalid(
            "deadline_ms",
            format!("at most {MAX_DRAIN_MS}"),
        ));
    }
    let Some(this_drain) = pool.begin_drain(Duration::from_millis(req.deadline_ms)) else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("pool {id:?} is already draining or reloading"),
        )
        .pool(&id));
    };
    pool.publish();
    let in_flight = in_flight(&state, &id);
    tracing::info!(pool_id = %id, deadline_ms = req.deadline_ms, in_flight, "pool draining");
    let deadline = Duration::from_millis(req.deadline_ms);
    let drainer = Arc::clone(&state);
    tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        if pool.is_drain(this_drain) {
            let n = drainer.end_pool_tasks(&pool, "drain").await;
            tracing::info!(pool_id = %pool.id, canceled = n, "pool drained");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainAccepted {
            pool_id: id,
            draining: true,
            deadline_ms: req.deadline_ms,
            in_flight,
        }),
    ))
}

/// Polls a replica's engine until it is ready or `within` passes.
async fn wait_ready(replica: &Replica, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let client = replica.client();
        let probe = tokio::task::spawn_blocking(move || crate::health::probe(client.as_ref()))
            .await
            .map_err(|e| format!("probe did not return: {e}"))?;
        replica.set_live(probe.live);
        let why = probe.why.clone();
        replica.observe(probe.ready, probe.engine_version, probe.slots, probe.why);
        if probe.ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(why.unwrap_or_else(|| "not ready".to_owned()));
        }
        if let Some(sup) = &replica.supervisor
            && (sup.breaker_open() || sup.exited_since_restart())
        {
            return Err(format!(
                "the engine exited while starting (its log: {})",
                sup.log_path().display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST /v1/pools/{id}/reload {new_model_ref}`: restarts the pool's launched replicas on
/// the new model file. Ready in time → 200 and the pool takes work again (a drain before
/// it ends); not ready → each replica goes back to its previous model → 409.
pub async fn reload(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<orchd_contracts::pools::ReloadRequest>,
) -> Result<Json<Value>, ApiError> {
    let pool = find(&state, &id)?;
    if req.new_model_ref.trim().is_empty() {
        return Err(ApiError::invalid("new_model_ref", "must not be empty"));
    }
    if pool.replicas.iter().all(|r| r.supervisor.is_none()) {
        return Err(ApiError::invalid(
            "new_model_ref",
            format!("pool {id:?} has no launched replicas; only those can be reloaded"),
        ));
    }
    if !pool.begin_reload() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("pool {id:?} is reloading or draining; try again after it ends"),
        )
        .pool(&id)
        .retry_after_ms(5000));
    }
    let result = reload_replicas(&pool, &req.new_model_ref).await;
    pool.end_reload();
    pool.publish();
    pool.wake.notify_one();
    match result {
        Ok(previous) => {
            pool.end_drain();
            tracing::info!(pool_id = %id, model = %req.new_model_ref, "pool reloaded");
            Ok(Json(json!({"pool_id": id, "model": req.new_model_ref,
                           "previous_model": previous, "ready": pool.is_ready()})))
        }
        Err(message) => {
            tracing::warn!(pool_id = %id, model = %req.new_model_ref, error = %message, "reload rolled back");
            Err(ApiError::new(ErrorCode::Conflict, message).pool(&id))
        }
    }
}

/// Restarts each launched replica on `model`; on the first failure, puts every replica
/// touched back on its previous model. Returns the previous model.
async fn reload_replicas(pool: &Pool, model: &str) -> Result<String, String> {
    let mut done: Vec<(&Replica, String)> = Vec::new();
    let mut failure = None;
    for replica in pool.replicas.iter().filter(|r| r.supervisor.is_some()) {
        let sup = replica.supervisor.as_ref().expect("filtered");
        let previous = sup.model();
        replica.mark_unhealthy("reloading");
        pool.publish();
        done.push((replica, previous));
        if let Err(e) = sup.restart_with(model).await {
            failure = Some(format!(
                "replica {}: cannot start the engine: {e}",
                replica.id
            ));
            break;
        }
        if let Err(why) = wait_ready(replica, sup.ready_timeout()).await {
            failure = Some(format!(
                "replica {} was not ready on {model} within {} ms: {why}",
                replica.id,
                sup.ready_timeout().as_millis()
            ));
            break;
        }
    }
    let previous = done.first().map(|(_, m)| m.clone()).unwrap_or_default();
    let Some(failure) = failure else {
        return Ok(previous);
    };
    for (replica, old) in &done {
        let sup = replica.supervisor.as_ref().expect("launched");
        replica.mark_unhealthy("rolling back");
        let back = match sup.restart_with(old).await {
            Ok(()) => wait_ready(replica, sup.ready_timeout()).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = back {
            return Err(format!(
                "{failure}; rolling back to {old} failed too: {why} (the pool is not ready)"
            ));
        }
    }
    Err(format!(
        "{failure}; rolled back to {previous}, which serves again"
    ))
}

/// Every loaded version of every adapter; `serving` marks the one new work goes to.
fn adapter_views(state: &AppState) -> Vec<AdapterView> {
    state
        .adapters
        .every_version()
        .into_iter()
        .map(|(a, serving)| {
            let i = a.info();
            AdapterView {
                name: i.name.clone(),
                version: i.version.clone(),
                abi_version: i.abi_version.clone(),
                engines: i.engines.clone(),
                features: i.features.clone(),
                path: i.path.display().to_string(),
                sha256: i.sha256.clone(),
                serving,
                mapped_path: i.mapped.as_ref().map(|p| p.display().to_string()),
            }
        })
        .collect()
}

pub async fn adapters(State(state): State<Arc<AppState>>) -> Json<AdapterList> {
    Json(AdapterList {
        adapters: adapter_views(&state),
    })
}

pub async fn capabilities(State(state): State<Arc<AppState>>) -> Json<Value> {
    // One entry per engine a loaded adapter serves or a pool uses.
    let mut engines: BTreeMap<String, Value> = BTreeMap::new();
    for adapter in &state.adapters.all() {
        let info = adapter.info();
        for engine in &info.engines {
            let all = state.pools();
            let pools: Vec<&Arc<Pool>> = all.iter().filter(|p| &p.engine == engine).collect();
            let workloads = if info.features.iter().any(|f| f == "embeddings") {
                json!(["completion", "embedding"])
            } else {
                json!(["completion"])
            };
            engines.insert(
                engine.clone(),
                json!({
                    "engine": engine,
                    "adapter": info.name,
                    "engine_version": pools.first().map(|p| p.engine_version().to_string()),
                    "ctx_max": pools.iter().map(|p| p.ctx_max).max(),
                    "supported_workloads": workloads,
                    "features": info.features,
                    "pools": pools.iter().map(|p| json!({
                        "pool_id": p.id, "model_ref": p.model_ref, "ready": p.is_ready(),
                        "draining": p.is_draining(), "slots_total": p.slots_total(),
                    })).collect::<Vec<_>>(),
                    "slots_total": pools.iter().map(|p| p.slots_total()).sum::<u32>(),
                }),
            );
        }
    }
    let policies: PoliciesResponse = PoliciesResponse {
        policies: super::policies::statuses(&state.decisions.policies),
    };
    Json(json!({
        "api_version": API_VERSION,
        "engines": engines.into_values().collect::<Vec<_>>(),
        "adapters": adapter_views(&state),
        "policies": policies.policies,
    }))
}
