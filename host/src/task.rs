//! A task's life: state, its ordered frame log (what the SSE stream replays), and the
//! engine job to cancel. Every transition happens under the task's lock, so a frame can
//! never follow the terminal one: that is what makes cancel race-free.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orchd_contracts::{
    EndFrame, ErrorEnvelope, MetricsFrame, PlacementRequest, Priority, StartedFrame, TaskState,
    TaskStatus, TokenFrame,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::adapters::{EngineJob, JobSpec};
use crate::budget::{Headroom, Reservation};

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
    pub pool_id: String,
    pub engine: String,
    pub correlation_id: String,
    pub job: JobSpec,
    pub queue_position: u32,
    pub predicted_start_ms: u64,
}

pub struct Task {
    pub id: String,
    pub spec: TaskSpec,
    pub admitted_at: Instant,
    inner: Mutex<Inner>,
    changed: Notify,
    reservation: Mutex<Option<Reservation>>,
}

/// What a task consumed, for settling its budget.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub time_ms: u64,
}

struct Inner {
    state: TaskState,
    frames: Vec<Frame>,
    replica_id: Option<String>,
    tokens_out: u32,
    error: Option<ErrorEnvelope>,
    job: Option<Arc<dyn EngineJob>>,
    dispatched_at: Option<Instant>,
    first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    tokens_in: Option<u32>,
}

/// Timing of a finished run, for the pool's service-rate estimates.
#[derive(Debug, Clone, Copy)]
pub struct RunTiming {
    pub first_token_ms: Option<f64>,
    pub decode_ms: f64,
    pub tokens_out: u32,
}

impl Task {
    pub fn new(id: String, spec: TaskSpec) -> Self {
        Self {
            id,
            spec,
            admitted_at: Instant::now(),
            inner: Mutex::new(Inner {
                state: TaskState::Queued,
                frames: Vec::new(),
                replica_id: None,
                tokens_out: 0,
                error: None,
                job: None,
                dispatched_at: None,
                first_token_at: None,
                finished_at: None,
                tokens_in: None,
            }),
            changed: Notify::new(),
            reservation: Mutex::new(None),
        }
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
            tokens_out: inner.tokens_out,
            time_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, inner: &mut Inner, event: &'static str, data: &impl Serialize) {
        let seq = inner.frames.len() as u64;
        let data = serde_json::to_string(data).expect("frame data serializes");
        inner.frames.push(Frame { seq, event, data });
        self.changed.notify_waiters();
    }

    pub fn state(&self) -> TaskState {
        self.lock().state
    }

    pub fn replica_id(&self) -> Option<String> {
        self.lock().replica_id.clone()
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
        crate::metrics::task_canceled(
            &crate::metrics::TaskLabels {
                engine: &self.spec.engine,
                engine_version,
                pool_id: &self.spec.pool_id,
                replica_id: &replica,
                priority: self.spec.priority.as_str(),
            },
            reason,
        );
    }

    /// Queued → Running with the `started` frame. `false` if the task already ended
    /// (canceled or evicted while being dispatched).
    pub fn start(&self, replica_id: &str, engine_version: &str) -> bool {
        let mut inner = self.lock();
        if inner.state != TaskState::Queued {
            return false;
        }
        inner.state = TaskState::Running;
        inner.replica_id = Some(replica_id.to_owned());
        inner.dispatched_at = Some(Instant::now());
        let frame = StartedFrame {
            queue_position: self.spec.queue_position,
            predicted_start_ms: self.spec.predicted_start_ms,
            pool_id: self.spec.pool_id.clone(),
            replica_id: replica_id.to_owned(),
            engine: self.spec.engine.clone(),
            engine_version: engine_version.to_owned(),
        };
        self.push(&mut inner, "started", &frame);
        true
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

    /// Appends a token; `false` once the task has ended (the token is dropped).
    pub fn push_token(&self, text: String) -> bool {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return false;
        }
        if inner.first_token_at.is_none() {
            inner.first_token_at = Some(Instant::now());
        }
        let i = inner.tokens_out;
        inner.tokens_out += 1;
        self.push(&mut inner, "token", &TokenFrame { t: text, i });
        true
    }

    pub fn push_metrics(&self, queue_depth: u32, budget: Headroom) -> bool {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return false;
        }
        let elapsed = inner
            .first_token_at
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let frame = MetricsFrame {
            queue_depth,
            tokens_out: inner.tokens_out,
            elapsed_ms: elapsed.as_millis() as u64,
            tokens_per_s: rate(inner.tokens_out, elapsed),
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
            tokens_out: inner.tokens_out,
            decode_ms: decode,
            decode_time_ms: decode,
            tokens_in,
            canceled,
            artifact_id: None,
        }
    }

    /// Running → Succeeded with the `end` frame. Returns the run's timing.
    pub fn succeed(&self, tokens_in: u32) -> Option<RunTiming> {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return None;
        }
        let frame = Self::end_frame(&inner, tokens_in, false);
        inner.tokens_in = Some(tokens_in);
        inner.state = TaskState::Succeeded;
        inner.finished_at = Some(Instant::now());
        inner.job = None;
        self.push(&mut inner, "end", &frame);
        Some(RunTiming {
            first_token_ms: match (inner.dispatched_at, inner.first_token_at) {
                (Some(d), Some(f)) => Some(f.duration_since(d).as_secs_f64() * 1000.0),
                _ => None,
            },
            decode_ms: inner
                .first_token_at
                .map(|f| f.elapsed().as_secs_f64() * 1000.0)
                .unwrap_or(0.0),
            tokens_out: inner.tokens_out,
        })
    }

    /// Any state → Failed with the `error` frame; returns the engine job to cancel, if any.
    /// `None` when the task had already ended.
    pub fn fail(&self, envelope: ErrorEnvelope) -> Option<Option<Arc<dyn EngineJob>>> {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return None;
        }
        inner.state = TaskState::Failed;
        inner.finished_at = Some(Instant::now());
        self.push(&mut inner, "error", &envelope);
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
        let frame = Self::end_frame(&inner, 0, true);
        inner.state = TaskState::Canceled;
        inner.finished_at = Some(Instant::now());
        self.push(&mut inner, "end", &frame);
        Some(inner.job.take())
    }

    /// Frames from `cursor` on, and whether the log is complete (terminal frame written).
    /// `notified` must be created before the call so no change is missed.
    pub fn frames_from(&self, cursor: u64) -> (Vec<Frame>, bool) {
        let inner = self.lock();
        let from = (cursor as usize).min(inner.frames.len());
        (inner.frames[from..].to_vec(), inner.state.is_terminal())
    }

    /// Resolves on the next change of the frame log.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
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
            pool_id: Some(self.spec.pool_id.clone()),
            replica_id: inner.replica_id.clone(),
            tokens_out: inner.tokens_out,
            error: inner.error.clone(),
            artifact_id: None,
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

    /// Forgets tasks that finished more than `retention` ago.
    pub fn sweep(&self, retention: Duration) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, t| t.finished_for().is_none_or(|d| d < retention));
        before - map.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn task(id: &str) -> Arc<Task> {
        Arc::new(Task::new(
            id.to_owned(),
            TaskSpec {
                owner: "open".into(),
                session_id: "s".into(),
                priority: Priority::Interactive,
                ctx: 0,
                placement: PlacementRequest::default(),
                tokens_in_estimate: 1,
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
                },
                queue_position: 0,
                predicted_start_ms: 0,
            },
        ))
    }

    fn events(t: &Task) -> Vec<&'static str> {
        t.frames_from(0).0.iter().map(|f| f.event).collect()
    }

    #[test]
    fn lifecycle_frames_in_order_with_sequence_ids() {
        let t = task("a");
        assert!(t.start("r0", "v1"));
        assert!(t.push_token("x".into()));
        assert!(t.push_metrics(0, Headroom::default()));
        assert!(t.push_token("y".into()));
        assert!(t.succeed(2).is_some());
        assert_eq!(events(&t), ["started", "token", "metrics", "token", "end"]);
        let (frames, done) = t.frames_from(0);
        assert!(done);
        assert!(frames.iter().enumerate().all(|(i, f)| f.seq == i as u64));
        assert_eq!(t.frames_from(3).0[0].data, r#"{"t":"y","i":1}"#);
    }

    #[test]
    fn nothing_follows_cancel() {
        let t = task("a");
        assert!(t.start("r0", "v1"));
        assert!(t.push_token("x".into()));
        assert!(t.cancel().is_some());
        assert!(!t.push_token("late".into()));
        assert!(!t.push_metrics(0, Headroom::default()));
        assert!(t.succeed(1).is_none());
        assert!(t.cancel().is_none(), "cancel is idempotent");
        assert_eq!(events(&t), ["started", "token", "end"]);
        assert!(t.frames_from(2).0[0].data.contains(r#""canceled":true"#));
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
    fn sweep_forgets_only_old_finished_tasks() {
        let tasks = Tasks::default();
        let done = task("done");
        done.cancel();
        assert!(tasks.insert(done));
        assert!(tasks.insert(task("live")));
        assert!(!tasks.insert(task("live")), "duplicate ids are refused");
        assert_eq!(tasks.sweep(Duration::from_secs(60)), 0);
        assert_eq!(tasks.sweep(Duration::ZERO), 1);
        assert!(tasks.contains("live"));
    }
}
