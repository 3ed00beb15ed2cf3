//! The admission path of `POST /v1/tasks`: validate → pick the pool → deadline
//! feasibility → admission policy → enqueue. Nothing is enqueued unless every check
//! passed; a rejected request leaves no state.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use orchd_contracts::{
    ErrorCode, PlacementMode, Priority, TaskAccepted, TaskRequest, TaskStreams, Workload,
};

use crate::adapters::JobSpec;
use crate::config::valid_id;
use crate::errors::ApiError;
use crate::policy::admission::{
    AdmissionRequest, BudgetLeft, ClassSnapshot, QueueSnapshot, QueuedEntry, SessionInfo,
    WitPriority,
};
use crate::policy::{FailureKind, PolicyFailure, admission};
use crate::pool::Pool;
use crate::queue::ClassQueues;
use crate::state::AppState;
use crate::task::{Task, TaskSpec};

/// Oldest entries per class shown to the admission policy.
const SNAPSHOT_OLDEST: usize = 8;
/// Longest `retry_after_ms` a policy may ask for.
const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

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

/// The pool a request goes to. Placement proper is a policy; until it is loaded this is
/// the documented fallback: pin / avoid filters, then feasibility, then least loaded.
fn choose_pool<'a>(state: &'a AppState, req: &TaskRequest) -> Result<&'a Arc<Pool>, ApiError> {
    if !state.adapters.serves_engine(&req.engine) {
        let known: Vec<_> = state.adapters.names().collect();
        return Err(ApiError::invalid(
            "engine",
            format!(
                "no loaded adapter serves engine {:?} (adapters: {known:?})",
                req.engine
            ),
        ));
    }
    let placement = req.placement.clone().unwrap_or_default();
    if let Some(pin) = &placement.pin_pool_id
        && placement.mode == PlacementMode::Pin
        && !state.pools.iter().any(|p| &p.id == pin)
    {
        return Err(ApiError::invalid(
            "placement.pin_pool_id",
            format!("unknown pool {pin:?}"),
        ));
    }
    let candidates: Vec<&Arc<Pool>> = state
        .pools
        .iter()
        .filter(|p| p.engine == req.engine && p.model_ref == req.model_ref)
        .filter(|p| {
            placement.mode != PlacementMode::Pin || placement.pin_pool_id.as_ref() == Some(&p.id)
        })
        .filter(|p| !placement.avoid_pools.contains(&p.id))
        .collect();
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
    let fits: Vec<&Arc<Pool>> = candidates
        .iter()
        .copied()
        .filter(|p| req.ctx <= p.ctx_max)
        .collect();
    if fits.is_empty() {
        let max = candidates.iter().map(|p| p.ctx_max).max().unwrap_or(0);
        return Err(ApiError::invalid(
            "ctx",
            format!("{} exceeds the model limit {max}", req.ctx),
        ));
    }
    let ready: Vec<&Arc<Pool>> = fits.iter().copied().filter(|p| p.is_ready()).collect();
    let Some(first) = ready.first() else {
        return Err(ApiError::new(
            ErrorCode::PoolUnready,
            format!("pool {} is not ready", fits[0].id),
        )
        .engine(&req.engine)
        .pool(&fits[0].id)
        .retry_after_ms(1000));
    };
    let load = |p: &Pool| i64::from(p.queue().depth()) - i64::from(p.slots_free());
    let preferred = |p: &Pool| placement.prefer_pools.contains(&p.id);
    Ok(ready
        .iter()
        .copied()
        .min_by_key(|p| (!preferred(p), load(p)))
        .unwrap_or(first))
}

fn wit_priority(p: Priority) -> WitPriority {
    match p {
        Priority::Interactive => WitPriority::Interactive,
        Priority::Batch => WitPriority::Batch,
    }
}

fn host_priority(p: WitPriority) -> Priority {
    match p {
        WitPriority::Interactive => Priority::Interactive,
        WitPriority::Batch => Priority::Batch,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn snapshot(
    pool: &Pool,
    queue: &ClassQueues,
    task_id: &str,
    req: &TaskRequest,
    now: Instant,
) -> admission::AdmissionSnapshot {
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
    admission::AdmissionSnapshot {
        now_ms: now_ms(),
        request: AdmissionRequest {
            task_id: task_id.to_owned(),
            session_id: req.session_id.clone(),
            tenant: "open".to_owned(),
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
        session: SessionInfo {
            turns: 0,
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

fn invalid(message: String) -> PolicyFailure {
    PolicyFailure {
        policy: "admission",
        kind: FailureKind::Invalid,
        message,
    }
}

/// The host validates every output: no accepting into a full queue, no evicting a task
/// that is not queued, only backpressure codes, bounded retry hints.
fn validate_decision(
    decision: admission::AdmissionDecision,
    queue: &ClassQueues,
) -> Result<Admission, PolicyFailure> {
    use admission::AdmissionDecision as D;
    match decision {
        D::Accept(class) if queue.is_full() => Err(invalid(format!(
            "accepted a {:?} task into a full queue ({}/{})",
            class,
            queue.depth(),
            queue.capacity()
        ))),
        D::Accept(class) => Ok(Admission::Accept(host_priority(class))),
        D::AcceptEvicting(e) if !queue.contains(&e.evict) => Err(invalid(format!(
            "asked to evict {:?}, which is not queued",
            e.evict
        ))),
        D::AcceptEvicting(e) => Ok(Admission::Evict {
            victim: e.evict,
            class: host_priority(e.class),
        }),
        D::Reject(r) => {
            let code = ErrorCode::parse(&r.code)
                .filter(|c| matches!(c, ErrorCode::AdmissionReject | ErrorCode::QueueFullDropLru))
                .ok_or_else(|| {
                    invalid(format!(
                        "rejected with code {:?}, not a backpressure code",
                        r.code
                    ))
                })?;
            if r.retry_after_ms > MAX_RETRY_AFTER_MS {
                return Err(invalid(format!(
                    "retry-after-ms {} is out of range",
                    r.retry_after_ms
                )));
            }
            if r.policy_label.is_empty() || r.policy_label.len() > 64 || r.message.len() > 1024 {
                return Err(invalid("policy-label or message out of bounds".to_owned()));
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

/// Admits a task or says why not.
pub fn admit(
    state: &AppState,
    req: TaskRequest,
    correlation_id: &str,
) -> Result<TaskAccepted, ApiError> {
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
    let pool = choose_pool(state, &req)?;
    let tokens = req
        .expected_tokens
        .unwrap_or(req.max_tokens)
        .min(req.max_tokens);
    let seed = match req.seed {
        Some(s) => s as u64,
        None => derived_seed(&task_id),
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

    let snapshot = snapshot(pool, &queue, &task_id, &req, now);
    let policy = state.admission.load();
    let decision = policy
        .decide(&snapshot)
        .and_then(|d| validate_decision(d, &queue))
        .map_err(|failure| {
            let meta = policy.meta();
            tracing::error!(
                policy = meta.kind, name = %meta.name, version = %meta.version,
                sha256 = %meta.sha256, kind = failure.kind.as_str(), error = %failure.message,
                task_id = %task_id, pool_id = %pool.id,
                "policy call failed; request refused (fail closed)"
            );
            ApiError::policy_unavailable(&failure)
        })?;
    let class = match decision {
        Admission::Accept(class) => class,
        Admission::Reject(err) => {
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
                tracing::info!(task_id = %victim, by = %task_id, pool_id = %pool.id, "task evicted (drop-lru)");
            }
            class
        }
    };

    let task = Arc::new(Task::new(
        task_id.clone(),
        TaskSpec {
            session_id: req.session_id.clone(),
            priority: req.priority,
            pool_id: pool.id.clone(),
            engine: req.engine.clone(),
            correlation_id: correlation_id.to_owned(),
            job: JobSpec {
                task_id: task_id.clone(),
                model: req.model_ref.clone(),
                prompt: req.prompt.clone().unwrap_or_default(),
                max_tokens: req.max_tokens,
                seed,
                params_json: String::new(),
            },
            queue_position: queue.depth_of(class),
            predicted_start_ms,
        },
    ));
    if !state.tasks.insert(Arc::clone(&task)) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("task {task_id:?} already exists"),
        ));
    }
    let queue_position = queue.push(class, task, now);
    drop(queue);
    pool.wake.notify_one();
    tracing::info!(
        task_id = %task_id, session_id = %req.session_id, pool_id = %pool.id,
        engine = %req.engine, priority = req.priority.as_str(), seed, queue_position,
        predicted_start_ms, "task admitted"
    );
    Ok(TaskAccepted {
        streams: TaskStreams {
            sse: format!("/v1/tasks/{task_id}/stream"),
        },
        task_id,
        queue_position,
        predicted_start_ms,
        backoff_ms: predicted_start_ms,
    })
}
