//! One dispatcher per pool: leases a replica slot, pops the next task (interactive
//! first), and runs it on the replica, relaying the adapter's events into the task's
//! frame log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchd_contracts::ErrorCode;
use tokio::sync::mpsc;

use crate::adapters::{EngineEvent, EngineJob};
use crate::errors::{self, ApiError};
use crate::pool::Pool;
use crate::task::Task;

/// Events buffered between an adapter and the host per task; a full buffer blocks the
/// adapter (backpressure), never grows.
const EVENT_BUFFER: usize = 256;
/// At most one `metrics` frame per this interval while tokens flow.
const METRICS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    /// An engine silent for this long mid-task is stalled: `DECODE_TIMEOUT`.
    pub decode_idle_timeout: Duration,
}

/// Runs the pool's dispatcher until the process ends.
pub fn spawn_dispatcher(pool: Arc<Pool>, config: DispatchConfig) {
    tokio::spawn(async move {
        loop {
            let woken = pool.wake.notified();
            while let Some(replica) = pool.lease() {
                let Some(queued) = pool.queue().pop() else {
                    pool.release_quiet(replica);
                    break;
                };
                tokio::spawn(run(Arc::clone(&pool), replica, queued.task, config));
            }
            woken.await;
        }
    });
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

fn fail(task: &Task, err: ApiError) -> Option<Arc<dyn EngineJob>> {
    let mut envelope = *err.envelope;
    envelope.correlation_id = Some(task.spec.correlation_id.clone());
    tracing::warn!(task_id = %task.id, code = %envelope.code, error = %envelope.message, "task failed");
    task.fail(envelope).flatten()
}

async fn run(pool: Arc<Pool>, replica_idx: usize, task: Arc<Task>, config: DispatchConfig) {
    let replica = &pool.replicas[replica_idx];
    if task.start(&replica.id, &replica.engine_version) {
        tracing::info!(task_id = %task.id, pool_id = %pool.id, replica_id = %replica.id, "task started");
        relay(&pool, replica_idx, &task, config).await;
    }
    pool.release(replica_idx);
}

async fn relay(pool: &Pool, replica_idx: usize, task: &Arc<Task>, config: DispatchConfig) {
    let replica = &pool.replicas[replica_idx];
    let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
    let client = Arc::clone(&replica.client);
    let spec = task.spec.job.clone();
    let job: Arc<dyn EngineJob> =
        match tokio::task::spawn_blocking(move || client.submit(spec, tx)).await {
            Ok(Ok(job)) => Arc::from(job),
            Ok(Err(failure)) => {
                fail(
                    task,
                    errors::engine_failure(&failure, &pool.engine, &pool.id),
                );
                return;
            }
            Err(join) => {
                fail(
                    task,
                    ApiError::internal(format!("adapter submit did not return: {join}")),
                );
                return;
            }
        };
    if let Some(job) = task.attach_job(Arc::clone(&job)) {
        // Canceled while submitting.
        cancel_job(&task.id, job).await;
        return;
    }
    let mut last_metrics: Option<Instant> = None;
    loop {
        let event = match tokio::time::timeout(config.decode_idle_timeout, rx.recv()).await {
            Ok(event) => event,
            Err(_elapsed) => {
                let err = ApiError::new(
                    ErrorCode::DecodeTimeout,
                    format!(
                        "engine produced nothing for {} ms",
                        config.decode_idle_timeout.as_millis()
                    ),
                )
                .engine(&pool.engine)
                .pool(&pool.id);
                if let Some(job) = fail(task, err) {
                    cancel_job(&task.id, job).await;
                }
                return;
            }
        };
        match event {
            Some(EngineEvent::Started { .. }) => {}
            Some(EngineEvent::Token(text)) => {
                if !task.push_token(text) {
                    return; // ended by cancel; whoever ended it canceled the job
                }
                if last_metrics.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
                    last_metrics = Some(Instant::now());
                    task.push_metrics(pool.queue().depth());
                }
            }
            Some(EngineEvent::End { tokens_in, .. }) => {
                task.push_metrics(pool.queue().depth());
                if let Some(timing) = task.succeed(tokens_in) {
                    pool.record(timing);
                    tracing::info!(task_id = %task.id, tokens_out = timing.tokens_out, "task succeeded");
                }
                return;
            }
            Some(EngineEvent::Error(failure)) => {
                fail(
                    task,
                    errors::engine_failure(&failure, &pool.engine, &pool.id),
                );
                return;
            }
            None => {
                // The adapter dropped the sink without a terminal event: the engine died.
                if !task.state().is_terminal() {
                    let err = ApiError::new(
                        ErrorCode::WorkerReset,
                        format!("engine on replica {} stopped mid-task", replica.id),
                    )
                    .engine(&pool.engine)
                    .pool(&pool.id);
                    fail(task, err);
                }
                return;
            }
        }
    }
}
