//! `/v1/tasks`: admit, status, stream (SSE), cancel.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use orchd_contracts::{ErrorCode, ErrorEnvelope, TaskRequest, TaskStatus};

use super::extract::ApiJson;
use super::middleware::CorrelationId;
use crate::admit;
use crate::auth::Principal;
use crate::budget::Headroom;
use crate::errors::ApiError;
use crate::state::AppState;
use crate::task::{Frame, Read, ReaderId, Task};

pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TaskRequest>,
) -> Result<Response, ApiError> {
    state.accepting_tasks()?;
    if super::catalog::strict(&headers) {
        admit::require_trusted(&state, &req.model_ref)?;
    }
    let admitted = admit::admit(
        &state,
        req,
        &principal,
        &correlation.0,
        crate::trace::Incoming::from_headers(&headers),
    )
    .await?;
    let mut response = (StatusCode::ACCEPTED, Json(admitted.accepted)).into_response();
    budget_headers(response.headers_mut(), admitted.headroom);
    if let Some(rate) = &admitted.rate {
        crate::errors::rate_headers(response.headers_mut(), rate);
    }
    Ok(response)
}

/// `X-Budget-*` for the budgets that apply (none when unlimited).
fn budget_headers(headers: &mut HeaderMap, h: Headroom) {
    if let Some(t) = h.tokens {
        headers.insert("x-budget-tokens-remaining", HeaderValue::from(t));
    }
    if let Some(ms) = h.time_ms {
        headers.insert("x-budget-time-remaining-ms", HeaderValue::from(ms));
    }
    if let Some(c) = h.cost
        && let Ok(v) = HeaderValue::from_str(&format!("{c:.6}"))
    {
        headers.insert("x-budget-cost-remaining", v);
    }
}

/// The task, if it exists and the caller may see it (else the same 404: no oracle).
/// `GET /v1/tasks`: the caller's live tasks (queued or running) on this daemon; an admin
/// sees every one. Newest last.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Json<orchd_contracts::TaskList> {
    let mut tasks: Vec<Arc<Task>> = state
        .tasks
        .live()
        .into_iter()
        .filter(|t| principal.may_see(&t.spec.owner))
        .collect();
    tasks.sort_by_key(|t| t.admitted_at);
    Json(orchd_contracts::TaskList {
        tasks: tasks
            .iter()
            .map(|t| {
                let status = t.status(None);
                orchd_contracts::TaskSummary {
                    task_id: t.id.clone(),
                    session_id: t.spec.session_id.clone(),
                    state: status.state,
                    priority: t.spec.priority,
                    pool_id: t.pool_id(),
                    replica_id: status.replica_id,
                    tokens_out: status.tokens_out,
                    tokens_per_s: t.tokens_per_s(),
                    age_ms: t.admitted_at.elapsed().as_millis() as u64,
                }
            })
            .collect(),
    })
}

fn find(state: &AppState, principal: &Principal, id: &str) -> Result<Arc<Task>, ApiError> {
    let task = state
        .tasks
        .get(id)
        .filter(|t| principal.may_see(&t.spec.owner))
        .ok_or_else(|| ApiError::not_found("task", id))?;
    let span = tracing::Span::current();
    span.record("task_id", id);
    span.record("session_id", task.spec.session_id.as_str());
    span.record("pool_id", task.spec.pool_id.as_str());
    span.record("engine", task.spec.engine.as_str());
    Ok(task)
}

/// Requests one daemon relays to another carry this, so they are never relayed again.
const RELAYED: &str = "x-orchd-relayed";

/// Where a task is answered from.
enum Located {
    /// This daemon holds it.
    Here(Arc<Task>),
    /// From the directory: ended (or failed with its daemon), its daemon gone or not asked.
    Ended(Box<TaskStatus>),
    /// Answered by the daemon running it.
    Relayed(Response),
}

/// The task: this daemon's, else the directory's (several daemons, or a restart), relaying
/// the request to the daemon that runs it (same method, path and credentials; a stream
/// also goes to the daemon that ran a finished task, which keeps its frames). A task
/// neither here nor in the directory is the same 404 as one the caller may not see.
async fn locate(
    state: &Arc<AppState>,
    principal: &Principal,
    id: &str,
    method: reqwest::Method,
    suffix: &str,
    headers: &HeaderMap,
) -> Result<Located, ApiError> {
    let not_here = match find(state, principal, id) {
        Ok(task) => return Ok(Located::Here(task)),
        Err(not_here) => not_here,
    };
    if headers.contains_key(RELAYED) {
        return Err(not_here);
    }
    let is_stream = suffix.starts_with("/stream");
    let found = state
        .decisions
        .directory
        .lookup(id, |owner| principal.may_see(owner), is_stream)
        .map_err(|e| ApiError::store_down("the task directory", e))?;
    match found {
        None => Err(not_here),
        Some(crate::directory::Remote::Ended(status, None)) => Ok(Located::Ended(status)),
        Some(
            crate::directory::Remote::LiveAt { addr }
            | crate::directory::Remote::Ended(_, Some(addr)),
        ) => {
            let mut req = state
                .relay
                .request(method, format!("{addr}/v1/tasks/{id}{suffix}"))
                .header(RELAYED, "1");
            for name in [
                "authorization",
                "x-api-key",
                "last-event-id",
                "accept",
                "x-correlation-id",
            ] {
                if let Some(v) = headers.get(name) {
                    req = req.header(name, v.as_bytes());
                }
            }
            let resp = req.send().await.map_err(|e| {
                ApiError::new(
                    ErrorCode::WorkerReset,
                    format!("the daemon running this task did not answer: {e}"),
                )
                .retry_after_ms(1000)
            })?;
            let mut out = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                if !matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                ) {
                    out = out.header(name.as_str(), value.as_bytes());
                }
            }
            let body = axum::body::Body::from_stream(resp.bytes_stream());
            Ok(Located::Relayed(
                out.body(body)
                    .map_err(|e| ApiError::internal(format!("relay: {e}")))?,
            ))
        }
    }
}

pub async fn status(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = match locate(&state, &principal, &id, reqwest::Method::GET, "", &headers).await? {
        Located::Here(task) => task,
        Located::Ended(status) => return Ok(Json(*status).into_response()),
        Located::Relayed(resp) => return Ok(resp),
    };
    let position = state
        .pool(&task.spec.pool_id)
        .and_then(|p| p.queue.position(&id))
        .map(|(_, at)| at);
    let mut status = task.status(position);
    status.stream_token = Some(state.stream_tokens.issue(&id).0);
    Ok(Json(status).into_response())
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = match locate(
        &state,
        &principal,
        &id,
        reqwest::Method::POST,
        "/cancel",
        &headers,
    )
    .await?
    {
        Located::Here(task) => task,
        // Already ended (or failed with its daemon): cancel is idempotent.
        Located::Ended(_) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Located::Relayed(resp) => return Ok(resp),
    };
    state.cancel(&task, "client").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Frames a stream takes from the task's log at a time: the log knows each reader's
/// position to within this many frames, which is how it tells a slow reader.
const READ_BATCH: usize = 32;

/// Detaches the reader. When the last reader goes away before the terminal frame, the
/// task is canceled once no reader has come back within `grace` (unless
/// `stream.cancel_on_disconnect = false`): a zero grace cancels at once.
struct DisconnectGuard {
    state: Arc<AppState>,
    task: Arc<Task>,
    reader: ReaderId,
    grace: Duration,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.task.detach(self.reader);
        if !self.state.settings.cancel_on_disconnect || self.task.state().is_terminal() {
            return;
        }
        if self.task.unattended_for().is_none() {
            return; // another reader is still attached
        }
        let state = Arc::clone(&self.state);
        let task = Arc::clone(&self.task);
        let grace = self.grace;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if !grace.is_zero() {
                    tokio::time::sleep(grace).await;
                    // A reader came back, or left again later (its own timer decides).
                    match task.unattended_for() {
                        Some(since) if since >= grace => {}
                        _ => return,
                    }
                }
                state.cancel(&task, "disconnect").await;
            });
        }
    }
}

struct Cursor {
    task: Arc<Task>,
    reader: ReaderId,
    next: u64,
    pending: VecDeque<Frame>,
    complete: bool,
    _guard: DisconnectGuard,
}

/// What a reader of a task's log gets: its frames in order, or, once, word that the
/// frames it needs have left the replay buffer (then the stream ends).
pub(super) enum Item {
    Frame(Frame),
    Gone(ErrorEnvelope),
}

fn items(cursor: Cursor) -> impl Stream<Item = Item> {
    futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(frame) = c.pending.pop_front() {
                return Some((Item::Frame(frame), c));
            }
            if c.complete {
                return None;
            }
            let task = Arc::clone(&c.task);
            let changed = task.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match task.read(c.reader, c.next, READ_BATCH) {
                Read::Frames(new, complete) => {
                    if let Some(last) = new.last() {
                        c.next = last.seq + 1;
                    }
                    c.pending.extend(new);
                    c.complete = complete;
                    if c.pending.is_empty() && !complete {
                        changed.await;
                    }
                }
                Read::Gone { oldest } => {
                    // Never a silent gap: say what is missing and end this stream.
                    c.complete = true;
                    let mut envelope = *ApiError::new(
                        ErrorCode::NotFound,
                        format!(
                            "events from id {} on left the replay buffer (oldest held: {oldest}); \
                             this reader fell behind or resumed too late",
                            c.next
                        ),
                    )
                    .envelope;
                    envelope.correlation_id = Some(task.spec.correlation_id.clone());
                    return Some((Item::Gone(envelope), c));
                }
            }
        }
    })
}

/// A reader of `task`'s log from sequence number `next` on. Dropping the stream before
/// the terminal frame counts as the client going away: the task is canceled once no reader
/// has come back within `grace` (unless configured off).
pub(super) fn read_task(
    state: &Arc<AppState>,
    task: Arc<Task>,
    next: u64,
    grace: Duration,
) -> impl Stream<Item = Item> + use<> {
    let reader = task.attach(next);
    items(Cursor {
        task: Arc::clone(&task),
        reader,
        next,
        pending: VecDeque::new(),
        complete: false,
        _guard: DisconnectGuard {
            state: Arc::clone(state),
            task,
            reader,
            grace,
        },
    })
}

/// How soon a client reconnects after a dropped connection (`retry:`, sent once): well
/// inside the reconnect grace.
fn retry_after(grace: Duration) -> Duration {
    (grace / 3).clamp(Duration::from_millis(100), Duration::from_secs(3))
}

fn sse_events(
    items: impl Stream<Item = Item>,
    retry: Duration,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut first = true;
    items.map(move |item| {
        let event = match item {
            Item::Frame(frame) => Event::default()
                .id(frame.seq.to_string())
                .event(frame.event)
                .data(frame.data),
            Item::Gone(envelope) => Event::default()
                .event("error")
                .data(serde_json::to_string(&envelope).expect("envelope serializes")),
        };
        Ok(if std::mem::take(&mut first) {
            event.retry(retry)
        } else {
            event
        })
    })
}

/// The first frame to send after `Last-Event-ID: <value>` (the id the client saw, plus
/// one); anything but a frame id, including an id at `u64::MAX`, is refused.
pub fn next_after(value: &[u8]) -> Result<u64, ApiError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .and_then(|seen| seen.checked_add(1))
        .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be a frame id (integer)"))
}

pub async fn stream(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A stream token (`?token=`) travels with a relayed stream: the daemon running the task
    // checks it as this one did.
    let suffix = match uri.query() {
        Some(q) => format!("/stream?{q}"),
        None => "/stream".to_owned(),
    };
    let task = match locate(
        &state,
        &principal,
        &id,
        reqwest::Method::GET,
        &suffix,
        &headers,
    )
    .await?
    {
        Located::Here(task) => task,
        Located::Relayed(resp) => return Ok(resp),
        // Its daemon is gone, and the frames with it: a failed task says why in one
        // `error` frame; a finished one points to its status.
        Located::Ended(status) => {
            return match status.error {
                Some(envelope) => {
                    let event = Event::default()
                        .event("error")
                        .data(serde_json::to_string(&envelope).expect("envelope serializes"));
                    let once = futures_util::stream::iter([Ok::<_, Infallible>(event)]);
                    Ok(Sse::new(once).into_response())
                }
                None => Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "task {:?} ended; its stream was kept by the daemon that ran it, which is gone (GET /v1/tasks/{{id}} has its status)",
                        super::truncated(&id)
                    ),
                )),
            };
        }
    };
    // Resume: the frames after the last one the client saw.
    let next = match headers.get("last-event-id") {
        None => 0,
        Some(v) => next_after(v.as_bytes())?,
    };
    // A client that saw the terminal frame is told to stop reconnecting: EventSource
    // treats 204 as final.
    if let Some(terminal) = task.terminal_seq()
        && next > terminal
    {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // An id the stream never sent would skip frames silently.
    if next > task.frames_written() {
        return Err(ApiError::invalid(
            "Last-Event-ID",
            format!(
                "{} is beyond the last frame sent ({})",
                next - 1,
                task.frames_written().saturating_sub(1)
            ),
        ));
    }
    let headroom = state.decisions.headroom(&task);
    let grace = state.settings.reconnect_grace;
    let items = read_task(&state, task, next, grace);
    let keep_alive = KeepAlive::new()
        .interval(state.settings.keep_alive)
        .text("keep-alive");
    let mut response = Sse::new(sse_events(items, retry_after(grace)))
        .keep_alive(keep_alive)
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    budget_headers(response.headers_mut(), headroom);
    Ok(response)
}
