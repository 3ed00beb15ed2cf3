//! The OpenAI-compatible front door: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`. Each request becomes a task admitted exactly like `POST /v1/tasks`
//! (same auth, budget, admission and placement policies, queue, error mapping, transcript
//! and metrics) and is read from the task's frame log like an SSE client would: a client
//! that goes away cancels its task, streaming or not.
//!
//! Errors are rendered in OpenAI's shape by the correlation middleware (see
//! [`openai_error`]), with API.md's statuses.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use std::collections::BTreeMap;

use orchd_contracts::chat::{ResponseFormat, TokenLogprob, Tool, ToolCallFrame, ToolChoice};
use orchd_contracts::openai::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest, Model, ModelList,
    OpenAiError, OpenAiErrorBody, Prompt, PromptTokensDetails, Stop, Usage,
};
use orchd_contracts::{EndFrame, ErrorCode, ErrorEnvelope, Priority, TaskRequest, Workload};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::extract::ApiJson;
use super::middleware::CorrelationId;
use super::tasks::{Item, read_task};
use crate::admit;
use crate::auth::Principal;
use crate::config::valid_id;
use crate::errors::ApiError;
use crate::state::AppState;

/// Paths whose errors are rendered in OpenAI's shape.
pub fn is_openai_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/models"
    )
}

/// An envelope in OpenAI's error shape: `type` from the status (what the official clients
/// key their exception classes on), `code` = the API code, `param` = the field named by an
/// INVALID_PARAMS message.
pub fn openai_error(envelope: &ErrorEnvelope, status: u16) -> OpenAiError {
    let kind = match status {
        400 | 413 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    let param = (envelope.code == ErrorCode::InvalidParams)
        .then(|| envelope.message.split_once(": "))
        .flatten()
        .map(|(field, _)| field)
        .filter(|f| {
            !f.is_empty()
                && f.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']'))
        })
        .map(str::to_owned);
    if envelope.code == ErrorCode::NotFound && envelope.message.starts_with(MODEL_NOT_FOUND) {
        // OpenAI's own answer for an unknown model.
        return OpenAiError {
            error: OpenAiErrorBody {
                message: envelope.message.clone(),
                kind: "invalid_request_error".to_owned(),
                code: Some("model_not_found".to_owned()),
                param: Some("model".to_owned()),
            },
        };
    }
    OpenAiError {
        error: OpenAiErrorBody {
            message: envelope.message.clone(),
            kind: kind.to_owned(),
            code: Some(envelope.code.as_str().to_owned()),
            param,
        },
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/models`: what the ready pools serve now, one entry per model.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let mut data: Vec<Model> = Vec::new();
    for pool in state.pools().iter().filter(|p| p.is_ready()) {
        if data.iter().any(|m| m.id == pool.model_ref) {
            continue;
        }
        data.push(Model {
            id: pool.model_ref.clone(),
            object: "model".to_owned(),
            created: 0,
            owned_by: format!("orchestratord:{}", pool.engine),
        });
    }
    Json(ModelList {
        object: "list".to_owned(),
        data,
    })
}

/// A chat request's conversation and options (the OpenAI door's additions to a task).
struct ChatParts {
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Tool>>,
    tool_choice: Option<ToolChoice>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<ResponseFormat>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    logit_bias: Option<BTreeMap<String, f64>>,
}

/// What both endpoints have in common once parsed.
struct Job {
    model: String,
    /// A completion's prompt (empty for chat).
    prompt: String,
    chat: Option<ChatParts>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<u32>,
    stream: bool,
    include_usage: bool,
    user: Option<String>,
}

/// Tokens asked for when the request names none.
const DEFAULT_MAX_TOKENS: u32 = 256;
/// The deadline of a front-door task unless `X-Deadline-Ms` says otherwise.
const DEFAULT_DEADLINE_MS: u64 = 600_000;

fn penalty(field: &str, value: Option<f64>) -> Result<Option<f32>, ApiError> {
    match value {
        Some(v) if !(-2.0..=2.0).contains(&v) => {
            Err(ApiError::invalid(field, "must be between -2 and 2"))
        }
        v => Ok(v.map(|v| v as f32)),
    }
}

/// `logit_bias`: token ids (as strings) to biases in [-100, 100].
fn logit_bias(map: &Option<BTreeMap<String, f64>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    if map.len() > 300 {
        return Err(ApiError::invalid("logit_bias", "at most 300 tokens"));
    }
    map.iter()
        .map(|(token, bias)| {
            let id = token.parse::<u32>().map_err(|_| {
                ApiError::invalid(
                    &format!("logit_bias.{token}"),
                    "keys are token ids (integers)",
                )
            })?;
            if !(-100.0..=100.0).contains(bias) {
                return Err(ApiError::invalid(
                    &format!("logit_bias.{token}"),
                    "must be between -100 and 100",
                ));
            }
            Ok((id, *bias as f32))
        })
        .collect()
}

fn validate(job: &Job) -> Result<(), ApiError> {
    if let Some(n) = job.n
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            "only n = 1 is supported; send n requests for n choices",
        ));
    }
    if job.max_tokens == Some(0) {
        return Err(ApiError::invalid("max_tokens", "must be at least 1"));
    }
    if let Some(t) = job.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid("temperature", "must be between 0 and 2"));
    }
    if let Some(p) = job.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid("top_p", "must be in (0, 1]"));
    }
    if let Some(Stop::Many(v)) = &job.stop
        && v.len() > 4
    {
        return Err(ApiError::invalid("stop", "at most 4 sequences"));
    }
    Ok(())
}

/// A session id from `X-Session-Id`, else `user`, else one per request. Values that are
/// not ids are hashed into one.
fn session_of(headers: &HeaderMap, user: Option<&str>) -> String {
    let raw = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| user.map(|u| format!("user:{u}")));
    match raw {
        Some(s) if valid_id(&s) => s,
        Some(s) => {
            use sha2::Digest;
            format!(
                "oai:{}",
                hex::encode(&sha2::Sha256::digest(s.as_bytes())[..12])
            )
        }
        None => format!("oai:{}", uuid::Uuid::new_v4()),
    }
}

fn priority_of(headers: &HeaderMap) -> Result<Priority, ApiError> {
    match headers.get("x-priority").map(|v| v.to_str().unwrap_or("")) {
        None | Some("interactive") => Ok(Priority::Interactive),
        Some("batch") => Ok(Priority::Batch),
        Some(other) => Err(ApiError::invalid(
            "X-Priority",
            format!("{other:?} is not interactive or batch"),
        )),
    }
}

fn deadline_of(headers: &HeaderMap) -> Result<u64, ApiError> {
    match headers.get("x-deadline-ms") {
        None => Ok(DEFAULT_DEADLINE_MS),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| ApiError::invalid("X-Deadline-Ms", "must be a positive integer")),
    }
}

/// Sampler fields for the engine, as a JSON object (empty when none were given). A
/// completion's `stop` rides here; a chat's has its own place in the ABI.
fn engine_params(job: &Job) -> String {
    let mut params = Map::new();
    if let Some(t) = job.temperature {
        params.insert("temperature".into(), json!(t));
    }
    if let Some(p) = job.top_p {
        params.insert("top_p".into(), json!(p));
    }
    if job.chat.is_none()
        && let Some(stop) = job.stop.clone()
    {
        params.insert("stop".into(), json!(stop.into_vec()));
    }
    if params.is_empty() {
        String::new()
    } else {
        Value::Object(params).to_string()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl",
            Self::Completion => "cmpl",
        }
    }
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let job = chat_job(req)?;
    run(state, &correlation.0, &principal, &headers, job, Kind::Chat).await
}

/// A chat request as the door's job (checks what needs no state).
fn chat_job(req: ChatCompletionRequest) -> Result<Job, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must not be empty"));
    }
    Ok(Job {
        prompt: String::new(),
        chat: Some(ChatParts {
            messages: req.messages,
            tools: req.tools,
            tool_choice: req.tool_choice,
            parallel_tool_calls: req.parallel_tool_calls,
            response_format: req.response_format,
            logprobs: req.logprobs,
            top_logprobs: req.top_logprobs,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            logit_bias: req.logit_bias,
        }),
        model: req.model,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop,
        n: req.n,
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        user: req.user,
    })
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let job = completion_job(req)?;
    run(
        state,
        &correlation.0,
        &principal,
        &headers,
        job,
        Kind::Completion,
    )
    .await
}

/// A completion request as the door's job (checks what needs no state).
fn completion_job(req: CompletionRequest) -> Result<Job, ApiError> {
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    let prompt = match req.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "exactly one prompt is supported",
            ));
        }
    };
    Ok(Job {
        prompt,
        chat: None,
        model: req.model,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop,
        n: req.n,
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        user: req.user,
    })
}

/// The start of the message of an unknown model's 404 (OpenAI's `model_not_found`).
const MODEL_NOT_FOUND: &str = "The model `";

/// The pool serving `model`: a ready one if there is one, else any (whose readiness the
/// admission path then reports). No pool at all is OpenAI's 404 `model_not_found`, which
/// the official clients do not retry.
fn pool_for_model(state: &AppState, model: &str) -> Result<Arc<crate::pool::Pool>, ApiError> {
    let pools = state.pools();
    pools
        .iter()
        .find(|p| p.model_ref == model && p.is_ready())
        .or_else(|| pools.iter().find(|p| p.model_ref == model))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("{MODEL_NOT_FOUND}{model}` does not exist; see GET /v1/models"),
            )
        })
}

/// A `token` frame as the door reads it: borrowed text, typed logprobs.
#[derive(serde::Deserialize)]
struct TokenIn<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    #[serde(default)]
    logprobs: Option<Vec<TokenLogprob>>,
}

/// Reads a task's log to its terminal frame, handing every other frame to `on_frame`:
/// the `end` frame, or the task's `error` envelope as the error.
async fn wait_end(
    items: impl Stream<Item = Item>,
    mut on_frame: impl FnMut(&crate::task::Frame),
) -> Result<EndFrame, ApiError> {
    tokio::pin!(items);
    while let Some(item) = items.next().await {
        let frame = match item {
            Item::Frame(f) => f,
            Item::Gone(envelope) => return Err(ApiError::from_envelope(envelope)),
        };
        match frame.event {
            "error" => {
                let envelope: ErrorEnvelope = serde_json::from_str(&frame.data)
                    .map_err(|e| ApiError::internal(format!("bad error frame: {e}")))?;
                return Err(ApiError::from_envelope(envelope));
            }
            "end" => {
                return serde_json::from_str(&frame.data)
                    .map_err(|e| ApiError::internal(format!("bad end frame: {e}")));
            }
            _ => on_frame(&frame),
        }
    }
    Err(ApiError::internal(
        "the task's stream ended without a terminal frame",
    ))
}

/// Inputs per embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 256;

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    state.accepting_tasks()?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("{other:?} is not float or base64"),
            ));
        }
    };
    if req.dimensions.is_some() {
        return Err(ApiError::invalid("dimensions", "is not supported"));
    }
    let inputs = match req.input {
        Prompt::One(s) => vec![s],
        Prompt::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("1 to {MAX_EMBEDDING_INPUTS} inputs"),
        ));
    }
    let pool = pool_for_model(&state, &req.model)?;
    let prompt_tokens: u32 = inputs.iter().map(|i| admit::estimate_tokens(i)).sum();
    let task_req = task_request(
        session_of(&headers, req.user.as_deref()),
        Workload::Embedding,
        req.model.clone(),
        pool.engine.clone(),
        inputs
            .iter()
            .map(|i| admit::estimate_tokens(i))
            .max()
            .unwrap_or(0),
        priority_of(&headers)?,
        1,
        deadline_of(&headers)?,
    );
    let task_req = TaskRequest {
        inputs: Some(inputs),
        expected_tokens: Some(1),
        ..task_req
    };
    let admitted = admit::admit(
        &state,
        task_req,
        &principal,
        &correlation.0,
        crate::trace::Incoming::from_headers(&headers),
    )
    .await?;
    let task = state
        .tasks
        .get(&admitted.accepted.task_id)
        .ok_or_else(|| ApiError::internal("an admitted task is not registered"))?;
    let end = wait_end(
        read_task(&state, task, 0, std::time::Duration::ZERO),
        |_| {},
    )
    .await?;
    let vectors = end.embeddings.clone().unwrap_or_default();
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = if end.tokens_in > 0 {
        end.tokens_in
    } else {
        prompt_tokens
    };
    let mut response = Json(json!({"object": "list", "data": data, "model": req.model,
    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&admitted.accepted.task_id) {
        response.headers_mut().insert("x-orchd-task-id", v);
    }
    Ok(response)
}

/// A task request with the door's defaults; the caller fills in the workload's fields.
#[allow(clippy::too_many_arguments)]
fn task_request(
    session_id: String,
    workload: Workload,
    model_ref: String,
    engine: String,
    ctx: u32,
    priority: Priority,
    max_tokens: u32,
    deadline_ms: u64,
) -> TaskRequest {
    TaskRequest {
        task_id: None,
        session_id,
        workload,
        model_ref,
        engine,
        ctx,
        priority,
        seed: None,
        determinism: None,
        sampler_profile_version: None,
        prompt: None,
        inputs: None,
        max_tokens,
        deadline_ms,
        expected_tokens: None,
        kv_hint: None,
        placement: None,
        messages: None,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        response_format: None,
        logprobs: None,
        top_logprobs: None,
    }
}

/// The native task request for a door job (and the engine parameters the native API has
/// no field for): everything the door does to a request that needs no state.
fn door_task(
    job: &mut Job,
    engine: String,
    session_id: String,
    priority: Priority,
    deadline_ms: u64,
) -> Result<(TaskRequest, admit::EngineExtras), ApiError> {
    let max_tokens = job.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let mut extras = admit::EngineExtras {
        params_json: engine_params(job),
        ..Default::default()
    };
    let base = task_request(
        session_id,
        Workload::Completion,
        job.model.clone(),
        engine,
        0,
        priority,
        max_tokens,
        deadline_ms,
    );
    let task_req = match job.chat.take() {
        Some(c) => {
            extras.frequency_penalty = penalty("frequency_penalty", c.frequency_penalty)?;
            extras.presence_penalty = penalty("presence_penalty", c.presence_penalty)?;
            extras.logit_bias = logit_bias(&c.logit_bias)?;
            extras.stop = job.stop.take().map(Stop::into_vec).unwrap_or_default();
            let text = admit::chat_text(&c.messages, c.tools.as_deref().unwrap_or_default());
            TaskRequest {
                workload: Workload::Chat,
                ctx: admit::estimate_tokens(&text).saturating_add(max_tokens),
                seed: job.seed,
                messages: Some(c.messages),
                tools: c.tools,
                tool_choice: c.tool_choice,
                parallel_tool_calls: c.parallel_tool_calls,
                response_format: c.response_format,
                logprobs: c.logprobs,
                top_logprobs: c.top_logprobs,
                ..base
            }
        }
        None => TaskRequest {
            ctx: admit::estimate_tokens(&job.prompt).saturating_add(max_tokens),
            seed: job.seed,
            prompt: Some(std::mem::take(&mut job.prompt)),
            ..base
        },
    };
    Ok((task_req, extras))
}

async fn run(
    state: Arc<AppState>,
    correlation_id: &str,
    principal: &Principal,
    headers: &HeaderMap,
    mut job: Job,
    kind: Kind,
) -> Result<Response, ApiError> {
    state.accepting_tasks()?;
    validate(&job)?;
    let pool = pool_for_model(&state, &job.model)?;
    let max_tokens = job.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let logprobs = job.chat.as_ref().is_some_and(|c| c.logprobs == Some(true));
    let session_id = session_of(headers, job.user.as_deref());
    let (task_req, extras) = door_task(
        &mut job,
        pool.engine.clone(),
        session_id,
        priority_of(headers)?,
        deadline_of(headers)?,
    )?;
    let admitted = admit::admit_with(
        &state,
        task_req,
        extras,
        principal,
        correlation_id,
        crate::trace::Incoming::from_headers(headers),
    )
    .await?;
    let rate = admitted.rate;
    let task_id = admitted.accepted.task_id;
    let task = state
        .tasks
        .get(&task_id)
        .ok_or_else(|| ApiError::internal("an admitted task is not registered"))?;
    let items = read_task(&state, Arc::clone(&task), 0, std::time::Duration::ZERO);
    let reply = Reply {
        task,
        id: format!("{}-{task_id}", kind.id_prefix()),
        created: now_s(),
        model: job.model,
        kind,
        max_tokens,
        logprobs,
    };
    let mut response = if job.stream {
        let keep_alive = KeepAlive::new()
            .interval(state.settings.keep_alive)
            .text("keep-alive");
        Sse::new(reply.chunks(items, job.include_usage))
            .keep_alive(keep_alive)
            .into_response()
    } else {
        reply.whole(items).await?
    };
    if let Ok(v) = HeaderValue::from_str(&task_id) {
        response.headers_mut().insert("x-orchd-task-id", v);
    }
    if let Some(rate) = &rate {
        crate::errors::rate_headers(response.headers_mut(), rate);
    }
    Ok(response)
}

/// An error told mid-stream, as OpenAI's clients read it.
fn error_chunk(envelope: &ErrorEnvelope, status: u16) -> String {
    serde_json::to_string(&openai_error(envelope, status)).expect("an error serializes")
}

/// A streamed chunk: `choices` holds one choice, or none for the usage chunk.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Choice<'a> {
    Chat {
        index: u32,
        delta: Delta<'a>,
        logprobs: Option<ChunkLogprobs<'a>>,
        finish_reason: Option<&'a str>,
    },
    Completion {
        index: u32,
        text: &'a str,
        finish_reason: Option<&'a str>,
        logprobs: Option<()>,
    },
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ChunkLogprobs<'a> {
    content: &'a [TokenLogprob],
    refusal: Option<()>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// How one task's frames are told in OpenAI's words.
struct Reply {
    /// The task: a failure answers with the HTTP status its error was mapped to.
    task: Arc<crate::task::Task>,
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    max_tokens: u32,
    /// The client asked for logprobs (chat).
    logprobs: bool,
}

/// The finish reasons OpenAI's clients know.
const FINISH_REASONS: [&str; 5] = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
];

impl Reply {
    /// The engine's finish reason where it gave one OpenAI's clients know; else
    /// `tool_calls` if the answer called tools, `length` if it used every token, `stop`.
    fn finish_reason(&self, end: &EndFrame, called_tools: bool) -> String {
        match end.finish_reason.as_deref() {
            Some(r) if FINISH_REASONS.contains(&r) => r.to_owned(),
            _ if called_tools => "tool_calls".to_owned(),
            _ if end.tokens_out >= self.max_tokens => "length".to_owned(),
            _ => "stop".to_owned(),
        }
    }

    fn usage(&self, end: &EndFrame) -> Usage {
        let mut usage = Usage::new(end.tokens_in, end.tokens_out);
        usage.prompt_tokens_details = end
            .cached_tokens
            .map(|cached_tokens| PromptTokensDetails { cached_tokens });
        usage
    }

    /// One chunk, serialized once, straight from borrowed parts (no `Value` tree).
    fn chunk(&self, choice: Choice<'_>) -> String {
        self.chunk_with(Some(choice), None)
    }

    fn chunk_with(&self, choice: Option<Choice<'_>>, usage: Option<&Usage>) -> String {
        let chunk = Chunk {
            id: &self.id,
            object: match self.kind {
                Kind::Chat => "chat.completion.chunk",
                Kind::Completion => "text_completion",
            },
            created: self.created,
            model: &self.model,
            choices: choice.as_slice(),
            usage,
        };
        serde_json::to_string(&chunk).expect("a chunk serializes")
    }

    fn token_choice<'a>(&self, token: &'a TokenIn<'a>, first: bool) -> Choice<'a> {
        match self.kind {
            Kind::Chat => Choice::Chat {
                index: 0,
                delta: Delta {
                    role: first.then_some("assistant"),
                    content: Some(&token.t),
                    tool_calls: None,
                },
                logprobs: token
                    .logprobs
                    .as_deref()
                    .filter(|_| self.logprobs)
                    .map(|content| ChunkLogprobs {
                        content,
                        refusal: None,
                    }),
                finish_reason: None,
            },
            Kind::Completion => Choice::Completion {
                index: 0,
                text: &token.t,
                finish_reason: None,
                logprobs: None,
            },
        }
    }

    /// A tool-call fragment in OpenAI's chunk shape: the first fragment of a call carries
    /// `id`, `type` and the function's `name`.
    fn tool_call_choice<'a>(&self, f: &'a ToolCallFrame, first: bool) -> Choice<'a> {
        Choice::Chat {
            index: 0,
            delta: Delta {
                role: first.then_some("assistant"),
                content: None,
                tool_calls: Some([ToolCallDelta {
                    index: f.index,
                    id: f.id.as_deref(),
                    kind: f.id.as_ref().map(|_| "function"),
                    function: FunctionDelta {
                        name: f.name.as_deref(),
                        arguments: &f.arguments,
                    },
                }]),
            },
            logprobs: None,
            finish_reason: None,
        }
    }

    fn final_choice<'a>(&self, reason: &'a str) -> Choice<'a> {
        match self.kind {
            Kind::Chat => Choice::Chat {
                index: 0,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some(reason),
            },
            Kind::Completion => Choice::Completion {
                index: 0,
                text: "",
                finish_reason: Some(reason),
                logprobs: None,
            },
        }
    }

    /// The streaming answer: one chunk per token or tool-call fragment, a final chunk with
    /// the finish reason, the usage chunk if asked for, then `[DONE]`. An error after the
    /// first byte is an `{"error": …}` event (what OpenAI's clients raise), and the stream
    /// ends.
    fn chunks(
        self,
        items: impl Stream<Item = Item> + Send + 'static,
        include_usage: bool,
    ) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        let data = |chunk: String| Ok(Event::default().data(chunk));
        let mut first = true;
        let mut called_tools = false;
        items.flat_map(move |item| {
            let events: Vec<Result<Event, std::convert::Infallible>> = match item {
                Item::Frame(f) if f.event == "token" => {
                    match serde_json::from_str::<TokenIn<'_>>(&f.data) {
                        Ok(token) => {
                            let e = data(self.chunk(self.token_choice(&token, first)));
                            first = false;
                            vec![e]
                        }
                        Err(_) => Vec::new(),
                    }
                }
                Item::Frame(f) if f.event == "tool_call" => {
                    match serde_json::from_str::<ToolCallFrame>(&f.data) {
                        Ok(fragment) => {
                            called_tools = true;
                            let e = data(self.chunk(self.tool_call_choice(&fragment, first)));
                            first = false;
                            vec![e]
                        }
                        Err(_) => Vec::new(),
                    }
                }
                Item::Frame(f) if f.event == "end" => {
                    match serde_json::from_str::<EndFrame>(&f.data) {
                        Ok(end) if !end.canceled => {
                            let reason = self.finish_reason(&end, called_tools);
                            let mut out = vec![data(self.chunk(self.final_choice(&reason)))];
                            if include_usage {
                                out.push(data(self.chunk_with(None, Some(&self.usage(&end)))));
                            }
                            out.push(Ok(Event::default().data("[DONE]")));
                            out
                        }
                        // Canceled: the client is gone or canceled it; nothing to add.
                        _ => Vec::new(),
                    }
                }
                Item::Frame(f) if f.event == "error" => {
                    let envelope: ErrorEnvelope =
                        serde_json::from_str(&f.data).unwrap_or_else(|_| ErrorEnvelope {
                            code: ErrorCode::Internal,
                            message: "the task failed".into(),
                            engine: None,
                            pool_id: None,
                            retriable: None,
                            retry_after_ms: None,
                            policy_label: None,
                            correlation_id: None,
                            artifact_id: None,
                        });
                    let status = self
                        .task
                        .error_status()
                        .unwrap_or_else(|| crate::errors::status_of(envelope.code).as_u16());
                    vec![data(error_chunk(&envelope, status))]
                }
                Item::Frame(_) => Vec::new(), // started, metrics
                Item::Gone(envelope) => vec![data(error_chunk(&envelope, 404))],
            };
            futures_util::stream::iter(events)
        })
    }

    /// The whole answer, once the task ends: the text, the tool calls assembled from their
    /// fragments, the logprobs. An engine failure is the error response the task's `error`
    /// frame describes.
    async fn whole(self, items: impl Stream<Item = Item>) -> Result<Response, ApiError> {
        let mut text = String::new();
        let mut logprobs: Vec<TokenLogprob> = Vec::new();
        let mut calls: Vec<(Option<String>, String, String)> = Vec::new();
        let end = wait_end(items, |frame| match frame.event {
            "token" => {
                if let Ok(token) = serde_json::from_str::<TokenIn<'_>>(&frame.data) {
                    text.push_str(&token.t);
                    logprobs.extend(token.logprobs.unwrap_or_default());
                }
            }
            "tool_call" => {
                if let Ok(f) = serde_json::from_str::<ToolCallFrame>(&frame.data) {
                    let i = f.index as usize;
                    if i >= calls.len() && i < 128 {
                        calls.resize(i + 1, (None, String::new(), String::new()));
                    }
                    if let Some(call) = calls.get_mut(i) {
                        if f.id.is_some() {
                            call.0 = f.id;
                        }
                        if let Some(name) = f.name {
                            call.1.push_str(&name);
                        }
                        call.2.push_str(&f.arguments);
                    }
                }
            }
            _ => {}
        })
        .await
        .map_err(|e| match self.task.error_status() {
            // The status the error-mapping policy gave the engine's failure.
            Some(status) => e.with_status(
                axum::http::StatusCode::from_u16(status)
                    .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
            ),
            None => e,
        })?;
        let reason = self.finish_reason(&end, !calls.is_empty());
        let (object, choice) = match self.kind {
            Kind::Chat => {
                let tool_calls: Vec<Value> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, (id, name, arguments))| {
                        json!({"id": id.unwrap_or_else(|| format!("call_{i}")), "type": "function",
                               "function": {"name": name, "arguments": arguments}})
                    })
                    .collect();
                let mut message = json!({"role": "assistant", "refusal": null,
                    "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }});
                if !tool_calls.is_empty() {
                    message["tool_calls"] = json!(tool_calls);
                }
                let logprobs = if self.logprobs {
                    json!({"content": logprobs, "refusal": null})
                } else {
                    Value::Null
                };
                (
                    "chat.completion",
                    json!({"index": 0, "message": message, "finish_reason": reason,
                           "logprobs": logprobs}),
                )
            }
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "finish_reason": reason, "logprobs": null}),
            ),
        };
        let body = json!({"id": self.id, "object": object, "created": self.created,
            "model": self.model, "choices": [choice], "usage": self.usage(&end)});
        Ok(Json(body).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_follow_the_status_and_name_the_param() {
        let mut env = *ApiError::invalid("temperature", "must be between 0 and 2").envelope;
        let e = openai_error(&env, 400);
        assert_eq!(e.error.kind, "invalid_request_error");
        assert_eq!(e.error.param.as_deref(), Some("temperature"));
        assert_eq!(e.error.code.as_deref(), Some("INVALID_PARAMS"));
        env.code = ErrorCode::BudgetExceeded;
        assert_eq!(openai_error(&env, 429).error.kind, "rate_limit_error");
        assert_eq!(openai_error(&env, 429).error.param, None);
        assert_eq!(openai_error(&env, 503).error.kind, "server_error");
    }

    #[test]
    fn an_unknown_model_is_openais_model_not_found() {
        let env = *ApiError::new(
            ErrorCode::NotFound,
            format!("{MODEL_NOT_FOUND}nope` does not exist; see GET /v1/models"),
        )
        .envelope;
        let e = openai_error(&env, 404);
        assert_eq!(e.error.code.as_deref(), Some("model_not_found"));
        assert_eq!(e.error.param.as_deref(), Some("model"));
        let other = *ApiError::new(ErrorCode::NotFound, "unknown task \"x\"").envelope;
        assert_eq!(
            openai_error(&other, 404).error.code.as_deref(),
            Some("NOT_FOUND")
        );
    }

    #[test]
    fn logit_bias_keys_are_token_ids_and_values_bounded() {
        let ok: BTreeMap<String, f64> = [("42".to_owned(), -100.0)].into();
        assert_eq!(logit_bias(&Some(ok)).unwrap(), vec![(42, -100.0)]);
        let word: BTreeMap<String, f64> = [("hello".to_owned(), 1.0)].into();
        assert!(logit_bias(&Some(word)).is_err());
        let big: BTreeMap<String, f64> = [("1".to_owned(), 101.0)].into();
        assert!(logit_bias(&Some(big)).is_err());
        assert!(penalty("presence_penalty", Some(2.5)).is_err());
    }

    #[test]
    fn sessions_come_from_the_header_then_the_user() {
        let mut h = HeaderMap::new();
        assert!(session_of(&h, None).starts_with("oai:"));
        assert_eq!(session_of(&h, Some("bob")), "user:bob");
        assert!(session_of(&h, Some("bob smith")).starts_with("oai:"));
        h.insert("x-session-id", HeaderValue::from_static("s-1"));
        assert_eq!(session_of(&h, Some("bob")), "s-1");
    }
}

/// Fuzzing entry points: a door request's body through everything that needs no state.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// `path` picks the request type: `chat`, `completions` or `embeddings`.
    pub fn request(path: &str, body: &[u8]) {
        let job = match path {
            "chat" => serde_json::from_slice::<ChatCompletionRequest>(body)
                .ok()
                .map(chat_job),
            "completions" => serde_json::from_slice::<CompletionRequest>(body)
                .ok()
                .map(completion_job),
            _ => {
                let _ = serde_json::from_slice::<EmbeddingRequest>(body);
                None
            }
        };
        let Some(Ok(mut job)) = job else { return };
        if validate(&job).is_err() {
            return;
        }
        if let Ok((req, _)) = door_task(
            &mut job,
            "mock".into(),
            "s".into(),
            Priority::Interactive,
            1000,
        ) {
            let _ = admit::validate_request(&req);
        }
    }
}
