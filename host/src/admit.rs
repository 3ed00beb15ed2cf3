//! The admission path of `POST /v1/tasks`: validate → pick the pool → deadline
//! feasibility → admission policy on a view of the queue → apply the decision if the
//! view still holds → the direct path to a free slot. Nothing is enqueued unless every
//! check passed; a rejected request leaves no state.

use std::sync::Arc;
use std::time::Instant;

use orchd_contracts::{
    ErrorCode, PlacementMode, Priority, TaskAccepted, TaskRequest, TaskStreams, Workload,
};

use crate::adapters::{ChatJob, JobSpec};
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
use crate::queue::{Stale, View};
use crate::sessions::{Sessions, TurnRefused};
use crate::state::AppState;
use crate::store::Pending;
use crate::task::{Task, TaskSpec};
use crate::trace::{Incoming, TaskTrace};
use orchd_contracts::chat::{ChatMessage, Content, ResponseFormat, Role, ToolChoice};
use tracing::Instrument;

/// The adapter feature a chat task needs (ABI 0.1.3's `FEATURE_CHAT`).
pub const FEATURE_CHAT: &str = "chat";

/// Oldest entries per class shown to the admission policy.
const SNAPSHOT_OLDEST: usize = 8;

/// Checks a task request's fields (no state needed).
pub fn validate_request(req: &TaskRequest) -> Result<(), ApiError> {
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
    validate_chat(req)?;
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
    if let Some(p) = &req.placement {
        let ids = p
            .pin_pool_id
            .iter()
            .map(|id| ("placement.pin_pool_id", id))
            .chain(
                p.prefer_pools
                    .iter()
                    .map(|id| ("placement.prefer_pools", id)),
            )
            .chain(p.avoid_pools.iter().map(|id| ("placement.avoid_pools", id)));
        for (field, id) in ids {
            if !valid_id(id) {
                return Err(ApiError::invalid(
                    field,
                    "pool ids are 1-128 chars of [A-Za-z0-9._:-]",
                ));
            }
        }
    }
    Ok(())
}

/// Names a field that only a chat task may carry.
fn chat_only(req: &TaskRequest) -> Option<&'static str> {
    [
        ("messages", req.messages.is_some()),
        ("tools", req.tools.is_some()),
        ("tool_choice", req.tool_choice.is_some()),
        ("parallel_tool_calls", req.parallel_tool_calls.is_some()),
        ("response_format", req.response_format.is_some()),
        ("logprobs", req.logprobs.is_some()),
        ("top_logprobs", req.top_logprobs.is_some()),
    ]
    .into_iter()
    .find_map(|(field, set)| set.then_some(field))
}

/// A tool's or schema's name: what OpenAI accepts.
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The conversation and its options: roles and what each may carry, text parts only,
/// tools and the choice among them, the response format, logprobs.
fn validate_chat(req: &TaskRequest) -> Result<(), ApiError> {
    if req.workload != Workload::Chat {
        return match chat_only(req) {
            Some(field) => Err(ApiError::invalid(field, "only for workload chat")),
            None => Ok(()),
        };
    }
    if req.prompt.is_some() {
        return Err(ApiError::invalid(
            "prompt",
            "a chat task carries messages, not a prompt",
        ));
    }
    let messages = match &req.messages {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid(
                "messages",
                "required and non-empty for workload chat",
            ));
        }
    };
    for (i, m) in messages.iter().enumerate() {
        if let Some(Content::Parts(parts)) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                if p.kind != "text" || p.text.is_none() {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].content[{j}]"),
                        format!(
                            "content parts of type {:?} are not supported (text only)",
                            p.kind
                        ),
                    ));
                }
            }
        }
        if m.tool_calls.is_some() && m.role != Role::Assistant {
            return Err(ApiError::invalid(
                &format!("messages[{i}].tool_calls"),
                "only an assistant message carries tool calls",
            ));
        }
        for (j, call) in m.tool_calls.iter().flatten().enumerate() {
            if call.kind != "function" || !valid_function_name(&call.function.name) {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_calls[{j}]"),
                    "must be {\"type\": \"function\"} with a function name of 1-64 [A-Za-z0-9_-]",
                ));
            }
        }
        match (m.role, &m.tool_call_id) {
            (Role::Tool, None) => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_call_id"),
                    "required for a tool message",
                ));
            }
            (role, Some(_)) if role != Role::Tool => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_call_id"),
                    "only a tool message answers a tool call",
                ));
            }
            _ => {}
        }
        if m.content.is_none() && m.tool_calls.is_none() {
            return Err(ApiError::invalid(
                &format!("messages[{i}].content"),
                "required unless the message carries tool_calls",
            ));
        }
    }
    let tools = req.tools.as_deref().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                &format!("tools[{i}].type"),
                "only function tools are supported",
            ));
        }
        if !valid_function_name(&t.function.name) {
            return Err(ApiError::invalid(
                &format!("tools[{i}].function.name"),
                "1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if t.function
            .parameters
            .as_ref()
            .is_some_and(|p| !p.is_object())
        {
            return Err(ApiError::invalid(
                &format!("tools[{i}].function.parameters"),
                "must be a JSON Schema object",
            ));
        }
    }
    match &req.tool_choice {
        None => {}
        Some(ToolChoice::Mode(mode)) => {
            if !matches!(mode.as_str(), "none" | "auto" | "required") {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("{mode:?} is not none, auto, required or a named function"),
                ));
            }
            if mode != "none" && tools.is_empty() {
                return Err(ApiError::invalid("tool_choice", "needs tools"));
            }
        }
        Some(ToolChoice::Named(named))
            if named.kind != "function"
                || !tools.iter().any(|t| t.function.name == named.function.name) =>
        {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("names no function in tools: {:?}", named.function.name),
            ));
        }
        Some(ToolChoice::Named(_)) => {}
    }
    if let Some(ResponseFormat::JsonSchema { json_schema }) = &req.response_format {
        if !valid_function_name(&json_schema.name) {
            return Err(ApiError::invalid(
                "response_format.json_schema.name",
                "1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if json_schema.schema.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(ApiError::invalid(
                "response_format.json_schema.schema",
                "must be a JSON Schema object",
            ));
        }
    }
    if let Some(n) = req.top_logprobs {
        if n > 20 {
            return Err(ApiError::invalid("top_logprobs", "at most 20"));
        }
        if req.logprobs != Some(true) {
            return Err(ApiError::invalid("top_logprobs", "needs logprobs: true"));
        }
    }
    Ok(())
}

/// A text rendering of a conversation and its tools, for estimates (and a transcript's
/// prompt). Never sent to an engine: chat goes to the engine's own template.
pub fn chat_text(messages: &[ChatMessage], tools: &[orchd_contracts::chat::Tool]) -> String {
    let mut out = String::new();
    for m in messages {
        if let Some(Content::Text(t)) = &m.content {
            out.push_str(t);
        }
        if let Some(Content::Parts(parts)) = &m.content {
            for p in parts {
                out.push_str(p.text.as_deref().unwrap_or(""));
            }
        }
        for call in m.tool_calls.iter().flatten() {
            out.push_str(&call.function.name);
            out.push_str(&call.function.arguments);
        }
        out.push('\n');
    }
    for t in tools {
        out.push_str(&serde_json::to_string(&t.function).unwrap_or_default());
    }
    out
}

/// What the OpenAI door adds to a task beyond `TaskRequest`'s fields.
#[derive(Debug, Clone, Default)]
pub struct EngineExtras {
    /// Sampler fields as a JSON object, or empty (`temperature`, `top_p`; a completion's
    /// `stop`).
    pub params_json: String,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Vec<(u32, f32)>,
    /// A chat task's stop sequences.
    pub stop: Vec<String>,
}

/// The pools serving the request's engine and model (routing), after request validation:
/// an unknown engine, an unknown pin target or a context no candidate can hold is a 400.
fn candidates<'a>(
    state: &AppState,
    pools: &'a [Arc<Pool>],
    req: &TaskRequest,
) -> Result<Vec<&'a Arc<Pool>>, ApiError> {
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
        && !pools.iter().any(|pool| &pool.id == pin)
    {
        return Err(ApiError::invalid(
            "placement.pin_pool_id",
            format!("unknown pool {pin:?}"),
        ));
    }
    let serving: Vec<&Arc<Pool>> = pools
        .iter()
        .filter(|p| p.engine == req.engine && p.model_ref == req.model_ref)
        .collect();
    // A conversation goes only to an engine's own chat endpoint, never flattened.
    let serving = if req.workload == Workload::Chat {
        let (chat, without): (Vec<&Arc<Pool>>, Vec<&Arc<Pool>>) = serving
            .into_iter()
            .partition(|p| p.has_feature(FEATURE_CHAT));
        if chat.is_empty()
            && let Some(pool) = without.first()
        {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "pool {:?} serves model {:?} on adapter {:?}, which lacks the `chat` feature (its engine has no chat endpoint the adapter can use); send a completion with a prompt instead",
                    pool.id, req.model_ref, pool.adapter
                ),
            )
            .pool(&pool.id));
        }
        chat
    } else {
        serving
    };
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
        // Nothing serves it: not a transient state worth retrying.
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no pool serves engine {:?} with model {:?}; see GET /v1/models",
                crate::api::truncated(&req.engine),
                crate::api::truncated(&req.model_ref)
            ),
        )
        .engine(&req.engine));
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

/// Who is asking, as policies see it: the key's fingerprint and its tenant group.
struct Tenant<'a> {
    fingerprint: &'a str,
    group: Option<&'a str>,
}

fn snapshot(
    pool: &Pool,
    queue: &View,
    task_id: &str,
    tenant: Tenant<'_>,
    turns: u32,
    req: &TaskRequest,
    now: Instant,
) -> admission::Snapshot {
    let service_ms = pool.service_ms(req.expected_tokens.unwrap_or(req.max_tokens));
    let classes = [Priority::Interactive, Priority::Batch]
        .into_iter()
        .map(|p| ClassSnapshot {
            priority: wit_priority(p),
            depth: queue.depth_of(p),
            oldest: queue
                .oldest(p)
                .map(|(id, enqueued_at)| QueuedEntry {
                    task_id: id.clone(),
                    priority: wit_priority(p),
                    age_ms: now.saturating_duration_since(*enqueued_at).as_millis() as u64,
                })
                .collect(),
        })
        .collect();
    admission::Snapshot {
        now_ms: now_ms(),
        request: admission::Request {
            task_id: task_id.to_owned(),
            session_id: req.session_id.clone(),
            tenant: tenant.fingerprint.to_owned(),
            group: tenant.group.map(str::to_owned),
            priority: wit_priority(req.priority),
            engine: req.engine.clone(),
            model_ref: req.model_ref.clone(),
            ctx: req.ctx,
            max_tokens: req.max_tokens,
            expected_tokens: req.expected_tokens,
            deadline_ms: req.deadline_ms,
            expected_service_ms: service_ms,
        },
        queue: QueueSnapshot {
            pool_id: pool.id.clone(),
            capacity: queue.capacity,
            depth: queue.depth(),
            classes,
            slots_total: pool.slots_total(),
            slots_free: pool.slots_free(),
            service_ms,
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
fn validate_decision(decision: admission::Decision, queue: &View) -> Result<Admission, String> {
    use admission::Decision as D;
    match decision {
        D::Accept(class) if queue.is_full() => Err(format!(
            "accepted a {:?} task into a full queue ({}/{})",
            class,
            queue.depth(),
            queue.capacity
        )),
        D::Accept(class) => Ok(Admission::Accept(host_priority(class))),
        D::AcceptEvicting(e) if !queue.shows(&e.evict) => {
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
    /// The key's rate limits after this admission (`X-RateLimit-*`), if it has any.
    pub rate: Option<crate::budget::RateState>,
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
pub async fn admit(
    state: &AppState,
    req: TaskRequest,
    principal: &Principal,
    correlation_id: &str,
    incoming: Incoming,
) -> Result<Admitted, ApiError> {
    admit_with(
        state,
        req,
        EngineExtras::default(),
        principal,
        correlation_id,
        incoming,
    )
    .await
}

/// [`admit`] with what the OpenAI front door adds (sampler fields, penalties, logit bias,
/// stop sequences), handed to the adapter with the task.
pub async fn admit_with(
    state: &AppState,
    req: TaskRequest,
    engine_params: EngineExtras,
    principal: &Principal,
    correlation_id: &str,
    incoming: Incoming,
) -> Result<Admitted, ApiError> {
    // The task's trace begins here, a rejection included.
    let trace = TaskTrace::start(incoming, correlation_id, &req.model_ref);
    let root = trace.root();
    // The request's log span, which the admission's log lines name (admission's own span
    // is a trace span, entered around the decisions below).
    let request = tracing::Span::current();
    let admission = trace.admission();
    // Label values stay bounded: an engine no adapter serves is "unknown".
    let engine = if state.adapters.serves_engine(&req.engine) {
        req.engine.clone()
    } else {
        "unknown".to_owned()
    };
    let session_id = req.session_id.clone();
    // Validated before the session is touched: a malformed request stores nothing.
    let turn = match validate_request(&req) {
        Err(e) => Err(e),
        Ok(()) => Ok(state.sessions.turn(&principal.name, &session_id).await),
    };
    let result = match turn {
        Err(e) => Err(e),
        Ok(Err(TurnRefused::CapReached(cap))) => Err(ApiError::invalid(
            "session_id",
            format!("session {session_id:?} has used its {cap} turns; start a new session"),
        )),
        Ok(Err(TurnRefused::TableFull(max))) => Err(ApiError::new(
            ErrorCode::AdmissionReject,
            format!(
                "{max} sessions are live (sessions.max_sessions); retry when some expire, or reuse a session"
            ),
        )
        .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        .retry_after_ms(5_000)),
        Ok(Err(TurnRefused::StoreDown(e))) => Err(ApiError::store_down("sessions", e)),
        Ok(Ok(turns)) => {
            let result = admit_checked(
                state,
                req,
                engine_params,
                principal,
                correlation_id,
                turns,
                (trace, request),
            )
            .instrument(admission.clone())
            .await;
            match result {
                Ok((admitted, listed)) => {
                    // Other daemons find the task once its record is committed; the engine
                    // request is already under way meanwhile.
                    if let Err(e) = listed.wait().await {
                        tracing::warn!(task_id = %admitted.accepted.task_id, error = %e, "the task is not in the directory: other daemons cannot answer for it");
                    }
                    Ok(admitted)
                }
                Err(e) => {
                    admission.in_scope(|| state.sessions.untake(&principal.name, &session_id));
                    Err(e)
                }
            }
        }
    };
    match &result {
        Err(err) => {
            metrics::task_rejected(&engine, err.envelope.code.as_str());
            root.record("outcome", "rejected");
            root.record("error_code", err.envelope.code.as_str());
            root.record("otel.status_code", "ERROR");
        }
        Ok(admitted) => {
            root.record("task_id", admitted.accepted.task_id.as_str());
        }
    }
    result
}

async fn admit_checked(
    state: &AppState,
    req: TaskRequest,
    extras: EngineExtras,
    principal: &Principal,
    correlation_id: &str,
    turns: u32,
    (trace, request): (TaskTrace, tracing::Span),
) -> Result<(Admitted, Pending<()>), ApiError> {
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
    // The pools now: one snapshot for the whole admission.
    let pools = state.pools();
    let candidates = candidates(state, &pools, &req)?;
    let chat = (req.workload == Workload::Chat).then(|| {
        Arc::new(ChatJob {
            messages: req.messages.clone().unwrap_or_default(),
            tools: req.tools.clone().unwrap_or_default(),
            tool_choice: req.tool_choice.clone(),
            parallel_tool_calls: req.parallel_tool_calls,
            response_format: req.response_format.clone(),
            logprobs: req.logprobs.unwrap_or(false),
            top_logprobs: req.top_logprobs.unwrap_or(0),
            frequency_penalty: extras.frequency_penalty,
            presence_penalty: extras.presence_penalty,
            logit_bias: extras.logit_bias.clone(),
            stop: extras.stop.clone(),
        })
    });
    let prompt = match &chat {
        Some(c) => chat_text(&c.messages, &c.tools),
        None => req.prompt.clone().unwrap_or_default(),
    };
    // An embedding's input is its inputs: they are what the reservation must cover.
    let tokens_in_estimate = match (&req.workload, &req.inputs) {
        (Workload::Embedding | Workload::Rerank, Some(inputs)) => inputs
            .iter()
            .map(|i| estimate_tokens(i))
            .fold(0u32, u32::saturating_add),
        _ => estimate_tokens(&prompt),
    };
    // A reservation left unsettled (its daemon died) is settled at its reserved amount once
    // the task could no longer be running: its deadline, plus a margin.
    let lease_ms = req
        .deadline_ms
        .saturating_add(state.settings.lease_margin.as_millis() as u64);
    // What the task is expected to hold a slot for: on the slowest pool that may serve it
    // (placement has not chosen yet), never more than its deadline.
    let expected_service_ms = candidates
        .iter()
        .map(|p| p.service_ms(req.max_tokens))
        .max()
        .unwrap_or(req.deadline_ms)
        .min(req.deadline_ms);
    let (reservation, headroom, rate) = state
        .decisions
        .reserve(
            budget::ReserveRequest {
                now_ms: now_ms(),
                task_id: task_id.clone(),
                tenant: principal.fingerprint.clone(),
                group: state
                    .decisions
                    .ledger
                    .group_of(&principal.name)
                    .map(str::to_owned),
                session_id: req.session_id.clone(),
                priority: wit_priority(req.priority),
                engine: req.engine.clone(),
                model_ref: req.model_ref.clone(),
                prompt_tokens_estimate: tokens_in_estimate,
                max_tokens: req.max_tokens,
                deadline_ms: req.deadline_ms,
                expected_service_ms,
                key_left: unlimited(),
                session_left: unlimited(),
            },
            &principal.name,
            &Sessions::account(&principal.name, &req.session_id),
            &uuid::Uuid::new_v4().to_string(),
            lease_ms,
        )
        .await?;
    let prefix = match (&req.workload, &chat) {
        (Workload::Embedding | Workload::Rerank, _) => crate::prefix::Blocks::default(),
        (_, Some(c)) => crate::prefix::Blocks::of_chat(&c.messages, &c.tools),
        (_, None) => crate::prefix::Blocks::of_text(&prompt),
    };
    let facts = Facts {
        owner: principal,
        turns,
        task_id: &task_id,
        correlation_id,
        tokens_in_estimate,
        prompt,
        prefix,
        engine_params: extras.params_json,
        chat,
        trace: Some(trace),
        request,
    };
    match enqueue(state, &req, facts, &candidates, &reservation) {
        Ok((accepted, listed)) => Ok((
            Admitted {
                accepted,
                headroom,
                rate,
            },
            listed,
        )),
        Err(err) => {
            state.decisions.ledger.refund(&reservation);
            Err(err)
        }
    }
}

/// Decisions made on a stale view of the queue before admission gives up (each stale view
/// means another admission got in).
const DECIDE_ATTEMPTS: usize = 32;

/// Ends a task the admission policy evicted from the full queue of `pool` for `by`.
fn evict(state: &AppState, pool: &Pool, evicted: &Task, by: &str, tokens: u32) {
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
    envelope.correlation_id = Some(evicted.spec.correlation_id.clone());
    evicted.fail(envelope);
    evicted.count_cancel(&pool.engine_version(), "evicted");
    metrics::admission_backpressure(&evicted.spec.engine, "drop-lru");
    state.decisions.settle(evicted);
    tracing::info!(task_id = %evicted.id, by, pool_id = %pool.id, "task evicted (drop-lru)");
}

struct Facts<'a> {
    owner: &'a Principal,
    /// The session's turns, this one included.
    turns: u32,
    task_id: &'a str,
    correlation_id: &'a str,
    tokens_in_estimate: u32,
    prompt: String,
    /// The prompt's blocks, for prefix-aware placement.
    prefix: crate::prefix::Blocks,
    engine_params: String,
    chat: Option<Arc<ChatJob>>,
    /// Moves into the task once it is built.
    trace: Option<TaskTrace>,
    /// The request's log span.
    request: tracing::Span,
}

fn enqueue(
    state: &AppState,
    req: &TaskRequest,
    facts: Facts<'_>,
    candidates: &[&Arc<Pool>],
    reservation: &Reservation,
) -> Result<(TaskAccepted, Pending<()>), ApiError> {
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
        prefix: &facts.prefix,
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

    let turns = facts.turns;
    let mut task: Option<Arc<Task>> = None;
    let mut spec_parts = Some((facts.prompt, facts.engine_params, facts.chat, facts.trace));
    // Decide on a view of the queue, then apply the decision only if the view still holds
    // (no lock is held while the policy runs); a stale view is decided again.
    let (task, queue_position) = 'decide: {
        for _ in 0..DECIDE_ATTEMPTS {
            let now = Instant::now();
            let queue = pool.queue.view(SNAPSHOT_OLDEST);
            // Deadline feasibility, from the measured (or nominal) rates of the pool.
            let predicted_start_ms = pool.predicted_start_ms(queue.ahead_of(req.priority), tokens);
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
            let snapshot = snapshot(
                pool,
                &queue,
                task_id,
                Tenant {
                    fingerprint: &facts.owner.fingerprint,
                    group: state.decisions.ledger.group_of(&facts.owner.name),
                },
                turns,
                req,
                now,
            );
            let decision = state
                .decisions
                .policies
                .admission
                .decide(&snapshot, |d| validate_decision(d, &queue))
                .map_err(|failure| policy_failed(&failure))?;
            let (victim, class) = match decision {
                Admission::Accept(class) => (None, class),
                Admission::Evict { victim, class } => (Some(victim), class),
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
            };
            // The task is built once, for the first decision that accepts it; a later
            // attempt corrects what it says of its queue.
            let queue_position = queue.depth_of(class);
            let task = match &task {
                Some(t) => Arc::clone(t),
                None => {
                    let (prompt, params_json, chat, trace) =
                        spec_parts.take().expect("built only once");
                    let t = Arc::new(
                        Task::new(
                            task_id.to_owned(),
                            TaskSpec {
                                owner: facts.owner.name.clone(),
                                session_id: req.session_id.clone(),
                                priority: req.priority,
                                ctx: req.ctx,
                                placement: placement_req.clone(),
                                tokens_in_estimate: facts.tokens_in_estimate,
                                prefix: facts.prefix.clone(),
                                pool_id: pool.id.clone(),
                                engine: req.engine.clone(),
                                correlation_id: facts.correlation_id.to_owned(),
                                job: JobSpec {
                                    task_id: task_id.to_owned(),
                                    model: req.model_ref.clone(),
                                    prompt,
                                    max_tokens: req.max_tokens,
                                    seed,
                                    params_json,
                                    inputs: match req.workload {
                                        Workload::Embedding | Workload::Rerank => {
                                            req.inputs.clone()
                                        }
                                        Workload::Completion | Workload::Chat => None,
                                    },
                                    chat,
                                    trace: Default::default(),
                                },
                                queue_position,
                                predicted_start_ms,
                                deadline: std::time::Duration::from_millis(req.deadline_ms),
                            },
                        )
                        .with_log_capacity(state.settings.replay_frames)
                        .record_to(Arc::clone(&state.recorder))
                        .hold(reservation.clone())
                        .traced(trace.unwrap_or_else(TaskTrace::none)),
                    );
                    t.trace.queued(&pool.id, req.priority.as_str());
                    task = Some(Arc::clone(&t));
                    t
                }
            };
            match pool
                .queue
                .apply(&queue, victim.as_deref(), class, &task, now)
            {
                Ok(applied) => {
                    if let Some(evicted) = applied.evicted {
                        evict(state, pool, &evicted.task, task_id, tokens);
                    }
                    break 'decide (task, applied.position);
                }
                Err(Stale::Joined | Stale::VictimGone | Stale::Full) => continue,
            }
        }
        if let Some(t) = &task {
            t.take_reservation();
        }
        return Err(ApiError::new(
            ErrorCode::AdmissionReject,
            format!(
                "the queue of pool {} changed under {DECIDE_ATTEMPTS} admission decisions in a row; retry",
                pool.id
            ),
        )
        .with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        .retry_after_ms(100)
        .pool(&pool.id)
        .engine(&req.engine));
    };
    pool.publish();
    if !state.tasks.insert(Arc::clone(&task)) {
        // Another request took the id between the check above and now: this one never
        // runs (a dispatcher that already took it finds it ended).
        let frame = ApiError::new(
            ErrorCode::Conflict,
            format!("task {task_id:?} already exists"),
        );
        task.fail(*frame.envelope.clone());
        pool.queue.remove_task(&task);
        pool.publish();
        task.take_reservation();
        return Err(frame);
    }
    crate::dispatch::watch_deadline(&task, Arc::clone(pool), Arc::clone(&state.decisions));
    let predicted_start_ms = task.spec.predicted_start_ms;
    // Other daemons find it from here on: the record is queued now, ahead of the end's,
    // and the 202 waits for its commit.
    let listed = state.decisions.directory.admitted(&task);
    metrics::task_enqueued(&metrics::TaskLabels {
        engine: &req.engine,
        engine_version: &pool.engine_version(),
        pool_id: &pool.id,
        replica_id: "",
        priority: req.priority.as_str(),
    });
    // The direct path: with a free slot, the task goes to the adapter from here, without
    // waiting for the dispatcher to wake.
    crate::dispatch::pump(
        pool,
        &state.decisions,
        crate::dispatch::DispatchConfig::from(&state.settings),
    );
    let span = &facts.request;
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
    let (token, token_expires_ms) = state.stream_tokens.issue(task_id);
    Ok((
        TaskAccepted {
            streams: TaskStreams {
                sse: format!("/v1/tasks/{task_id}/stream"),
                token,
                token_expires_ms,
            },
            task_id: task_id.to_owned(),
            queue_position,
            predicted_start_ms,
            backoff_ms: predicted_start_ms,
        },
        listed,
    ))
}
