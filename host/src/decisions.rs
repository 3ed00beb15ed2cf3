//! The host side of policy decisions: building snapshots, interpreting and validating
//! outputs, and the documented fallbacks (placement: the host's least-loaded choice when
//! the operator allowed it; error mapping: the built-in table). Admission and budget fail
//! closed in `admit.rs`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use orchd_contracts::{ErrorCode, PlacementMode, PlacementRecord, PlacementRequest, Priority};

use crate::adapters::{EngineFailure, FailureKind, FailurePhase};
use crate::budget::{Amount, Ledger, RateState, Refused, Reservation};
use crate::config::OnError;
use crate::errors::{self, ApiError};
use crate::metrics;
use crate::policy::bindings::{WitPriority, budget, error_mapping, placement};
use crate::policy::{PolicyFailure, PolicySet};
use crate::pool::Pool;
use crate::prefix::Blocks;
use crate::task::Task;

/// Policies plus the ledger and the pools: what admission and dispatch consult.
pub struct Decisions {
    pub policies: Arc<PolicySet>,
    pub ledger: Ledger,
    pub directory: crate::directory::Directory,
    /// The pools now: from the config at start, plus those created through the API (a
    /// snapshot is swapped whole on every change; readers never wait). `AppState` changes
    /// it; a task retried in another pool finds that pool here.
    pub pools: arc_swap::ArcSwap<Vec<Arc<Pool>>>,
    /// The most recent placement decisions (assignments and refusals, not waits), for
    /// `GET /v1/placements`; its lock guards only the ring.
    pub recent_placements: std::sync::Mutex<std::collections::VecDeque<PlacementRecord>>,
}

/// Placement decisions kept for `GET /v1/placements`.
pub const RECENT_PLACEMENTS: usize = 64;

/// Which task a placement decision was for, and what it chose.
struct Placed<'a> {
    task_id: &'a str,
    stage: &'static str,
    pool_id: Option<&'a str>,
    replica_id: Option<&'a str>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn wit_priority(p: Priority) -> WitPriority {
    match p {
        Priority::Interactive => WitPriority::Interactive,
        Priority::Batch => WitPriority::Batch,
    }
}

/// What placement needs to know about the task.
pub struct JobFacts<'a> {
    pub task_id: &'a str,
    pub session_id: &'a str,
    pub engine: &'a str,
    pub model_ref: &'a str,
    pub ctx: u32,
    pub priority: Priority,
    pub placement: &'a PlacementRequest,
    /// The prompt's blocks, for prefix-aware placement.
    pub prefix: &'a Blocks,
}

impl<'a> JobFacts<'a> {
    /// The facts of an admitted task.
    pub fn of(task: &'a Task) -> Self {
        let spec = &task.spec;
        Self {
            task_id: &task.id,
            session_id: &spec.session_id,
            engine: &spec.engine,
            model_ref: &spec.job.model,
            ctx: spec.ctx,
            priority: spec.priority,
            placement: &spec.placement,
            prefix: &spec.prefix,
        }
    }
}

fn job(f: &JobFacts<'_>) -> placement::Job {
    let p = f.placement;
    placement::Job {
        task_id: f.task_id.to_owned(),
        session_id: f.session_id.to_owned(),
        engine: f.engine.to_owned(),
        model_ref: f.model_ref.to_owned(),
        ctx: f.ctx,
        priority: wit_priority(f.priority),
        mode: match p.mode {
            PlacementMode::Pin => placement::Mode::Pin,
            PlacementMode::Prefer => placement::Mode::Prefer,
            PlacementMode::Auto => placement::Mode::Auto,
        },
        pin_pool_id: p.pin_pool_id.clone(),
        prefer_pools: p.prefer_pools.clone(),
        avoid_pools: p.avoid_pools.clone(),
        require_device_mask: p.require_device_mask.clone(),
        allow_fallback: p.allow_fallback.unwrap_or(true),
        prompt_blocks: f.prefix.len(),
    }
}

/// `queue_depth` is passed in: the dispatcher read it with the head it places.
fn pool_view(pool: &Pool, session_id: &str, prefix: &Blocks, queue_depth: u32) -> placement::Pool {
    let affinity = pool.affinity(session_id);
    placement::Pool {
        pool_id: pool.id.clone(),
        engine: pool.engine.clone(),
        model_ref: pool.model_ref.clone(),
        ready: pool.is_ready(),
        // A draining pool is never a candidate at admission (the host filters it out); at
        // dispatch its queued tasks are in flight and run until the drain's deadline.
        draining: false,
        ctx_max: pool.ctx_max,
        queue_depth,
        replicas: pool
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (tps, ftt) = pool.replica_rates(i);
                placement::Replica {
                    replica_id: r.id.clone(),
                    // An ejected replica is not ready for placement; once its ejection
                    // is over it offers one slot, for a probe.
                    ready: r.is_healthy() && !r.is_ejected(),
                    slots_total: r.slots_total(),
                    slots_free: r.placeable_free(),
                    active_leases: r.leases(),
                    tokens_per_s: tps,
                    first_token_ms: ftt,
                    vram_free_bytes: r.vram_free(),
                    device_mask: r.device_mask.clone(),
                    session_affinity: affinity == Some(i),
                    prefix_blocks: r.prefix_matched(prefix),
                    ejected: r.ejected_until().is_some(),
                }
            })
            .collect(),
    }
}

impl Decisions {
    /// The placement log line, counters and recent-decisions entry for one decision.
    fn record(&self, placed: Placed<'_>, outcome: &'static str, log: &str, fallback_by_host: bool) {
        let parsed: serde_json::Value = serde_json::from_str(log).unwrap_or_default();
        let pinned = parsed["pinned"].as_bool().unwrap_or(false);
        let fallback = fallback_by_host || parsed["fallback"].as_bool().unwrap_or(false);
        metrics::placement_decision(outcome, pinned, fallback);
        tracing::debug!(outcome, pinned, fallback, decision_log = %log, "placement decision");
        if outcome == "wait" {
            return;
        }
        let entry = PlacementRecord {
            at: now_ms(),
            task_id: placed.task_id.to_owned(),
            stage: placed.stage.to_owned(),
            outcome: outcome.to_owned(),
            pool_id: placed.pool_id.map(str::to_owned),
            replica_id: placed.replica_id.map(str::to_owned),
            prefix_blocks: parsed["prefix_blocks"].as_u64().map(|b| b as u32),
            fallback,
        };
        let mut recent = self
            .recent_placements
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_PLACEMENTS {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// Admission-stage placement: which of `candidates` the task queues on.
    pub fn place_at_admission<'a>(
        &self,
        facts: &JobFacts<'_>,
        candidates: &[&'a Arc<Pool>],
    ) -> Result<&'a Arc<Pool>, ApiError> {
        let slot = &self.policies.placement;
        let snapshot = placement::Snapshot {
            now_ms: now_ms(),
            stage: placement::Stage::Admission,
            job: job(facts),
            candidates: candidates
                .iter()
                .map(|p| pool_view(p, facts.session_id, facts.prefix, p.queue_depth()))
                .collect(),
        };
        let decision = slot.place(&snapshot, |d| match d {
            placement::Decision::Assign(a) => {
                let pool = candidates
                    .iter()
                    .copied()
                    .find(|p| p.id == a.pool_id)
                    .ok_or_else(|| {
                        format!("assigned pool {:?}, which is not a candidate", a.pool_id)
                    })?;
                if !pool.replicas.iter().any(|r| r.id == a.replica_id) {
                    return Err(format!(
                        "assigned replica {:?}, not in pool {}",
                        a.replica_id, pool.id
                    ));
                }
                self.record(
                    Placed {
                        task_id: facts.task_id,
                        stage: "admission",
                        pool_id: Some(&pool.id),
                        replica_id: Some(&a.replica_id),
                    },
                    "assigned",
                    &a.decision_log,
                    false,
                );
                Ok(Some(pool))
            }
            placement::Decision::Wait => Err("answered wait at admission".to_owned()),
            placement::Decision::NoCapacity(reason) => {
                self.record(
                    Placed {
                        task_id: facts.task_id,
                        stage: "admission",
                        pool_id: None,
                        replica_id: None,
                    },
                    "no_capacity",
                    &reason,
                    false,
                );
                Ok(None)
            }
        });
        match decision {
            Ok(Some(pool)) => Ok(pool),
            Ok(None) => Err(no_capacity(facts, candidates)),
            Err(failure) => match slot.settings().on_error {
                OnError::Fallback => {
                    fallback_logged(&failure);
                    let chosen = host_least_loaded(facts, candidates);
                    self.record(
                        Placed {
                            task_id: facts.task_id,
                            stage: "admission",
                            pool_id: chosen.map(|p| p.id.as_str()),
                            replica_id: None,
                        },
                        "assigned",
                        "{}",
                        true,
                    );
                    chosen.ok_or_else(|| no_capacity(facts, candidates))
                }
                OnError::Fail => Err(policy_failed(&failure)),
            },
        }
    }

    /// Dispatch-stage placement on `pool` for the task at the head of its queue: the
    /// replica to lease, `Ok(None)` to wait, or the error that fails the task. Called with
    /// no lock held (`queue_depth` was read with the head).
    pub fn place_at_dispatch(
        &self,
        pool: &Pool,
        task: &Task,
        queue_depth: u32,
    ) -> Result<Option<usize>, ApiError> {
        let slot = &self.policies.placement;
        let spec = &task.spec;
        let facts = JobFacts::of(task);
        let snapshot = placement::Snapshot {
            now_ms: now_ms(),
            stage: placement::Stage::Dispatch,
            job: job(&facts),
            candidates: vec![pool_view(pool, &spec.session_id, &spec.prefix, queue_depth)],
        };
        let decision = slot.place(&snapshot, |d| match d {
            placement::Decision::Assign(a) => {
                if a.pool_id != pool.id {
                    return Err(format!(
                        "assigned pool {:?} at dispatch on pool {}",
                        a.pool_id, pool.id
                    ));
                }
                let idx = pool
                    .replicas
                    .iter()
                    .position(|r| r.id == a.replica_id)
                    .ok_or_else(|| {
                        format!(
                            "assigned replica {:?}, not in pool {}",
                            a.replica_id, pool.id
                        )
                    })?;
                self.record(
                    Placed {
                        task_id: &task.id,
                        stage: "dispatch",
                        pool_id: Some(&pool.id),
                        replica_id: Some(&a.replica_id),
                    },
                    "assigned",
                    &a.decision_log,
                    false,
                );
                Ok(Some(idx))
            }
            placement::Decision::Wait => {
                self.record(
                    Placed {
                        task_id: &task.id,
                        stage: "dispatch",
                        pool_id: Some(&pool.id),
                        replica_id: None,
                    },
                    "wait",
                    "{}",
                    false,
                );
                Ok(None)
            }
            placement::Decision::NoCapacity(reason) => Err(reason),
        });
        match decision {
            Ok(choice) => Ok(choice),
            Err(failure) => match slot.settings().on_error {
                OnError::Fallback => {
                    fallback_logged(&failure);
                    let chosen = pool.least_loaded_replica();
                    self.record(
                        Placed {
                            task_id: &task.id,
                            stage: "dispatch",
                            pool_id: Some(&pool.id),
                            replica_id: chosen.map(|i| pool.replicas[i].id.as_str()),
                        },
                        "assigned",
                        "{}",
                        true,
                    );
                    Ok(chosen)
                }
                OnError::Fail => Err(policy_failed(&failure)),
            },
        }
    }

    /// A slot in another pool serving `task`'s model, for a retry elsewhere once its own
    /// pool has no untried replica: placement picks the pool (admission stage, among the
    /// ready pools not `tried`) and its replica (dispatch stage, a free slot now; a retry
    /// does not queue). `None` when placement allows no other pool: a pin without
    /// fallback, no candidate, no free slot, or a policy failure (logged).
    pub fn lease_in_another_pool(
        &self,
        task: &Task,
        tried: &[String],
    ) -> Option<(Arc<Pool>, usize)> {
        let spec = &task.spec;
        if spec.placement.mode == PlacementMode::Pin && spec.placement.allow_fallback == Some(false)
        {
            return None;
        }
        let pools = self.pools.load();
        let chat = spec.job.chat.is_some();
        let candidates: Vec<&Arc<Pool>> = pools
            .iter()
            .filter(|p| !tried.contains(&p.id))
            .filter(|p| p.engine == spec.engine && p.model_ref == spec.job.model)
            .filter(|p| !chat || p.has_feature(crate::admit::FEATURE_CHAT))
            .filter(|p| p.is_ready() && !p.is_draining() && !p.is_removed())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let facts = JobFacts::of(task);
        let pool = match self.place_at_admission(&facts, &candidates) {
            Ok(pool) => Arc::clone(pool),
            Err(err) => {
                tracing::info!(task_id = %task.id, error = %err.envelope.message, "no other pool may take the task");
                return None;
            }
        };
        match self.place_at_dispatch(&pool, task, pool.queue_depth()) {
            Ok(Some(idx)) if pool.try_lease(idx) => Some((pool, idx)),
            _ => None,
        }
    }

    /// Maps an engine failure through the error-mapping policy; when the policy fails, the
    /// built-in table of API.md answers (counted, never hiding the error). With the error,
    /// whether the policy lets another replica take a task that failed before its first
    /// output (`retry-elsewhere`; the built-in table never does).
    pub fn map_failure(&self, f: &EngineFailure, at: &FailureSite<'_>) -> (ApiError, bool) {
        let FailureSite {
            engine,
            pool_id,
            replica_id,
            attempt,
            attempts_left,
        } = *at;
        let failure = error_mapping::Failure {
            kind: kind_name(f.kind).to_owned(),
            upstream_status: f.upstream_status,
            message: f.message.clone(),
            engine: engine.to_owned(),
            pool_id: pool_id.to_owned(),
            replica_id: replica_id.to_owned(),
            phase: match f.phase {
                FailurePhase::Control => error_mapping::Phase::BeforeDispatch,
                FailurePhase::BeforeFirstToken => error_mapping::Phase::BeforeFirstToken,
                FailurePhase::MidStream => error_mapping::Phase::MidStream,
            },
            attempt,
            attempts_left,
        };
        match self.policies.error_mapping.map(&failure) {
            Ok(m) => {
                let code = ErrorCode::parse(&m.code).expect("validated by the host");
                let mut err = ApiError::new(code, m.message)
                    .engine(engine)
                    .pool(pool_id)
                    .policy_label(&m.policy_label)
                    .with_status(
                        axum::http::StatusCode::from_u16(m.http_status).expect("validated 4xx/5xx"),
                    );
                err.envelope.retriable = Some(m.retriable);
                if let Some(ms) = m.retry_after_ms {
                    err = err.retry_after_ms(ms);
                }
                (err, m.retry_elsewhere)
            }
            Err(failure) => {
                fallback_logged(&failure);
                (errors::engine_failure(f, engine, pool_id), false)
            }
        }
    }

    /// Reserves budget for a request: the policy prices it against what the key and the
    /// session have left, then the state store checks every budget and rate limit and
    /// debits them in one atomic operation (so concurrent requests, on this daemon or
    /// another sharing the store, never spend the same budget twice). Fails closed when
    /// the policy fails or the store cannot be reached.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        req: budget::ReserveRequest,
        key: &str,
        session: &str,
        id: &str,
        lease_ms: u64,
    ) -> Result<(Reservation, crate::budget::Headroom, Option<RateState>), ApiError> {
        let model = req.model_ref.clone();
        let (key_left, session_left) = self
            .ledger
            .left(key, session, &model)
            .await
            .map_err(store_down)?;
        let req = budget::ReserveRequest {
            key_left,
            session_left,
            ..req
        };
        match self.policies.budget.reserve(&req) {
            Ok(budget::Reservation::Reserve(charge)) => {
                let u = &charge.usage;
                let amount = Amount {
                    tokens: u.tokens,
                    time_ms: u.time_ms,
                    cost: u.cost,
                };
                self.ledger
                    .reserve(
                        id,
                        key,
                        session,
                        &model,
                        amount,
                        charge.rate_tokens,
                        lease_ms,
                    )
                    .await
                    .map_err(refused)
            }
            Ok(budget::Reservation::Deny(d)) => {
                // A policy that says no without saying when: the window of the budgets the
                // request cannot fit says when, unless one of them never resets.
                let retry_after_ms = d.retry_after_ms.or_else(|| {
                    self.ledger.resets_in_ms(
                        key,
                        session,
                        &model,
                        u64::from(req.prompt_tokens_estimate) + u64::from(req.max_tokens),
                    )
                });
                let mut err =
                    ApiError::new(ErrorCode::BudgetExceeded, d.message).policy_label("budget");
                err.envelope.retriable = Some(retry_after_ms.is_some());
                if let Some(ms) = retry_after_ms {
                    err = err.retry_after_ms(ms);
                }
                Err(err)
            }
            Err(failure) => Err(policy_failed(&failure)),
        }
    }

    /// What the task's key and session have left now.
    pub fn headroom(&self, task: &Task) -> crate::budget::Headroom {
        let session = crate::sessions::Sessions::account(&task.spec.owner, &task.spec.session_id);
        self.ledger
            .headroom(&task.spec.owner, &session, &task.spec.job.model)
    }

    /// Charges a finished task its actual usage (the policy prices it) and returns the rest
    /// of its reservation. When the policy fails, the whole reservation stays charged.
    pub fn settle(&self, task: &Task) {
        let Some(reservation) = task.take_reservation() else {
            return;
        };
        self.directory.ended(task);
        let usage = task.usage();
        let req = budget::SettleRequest {
            task_id: task.id.clone(),
            engine: task.spec.engine.clone(),
            model_ref: task.spec.job.model.clone(),
            reserved: budget::Charge {
                usage: budget::Usage {
                    tokens: reservation.amount.tokens,
                    time_ms: reservation.amount.time_ms,
                    cost: reservation.amount.cost,
                },
                rate_tokens: reservation.rate_tokens,
            },
            tokens_in: usage.tokens_in,
            tokens_out: usage.tokens_out,
            time_ms: usage.time_ms,
        };
        match self.policies.budget.get().settle(&req) {
            Ok(charge) => self.ledger.settle(
                &reservation,
                Amount {
                    tokens: charge.usage.tokens,
                    time_ms: charge.usage.time_ms,
                    cost: charge.usage.cost,
                },
                charge.rate_tokens,
            ),
            Err(failure) => {
                tracing::error!(task_id = %task.id, error = %failure, "budget settle failed; the reservation stays charged");
            }
        }
    }
}

/// Where a failure happened, for the error-mapping policy.
#[derive(Clone, Copy)]
pub struct FailureSite<'a> {
    pub engine: &'a str,
    pub pool_id: &'a str,
    pub replica_id: &'a str,
    /// 1 for the first try.
    pub attempt: u32,
    /// Further tries the host would make if the policy says retry elsewhere.
    pub attempts_left: u32,
}

fn kind_name(k: FailureKind) -> &'static str {
    match k {
        FailureKind::Config => "config",
        FailureKind::InvalidRequest => "invalid-request",
        FailureKind::Transport => "transport",
        FailureKind::Timeout => "timeout",
        FailureKind::Upstream => "upstream",
        FailureKind::Protocol => "protocol",
        FailureKind::Panic => "panic",
        FailureKind::Internal => "internal",
        FailureKind::Stall => "stall",
    }
}

fn fallback_logged(failure: &PolicyFailure) {
    metrics::policy_fallback(failure.policy);
    tracing::warn!(policy = failure.policy, kind = failure.kind.as_str(), error = %failure.message, "policy failed; host fallback used");
}

/// The state store could not be reached: fail closed, retriable.
fn store_down(e: crate::store::StoreError) -> ApiError {
    ApiError::store_down("budgets and rate limits", e)
}

/// A reservation the store refused, in API terms.
fn refused(r: Refused) -> ApiError {
    match r {
        Refused::OverBudget {
            account,
            what,
            retry_after_ms,
        } => {
            let (kind, name) = account.split_once(':').unwrap_or(("budget", &account));
            let when = match retry_after_ms {
                Some(ms) => format!("it resets in {}s", ms.div_ceil(1000)),
                None => "it has no period and does not reset".to_owned(),
            };
            let mut err = ApiError::new(
                ErrorCode::BudgetExceeded,
                format!(
                    "the {kind} budget of {:?} has no {what} left for this request; {when}",
                    crate::api::truncated(name)
                ),
            )
            .policy_label("budget");
            err.envelope.retriable = Some(retry_after_ms.is_some());
            if let Some(ms) = retry_after_ms {
                err = err.retry_after_ms(ms);
            }
            err
        }
        Refused::OverRate {
            subject,
            limit,
            retry_after_ms,
            rate,
        } => {
            let whose = match subject.strip_prefix("group:") {
                Some(group) => format!("tenant group {group:?}"),
                None => "this key".to_owned(),
            };
            ApiError::new(
                ErrorCode::AdmissionReject,
                match limit {
                    "concurrent" => format!("rate limit: too many tasks running for {whose}"),
                    other => format!("rate limit: {whose}'s {other} per window are used up"),
                },
            )
            .policy_label("rate_limit")
            .retry_after_ms(retry_after_ms)
            .rate(rate)
        }
        Refused::StoreDown(e) => store_down(e),
    }
}

/// A broken enforcing policy: fail closed.
pub fn policy_failed(failure: &PolicyFailure) -> ApiError {
    tracing::error!(
        policy = failure.policy, kind = failure.kind.as_str(), error = %failure.message,
        "policy call failed; request refused (fail closed)"
    );
    ApiError::policy_unavailable(failure)
}

/// Why no candidate can take the task, in API codes.
fn no_capacity(facts: &JobFacts<'_>, candidates: &[&Arc<Pool>]) -> ApiError {
    let err = if candidates.iter().all(|p| !p.is_ready()) {
        ApiError::new(
            ErrorCode::PoolUnready,
            format!("no pool serving {} is ready", facts.model_ref),
        )
    } else {
        ApiError::new(
            ErrorCode::ReplicaExhausted,
            format!(
                "no replica can take this task (engine {}, model {})",
                facts.engine, facts.model_ref
            ),
        )
    };
    err.engine(facts.engine).retry_after_ms(1000)
}

/// The documented placement fallback: the ready candidate with the least work per slot.
fn host_least_loaded<'a>(
    facts: &JobFacts<'_>,
    candidates: &[&'a Arc<Pool>],
) -> Option<&'a Arc<Pool>> {
    candidates
        .iter()
        .copied()
        .filter(|p| p.is_ready() && facts.ctx <= p.ctx_max)
        .filter(|p| !facts.placement.avoid_pools.contains(&p.id))
        .min_by(|a, b| a.load().total_cmp(&b.load()).then(a.id.cmp(&b.id)))
}
