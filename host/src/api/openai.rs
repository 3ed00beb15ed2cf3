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
use orchd_contracts::openai::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, Content, EmbeddingRequest, Model,
    ModelList, OpenAiError, OpenAiErrorBody, Prompt, Stop, Usage,
};
use orchd_contracts::{EndFrame, ErrorCode, ErrorEnvelope, Priority, TaskRequest, Workload};
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
    for pool in state.pools.iter().filter(|p| p.is_ready()) {
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

/// What both endpoints have in common once parsed.
struct Job {
    model: String,
    prompt: String,
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

fn validate(job: &Job) -> Result<(), ApiError> {
    if let Some(n) = job.n
        && n != 1
    {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
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

/// Renders chat messages as one prompt (`role: content` lines, then `assistant:`): the
/// engines behind the daemon take text; a chat template belongs to the engine's own
/// chat endpoint (the `openai` adapter in `chat` mode passes the text as one user turn).
fn render_chat(messages: &[ChatMessage]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "must not be empty"));
    }
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!("role {:?} is not supported", m.role),
            ));
        }
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content"),
                                format!("content parts of type {:?} are not supported", p.kind),
                            ));
                        }
                    }
                }
                text
            }
        };
        out.push_str(&m.role);
        out.push_str(": ");
        out.push_str(&text);
        out.push('\n');
    }
    out.push_str("assistant:");
    Ok(out)
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

/// Sampler fields for the engine, as a JSON object (empty when none were given).
fn engine_params(job: &Job) -> String {
    let mut params = Map::new();
    if let Some(t) = job.temperature {
        params.insert("temperature".into(), json!(t));
    }
    if let Some(p) = job.top_p {
        params.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = job.stop.clone() {
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
    let job = Job {
        prompt: render_chat(&req.messages)?,
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
    };
    run(state, &correlation.0, &principal, &headers, job, Kind::Chat).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
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
    let job = Job {
        prompt,
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
    };
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

/// The pool serving `model`: a ready one if there is one, else any (whose readiness the
/// admission path then reports).
fn pool_for_model<'a>(
    state: &'a AppState,
    model: &str,
) -> Result<&'a Arc<crate::pool::Pool>, ApiError> {
    state
        .pools
        .iter()
        .find(|p| p.model_ref == model && p.is_ready())
        .or_else(|| state.pools.iter().find(|p| p.model_ref == model))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::PoolUnavailable,
                format!("no pool serves model {model:?}; see GET /v1/models"),
            )
            .retry_after_ms(1000)
        })
}

/// Reads a task's log to its terminal frame, handing each token's text to `on_token`: the
/// `end` frame, or the task's `error` envelope as the error.
async fn wait_end(
    items: impl Stream<Item = Item>,
    mut on_token: impl FnMut(&str),
) -> Result<EndFrame, ApiError> {
    tokio::pin!(items);
    while let Some(item) = items.next().await {
        let frame = match item {
            Item::Frame(f) => f,
            Item::Gone(envelope) => return Err(ApiError::from_envelope(envelope)),
        };
        match frame.event {
            "token" => {
                let t: Value = serde_json::from_str(&frame.data).unwrap_or(Value::Null);
                on_token(t["t"].as_str().unwrap_or(""));
            }
            "error" => {
                let envelope: ErrorEnvelope = serde_json::from_str(&frame.data)
                    .map_err(|e| ApiError::internal(format!("bad error frame: {e}")))?;
                return Err(ApiError::from_envelope(envelope));
            }
            "end" => {
                return serde_json::from_str(&frame.data)
                    .map_err(|e| ApiError::internal(format!("bad end frame: {e}")));
            }
            _ => {}
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
    let task_req = TaskRequest {
        task_id: None,
        session_id: session_of(&headers, req.user.as_deref()),
        workload: Workload::Embedding,
        model_ref: req.model.clone(),
        engine: pool.engine.clone(),
        ctx: inputs
            .iter()
            .map(|i| admit::estimate_tokens(i))
            .max()
            .unwrap_or(0),
        priority: priority_of(&headers)?,
        seed: None,
        determinism: None,
        sampler_profile_version: None,
        prompt: None,
        inputs: Some(inputs),
        max_tokens: 1,
        deadline_ms: deadline_of(&headers)?,
        expected_tokens: Some(1),
        kv_hint: None,
        placement: None,
    };
    let admitted = admit::admit(&state, task_req, &principal, &correlation.0)?;
    let task = state
        .tasks
        .get(&admitted.accepted.task_id)
        .ok_or_else(|| ApiError::internal("an admitted task is not registered"))?;
    let end = wait_end(read_task(&state, task, 0), |_| {}).await?;
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
    Ok(
        Json(json!({"object": "list", "data": data, "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response(),
    )
}

async fn run(
    state: Arc<AppState>,
    correlation_id: &str,
    principal: &Principal,
    headers: &HeaderMap,
    job: Job,
    kind: Kind,
) -> Result<Response, ApiError> {
    state.accepting_tasks()?;
    validate(&job)?;
    let pool = pool_for_model(&state, &job.model)?;
    let max_tokens = job.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let prompt_tokens = admit::estimate_tokens(&job.prompt);
    let task_req = TaskRequest {
        task_id: None,
        session_id: session_of(headers, job.user.as_deref()),
        workload: Workload::Completion,
        model_ref: job.model.clone(),
        engine: pool.engine.clone(),
        ctx: prompt_tokens.saturating_add(max_tokens),
        priority: priority_of(headers)?,
        seed: job.seed,
        determinism: None,
        sampler_profile_version: None,
        prompt: Some(job.prompt.clone()),
        inputs: None,
        max_tokens,
        deadline_ms: deadline_of(headers)?,
        expected_tokens: None,
        kv_hint: None,
        placement: None,
    };
    let admitted = admit::admit_with(
        &state,
        task_req,
        engine_params(&job),
        principal,
        correlation_id,
    )?;
    let task_id = admitted.accepted.task_id;
    let task = state
        .tasks
        .get(&task_id)
        .ok_or_else(|| ApiError::internal("an admitted task is not registered"))?;
    let items = read_task(&state, task, 0);
    let reply = Reply {
        id: format!("{}-{task_id}", kind.id_prefix()),
        created: now_s(),
        model: job.model,
        kind,
        max_tokens,
        prompt_tokens,
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
    Ok(response)
}

/// How one task's frames are told in OpenAI's words.
struct Reply {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    max_tokens: u32,
    prompt_tokens: u32,
}

impl Reply {
    fn finish_reason(&self, end: &EndFrame) -> &'static str {
        if end.tokens_out >= self.max_tokens {
            "length"
        } else {
            "stop"
        }
    }

    fn usage(&self, end: &EndFrame) -> Usage {
        let prompt = if end.tokens_in > 0 {
            end.tokens_in
        } else {
            self.prompt_tokens
        };
        Usage::new(prompt, end.tokens_out)
    }

    fn chunk(&self, choice: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created,
               "model": self.model, "choices": [choice]})
    }

    fn token_choice(&self, text: &str, first: bool) -> Value {
        match self.kind {
            Kind::Chat if first => json!({"index": 0,
                "delta": {"role": "assistant", "content": text}, "finish_reason": null}),
            Kind::Chat => json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
            Kind::Completion => {
                json!({"index": 0, "text": text, "finish_reason": null, "logprobs": null})
            }
        }
    }

    fn final_choice(&self, reason: &str) -> Value {
        match self.kind {
            Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": reason}),
            Kind::Completion => {
                json!({"index": 0, "text": "", "finish_reason": reason, "logprobs": null})
            }
        }
    }

    /// The streaming answer: one chunk per token, a final chunk with the finish reason,
    /// the usage chunk if asked for, then `[DONE]`. An error after the first byte is an
    /// `{"error": …}` event (what OpenAI's clients raise), and the stream ends.
    fn chunks(
        self,
        items: impl Stream<Item = Item> + Send + 'static,
        include_usage: bool,
    ) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        let data = |v: Value| Ok(Event::default().data(v.to_string()));
        let mut first = true;
        items.flat_map(move |item| {
            let events: Vec<Result<Event, std::convert::Infallible>> = match item {
                Item::Frame(f) if f.event == "token" => {
                    let t: Value = serde_json::from_str(&f.data).unwrap_or(Value::Null);
                    let text = t["t"].as_str().unwrap_or("");
                    let e = data(self.chunk(self.token_choice(text, first)));
                    first = false;
                    vec![e]
                }
                Item::Frame(f) if f.event == "end" => {
                    match serde_json::from_str::<EndFrame>(&f.data) {
                        Ok(end) if !end.canceled => {
                            let mut out = vec![data(
                                self.chunk(self.final_choice(self.finish_reason(&end))),
                            )];
                            if include_usage {
                                let mut usage = self.chunk(Value::Null);
                                usage["choices"] = json!([]);
                                usage["usage"] = json!(self.usage(&end));
                                out.push(data(usage));
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
                    let status = crate::errors::status_of(envelope.code).as_u16();
                    vec![data(json!(openai_error(&envelope, status)))]
                }
                Item::Frame(_) => Vec::new(), // started, metrics
                Item::Gone(envelope) => vec![data(json!(openai_error(&envelope, 404)))],
            };
            futures_util::stream::iter(events)
        })
    }

    /// The whole answer, once the task ends. An engine failure is the error response
    /// the task's `error` frame describes.
    async fn whole(self, items: impl Stream<Item = Item>) -> Result<Response, ApiError> {
        let mut text = String::new();
        let end = wait_end(items, |t| text.push_str(t)).await?;
        let reason = self.finish_reason(&end);
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": reason, "logprobs": null}),
            ),
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
    fn chat_messages_render_as_one_prompt() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ]))
        .unwrap();
        assert_eq!(
            render_chat(&msgs).unwrap(),
            "system: be brief\nuser: hi\nassistant:"
        );
        let bad: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "tool", "content": "x"}])).unwrap();
        assert!(render_chat(&bad).is_err());
        assert!(render_chat(&[]).is_err());
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
