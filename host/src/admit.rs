//! The admission path of `POST /v1/tasks`: validate → pick the pool → deadline
//! feasibility → admission policy → enqueue. Nothing is enqueued unless every check
//! passed; a rejected request leaves no state.

use std::sync::Arc;
use std::time::Instant;

use orchd_contracts::{
    ErrorCode, PlacementMode, Priority, TaskAccepted, TaskRequest, TaskStreams, Workload,
};

use crate::adapters::JobSpec;
use crate::auth::Principal;
use crate::budget::{Headroom, Reservation};
use crate::config::valid_id;
use crate::decisions::{JobFacts, now_ms, policy_failed, wit_priority};
use crate::errors::ApiError;
use crate::metrics;
use crate::policy::MAX_RETRY_AFTER_MS;
use crate::policy::bindings::{
    BudgetLeft, ClassSnapshot, QueueSnapshot, QueuedEntry, WitPriority, admission, budget,
};
use crate::pool::Pool;
use crate::queue::ClassQueues;
use crate::sessions::{Sessions, TurnCapReached};
use crate::state::AppState;
use crate::task::{Task, TaskSpec};

/// Oldest entries per class shown to the admission policy.
const SNAPSHOT_OLDEST: usize = 8;

fn validate(req: &TaskRequest) -> Result<(), ApiError> {
    if let Some(id) = &req.task_id
        && !valid_id(id)
    {
        return Err(ApiError::invalid(
            "task_id",
            "must be 1-128 chars of [A-Za-z0-9._:-]",
        ));
    }
    if !valid_id(&req.session_id) {
        return Err(ApiError::invalid(
            "session_id",
            "must be 1-128 chars of [A-Za-z0-9._:-]",
        ));
    }
    if req.max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens", "must be at least 1"));
    }
    if req.deadline_ms == 0 {
        return Err(ApiError::invalid("deadline_ms", "must be at least 1"));
    }
    match req.workload {
        Workload::Completion if req.prompt.is_none() => {
            return Err(ApiError::invalid(
                "prompt",
                "required for workload completion",
            ));
        }
        Workload::Embedding | Workload::Rerank if req.inputs.is_none() => {
            return Err(ApiError::invalid(
                "inputs",
                "required for workload embedding/rerank",
            ));
        }
        _ => {}
    }
    if let Some(p) = &req.placement
        && p.mode == PlacementMode::Pin
        && p.pin_pool_id.is_none()
    {
        return Err(ApiError::invalid(
            "placement.pin_pool_id",
            "required when mode is pin",
        ));
    }
    Ok(())
}

/// The pools serving the request's engine and model (routing), after request validation:
/// an unknown engine, an unknown pin target or a context no candidate can hold is a 400.
fn candidates<'a>(state: &'a AppState, req: &TaskRequest) -> Result<Vec<&'a Arc<Pool>>, ApiError> {
    if !state.adapters.serves_engine(&req.engine) {
        let known = state.adapters.names();
        return Err(ApiError::invalid(
            "engine",
            format!(
                "no loaded adapter serves engine {:?} (adapters: {known:?})",
                req.engine
            ),
        ));
    }
    if let Some(p) = &req.placement
        && p.mode == PlacementMode::Pin
        && let Some(pin) = &p.pin_pool_id
        && !state.pools.iter().any(|pool| &pool.id == pin)
    {
        return Err(ApiError::invalid(
            "placement.pin_pool_id",
            format!("unknown pool {pin:?}"),
        ));
    }
    let serving: Vec<&Arc<Pool>> = state
        .pools
        .iter()
        .filter(|p| p.engine == req.engine && p.model_ref == req.model_ref)
        .collect();
    // A draining pool takes no new work.
    let candidates: Vec<&Arc<Pool>> = serving
        .iter()
        .copied()
        .filter(|p| !p.is_draining())
        .collect();
    if candidates.is_empty() && !serving.is_empty() {
        return Err(ApiError::new(
            ErrorCode::PoolUnavailable,
            format!("every pool serving model {:?} is draining", req.model_ref),
        )
        .engine(&req.engine)
        .pool(&serving[0].id)
        .retry_after_ms(5000));
    }
    if candidates.is_empty() {
        return Err(ApiError::new(
            ErrorCode::PoolUnavailable,
            format!(
                "no pool serves engine {:?} with model {:?}",
                req.engine, req.model_ref
            ),
        )
        .engine(&req.engine)
        .retry_after_ms(1000));
    }
    let max_ctx = candidates.iter().map(|p| p.ctx_max).max().unwrap_or(0);
    if req.ctx > max_ctx {
        return Err(ApiError::invalid(
            "ctx",
            format!("{} exceeds the model limit {max_ctx}", req.ctx),
        ));
    }
    Ok(candidates)
}

fn host_priority(p: WitPriority) -> Priority {
    match p {
        WitPriority::Interactive => Priority::Interactive,
        WitPriority::Batch => Priority::Batch,
    }
}

fn snapshot(
    pool: &Pool,
    queue: &ClassQueues,
    task_id: &str,
    tenant: &str,
    turns: u32,
    req: &TaskRequest,
    now: Instant,
) -> admission::Snapshot {
    let classes = [Priority::Interactive, Priority::Batch]
        .into_iter()
        .map(|p| ClassSnapshot {
            priority: wit_priority(p),
            depth: queue.depth_of(p),
            oldest: queue
                .oldest(p, SNAPSHOT_OLDEST)
                .map(|e| QueuedEntry {
                    task_id: e.task.id.clone(),
                    priority: wit_priority(p),
                    age_ms: now.duration_since(e.enqueued_at).as_millis() as u64,
                })
                .collect(),
        })
        .collect();
    admission::Snapshot {
        now_ms: now_ms(),
        request: admission::Request {
            task_id: task_id.to_owned(),
            session_id: req.session_id.clone(),
            tenant: tenant.to_owned(),
            priority: wit_priority(req.priority),
            engine: req.engine.clone(),
            model_ref: req.model_ref.clone(),
            ctx: req.ctx,
            max_tokens: req.max_tokens,
            expected_tokens: req.expected_tokens,
            deadline_ms: req.deadline_ms,
        },
        queue: QueueSnapshot {
            pool_id: pool.id.clone(),
            capacity: queue.capacity(),
            depth: queue.depth(),
            classes,
            slots_total: pool.slots_total(),
            slots_free: pool.slots_free(),
            service_ms: pool.service_ms(req.expected_tokens.unwrap_or(req.max_tokens)),
        },
        session: admission::SessionInfo {
            turns,
            budget: BudgetLeft {
                tokens: None,
                time_ms: None,
                cost: None,
            },
        },
    }
}

/// What the host does with a policy's decision, after validating it.
enum Admission {
    Accept(Priority),
    Evict { victim: String, class: Priority },
    Reject(ApiError),
}

/// The host validates every output: no accepting into a full queue, no evicting a task
/// that is not queued, only backpressure codes, bounded retry hints.
fn validate_decision(
    decision: admission::Decision,
    queue: &ClassQueues,
) -> Result<Admission, String> {
    use admission::Decision as D;
    match decision {
        D::Accept(class) if queue.is_full() => Err(format!(
            "accepted a {:?} task into a full queue ({}/{})",
            class,
            queue.depth(),
            queue.capacity()
        )),
        D::Accept(class) => Ok(Admission::Accept(host_priority(class))),
        D::AcceptEvicting(e) if !queue.contains(&e.evict) => {
            Err(format!("asked to evict {:?}, which is not queued", e.evict))
        }
        D::AcceptEvicting(e) => Ok(Admission::Evict {
            victim: e.evict,
            class: host_priority(e.class),
        }),
        D::Reject(r) => {
            let code = ErrorCode::parse(&r.code)
                .filter(|c| matches!(c, ErrorCode::AdmissionReject | ErrorCode::QueueFullDropLru))
                .ok_or_else(|| {
                    format!("rejected with code {:?}, not a backpressure code", r.code)
                })?;
            if r.retry_after_ms > MAX_RETRY_AFTER_MS {
                return Err(format!(
                    "retry-after-ms {} is out of range",
                    r.retry_after_ms
                ));
            }
            if r.policy_label.is_empty() || r.policy_label.len() > 64 || r.message.len() > 1024 {
                return Err("policy-label or message out of bounds".to_owned());
            }
            Ok(Admission::Reject(
                ApiError::new(code, r.message)
                    .retry_after_ms(r.retry_after_ms)
                    .policy_label(&r.policy_label),
            ))
        }
    }
}

/// Derives a seed from the task id when the client gave none (FNV-1a; logged).
fn derived_seed(task_id: &str) -> u64 {
    task_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Prompt tokens before the engine counts them: about one per 4 bytes.
pub fn estimate_tokens(prompt: &str) -> u32 {
    u32::try_from(prompt.len().div_ceil(4)).unwrap_or(u32::MAX)
}

/// Strict trust (`X-Trust-Policy: strict`): the model must be in the catalog, signed.
pub fn require_trusted(state: &AppState, model_ref: &str) -> Result<(), ApiError> {
    match state.catalog.lookup(model_ref) {
        Some((_, true)) => Ok(()),
        Some((_, false)) => Err(ApiError::new(
            ErrorCode::UntrustedArtifact,
            format!("model {model_ref:?} is not signed; strict trust refuses it"),
        )),
        None => Err(ApiError::new(
            ErrorCode::UntrustedArtifact,
            format!("model {model_ref:?} is not in the catalog; strict trust refuses it"),
        )),
    }
}

/// A 202 and what the budget headers say.
pub struct Admitted {
    pub accepted: TaskAccepted,
    pub headroom: Headroom,
}

fn unlimited() -> BudgetLeft {
    BudgetLeft {
        tokens: None,
        time_ms: None,
        cost: None,
    }
}

/// Admits a task or says why not. Order: schema → budget reservation → placement (which
/// pool's queue) → deadline feasibility → admission policy on that queue → enqueue. A
/// refusal after the reservation returns it: a rejected request leaves no state.
pub fn admit(
    state: &AppState,
    req: TaskRequest,
    principal: &Principal,
    correlation_id: &str,
) -> Result<Admitted, ApiError> {
    admit_with(state, req, String::new(), principal, correlation_id)
}

/// [`admit`] with engine parameters (a JSON object of sampler fields, or empty) handed to
/// the adapter with the task (the OpenAI front door's `temperature`, `top_p`, `stop`).
pub fn admit_with(
    state: &AppState,
    req: TaskRequest,
    engine_params: String,
    principal: &Principal,
    correlation_id: &str,
) -> Result<Admitted, ApiError> {
    // Label values stay bounded: an engine no adapter serves is "unknown".
    let engine = if state.adapters.serves_engine(&req.engine) {
        req.engine.clone()
    } else {
        "unknown".to_owned()
    };
    let session_id = req.session_id.clone();
    let result = match state.sessions.turn(&principal.name, &session_id) {
        Err(TurnCapReached(cap)) if valid_id(&session_id) => Err(ApiError::invalid(
            "session_id",
            format!("session {session_id:?} has used its {cap} turns; start a new session"),
        )),
        turn => {
            let result = admit_checked(state, req, engine_params, principal, correlation_id);
            if result.is_err() && turn.is_ok() {
                state.sessions.untake(&principal.name, &session_id);
            }
            result
        }
    };
    if let Err(err) = &result {
        metrics::task_rejected(&engine, err.envelope.code.as_str());
    }
    result
}

fn admit_checked(
    state: &AppState,
    req: TaskRequest,
    engine_params: String,
    principal: &Principal,
    correlation_id: &str,
) -> Result<Admitted, ApiError> {
    validate(&req)?;
    let task_id = req
        .task_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if state.tasks.contains(&task_id) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("task {task_id:?} already exists"),
        ));
    }
    if let Some((orchd_contracts::catalog::ModelState::Retired, _)) =
        state.catalog.lookup(&req.model_ref)
    {
        return Err(ApiError::new(
            ErrorCode::ModelDeprecated,
            format!("model {:?} is Retired in the catalog", req.model_ref),
        )
        .engine(&req.engine));
    }
    let candidates = candidates(state, &req)?;
    let prompt = req.prompt.clone().unwrap_or_default();
    let tokens_in_estimate = estimate_tokens(&prompt);
    let (reservation, headroom) = state.decisions.reserve(
        budget::ReserveRequest {
            now_ms: now_ms(),
            task_id: task_id.clone(),
            tenant: principal.fingerprint.clone(),
            session_id: req.session_id.clone(),
            priority: wit_priority(req.priority),
            engine: req.engine.clone(),
            model_ref: req.model_ref.clone(),
            prompt_tokens_estimate: tokens_in_estimate,
            max_tokens: req.max_tokens,
            deadline_ms: req.deadline_ms,
            key_left: unlimited(),
            session_left: unlimited(),
        },
        &principal.name,
        &Sessions::account(&principal.name, &req.session_id),
    )?;
    let facts = Facts {
        owner: principal,
        task_id: &task_id,
        correlation_id,
        tokens_in_estimate,
        prompt,
        engine_params,
    };
    match enqueue(state, &req, facts, &candidates, &reservation) {
        Ok(accepted) => Ok(Admitted { accepted, headroom }),
        Err(err) => {
            state.decisions.ledger.refund(&reservation);
            Err(err)
        }
    }
}

struct Facts<'a> {
    owner: &'a Principal,
    task_id: &'a str,
    correlation_id: &'a str,
    tokens_in_estimate: u32,
    prompt: String,
    engine_params: String,
}

fn enqueue(
    state: &AppState,
    req: &TaskRequest,
    facts: Facts<'_>,
    candidates: &[&Arc<Pool>],
    reservation: &Reservation,
) -> Result<TaskAccepted, ApiError> {
    let task_id = facts.task_id;
    let placement_req = req.placement.clone().unwrap_or_default();
    let job = JobFacts {
        task_id,
        session_id: &req.session_id,
        engine: &req.engine,
        model_ref: &req.model_ref,
        ctx: req.ctx,
        priority: req.priority,
        placement: &placement_req,
    };
    let pool = state.decisions.place_at_admission(&job, candidates)?;
    let tokens = req
        .expected_tokens
        .unwrap_or(req.max_tokens)
        .min(req.max_tokens);
    let seed = match req.seed {
        Some(s) => s as u64,
        None => derived_seed(task_id),
    };

    let now = Instant::now();
    let mut queue = pool.queue();
    // Deadline feasibility, from the measured (or nominal) rates of the pool.
    let ahead = queue.ahead_of(req.priority);
    let predicted_start_ms = pool.predicted_start_ms(ahead, tokens);
    let finish_ms = predicted_start_ms + pool.service_ms(tokens);
    if finish_ms > req.deadline_ms {
        return Err(ApiError::new(
            ErrorCode::DeadlineUnmet,
            format!(
                "deadline_ms {} is infeasible: expected to finish in {finish_ms} ms on pool {}",
                req.deadline_ms, pool.id
            ),
        )
        .pool(&pool.id)
        .engine(&req.engine));
    }

    let turns = state.sessions.turns(&facts.owner.name, &req.session_id);
    let snapshot = snapshot(
        pool,
        &queue,
        task_id,
        &facts.owner.fingerprint,
        turns,
        req,
        now,
    );
    let decision = state
        .decisions
        .policies
        .admission
        .get()
        .decide(&snapshot, |d| validate_decision(d, &queue))
        .map_err(|failure| policy_failed(&failure))?;
    let class = match decision {
        Admission::Accept(class) => class,
        Admission::Reject(err) => {
            metrics::admission_backpressure(
                &req.engine,
                err.envelope.policy_label.as_deref().unwrap_or("unlabelled"),
            );
            tracing::info!(
                task_id = %task_id, pool_id = %pool.id, code = %err.envelope.code,
                policy_label = err.envelope.policy_label.as_deref().unwrap_or(""),
                "admission rejected"
            );
            return Err(err.engine(&req.engine).pool(&pool.id));
        }
        Admission::Evict { victim, class } => {
            if let Some(evicted) = queue.remove(&victim) {
                let frame = ApiError::new(
                    ErrorCode::QueueFullDropLru,
                    format!(
                        "evicted from the full queue of pool {} by a newer task",
                        pool.id
                    ),
                )
                .engine(&pool.engine)
                .pool(&pool.id)
                .retry_after_ms(pool.service_ms(tokens));
                let mut envelope = *frame.envelope;
                envelope.correlation_id = Some(evicted.task.spec.correlation_id.clone());
                evicted.task.fail(envelope);
                evicted.task.count_cancel(&pool.engine_version(), "evicted");
                metrics::admission_backpressure(&req.engine, "drop-lru");
                state.decisions.settle(&evicted.task);
                tracing::info!(task_id = %victim, by = %task_id, pool_id = %pool.id, "task evicted (drop-lru)");
            }
            class
        }
    };

    let task = Arc::new(
        Task::new(
            task_id.to_owned(),
            TaskSpec {
                owner: facts.owner.name.clone(),
                session_id: req.session_id.clone(),
                priority: req.priority,
                ctx: req.ctx,
                placement: placement_req.clone(),
                tokens_in_estimate: facts.tokens_in_estimate,
                pool_id: pool.id.clone(),
                engine: req.engine.clone(),
                correlation_id: facts.correlation_id.to_owned(),
                job: JobSpec {
                    task_id: task_id.to_owned(),
                    model: req.model_ref.clone(),
                    prompt: facts.prompt,
                    max_tokens: req.max_tokens,
                    seed,
                    params_json: facts.engine_params,
                    inputs: match req.workload {
                        Workload::Embedding | Workload::Rerank => req.inputs.clone(),
                        Workload::Completion => None,
                    },
                },
                queue_position: queue.depth_of(class),
                predicted_start_ms,
                deadline: std::time::Duration::from_millis(req.deadline_ms),
            },
        )
        .with_log_capacity(state.settings.replay_frames)
        .record_to(Arc::clone(&state.recorder))
        .hold(reservation.clone()),
    );
    if !state.tasks.insert(Arc::clone(&task)) {
        task.take_reservation();
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("task {task_id:?} already exists"),
        ));
    }
    crate::dispatch::watch_deadline(&task, Arc::clone(pool), Arc::clone(&state.decisions));
    let queue_position = queue.push(class, task, now);
    pool.publish(&queue);
    drop(queue);
    metrics::task_enqueued(&metrics::TaskLabels {
        engine: &req.engine,
        engine_version: &pool.engine_version(),
        pool_id: &pool.id,
        replica_id: "",
        priority: req.priority.as_str(),
    });
    pool.wake.notify_one();
    let span = tracing::Span::current();
    span.record("task_id", task_id);
    span.record("session_id", req.session_id.as_str());
    span.record("pool_id", pool.id.as_str());
    span.record("engine", req.engine.as_str());
    span.record("engine_version", pool.engine_version().as_str());
    tracing::info!(
        task_id = %task_id, session_id = %req.session_id, pool_id = %pool.id,
        engine = %req.engine, priority = req.priority.as_str(), seed, queue_position,
        predicted_start_ms, "task admitted"
    );
    Ok(TaskAccepted {
        streams: TaskStreams {
            sse: format!("/v1/tasks/{task_id}/stream"),
        },
        task_id: task_id.to_owned(),
        queue_position,
        predicted_start_ms,
        backoff_ms: predicted_start_ms,
    })
}
