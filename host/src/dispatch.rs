//! One dispatcher per pool: leases a replica slot, pops the next task (interactive
//! first), and runs it on the replica, relaying the adapter's events into the task's
//! frame log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use orchd_contracts::ErrorCode;

use crate::adapters::{EngineEvent, EngineFailure, EngineJob, FailureKind, FailurePhase};
use crate::decisions::{Decisions, FailureSite};
use crate::errors::ApiError;
use crate::metrics;
use crate::pool::Pool;
use crate::task::{Pushed, Task};

/// Events buffered between an adapter and the host per task; a full buffer blocks the
/// adapter (backpressure), never grows.
const EVENT_BUFFER: usize = 256;
/// At most one `metrics` frame per this interval while tokens flow.
const METRICS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    /// An engine silent for this long mid-task is stalled: `DECODE_TIMEOUT`.
    pub decode_idle_timeout: Duration,
    /// A started task no client attached to within this long is canceled.
    pub attach_timeout: Duration,
    /// Replicas a task is tried on before its first output (retry-elsewhere).
    pub max_attempts: u32,
}

impl From<&crate::config::Settings> for DispatchConfig {
    fn from(settings: &crate::config::Settings) -> Self {
        Self {
            decode_idle_timeout: settings.decode_idle_timeout,
            attach_timeout: settings.attach_timeout,
            max_attempts: settings.max_attempts.max(1),
        }
    }
}

/// Runs the pool's dispatcher until the process ends: each wake (a slot freed, a replica
/// back, a task queued without a free slot) pumps the queue.
pub fn spawn_dispatcher(pool: Arc<Pool>, decisions: Arc<Decisions>, config: DispatchConfig) {
    tokio::spawn(async move {
        loop {
            let woken = pool.wake.notified();
            if pool.is_removed() {
                return;
            }
            pump(&pool, &decisions, config);
            woken.await;
        }
    });
}

/// Starts every queued task that can start now, head first: for each, placement
/// (dispatch stage) picks a replica, its slot is leased and the task runs on its own tokio
/// task. Called by the dispatcher when woken and by admission right after a task joins
/// (the direct path: a task that finds a free slot does not wait for the dispatcher).
/// Safe to run from several places at once: a task is taken only while it is the head.
pub fn pump(pool: &Arc<Pool>, decisions: &Arc<Decisions>, config: DispatchConfig) {
    while let Some((replica, task)) = next(pool, decisions) {
        // A root: the log names the task, and the caller's span (admission's trace span on
        // the direct path) does not stay open for the task's whole run.
        let span = tracing::info_span!(
            parent: None,
            "task",
            correlation_id = %task.spec.correlation_id,
            task_id = %task.id,
            session_id = %task.spec.session_id,
            pool_id = %pool.id,
            replica_id = %pool.replicas[replica].id,
            engine = %task.spec.engine,
            engine_version = %pool.replicas[replica].engine_version(),
        );
        tokio::spawn(
            run(
                Arc::clone(pool),
                Arc::clone(decisions),
                replica,
                task,
                config,
            )
            .instrument(span),
        );
    }
}

/// The next task to run and the replica leased for it, if any can start now. Placement
/// runs with no lock held; the head is taken only if it is still the head.
fn next(pool: &Pool, decisions: &Decisions) -> Option<(usize, Arc<Task>)> {
    loop {
        if pool.slots_free() == 0 {
            return None;
        }
        let (head, depth) = pool.queue.head()?;
        match head
            .trace
            .in_queue(|| decisions.place_at_dispatch(pool, &head, depth))
        {
            Ok(Some(replica)) if pool.try_lease(replica) => {
                if pool.queue.pop_if_head(&head) {
                    pool.publish();
                    head.trace.dispatching(&pool.id, 1);
                    return Some((replica, head));
                }
                // Canceled, or overtaken by an interactive task, or taken by another
                // pump, since it was read: look again.
                pool.release_quiet(replica);
            }
            // Raced with another pump for the slot; whoever holds it pumps on.
            Ok(Some(_taken)) => return None,
            Ok(None) => return None,
            Err(err) => {
                // Placement is broken and may not fall back: the task cannot run.
                if pool.queue.remove_task(&head) {
                    pool.publish();
                    fail(&head, err);
                    decisions.settle(&head);
                }
            }
        }
    }
}

/// Cancels an engine job off the async workers (it is a blocking FFI call).
pub async fn cancel_job(task_id: &str, job: Arc<dyn EngineJob>) {
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || job.cancel()).await {
        Ok(Ok(())) => tracing::debug!(
            task_id,
            elapsed_us = started.elapsed().as_micros() as u64,
            "engine job canceled"
        ),
        Ok(Err(e)) => tracing::warn!(task_id, error = %e, "engine cancel failed"),
        Err(e) => tracing::error!(task_id, error = %e, "engine cancel panicked"),
    }
}

/// Ends the task with `DEADLINE_UNMET` if its deadline comes first: a queued task leaves
/// the queue (never dispatched), a running one gets its `error` frame and its engine job
/// canceled. The timer holds the task weakly.
pub fn watch_deadline(task: &Arc<Task>, pool: Arc<Pool>, decisions: Arc<Decisions>) {
    let weak = Arc::downgrade(task);
    let at = tokio::time::Instant::from_std(task.deadline_at());
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        let Some(task) = weak.upgrade() else { return };
        if task.state().is_terminal() {
            return;
        }
        if pool.queue.remove_task(&task) {
            pool.publish();
        }
        let err = ApiError::new(
            ErrorCode::DeadlineUnmet,
            format!(
                "deadline of {} ms passed before the task ended",
                task.spec.deadline.as_millis()
            ),
        )
        .engine(&task.spec.engine)
        .pool(&pool.id);
        let mut envelope = *err.envelope;
        envelope.correlation_id = Some(task.spec.correlation_id.clone());
        if let Some(job) = task.fail(envelope) {
            tracing::info!(task_id = %task.id, pool_id = %pool.id, "deadline passed; task ended");
            task.count_cancel(&pool.engine_version(), "deadline");
            if let Some(job) = job {
                cancel_job(&task.id, job).await;
            }
            decisions.settle(&task);
        }
    });
}

/// Cancels a started task if no client attaches to its stream in time.
fn watch_attach(task: &Arc<Task>, timeout: Duration, engine_version: String) {
    let weak = Arc::downgrade(task);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let Some(task) = weak.upgrade() else { return };
        if task.ever_attached() {
            return;
        }
        if let Some(job) = task.cancel() {
            tracing::info!(
                task_id = %task.id, timeout_ms = timeout.as_millis() as u64,
                "no client attached to the stream; task canceled"
            );
            task.count_cancel(&engine_version, "no_consumer");
            if let Some(job) = job {
                cancel_job(&task.id, job).await;
            }
        }
    });
}

/// Cancels a task whose reader fell behind its replay buffer.
async fn cancel_for_slow_reader(task: &Task, engine_version: &str) {
    if let Some(job) = task.cancel() {
        tracing::warn!(task_id = %task.id, "stream reader fell behind the replay buffer; task canceled");
        task.count_cancel(engine_version, "disconnect");
        if let Some(job) = job {
            cancel_job(&task.id, job).await;
        }
    }
}

fn fail(task: &Task, err: ApiError) -> Option<Arc<dyn EngineJob>> {
    let status = err.status().as_u16();
    let mut envelope = *err.envelope;
    envelope.correlation_id = Some(task.spec.correlation_id.clone());
    tracing::warn!(task_id = %task.id, code = %envelope.code, error = %envelope.message, "task failed");
    task.fail_with_status(envelope, status).flatten()
}

fn labels<'a>(
    task: &'a Task,
    pool: &'a Pool,
    replica: usize,
    engine_version: &'a str,
) -> metrics::TaskLabels<'a> {
    metrics::TaskLabels {
        engine: &task.spec.engine,
        engine_version,
        pool_id: &pool.id,
        replica_id: &pool.replicas[replica].id,
        priority: task.spec.priority.as_str(),
    }
}

async fn run(
    pool: Arc<Pool>,
    decisions: Arc<Decisions>,
    replica_idx: usize,
    task: Arc<Task>,
    config: DispatchConfig,
) {
    let mut pool = pool;
    let mut replica_idx = replica_idx;
    let replica = &pool.replicas[replica_idx];
    let engine_version = replica.engine_version();
    if task.start(&replica.id, &engine_version) {
        metrics::task_started(&labels(&task, &pool, replica_idx, &engine_version));
        if !task.ever_attached() {
            watch_attach(&task, config.attach_timeout, engine_version.to_string());
        }
        tracing::info!(task_id = %task.id, pool_id = %pool.id, replica_id = %replica.id, "task started");
        pool.remember_prefix(replica_idx, &task.spec.prefix);
        // Replicas tried in the pool serving now, and the pools tried before it.
        let mut tried = vec![replica_idx];
        let mut tried_pools = vec![pool.id.clone()];
        let mut attempt = 1;
        loop {
            let (engine_call, propagated) =
                task.trace
                    .engine_call(&pool.id, &pool.replicas[replica_idx].id, attempt);
            let result = relay(
                &pool,
                &decisions,
                replica_idx,
                &task,
                config,
                attempt,
                propagated,
            )
            .instrument(engine_call)
            .await;
            task.trace.engine_ended(match (&result, task.state()) {
                (Attempt::RetryElsewhere(_), _) => "retry-elsewhere",
                (_, orchd_contracts::TaskState::Succeeded) => "ok",
                (_, orchd_contracts::TaskState::Canceled) => "canceled",
                _ => "failed",
            });
            let Attempt::RetryElsewhere(err) = result else {
                break;
            };
            // Failed before its first output, and the policy lets another replica take
            // it: the least loaded replica of its pool not tried yet, else a free slot in
            // another pool serving its model (as placement chooses), within the attempts
            // and the task's deadline. The budget stays reserved once; the client sees
            // nothing of the failed attempts.
            let next = if attempt < config.max_attempts && Instant::now() < task.deadline_at() {
                let _placing = task.trace.dispatching(&pool.id, attempt + 1).entered();
                match pool.lease_untried(&tried) {
                    Some(i) => Some((Arc::clone(&pool), i)),
                    None => decisions.lease_in_another_pool(&task, &tried_pools),
                }
            } else {
                None
            };
            let Some((to_pool, next)) = next else {
                fail(&task, err);
                break;
            };
            let to = &to_pool.replicas[next];
            if !task.retarget(&to_pool.id, &to.id, &to.engine_version()) {
                to_pool.release_quiet(next); // ended meanwhile (canceled, deadline)
                break;
            }
            tracing::info!(
                task_id = %task.id, pool_id = %pool.id, from = %pool.replicas[replica_idx].id,
                to_pool = %to_pool.id, to = %to.id, attempt = attempt + 1,
                error = %err.envelope.message,
                "failed before its first output; retrying on another replica"
            );
            to_pool.remember_prefix(next, &task.spec.prefix);
            pool.release(replica_idx);
            if to_pool.id == pool.id {
                tried.push(next);
            } else {
                tried_pools.push(to_pool.id.clone());
                tried = vec![next];
                pool = to_pool;
            }
            replica_idx = next;
            attempt += 1;
        }
        pool.remember_affinity(&task.spec.session_id, replica_idx);
        let usage = task.usage();
        let decode_ms = task.first_token_ms().map_or(0.0, |ftt| {
            (task.admitted_at.elapsed().as_secs_f64() * 1000.0 - ftt).max(0.0)
        });
        let engine_version = pool.replicas[replica_idx].engine_version();
        metrics::task_finished(
            &labels(&task, &pool, replica_idx, &engine_version),
            task.first_token_ms(),
            decode_ms,
            usage.tokens_in,
            usage.tokens_out,
        );
    }
    // The slot first: settling writes to the state store, which the next task need not
    // wait for.
    pool.release(replica_idx);
    pool.publish();
    decisions.settle(&task);
}

/// Whether relaying may go on after a frame was appended; handles a reader that fell
/// behind (its task is canceled) and a task already ended by cancel.
async fn relayed(task: &Task, replica: &crate::pool::Replica, pushed: Pushed) -> bool {
    match pushed {
        Pushed::Ok => true,
        // Ended by cancel; whoever ended it canceled the job.
        Pushed::Ended => false,
        Pushed::ReaderFellBehind => {
            cancel_for_slow_reader(task, &replica.engine_version()).await;
            false
        }
    }
}

/// The prompt's token count for billing: the engine's report; else, for a completion on an
/// adapter that tokenizes, the engine's tokenizer (one blocking call, off the workers, its
/// answer remembered per pool by prompt hash);
/// else the admission estimate. Never 0 for a prompt that was not empty.
async fn prompt_tokens(
    pool: &Pool,
    replica: &crate::pool::Replica,
    task: &Task,
    end: &crate::adapters::EngineEnd,
) -> u32 {
    if let Some(n) = end.tokens_in.filter(|&n| n > 0) {
        return n;
    }
    let job = &task.spec.job;
    if job.chat.is_none() && !job.prompt.is_empty() && pool.has_feature("tokenize") {
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            job.prompt.hash(&mut h);
            h.finish()
        };
        if let Some(n) = pool.token_count(hash) {
            return n;
        }
        let client = replica.client();
        let prompt = job.prompt.clone();
        if let Ok(Ok(ids)) = tokio::task::spawn_blocking(move || client.tokenize(&prompt)).await
            && !ids.is_empty()
        {
            let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
            pool.remember_token_count(hash, n);
            return n;
        }
    }
    task.spec.tokens_in_estimate
}

/// Whether a failure is the replica's (it counts toward ejecting it), not the request's.
fn replica_at_fault(f: &EngineFailure) -> bool {
    match f.kind {
        FailureKind::Config | FailureKind::InvalidRequest => false,
        FailureKind::Upstream => !matches!(f.upstream_status, Some(400..=499)),
        _ => true,
    }
}

/// Records how a run on replica `idx` ended (`failure`: how it failed), for outlier
/// ejection and the measured rates; ejects the replica or brings it back.
fn outcome(pool: &Arc<Pool>, idx: usize, failure: Option<&EngineFailure>, began: Instant) {
    let replica = &pool.replicas[idx];
    let failed = match failure {
        None => false,
        Some(f) if replica_at_fault(f) => {
            if f.phase != FailurePhase::MidStream {
                pool.record_failure_on(idx, began.elapsed().as_secs_f64() * 1000.0);
            }
            true
        }
        // The request's fault says nothing of the replica.
        Some(_) => return,
    };
    match replica.record_outcome(failed, &pool.outliers) {
        crate::pool::Ejection::None => {}
        crate::pool::Ejection::Ejected { for_ms, why } => {
            tracing::warn!(
                pool_id = %pool.id, replica_id = %replica.id, reason = why, for_ms,
                "replica ejected: out of placement for the back-off, then one probe task"
            );
            metrics::replica_ejected(&pool.id, &replica.id, true);
            pool.publish();
            // Wake the dispatcher when the probe may go (queued tasks may wait for it).
            let weak = Arc::downgrade(pool);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(for_ms)).await;
                if let Some(pool) = weak.upgrade() {
                    pool.wake.notify_one();
                }
            });
        }
        crate::pool::Ejection::Restored => {
            tracing::info!(
                pool_id = %pool.id, replica_id = %replica.id,
                "replica back in placement: its probe task succeeded"
            );
            metrics::replica_ejected(&pool.id, &replica.id, false);
            pool.publish();
            pool.wake.notify_one();
        }
    }
}

/// How one replica's run of a task ended.
enum Attempt {
    /// The task ended here (or is ending: canceled, failed, succeeded).
    Ended,
    /// It failed before its first output and the error-mapping policy lets another
    /// replica take it; the error is what the client gets if none can.
    RetryElsewhere(ApiError),
}

/// Runs `task` on replica `replica_idx` (try number `attempt`), relaying the adapter's
/// events into its frame log.
async fn relay(
    pool: &Arc<Pool>,
    decisions: &Decisions,
    replica_idx: usize,
    task: &Arc<Task>,
    config: DispatchConfig,
    attempt: u32,
    trace: crate::trace::Propagated,
) -> Attempt {
    let replica = &pool.replicas[replica_idx];
    let began = Instant::now();
    let ended = |failure: Option<&EngineFailure>| outcome(pool, replica_idx, failure, began);
    let site = FailureSite {
        engine: &pool.engine,
        pool_id: &pool.id,
        replica_id: &replica.id,
        attempt,
        attempts_left: config.max_attempts.saturating_sub(attempt),
    };
    let map = |f: &EngineFailure| decisions.map_failure(f, &site).0;
    // A failure the client has seen nothing of yet: another replica may take it.
    let end_or_retry = |f: &EngineFailure| {
        let (err, elsewhere) = decisions.map_failure(f, &site);
        if elsewhere && f.phase != FailurePhase::MidStream && !task.announced() {
            Attempt::RetryElsewhere(err)
        } else {
            fail(task, err);
            Attempt::Ended
        }
    };
    if let Some(inputs) = task.spec.job.inputs.clone() {
        // An embedding task: one blocking call, the vectors ride on the `end` frame.
        let tokens_in = inputs
            .iter()
            .map(|i| crate::admit::estimate_tokens(i))
            .sum::<u32>();
        let client = replica.client();
        match tokio::task::spawn_blocking(move || client.embed(inputs)).await {
            Ok(Ok(vectors)) => {
                ended(None);
                if task.succeed_embedding(vectors, tokens_in) {
                    tracing::info!(task_id = %task.id, "embedding task succeeded");
                }
            }
            Ok(Err(failure)) => {
                ended(Some(&failure));
                if failure.kind == FailureKind::Panic {
                    crate::health::take_out(pool, replica, &failure.message);
                }
                fail(task, map(&failure));
            }
            Err(join) => {
                fail(
                    task,
                    ApiError::internal(format!("adapter embed did not return: {join}")),
                );
            }
        }
        return Attempt::Ended;
    }
    let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
    let client = replica.client();
    let mut spec = task.spec.job.clone();
    spec.trace = trace;
    let submit = move || {
        if spec.chat.is_some() {
            client.submit_chat(spec, tx)
        } else {
            client.submit(spec, tx)
        }
    };
    let job: Arc<dyn EngineJob> = match tokio::task::spawn_blocking(submit).await {
        Ok(Ok(job)) => Arc::from(job),
        Ok(Err(failure)) => {
            ended(Some(&failure));
            if failure.kind == FailureKind::Panic {
                crate::health::take_out(pool, replica, &failure.message);
            }
            return end_or_retry(&failure);
        }
        Err(join) => {
            fail(
                task,
                ApiError::internal(format!("adapter submit did not return: {join}")),
            );
            return Attempt::Ended;
        }
    };
    if let Some(job) = task.attach_job(Arc::clone(&job)) {
        // Canceled while submitting.
        cancel_job(&task.id, job).await;
        return Attempt::Ended;
    }
    let mut last_metrics: Option<Instant> = None;
    let mut streamed = false;
    loop {
        let phase = if streamed {
            FailurePhase::MidStream
        } else {
            FailurePhase::BeforeFirstToken
        };
        let event = match tokio::time::timeout(config.decode_idle_timeout, rx.recv()).await {
            Ok(event) => event,
            Err(_elapsed) => {
                let stall = EngineFailure::new(
                    FailureKind::Stall,
                    phase,
                    format!(
                        "produced nothing for {} ms",
                        config.decode_idle_timeout.as_millis()
                    ),
                );
                ended(Some(&stall));
                if !streamed {
                    // Nothing came: this replica's job goes, the task may go elsewhere.
                    cancel_job(&task.id, Arc::clone(&job)).await;
                    return end_or_retry(&stall);
                }
                if let Some(job) = fail(task, map(&stall)) {
                    cancel_job(&task.id, job).await;
                }
                return Attempt::Ended;
            }
        };
        match event {
            Some(EngineEvent::Started { .. }) => {}
            Some(EngineEvent::Token(text)) => {
                if !streamed {
                    streamed = true;
                    task.trace.streaming();
                }
                if !relayed(task, replica, task.push_token(text)).await {
                    return Attempt::Ended;
                }
                if last_metrics.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
                    last_metrics = Some(Instant::now());
                    task.push_metrics(pool.queue_depth(), decisions.headroom(task), pool.rates().0);
                }
            }
            Some(EngineEvent::Delta(delta)) => {
                if !streamed {
                    streamed = true;
                    task.trace.streaming();
                }
                if !delta.content.is_empty() || !delta.logprobs.is_empty() {
                    let logprobs = (!delta.logprobs.is_empty()).then_some(delta.logprobs);
                    if !relayed(task, replica, task.push_text(delta.content, logprobs)).await {
                        return Attempt::Ended;
                    }
                }
                for fragment in delta.tool_calls {
                    if !relayed(task, replica, task.push_tool_call(fragment)).await {
                        return Attempt::Ended;
                    }
                }
                if last_metrics.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
                    last_metrics = Some(Instant::now());
                    task.push_metrics(pool.queue_depth(), decisions.headroom(task), pool.rates().0);
                }
            }
            Some(EngineEvent::End(end)) => {
                ended(None);
                task.push_metrics(pool.queue_depth(), decisions.headroom(task), pool.rates().0);
                let tokens_in = prompt_tokens(pool, replica, task, &end).await;
                if let Some(timing) = task.succeed(tokens_in, &end) {
                    pool.record_on(replica_idx, timing);
                    tracing::info!(task_id = %task.id, tokens_out = timing.tokens_out, "task succeeded");
                }
                return Attempt::Ended;
            }
            Some(EngineEvent::Error(failure)) => {
                ended(Some(&failure));
                if failure.kind == FailureKind::Panic {
                    crate::health::take_out(pool, replica, &failure.message);
                }
                if streamed {
                    fail(task, map(&failure));
                    return Attempt::Ended;
                }
                return end_or_retry(&failure);
            }
            None => {
                // The adapter dropped the sink without a terminal event: the engine died.
                if !task.state().is_terminal() {
                    crate::health::take_out(
                        pool,
                        replica,
                        "the adapter dropped a task without a terminal event",
                    );
                    let reset = EngineFailure::new(
                        FailureKind::Transport,
                        phase,
                        format!("replica {} stopped mid-task", replica.id),
                    );
                    ended(Some(&reset));
                    if !streamed {
                        return end_or_retry(&reset);
                    }
                    fail(task, map(&reset));
                }
                return Attempt::Ended;
            }
        }
    }
}
