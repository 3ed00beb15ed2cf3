//! A task's life: state, its ordered frame log (what the SSE stream replays), and the
//! engine job to cancel. Every transition happens under the task's lock, so a frame can
//! never follow the terminal one: that is what makes cancel race-free.
//!
//! The log is the replay buffer, bounded by `capacity` frames. When it is full, the oldest
//! `metrics` frame is dropped first (`sse_backpressure_drops_total`); only when none is left
//! does the oldest frame leave. If an attached reader has not yet taken that frame, the
//! reader is too slow: the push reports it and the caller cancels the task; the reader gets
//! an `error` frame instead of a gap. `token` frames are never dropped silently.
//!
//! The terminal transition records the transcript artifact (every frame so far, seed,
//! engine and version, pool and replica, error) and puts its id on the terminal frame.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orchd_contracts::{
    ArtifactKind, EndFrame, ErrorEnvelope, MetricsFrame, PlacementRequest, Priority, StartedFrame,
    TaskState, TaskStatus, TokenFrame,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::adapters::{EngineEnd, EngineJob, JobSpec};
use crate::artifacts::{ArtifactStore, NewArtifact};
use crate::budget::{Headroom, Reservation};
use orchd_contracts::chat::{TokenLogprob, ToolCallFrame};

/// One SSE frame: `id: seq`, `event: name`, `data: json`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub event: &'static str,
    pub data: String,
}

/// What the host sends the engine, and the facts of admission.
pub struct TaskSpec {
    /// The API key (principal name) that created the task; only it (or an admin) sees it.
    pub owner: String,
    pub session_id: String,
    pub priority: Priority,
    pub ctx: u32,
    pub placement: PlacementRequest,
    /// Prompt tokens as estimated at admission (until the engine reports its count).
    pub tokens_in_estimate: u32,
    /// The prompt's blocks (prefix-aware placement).
    pub prefix: crate::prefix::Blocks,
    pub pool_id: String,
    pub engine: String,
    pub correlation_id: String,
    pub job: JobSpec,
    pub queue_position: u32,
    pub predicted_start_ms: u64,
    /// The task must end within this long of admission.
    pub deadline: Duration,
}

/// Where terminal transitions record transcripts.
pub struct Recorder {
    pub store: Arc<ArtifactStore>,
    /// Keep the prompt in transcripts (else `"<redacted>"`).
    pub include_prompt: bool,
}

/// Default bound of a task's replay buffer, in frames.
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

pub struct Task {
    pub id: String,
    pub spec: TaskSpec,
    pub admitted_at: Instant,
    /// Its 0-based position in its class when it joined the queue (set by the queue).
    queue_position: std::sync::atomic::AtomicU32,
    inner: Mutex<Inner>,
    changed: Notify,
    reservation: Mutex<Option<Reservation>>,
    capacity: usize,
    recorder: Option<Arc<Recorder>>,
    /// Its spans (one trace per task; see [`crate::trace`]).
    pub trace: crate::trace::TaskTrace,
}

/// What a task consumed, for settling its budget.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub time_ms: u64,
}

/// An attached SSE reader.
pub type ReaderId = u64;

struct Inner {
    state: TaskState,
    frames: VecDeque<Frame>,
    next_seq: u64,
    /// Frames below this sequence number left the buffer from its front.
    evicted_upto: u64,
    /// Frames dropped or evicted so far (the transcript says how many it lacks).
    dropped: u64,
    /// Attached readers and the next sequence number each will take.
    readers: HashMap<ReaderId, u64>,
    /// Since when no reader has been attached (after one was).
    unattended_since: Option<Instant>,
    next_reader: ReaderId,
    ever_attached: bool,
    /// An attached reader lost a frame it had not taken: it must be disconnected.
    reader_fell_behind: bool,
    replica_id: Option<String>,
    engine_version: Option<String>,
    /// The pool serving the task, when a retry moved it out of the one it was admitted to
    /// (`spec.pool_id`).
    moved_to_pool: Option<String>,
    /// Text frames sent so far (the `i` of the next `token` frame).
    tokens_out: u32,
    /// Output frames so far, text and tool-call fragments (an engine sends about one token
    /// per frame): the count billed when the engine reports none.
    output_frames: u32,
    /// What the task is billed for once it ended: the engine's count, else the estimate.
    settled_tokens_out: Option<u32>,
    error: Option<ErrorEnvelope>,
    artifact_id: Option<String>,
    job: Option<Arc<dyn EngineJob>>,
    dispatched_at: Option<Instant>,
    /// The `started` frame is out (see [`Task::start`]).
    announced: bool,
    /// The HTTP status the error-mapping policy gave the task's failure.
    error_status: Option<u16>,
    first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    tokens_in: Option<u32>,
}

impl Inner {
    /// Frees one place in a full log: the oldest `metrics` frame if there is one, else the
    /// oldest frame (flagging a reader that had not taken it).
    fn make_room(&mut self) {
        self.dropped += 1;
        if let Some(pos) = self.frames.iter().position(|f| f.event == "metrics") {
            self.frames.remove(pos);
            crate::metrics::sse_backpressure_drop();
            return;
        }
        if let Some(front) = self.frames.pop_front() {
            self.evicted_upto = front.seq + 1;
            if self.readers.values().any(|&next| next <= front.seq) {
                self.reader_fell_behind = true;
            }
        }
    }
}

/// Timing of a finished run, for the pool's service-rate estimates.
#[derive(Debug, Clone, Copy)]
pub struct RunTiming {
    pub first_token_ms: Option<f64>,
    pub decode_ms: f64,
    pub tokens_out: u32,
}

/// The outcome of appending a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Ok,
    /// The task had ended; the token was dropped.
    Ended,
    /// Appended, but an attached reader fell behind the replay buffer: cancel the task.
    ReaderFellBehind,
}

/// What a reader gets from the log.
#[derive(Debug)]
pub enum Read {
    /// Frames from the cursor on (at most the batch asked for), and whether the log ends
    /// with them (terminal frame taken).
    Frames(Vec<Frame>, bool),
    /// Frames from the cursor on have left the buffer; the oldest still held is `oldest`.
    Gone { oldest: u64 },
}

/// Probability of ending by the deadline: the remaining tokens at `tokens_per_s` against
/// the time left, with a spread that grows with the prediction (a normal approximation).
pub fn on_time_probability(remaining_tokens: u32, tokens_per_s: f64, time_left_ms: f64) -> f64 {
    if time_left_ms <= 0.0 {
        return 0.0;
    }
    if remaining_tokens == 0 {
        return 1.0;
    }
    if !(tokens_per_s.is_finite() && tokens_per_s > 0.0) {
        return 0.5;
    }
    let predicted_ms = f64::from(remaining_tokens) * 1000.0 / tokens_per_s;
    let spread = 0.25 * predicted_ms + 50.0;
    let z = (time_left_ms - predicted_ms) / spread;
    // Logistic approximation of the normal CDF (max error < 0.01).
    let p = 1.0 / (1.0 + (-1.702 * z).exp());
    (p * 1000.0).round() / 1000.0
}

impl Task {
    pub fn new(id: String, spec: TaskSpec) -> Self {
        Self {
            id,
            queue_position: std::sync::atomic::AtomicU32::new(spec.queue_position),
            spec,
            admitted_at: Instant::now(),
            inner: Mutex::new(Inner {
                state: TaskState::Queued,
                frames: VecDeque::new(),
                next_seq: 0,
                evicted_upto: 0,
                dropped: 0,
                readers: HashMap::new(),
                unattended_since: None,
                next_reader: 0,
                ever_attached: false,
                reader_fell_behind: false,
                replica_id: None,
                engine_version: None,
                moved_to_pool: None,
                tokens_out: 0,
                output_frames: 0,
                settled_tokens_out: None,
                error: None,
                artifact_id: None,
                job: None,
                dispatched_at: None,
                announced: false,
                error_status: None,
                first_token_at: None,
                finished_at: None,
                tokens_in: None,
            }),
            changed: Notify::new(),
            reservation: Mutex::new(None),
            capacity: DEFAULT_LOG_CAPACITY,
            recorder: None,
            trace: crate::trace::TaskTrace::none(),
        }
    }

    /// The task's trace, begun at admission.
    pub fn traced(mut self, trace: crate::trace::TaskTrace) -> Self {
        self.trace = trace;
        self
    }

    /// Bounds the replay buffer to `frames` (at least 8).
    pub fn with_log_capacity(mut self, frames: usize) -> Self {
        self.capacity = frames.max(8);
        self
    }

    /// Records a transcript artifact when the task ends.
    pub fn record_to(mut self, recorder: Arc<Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Attaches the budget reservation the task holds until it settles.
    pub fn hold(self, reservation: Reservation) -> Self {
        *self.reservation.lock().unwrap_or_else(|p| p.into_inner()) = Some(reservation);
        self
    }

    /// The reservation, once: whoever takes it settles it.
    pub fn take_reservation(&self) -> Option<Reservation> {
        self.reservation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        let time_ms = match (inner.dispatched_at, inner.finished_at) {
            (Some(d), Some(f)) => f.duration_since(d).as_millis() as u64,
            (Some(d), None) => d.elapsed().as_millis() as u64,
            _ => 0,
        };
        Usage {
            tokens_in: inner.tokens_in.unwrap_or(self.spec.tokens_in_estimate),
            tokens_out: inner.settled_tokens_out.unwrap_or(inner.tokens_out),
            time_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, inner: &mut Inner, event: &'static str, data: &impl Serialize) {
        let data = serde_json::to_string(data).expect("frame data serializes");
        self.push_raw(inner, event, data);
    }

    fn push_raw(&self, inner: &mut Inner, event: &'static str, data: String) {
        if inner.frames.len() >= self.capacity {
            inner.make_room();
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.frames.push_back(Frame { seq, event, data });
        self.changed.notify_waiters();
    }

    pub fn state(&self) -> TaskState {
        self.lock().state
    }

    pub fn replica_id(&self) -> Option<String> {
        self.lock().replica_id.clone()
    }

    /// When the task must have ended.
    pub fn deadline_at(&self) -> Instant {
        self.admitted_at + self.spec.deadline
    }

    /// Admission to first token, if there was one.
    pub fn first_token_ms(&self) -> Option<f64> {
        self.lock()
            .first_token_at
            .map(|t| t.duration_since(self.admitted_at).as_secs_f64() * 1000.0)
    }

    /// Counts a cancellation in `tasks_canceled_total`.
    pub fn count_cancel(&self, engine_version: &str, reason: &str) {
        let replica = self.replica_id().unwrap_or_default();
        let pool_id = self.pool_id();
        crate::metrics::task_canceled(
            &crate::metrics::TaskLabels {
                engine: &self.spec.engine,
                engine_version,
                pool_id: &pool_id,
                replica_id: &replica,
                priority: self.spec.priority.as_str(),
            },
            reason,
        );
    }

    /// Records the position the task took in its class when it joined the queue.
    pub fn set_queue_position(&self, position: u32) {
        self.queue_position
            .store(position, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queued → Running on `replica_id`. `false` if the task already ended (canceled or
    /// evicted while being dispatched).
    ///
    /// The `started` frame follows with the task's first output (or its end), naming the
    /// replica that produced it: a failure before that, retried on another replica
    /// ([`Task::retarget`]), is never seen by a client, who sees one `started` frame.
    pub fn start(&self, replica_id: &str, engine_version: &str) -> bool {
        let mut inner = self.lock();
        if inner.state != TaskState::Queued {
            return false;
        }
        inner.state = TaskState::Running;
        inner.replica_id = Some(replica_id.to_owned());
        inner.engine_version = Some(engine_version.to_owned());
        inner.dispatched_at = Some(Instant::now());
        true
    }

    /// The `started` frame, once, before the first frame that follows dispatch.
    fn announce(&self, inner: &mut Inner) {
        if inner.announced || inner.dispatched_at.is_none() {
            return;
        }
        inner.announced = true;
        let frame = StartedFrame {
            queue_position: self
                .queue_position
                .load(std::sync::atomic::Ordering::Relaxed),
            predicted_start_ms: self.spec.predicted_start_ms,
            pool_id: inner
                .moved_to_pool
                .clone()
                .unwrap_or_else(|| self.spec.pool_id.clone()),
            replica_id: inner.replica_id.clone().unwrap_or_default(),
            engine: self.spec.engine.clone(),
            engine_version: inner.engine_version.clone().unwrap_or_default(),
        };
        self.push(inner, "started", &frame);
    }

    /// Moves a running task that produced nothing yet to another replica, of its pool or
    /// of another pool serving its model (a retry elsewhere). `false` if it ended
    /// meanwhile or a client has seen output.
    pub fn retarget(&self, pool_id: &str, replica_id: &str, engine_version: &str) -> bool {
        let mut inner = self.lock();
        if inner.state != TaskState::Running || inner.announced {
            return false;
        }
        inner.moved_to_pool = (pool_id != self.spec.pool_id).then(|| pool_id.to_owned());
        inner.replica_id = Some(replica_id.to_owned());
        inner.engine_version = Some(engine_version.to_owned());
        inner.job = None;
        true
    }

    /// The pool serving (or that served) the task: the one it was admitted to, unless a
    /// retry moved it.
    pub fn pool_id(&self) -> String {
        let inner = self.lock();
        inner
            .moved_to_pool
            .clone()
            .unwrap_or_else(|| self.spec.pool_id.clone())
    }

    /// Output frames per second since the first one (`None` before it).
    pub fn tokens_per_s(&self) -> Option<f64> {
        let inner = self.lock();
        let since = inner.first_token_at?.elapsed().as_secs_f64();
        Some(f64::from(inner.output_frames) / since.max(0.001))
    }

    /// Whether pool `id` serves (or served) the task (see [`Task::pool_id`]).
    pub fn on_pool(&self, id: &str) -> bool {
        let inner = self.lock();
        inner.moved_to_pool.as_deref().unwrap_or(&self.spec.pool_id) == id
    }

    /// Whether a client may have seen this task's output (its `started` frame is out).
    pub fn announced(&self) -> bool {
        self.lock().announced
    }

    /// Records the engine job. If the task ended meanwhile, hands the job back so the
    /// caller cancels it.
    pub fn attach_job(&self, job: Arc<dyn EngineJob>) -> Option<Arc<dyn EngineJob>> {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return Some(job);
        }
        inner.job = Some(job);
        None
    }

    /// Appends a token.
    pub fn push_token(&self, text: String) -> Pushed {
        self.push_text(text, None)
    }

    /// Appends a `token` frame, with the logprobs of its tokens when the task asked.
    pub fn push_text(&self, text: String, logprobs: Option<Vec<TokenLogprob>>) -> Pushed {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return Pushed::Ended;
        }
        self.announce(&mut inner);
        if inner.first_token_at.is_none() {
            inner.first_token_at = Some(Instant::now());
        }
        let i = inner.tokens_out;
        inner.tokens_out += 1;
        inner.output_frames += 1;
        self.push(
            &mut inner,
            "token",
            &TokenFrame {
                t: text,
                i,
                logprobs,
            },
        );
        Self::pushed(&mut inner)
    }

    /// Appends a `tool_call` frame: one fragment of a tool call.
    pub fn push_tool_call(&self, fragment: ToolCallFrame) -> Pushed {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return Pushed::Ended;
        }
        self.announce(&mut inner);
        if inner.first_token_at.is_none() {
            inner.first_token_at = Some(Instant::now());
        }
        inner.output_frames += 1;
        self.push(&mut inner, "tool_call", &fragment);
        Self::pushed(&mut inner)
    }

    fn pushed(inner: &mut Inner) -> Pushed {
        if std::mem::take(&mut inner.reader_fell_behind) {
            Pushed::ReaderFellBehind
        } else {
            Pushed::Ok
        }
    }

    /// Appends a `metrics` frame. `pool_tokens_per_s` is the pool's measured rate, used
    /// until this stream has a rate of its own.
    pub fn push_metrics(&self, queue_depth: u32, budget: Headroom, pool_tokens_per_s: f64) -> bool {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return false;
        }
        self.announce(&mut inner);
        let elapsed = inner
            .first_token_at
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let own_rate = rate(inner.tokens_out, elapsed);
        let time_left_ms = self
            .deadline_at()
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            * 1000.0;
        let frame = MetricsFrame {
            queue_depth,
            tokens_out: inner.tokens_out,
            elapsed_ms: elapsed.as_millis() as u64,
            tokens_per_s: own_rate,
            on_time_probability: on_time_probability(
                self.spec.job.max_tokens.saturating_sub(inner.tokens_out),
                if own_rate > 0.0 {
                    own_rate
                } else {
                    pool_tokens_per_s
                },
                time_left_ms,
            ),
            tokens_budget_remaining: budget.tokens,
            time_budget_remaining_ms: budget.time_ms,
            cost_budget_remaining: budget.cost,
        };
        self.push(&mut inner, "metrics", &frame);
        true
    }

    fn end_frame(inner: &Inner, tokens_in: u32, canceled: bool) -> EndFrame {
        let decode = inner
            .first_token_at
            .map(|t| t.elapsed().as_millis() as u64)
            .unwrap_or(0);
        EndFrame {
            finish_reason: None,
            cached_tokens: None,
            tokens_out: inner.settled_tokens_out.unwrap_or(inner.tokens_out),
            decode_ms: decode,
            decode_time_ms: decode,
            tokens_in,
            canceled,
            artifact_id: None,
            embeddings: None,
        }
    }

    /// Records the transcript of a task that just ended: every frame held, then the
    /// terminal one (`terminal`, without its artifact id). Returns the artifact id.
    fn transcribe(&self, inner: &Inner, event: &str, terminal: &impl Serialize) -> Option<String> {
        let recorder = self.recorder.as_ref()?;
        let terminal = serde_json::to_string(terminal).expect("frame data serializes");
        let mut events = String::with_capacity(64 * (inner.frames.len() + 1));
        events.push('[');
        let all = inner
            .frames
            .iter()
            .map(|f| (f.seq, f.event, f.data.as_str()))
            .chain(std::iter::once((inner.next_seq, event, terminal.as_str())));
        for (n, (seq, event, data)) in all.enumerate() {
            if n > 0 {
                events.push(',');
            }
            events.push_str(&format!(
                r#"{{"id":{seq},"event":"{event}","data":{data}}}"#
            ));
        }
        events.push(']');
        #[derive(Serialize)]
        struct Head<'a> {
            task_id: &'a str,
            session_id: &'a str,
            state: TaskState,
            seed: u64,
            model_ref: &'a str,
            engine: &'a str,
            engine_version: Option<&'a str>,
            pool_id: &'a str,
            replica_id: Option<&'a str>,
            correlation_id: &'a str,
            prompt: &'a str,
            tokens_out: u32,
            error: Option<&'a ErrorEnvelope>,
            events_dropped: u64,
        }
        let head = Head {
            task_id: &self.id,
            session_id: &self.spec.session_id,
            state: inner.state,
            seed: self.spec.job.seed,
            model_ref: &self.spec.job.model,
            engine: &self.spec.engine,
            engine_version: inner.engine_version.as_deref(),
            pool_id: inner.moved_to_pool.as_deref().unwrap_or(&self.spec.pool_id),
            replica_id: inner.replica_id.as_deref(),
            correlation_id: &self.spec.correlation_id,
            prompt: if recorder.include_prompt {
                &self.spec.job.prompt
            } else {
                "<redacted>"
            },
            tokens_out: inner.tokens_out,
            error: inner.error.as_ref(),
            events_dropped: inner.dropped,
        };
        let mut content = serde_json::to_string(&head).expect("transcript serializes");
        content.pop(); // the closing brace: the events follow
        content.push_str(r#","events":"#);
        content.push_str(&events);
        content.push('}');
        let tags = [format!("task:{}", self.id)];
        recorder.store.record(
            &self.spec.owner,
            &NewArtifact {
                kind: ArtifactKind::Transcript,
                content_json: &content,
                tags: &tags,
                parent: None,
                metadata: None,
            },
        )
    }

    /// Running → Succeeded with the `end` frame. `tokens_in` is the prompt's count (the
    /// engine's, else the adapter's tokenizer's, else the estimate); `engine` is what the
    /// engine said of its output. Output tokens are the engine's count, else the output
    /// frames sent (text and tool-call fragments): never 0 for output sent. Returns the
    /// run's timing.
    pub fn succeed(&self, tokens_in: u32, engine: &EngineEnd) -> Option<RunTiming> {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return None;
        }
        self.announce(&mut inner);
        inner.settled_tokens_out = Some(engine.tokens_out.unwrap_or(inner.output_frames));
        let mut frame = Self::end_frame(&inner, tokens_in, false);
        frame.finish_reason = engine.finish_reason.clone();
        frame.cached_tokens = engine.cached_tokens;
        inner.tokens_in = Some(tokens_in);
        inner.state = TaskState::Succeeded;
        inner.finished_at = Some(Instant::now());
        inner.job = None;
        frame.artifact_id = self.transcribe(&inner, "end", &frame);
        inner.artifact_id = frame.artifact_id.clone();
        self.push(&mut inner, "end", &frame);
        self.trace.finish("succeeded", None, frame.tokens_out);
        Some(RunTiming {
            first_token_ms: match (inner.dispatched_at, inner.first_token_at) {
                (Some(d), Some(f)) => Some(f.duration_since(d).as_secs_f64() * 1000.0),
                _ => None,
            },
            decode_ms: inner
                .first_token_at
                .map(|f| f.elapsed().as_secs_f64() * 1000.0)
                .unwrap_or(0.0),
            tokens_out: inner.settled_tokens_out.unwrap_or(inner.tokens_out),
        })
    }

    /// Running → Succeeded for an embedding task: the `end` frame carries the vectors.
    pub fn succeed_embedding(&self, vectors: Vec<Vec<f32>>, tokens_in: u32) -> bool {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return false;
        }
        self.announce(&mut inner);
        let mut frame = Self::end_frame(&inner, tokens_in, false);
        frame.embeddings = Some(vectors);
        inner.tokens_in = Some(tokens_in);
        inner.state = TaskState::Succeeded;
        inner.finished_at = Some(Instant::now());
        frame.artifact_id = self.transcribe(&inner, "end", &frame);
        inner.artifact_id = frame.artifact_id.clone();
        self.push(&mut inner, "end", &frame);
        self.trace.finish("succeeded", None, 0);
        true
    }

    /// [`Task::fail`], remembering the HTTP status the failure was mapped to (the OpenAI
    /// door answers with it).
    pub fn fail_with_status(
        &self,
        envelope: ErrorEnvelope,
        status: u16,
    ) -> Option<Option<Arc<dyn EngineJob>>> {
        self.lock().error_status.get_or_insert(status);
        self.fail(envelope)
    }

    /// The HTTP status the task's failure was mapped to, if it failed through the
    /// error-mapping policy.
    pub fn error_status(&self) -> Option<u16> {
        let inner = self.lock();
        (inner.state == TaskState::Failed)
            .then_some(inner.error_status)
            .flatten()
    }

    /// Any state → Failed with the `error` frame; returns the engine job to cancel, if any.
    /// `None` when the task had already ended.
    pub fn fail(&self, mut envelope: ErrorEnvelope) -> Option<Option<Arc<dyn EngineJob>>> {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return None;
        }
        self.announce(&mut inner);
        inner.state = TaskState::Failed;
        inner.finished_at = Some(Instant::now());
        inner.error = Some(envelope.clone());
        envelope.artifact_id = self.transcribe(&inner, "error", &envelope);
        inner.artifact_id = envelope.artifact_id.clone();
        self.push(&mut inner, "error", &envelope);
        self.trace.finish(
            "failed",
            Some(envelope.code.as_str()),
            inner.settled_tokens_out.unwrap_or(inner.tokens_out),
        );
        inner.error = Some(envelope);
        Some(inner.job.take())
    }

    /// Any state → Canceled with `end {canceled: true}`. Once this returns, no frame can
    /// follow. Returns the engine job to cancel; `None` when the task had already ended.
    pub fn cancel(&self) -> Option<Option<Arc<dyn EngineJob>>> {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return None;
        }
        // The prompt counts once the engine had it (the engine's count, else the estimate);
        // a task canceled before dispatch consumed none. The end frame and the bill agree.
        let tokens_in = if inner.dispatched_at.is_some() {
            inner.tokens_in.unwrap_or(self.spec.tokens_in_estimate)
        } else {
            0
        };
        inner.tokens_in = Some(tokens_in);
        self.announce(&mut inner);
        let mut frame = Self::end_frame(&inner, tokens_in, true);
        inner.state = TaskState::Canceled;
        inner.finished_at = Some(Instant::now());
        frame.artifact_id = self.transcribe(&inner, "end", &frame);
        inner.artifact_id = frame.artifact_id.clone();
        self.push(&mut inner, "end", &frame);
        self.trace.finish("canceled", None, frame.tokens_out);
        Some(inner.job.take())
    }

    /// Registers a reader that will read from sequence number `next` on.
    pub fn attach(&self, next: u64) -> ReaderId {
        let mut inner = self.lock();
        let id = inner.next_reader;
        inner.next_reader += 1;
        inner.readers.insert(id, next);
        inner.ever_attached = true;
        inner.unattended_since = None;
        id
    }

    pub fn detach(&self, reader: ReaderId) {
        let mut inner = self.lock();
        inner.readers.remove(&reader);
        if inner.readers.is_empty() {
            inner.unattended_since = Some(Instant::now());
        }
    }

    /// How long the task has had no reader, after having had one (`None` while one is
    /// attached).
    pub fn unattended_for(&self) -> Option<Duration> {
        let inner = self.lock();
        if !inner.readers.is_empty() {
            return None;
        }
        inner.unattended_since.map(|t| t.elapsed())
    }

    /// How many frames the task's stream has had (the next frame's sequence number).
    pub fn frames_written(&self) -> u64 {
        self.lock().next_seq
    }

    /// The sequence number of the terminal frame, once there is one.
    pub fn terminal_seq(&self) -> Option<u64> {
        let inner = self.lock();
        inner
            .state
            .is_terminal()
            .then(|| inner.next_seq.saturating_sub(1))
    }

    /// Whether any client ever attached to the stream.
    pub fn ever_attached(&self) -> bool {
        self.lock().ever_attached
    }

    /// Up to `max` frames from sequence number `next` on, for `reader` (whose position the
    /// log then knows).
    pub fn read(&self, reader: ReaderId, next: u64, max: usize) -> Read {
        let mut inner = self.lock();
        if next < inner.evicted_upto {
            return Read::Gone {
                oldest: inner.evicted_upto,
            };
        }
        let from = inner.frames.partition_point(|f| f.seq < next);
        let to = from.saturating_add(max).min(inner.frames.len());
        let frames: Vec<Frame> = inner.frames.range(from..to).cloned().collect();
        let complete = inner.state.is_terminal() && to == inner.frames.len();
        let cursor = frames.last().map_or(next, |f| f.seq + 1);
        if let Some(c) = inner.readers.get_mut(&reader) {
            *c = cursor;
        }
        Read::Frames(frames, complete)
    }

    /// Every frame held, and whether the log is complete (tests and tools).
    pub fn frames(&self) -> (Vec<Frame>, bool) {
        let inner = self.lock();
        (
            inner.frames.iter().cloned().collect(),
            inner.state.is_terminal(),
        )
    }

    /// Resolves on the next change of the frame log.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// About how much memory the task holds: its replay buffer and its request (the
    /// prompt counts once: a chat's messages are rendered into it).
    pub fn approx_bytes(&self) -> usize {
        const OVERHEAD: usize = 1024;
        const PER_FRAME: usize = 48;
        let job = &self.spec.job;
        let request = job.prompt.len()
            + job.params_json.len()
            + job
                .inputs
                .as_ref()
                .map_or(0, |i| i.iter().map(String::len).sum());
        let inner = self.lock();
        let frames: usize = inner.frames.iter().map(|f| f.data.len() + PER_FRAME).sum();
        OVERHEAD + self.id.len() + request + frames
    }

    pub fn finished_for(&self) -> Option<Duration> {
        self.lock().finished_at.map(|t| t.elapsed())
    }

    pub fn status(&self, queue_position: Option<u32>) -> TaskStatus {
        let inner = self.lock();
        TaskStatus {
            task_id: self.id.clone(),
            session_id: self.spec.session_id.clone(),
            state: inner.state,
            queue_position: (inner.state == TaskState::Queued)
                .then_some(queue_position)
                .flatten(),
            pool_id: Some(
                inner
                    .moved_to_pool
                    .clone()
                    .unwrap_or_else(|| self.spec.pool_id.clone()),
            ),
            replica_id: inner.replica_id.clone(),
            tokens_out: inner.settled_tokens_out.unwrap_or(inner.tokens_out),
            error: inner.error.clone(),
            artifact_id: inner.artifact_id.clone(),
            stream_token: None,
        }
    }
}

/// Decode rate since the first token: n tokens span n-1 intervals.
fn rate(tokens: u32, since_first: Duration) -> f64 {
    let s = since_first.as_secs_f64();
    if tokens > 1 && s > 0.0 {
        f64::from(tokens - 1) / s
    } else {
        0.0
    }
}

/// Every live or recently finished task, by id.
#[derive(Default)]
pub struct Tasks {
    map: Mutex<HashMap<String, Arc<Task>>>,
}

impl Tasks {
    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Inserts unless the id is taken; `false` on a duplicate.
    pub fn insert(&self, task: Arc<Task>) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&task.id) {
            return false;
        }
        map.insert(task.id.clone(), task);
        true
    }

    /// Tasks not yet ended.
    pub fn live(&self) -> Vec<Arc<Task>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| !t.state().is_terminal())
            .cloned()
            .collect()
    }

    /// Forgets tasks that finished more than `retention` ago, then the oldest finished
    /// tasks until those left hold at most `max_bytes` (live tasks are never forgotten:
    /// the queue's capacity bounds them). Returns how many were forgotten.
    pub fn sweep(&self, retention: Duration, max_bytes: usize) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, t| t.finished_for().is_none_or(|d| d < retention));
        let mut finished: Vec<(Duration, usize, String)> = map
            .values()
            .filter_map(|t| Some((t.finished_for()?, t.approx_bytes(), t.id.clone())))
            .collect();
        let mut held: usize = finished.iter().map(|(_, bytes, _)| bytes).sum();
        if held > max_bytes {
            // Oldest (longest finished) first.
            finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
            let mut evicted = 0usize;
            for (_, bytes, id) in finished {
                if held <= max_bytes {
                    break;
                }
                map.remove(&id);
                held -= bytes;
                evicted += 1;
            }
            crate::metrics::finished_tasks_evicted(evicted);
            tracing::warn!(
                evicted,
                limit_bytes = max_bytes,
                "finished tasks forgotten before their retention ended: they held more than limits.retained_tasks_max_bytes"
            );
        }
        crate::metrics::finished_tasks_retained_bytes(held);
        before - map.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec(id: &str) -> TaskSpec {
        TaskSpec {
            owner: "open".into(),
            session_id: "s".into(),
            priority: Priority::Interactive,
            ctx: 0,
            placement: PlacementRequest::default(),
            tokens_in_estimate: 1,
            prefix: Default::default(),
            pool_id: "p".into(),
            engine: "mock".into(),
            correlation_id: "c".into(),
            job: JobSpec {
                task_id: id.into(),
                model: "mock".into(),
                prompt: "hi".into(),
                max_tokens: 4,
                seed: 1,
                params_json: String::new(),
                inputs: None,
                chat: None,
                trace: Default::default(),
            },
            queue_position: 0,
            predicted_start_ms: 0,
            deadline: Duration::from_secs(60),
        }
    }

    pub fn task(id: &str) -> Arc<Task> {
        Arc::new(Task::new(id.to_owned(), spec(id)))
    }

    fn events(t: &Task) -> Vec<&'static str> {
        t.frames().0.iter().map(|f| f.event).collect()
    }

    fn read_all(t: &Task, reader: ReaderId, next: u64) -> Vec<Frame> {
        match t.read(reader, next, usize::MAX) {
            Read::Frames(frames, _) => frames,
            Read::Gone { oldest } => panic!("gone below {oldest}"),
        }
    }

    #[test]
    fn lifecycle_frames_in_order_with_sequence_ids() {
        let t = task("a");
        assert!(t.start("r0", "v1"));
        assert_eq!(t.push_token("x".into()), Pushed::Ok);
        assert!(t.push_metrics(0, Headroom::default(), 100.0));
        assert_eq!(t.push_token("y".into()), Pushed::Ok);
        assert!(t.succeed(2, &EngineEnd::default()).is_some());
        assert_eq!(events(&t), ["started", "token", "metrics", "token", "end"]);
        let (frames, done) = t.frames();
        assert!(done);
        assert!(frames.iter().enumerate().all(|(i, f)| f.seq == i as u64));
        let r = t.attach(3);
        assert_eq!(read_all(&t, r, 3)[0].data, r#"{"t":"y","i":1}"#);
    }

    #[test]
    fn nothing_follows_cancel() {
        let t = task("a");
        assert!(t.start("r0", "v1"));
        assert_eq!(t.push_token("x".into()), Pushed::Ok);
        assert!(t.cancel().is_some());
        assert_eq!(t.push_token("late".into()), Pushed::Ended);
        assert!(!t.push_metrics(0, Headroom::default(), 100.0));
        assert!(t.succeed(1, &EngineEnd::default()).is_none());
        assert!(t.cancel().is_none(), "cancel is idempotent");
        assert_eq!(events(&t), ["started", "token", "end"]);
        assert!(t.frames().0[2].data.contains(r#""canceled":true"#));
        assert_eq!(t.state(), TaskState::Canceled);
    }

    #[test]
    fn a_canceled_queued_task_never_starts() {
        let t = task("a");
        assert!(t.cancel().is_some());
        assert!(!t.start("r0", "v1"));
        assert_eq!(events(&t), ["end"]);
    }

    #[test]
    fn a_full_log_drops_metrics_first_then_the_oldest_frames() {
        let t = Task::new("a".into(), spec("a")).with_log_capacity(8);
        assert!(t.start("r0", "v1"));
        for _ in 0..3 {
            assert_eq!(t.push_token("x".into()), Pushed::Ok);
            assert!(t.push_metrics(0, Headroom::default(), 100.0));
        }
        // 7 frames: started, (token, metrics) x3. The 8th fits; the 9th drops a metrics.
        assert_eq!(t.push_token("y".into()), Pushed::Ok);
        assert_eq!(t.push_token("z".into()), Pushed::Ok);
        assert_eq!(
            events(&t),
            [
                "started", "token", "token", "metrics", "token", "metrics", "token", "token"
            ]
        );
        // Then the oldest frames leave; nobody was reading, so nobody fell behind.
        for _ in 0..3 {
            assert_eq!(t.push_token("w".into()), Pushed::Ok);
        }
        assert_eq!(events(&t)[0], "token");
        assert!(matches!(t.read(0, 0, 10), Read::Gone { oldest: 1 }));
        // Ids stay the frames' positions in the stream: gaps where frames were dropped.
        let seqs: Vec<u64> = t.frames().0.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [1, 3, 5, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn a_reader_that_falls_behind_is_reported_and_then_told() {
        let t = Task::new("a".into(), spec("a")).with_log_capacity(8);
        assert!(t.start("r0", "v1"));
        let fast = t.attach(0);
        let slow = t.attach(0);
        let mut outcome = Pushed::Ok;
        for _ in 0..20 {
            outcome = t.push_token("x".into());
            if outcome != Pushed::Ok {
                break;
            }
            let taken = read_all(&t, fast, 0);
            assert!(!taken.is_empty());
        }
        assert_eq!(outcome, Pushed::ReaderFellBehind);
        assert!(matches!(t.read(slow, 0, 10), Read::Gone { .. }));
        t.detach(slow);
        t.detach(fast);
        assert!(t.ever_attached());
    }

    #[test]
    fn started_comes_with_the_first_output_and_names_the_replica_that_produced_it() {
        let t = task("a");
        assert!(t.start("r0", "v1"));
        assert_eq!(t.frames_written(), 0, "nothing before the first output");
        // A failure before any output moves the task, here to another pool; the client saw
        // nothing of r0.
        assert!(t.retarget("q", "r1", "v2"));
        assert!(!t.announced());
        assert_eq!(t.pool_id(), "q");
        assert_eq!(t.push_token("x".into()), Pushed::Ok);
        assert_eq!(events(&t), ["started", "token"]);
        let (frames, _) = t.frames();
        assert!(
            frames[0].data.contains("\"replica_id\":\"r1\"")
                && frames[0].data.contains("\"pool_id\":\"q\""),
            "{}",
            frames[0].data
        );
        assert!(
            !t.retarget("p", "r2", "v3"),
            "output was seen: no more moves"
        );
        assert_eq!(t.replica_id().as_deref(), Some("r1"));
        // A task that fails before any output still shows started, then the error.
        let f = task("b");
        assert!(f.start("r0", "v1"));
        assert!(
            f.fail_with_status(
                ErrorEnvelope {
                    code: orchd_contracts::ErrorCode::WorkerReset,
                    message: "gone".into(),
                    engine: None,
                    pool_id: None,
                    retriable: None,
                    retry_after_ms: None,
                    policy_label: None,
                    correlation_id: None,
                    artifact_id: None,
                },
                502
            )
            .is_some()
        );
        assert_eq!(events(&f), ["started", "error"]);
        assert_eq!(f.error_status(), Some(502));
    }

    #[test]
    fn reads_come_in_batches_and_end_with_the_terminal_frame() {
        let t = task("a");
        assert!(t.start("r0", "v1"));
        let r = t.attach(0);
        assert_eq!(t.push_token("x".into()), Pushed::Ok);
        assert!(t.succeed(1, &EngineEnd::default()).is_some());
        let Read::Frames(first, done) = t.read(r, 0, 2) else {
            panic!()
        };
        assert_eq!((first.len(), done), (2, false));
        let Read::Frames(rest, done) = t.read(r, 2, 2) else {
            panic!()
        };
        assert_eq!((rest.len(), done), (1, true));
        assert_eq!(rest[0].event, "end");
    }

    #[test]
    fn the_terminal_frame_names_the_transcript() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 20).unwrap();
        let recorder = Arc::new(Recorder {
            store: Arc::clone(&store),
            include_prompt: false,
        });
        let t = Task::new("a".into(), spec("a")).record_to(recorder);
        assert!(t.start("r0", "v1"));
        assert_eq!(t.push_token("x".into()), Pushed::Ok);
        assert!(t.succeed(1, &EngineEnd::default()).is_some());
        let end: serde_json::Value =
            serde_json::from_str(&t.frames().0.last().unwrap().data).unwrap();
        let id = end["artifact_id"].as_str().unwrap();
        assert_eq!(t.status(None).artifact_id.as_deref(), Some(id));
        let doc = store.get("open", false, id).unwrap().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        let c = &doc["content"];
        assert_eq!(doc["kind"], "transcript");
        assert_eq!(c["prompt"], "<redacted>");
        assert_eq!(
            (c["seed"].as_u64(), c["engine_version"].as_str()),
            (Some(1), Some("v1"))
        );
        let events: Vec<&str> = c["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["started", "token", "end"]);
    }

    #[test]
    fn on_time_probability_follows_the_slack() {
        assert_eq!(on_time_probability(0, 10.0, 1.0), 1.0);
        assert_eq!(on_time_probability(10, 10.0, 0.0), 0.0);
        // 100 tokens at 100/s: 1 s needed.
        let tight = on_time_probability(100, 100.0, 900.0);
        let even = on_time_probability(100, 100.0, 1000.0);
        let loose = on_time_probability(100, 100.0, 3000.0);
        assert!(tight < even && even < loose, "{tight} {even} {loose}");
        assert!((even - 0.5).abs() < 1e-9 && loose > 0.99);
    }

    #[test]
    fn sweep_forgets_only_old_finished_tasks() {
        let tasks = Tasks::default();
        let done = task("done");
        done.cancel();
        assert!(tasks.insert(done));
        assert!(tasks.insert(task("live")));
        assert!(!tasks.insert(task("live")), "duplicate ids are refused");
        assert_eq!(tasks.sweep(Duration::from_secs(60), usize::MAX), 0);
        assert_eq!(tasks.sweep(Duration::ZERO, usize::MAX), 1);
        assert!(tasks.contains("live"));
    }

    #[test]
    fn finished_tasks_past_the_memory_cap_are_forgotten_oldest_first() {
        let tasks = Tasks::default();
        for id in ["old", "mid", "new"] {
            let t = task(id);
            t.cancel();
            assert!(tasks.insert(t));
            std::thread::sleep(Duration::from_millis(3));
        }
        let live = task("live");
        let one = tasks.get("new").unwrap().approx_bytes();
        assert!(tasks.insert(live));
        // Room for two finished tasks: the oldest goes, the live one never does.
        assert_eq!(tasks.sweep(Duration::from_secs(60), 2 * one + one / 2), 1);
        assert!(!tasks.contains("old"));
        assert!(tasks.contains("mid") && tasks.contains("new"));
        assert_eq!(tasks.sweep(Duration::from_secs(60), 0), 2);
        assert!(tasks.contains("live"));
    }
}
